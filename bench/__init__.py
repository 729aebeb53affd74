"""The benchmark suite: ``python -m bench`` (see docs/performance.md). Tests never assert on its timings."""

import service  # noqa: F401  (first: it sets the one-BLAS-thread default before numpy loads)
