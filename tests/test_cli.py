import subprocess
import sys

from service import __version__
from service.cli import build_parser, main


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"swishnet {__version__}"


def test_help_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "version" in result.stdout


def test_unknown_command_fails():
    result = subprocess.run([sys.executable, "-m", "service.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_log_level_goes_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["serve", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert parser.parse_args(["--log-level", "ERROR", "classify", "a.wav"]).log_level == "ERROR"
    assert parser.parse_args(["version"]).log_level == "INFO"
