from click.testing import CliRunner

from evalkit import __version__
from evalkit.cli import main


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "evalkit" in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_option_is_an_error():
    result = CliRunner().invoke(main, ["--no-such-option"])
    assert result.exit_code != 0


# --- the CLI is light: help and import load no command module and no torch ----------------------

import json as _json  # noqa: E402
import os as _os  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import pytest as _pytest  # noqa: E402

_PROBE = """
import json, sys
args = sys.argv[1:]
if args:
    from evalkit.cli import main
    try:
        main(args, prog_name="evalkit")
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
else:
    import evalkit.cli
print(json.dumps({"torch": "torch" in sys.modules, "commands": sorted(m for m in sys.modules if m.startswith("evalkit.cli."))}))
"""


@_pytest.mark.parametrize("args", [[], ["--help"], ["report", "--help"], ["baselines", "--help"]])
def test_help_and_import_load_no_torch(args):
    """`import evalkit.cli`, `evalkit --help` and `evalkit report --help` must not import torch (a fresh
    interpreter, so nothing else imported it first). Catches an eager command import in evalkit.cli."""
    root = _Path(__file__).resolve().parents[1]
    env = {**_os.environ, "PYTHONPATH": str(root)}
    out = _subprocess.run([_sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env,
                          cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    found = _json.loads(out.stdout.strip().splitlines()[-1])
    assert not found["torch"], f"evalkit {' '.join(args)} imported torch"
    allowed = {"evalkit.cli.group", *(["evalkit.cli.report_cmd"] if args[:1] in (["report"], ["baselines"]) else [])}
    assert set(found["commands"]) <= allowed, found["commands"]


def test_lazy_command_table_names_every_command():
    """The group's table (used for `evalkit --help`) names exactly the commands the modules register."""
    import importlib

    from evalkit.cli.group import COMMANDS

    for modules, _ in COMMANDS.values():
        for module in modules:
            importlib.import_module(f"evalkit.cli.{module}")
    assert set(main.commands) == set(COMMANDS)
    assert sorted(main.list_commands(None)) == sorted(COMMANDS)


def test_presets_shows_name_as_optional():
    result = CliRunner().invoke(main, ["presets", "--help"])
    assert result.exit_code == 0 and "[NAME]" in result.output.splitlines()[0]
