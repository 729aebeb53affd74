"""The runtime must import and work with no torch and no librosa installed."""

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "librosa", "onnx", "onnxscript"}:
                raise ImportError(f"{name} is blocked: the runtime must not need it")
    sys.meta_path.insert(0, Block())
""")


def run_without_training_stack(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True)


def test_blocker_really_blocks():
    result = run_without_training_stack("import torch")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_runtime_imports_without_torch_or_librosa():
    result = run_without_training_stack("""
        import pkgutil, importlib, service
        for module in pkgutil.walk_packages(service.__path__, "service."):
            importlib.import_module(module.name)
        import numpy as np
        from service.features import mfcc
        assert mfcc(np.zeros(16000, dtype=np.float32)).shape == (98, 20)
        from service.cli import main
        assert main(["version"]) == 0
    """)
    assert result.returncode == 0, result.stderr
