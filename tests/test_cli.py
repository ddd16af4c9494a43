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
