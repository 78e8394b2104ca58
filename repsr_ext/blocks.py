"""Re-parameterizable training blocks: RepSR and the blocks it is compared with.

Every block maps ``N x Cin x H x W`` to ``N x Cout x H x W`` with a sum of linear branches (no
activation inside a block) and ``fuse()`` returns the single 3x3 conv ``(weight, bias)`` that
reproduces it exactly once BN uses its running statistics (eval mode, or the "population" phase of
``ModifiedBatchNorm2d``):

* ``plain``  -- one 3x3 conv (the deployed form itself).
* ``repvgg`` -- 3x3+BN, 1x1+BN, identity BN (RepVGG, Ding et al. 2021).
* ``acb``    -- 3x3+BN, 1x3+BN, 3x1+BN (ACNet, Ding et al. 2019).
* ``dbb``    -- 3x3+BN, 1x1+BN, 1x1+BN -> 3x3 avgpool+BN, 1x1+BN -> 3x3+BN (Diverse Branch Block).
* ``ecb``    -- 3x3, 1x1 -> 3x3, 1x1 -> scaled Sobel-x / Sobel-y / Laplacian (ECBSR, no BN).
* ``repsr``  -- identity + two (3x3 expand -> [BN] -> 1x1 squeeze -> [BN]) paths (RepSR).

The merge rules used by ``fuse()``:

* BN after a conv ``(K, b)``: with ``s = gamma / sqrt(var + eps)`` the pair becomes
  ``(s * K, s * (b - mean) + beta)``; an identity is the 3x3 kernel with a 1 at the centre of the
  channel diagonal; 1x1 / 1x3 / 3x1 kernels are zero-padded to 3x3 around their centre.
* 3x3 ``(K1, b1)`` then 1x1 ``(W2, b2)``: ``K = sum_m W2[o, m] K1[m]``, ``b = W2 b1 + b2``.
* 1x1 ``(W1, b1)`` then 3x3 ``(K2, b2)``: ``K = sum_m K2[o, m] W1[m]``,
  ``b = b2 + sum_{m,h,w} K2[o, m, h, w] b1[m]``. This is exact only if the 3x3 sees the 1x1
  output padded with ``b1`` -- the value a 1x1 conv of the zero-padded input would give -- so
  DBB and ECB pad that intermediate map with its per-channel bias instead of zeros.
* Parallel branches add their kernels and biases.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ModifiedBatchNorm2d",
    "fuse_bn",
    "bn_to_kernel",
    "identity_kernel",
    "pad_to_3x3",
    "pad_with_channel_values",
    "BNAndPad",
    "FusibleBlock",
    "PlainBlock",
    "RepVGGBlock",
    "ACBlock",
    "DBBlock",
    "ECBlock",
    "RepSRBlock",
    "BLOCKS",
    "make_block",
]


# ---- BN with a population phase ------------------------------------------------------------------


class ModifiedBatchNorm2d(nn.BatchNorm2d):
    """RepSR's BN: ordinary BN first, then trained with frozen population statistics.

    Phase "batch" (the default) is ``nn.BatchNorm2d``. After ``switch_to_population()`` a
    training-mode forward normalizes with the running statistics, which stop updating (no momentum
    update, ``num_batches_tracked`` frozen), while weight and bias keep learning -- so the training
    forward equals the eval forward and the fused deploy conv. Eval mode always uses the running
    statistics.

    The phase lives in the persistent buffer ``population_mode`` (saved in and restored from
    ``state_dict``) and is independent of ``train()``/``eval()``. Forward reads a Python mirror of
    it, ``_population``, to avoid a host-device sync per BN per step; switch the phase only through
    ``switch_to_population()`` or ``load_state_dict``, which keep the two in step.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.register_buffer("population_mode", torch.tensor(False, device=device))
        self._population = False

    def switch_to_population(self) -> None:
        self.population_mode.fill_(True)
        self._population = True

    @property
    def uses_population_stats(self) -> bool:
        return self._population

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self._population:
            self._check_input_dim(x)
            # training=False: normalize with the running stats and leave them untouched.
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # State dicts written before the phase existed (or by nn.BatchNorm2d) mean phase "batch".
        # nn.Module.load_state_dict hands each module a copy, so adding the key here is local.
        phase_key = prefix + "population_mode"
        if phase_key not in state_dict:
            state_dict[phase_key] = torch.tensor(False)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._population = bool(self.population_mode)

    def extra_repr(self) -> str:
        phase = "population" if self._population else "batch"
        return f"{super().extra_repr()}, phase={phase}"


def _bn_scale_and_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Inference-mode BN as ``y = scale * x + shift`` per channel."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is None:
        return scale, -bn.running_mean * scale
    scale = bn.weight * scale
    return scale, bn.bias - bn.running_mean * scale


def fuse_bn(kernel: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Folds inference-mode ``bn`` into the conv ``(kernel [O, I, kh, kw], bias [O] or None)``
    that precedes it; returns the ``(kernel, bias)`` of the single equivalent conv."""
    scale, shift = _bn_scale_and_shift(bn)
    fused_bias = shift if bias is None else shift + scale * bias
    return kernel * scale.view(-1, 1, 1, 1), fused_bias


def _depthwise_to_dense(kernel: Tensor, channels: int) -> Tensor:
    """A per-channel ``[C or 1, 1, kh, kw]`` kernel as the dense ``[C, C, kh, kw]`` one."""
    eye = torch.eye(channels, dtype=kernel.dtype, device=kernel.device)
    return eye[:, :, None, None] * kernel


def identity_kernel(channels: int, *, dtype=None, device=None) -> Tensor:
    """The ``[C, C, 3, 3]`` kernel of the identity map (pad 1)."""
    centre = torch.zeros(1, 1, 3, 3, dtype=dtype, device=device)
    centre[..., 1, 1] = 1
    return _depthwise_to_dense(centre, channels)


def bn_to_kernel(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """An identity branch with BN (RepVGG) as a 3x3 ``(kernel, bias)``."""
    stats = bn.running_var
    kernel = identity_kernel(bn.num_features, dtype=stats.dtype, device=stats.device)
    return fuse_bn(kernel, None, bn)


def pad_to_3x3(kernel: Tensor) -> Tensor:
    """Zero-pads a centred 1x1 / 1x3 / 3x1 kernel (conv padded to keep the size) to 3x3."""
    pad_h = (3 - kernel.shape[-2]) // 2
    pad_w = (3 - kernel.shape[-1]) // 2
    return F.pad(kernel, (pad_w, pad_w, pad_h, pad_h))


def _merge_3x3_then_1x1(
    first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """3x3 ``(K1 [M, I, 3, 3], b1)`` followed by 1x1 ``(W2 [O, M, 1, 1], b2)`` as one 3x3."""
    (kernel1, bias1), (kernel2, bias2) = first, second
    pointwise = kernel2[:, :, 0, 0]
    return torch.einsum("om,mihw->oihw", pointwise, kernel1), pointwise @ bias1 + bias2


def _merge_1x1_then_3x3(
    first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """1x1 ``(W1 [M, I, 1, 1], b1)`` followed by 3x3 ``(K2 [O, M, 3, 3], b2)`` as one 3x3; exact
    when the 3x3 sees the 1x1 output padded with ``b1`` (see ``pad_with_channel_values``)."""
    (kernel1, bias1), (kernel2, bias2) = first, second
    kernel = torch.einsum("omhw,mi->oihw", kernel2, kernel1[:, :, 0, 0])
    return kernel, kernel2.sum(dim=(2, 3)) @ bias1 + bias2


def pad_with_channel_values(x: Tensor, values: Tensor) -> Tensor:
    """Pads ``x [N, C, H, W]`` by one pixel on each side with the per-channel ``values [C]``."""
    n, c, h, w = x.shape
    padded = values.view(1, c, 1, 1).expand(n, c, h + 2, w + 2).clone()
    padded[:, :, 1:-1, 1:-1] = x
    return padded


class BNAndPad(nn.Module):
    """BN, then a one-pixel border holding BN's response to a zero input (its running-stat shift).

    That border is what a 3x3 op (padding 0) after a 1x1 conv + BN must see for the branch to merge
    exactly. It uses the running statistics, so it is exact whenever the BN is (eval mode or the
    population phase); under mini-batch statistics it approximates the border, as DBB does.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = ModifiedBatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(x)
        # The shift is taken after the BN call: that call may update the running stats in place,
        # which autograd forbids for tensors already saved for backward.
        _, shift = _bn_scale_and_shift(self.bn)
        return pad_with_channel_values(y, shift)


# ---- blocks --------------------------------------------------------------------------------------


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _conv_bn(in_channels: int, out_channels: int, kernel_size, padding) -> nn.Sequential:
    """A bias-free conv followed by BN (the BN supplies the bias)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
        ModifiedBatchNorm2d(out_channels),
    )


def _fuse_conv_bn(branch: nn.Sequential) -> tuple[Tensor, Tensor]:
    """A ``_conv_bn`` branch as one ``(kernel, bias)``."""
    conv, bn = branch
    return fuse_bn(conv.weight, conv.bias, bn)


def _conv_params(conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    return conv.weight, bias


def _conv_params_then_bn(conv: nn.Conv2d, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``conv`` followed by ``bn`` -- a BN or ``nn.Identity`` -- as one ``(kernel, bias)``."""
    kernel, bias = _conv_params(conv)
    return fuse_bn(kernel, bias, bn) if isinstance(bn, nn.BatchNorm2d) else (kernel, bias)


class FusibleBlock(nn.Module):
    """Interface of every block: ``forward`` and an exact ``fuse()`` into one 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels

    def fuse(self) -> tuple[Tensor, Tensor]:
        """``(weight [Cout, Cin, 3, 3], bias [Cout])``, detached and contiguous, in the dtype and
        device of the parameters, such that ``F.conv2d(x, weight, bias, padding=1)`` equals this
        block's eval-mode forward (and its training forward once all BN use population stats)."""
        with torch.no_grad():
            weight, bias = self._merge()
        return weight.contiguous(), bias.contiguous()

    def _merge(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def zero_init_branches(self) -> None:
        """The usual "zero-init" of residual branches, for every block type alike: every branch
        but one main path starts switched off (its last scale -- a BN's gamma, or the last conv's
        weight and bias where no BN ends it -- set to 0), so the block starts as its main path:
        the identity where the block has one, otherwise its 3x3 conv (or first path). A main path
        that ends in a BN starts with gamma ``MAIN_PATH_GAMMA``: with gamma 1 a BN block's output
        has unit variance whatever its input, which starts a BN network far from where a plain
        conv network starts (BN's scale invariance keeps the signal and gradients alive through
        the small gamma). Gradients reach every switched-off scale, so branches learn at once."""
        for module in self._side_branch_ends():
            _switch_off(module)
        main = self._main_branch_end()
        if isinstance(main, nn.BatchNorm2d):
            main.weight.fill_(MAIN_PATH_GAMMA)

    @torch.no_grad()
    def switch_off_main_path(self) -> None:
        """For the network's last block: its main path's last conv starts at 0 too (a BN-ended
        main path keeps its small gamma), so the network starts as its nearest-upsampled input."""
        main = self._main_branch_end()
        if isinstance(main, nn.Conv2d):
            _switch_off(main)

    def _side_branch_ends(self) -> list[nn.Module]:
        """The last scaling module of each branch that ``zero_init_branches`` switches off."""
        return []

    def _main_branch_end(self) -> nn.Module | None:
        """The last module of the main path; None where the main path is the identity."""
        return None


MAIN_PATH_GAMMA = 0.01


def _switch_off(module: nn.Module) -> None:
    if isinstance(module, nn.BatchNorm2d):
        module.weight.zero_()
    elif isinstance(module, nn.Conv2d):
        module.weight.zero_()
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, _EdgeBranch):
        module.scale.zero_()
        module.bias.zero_()
    else:
        raise TypeError(f"cannot switch off a {type(module).__name__}")


class PlainBlock(FusibleBlock):
    """One 3x3 conv with bias: the deployed form, trained directly (the VGG baseline)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)

    def _merge(self) -> tuple[Tensor, Tensor]:
        return self.conv.weight.clone(), self.conv.bias.clone()

    def _main_branch_end(self) -> nn.Module | None:
        return self.conv


class RepVGGBlock(FusibleBlock):
    """3x3+BN, 1x1+BN, and an identity BN when ``in_channels == out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.conv3x3 = _conv_bn(in_channels, out_channels, 3, 1)
        self.conv1x1 = _conv_bn(in_channels, out_channels, 1, 0)
        self.identity = ModifiedBatchNorm2d(out_channels) if in_channels == out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3x3(x) + self.conv1x1(x)
        return y if self.identity is None else y + self.identity(x)

    def _side_branch_ends(self) -> list[nn.Module]:
        if self.identity is None:
            return [self.conv1x1[1]]
        return [self.conv3x3[1], self.conv1x1[1]]

    def _main_branch_end(self) -> nn.Module | None:
        # The identity BN is the main path where there is one: gamma 1 would normalise it too.
        return self.conv3x3[1] if self.identity is None else self.identity

    def _merge(self) -> tuple[Tensor, Tensor]:
        kernel, bias = _fuse_conv_bn(self.conv3x3)
        kernel1x1, bias1x1 = _fuse_conv_bn(self.conv1x1)
        kernel, bias = kernel + pad_to_3x3(kernel1x1), bias + bias1x1
        if self.identity is not None:
            kernel_id, bias_id = bn_to_kernel(self.identity)
            kernel, bias = kernel + kernel_id, bias + bias_id
        return kernel, bias


class ACBlock(FusibleBlock):
    """ACNet's asymmetric block: 3x3+BN, 1x3+BN, 3x1+BN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.square = _conv_bn(in_channels, out_channels, (3, 3), (1, 1))
        self.horizontal = _conv_bn(in_channels, out_channels, (1, 3), (0, 1))
        self.vertical = _conv_bn(in_channels, out_channels, (3, 1), (1, 0))

    def forward(self, x: Tensor) -> Tensor:
        return self.square(x) + self.horizontal(x) + self.vertical(x)

    def _side_branch_ends(self) -> list[nn.Module]:
        return [self.horizontal[1], self.vertical[1]]

    def _main_branch_end(self) -> nn.Module | None:
        return self.square[1]

    def _merge(self) -> tuple[Tensor, Tensor]:
        kernel, bias = _fuse_conv_bn(self.square)
        for branch in (self.horizontal, self.vertical):
            branch_kernel, branch_bias = _fuse_conv_bn(branch)
            kernel, bias = kernel + pad_to_3x3(branch_kernel), bias + branch_bias
        return kernel, bias


class DBBlock(FusibleBlock):
    """Diverse Branch Block: 3x3+BN; 1x1+BN; 1x1 -> BN -> 3x3 avgpool -> BN; 1x1 -> BN -> 3x3 -> BN.

    The 1x1+BN output feeding a 3x3 op is padded with the BN's zero-input response
    (``BNAndPad``), and the 3x3 op itself uses padding 0, so the merge is exact at the border.
    ``internal_channels`` is the width between the 1x1 and 3x3 convs (DBB: ``in_channels``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, internal_channels: int | None = None
    ) -> None:
        super().__init__(in_channels, out_channels)
        internal_channels = in_channels if internal_channels is None else internal_channels
        _check_positive_int("internal_channels", internal_channels)
        self.conv3x3 = _conv_bn(in_channels, out_channels, 3, 1)
        self.conv1x1 = _conv_bn(in_channels, out_channels, 1, 0)
        self.avg_pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.avg_bn_pad = BNAndPad(out_channels)
        self.avg_bn = ModifiedBatchNorm2d(out_channels)
        self.kxk_pointwise = nn.Conv2d(in_channels, internal_channels, 1, bias=False)
        self.kxk_bn_pad = BNAndPad(internal_channels)
        self.kxk_conv = nn.Conv2d(internal_channels, out_channels, 3, padding=0, bias=False)
        self.kxk_bn = ModifiedBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        # The border is already padded, so the kernel-1/9 average matches count_include_pad=True.
        avg = F.avg_pool2d(self.avg_bn_pad(self.avg_pointwise(x)), 3, stride=1, padding=0)
        kxk = self.kxk_conv(self.kxk_bn_pad(self.kxk_pointwise(x)))
        return self.conv3x3(x) + self.conv1x1(x) + self.avg_bn(avg) + self.kxk_bn(kxk)

    def _side_branch_ends(self) -> list[nn.Module]:
        return [self.conv1x1[1], self.avg_bn, self.kxk_bn]

    def _main_branch_end(self) -> nn.Module | None:
        return self.conv3x3[1]

    def _merge(self) -> tuple[Tensor, Tensor]:
        kernel, bias = _fuse_conv_bn(self.conv3x3)
        kernel1x1, bias1x1 = _fuse_conv_bn(self.conv1x1)
        kernel, bias = kernel + pad_to_3x3(kernel1x1), bias + bias1x1

        avg_first = fuse_bn(self.avg_pointwise.weight, None, self.avg_bn_pad.bn)
        weight = self.avg_pointwise.weight
        average = torch.full((1, 1, 3, 3), 1 / 9, dtype=weight.dtype, device=weight.device)
        average_kernel = _depthwise_to_dense(average, self.out_channels)
        avg_kernel, avg_bias = _merge_1x1_then_3x3(
            avg_first, (average_kernel, torch.zeros_like(avg_first[1]))
        )
        avg_kernel, avg_bias = fuse_bn(avg_kernel, avg_bias, self.avg_bn)

        kxk_first = fuse_bn(self.kxk_pointwise.weight, None, self.kxk_bn_pad.bn)
        kxk_kernel, kxk_bias = _merge_1x1_then_3x3(kxk_first, _conv_params(self.kxk_conv))
        kxk_kernel, kxk_bias = fuse_bn(kxk_kernel, kxk_bias, self.kxk_bn)

        return kernel + avg_kernel + kxk_kernel, bias + avg_bias + kxk_bias


_SOBEL_X = [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]
_SOBEL_Y = [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]
_LAPLACIAN = [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]


class _EdgeBranch(nn.Module):
    """ECB edge branch: 1x1 conv, then a depthwise fixed mask with a learnable per-channel scale
    and bias. The 1x1 output is padded with its bias so the branch merges exactly."""

    def __init__(self, in_channels: int, out_channels: int, mask: list[list[float]]) -> None:
        super().__init__()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        # ECBSR's initialisation: the edge filters start almost switched off.
        self.scale = nn.Parameter(torch.randn(out_channels, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_channels) * 1e-3)
        self.register_buffer("mask", torch.tensor(mask).view(1, 1, 3, 3), persistent=False)
        self.channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = pad_with_channel_values(self.pointwise(x), self.pointwise.bias)
        return F.conv2d(y, self.scale * self.mask, self.bias, groups=self.channels)

    def merge(self) -> tuple[Tensor, Tensor]:
        dense = _depthwise_to_dense(self.scale * self.mask, self.channels)
        return _merge_1x1_then_3x3(_conv_params(self.pointwise), (dense, self.bias))


class ECBlock(FusibleBlock):
    """ECBSR's edge-oriented block (no BN): 3x3; 1x1 (to ``depth_multiplier * out``) -> 3x3;
    1x1 -> scaled Sobel-x; 1x1 -> scaled Sobel-y; 1x1 -> scaled Laplacian."""

    def __init__(self, in_channels: int, out_channels: int, depth_multiplier: int = 2) -> None:
        super().__init__(in_channels, out_channels)
        _check_positive_int("depth_multiplier", depth_multiplier)
        mid_channels = depth_multiplier * out_channels
        self.conv3x3 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.expand_pointwise = nn.Conv2d(in_channels, mid_channels, 1)
        self.expand_conv = nn.Conv2d(mid_channels, out_channels, 3, padding=0)
        self.sobel_x = _EdgeBranch(in_channels, out_channels, _SOBEL_X)
        self.sobel_y = _EdgeBranch(in_channels, out_channels, _SOBEL_Y)
        self.laplacian = _EdgeBranch(in_channels, out_channels, _LAPLACIAN)

    def forward(self, x: Tensor) -> Tensor:
        expanded = pad_with_channel_values(self.expand_pointwise(x), self.expand_pointwise.bias)
        y = self.conv3x3(x) + self.expand_conv(expanded)
        return y + self.sobel_x(x) + self.sobel_y(x) + self.laplacian(x)

    def _side_branch_ends(self) -> list[nn.Module]:
        return [self.expand_conv, self.sobel_x, self.sobel_y, self.laplacian]

    def _main_branch_end(self) -> nn.Module | None:
        return self.conv3x3

    def _merge(self) -> tuple[Tensor, Tensor]:
        kernel, bias = _conv_params(self.conv3x3)
        expand = _merge_1x1_then_3x3(
            _conv_params(self.expand_pointwise), _conv_params(self.expand_conv)
        )
        branches = [
            expand,
            self.sobel_x.merge(),
            self.sobel_y.merge(),
            self.laplacian.merge(),
        ]
        for branch_kernel, branch_bias in branches:
            kernel, bias = kernel + branch_kernel, bias + branch_bias
        return kernel, bias


_REPSR_BN_PLACEMENTS = ("both", "expand", "squeeze", "none")


class _ExpandSqueeze(nn.Module):
    """One RepSR path: 3x3 expand -> [BN] -> 1x1 squeeze -> [BN]. A conv has a bias only where
    no BN follows it (the BN's shift makes a bias redundant)."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, bn: str) -> None:
        super().__init__()
        wide = expansion * out_channels
        bn_after_expand = bn in ("both", "expand")
        bn_after_squeeze = bn in ("both", "squeeze")
        self.expand = nn.Conv2d(in_channels, wide, 3, padding=1, bias=not bn_after_expand)
        self.expand_bn = ModifiedBatchNorm2d(wide) if bn_after_expand else nn.Identity()
        self.squeeze = nn.Conv2d(wide, out_channels, 1, bias=not bn_after_squeeze)
        self.squeeze_bn = ModifiedBatchNorm2d(out_channels) if bn_after_squeeze else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.squeeze_bn(self.squeeze(self.expand_bn(self.expand(x))))

    def end(self) -> nn.Module:
        """The path's last scale: the squeeze BN, or the squeeze conv where no BN follows it."""
        return self.squeeze_bn if isinstance(self.squeeze_bn, nn.BatchNorm2d) else self.squeeze

    def merge(self) -> tuple[Tensor, Tensor]:
        return _merge_3x3_then_1x1(
            _conv_params_then_bn(self.expand, self.expand_bn),
            _conv_params_then_bn(self.squeeze, self.squeeze_bn),
        )


class RepSRBlock(FusibleBlock):
    """RepSR block: ``y = x + P1(x) + P2(x)``, each path 3x3 expand (to ``expansion * out``
    channels) -> [BN] -> 1x1 squeeze -> [BN].

    ``bn`` places the BN: "both", "expand" (after the expand conv only), "squeeze" (after the
    squeeze conv only) or "none" (the no-BN ablation). The identity carries no BN and is dropped
    when ``in_channels != out_channels`` (head and tail layers).
    """

    def __init__(
        self, in_channels: int, out_channels: int, expansion: int = 2, bn: str = "both"
    ) -> None:
        super().__init__(in_channels, out_channels)
        _check_positive_int("expansion", expansion)
        if bn not in _REPSR_BN_PLACEMENTS:
            allowed = ", ".join(map(repr, _REPSR_BN_PLACEMENTS))
            raise ValueError(f"bn must be one of {allowed}, got {bn!r}")
        self.has_identity = in_channels == out_channels
        self.path1 = _ExpandSqueeze(in_channels, out_channels, expansion, bn)
        self.path2 = _ExpandSqueeze(in_channels, out_channels, expansion, bn)

    def forward(self, x: Tensor) -> Tensor:
        y = self.path1(x) + self.path2(x)
        return y + x if self.has_identity else y

    def _side_branch_ends(self) -> list[nn.Module]:
        if self.has_identity:
            return [self.path1.end(), self.path2.end()]
        return [self.path2.end()]

    def _main_branch_end(self) -> nn.Module | None:
        return None if self.has_identity else self.path1.end()

    @torch.no_grad()
    def zero_init_branches(self) -> None:
        # A RepSR network's body blocks all carry an identity, so a head (or tail) path that ends
        # in a conv (bn "expand" or "none") can start small as well, like a BN-ended one: signal
        # and gradients travel the identities. Without this the head's full-size output would run
        # through the identities to the output.
        super().zero_init_branches()
        main = self._main_branch_end()
        if isinstance(main, nn.Conv2d):
            main.weight.mul_(MAIN_PATH_GAMMA)
            if main.bias is not None:
                main.bias.mul_(MAIN_PATH_GAMMA)

    def _merge(self) -> tuple[Tensor, Tensor]:
        kernel1, bias1 = self.path1.merge()
        kernel2, bias2 = self.path2.merge()
        kernel, bias = kernel1 + kernel2, bias1 + bias2
        if self.has_identity:
            identity = identity_kernel(self.out_channels, dtype=kernel.dtype, device=kernel.device)
            kernel = kernel + identity
        return kernel, bias


BLOCKS: dict[str, type[FusibleBlock]] = {
    "plain": PlainBlock,
    "repvgg": RepVGGBlock,
    "acb": ACBlock,
    "dbb": DBBlock,
    "ecb": ECBlock,
    "repsr": RepSRBlock,
}


def make_block(name: str, in_channels: int, out_channels: int, **options) -> FusibleBlock:
    """Builds ``BLOCKS[name](in_channels, out_channels, **options)``; an unknown block name or an
    option the block does not take raises ValueError naming it and listing the valid ones."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}; valid blocks: {', '.join(BLOCKS)}")
    block_class = BLOCKS[name]
    accepted = list(inspect.signature(block_class).parameters)[2:]  # after in/out channels
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"block {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
    return block_class(in_channels, out_channels, **options)
