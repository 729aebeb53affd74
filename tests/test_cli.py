import subprocess
import sys

from service import __version__
from service.cli import main


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
