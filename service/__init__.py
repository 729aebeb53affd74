"""SwishNet Live runtime: audio I/O, streaming features, ONNX inference, API. No torch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swishnet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
