"""PSNR and SSIM on the Y channel, with the conventions of the SR literature (the MATLAB scripts of
EDSR/RCAN, BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel=True``):

* Y from RGB in [0, 1] by ITU-R BT.601 as MATLAB's ``rgb2ycbcr`` on a double image:
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B``, in [16, 235] on the 0-255 scale. Y is not rounded
  (MATLAB rounds only for uint8 input; the evaluation scripts pass doubles).
* ``crop_border`` pixels are removed on every side before measuring; use the SR scale.
* SSIM: 11x11 Gaussian window with sigma 1.5 (``fspecial('gaussian', 11, 1.5)``), 'valid'
  filtering (no padding), K1 = 0.01, K2 = 0.03, L = 255, population (co)variances, mean of the map.

Inputs: ``H x W x 3`` uint8 numpy arrays, ``H x W x 3`` float numpy arrays in [0, 1], or float
torch tensors ``3 x H x W`` / ``1 x 3 x H x W`` in [0, 1]. All arithmetic is float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# MATLAB rgb2ycbcr, Y row, for RGB in [0, 1] -> Y in [16, 235].
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2, _DATA_RANGE = 0.01, 0.03, 255.0


def _rgb01(img) -> np.ndarray:
    """Any accepted input -> float64 ``H x W x 3`` RGB in [0, 1]."""
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise TypeError(f"tensor images must be float in [0, 1], got {img.dtype}")
        t = img.detach().to("cpu", torch.float64)
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(f"tensor images must be 3 x H x W or 1 x 3 x H x W, got {tuple(img.shape)}")
        return t.permute(1, 2, 0).numpy()
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"array images must be H x W x 3, got shape {img.shape}")
        if img.dtype == np.uint8:
            return img.astype(np.float64) / 255.0
        if np.issubdtype(img.dtype, np.floating):
            return img.astype(np.float64)
        raise TypeError(f"array images must be uint8 or float in [0, 1], got {img.dtype}")
    raise TypeError(f"expected a numpy array or torch tensor, got {type(img).__name__}")


def rgb_to_y(img) -> np.ndarray:
    """The BT.601 luma of an RGB image as float64 ``H x W`` on the 0-255 scale, in [16, 235]."""
    rgb = _rgb01(img)
    r, g, b = _Y_WEIGHTS
    return _Y_OFFSET + r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]


def _y_pair(sr, hr, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    y_sr, y_hr = rgb_to_y(sr), rgb_to_y(hr)
    if y_sr.shape != y_hr.shape:
        raise ValueError(f"images differ in size: {y_sr.shape[::-1]} vs {y_hr.shape[::-1]} (W x H)")
    if crop_border:
        if min(y_sr.shape) <= 2 * crop_border:
            raise ValueError(f"a {y_sr.shape[1]}x{y_sr.shape[0]} image has nothing left after cropping {crop_border}px")
        y_sr = y_sr[crop_border:-crop_border, crop_border:-crop_border]
        y_hr = y_hr[crop_border:-crop_border, crop_border:-crop_border]
    return y_sr, y_hr


def psnr_from_y(y_sr: np.ndarray, y_hr: np.ndarray) -> float:
    """PSNR in dB between two Y arrays on the 0-255 scale; ``inf`` for identical arrays."""
    mse = float(np.mean((y_sr - y_hr) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(_DATA_RANGE**2 / mse)


def _gaussian_1d() -> torch.Tensor:
    """fspecial('gaussian', 11, 1.5) is the outer product of this normalized 1-D kernel."""
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor) -> torch.Tensor:
    """'valid' filtering of ``[..., H, W]`` with the 11x11 Gaussian, as two 1-D passes (the 2-D
    float64 conv is ~30x slower on the CPU)."""
    g = _gaussian_1d()
    rows = x.shape[-2] - SSIM_WINDOW + 1
    x = sum(g[k] * x[..., k : k + rows, :] for k in range(SSIM_WINDOW))
    cols = x.shape[-1] - SSIM_WINDOW + 1
    return sum(g[k] * x[..., :, k : k + cols] for k in range(SSIM_WINDOW))


def ssim_from_y(y_sr: np.ndarray, y_hr: np.ndarray) -> float:
    """MATLAB-convention SSIM between two Y arrays on the 0-255 scale (see the module docstring)."""
    if min(y_sr.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {y_sr.shape[1]}x{y_sr.shape[0]}")
    x = torch.from_numpy(np.ascontiguousarray(y_sr, dtype=np.float64))
    y = torch.from_numpy(np.ascontiguousarray(y_hr, dtype=np.float64))
    # The five local moments E[x], E[y], E[x^2], E[y^2], E[xy] in one filtering pass.
    mu_x, mu_y, xx, yy, xy = _filter_valid(torch.stack([x, y, x * x, y * y, x * y]))
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (_K1 * _DATA_RANGE) ** 2, (_K2 * _DATA_RANGE) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def psnr_y(sr, hr, crop_border: int = 0) -> float:
    """PSNR (dB) on the Y channel after removing ``crop_border`` pixels per side."""
    return psnr_from_y(*_y_pair(sr, hr, crop_border))


def ssim_y(sr, hr, crop_border: int = 0) -> float:
    """SSIM on the Y channel after removing ``crop_border`` pixels per side."""
    return ssim_from_y(*_y_pair(sr, hr, crop_border))


def psnr_ssim_y(sr, hr, crop_border: int = 0) -> tuple[float, float]:
    """Both metrics, converting to Y once."""
    y_sr, y_hr = _y_pair(sr, hr, crop_border)
    return psnr_from_y(y_sr, y_hr), ssim_from_y(y_sr, y_hr)
