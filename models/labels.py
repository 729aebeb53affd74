"""The class labels, in the order of every model output (importable without torch)."""

LABELS: tuple[str, ...] = ("speech", "music", "noise")
