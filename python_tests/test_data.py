"""Data pipeline: MATLAB bicubic imresize against a slow loop reference written from MATLAB's
definition (and PIL's independent antialiased bicubic in the interior), the bicubic degradation,
the patch datasets (crops, augmentation, bad files) and the infinite sampler."""
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from repsr_ext.data import (
    HELDOUT,
    EmbeddedImages,
    ImageFolderSR,
    InfiniteSampler,
    PairedFolderSR,
    bicubic_degrade,
    embedded_images,
    image_to_tensor,
    imresize,
    mod_crop,
    resized_length,
)

# --- an independent, slow reference of MATLAB imresize (bicubic) ---------------------------------


def matlab_cubic(x: float) -> float:
    a = abs(x)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def reference_resize_1d(signal, scale: float, antialiasing: bool = True) -> list:
    """MATLAB imresize along one axis, one output sample at a time (1-based indices as in MATLAB)."""
    n = len(signal)
    out_length = math.ceil(round(n * scale, 9))
    shrink = scale < 1 and antialiasing
    width = 4 / scale if shrink else 4
    out = []
    for i in range(1, out_length + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        total, acc = 0.0, 0.0
        for p in range(math.ceil(width) + 2):
            j = left + p
            w = scale * matlab_cubic(scale * (u - j)) if shrink else matlab_cubic(u - j)
            k = j
            while k < 1 or k > n:  # symmetric padding: reflect about the edges, edge sample repeated
                k = 1 - k if k < 1 else 2 * n + 1 - k
            total += w
            acc += w * signal[k - 1]
        out.append(acc / total)
    return out


def reference_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """H x W x C float64: rows (height) first, then columns, per channel."""
    h, w, c = img.shape
    tmp = np.array([[reference_resize_1d(img[:, x, ch], scale) for x in range(w)] for ch in range(c)])
    tmp = tmp.transpose(2, 1, 0)  # [out_h, w, c]
    out = np.array([[reference_resize_1d(tmp[y, :, ch], scale) for y in range(tmp.shape[0])] for ch in range(c)])
    return out.transpose(1, 2, 0)


@pytest.mark.parametrize("shape", [(13, 17), (16, 24), (21, 11)])
@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4])
def test_imresize_matches_loop_reference(shape, scale):
    rng = np.random.default_rng(0)
    img = rng.random((*shape, 3))
    ref = reference_imresize(img, scale)
    out_np = imresize(img, scale)
    out_torch = imresize(torch.from_numpy(img).permute(2, 0, 1), scale).permute(1, 2, 0).numpy()
    assert out_np.shape == ref.shape == out_torch.shape
    assert out_np.dtype == np.float64
    assert np.abs(out_np - ref).max() < 1e-6
    assert np.abs(out_torch - ref).max() < 1e-6


@pytest.mark.parametrize("scale", [1 / 4, 1 / 2, 2, 4])
def test_imresize_interior_matches_pil(scale):
    """PIL's BICUBIC is the same a = -0.5 kernel, antialiased the same way, but clips the kernel at
    the border instead of mirroring: away from the border both must agree (float32)."""
    rng = np.random.default_rng(1)
    img = rng.random((40, 52)).astype(np.float32)
    out = imresize(img, scale)
    pil = np.asarray(Image.fromarray(img, mode="F").resize(out.shape[::-1], Image.BICUBIC))
    margin = 3 if scale < 1 else 3 * int(scale)
    assert np.abs(out - pil)[margin:-margin, margin:-margin].max() < 1e-5


def test_imresize_properties():
    const = torch.full((3, 37, 29), 0.3, dtype=torch.float64)
    for scale in (1 / 2, 1 / 3, 1 / 4, 2, 4):
        out = imresize(const, scale)
        assert torch.allclose(out, const[..., :1, :1].expand_as(out), atol=1e-12)
    assert imresize(const, 1 / 2).shape[-2:] == (19, 15)  # ceil(37 / 2), ceil(29 / 2)
    assert imresize(const, 1 / 3).shape[-2:] == (13, 10)
    assert imresize(const, 4).shape[-2:] == (148, 116)
    assert resized_length(300, 1 / 3) == 100
    batch = torch.rand(2, 3, 16, 20)
    assert torch.equal(imresize(batch, 1 / 2)[1], imresize(batch[1], 1 / 2))
    with pytest.raises(TypeError, match="uint8"):
        imresize(np.zeros((8, 8, 3), np.uint8), 0.5)


def test_bicubic_degrade_mod_crops_and_quantizes():
    hr = torch.rand(3, 50, 66)
    lr = bicubic_degrade(hr, 4)
    assert lr.shape == (3, 12, 16)
    assert lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(lr, torch.round(lr * 255) / 255)
    raw = bicubic_degrade(hr, 4, quantize=False)
    assert torch.allclose(raw, imresize(hr[:, :48, :64], 1 / 4))
    assert torch.allclose(lr, raw.clamp(0, 1), rtol=0, atol=0.5 / 255 + 1e-6)
    hwc = bicubic_degrade(hr.permute(1, 2, 0).double().numpy(), 4)
    assert hwc.shape == (12, 16, 3)


# --- datasets ---------------------------------------------------------------------------------------


def _save_random_png(path: Path, height: int, width: int, seed: int, mode: str = "RGB") -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth-ish content: random noise upsampled, so bicubic has something to do.
    small = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return np.asarray(image.convert("RGB"))


def _find(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, int]:
    h, w = needle.shape[:2]
    for y in range(haystack.shape[0] - h + 1):
        for x in range(haystack.shape[1] - w + 1):
            if np.array_equal(haystack[y : y + h, x : x + w], needle):
                return y, x
    raise AssertionError("patch not found in the image")


def test_folder_patch_lr_equals_crop_of_whole_image_lr(tmp_path):
    """LR is degraded from a margin around the patch, so it equals the whole image's LR cropped."""
    image = _save_random_png(tmp_path / "a" / "b" / "img.png", 70, 90, seed=0)
    dataset = ImageFolderSR(tmp_path, scale=4, patch_size=32, augment=False, quantize=False)
    full_lr = bicubic_degrade(image_to_tensor(image), 4, quantize=False)
    for i in range(8):
        lr, hr = dataset[(0, i)]
        assert lr.shape == (3, 8, 8) and hr.shape == (3, 32, 32)
        y, x = _find(image, (hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        assert y % 4 == 0 and x % 4 == 0
        expected = full_lr[:, y // 4 : y // 4 + 8, x // 4 : x // 4 + 8]
        assert torch.allclose(lr, expected, atol=1e-5)


def test_augmentation_is_the_same_for_lr_and_hr(tmp_path):
    _save_random_png(tmp_path / "img.png", 64, 64, seed=1)
    dataset = ImageFolderSR(tmp_path, scale=2, patch_size=24, augment=True, quantize=False)
    transforms = set()
    for i in range(40):
        lr, hr = dataset[(0, i)]
        # Away from the patch border, the LR must be the degraded HR patch, whatever the transform.
        direct = bicubic_degrade(hr, 2, quantize=False)
        assert torch.allclose(lr[:, 2:-2, 2:-2], direct[:, 2:-2, 2:-2], atol=1e-5)
        transforms.add(tuple(hr[0, :2, :2].flatten().tolist()))
    assert len(transforms) > 8  # crops and transforms vary


def test_same_key_same_sample_and_dataloader_workers_do_not_matter(tmp_path):
    for k in range(3):
        _save_random_png(tmp_path / f"{k}.png", 48, 48, seed=k)
    dataset = ImageFolderSR(tmp_path, scale=2, patch_size=16, cache=True)
    a, b = dataset[(1, (5, 2, 7))], dataset[(1, (5, 2, 7))]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    def batches(workers):
        loader = DataLoader(dataset, batch_size=4, sampler=InfiniteSampler(len(dataset), seed=3), num_workers=workers)
        it = iter(loader)
        return [next(it) for _ in range(3)]

    for (lr0, hr0), (lr2, hr2) in zip(batches(0), batches(2)):
        assert torch.equal(lr0, lr2) and torch.equal(hr0, hr2)


def test_bad_and_small_images_are_skipped_with_warnings(tmp_path):
    good = _save_random_png(tmp_path / "good.png", 40, 40, seed=0)
    _save_random_png(tmp_path / "gray.png", 40, 40, seed=1, mode="L")
    _save_random_png(tmp_path / "rgba.png", 40, 40, seed=2, mode="RGBA")
    _save_random_png(tmp_path / "tiny.png", 12, 40, seed=3)
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    png = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    jpeg_path = tmp_path / "photo.jpg"
    Image.fromarray(good).save(jpeg_path, quality=90)
    jpeg = jpeg_path.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    sixteen = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")

    with pytest.warns(UserWarning) as record:
        dataset = ImageFolderSR(tmp_path, scale=2, patch_size=16)
    messages = " ".join(str(w.message) for w in record)
    for name in ("garbage.png", "truncated.png", "tiny.png"):
        assert name in messages
    names = sorted(p.name for p in dataset.paths)
    # The truncated JPEG passes the header check (JPEG has no checksums) and fails on decoding.
    assert names == ["deep.png", "good.png", "gray.png", "photo.jpg", "rgba.png", "truncated.jpg"]

    bad_index = names.index("truncated.jpg")
    with pytest.warns(UserWarning, match="truncated.jpg"):
        lr, hr = dataset[(bad_index, 0)]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file already known bad is substituted silently
        for seed in range(5):
            dataset[(bad_index, seed)]
    gray_lr, gray_hr = dataset[(names.index("gray.png"), 0)]
    assert torch.equal(gray_hr[0], gray_hr[1]) and torch.equal(gray_hr[1], gray_hr[2])
    deep = dataset[(names.index("deep.png"), 0)][1]
    assert deep.max() > 0.5  # 16-bit scaled to 8 bit, not clipped at 255/65535


def test_paired_folders_match_by_stem(tmp_path):
    (tmp_path / "LR").mkdir()
    for k in range(2):
        hr = _save_random_png(tmp_path / "HR" / f"{k:04d}.png", 40, 48, seed=k)
        lr = bicubic_degrade(hr / 255.0, 2)
        Image.fromarray(np.round(lr * 255).astype(np.uint8)).save(tmp_path / "LR" / f"{k:04d}x2.png")
    _save_random_png(tmp_path / "HR" / "lonely.png", 40, 48, seed=5)
    _save_random_png(tmp_path / "HR" / "0009.png", 40, 48, seed=6)
    _save_random_png(tmp_path / "LR" / "0009.png", 10, 10, seed=7)  # not half the HR size

    with pytest.warns(UserWarning) as record:
        dataset = PairedFolderSR(tmp_path / "LR", tmp_path / "HR", scale=2, patch_size=16, augment=False)
    messages = " ".join(str(w.message) for w in record)
    assert "lonely.png" in messages and "0009.png" in messages
    assert len(dataset) == 2
    lr, hr = dataset[(1, 0)]
    image = np.asarray(Image.open(tmp_path / "HR" / "0001.png"))
    lr_image = np.asarray(Image.open(tmp_path / "LR" / "0001x2.png"))
    y, x = _find(image, (hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    expected = lr_image[y // 2 : y // 2 + 8, x // 2 : x // 2 + 8]
    assert np.array_equal((lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)


def test_embedded_images_split():
    val, train = embedded_images("val"), embedded_images("train")
    assert [name for name, _ in val] == list(HELDOUT)
    assert not {n for n, _ in val} & {n for n, _ in train}
    assert len(train) >= 12
    for _, image in val + train:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    dataset = EmbeddedImages(scale=4, patch_size=64)
    lr, hr = dataset[(0, 0)]
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64)
    assert lr.dtype == torch.float32 and 0 <= float(hr.min()) and float(hr.max()) <= 1
    assert mod_crop(val[0][1], 3).shape[:2] == (510, 510)


def test_infinite_sampler_shards_and_resumes():
    single = InfiniteSampler(7, seed=1)
    stream = [k for k, _ in zip(single, range(28))]
    for epoch in range(4):  # every epoch is a permutation
        assert sorted(i for i, _ in stream[7 * epoch : 7 * epoch + 7]) == list(range(7))
    assert [i for i, _ in stream[:7]] != [i for i, _ in stream[7:14]]
    rank0 = [k for k, _ in zip(InfiniteSampler(7, 1, rank=0, world_size=2), range(14))]
    rank1 = [k for k, _ in zip(InfiniteSampler(7, 1, rank=1, world_size=2), range(14))]
    assert rank0 == stream[0::2] and rank1 == stream[1::2]
    resumed = [k for k, _ in zip(InfiniteSampler(7, 1, start=10), range(5))]
    assert resumed == stream[10:15]
