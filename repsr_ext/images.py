"""Image files as users bring them: one conversion from whatever PIL (and, for 16-bit colour,
pypng / tifffile) decodes to the arrays the network takes, and back to a file that keeps the
input's bit depth, orientation and metadata.

    image = read_image_file("photo.jpg")          # Picture: pixels upright, metadata kept
    rgb8 = image.rgb8()                           # H x W x 3 uint8, for training and eval
    write_image_file("out.png", result, quality=95)

Conversions (``Picture.from_pil``), per PIL mode:

=============================  =====================================================
1, L, P (grey palette)         grey, 8 bit (1 -> 0 / 255)
LA, La                         grey + alpha, 8 bit
P                              RGB, or RGB + alpha when the palette has transparency
RGB, RGBX, YCbCr, LAB, HSV     RGB, 8 bit (converted by PIL)
RGBA, RGBa                     RGB + alpha, 8 bit (RGBa un-premultiplied by PIL)
CMYK                           RGB, 8 bit, through the file's ICC profile when it has one
I;16, I;16L, I;16B, I;16N      grey, 16 bit
I (32-bit integer)             grey, 16 bit, clipped to 0..65535 (PNG and TIFF 16-bit grey)
F (32-bit float)               grey, 16 bit, read as 0..1 and clipped
16-bit RGB(A) PNG / TIFF       RGB (+ alpha), 16 bit, decoded by pypng / tifffile (PIL would
                               keep only the high byte)
16-bit grey + alpha PNG / TIFF grey + alpha, 16 bit (pypng / tifffile; PIL cannot open the TIFF)
=============================  =====================================================

A colour key (PNG tRNS on 1, L, I;16 or RGB) becomes alpha, as a palette's transparency does.

Orientation: the EXIF Orientation tag is applied to the pixels (as ``ImageOps.exif_transpose``)
and reset to 1 in the EXIF that is written out. ICC profile and EXIF (less a TIFF's layout tags)
are carried to the output; the resolution (DPI) is multiplied by the upscaling factor, so the
printed size stays the same, and the EXIF's resolution and pixel dimensions follow it.
"""
from __future__ import annotations

import io
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from .formats import _atomic_write

# PIL's own limit (it raises DecompressionBombError at twice MAX_IMAGE_PIXELS); the CLI's
# --max-pixels changes it per call.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
EXIF_ORIENTATION = 0x0112
# Output formats that hold 16 bits per channel (by file extension).
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")
# JPEG keeps EXIF in one APP1 marker, whose payload is at most this long (PIL refuses more).
JPEG_MAX_EXIF = 65533
# ICO stores each icon's side in one byte (0 meaning 256).
ICO_MAX_SIDE = 256

# IFD0 tags about how a file stores its pixels, not about the picture: stale after upscaling, and
# wrong in a TIFF written with them (PIL would take the source's compression and strip layout).
_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281, 284, 288, 289,
    290, 291, 292, 293, 317, 320, 322, 323, 324, 325, 330, 332, 333, 334, 336, 338, 339, 340, 341, 347,
    513, 514, 529, 530, 531, 532, 34675,  # (the ICC profile travels on its own)
})
# A TIFF's IFD0 is its whole image directory (EXIF is IFD0 only by borrowing TIFF's layout): of it,
# only these describe the picture. The rest is layout or application data (GeoTIFF, ImageJ,
# Photoshop layers...) that no longer fits the upscaled pixels.
_TIFF_DESCRIPTIVE_TAGS = frozenset({
    269, 270, 271, 272, 274, 285, 305, 306, 315, 316, 33432,  # names, dates, orientation (the resolution is the DPI)
    0x8769, 0x8825,  # the Exif and GPS sub-IFDs
    18246, 18249, 40091, 40092, 40093, 40094, 40095,  # rating, Windows title/comment/author/keywords/subject
})
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x8769, 0x8825, 0xA005
_X_RESOLUTION, _Y_RESOLUTION, _RESOLUTION_UNIT = 282, 283, 296
_PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION = 0xA002, 0xA003  # in the Exif sub-IFD
_TRANSPOSING = (5, 6, 7, 8)  # orientations that swap width and height


class ImageFileError(ValueError):
    """A file that is not a readable image, or an image that cannot be written as asked; the
    message names the file and the problem."""


@dataclass
class Metadata:
    """What travels from the input file to the output file."""

    icc_profile: bytes | None = None
    exif: bytes | None = None  # with the orientation reset to 1
    dpi: tuple[float, float] | None = None
    source_format: str | None = None


@dataclass
class Picture:
    """Decoded pixels, upright. ``color``: H x W x 3 (RGB) or H x W x 1 (grey), uint8 or uint16;
    ``alpha``: H x W of the same dtype, or None."""

    color: np.ndarray
    alpha: np.ndarray | None = None
    metadata: Metadata = field(default_factory=Metadata)

    def __post_init__(self):
        if self.color.ndim != 3 or self.color.shape[2] not in (1, 3):
            raise ValueError(f"color must be H x W x 1 or H x W x 3, got shape {self.color.shape}")
        if self.color.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"color must be uint8 or uint16, got {self.color.dtype}")
        if self.alpha is not None and (self.alpha.shape != self.color.shape[:2] or self.alpha.dtype != self.color.dtype):
            raise ValueError(f"alpha must be {self.color.shape[:2]} {self.color.dtype}, got "
                             f"{self.alpha.shape} {self.alpha.dtype}")

    @property
    def bit_depth(self) -> int:
        return 16 if self.color.dtype == np.uint16 else 8

    @property
    def grayscale(self) -> bool:
        return self.color.shape[2] == 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL says it."""
        return self.color.shape[1], self.color.shape[0]

    # --- conversions -----------------------------------------------------------------------------
    def to_bit_depth(self, bits: int) -> "Picture":
        """The same picture at 8 or 16 bits per channel (v * 257 up, round(v / 257) down: exact
        inverses on the 8-bit values)."""
        if bits == self.bit_depth:
            return self
        if bits not in (8, 16):
            raise ValueError(f"bit depth must be 8 or 16, got {bits}")
        convert = _to_16 if bits == 16 else _to_8
        alpha = None if self.alpha is None else convert(self.alpha)
        return replace(self, color=convert(self.color), alpha=alpha)

    def rgb8(self) -> np.ndarray:
        """H x W x 3 uint8 (grey repeated, alpha dropped): what training and eval use."""
        color = self.to_bit_depth(8).color
        return np.ascontiguousarray(np.repeat(color, 3, axis=2) if self.grayscale else color)

    def to_pil(self):
        """A PIL image of this picture at 8 bits (16-bit grey without alpha stays I;16)."""
        from PIL import Image

        if self.bit_depth == 16 and self.grayscale and self.alpha is None:
            return Image.fromarray(self.color[:, :, 0].astype("<u2"))  # I;16
        p = self.to_bit_depth(8)
        image = Image.fromarray(p.color[:, :, 0] if p.grayscale else p.color)  # L or RGB
        if p.alpha is not None:
            image.putalpha(Image.fromarray(p.alpha))
        return image

    @classmethod
    def from_pil(cls, image, metadata: Metadata | None = None) -> "Picture":
        """Converts a PIL image of any mode (table in the module docstring). Orientation is not
        applied here: ``read_image_file`` does that."""
        from PIL import Image

        mode = image.mode
        meta = metadata or Metadata()
        # A colour key (PNG tRNS on a grey or RGB image): the pixels of that value are transparent.
        key = image.info.get("transparency") if mode in ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "RGB") else None
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            raw = np.asarray(image, dtype=np.int64)
            grey = np.clip(raw, 0, 65535).astype(np.uint16)[:, :, None]
            return cls(grey, _key_alpha(raw, key, np.uint16), metadata=meta)
        if mode == "F":
            values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
            return cls(np.round(np.clip(values, 0, 1) * 65535).astype(np.uint16)[:, :, None], metadata=meta)
        if mode == "1":
            alpha = _key_alpha(np.asarray(image).astype(np.int64), key, np.uint8)
            return cls(np.asarray(image.convert("L"))[:, :, None].copy(), alpha, metadata=meta)
        if mode == "L":
            grey = np.asarray(image)
            return cls(grey[:, :, None].copy(), _key_alpha(grey, key, np.uint8), metadata=meta)
        if mode in ("LA", "La"):
            la = np.asarray(image.convert("LA"))
            return cls(la[:, :, :1].copy(), la[:, :, 1].copy(), metadata=meta)
        if mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in image.info
            if not has_alpha and _grey_palette(image):
                return cls(np.asarray(image.convert("L"))[:, :, None].copy(), metadata=meta)
            image = image.convert("RGBA" if has_alpha else "RGB")
            mode = image.mode
        if mode == "CMYK":
            image, meta = _cmyk_to_rgb(image, meta)
            mode = "RGB"
        if mode in ("RGBA", "RGBa"):
            rgba = np.asarray(image.convert("RGBA"))
            return cls(rgba[:, :, :3].copy(), rgba[:, :, 3].copy(), metadata=meta)
        if mode != "RGB":
            try:
                image = image.convert("RGB")
            except (ValueError, OSError) as e:
                raise ImageFileError(f"cannot convert a {mode} image to RGB: {e}") from None
        rgb = np.asarray(image)
        return cls(rgb.copy(), _key_alpha(rgb, key, np.uint8), metadata=meta)


def _key_alpha(pixels: np.ndarray, key, dtype) -> np.ndarray | None:
    """The alpha plane of a colour-keyed image: transparent where ``pixels`` (H x W, or H x W x 3
    against an (r, g, b) key) equal ``key``, opaque elsewhere; None without a usable key."""
    try:
        key = np.asarray(key, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    if key.shape != (pixels.shape[2:] if pixels.ndim == 3 else ()):
        return None  # e.g. a palette's byte string, or a key of the wrong length: not a colour key
    match = (pixels == key).all(axis=2) if pixels.ndim == 3 else pixels == key
    return np.where(match, 0, np.iinfo(dtype).max).astype(dtype)


def _to_16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.uint16) * np.uint16(257)


def _to_8(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _grey_palette(image) -> bool:
    palette = image.getpalette() or []
    rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return len(rgb) > 0 and bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _cmyk_to_rgb(image, meta: Metadata):
    """CMYK through its embedded ICC profile to sRGB (whose profile then replaces it); without a
    profile, PIL's naive conversion."""
    if meta.icc_profile:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(meta.icc_profile))
            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            return rgb, replace(meta, icc_profile=ImageCms.ImageCmsProfile(srgb).tobytes())
        except Exception:  # no littlecms, or a broken profile: fall back to PIL's formula
            pass
    return image.convert("RGB"), replace(meta, icc_profile=None)  # a CMYK profile does not fit RGB


# --- reading --------------------------------------------------------------------------------------


@contextmanager
def _without_pil_pixel_limit():
    """PIL's decompression-bomb check off while ``read_image_file`` applies its own limit (PIL's
    is process-wide state, and its error names no option to raise it)."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image_file(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Decodes an image file into an upright ``Picture`` with its metadata. Raises
    ``FileNotFoundError`` for a missing file and ``ImageFileError`` (one line naming the file) for
    anything unreadable: not an image, truncated, empty, or over ``max_pixels`` (None: no limit)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with _without_pil_pixel_limit():
            try:
                image = Image.open(path)
            except UnidentifiedImageError:
                # PIL has no 16-bit grey + alpha mode, so it cannot open such a TIFF (one this
                # module writes, for one).
                picture = _read_tiff_grey_alpha16(path, max_pixels)
                if picture is None:
                    raise
                return picture
            with image:
                _check_pixels(path, image.size, max_pixels)
                wide = _decode_16bit_color(path, image)  # before PIL decodes the pixels to 8 bits
                if wide is not None:
                    meta, orientation = _metadata(image)
                    return _orient(Picture(wide[0], wide[1], meta), orientation)
                image.load()
                meta, orientation = _metadata(image)
                if orientation != 1:
                    image = ImageOps.exif_transpose(image)
                return Picture.from_pil(image, meta)
    except ImageFileError:
        raise
    except Exception as e:  # decoders fail in many ways (PIL, pypng, tifffile, zlib); none may crash a batch
        if isinstance(e, FileNotFoundError):
            raise
        reason = str(e) or type(e).__name__
        if path.stat().st_size == 0:
            reason = "the file is empty"
        raise ImageFileError(f"cannot read image {path}: {reason}") from None


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageFileError(
            f"{path}: {width}x{height} = {width * height:,} pixels is over the limit of "
            f"{max_pixels:,} (raise it with --max-pixels / max_pixels=)"
        )


def _metadata(image) -> tuple[Metadata, int]:
    info = image.info
    dpi = info.get("dpi")
    if image.format == "TIFF" and _X_RESOLUTION not in getattr(image, "tag_v2", {}):
        dpi = None  # PIL reports (1, 1) for a TIFF without resolution tags
    try:
        exif = image.getexif()
    except Exception:  # a broken EXIF block must not make the image unreadable
        exif = None
    return _metadata_from(dpi, info.get("icc_profile"), exif, image.format)


def _metadata_from(dpi, icc_profile, exif, source_format) -> tuple[Metadata, int]:
    """The ``Metadata`` of the upright picture, and the orientation to make it upright with:
    ``exif`` (a PIL Exif) reduced to the tags that describe the picture, its orientation reset to 1,
    and its resolution made that of the upright picture (the DPI too: EXIF's where the format's
    own field has none)."""
    orientation = 1
    if exif:
        try:
            orientation = int(exif.get(EXIF_ORIENTATION, 1))
        except (TypeError, ValueError):
            orientation = 1
        if orientation not in range(1, 9):
            orientation = 1
    dpi = _valid_dpi(dpi) or (_exif_dpi(exif) if exif else None)
    if dpi is not None and orientation in _TRANSPOSING:
        dpi = (dpi[1], dpi[0])  # the resolution of the stored rows is that of the upright columns
    exif_bytes = None
    if exif:
        try:
            # A copy: the image's own Exif object is what exif_transpose reads afterwards.
            from PIL import Image

            kept = Image.Exif()
            kept.load(exif.tobytes())
            for tag in list(kept):
                if not _describes_picture(tag, kept[tag], source_format):
                    del kept[tag]
            if EXIF_ORIENTATION in kept:
                kept[EXIF_ORIENTATION] = 1
            if orientation in _TRANSPOSING and _EXIF_IFD in kept:
                _swap(kept.get_ifd(_EXIF_IFD), _PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION)
            _set_exif_resolution(kept, dpi)
            exif_bytes = kept.tobytes() if len(kept) else None
        except Exception:  # an EXIF block PIL cannot re-encode is dropped, not fatal
            exif_bytes = None
    return Metadata(icc_profile or None, exif_bytes, dpi, source_format), orientation


def _valid_dpi(dpi) -> tuple[float, float] | None:
    try:
        dpi = (float(dpi[0]), float(dpi[1]))
    except (TypeError, ValueError, IndexError):
        return None
    return dpi if dpi[0] > 0 and dpi[1] > 0 else None


def _exif_dpi(exif) -> tuple[float, float] | None:
    """The resolution an EXIF (or TIFF directory) gives in inches or centimetres, as DPI."""
    unit = exif.get(_RESOLUTION_UNIT, 2)  # inches when unsaid; 1 means no absolute unit
    if unit not in (2, 3):
        return None
    dpi = _valid_dpi((exif.get(_X_RESOLUTION), exif.get(_Y_RESOLUTION)))
    if dpi is not None and unit == 3:
        dpi = (dpi[0] * 2.54, dpi[1] * 2.54)
    return dpi


def _set_exif_resolution(exif, dpi) -> None:
    """Makes an EXIF's resolution tags, where it has them, say ``dpi`` (removes them without one),
    so that they agree with the resolution the output format writes."""
    if _X_RESOLUTION not in exif and _Y_RESOLUTION not in exif:
        return
    for tag in (_X_RESOLUTION, _Y_RESOLUTION, _RESOLUTION_UNIT):
        if tag in exif:
            del exif[tag]
    if dpi is not None:
        exif[_X_RESOLUTION], exif[_Y_RESOLUTION], exif[_RESOLUTION_UNIT] = dpi[0], dpi[1], 2


def _describes_picture(tag: int, value, source_format) -> bool:
    """Whether an IFD0 tag is carried to the output (see ``_LAYOUT_TAGS``)."""
    if tag in _LAYOUT_TAGS:
        return False
    if source_format == "TIFF" and tag not in _TIFF_DESCRIPTIVE_TAGS:
        return False
    if tag == 270 and isinstance(value, str) and value.lstrip().startswith(('{"shape":', "ImageJ=")):
        return False  # tifffile's / ImageJ's record of the array's shape, not a description
    return True


def _swap(mapping, a, b) -> None:
    """Swaps two entries of a dict or Exif, either of which may be missing."""
    va, vb = mapping.get(a), mapping.get(b)
    for tag, value in ((a, vb), (b, va)):
        if value is None:
            if tag in mapping:
                del mapping[tag]
        else:
            mapping[tag] = value


def _orient(picture: Picture, orientation: int) -> Picture:
    """EXIF orientation applied to the arrays (the transposes ImageOps.exif_transpose makes)."""
    def turn(a):
        if a is None:
            return None
        a = {
            1: lambda x: x,
            2: lambda x: x[:, ::-1],
            3: lambda x: x[::-1, ::-1],
            4: lambda x: x[::-1],
            5: lambda x: x.swapaxes(0, 1),
            6: lambda x: np.rot90(x, -1),
            7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],
            8: lambda x: np.rot90(x, 1),
        }[orientation](a)
        return np.ascontiguousarray(a)

    return replace(picture, color=turn(picture.color), alpha=turn(picture.alpha))


def _decode_16bit_color(path: Path, image):
    """(color H x W x 3 or 1 uint16, alpha or None) for 16-bit RGB(A) / grey+alpha PNGs and TIFFs,
    which PIL decodes to 8 bits; None for every other file."""
    if image.format == "PNG":
        header = _png_header(path)
        if header is None or header[0] != 16 or header[1] not in (2, 4, 6):
            return None
        import png

        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        planes = info["planes"]
        array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
        color_planes = 3 if planes >= 3 else 1
        alpha = array[:, :, color_planes].copy() if info["alpha"] else None
        return np.ascontiguousarray(array[:, :, :color_planes]), alpha
    if image.format == "TIFF":
        bits = image.tag_v2.get(258)  # BitsPerSample
        bits = tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)
        if len(bits) < 2 or any(b != 16 for b in bits) or image.mode.startswith("I;16"):
            return None
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            return _tiff16_planes(tif.pages[0])
    return None


def _tiff16_planes(page):
    """(color, alpha or None) of a 16-bit tifffile page of 2 (grey + alpha), 3 or 4 (RGB + alpha)
    samples; None for any other page."""
    if page.dtype != np.uint16 or page.samplesperpixel not in (2, 3, 4):
        return None
    array = page.asarray()
    if array.ndim == 3 and page.planarconfig == 2:  # separate planes: samples first
        array = np.moveaxis(array, 0, 2)
    if array.ndim != 3 or array.shape[2] != page.samplesperpixel:
        return None
    color_planes = 1 if array.shape[2] == 2 else 3
    alpha = array[:, :, color_planes].copy() if array.shape[2] in (2, 4) else None
    return np.ascontiguousarray(array[:, :, :color_planes]), alpha


def _read_tiff_grey_alpha16(path: Path, max_pixels: int | None) -> Picture | None:
    """A 16-bit grey + alpha TIFF through tifffile, with its metadata (read through PIL's EXIF
    reader, which needs no image mode); None when ``path`` is no such file."""
    with open(path, "rb") as f:
        if f.read(4) not in (b"II*\x00", b"MM\x00*"):
            return None
    import tifffile
    from PIL import Image

    with tifffile.TiffFile(str(path)) as tif:
        page = tif.pages[0]
        if page.samplesperpixel != 2 or page.dtype != np.uint16:
            return None
        _check_pixels(path, (page.imagewidth, page.imagelength), max_pixels)
        planes = _tiff16_planes(page)
    if planes is None:
        return None
    exif = Image.Exif()
    try:
        with open(path, "rb") as f:
            exif.load_from_fp(f)  # the TIFF's IFD0, as PIL's getexif() gives it for TIFFs
            exif.tobytes()  # (reads the sub-IFDs while the file is open)
    except Exception:  # a broken directory costs the metadata, not the pixels
        exif = Image.Exif()
    meta, orientation = _metadata_from(None, exif.get(34675), exif, "TIFF")  # (DPI from the directory)
    return _orient(Picture(planes[0], planes[1], meta), orientation)


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


# --- folders --------------------------------------------------------------------------------------


def readable_extensions() -> tuple[str, ...]:
    """Every file extension PIL can open (with its plugins loaded), lower case."""
    from PIL import Image

    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def writable_extensions() -> tuple[str, ...]:
    """Every file extension PIL can write, lower case."""
    from PIL import Image

    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE))


# --- writing --------------------------------------------------------------------------------------


def output_bit_depth(requested: int | None, picture: Picture, path: Path) -> tuple[int, str | None]:
    """The bit depth to write ``picture`` at ``path`` with: ``requested`` (8 or 16), else the
    picture's own, and a note when the format forces 8 bits. Raises for 16 bits in an 8-bit format."""
    suffix = path.suffix.lower()
    if requested is not None:
        if requested not in (8, 16):
            raise ValueError(f"bit depth must be 8 or 16, got {requested}")
        if requested == 16 and suffix not in SIXTEEN_BIT_SUFFIXES:
            raise ImageFileError(f"{path}: {suffix or 'this'} files hold 8 bits per channel; write "
                                 f"16 bits as {' or '.join(SIXTEEN_BIT_SUFFIXES)}")
        return requested, None
    if picture.bit_depth == 16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        return 8, f"{path}: written with 8 bits per channel ({suffix} holds no more)"
    return picture.bit_depth, None


def output_format(path) -> str:
    """PIL's format name for writing ``path``, by its extension; ``ImageFileError`` for a missing
    extension or one that no PIL writer takes."""
    from PIL import Image

    Image.init()
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        what = f"{suffix} is not an image format this PIL writes" if suffix else "no file extension to choose the format by"
        raise ImageFileError(f"{path}: {what}; use .png, .jpg, .webp, .tif, ...")
    return fmt


def check_output(path, size: tuple[int, int]) -> str:
    """Refuses (``ImageFileError``), before any work, an output ``path`` that no writer takes or
    whose format cannot hold an image of ``size`` (width, height). Returns the format name."""
    fmt = output_format(path)
    if fmt == "ICO" and max(size) > ICO_MAX_SIDE:
        raise ImageFileError(f"{path}: ICO holds icons of at most {ICO_MAX_SIDE}x{ICO_MAX_SIDE} pixels, "
                             f"the result is {size[0]}x{size[1]}; use .png or another format")
    return fmt


def write_image_file(path, picture: Picture, quality: int | None = None) -> list[str]:
    """Writes ``picture`` (its bit depth; see ``output_bit_depth``) with its ICC profile, EXIF and
    DPI where the format holds them, atomically: a temporary file beside ``path``, renamed at the
    end, so an interrupted run never leaves half an image under the output name. Returns notes
    about what the format could not keep."""
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = check_output(path, picture.size)
    notes = []
    if picture.bit_depth == 16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        picture = picture.to_bit_depth(8)  # (output_bit_depth says so where the caller asked)
    if picture.alpha is not None and _alpha_mode(fmt, picture.grayscale) is None:
        notes.append(f"{path}: alpha channel dropped ({suffix} has none)")
        picture = replace(picture, alpha=None)
    exif = picture.metadata.exif
    if exif and fmt in ("JPEG", "MPO") and len(exif) > JPEG_MAX_EXIF:
        notes.append(f"{path}: EXIF dropped ({len(exif):,} bytes; JPEG holds at most {JPEG_MAX_EXIF:,})")
        picture = replace(picture, metadata=replace(picture.metadata, exif=None))
    if fmt == "ICNS" and picture.size != (1024, 1024):
        notes.append(f"{path}: ICNS holds square icons of 16 to 1024 pixels; the {picture.size[0]}x"
                     f"{picture.size[1]} result was resized to each of them")
    if picture.bit_depth == 16 and suffix == ".png" and not (picture.grayscale and picture.alpha is None):
        write = _write_png16
    elif picture.bit_depth == 16 and suffix in (".tif", ".tiff"):
        write = _write_tiff16
    else:
        def write(tmp, picture):  # the format comes from the target's suffix, not the temporary's
            _write_pil(tmp, picture, fmt, quality)
    temporaries = []

    def write_temporary(tmp):
        temporaries.append(tmp)
        notes.extend(n.replace(tmp, str(path)) for n in write(Path(tmp), picture) or ())

    try:
        _atomic_write(path, write_temporary)
    except (OSError, ValueError, KeyError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        for tmp in temporaries:  # the temporary's name means nothing to the user
            reason = reason.replace(tmp, str(path)).replace(Path(tmp).name, path.name)
        raise ImageFileError(f"cannot write {path}: {reason}") from None
    return notes


@lru_cache(maxsize=None)
def _writes(fmt: str, mode: str) -> bool:
    """Whether PIL writes a ``mode`` image as ``fmt`` (for LA / RGBA: with an alpha channel that
    reads back), tried once per format and mode on an 8x8 image with a transparent quarter (big
    enough for ICNS's resizing to keep it). No fixed list fits every PIL build: BMP takes RGBA but
    reads back RGB, QOI and SGI take RGBA but not LA, AVIF exists only with its plugin."""
    from PIL import Image

    probe = Image.new(mode, (8, 8), (128,) * len(mode))
    if "A" in mode:
        probe.paste((128,) * (len(mode) - 1) + (0,), (0, 0, 4, 4))
    buffer = io.BytesIO()
    try:
        probe.save(buffer, format=fmt)
        if "A" not in mode:
            return True
        buffer.seek(0)
        with Image.open(buffer) as back:
            alpha = np.asarray(back.convert("RGBA"))[:, :, 3]
    except Exception:  # any failure means: not this mode in this format
        return False
    return bool(alpha[0, 0] < 128 <= alpha[-1, -1])  # (lossy AVIF alpha is only near 0 / 255)


def _alpha_mode(fmt: str, grey: bool) -> str | None:
    """The PIL mode to write an image with alpha as ``fmt`` (grey + alpha as RGBA where the format
    has no LA), or None where it keeps no alpha."""
    return next((mode for mode in (("LA", "RGBA") if grey else ("RGBA",)) if _writes(fmt, mode)), None)


def _write_pil(path: Path, picture: Picture, fmt: str, quality: int | None) -> None:
    image = picture.to_pil()
    meta = picture.metadata
    options = {}
    if meta.icc_profile and fmt in ("PNG", "JPEG", "WEBP", "TIFF", "AVIF"):
        options["icc_profile"] = meta.icc_profile
    if meta.exif and fmt in ("PNG", "JPEG", "WEBP", "TIFF", "AVIF"):
        options["exif"] = meta.exif
    if meta.dpi and fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        options["dpi"] = meta.dpi
    if fmt in ("JPEG", "WEBP", "AVIF"):
        options["quality"] = 95 if quality is None else quality
    if fmt == "ICO":
        options["sizes"] = [image.size]  # one icon at the image's size (PIL's default shrinks it to squares)
    if image.mode in ("LA", "RGBA"):
        image = image.convert(_alpha_mode(fmt, image.mode == "LA") or image.mode[:-1])
    elif image.mode == "L" and not _writes(fmt, "L") and _writes(fmt, "RGB"):
        image = image.convert("RGB")  # e.g. QOI, which holds RGB(A) only
    image.save(path, format=fmt, **options)


def _png_chunks(meta: Metadata) -> list[tuple[bytes, bytes]]:
    """iCCP and eXIf chunks (pypng writes neither itself)."""
    chunks = []
    if meta.icc_profile:
        chunks.append((b"iCCP", b"ICC profile\x00\x00" + zlib.compress(meta.icc_profile)))
    if meta.exif:
        exif = meta.exif[6:] if meta.exif.startswith(b"Exif\x00\x00") else meta.exif
        chunks.append((b"eXIf", exif))
    return chunks


def _write_png16(path: Path, picture: Picture) -> None:
    import png

    height, width = picture.color.shape[:2]
    planes = [picture.color] + ([picture.alpha[:, :, None]] if picture.alpha is not None else [])
    array = np.concatenate(planes, axis=2)
    options = {}
    if picture.metadata.dpi:
        # pHYs is in pixels per metre.
        options = dict(x_pixels_per_unit=round(picture.metadata.dpi[0] / 0.0254),
                       y_pixels_per_unit=round(picture.metadata.dpi[1] / 0.0254), unit_is_meter=True)
    writer = png.Writer(width, height, greyscale=picture.grayscale, alpha=picture.alpha is not None,
                        bitdepth=16, **options)
    buffer = io.BytesIO()
    writer.write(buffer, array.reshape(height, width * array.shape[2]))
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    extra = _png_chunks(picture.metadata)
    first_data = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    with open(path, "wb") as f:
        png.write_chunks(f, chunks[:first_data] + extra + chunks[first_data:])


def _write_tiff16(path: Path, picture: Picture) -> list[str]:
    import tifffile

    planes = [picture.color] + ([picture.alpha[:, :, None]] if picture.alpha is not None else [])
    array = np.concatenate(planes, axis=2)
    if picture.grayscale and picture.alpha is None:
        array = array[:, :, 0]
    options = {}
    if picture.metadata.dpi:
        options.update(resolution=picture.metadata.dpi, resolutionunit="INCH")
    if picture.metadata.icc_profile:
        options["iccprofile"] = picture.metadata.icc_profile
    photometric = "minisblack" if picture.grayscale else "rgb"
    extrasamples = ("unassalpha",) if picture.alpha is not None else None
    # No shape description and no Software tag of tifffile's own: the EXIF's, if any, go there.
    tifffile.imwrite(str(path), array, photometric=photometric, extrasamples=extrasamples, metadata=None,
                     software=False, **options)
    if picture.metadata.exif and not _add_exif_to_tiff(path, picture.metadata.exif):
        return [f"{path}: EXIF not kept (it cannot be added to this TIFF)"]
    return []


def _add_exif_to_tiff(path: Path, exif_bytes: bytes) -> bool:
    """Adds the EXIF's IFD0 tags and its Exif / GPS sub-IFDs to the first directory of the
    little-endian classic TIFF at ``path`` (tifffile writes no sub-IFDs): a new first directory,
    the old entries plus these, is appended to the file and the header pointed at it; the pixel
    data stay where they are (and the old directory, a few hundred bytes, unused). Tags the file
    has already (size, layout, resolution, ICC) are kept as they are. False when it cannot."""
    from PIL import Image, TiffImagePlugin

    try:
        exif = Image.Exif()
        exif.load(exif_bytes)
        with open(path, "r+b") as f:
            head = f.read(8)
            if head[:4] != b"II*\x00":  # BigTIFF (over 4 GB) or big-endian: not handled here
                return False
            (first,) = struct.unpack("<I", head[4:])
            f.seek(first)
            (count,) = struct.unpack("<H", f.read(2))
            entries = [f.read(12) for _ in range(count)]
            next_ifd = f.read(4)
            present = {struct.unpack_from("<H", entry)[0] for entry in entries}
            extra = TiffImagePlugin.ImageFileDirectory_v2(head)
            for tag in exif:
                if tag in present:
                    continue
                value = exif[tag]
                if tag in (_EXIF_IFD, _GPS_IFD):
                    value = dict(exif.get_ifd(tag))
                    if isinstance(value.get(_INTEROP_IFD), int):  # an offset into the old EXIF block
                        value[_INTEROP_IFD] = exif.get_ifd(_INTEROP_IFD)
                    if not value:
                        continue
                extra[tag] = value
            if not len(extra):
                return True
            end = f.seek(0, 2)
            padding = end & 1  # a directory starts on a word boundary
            # PIL lays out the added entries as a directory of their own at `offset`, values after
            # it; placed 12 bytes per old entry further on, those values land just after the merged
            # directory, so its entries are the old ones and PIL's, sorted by tag as TIFF requires.
            block = extra.tobytes(end + padding + 12 * count)
            (added,) = struct.unpack_from("<H", block)
            new_entries = [block[2 + 12 * i: 14 + 12 * i] for i in range(added)]
            values = block[2 + 12 * added + 4:]
            merged = sorted(entries + new_entries, key=lambda entry: struct.unpack_from("<H", entry)[0])
            f.write(b"\x00" * padding + struct.pack("<H", len(merged)) + b"".join(merged) + next_ifd + values)
            f.seek(4)
            f.write(struct.pack("<I", end + padding))
        return True
    except Exception:  # an EXIF block PIL cannot encode is dropped (with a note), not fatal
        return False


def scaled_metadata(meta: Metadata, scale: int) -> Metadata:
    """The output's metadata: DPI times ``scale`` (same printed size), and the EXIF's resolution and
    pixel dimensions to match; the rest unchanged."""
    dpi = None if meta.dpi is None else (meta.dpi[0] * scale, meta.dpi[1] * scale)
    return replace(meta, dpi=dpi, exif=_scaled_exif(meta.exif, scale, dpi))


def _scaled_exif(exif_bytes: bytes | None, scale: int, dpi) -> bytes | None:
    if not exif_bytes:
        return exif_bytes
    from PIL import Image

    try:
        exif = Image.Exif()
        exif.load(exif_bytes)
        _set_exif_resolution(exif, dpi)
        if _EXIF_IFD in exif:
            sub = exif.get_ifd(_EXIF_IFD)
            for tag in (_PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION):
                if isinstance(sub.get(tag), int):
                    sub[tag] *= scale
        return exif.tobytes()
    except Exception:  # one PIL cannot re-encode: the sizes it holds would be stale, so none
        return None
