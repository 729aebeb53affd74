"""Causal smoothing of per-hop scores into a stable label.

Two stages, both causal and bounded: a median filter over the last
``median_hops`` score vectors, then hysteresis, where a new label must win
``switch_hops`` consecutive hops before the output label changes. Both delay a
change by a fixed number of hops, ``lag_hops``, which the caller subtracts
when it dates the change.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class LabelSmoother:
    """Scores (one row per hop, one column per label) -> smoothed label index."""

    def __init__(self, median_hops: int, switch_hops: int) -> None:
        self.median_hops = median_hops
        self.switch_hops = switch_hops
        self._recent: deque[np.ndarray] = deque(maxlen=median_hops)
        self.label: int | None = None
        self._candidate: int | None = None
        self._wins = 0

    @property
    def lag_hops(self) -> int:
        """How many hops a change is reported late: half the median, plus the hysteresis."""
        return (self.median_hops - 1) // 2 + self.switch_hops - 1

    def update(self, scores: np.ndarray) -> bool:
        """Add one hop's scores; return True when the smoothed label changed.

        The first hop sets the label without hysteresis.
        """
        self._recent.append(scores)
        winner = int(np.argmax(np.median(np.stack(self._recent), axis=0)))
        if self.label is None:
            self.label = winner
            return True
        if winner == self.label:
            self._candidate, self._wins = None, 0
            return False
        self._wins = self._wins + 1 if winner == self._candidate else 1
        self._candidate = winner
        if self._wins < self.switch_hops:
            return False
        self.label, self._candidate, self._wins = winner, None, 0
        return True

    def reset(self) -> None:
        self._recent.clear()
        self.label, self._candidate, self._wins = None, None, 0
