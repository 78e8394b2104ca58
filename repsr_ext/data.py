"""Training and validation data for super-resolution: MATLAB-compatible bicubic resizing, the
bicubic degradation, patch datasets (an image folder, LR/HR folder pairs, the photographs shipped
inside scikit-image) and the infinite, shardable sampler the trainer draws from.

Conventions:

* Images on disk and in memory are ``H x W x 3`` uint8 numpy arrays (grayscale is repeated to 3
  channels, alpha is dropped). Network tensors are float32 ``C x H x W`` in [0, 1].
* ``imresize`` takes torch tensors as ``[..., H, W]`` (CHW or NCHW) and numpy arrays as ``H x W``
  or ``H x W x C``; both floating point in [0, 1].
* A dataset item is ``(lr, hr)``: float32 tensors ``3 x p/s x p/s`` and ``3 x p x p``.
* Randomness: a dataset item is indexed by ``(image_index, sample_seed)``; every random choice for
  it (crop, flips, a substitute image) comes from ``numpy.random.default_rng(sample_seed)``. The
  ``InfiniteSampler`` derives the seeds from the run seed and the sample's position in the stream,
  so the batches are a pure function of (seed, position): independent of ``num_workers`` and of
  how many processes share the stream, and exactly resumable.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .images import read_image_file, readable_extensions

# Every extension PIL can open (.png, .jpg, .tif, .webp, .bmp, ...), lower case.
IMAGE_EXTENSIONS = readable_extensions()

# --- MATLAB-compatible bicubic resize -------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=512)
def _axis_weights(
    in_length: int, out_length: int, scale: float, antialiasing: bool
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: per output sample, the input indices it reads (0-based, already
    mirrored at the borders) and their normalized weights, both ``[out_length, taps]``."""
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        # Widening the kernel by 1/scale low-pass filters before subsampling (antialiasing).
        kernel_width /= scale

        def kernel(d):
            return scale * _cubic(scale * d)
    else:
        kernel = _cubic
    # Output pixel x (1-based) maps to input coordinate u, keeping pixel centres aligned.
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    # Symmetric border: the axis continues as its mirror image, edge sample repeated.
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    used = np.any(weights != 0, axis=0)
    return np.ascontiguousarray(weights[:, used]), np.ascontiguousarray(indices[:, used])


def resized_length(length: int, scale: float) -> int:
    """MATLAB's output size ``ceil(length * scale)``; products within 1e-9 of an integer count as
    that integer, so that e.g. ``300 * (1/3)`` gives 100, not 101."""
    product = length * scale
    nearest = round(product)
    return int(nearest) if abs(product - nearest) < 1e-9 else math.ceil(product)


@lru_cache(maxsize=512)
def _axis_matrix(in_length: int, scale: float, antialiasing: bool) -> np.ndarray:
    """The 1-D resize as a dense ``[out_length, in_length]`` float64 matrix (mirrored taps that
    land on the same input sample add up). A matrix product is far faster than a gather for the
    small patches of training and still cheap for whole validation images."""
    out_length = resized_length(in_length, scale)
    weights, indices = _axis_weights(in_length, out_length, scale, antialiasing)
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.arange(out_length)[:, None], indices), weights)
    return matrix


def _resize_chw(x: torch.Tensor, scale: float, antialiasing: bool) -> torch.Tensor:
    height, width = x.shape[-2:]
    rows = torch.from_numpy(_axis_matrix(height, float(scale), antialiasing)).to(x)
    cols = torch.from_numpy(_axis_matrix(width, float(scale), antialiasing)).to(x)
    # Height first, then width, as MATLAB does for equal scales.
    return torch.matmul(torch.matmul(rows, x), cols.T)


def imresize(img, scale: float, antialiasing: bool = True):
    """MATLAB ``imresize(img, scale)`` with the bicubic kernel (a = -0.5), antialiased when
    downscaling, symmetric border handling; the output is ``ceil(scale * size)`` per axis.

    ``img``: a floating-point torch tensor ``[..., H, W]`` (CHW or NCHW), or a floating-point numpy
    array ``H x W`` or ``H x W x C``; values are expected in [0, 1] but not clipped (bicubic
    over/undershoots). Returns the same kind, layout and dtype. The weights are computed in float64
    once per (length, scale) and applied as two 1-D passes (matrix products along H, then W).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if isinstance(img, np.ndarray):
        if not np.issubdtype(img.dtype, np.floating) or img.ndim not in (2, 3):
            raise TypeError(
                f"imresize takes a float H x W or H x W x C array, got {img.dtype} with shape {img.shape}"
                " (convert uint8 images with img / 255)"
            )
        x = torch.from_numpy(np.ascontiguousarray(img))
        x = x if img.ndim == 2 else x.permute(2, 0, 1)
        y = _resize_chw(x, scale, antialiasing)
        y = y if img.ndim == 2 else y.permute(1, 2, 0)
        return np.ascontiguousarray(y.numpy())
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point() or img.dim() < 2:
            raise TypeError(
                f"imresize takes a float tensor [..., H, W], got {img.dtype} with shape {tuple(img.shape)}"
            )
        return _resize_chw(img, scale, antialiasing)
    raise TypeError(f"imresize takes a torch tensor or numpy array, got {type(img).__name__}")


def mod_crop(img, scale: int):
    """Crops the bottom/right so both sides are multiples of ``scale``: tensors ``[..., H, W]``,
    numpy arrays ``H x W [x C]``."""
    if isinstance(img, torch.Tensor):
        h, w = img.shape[-2:]
        return img[..., : h - h % scale, : w - w % scale]
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def quantize_8bit(img):
    """Clips to [0, 1] and rounds to the 8-bit grid, as writing a PNG and reading it back would."""
    if isinstance(img, torch.Tensor):
        return img.clamp(0, 1).mul(255).round().div(255)
    return np.round(np.clip(img, 0, 1) * 255) / 255


def bicubic_degrade(hr, scale: int, quantize: bool = True):
    """The standard SR degradation: mod-crop ``hr`` to a multiple of ``scale``, downscale with
    MATLAB bicubic ``imresize``, then (``quantize=True``) clip to [0, 1] and round to the 8-bit grid.
    Takes and returns what ``imresize`` does (float tensors ``[..., H, W]``, float numpy HWC)."""
    lr = imresize(mod_crop(hr, scale), 1.0 / scale)
    return quantize_8bit(lr) if quantize else lr


# --- reading images -------------------------------------------------------------------------------


def as_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """``H x W`` or ``H x W x {1,3,4}`` uint8 -> ``H x W x 3`` uint8 (gray repeated, alpha dropped)."""
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an H x W, H x W x 1, x 3 or x 4 image, got shape {array.shape}")
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    return np.ascontiguousarray(array[:, :, :3])


def read_image(path) -> np.ndarray:
    """Decodes an image file as ``H x W x 3`` uint8, upright (EXIF orientation applied); every PIL
    mode and 16-bit colour converted as ``images.Picture.from_pil`` says (16 bits rounded to 8)."""
    return read_image_file(path).rgb8()


def list_images(root) -> list[Path]:
    """Image files (``IMAGE_EXTENSIONS``, any case) anywhere under ``root``, sorted; hidden files
    (names starting with '.', such as macOS ``._`` files) are left out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def probe_image(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` of a readable image, or None after a warning naming the file. Reads the
    header and runs PIL's integrity check (PNG checksums), without decoding the pixels."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            im.verify()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        warnings.warn(f"skipping unreadable image {path}: {type(e).__name__}: {e}", stacklevel=3)
        return None
    return height, width


def load_image_folder(root) -> list[tuple[str, np.ndarray]]:
    """Every readable image under ``root`` as ``(relative path without suffix, H x W x 3 uint8)``;
    unreadable files are skipped with a warning. For validation sets (decodes everything)."""
    root = Path(root)
    images = []
    for path in list_images(root):
        try:
            images.append((str(path.relative_to(root).with_suffix("")), read_image(path)))
        except Exception as e:
            warnings.warn(f"skipping unreadable image {path}: {type(e).__name__}: {e}", stacklevel=2)
    if not images:
        raise ValueError(f"no readable images under {root}")
    return images


# --- the photographs shipped inside scikit-image --------------------------------------------------

# name -> (skimage.data function, item of the tuple it returns or None), for every photograph in
# skimage.data that ships with the package (no download). Synthetic images (checkerboard,
# colorwheel, logo, ...) are left out, `cat` is `chelsea` under another name, and
# `microaneurysms` (102 x 102) is too small for training patches.
_EMBEDDED_SOURCES = {
    "astronaut": ("astronaut", None),
    "coffee": ("coffee", None),
    "chelsea": ("chelsea", None),
    "rocket": ("rocket", None),
    "motorcycle_left": ("stereo_motorcycle", 0),
    "motorcycle_right": ("stereo_motorcycle", 1),
    "hubble_deep_field": ("hubble_deep_field", None),
    "retina": ("retina", None),
    "ihc": ("immunohistochemistry", None),
    # grayscale, repeated to 3 channels
    "camera": ("camera", None),
    "brick": ("brick", None),
    "grass": ("grass", None),
    "gravel": ("gravel", None),
    "moon": ("moon", None),
    "page": ("page", None),
    "text": ("text", None),
    "clock": ("clock", None),
    "coins": ("coins", None),
    "cell": ("cell", None),
}
# The fixed validation split: three color photographs of different content (a portrait, an
# indoor still life, a cat's fur) and one grayscale photograph. Both motorcycle views stay in
# training because they show the same scene.
HELDOUT = ("astronaut", "coffee", "chelsea", "camera")
EMBEDDED_NAMES = tuple(_EMBEDDED_SOURCES)
# A fixed two-way split of every photograph for 2-fold cross-validation (splits "fold0", "fold1"):
# colour and grayscale photographs, portraits, textures and documents in both halves, both
# motorcycle views (one scene) on the same side.
FOLDS = (
    ("astronaut", "chelsea", "motorcycle_left", "motorcycle_right", "retina",
     "camera", "grass", "moon", "text", "coins"),
    ("coffee", "rocket", "hubble_deep_field", "ihc",
     "brick", "gravel", "page", "clock", "cell"),
)
EMBEDDED_SPLITS = ("train", "val", "all", "fold0", "fold1")


@lru_cache(maxsize=None)
def _load_embedded(name: str) -> np.ndarray | None:
    import skimage.data

    function_name, item = _EMBEDDED_SOURCES[name]
    try:
        image = getattr(skimage.data, function_name)()
    except Exception as e:  # files that scikit-image would have to download (pooch) are absent
        warnings.warn(f"skimage.data.{function_name} is not available offline, leaving out {name!r}: {e}")
        return None
    image = as_rgb_uint8(image[item] if item is not None else image)
    image.setflags(write=False)  # shared by every caller through the cache
    return image


def embedded_images(split: str = "train") -> list[tuple[str, np.ndarray]]:
    """The scikit-image photographs as ``(name, H x W x 3 uint8)``: ``split="val"`` gives
    ``HELDOUT``, ``"train"`` all the others, ``"all"`` both, ``"fold0"`` / ``"fold1"`` the halves
    of ``FOLDS``. Decoded once per process."""
    if split not in EMBEDDED_SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, EMBEDDED_SPLITS))}, got {split!r}")
    if split.startswith("fold"):
        names = list(FOLDS[int(split[4:])])
    else:
        names = [n for n in EMBEDDED_NAMES if split == "all" or (n in HELDOUT) == (split == "val")]
    images = [(n, _load_embedded(n)) for n in names]
    return [(n, img) for n, img in images if img is not None]


def embedded_split(source: str, default: str) -> str | None:
    """The split named by a data source: "embedded" -> ``default``, "embedded:<split>" ->
    <split> (checked); None for anything else (a folder)."""
    if source == "embedded":
        return default
    if source.startswith("embedded:"):
        split = source.removeprefix("embedded:")
        if split not in EMBEDDED_SPLITS:
            raise ValueError(f"unknown embedded split {split!r} in {source!r}; splits: {', '.join(EMBEDDED_SPLITS)}")
        return split
    return None


def validation_images(source: str) -> list[tuple[str, np.ndarray]]:
    """``"embedded"``: the held-out scikit-image photographs (``HELDOUT``); ``"embedded:<split>"``
    a split of them (``embedded_images``); ``"deadleaves"`` the synthetic dead-leaves test set
    (``dead_leaves_set``); otherwise every image in the folder ``source``. Each as
    ``(name, H x W x 3 uint8)``."""
    if source == "deadleaves":
        return dead_leaves_set()
    split = embedded_split(source, "val")
    return embedded_images(split) if split is not None else load_image_folder(source)


# --- dead leaves: synthetic test images with natural-image statistics -------------------------------


def dead_leaves_image(size: int = 256, seed: int = 0, r_min: float = 2.0, r_max: float = 64.0,
                      supersample: int = 4) -> np.ndarray:
    """A colour dead-leaves image, ``size`` x ``size`` uint8 RGB: opaque discs of uniformly random
    colour dropped one over another at uniformly random centres until every pixel is covered
    (the first disc to land on a pixel stays on top), radii from the scale-invariant density
    p(r) ~ r^-3 on [r_min, r_max] (Lee, Mumford & Huang 2001, "Occlusion models for natural
    images"; the test chart of Cao, Guichard & Hornung 2010). Such images share the power-law
    spectrum and the sharp occluding edges of photographs. Drawn ``supersample`` times larger
    and area-averaged, so that edges are antialiased as a camera's are. The same seed gives the
    same image."""
    rng = np.random.default_rng([seed, 271828])
    big = size * supersample
    canvas = np.zeros((big, big, 3), np.float32)
    covered = np.zeros((big, big), bool)
    yy, xx = np.mgrid[0:big, 0:big]
    lo, hi = r_min ** -2, r_max ** -2
    while not covered.all():
        # Inverse CDF of p(r) ~ r^-3 between r_min and r_max.
        r = supersample * (lo + rng.random() * (hi - lo)) ** -0.5
        cy, cx = rng.random(2) * big
        colour = rng.random(3).astype(np.float32)
        y0, y1 = max(0, int(cy - r)), min(big, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(big, int(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        disc = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        new = disc & ~covered[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1][new] = colour
        covered[y0:y1, x0:x1] |= new
    small = canvas.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.round(small * 255), 0, 255).astype(np.uint8)


DEAD_LEAVES_SEEDS = (0, 1, 2, 3)


@lru_cache(maxsize=None)
def _dead_leaves(seed: int) -> np.ndarray:
    image = dead_leaves_image(256, seed)
    image.setflags(write=False)
    return image


def dead_leaves_set() -> list[tuple[str, np.ndarray]]:
    """The synthetic test set: four 256 x 256 dead-leaves images (seeds ``DEAD_LEAVES_SEEDS``)."""
    return [(f"deadleaves_{seed}", _dead_leaves(seed)) for seed in DEAD_LEAVES_SEEDS]


# --- Y (luma) networks ----------------------------------------------------------------------------

# ITU-R BT.601 luma weights (R, G, B), full range: what a one-channel (Y) network sees and makes,
# as PIL's convert("L"). (The metrics use the same weights on the 16..235 "studio" scale.)
LUMA = (0.299, 0.587, 0.114)


def rgb_to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] RGB in [0, 1] -> [..., 1, H, W] full-range BT.601 luma (not rounded)."""
    if rgb.shape[-3] != 3:
        raise ValueError(f"expected 3 channels (RGB) in dimension -3, got shape {tuple(rgb.shape)}")
    r, g, b = rgb.unbind(-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def upscale_rgb_with_y_model(run_y: Callable[[torch.Tensor], torch.Tensor], rgb: torch.Tensor,
                             scale: int) -> torch.Tensor:
    """A one-channel (Y) network on RGB images, as Y-trained SR papers use it: Y (BT.601, full
    range) through ``run_y`` ([N, 1, H, W] -> [N, 1, sH, sW]), Cb and Cr upscaled bicubically,
    then back to RGB. ``rgb``: float [N, 3, H, W] in [0, 1]; returns float [N, 3, sH, sW] clamped
    to [0, 1] (not rounded), on the CPU."""
    r, b = rgb[:, 0:1], rgb[:, 2:3]
    y = rgb_to_luma(rgb)
    chroma = torch.cat([(b - y) / 1.772, (r - y) / 1.402], dim=1)  # Cb, Cr (centred on 0)
    chroma = torch.nn.functional.interpolate(chroma, scale_factor=scale, mode="bicubic", align_corners=False)
    y_up = run_y(y).float().cpu()
    cb, cr = chroma[:, 0:1], chroma[:, 1:2]
    out = torch.cat([y_up + 1.402 * cr, y_up - 0.344136 * cb - 0.714136 * cr, y_up + 1.772 * cb], dim=1)
    return out.clamp(0, 1)


# --- evaluation pairs (one definition for the trainer, `repsr eval` and the experiment) ----------


def bicubic_upscale(lr, scale: int):
    """The SR literature's bicubic baseline: MATLAB ``imresize`` up by ``scale``, rounded to 8 bit."""
    return quantize_8bit(imresize(lr, scale))


def large_enough_for_ssim(image: np.ndarray, scale: int) -> bool:
    """SSIM needs an 11 x 11 window left after mod-crop and the border crop of ``scale`` pixels."""
    from .metrics import SSIM_WINDOW

    return min(image.shape[:2]) // scale * scale >= 2 * scale + SSIM_WINDOW


def evaluation_pair(image: np.ndarray, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(LR, HR)`` float ``3 x H x W`` tensors to score an upscaler on an ``H x W x 3`` uint8 image:
    HR mod-cropped to a multiple of ``scale``, LR its bicubic degradation rounded to 8 bit."""
    hr = image_to_tensor(mod_crop(image, scale))
    return bicubic_degrade(hr, scale), hr


def validation_pairs(source: str, scale: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, LR, HR)`` for the validation images of ``source``; images too small for SSIM are
    left out with a warning naming them."""
    pairs = []
    for name, image in validation_images(source):
        if not large_enough_for_ssim(image, scale):
            warnings.warn(f"validation image {name!r} is too small for x{scale} SSIM, leaving it out", stacklevel=2)
            continue
        pairs.append((name, *evaluation_pair(image, scale)))
    if not pairs:
        raise ValueError(f"no usable validation images in {source!r}")
    return pairs


# --- patch datasets -------------------------------------------------------------------------------

# The antialiased x s bicubic kernel spans 4 s HR pixels, i.e. it reaches 2 LR pixels to either
# side; degrading an HR region this much larger than the patch makes the patch's LR identical to
# the same crop of the whole image's LR (the border of the image aside, which gets the same
# symmetric padding either way).
_DEGRADE_MARGIN_LR = 2


def image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> float32 ``3 x H x W`` in [0, 1] (a copy: the cached images are
    read-only)."""
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


def _augment(lr: torch.Tensor, hr: torch.Tensor, rng: np.random.Generator):
    """One of the 8 dihedral transforms (horizontal flip, vertical flip, transpose, each with
    probability 1/2), the same for LR and HR."""
    hflip, vflip, transpose = rng.random(3) < 0.5
    if hflip:
        lr, hr = lr.flip(-1), hr.flip(-1)
    if vflip:
        lr, hr = lr.flip(-2), hr.flip(-2)
    if transpose:
        lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
    return lr.contiguous(), hr.contiguous()


class PatchSRDataset(Dataset):
    """Shared crop / degrade / augment logic. Subclasses list their images and load one by index.

    An item is ``(lr, hr)``. The key is ``(index, sample_seed)`` (what ``InfiniteSampler`` yields)
    or a plain index (randomness then drawn from torch's global generator, which DataLoader seeds
    per worker). An image that fails to load is skipped for good, with a warning naming it, and a
    randomly chosen other image takes its place.
    """

    def __init__(self, scale: int, patch_size: int, augment: bool = True, quantize: bool = True) -> None:
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        if not isinstance(patch_size, int) or patch_size < scale or patch_size % scale:
            raise ValueError(f"patch_size must be a positive multiple of scale ({scale}), got {patch_size!r}")
        self.scale = scale
        self.patch_size = patch_size
        self.augment = augment
        self.quantize = quantize
        self._failed: set[int] = set()

    # subclass interface
    def __len__(self) -> int:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """The image's name or path, for messages."""
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(hr, lr)`` uint8 HWC; ``lr`` None means made from ``hr`` by bicubic degradation."""
        raise NotImplementedError

    # shared logic
    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(key, tuple):
            index, sample_seed = key
        else:
            index, sample_seed = key, int(torch.randint(0, 2**62, ()).item())
        rng = np.random.default_rng(sample_seed)
        while True:
            if index not in self._failed:
                try:
                    hr, lr = self.load(index)
                    self._check_size(hr)
                except Exception as e:  # decoding errors come in many types (OSError, SyntaxError...)
                    self._failed.add(index)
                    warnings.warn(
                        f"skipping unreadable image {self.describe(index)}: {type(e).__name__}: {e}",
                        stacklevel=2,
                    )
                else:
                    return self._make_patch(hr, lr, rng)
            usable = [i for i in range(len(self)) if i not in self._failed]
            if not usable:
                raise RuntimeError(f"{type(self).__name__}: none of the {len(self)} images could be read")
            index = usable[int(rng.integers(len(usable)))]

    def _check_size(self, hr: np.ndarray) -> None:
        if min(hr.shape[0] // self.scale, hr.shape[1] // self.scale) * self.scale < self.patch_size:
            raise ValueError(f"image of {hr.shape[1]}x{hr.shape[0]} is smaller than the {self.patch_size}px patch")

    def _make_patch(self, hr: np.ndarray, lr: np.ndarray | None, rng: np.random.Generator):
        s, lr_patch = self.scale, self.patch_size // self.scale
        lr_height, lr_width = hr.shape[0] // s, hr.shape[1] // s
        top = int(rng.integers(lr_height - lr_patch + 1))
        left = int(rng.integers(lr_width - lr_patch + 1))
        hr_crop = hr[top * s : (top + lr_patch) * s, left * s : (left + lr_patch) * s]
        if lr is not None:
            lr_tensor = image_to_tensor(lr[top : top + lr_patch, left : left + lr_patch])
        else:
            m = _DEGRADE_MARGIN_LR
            y0, y1 = max(0, top - m), min(lr_height, top + lr_patch + m)
            x0, x1 = max(0, left - m), min(lr_width, left + lr_patch + m)
            region = image_to_tensor(hr[y0 * s : y1 * s, x0 * s : x1 * s])
            lr_region = bicubic_degrade(region, s, quantize=self.quantize)
            lr_tensor = lr_region[:, top - y0 : top - y0 + lr_patch, left - x0 : left - x0 + lr_patch]
        hr_tensor = image_to_tensor(hr_crop)
        if self.augment:
            return _augment(lr_tensor, hr_tensor, rng)
        return lr_tensor.contiguous(), hr_tensor


class ImageFolderSR(PatchSRDataset):
    """HR images anywhere under ``root`` (png/jpg/jpeg/webp/bmp; DIV2K's ``DIV2K_train_HR`` works
    as is); each item is a random ``patch_size`` HR crop and its bicubic LR made on the fly.

    Files that cannot be opened, and images smaller than the patch, are skipped at construction
    with a warning naming them (small images are skipped, not padded: padding would teach the
    network made-up content). ``cache=True`` keeps decoded images in memory -- per DataLoader
    worker process, so use it for small sets.
    """

    def __init__(
        self,
        root,
        scale: int,
        patch_size: int,
        augment: bool = True,
        cache: bool = False,
        quantize: bool = True,
    ) -> None:
        super().__init__(scale, patch_size, augment, quantize)
        self.root = Path(root)
        self.paths = []
        for path in list_images(self.root):
            size = probe_image(path)
            if size is not None and self._fits(size, path):
                self.paths.append(path)
        if not self.paths:
            raise ValueError(f"no usable images under {self.root} (patch_size {patch_size}, scale {scale})")
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def _fits(self, size: tuple[int, int], path: Path) -> bool:
        height, width = size
        cropped = min(height - height % self.scale, width - width % self.scale)
        if cropped < self.patch_size:
            warnings.warn(
                f"skipping {path}: {width}x{height} is smaller than the {self.patch_size}px patch",
                stacklevel=3,
            )
            return False
        return True

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def load(self, index: int) -> tuple[np.ndarray, None]:
        if self._cache is None:
            return read_image(self.paths[index]), None
        if index not in self._cache:
            self._cache[index] = read_image(self.paths[index])
        return self._cache[index], None


class PairedFolderSR(PatchSRDataset):
    """Pre-made LR/HR pairs: files in ``lr_root`` and ``hr_root`` (any depth) matched by file stem;
    an LR stem may carry DIV2K's ``x{scale}`` suffix (``0001x4.png`` pairs with ``0001.png``).
    The HR image is cropped to ``scale`` times the LR size; pairs whose sizes do not match that way,
    images without a partner, unreadable files and pairs smaller than the patch are skipped with a
    warning."""

    def __init__(
        self,
        lr_root,
        hr_root,
        scale: int,
        patch_size: int,
        augment: bool = True,
        cache: bool = False,
    ) -> None:
        super().__init__(scale, patch_size, augment, quantize=False)
        suffix = f"x{scale}"
        lr_by_stem = {}
        for path in list_images(lr_root):
            stem = path.stem[: -len(suffix)] if path.stem.endswith(suffix) else path.stem
            lr_by_stem[stem] = path
        self.pairs: list[tuple[Path, Path]] = []
        for hr_path in list_images(hr_root):
            lr_path = lr_by_stem.pop(hr_path.stem, None)
            if lr_path is None:
                warnings.warn(f"skipping {hr_path}: no LR image with stem {hr_path.stem!r} in {lr_root}", stacklevel=2)
                continue
            hr_size, lr_size = probe_image(hr_path), probe_image(lr_path)
            if hr_size is None or lr_size is None or not self._sizes_match(hr_path, hr_size, lr_path, lr_size):
                continue
            self.pairs.append((lr_path, hr_path))
        for stem, lr_path in sorted(lr_by_stem.items()):
            warnings.warn(f"skipping {lr_path}: no HR image with stem {stem!r} in {hr_root}", stacklevel=2)
        if not self.pairs:
            raise ValueError(f"no usable LR/HR pairs in {lr_root} and {hr_root}")
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def _sizes_match(self, hr_path, hr_size, lr_path, lr_size) -> bool:
        (hr_h, hr_w), (lr_h, lr_w) = hr_size, lr_size
        if hr_h // self.scale != lr_h or hr_w // self.scale != lr_w:
            warnings.warn(
                f"skipping {hr_path}: {hr_w}x{hr_h} is not {self.scale} x the LR {lr_path} ({lr_w}x{lr_h})",
                stacklevel=3,
            )
            return False
        if min(lr_h, lr_w) * self.scale < self.patch_size:
            warnings.warn(f"skipping {hr_path}: smaller than the {self.patch_size}px patch", stacklevel=3)
            return False
        return True

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        lr_path, hr_path = self.pairs[index]
        return f"{hr_path} / {lr_path}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        lr_path, hr_path = self.pairs[index]
        lr = read_image(lr_path)
        hr = mod_crop(read_image(hr_path), self.scale)
        if hr.shape[0] != lr.shape[0] * self.scale or hr.shape[1] != lr.shape[1] * self.scale:
            raise ValueError(f"HR {hr.shape[:2]} is not {self.scale} x LR {lr.shape[:2]}")
        if self._cache is not None:
            self._cache[index] = (hr, lr)
        return hr, lr


class EmbeddedImages(PatchSRDataset):
    """Random patches of the scikit-image photographs (``embedded_images(split)``), LR made on the
    fly; the images stay decoded in memory. Images smaller than the patch are skipped with a
    warning."""

    def __init__(
        self,
        scale: int,
        patch_size: int,
        split: str = "train",
        augment: bool = True,
        quantize: bool = True,
    ) -> None:
        super().__init__(scale, patch_size, augment, quantize)
        self.images: list[tuple[str, np.ndarray]] = []
        for name, image in embedded_images(split):
            if min(image.shape[0] // scale, image.shape[1] // scale) * scale < patch_size:
                warnings.warn(f"skipping embedded image {name!r}: smaller than the {patch_size}px patch", stacklevel=2)
            else:
                self.images.append((name, image))
        if not self.images:
            raise ValueError(f"no embedded image of split {split!r} is large enough for patch_size {patch_size}")

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return f"skimage.data {self.images[index][0]}"

    def load(self, index: int) -> tuple[np.ndarray, None]:
        return self.images[index][1], None


# --- the infinite sampler -------------------------------------------------------------------------


class InfiniteSampler(Sampler):
    """An endless stream of ``(index, sample_seed)`` keys for a ``PatchSRDataset``.

    The global stream visits the dataset in a fresh random permutation per epoch; with
    ``world_size`` processes, rank r takes global positions r, r + W, r + 2W, ... (the
    DistributedSampler sharding, without end). ``start`` is this rank's position to begin at (its
    count of samples already consumed), so resuming after k samples continues the stream exactly.
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if num_items < 1:
            raise ValueError("InfiniteSampler needs at least one item")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_items = num_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int]]]:
        epoch, permutation = -1, None
        local = self.start
        while True:
            position = local * self.world_size + self.rank
            if position // self.num_items != epoch:
                epoch = position // self.num_items
                permutation = np.random.default_rng([self.seed, 1, epoch]).permutation(self.num_items)
            yield int(permutation[position % self.num_items]), (self.seed, 2, position)
            local += 1


def make_train_dataset(
    data: str,
    scale: int,
    patch_size: int,
    data_lr: str = "",
    augment: bool = True,
    cache: bool = False,
) -> PatchSRDataset:
    """``data="embedded"``: the scikit-image training split; a folder: HR images (LR made on the
    fly), or the HR side of pairs whose LR side is ``data_lr``."""
    split = embedded_split(data, "train")
    if split is not None:
        if data_lr:
            raise ValueError("data_lr (a pre-made LR folder) needs data to be the matching HR folder, not 'embedded'")
        return EmbeddedImages(scale, patch_size, split, augment)
    if data_lr:
        return PairedFolderSR(data_lr, data, scale, patch_size, augment, cache)
    return ImageFolderSR(data, scale, patch_size, augment, cache)
