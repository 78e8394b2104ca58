"""The training network (RepSRNet) and the deployed network it re-parameterizes into (PlainSR).

Both compute  out = pixel_shuffle(tail(body(head(x)))) + nearest_upsample(x):
a head layer (in -> C) + activation, ``num_blocks`` body layers (C -> C) + activation, a tail layer
(C -> out * scale^2), and the global residual. In RepSRNet every layer is a multi-branch block from
``blocks.py``; ``RepSRNet.reparameterize()`` merges each block into one 3x3 conv, once, and returns
the PlainSR that ``formats.py`` saves and the fused engine runs.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ModifiedBatchNorm2d, make_block

ACTIVATIONS = ("prelu", "relu", "lrelu", "identity")
RESIDUAL_MODES = ("nearest", "none")
# SRVGGNetCompact (Real-ESRGAN) uses LeakyReLU(0.1); using the same slope keeps files interchangeable.
DEFAULT_LRELU_SLOPE = 0.1

# name -> (num_blocks, channels), in the ECBSR convention "M<blocks>C<channels>".
PRESETS = {
    "M4C8": (4, 8),
    "M4C16": (4, 16),
    "M4C32": (4, 32),
    "M10C32": (10, 32),
    "M16C64": (16, 64),
}
_PRESET_PATTERN = re.compile(r"^M(\d+)C(\d+)$")


def parse_preset(name: str) -> tuple[int, int]:
    """``"M4C16"`` -> ``(4, 16)``. Named presets and any ``M<blocks>C<channels>`` are accepted."""
    if name in PRESETS:
        return PRESETS[name]
    match = _PRESET_PATTERN.match(name)
    if not match or int(match.group(2)) < 1:
        raise ValueError(
            f"unknown preset {name!r}: expected one of {sorted(PRESETS)} or 'M<blocks>C<channels>'"
        )
    return int(match.group(1)), int(match.group(2))


def make_activation(act: str, channels: int, lrelu_slope: float = DEFAULT_LRELU_SLOPE) -> nn.Module:
    if act == "prelu":
        return nn.PReLU(num_parameters=channels, init=0.25)
    if act == "relu":
        return nn.ReLU(inplace=False)
    if act == "lrelu":
        return nn.LeakyReLU(negative_slope=lrelu_slope)
    if act == "identity":
        return nn.Identity()
    raise ValueError(f"unknown activation {act!r}: expected one of {ACTIVATIONS}")


def negative_slopes(act_module: nn.Module, channels: int) -> torch.Tensor:
    """Every deployed activation is y = v >= 0 ? v : slope[c] * v; this returns slope[c]."""
    if isinstance(act_module, nn.PReLU):
        return act_module.weight.detach().expand(channels).clone()
    if isinstance(act_module, nn.LeakyReLU):
        return torch.full((channels,), float(act_module.negative_slope))
    if isinstance(act_module, nn.ReLU):
        return torch.zeros(channels)
    if isinstance(act_module, nn.Identity):
        return torch.ones(channels)
    raise TypeError(f"unsupported activation module {type(act_module).__name__}")


def _check_scale(scale: int) -> int:
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return scale


def _check_lrelu_slope(slope) -> float:
    """The leaky ReLU's negative slope as a float: a real, finite number (NaN or Inf would turn
    every negative activation into NaN / Inf)."""
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not math.isfinite(slope):
        raise ValueError(f"lrelu_slope must be a finite number, got {slope!r}")
    return float(slope)


def _residual(x: torch.Tensor, scale: int) -> torch.Tensor:
    return x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="nearest")


class RepSRNet(nn.Module):
    """The training-time network: multi-branch blocks with (modified) BN.

    Args:
        scale: upscaling factor (1 or more).
        channels: feature channels C.
        num_blocks: body blocks between head and tail (M in "M4C16").
        block: training block type, one of ``blocks.BLOCKS`` ("repsr" by default).
        act: activation after head and body blocks: prelu (per channel), relu, lrelu, identity.
        residual: "nearest" adds the nearest-upsampled input (needs in == out channels), "none" not.
        **block_options: passed to every block (e.g. ``expansion=2, bn="both"`` for repsr).
    """

    def __init__(
        self,
        scale: int,
        channels: int,
        num_blocks: int,
        block: str = "repsr",
        act: str = "prelu",
        in_channels: int = 3,
        out_channels: int = 3,
        residual: str = "nearest",
        lrelu_slope: float = DEFAULT_LRELU_SLOPE,
        **block_options,
    ):
        super().__init__()
        _check_scale(scale)
        for name, value in (("channels", channels), ("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 0:
            raise ValueError(f"num_blocks must be a non-negative integer, got {num_blocks!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}: expected one of {ACTIVATIONS}")
        if residual not in RESIDUAL_MODES:
            raise ValueError(f"unknown residual mode {residual!r}: expected one of {RESIDUAL_MODES}")
        if residual == "nearest" and in_channels != out_channels:
            raise ValueError(
                f"residual='nearest' adds the input to the output, so in_channels ({in_channels}) "
                f"must equal out_channels ({out_channels}); use residual='none'"
            )
        widths = [in_channels] + [channels] * (num_blocks + 1) + [out_channels * scale * scale]
        self.scale = scale
        self.block_type = block
        self.act_type = act
        self.residual = residual
        self.lrelu_slope = lrelu_slope = _check_lrelu_slope(lrelu_slope)
        self.block_options = dict(block_options)
        # Channels at every layer boundary: [in, C, ..., C, out * scale^2].
        self.channels = widths

        self.blocks = nn.ModuleList(
            make_block(block, cin, cout, **block_options) for cin, cout in zip(widths[:-1], widths[1:])
        )
        self.acts = nn.ModuleList(make_activation(act, c, lrelu_slope) for c in widths[1:-1])

    @classmethod
    def preset(cls, name: str, scale: int, **kwargs) -> "RepSRNet":
        """``RepSRNet.preset("M4C16", scale=4)``: 4 body blocks of 16 channels (ECBSR naming)."""
        num_blocks, channels = parse_preset(name)
        return cls(scale, channels, num_blocks, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for block, act in zip(self.blocks[:-1], self.acts):
            y = act(block(y))
        y = F.pixel_shuffle(self.blocks[-1](y), self.scale)
        return y + _residual(x, self.scale) if self.residual == "nearest" else y

    def zero_init_branches(self) -> None:
        """Every block starts as its main path (``FusibleBlock.zero_init_branches``) and the last
        block's conv-ended main path at 0, so every block type starts near the same function,
        the nearest-upsampled input (exactly it where ``residual="nearest"``)."""
        for block in self.blocks:
            block.zero_init_branches()
        self.blocks[-1].switch_off_main_path()

    # --- the modified BN --------------------------------------------------------------------------
    def batchnorms(self) -> list[ModifiedBatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, ModifiedBatchNorm2d)]

    def switch_bn_to_population(self) -> None:
        """Phase 2 of RepSR training: every BN normalizes with its population (running)
        statistics from now on, which stop updating; BN's affine parameters keep training.
        Survives ``train()`` and is stored in the state_dict."""
        for bn in self.batchnorms():
            bn.switch_to_population()

    @property
    def bn_phase(self) -> str:
        """"batch", "population", or "none" for a network without BN."""
        bns = self.batchnorms()
        if not bns:
            return "none"
        return "population" if all(bn.uses_population_stats for bn in bns) else "batch"

    # --- re-parameterization ----------------------------------------------------------------------
    @torch.no_grad()
    def reparameterize(self) -> "PlainSR":
        """Merges every block into one 3x3 conv and returns the deployed PlainSR.

        BN is folded with its running statistics, so the PlainSR computes what this network computes
        in eval mode, or in train mode after ``switch_bn_to_population()``."""
        weights, biases = zip(*(block.fuse() for block in self.blocks))
        slopes = [negative_slopes(act, w.shape[0]) for act, w in zip(self.acts, weights)]
        return PlainSR(
            list(weights),
            list(biases),
            act=self.act_type,
            slopes=slopes,
            scale=self.scale,
            residual=self.residual,
            lrelu_slope=self.lrelu_slope,
            block_type=self.block_type,
        )


class PlainSR(nn.Module):
    """The deployed network: a chain of 3x3 convs with activations, a tail conv, pixel shuffle and
    the nearest-upsampled input. This is also Real-ESRGAN's SRVGGNetCompact.

    Build it with ``RepSRNet.reparameterize()`` or ``PlainSR.load(path)``; construct it directly from
    conv weights ([Cout, Cin, 3, 3]) and biases, one per layer, head first, tail last."""

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        act: str = "prelu",
        slopes: Sequence[torch.Tensor] | None = None,
        scale: int = 4,
        residual: str = "nearest",
        lrelu_slope: float = DEFAULT_LRELU_SLOPE,
        block_type: str = "unknown",
    ):
        super().__init__()
        _check_scale(scale)
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}: expected one of {ACTIVATIONS}")
        if residual not in RESIDUAL_MODES:
            raise ValueError(f"unknown residual mode {residual!r}: expected one of {RESIDUAL_MODES}")
        if len(weights) < 1 or len(weights) != len(biases):
            raise ValueError(
                f"need one bias per conv weight and at least one layer, got {len(weights)} weights "
                f"and {len(biases)} biases"
            )
        for i, (w, b) in enumerate(zip(weights, biases)):
            if w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
                raise ValueError(f"layer {i}: weight must have shape [Cout, Cin, 3, 3], got {tuple(w.shape)}")
            if tuple(b.shape) != (w.shape[0],):
                raise ValueError(f"layer {i}: bias must have shape [{w.shape[0]}], got {tuple(b.shape)}")
            if i > 0 and w.shape[1] != weights[i - 1].shape[0]:
                raise ValueError(
                    f"layer {i}: weight expects {w.shape[1]} input channels but layer {i - 1} "
                    f"produces {weights[i - 1].shape[0]}"
                )
        in_ch, tail_out = weights[0].shape[1], weights[-1].shape[0]
        if tail_out % (scale * scale):
            raise ValueError(f"tail conv has {tail_out} channels, not a multiple of scale^2 = {scale * scale}")
        out_ch = tail_out // (scale * scale)
        if residual == "nearest" and in_ch != out_ch:
            raise ValueError(
                f"residual='nearest' needs as many output channels as input channels, got {in_ch} in "
                f"and {out_ch} out"
            )
        self.scale = scale
        self.act_type = act
        self.residual = residual
        self.lrelu_slope = lrelu_slope = _check_lrelu_slope(lrelu_slope)
        self.block_type = block_type

        self.convs = nn.ModuleList()
        for w, b in zip(weights, biases):
            conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, dtype=w.dtype, device=w.device)
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(b)
            self.convs.append(conv)
        self.acts = nn.ModuleList(make_activation(act, w.shape[0], lrelu_slope) for w in weights[:-1])
        if act == "prelu":
            if slopes is None or len(slopes) != len(weights) - 1:
                raise ValueError(f"act='prelu' needs {len(weights) - 1} slope tensors, one per activation")
            for i, (prelu, s) in enumerate(zip(self.acts, slopes)):
                if s.numel() not in (1, prelu.num_parameters):
                    raise ValueError(
                        f"activation {i}: PReLU slopes must have 1 or {prelu.num_parameters} values, "
                        f"got shape {tuple(s.shape)}"
                    )
                prelu.weight.data = s.detach().reshape(-1).expand(prelu.num_parameters).clone()
        self.to(weights[0].dtype)

    @property
    def channels(self) -> list[int]:
        """Channels at every layer boundary: [in, C1, ..., out * scale^2]."""
        return [self.convs[0].in_channels] + [c.out_channels for c in self.convs]

    @property
    def in_channels(self) -> int:
        return self.convs[0].in_channels

    @property
    def out_channels(self) -> int:
        return self.convs[-1].out_channels // (self.scale * self.scale)

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv, act in zip(self.convs[:-1], self.acts):
            y = act(conv(y))
        y = F.pixel_shuffle(self.convs[-1](y), self.scale)
        return y + _residual(x, self.scale) if self.residual == "nearest" else y

    def negative_slopes(self) -> list[torch.Tensor]:
        """Per-layer activation slopes (see ``negative_slopes``), for the fused engine."""
        return [negative_slopes(act, conv.out_channels) for act, conv in zip(self.acts, self.convs)]

    def layer_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(weights, biases, negative slopes) as detached tensors, head first."""
        weights = [c.weight.detach() for c in self.convs]
        biases = [c.bias.detach() for c in self.convs]
        return weights, biases, [s.to(weights[0].dtype) for s in self.negative_slopes()]

    # --- files (implemented in formats.py) --------------------------------------------------------
    def save(self, path) -> None:
        """Writes the deployed safetensors file (see ``formats.save_plain``)."""
        from .formats import save_plain

        save_plain(self, path)

    @classmethod
    def load(cls, path, act: str | None = None) -> "PlainSR":
        """Reads a deployed file, or an SRVGGNetCompact state dict (.pth or .safetensors).
        ``act`` only matters for SRVGG files without PReLU weights, whose activation a state dict
        cannot tell (relu or lrelu)."""
        from .formats import load_plain

        return load_plain(path, act=act)

    def export_srvgg(self, path) -> None:
        """Writes a Real-ESRGAN SRVGGNetCompact state dict (.pth or .safetensors by extension)."""
        from .formats import export_srvgg

        export_srvgg(self, path)
