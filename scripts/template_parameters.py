"""Prints each parameter of template.yaml with its default, one `Name=Default`
per line, in the template's order.

`scripts/deploy` passes every parameter explicitly: on an existing stack SAM
sends `UsePreviousValue` for any it is not given, so an override made once
(`RateLimit=0` for a load test) would otherwise stick to every later deploy.

Standard library only (Debian's python3 has no YAML module): the template's
Parameters block is plain YAML, two-space indented, read line by line.
"""

import re
import sys
from pathlib import Path


def parameters(template: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    in_block = False
    for line in template.splitlines():
        if re.match(r"^\S", line):
            in_block = line.rstrip() == "Parameters:"
            continue
        if not in_block:
            continue
        name = re.match(r"^  ([A-Za-z0-9]+):\s*$", line)
        if name:
            found.append((name.group(1), ""))
            continue
        default = re.match(r"^    Default:\s*(.*?)\s*$", line)
        if default and found:
            value = default.group(1)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found[-1] = (found[-1][0], value)
    return found


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "template.yaml")
    for key, value in parameters(path.read_text()):
        print(f"{key}={value}")
