"""template.yaml, checked for what cfn-lint cannot know: limits that only
bite in a second region, a later deploy or a busy day. Standard library only
(the system python3 has no YAML module), so the template is read as text.

    python3 -m unittest discover -s scripts/tests -v
"""

import re
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from template_parameters import parameters  # noqa: E402

TEMPLATE = (ROOT / "template.yaml").read_text()


def resource(name: str) -> str:
    """The text of one resource, up to the next one."""
    found = re.search(rf"^  {name}:\n(.*?)(?=^  \S|\Z)", TEMPLATE, re.M | re.S)
    assert found, f"no resource {name}"
    return found.group(1)


class Template(unittest.TestCase):
    def test_cloudfront_names_are_unique_per_stack_and_region_and_short_enough(self):
        # Names of these are per account: a second region's stack of the same
        # name must not collide, and a long stack name must not overflow.
        for name, prefix, limit in [("SiteOriginAccess", "site-", 64), ("SiteHeaders", "site-headers-", 128)]:
            text = resource(name)
            self.assertIn(f'"{prefix}${{StackUuid}}"', text)
            self.assertIn('StackUuid: !Select [2, !Split ["/", !Ref AWS::StackId]]', text)
            self.assertNotRegex(text, r"Name: !Sub \"\$\{AWS::StackName\}")
            self.assertLessEqual(len(prefix) + 36, limit)

    def test_routed_functions_finish_before_api_gateway_gives_up(self):
        timeouts = [int(t) for t in re.findall(r"^\s+Timeout: (\d+)", TEMPLATE, re.M)]
        self.assertTrue(timeouts)
        for timeout in timeouts:
            self.assertLess(timeout, 29, "API Gateway's integration timeout is 29 s")

    def test_tables_use_the_default_aws_owned_key(self):
        self.assertIsNone(re.search(r"^\s+SSEEnabled: true", TEMPLATE, re.M))

    def test_every_function_has_error_and_throttle_alarms_an_operator_can_be_sent(self):
        functions = re.findall(r"^  (\w+)Function:\n    Type: AWS::Serverless::Function", TEMPLATE, re.M)
        self.assertGreaterEqual(len(functions), 8)
        for function in functions:
            for kind, metric in [("Errors", "Errors"), ("Throttles", "Throttles")]:
                text = resource(f"{function}{kind}Alarm")
                self.assertIn(f"MetricName: {metric}", text)
                self.assertIn(f"Value: !Ref {function}Function", text)
        alarms = re.findall(r"^  (\w+Alarm):\n    Type: AWS::CloudWatch::Alarm", TEMPLATE, re.M)
        for expected in ["ApiIntegrationErrorsAlarm", "ApiExecutionErrorsAlarm", "ApiClientErrorsAlarm",
                         "ConnectionsReadThrottlesAlarm", "ConnectionsWriteThrottlesAlarm",
                         "MessagesReadThrottlesAlarm", "MessagesWriteThrottlesAlarm"]:
            self.assertIn(expected, alarms)
        for alarm in alarms:
            text = resource(alarm)
            self.assertIn("AlarmActions: !If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref AWS::NoValue]", text)
            self.assertIn("AlarmDescription:", text)
        # The README says what each means and what to do.
        readme = (ROOT / "README.md").read_text()
        self.assertIn("### Alarms", readme)

    def test_whole_number_parameters_refuse_fractions(self):
        declared = dict(parameters(TEMPLATE))
        for name in ["RateBurst", "ConnectReservedConcurrency", "MessageRetentionDays"]:
            block = re.search(rf"^  {name}:\n((?:    .*\n|\s*\n)+)", TEMPLATE, re.M).group(1)
            pattern = re.search(r'AllowedPattern: "(.*)"', block).group(1).replace("\\\\", "\\")
            self.assertIn("Type: String", block)
            self.assertRegex(declared[name], pattern, f"{name}'s default fits its pattern")
            for bad in ["1.5", "-1", "", "ten"]:
                self.assertNotRegex(bad, pattern, f"{name} refuses {bad!r}")
        for name in ["ThrottlingRateLimit", "ThrottlingBurstLimit", "RateLimit"]:
            block = re.search(rf"^  {name}:\n((?:    .*\n)+)", TEMPLATE, re.M).group(1)
            self.assertIn("MinValue:", block)
            self.assertIn("MaxValue:", block)

    def test_the_dashboard_is_per_region_and_shows_every_function(self):
        text = resource("Dashboard")
        # Dashboard names are per account: a second region's stack of the
        # same name must not overwrite this one's.
        self.assertIn('DashboardName: !Sub "${AWS::StackName}-${AWS::Region}"', text)
        functions = re.findall(r"^  (\w+)Function:\n    Type: AWS::Serverless::Function", TEMPLATE, re.M)
        for function in functions:
            for metric in ["Errors", "Throttles", "Duration"]:
                self.assertIn(f'"{metric}", "FunctionName", "${{{function}Function}}"', text)

    def test_functions_log_only_to_groups_they_cannot_create_or_outlive(self):
        functions = re.findall(r"^  (\w+)Function:\n    Type: AWS::Serverless::Function", TEMPLATE, re.M)
        for function in functions:
            text = resource(f"{function}Function")
            self.assertIn(f"LoggingConfig: {{ LogGroup: !Ref {function}Logs }}", text)
            self.assertIn(f"Role: !GetAtt {function}Role.Arn", text)
            self.assertNotIn("Policies:", text, "SAM's role would allow logs:CreateLogGroup")
            # Named after the stack, not the function: the group does not
            # depend on the function, so the function is deleted first.
            self.assertNotIn(f"${{{function}Function}}", resource(f"{function}Logs"))
            self.assertIn("RetentionInDays: !Ref LogRetentionDays", resource(f"{function}Logs"))
        self.assertNotIn("logs:CreateLogGroup", TEMPLATE)


if __name__ == "__main__":
    unittest.main()
