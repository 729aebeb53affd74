import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import platformdirs
import pytest

from service import __version__
from service.cli import build_parser, install_command, main


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


def test_dash_dash_version():
    result = subprocess.run([sys.executable, "-m", "service.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"swishnet {__version__}"


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from all_parsers(child)


def test_no_default_is_a_machine_path():
    """Defaults are the user's cache folder (or required options), never the build machine's folders."""
    defaults = [str(action.default) for parser in all_parsers(build_parser()) for action in parser._actions
                if isinstance(action.default, (str, Path))]
    assert defaults and not [default for default in defaults if default.startswith("/work")]
    from models.corpus_config import DEFAULT_CACHE, DEFAULT_OUT

    assert DEFAULT_OUT.parent == DEFAULT_CACHE.parent == platformdirs.user_cache_path("swishnet")


def test_data_dir_from_the_environment(tmp_path):
    code = "from models.corpus_config import DEFAULT_OUT; print(DEFAULT_OUT)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "SWISHNET_DATA_DIR": str(tmp_path)})
    assert result.stdout.strip() == str(tmp_path / "corpus")


# The train extra's packages (pyproject.toml), as import names
TRAIN_EXTRA = ("torch", "librosa", "onnx", "onnxscript", "yaml", "scipy", "silero_vad", "threadpoolctl", "music21",
               "fluidsynth")
WITHOUT_TRAIN_EXTRA = f"""
import sys

class RuntimeOnly:  # a runtime-only install: the train extra's packages cannot be imported
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_EXTRA!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, RuntimeOnly())
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["train", "--out", "run"], ["evaluate", "best.pt", "--card", "card.json"],
                                     ["export", "best.pt", "--out", "model.onnx"], ["corpus", "build"]])
def test_training_commands_without_the_train_extra_say_what_to_install(command):
    result = subprocess.run([sys.executable, "-c", WITHOUT_TRAIN_EXTRA, *command], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    name = " ".join(command[:2] if command[0] == "corpus" else command[:1])
    assert result.stderr.startswith(f"swishnet: error: swishnet {name} needs the train extra (")
    assert result.stderr.endswith(f" is not installed); install it with: {install_command('train')}\n")


def test_install_command_is_this_environments_pip():
    command = install_command("mic")
    assert command.startswith(f"{sys.executable} -m pip install -e ")
    assert command.endswith(f"{Path(__file__).resolve().parents[1]}[mic]'")
