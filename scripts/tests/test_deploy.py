"""The deploy and destroy scripts, run for real against stand-ins for `aws`,
`sam`, `trunk` and the build tools that record every call, on the system's
own python3 (Debian's, which refuses `pip install`: PEP 668).

    python3 -m unittest discover -s scripts/tests -v

Each test copies the scripts into a scratch project, so nothing here touches
the real one or any AWS account.
"""

import os
import shutil
import stat
import subprocess
import tempfile
import textwrap
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

# Every stand-in logs its arguments, one call per line, to $CALLS.
LOG = 'printf "%s %s\\n" "$(basename "$0")" "$*" >> "$CALLS"\n'

STUBS = {
    "rustup": """
        case "$*" in
          "target list --installed") printf 'wasm32-unknown-unknown\\naarch64-unknown-linux-gnu\\n' ;;
        esac
    """,
    "trunk": """
        case "$1" in
          --version) echo "trunk 0.21.14" ;;
          build)
            mkdir -p dist
            echo '<!doctype html>' > dist/index.html
            echo 'export default 1' > dist/frontend-0123456789abcdef.js
            echo 'x' > dist/frontend-0123456789abcdef.js.br
            echo 'x' > dist/frontend-0123456789abcdef.js.gz ;;
        esac
    """,
    "wasm-bindgen": 'echo "wasm-bindgen $WASM_BINDGEN_VERSION"',
    "npm": "true",
    "cargo-lambda": "true",
    "sam": """
        case "$1" in
          build)
            mkdir -p .aws-sam/build/ChatFunction
            # An ELF header whose e_machine (bytes 18-19) says aarch64.
            printf '\\177ELF\\2\\1\\1\\0\\0\\0\\0\\0\\0\\0\\0\\0\\2\\0\\267\\0' > .aws-sam/build/ChatFunction/bootstrap ;;
          deploy)
            status=$(cat "$STACK_STATUS")
            case "$status" in
              ROLLBACK_COMPLETE)
                echo "Stack is in ROLLBACK_COMPLETE state and can not be updated." >&2
                exit 1 ;;
            esac
            echo UPDATE_COMPLETE > "$STACK_STATUS" ;;
        esac
    """,
    "aws": """
        status=$(cat "$STACK_STATUS")
        case "$*" in
          "sts get-caller-identity"*) echo '{"Account": "123456789012"}' ;;
          "configure get region"*) exit 1 ;;
          "cloudformation describe-stacks"*StackStatus*)
            if [ "$status" = NONE ]; then
              echo "An error occurred (ValidationError): Stack with id x does not exist" >&2
              exit 254
            fi
            echo "$status" ;;
          "cloudformation describe-stacks"*WebSocketUrl*) echo "wss://abc123.execute-api.eu-west-1.amazonaws.com/prod" ;;
          "cloudformation describe-stacks"*SiteUrl*) echo "https://d111.cloudfront.net" ;;
          "cloudformation describe-stacks"*SiteBucketName*) echo "site-bucket" ;;
          "cloudformation describe-stacks"*DistributionId*) echo "E123" ;;
          "cloudformation describe-stack-events"*)
            printf 'ChatTable\\tResource handler returned message: "Table already exists"\\n' ;;
          "cloudformation delete-stack"*) echo NONE > "$STACK_STATUS" ;;
          "cloudfront create-invalidation"*) echo "I2J3" ;;
        esac
    """,
}


class Project:
    """A scratch copy of the scripts, with stand-ins first on PATH."""

    def __init__(self, status: str):
        self.dir = Path(tempfile.mkdtemp(prefix="chat-deploy-test-"))
        for part in ["scripts", ".ci"]:
            shutil.copytree(ROOT / part, self.dir / part)
        shutil.copy(ROOT / "Cargo.lock", self.dir)
        shutil.copy(ROOT / "template.yaml", self.dir)
        (self.dir / "frontend").mkdir()
        self.bin = self.dir / "stubs"
        self.bin.mkdir()
        for name, body in STUBS.items():
            path = self.bin / name
            path.write_text("#!/bin/sh\n" + LOG + textwrap.dedent(body))
            path.chmod(path.stat().st_mode | stat.S_IEXEC)
        self.calls = self.dir / "calls.log"
        self.calls.touch()
        self.status = self.dir / "stack-status"
        self.status.write_text(status)
        self.home = self.dir / "home"
        self.home.mkdir()

    def run(self, script: str, **env) -> subprocess.CompletedProcess:
        lock = (ROOT / "Cargo.lock").read_text()
        version = lock.split('name = "wasm-bindgen"\nversion = "')[1].split('"')[0]
        return subprocess.run(
            ["bash", f"scripts/{script}"],
            cwd=self.dir,
            env={
                "PATH": f"{self.bin}:{SYSTEM_PATH}",
                "HOME": str(self.home),
                "CALLS": str(self.calls),
                "STACK_STATUS": str(self.status),
                "WASM_BINDGEN_VERSION": version,
                "AWS_REGION": "eu-west-1",
                **env,
            },
            capture_output=True,
            text=True,
            timeout=120,
        )

    def call_lines(self) -> list[str]:
        return self.calls.read_text().splitlines()

    def index(self, prefix: str) -> int:
        """Where the first call starting with `prefix` came, in order."""
        for at, line in enumerate(self.call_lines()):
            if line.startswith(prefix):
                return at
        raise AssertionError(f"no call {prefix!r} in:\n" + self.calls.read_text())

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Deploy(unittest.TestCase):
    def project(self, status: str) -> Project:
        project = Project(status)
        self.addCleanup(project.remove)
        return project

    def test_a_first_deploy_uploads_in_an_order_that_never_breaks_an_open_page(self):
        project = self.project("NONE")
        result = project.run("deploy")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        assets = project.index("aws s3 sync dist/ s3://site-bucket/ --region")
        config = project.index("aws s3 cp dist/config.json")
        page = project.index("aws s3 cp dist/index.html")
        invalidate = project.index("aws cloudfront create-invalidation")
        wait = project.index("aws cloudfront wait invalidation-completed")
        prune = project.index("aws s3 sync dist/ s3://site-bucket/ --delete")
        self.assertLess(project.index("sam deploy"), assets)
        self.assertTrue(assets < config < page < invalidate < wait < prune)
        self.assertIn("--id I2J3", project.call_lines()[wait])
        for sync in (assets, prune):
            line = project.call_lines()[sync]
            for exclude in ["index.html", "config.json", "*.br", "*.gz"]:
                self.assertIn(f"--exclude {exclude}", line)
        config_json = (project.dir / "dist" / "config.json").read_text()
        self.assertIn('"websocketUrl": "wss://abc123.execute-api.eu-west-1.amazonaws.com/prod"', config_json)

    def sam_deploy_line(self, project: Project) -> str:
        return project.call_lines()[project.index("sam deploy")]

    def test_every_parameter_is_passed_so_an_override_never_sticks(self):
        project = self.project("UPDATE_COMPLETE")
        result = project.run("deploy", SAM_PARAMETERS="RateLimit=0 RateBurst=20", ALLOWED_ORIGINS="https://a.example, https://b.example")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        line = self.sam_deploy_line(project)
        for given in ['RateLimit="0"', 'RateBurst="20"', 'AllowedOrigins="https://a.example, https://b.example"', 'StageName="prod"', 'ConnectReservedConcurrency="0"']:
            self.assertIn(given, line)
        self.assertRegex(result.stdout, r"RateLimit\s+0\n")
        # The next plain deploy puts the defaults back, and clears the origins.
        project.calls.write_text("")
        result = project.run("deploy")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        line = self.sam_deploy_line(project)
        for default in ['RateLimit="2"', 'RateBurst="10"', 'AllowedOrigins=""', 'ThrottlingRateLimit="500"']:
            self.assertIn(default, line)
        # Every parameter of the template, no more.
        names = [l.split("=")[0] for l in subprocess.run(
            ["python3", "scripts/template_parameters.py", "template.yaml"], cwd=project.dir,
            capture_output=True, text=True, check=True).stdout.splitlines()]
        self.assertGreaterEqual(len(names), 9)
        for name in names:
            self.assertIn(f" {name}=", line)

    def test_an_unknown_parameter_is_refused_before_anything_is_built(self):
        project = self.project("UPDATE_COMPLETE")
        result = project.run("deploy", SAM_PARAMETERS="RateLimt=0")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("RateLimt=0", result.stderr)
        calls = project.calls.read_text()
        self.assertNotIn("sam build", calls)
        self.assertNotIn("sam deploy", calls)

    def test_the_web_app_is_built_before_the_stack_and_sam_build_has_no_beta_features(self):
        project = self.project("NONE")
        result = project.run("deploy")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertLess(project.index("trunk build"), project.index("sam build"))
        self.assertLess(project.index("sam build"), project.index("sam deploy"))
        self.assertNotIn("--beta-features", project.calls.read_text())

    def test_an_update_rollback_failure_names_the_region_in_its_hint(self):
        project = self.project("UPDATE_ROLLBACK_FAILED")
        result = project.run("deploy")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("continue-update-rollback --stack-name chat-rooms --region eu-west-1", result.stderr)

    def test_a_stack_left_by_a_failed_first_deploy_is_explained_not_retried(self):
        project = self.project("ROLLBACK_COMPLETE")
        result = project.run("deploy")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("ROLLBACK_COMPLETE", result.stderr)
        self.assertIn("Table already exists", result.stderr)
        self.assertIn("REPLACE_FAILED_STACK=yes", result.stderr)
        calls = project.calls.read_text()
        self.assertNotIn("sam deploy", calls)
        self.assertNotIn("delete-stack", calls)

    def test_with_consent_the_failed_stack_is_replaced(self):
        project = self.project("ROLLBACK_COMPLETE")
        result = project.run("deploy", REPLACE_FAILED_STACK="yes")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertLess(
            project.index("aws cloudformation delete-stack"),
            project.index("aws cloudformation wait stack-delete-complete"),
        )
        self.assertLess(project.index("aws cloudformation wait stack-delete-complete"), project.index("sam deploy"))

    def test_a_stack_sam_left_in_review_is_deployed_over(self):
        project = self.project("REVIEW_IN_PROGRESS")
        result = project.run("deploy")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("sam deploy", project.calls.read_text())

    def test_a_stack_whose_delete_failed_points_at_destroy(self):
        project = self.project("DELETE_FAILED")
        result = project.run("deploy")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("bash scripts/destroy", result.stderr)
        self.assertNotIn("sam deploy", project.calls.read_text())

    def test_a_busy_stack_is_left_alone(self):
        project = self.project("UPDATE_IN_PROGRESS")
        result = project.run("deploy")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("busy (UPDATE_IN_PROGRESS)", result.stderr)
        self.assertNotIn("sam deploy", project.calls.read_text())

    def test_destroy_empties_the_bucket_then_deletes_the_stack(self):
        project = self.project("UPDATE_COMPLETE")
        result = project.run("destroy")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertLess(project.index("aws s3 rm s3://site-bucket/ --recursive"), project.index("sam delete"))


class PythonTools(unittest.TestCase):
    def test_tools_install_into_a_project_venv_on_a_pep_668_python(self):
        python = shutil.which("python3", path=SYSTEM_PATH)
        externally_managed = list(Path("/usr/lib").glob("python3*/EXTERNALLY-MANAGED"))
        if not python or not externally_managed:
            self.skipTest("needs a system python3 that refuses pip install (PEP 668)")
        scratch = Path(tempfile.mkdtemp(prefix="chat-venv-test-"))
        self.addCleanup(shutil.rmtree, scratch, True)
        shutil.copytree(ROOT / ".ci", scratch / ".ci")
        # What the scripts did before: refused on this python3.
        refused = subprocess.run(
            [python, "-m", "pip", "install", "--dry-run", "pyflakes"],
            capture_output=True, text=True, env={"PATH": SYSTEM_PATH, "HOME": str(scratch)},
        )
        self.assertIn("externally-managed-environment", refused.stderr)
        # A small package with a command stands in for cargo-lambda and sam.
        result = subprocess.run(
            ["bash", "-c", "source .ci/env && source .ci/aws-tools && ensure_python_tool pyflakes pyflakes && command -v pyflakes"],
            cwd=scratch, capture_output=True, text=True, timeout=300,
            env={"PATH": SYSTEM_PATH, "HOME": str(scratch)},
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout.strip().splitlines()[-1], str(scratch / ".venv" / "bin" / "pyflakes"))


if __name__ == "__main__":
    unittest.main()
