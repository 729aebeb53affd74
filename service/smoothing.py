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
        self._recent: deque[list[float]] = deque(maxlen=median_hops)
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
        changes, self.label_after = [], []
        for row in scores.tolist():  # a few labels and hops: plain Python beats numpy's per-call overhead
            self._recent.append(row)
            count = len(self._recent)
            columns = [sorted(column) for column in zip(*self._recent)]
            if count % 2:
                medians = [column[count // 2] for column in columns]
            else:  # the stream's first hops, fewer than median_hops: numpy's median of an even count
                medians = [(column[count // 2 - 1] + column[count // 2]) / 2 for column in columns]
            changes.append(self._hysteresis(max(range(len(medians)), key=medians.__getitem__)))
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
