"""PSNR / SSIM on Y against scikit-image's independent implementations, and known values.

scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)`` filters the whole image (reflect padding at the border) with the same truncated
11x11 Gaussian, then averages the SSIM map only after cropping (11 - 1) / 2 = 5 pixels per side:
exactly the pixels where no padding enters, i.e. MATLAB's 'valid' region. So on the same Y arrays
the two agree to floating-point summation order (~1e-15), and the tolerance can be 1e-10.
"""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from repsr_ext.metrics import psnr_ssim_y, psnr_y, rgb_to_y, ssim_y


def _pair(seed: int, shape=(48, 64, 3), noise=12):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape, dtype=np.uint8)
    # Smooth the base image a bit so the SSIM is in a realistic range, not ~0.
    hr = ((hr.astype(np.float64) + np.roll(hr, 1, 0) + np.roll(hr, 1, 1)) / 3).astype(np.uint8)
    sr = np.clip(hr.astype(np.int64) + rng.integers(-noise, noise + 1, shape), 0, 255).astype(np.uint8)
    return sr, hr


def _skimage_metrics(sr, hr, crop):
    y_sr, y_hr = rgb_to_y(sr), rgb_to_y(hr)
    if crop:
        y_sr, y_hr = y_sr[crop:-crop, crop:-crop], y_hr[crop:-crop, crop:-crop]
    psnr = peak_signal_noise_ratio(y_hr, y_sr, data_range=255)
    ssim = structural_similarity(
        y_sr, y_hr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    return psnr, ssim


@pytest.mark.parametrize("crop", [0, 2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_skimage(seed, crop):
    sr, hr = _pair(seed, noise=4 + 10 * seed)
    ref_psnr, ref_ssim = _skimage_metrics(sr, hr, crop)
    psnr, ssim = psnr_ssim_y(sr, hr, crop_border=crop)
    assert abs(psnr - ref_psnr) < 1e-10
    assert abs(ssim - ref_ssim) < 1e-10
    assert psnr == psnr_y(sr, hr, crop) and ssim == ssim_y(sr, hr, crop)


def test_tensor_and_array_inputs_agree():
    sr, hr = _pair(3)
    as_tensor = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in (sr, hr)]
    expected = psnr_ssim_y(sr, hr, 4)
    for a, b in ((as_tensor[0], as_tensor[1]), (as_tensor[0][None], hr), (sr / 255.0, hr)):
        psnr, ssim = psnr_ssim_y(a, b, 4)
        assert abs(psnr - expected[0]) < 1e-4  # float32 tensors hold the 8-bit values to ~1e-7
        assert abs(ssim - expected[1]) < 1e-6


def test_y_channel_known_values():
    colors = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    y = rgb_to_y(colors)[0]
    np.testing.assert_allclose(y, [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-12)


def test_identical_images():
    _, hr = _pair(4)
    assert psnr_y(hr, hr, 4) == math.inf
    assert ssim_y(hr, hr, 4) == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_psnr_by_formula():
    rng = np.random.default_rng(5)
    hr = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.9
    offset = float(rng.uniform(0.01, 0.05))
    # Y moves by (65.481 + 128.553 + 24.966) * offset = 219 * offset for a gray shift.
    assert psnr_y(hr + offset, hr, 4) == pytest.approx(20 * math.log10(255 / (219 * offset)), abs=1e-9)


def test_border_is_excluded():
    sr, hr = _pair(6)
    sr = hr.copy()
    sr[:3] = 0
    sr[:, -3:] = 255
    assert psnr_y(sr, hr, crop_border=3) == math.inf
    assert psnr_y(sr, hr, crop_border=2) < 40


def test_errors_name_the_problem():
    sr, hr = _pair(7)
    with pytest.raises(ValueError, match="differ in size"):
        psnr_y(sr[:-1], hr)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(sr[:14, :14], hr[:14, :14], crop_border=2)
    with pytest.raises(TypeError, match="uint8 or float"):
        psnr_y(sr.astype(np.int32), hr)
    with pytest.raises(ValueError, match="3 x H x W"):
        psnr_y(torch.rand(4, 8, 8), torch.rand(4, 8, 8))
