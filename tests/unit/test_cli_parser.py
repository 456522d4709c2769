"""`covey`'s parser: every command parses its own flags, and a command imports only its own
module (a client command does not pay for `covey serve`'s or `covey ledger`'s imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from covey import cli


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: covey {command}")


def test_the_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize(("argv", "command"), [
    (["chat", "serve"], "chat"), (["--version"], None), ([], None), (["nosuch"], None),
    (["ledger", "verify"], "ledger")])
def test_the_command_is_the_first_word(argv: list[str], command: str | None) -> None:
    assert cli._command(argv) == command


def test_a_client_command_imports_no_server_modules() -> None:
    """In a fresh interpreter: building `covey status`'s parser loads neither the node's
    settings nor the ledger nor aiohttp."""
    code = ("import sys\nfrom covey import cli\ncli._parser('status').parse_args(['status'])\n"
            "print(sorted(m for m in ('covey.config', 'covey.ledger.chain', 'aiohttp', "
            "'covey.node') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
