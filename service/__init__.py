"""SwishNet Live runtime: audio I/O, streaming features, ONNX inference, API. No torch."""

import os
from importlib.metadata import PackageNotFoundError, version

# One BLAS thread unless the user says otherwise: the MFCC matrix products are
# small, and a server runs one stream per thread; a BLAS thread pool on top
# made feature extraction about 9 times slower on a 2-core machine. Takes
# effect only when numpy is imported after this package, as the CLI and the
# server do.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    __version__ = version("swishnet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
