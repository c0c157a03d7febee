"""README and --help stay in step with the commands (no TensorFlow needed)."""

from __future__ import annotations

import re

import click
import pytest

from tests.conftest import REPO
from wtool.cli import COMMANDS, cli

README = (REPO / "README.md").read_text(encoding="utf-8")


def _command(name: str) -> click.Command:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, f"command {name} is not wired"
    return command


def _section(name: str) -> str:
    match = re.search(rf"<!-- BEGIN {re.escape(name)} -->(.*?)<!-- END {re.escape(name)} -->", README, re.S)
    assert match, f"README has no section for {name}"
    return match.group(1)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_examples_and_a_readme_section(name):
    command = _command(name)
    assert command.help and "Examples" in command.help, f"{name}: --help needs an Examples: block"
    section = _section(name)
    assert f"### `wtool {name}" in section
    assert re.search(rf"^wtool {re.escape(name)} ", section, re.M), f"README {name}: no runnable example"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_is_documented_in_the_readme(name):
    section = _section(name)
    missing = []
    for param in _command(name).params:
        longs = [o for o in param.opts if o.startswith("--")]
        shorts = [o for o in param.opts if not o.startswith("--")]
        if not longs:
            continue
        if any(o in README for o in longs) or any(f"`{o}" in section or f" {o} " in section for o in shorts):
            continue
        missing.append(longs[0])
    assert not missing, f"README does not mention {name} options: {missing}"


def test_readme_exit_codes_match_the_error_family():
    from wtool import errors

    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", README, re.M))
    for cls in (errors.UsageError, errors.InputError, errors.IncompatibleError, errors.UnsafeError,
                errors.DivergedError, errors.InternalError, errors.Interrupted):
        assert str(cls.exit_code) in table, f"README exit-code table lacks {cls.exit_code} ({cls.__name__})"
