"""SwishNet (Hussain & Haque, arXiv:1812.00149) in PyTorch: a causal, gated 1-D CNN
over MFCC frames. See /work/shared/SWISHNET.md, Fig. 1.

Choices the paper leaves open, made here:

- A layer's "filters" are its convolution's output channels; the gate
  ``tanh(a) * sigmoid(b)`` passes on half of them. Counting Fig. 1 this way
  gives 4,919 (slim) and 15,839 (wide) parameters against the published
  5,483 / 18,267, the same as SWISHNET.md's literal count.
- The stack's "strides" 3, 2, 2, 2, 2 are dilations, so residual additions line
  up in time and the network emits one vector of class logits per frame.
- Residuals in the stack: layers 2 to 4 (input and output widths agree there);
  skips: the outputs of layers 3 to 5, concatenated before the 1x1 conv.
- Time pooling: global average of the frame-wise logits.
- Per-coefficient MFCC normalisation (training-set mean and std) is a buffer
  inside the model, so an exported model takes raw ``service.features`` MFCCs.

Every convolution is padded on the left only: frame ``t`` of any output depends
on input frames ``<= t``. That makes right padding harmless, which training
uses to batch windows of different lengths (see ``pooled_mean``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from models.labels import LABELS
from service.cli import CommandError
from service.features import N_MFCC

ARCHITECTURES = ("slim", "wide")


@dataclass(frozen=True)
class SwishNetConfig:
    """Shape of a SwishNet; saved in every checkpoint so shape travels with weights."""

    arch: str = "slim"
    n_mfcc: int = N_MFCC
    labels: tuple[str, ...] = LABELS
    block_filters: tuple[int, int, int] = (16, 8, 8)
    stack_filters: tuple[int, ...] = (16, 16, 16, 16, 32)
    stack_dilations: tuple[int, ...] = (3, 2, 2, 2, 2)
    block_kernel: int = 3
    separable_kernel: int = 6
    stack_kernel: int = 3
    n_skips: int = 3

    @classmethod
    def for_arch(cls, arch: str, stack_dilations: tuple[int, ...] | None = None) -> "SwishNetConfig":
        """SwishNet-slim, or SwishNet-wide (every width doubled); optionally other stack dilations."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}: expected one of {ARCHITECTURES}")
        scale = 2 if arch == "wide" else 1
        base = cls()
        dilations = tuple(stack_dilations or base.stack_dilations)
        if len(dilations) != len(base.stack_filters) or min(dilations) < 1:
            raise ValueError(f"expected {len(base.stack_filters)} positive stack dilations, got {dilations}")
        return cls(
            arch=arch,
            block_filters=tuple(f * scale for f in base.block_filters),
            stack_filters=tuple(f * scale for f in base.stack_filters),
            stack_dilations=dilations,
        )

    @property
    def receptive_field(self) -> int:
        """Input frames that one output frame sees (the current one included)."""
        blocks = len(self.block_filters) * (max(self.block_kernel, self.separable_kernel) - 1)
        return 1 + blocks + sum((self.stack_kernel - 1) * d for d in self.stack_dilations)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SwishNetConfig":
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


def gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation: split the channels in halves a, b; return tanh(a) * sigmoid(b)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only, so output frame t sees input frames <= t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class GatedBlock(nn.Module):
    """A gated causal conv in parallel with a gated causal depthwise-separable conv, concatenated."""

    def __init__(self, in_channels: int, filters: int, kernel: int, separable_kernel: int):
        super().__init__()
        if filters % 4:
            raise ValueError(f"block filters must be a multiple of 4 (two gated halves), got {filters}")
        self.conv = CausalConv1d(in_channels, filters, kernel)
        self.depthwise = CausalConv1d(in_channels, in_channels, separable_kernel, groups=in_channels)
        self.pointwise = nn.Conv1d(in_channels, filters, 1)
        self.out_channels = filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([gate(self.conv(x)), gate(self.pointwise(self.depthwise(x)))], dim=1)


class SwishNet(nn.Module):
    """Input raw MFCCs (batch, n_mfcc, frames); see ``frame_logits`` and ``forward``."""

    def __init__(self, config: SwishNetConfig):
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.n_mfcc))
        self.register_buffer("feature_std", torch.ones(config.n_mfcc))
        blocks, channels = [], config.n_mfcc
        for filters in config.block_filters:
            blocks.append(GatedBlock(channels, filters, config.block_kernel, config.separable_kernel))
            channels = filters
        self.blocks = nn.ModuleList(blocks)
        stack = []
        for filters, dilation in zip(config.stack_filters, config.stack_dilations):
            stack.append(CausalConv1d(channels, filters, config.stack_kernel, dilation=dilation))
            channels = filters // 2
        self.stack = nn.ModuleList(stack)
        skip_channels = sum(f // 2 for f in config.stack_filters[-config.n_skips:])
        self.classifier = nn.Conv1d(skip_channels, len(config.labels), 1)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training set's per-coefficient MFCC mean and std (std floored)."""
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def frame_logits(self, mfcc: torch.Tensor) -> torch.Tensor:
        """Causal class logits per frame: (batch, n_mfcc, frames) -> (batch, frames, classes)."""
        if mfcc.dim() != 3 or mfcc.shape[1] != self.config.n_mfcc or mfcc.shape[2] == 0:
            raise ValueError(f"expected MFCCs of shape (batch, {self.config.n_mfcc}, frames >= 1), got "
                             f"{tuple(mfcc.shape)}; one frame needs 400 samples (25 ms) of 16 kHz audio")
        x = (mfcc - self.feature_mean[:, None]) / self.feature_std[:, None]
        x = self.blocks[0](x)
        x2 = self.blocks[1](x)
        x = self.blocks[2](x2) + x2  # the residual from block 2 into block 3
        skips = []
        for index, conv in enumerate(self.stack):
            y = gate(conv(x))
            x = y + x if 0 < index < len(self.stack) - 1 else y  # residuals in the middle layers
            if index >= len(self.stack) - self.config.n_skips:
                skips.append(x)
        return self.classifier(torch.cat(skips, dim=1)).transpose(1, 2)

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        """Time-pooled class logits (batch, classes): the mean of the frame logits."""
        return self.frame_logits(mfcc).mean(dim=1)


def pooled_mean(frame_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pool (batch, frames, classes) logits with (batch, frames) weights: 1 on the frames a window
    decision averages (its own non-silent frames), 0 on left context, silence and right padding.

    Because the network is causal, right padding never changes the other frames' logits.
    """
    weights = weights.to(frame_logits.dtype)
    return (frame_logits * weights[:, :, None]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (the normalisation buffers are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build(arch: str) -> SwishNet:
    return SwishNet(SwishNetConfig.for_arch(arch))


class CheckpointError(CommandError):
    """A checkpoint that cannot be loaded; the message says why."""


def load_checkpoint(path: str | Path) -> tuple[SwishNet, dict]:
    """The model (in eval mode) and the whole checkpoint dictionary written by training."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected RUN_DIR/best.pt or RUN_DIR/last.pt "
                              "from 'swishnet train'")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not {"config", "model"} <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a SwishNet checkpoint (it lacks 'config' and 'model')")
    model = SwishNet(SwishNetConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint
