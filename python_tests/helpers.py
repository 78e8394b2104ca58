"""Shared test helpers: randomization of every parameter and BN statistic, and an independent
float64 reference of the deployed chain written directly with F.conv2d."""
import torch
import torch.nn.functional as F
from torch import nn


def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Random weights, biases, BN affine parameters and BN running statistics, so that a fused
    merge that ignores any of them is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g).to(m.running_mean.dtype) * 0.5)
                m.running_var.copy_((torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5).to(m.running_var.dtype))
                m.weight.add_(1.0)  # affine weights around 1 keep activations O(1) through depth
    return module


def reference_chain(x, weights, biases, slopes, scale, residual=True, clamp=False):
    """The deployed network, written independently of repsr_ext, evaluated in float64."""
    y = x.double()
    for i, (w, b) in enumerate(zip(weights, biases)):
        y = F.conv2d(y, w.double(), b.double(), padding=1)
        if i < len(weights) - 1:
            s = slopes[i].double().view(1, -1, 1, 1)
            y = torch.where(y >= 0, y, s * y)
    y = F.pixel_shuffle(y, scale)
    if residual:
        y = y + x.double().repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return y.clamp(0, 1) if clamp else y


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()
