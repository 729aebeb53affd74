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

    Keeps ``keep`` old rows plus the rows of the latest block, so memory is
    bounded by the window, not by the stream's length.
    """

    def __init__(self, keep: int, row_shape: tuple[int, ...] = ()) -> None:
        self.keep = keep
        self._empty = np.zeros((0, *row_shape), dtype=np.float32)
        self.reset()

    def extend(self, rows: np.ndarray) -> None:
        if len(rows):
            self._rows = np.concatenate([self._rows[-self.keep :], rows])
            self.total += len(rows)

    def slice(self, start: int, stop: int) -> np.ndarray:
        first = self.total - len(self._rows)
        if start < first or stop > self.total:
            raise IndexError(f"rows {start}:{stop} are not buffered (have {first}:{self.total})")
        return self._rows[start - first : stop - first]

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def reset(self) -> None:
        self._rows = self._empty
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


def frame_neighbourhood_energies(block_energies: np.ndarray, n_frames: int, span_blocks: int) -> np.ndarray:
    """Mean square of the ``span_blocks`` blocks centred on each of ``n_frames`` frames.

    ``block_energies`` start at the first frame's first sample; a span that
    reaches past them is clipped, so each frame is judged by the audio given.
    """
    centres = np.arange(n_frames) * BLOCKS_PER_HOP + BLOCKS_PER_FRAME // 2
    start = np.clip(centres - span_blocks // 2, 0, len(block_energies) - 1)
    stop = np.minimum(start + span_blocks, len(block_energies))
    cumulative = np.concatenate([[0.0], np.cumsum(block_energies, dtype=np.float64)])
    return (cumulative[stop] - cumulative[start]) / (stop - start)
