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
        self.label_after: list[int] = []
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
        return self.update_many(np.asarray(scores)[None])[0]

    def update_many(self, scores: np.ndarray) -> list[bool]:
        """Add the scores of several hops (hops, labels) at once; for each hop, whether the label changed
        (``label_after`` holds the label after each). The same as one ``update`` per hop."""
        recent = len(self._recent)
        rows = np.concatenate([np.array(self._recent).reshape(recent, scores.shape[1]), scores]) if recent else scores
        self._recent.extend(scores[-self.median_hops :])
        winners = []
        for end in range(recent + 1, min(len(rows), self.median_hops - 1) + 1):  # the stream's first hops
            winners.append(int(np.argmax(np.median(rows[:end], axis=0))))
        full = max(len(rows) - self.median_hops + 1, 0) - max(recent + 1 - self.median_hops, 0)
        if full > 0:
            windows = np.lib.stride_tricks.sliding_window_view(rows, self.median_hops, axis=0)[-full:]
            winners += np.argmax(np.median(windows, axis=-1), axis=1).tolist()
        changes, self.label_after = [], []
        for winner in winners:
            changes.append(self._hysteresis(winner))
            self.label_after.append(self.label)
        return changes

    def _hysteresis(self, winner: int) -> bool:
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
