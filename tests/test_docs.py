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


def _mentions(text: str, option: str) -> bool:
    """`--seed` is mentioned by `--seed 3`, not by `--seed-file` or `--seeds`; `-o` not by `-on`."""
    return re.search(rf"{re.escape(option)}(?![\w-])", text) is not None


# README text outside every command's own section: the shared options (--json, -q, --max-*),
# exit codes, old models (--arch), security (--unsafe), cluster (--strategy ...).
SHARED = re.sub(r"<!-- BEGIN ([\w-]+) -->.*?<!-- END \1 -->",
                lambda m: "" if m.group(1) in COMMANDS else m.group(0), README, flags=re.S)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_is_documented_in_the_readme(name):
    """Each option (long or short spelling) appears in the command's own section or in the shared
    text, not only in another command's section (new's --seed does not document train's)."""
    section = _section(name)
    missing = []
    for param in _command(name).params:
        longs = [o for o in param.opts if o.startswith("--")]
        if not longs:
            continue
        if any(_mentions(section, o) or _mentions(SHARED, o) for o in param.opts):
            continue
        missing.append(longs[0])
    assert not missing, f"README does not mention {name} options: {missing}"


def test_readme_exit_codes_match_the_error_family():
    from wtool import errors

    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", README, re.M))
    for cls in (errors.UsageError, errors.InputError, errors.IncompatibleError, errors.UnsafeError,
                errors.DivergedError, errors.InternalError, errors.Interrupted):
        assert str(cls.exit_code) in table, f"README exit-code table lacks {cls.exit_code} ({cls.__name__})"
