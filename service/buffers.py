"""Bounded buffers of a stream: recent rows of features and short-block energies.

Both take input in chunks of any size and give the same result as processing
the whole signal at once; neither grows with the stream's length.
"""

from __future__ import annotations

import math

import numpy as np

from service.features import HOP_LENGTH, WIN_LENGTH

# Energies are kept per block of this many samples, so that both a feature hop
# and a feature frame are whole numbers of blocks: frame and hop RMS are exact.
ENERGY_BLOCK = math.gcd(HOP_LENGTH, WIN_LENGTH)
BLOCKS_PER_HOP = HOP_LENGTH // ENERGY_BLOCK
BLOCKS_PER_FRAME = WIN_LENGTH // ENERGY_BLOCK


class History:
    """The newest rows of an ever-growing sequence, indexed by absolute row number.

    Keeps at least the last ``keep`` rows plus the rows of the latest
    ``extend``; memory is bounded by the window, not by the stream's length.
    Rows are appended in place and the buffer is compacted only when full, so
    the cost per row does not grow with ``keep``.
    """

    def __init__(self, keep: int, row_shape: tuple[int, ...] = (), dtype: type = np.float32) -> None:
        self.keep = keep
        self._row_shape, self._dtype = row_shape, dtype
        self.reset()

    def extend(self, rows: np.ndarray) -> None:
        n = len(rows)
        if not n:
            return
        if self._end + n > len(self._buffer):
            kept = min(self.keep, self._end - self._start)
            capacity = max(len(self._buffer), 2 * (self.keep + n))
            buffer = self._buffer if capacity == len(self._buffer) else np.empty(
                (capacity, *self._row_shape), dtype=self._dtype)
            buffer[:kept] = self._buffer[self._end - kept : self._end]
            self._buffer, self._start, self._end = buffer, 0, kept
        self._buffer[self._end : self._end + n] = rows
        self._end += n
        self.total += n

    @property
    def first(self) -> int:
        """Absolute number of the oldest row still buffered."""
        return self.total - (self._end - self._start)

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (absolute numbers), a view."""
        if start < self.first or stop > self.total or start > stop:
            raise IndexError(f"rows {start}:{stop} are not buffered (have {self.first}:{self.total})")
        offset = self._start - self.first
        return self._buffer[start + offset : stop + offset]

    def at(self, indices: np.ndarray) -> np.ndarray:
        """Rows at absolute numbers ``indices`` (any shape); IndexError for rows not buffered."""
        positions = indices + (self._end - self.total)
        if positions.size and (positions.min() < self._start or positions.max() >= self._end):
            raise IndexError(f"rows {indices.min()}..{indices.max()} are not all buffered "
                             f"(have {self.first}:{self.total})")
        return self._buffer[positions]

    def last(self, count: int) -> np.ndarray:
        """The newest ``count`` rows (fewer if fewer were ever added), a view."""
        return self._buffer[max(self._start, self._end - count) : self._end]

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def reset(self) -> None:
        self._buffer = np.empty((0, *self._row_shape), dtype=self._dtype)
        self._start = self._end = 0
        self.total = 0


class BlockEnergy:
    """Mean square of each complete ENERGY_BLOCK of samples, whatever the chunking."""

    def __init__(self) -> None:
        self.reset()

    def push(self, samples: np.ndarray) -> np.ndarray:
        buffer = np.concatenate([self._pending, samples]) if self._pending.size else samples
        usable = buffer.size - buffer.size % ENERGY_BLOCK
        self._pending = buffer[usable:].copy()
        blocks = buffer[:usable].reshape(-1, ENERGY_BLOCK).astype(np.float64)
        return np.mean(blocks**2, axis=1).astype(np.float32)

    @property
    def buffered(self) -> int:
        return self._pending.size

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
