"""The commands shown in docs/oversight.md and the README's "Stopping an agent" and "Human
approval" (also how ``serve`` is started there) are commands the CLI accepts as written (a
renamed flag breaks this test, not an operator in an incident)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from authz_server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def shown_commands() -> list[str]:
    found = []
    for doc in (ROOT / "docs" / "oversight.md", ROOT / "README.md"):
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                words = line.split()
                if len(words) > 1 and words[0] == "authz-server" and words[1] in (
                    "revoke", "revocations", "approvals", "approve", "reject", "serve",
                ):  # fmt: skip
                    found.append(line)
    return found


COMMANDS = shown_commands()


def test_the_docs_show_every_command() -> None:
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert shown == {"revoke", "revocations", "approvals", "approve", "reject", "serve"}
    assert any("--admin-token-file" in c and "--admin-public-url" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_documented_command_parses(command: str) -> None:
    build_parser().parse_args(shlex.split(command)[1:])
