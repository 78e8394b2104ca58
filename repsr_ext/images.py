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
=============================  =====================================================

Orientation: the EXIF Orientation tag is applied to the pixels (as ``ImageOps.exif_transpose``)
and reset to 1 in the EXIF that is written out. ICC profile and EXIF are carried to the output;
the resolution (DPI) is multiplied by the upscaling factor, so the printed size stays the same.
"""
from __future__ import annotations

import io
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .formats import _atomic_write

# PIL's own limit (it raises DecompressionBombError at twice MAX_IMAGE_PIXELS); the CLI's
# --max-pixels changes it per call.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
EXIF_ORIENTATION = 0x0112
# Output formats that hold 16 bits per channel (by file extension).
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")
# Formats that carry an alpha channel.
ALPHA_SUFFIXES = (".png", ".tif", ".tiff", ".webp", ".gif", ".tga", ".bmp")


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
        if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            return cls(np.asarray(image).astype(np.uint16)[:, :, None], metadata=meta)
        if mode == "I":
            return cls(np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)[:, :, None], metadata=meta)
        if mode == "F":
            values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
            return cls(np.round(np.clip(values, 0, 1) * 65535).astype(np.uint16)[:, :, None], metadata=meta)
        if mode == "1":
            return cls(np.asarray(image.convert("L"))[:, :, None].copy(), metadata=meta)
        if mode == "L":
            return cls(np.asarray(image)[:, :, None].copy(), metadata=meta)
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
        return cls(np.asarray(image).copy(), metadata=meta)


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
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with _without_pil_pixel_limit(), Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageFileError(
                    f"{path}: {width}x{height} = {width * height:,} pixels is over the limit of "
                    f"{max_pixels:,} (raise it with --max-pixels / max_pixels=)"
                )
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


def _metadata(image) -> tuple[Metadata, int]:
    info = image.info
    dpi = info.get("dpi")
    if dpi is not None:
        try:
            dpi = (float(dpi[0]), float(dpi[1]))
        except (TypeError, ValueError, IndexError):
            dpi = None
        if dpi is not None and not (dpi[0] > 0 and dpi[1] > 0):
            dpi = None
    orientation, exif_bytes = 1, None
    try:
        exif = image.getexif()
    except Exception:  # a broken EXIF block must not make the image unreadable
        exif = None
    if exif:
        try:
            orientation = int(exif.get(EXIF_ORIENTATION, 1))
        except (TypeError, ValueError):
            orientation = 1
        if orientation not in range(1, 9):
            orientation = 1
        try:
            # A copy: the image's own Exif object is what exif_transpose reads afterwards.
            from PIL import Image

            kept = Image.Exif()
            kept.load(exif.tobytes())
            if EXIF_ORIENTATION in kept:
                kept[EXIF_ORIENTATION] = 1
            exif_bytes = kept.tobytes()
        except Exception:  # an EXIF block PIL cannot re-encode is dropped, not fatal
            exif_bytes = None
    return Metadata(info.get("icc_profile") or None, exif_bytes, dpi, image.format), orientation


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
    """(color H x W x 3 uint16, alpha or None) for 16-bit RGB(A) / grey+alpha PNGs and TIFFs,
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
        if len(bits) < 3 or any(b != 16 for b in bits) or image.mode.startswith("I;16"):
            return None
        import tifffile

        array = tifffile.imread(str(path))
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
            array = np.moveaxis(array, 0, 2)  # planar configuration
        if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint16:
            return None
        alpha = array[:, :, 3].copy() if array.shape[2] == 4 else None
        return np.ascontiguousarray(array[:, :, :3]), alpha
    return None


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


def write_image_file(path, picture: Picture, quality: int | None = None) -> list[str]:
    """Writes ``picture`` (its bit depth; see ``output_bit_depth``) with its ICC profile, EXIF and
    DPI where the format holds them, atomically: a temporary file beside ``path``, renamed at the
    end, so an interrupted run never leaves half an image under the output name. Returns notes
    about what the format could not keep."""
    path = Path(path)
    suffix = path.suffix.lower()
    notes = []
    if picture.alpha is not None and suffix not in ALPHA_SUFFIXES:
        notes.append(f"{path}: alpha channel dropped ({suffix} has none)")
        picture = replace(picture, alpha=None)
    if picture.bit_depth == 16 and suffix == ".png" and not (picture.grayscale and picture.alpha is None):
        write = _write_png16
    elif picture.bit_depth == 16 and suffix in (".tif", ".tiff"):
        write = _write_tiff16
    else:
        def write(tmp, picture):  # the format comes from the target's suffix, not the temporary's
            _write_pil(tmp, picture, suffix, quality)
    try:
        _atomic_write(path, lambda tmp: write(Path(tmp), picture))
    except (OSError, ValueError, KeyError) as e:
        raise ImageFileError(f"cannot write {path}: {e}") from None
    return notes


def _write_pil(path: Path, picture: Picture, suffix: str, quality: int | None) -> None:
    from PIL import Image

    image = picture.to_pil()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"unknown image extension {suffix!r}")
    meta = picture.metadata
    options = {}
    if meta.icc_profile and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        options["icc_profile"] = meta.icc_profile
    if meta.exif and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        options["exif"] = meta.exif
    if meta.dpi and fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        options["dpi"] = meta.dpi
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = 95 if quality is None else quality
        if image.mode == "I;16":
            image = picture.to_bit_depth(8).to_pil()
    if fmt == "JPEG" and image.mode in ("LA", "RGBA"):
        image = image.convert(image.mode[:-1])
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


def _write_tiff16(path: Path, picture: Picture) -> None:
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
    tifffile.imwrite(str(path), array, photometric=photometric, extrasamples=extrasamples, **options)


def scaled_metadata(meta: Metadata, scale: int) -> Metadata:
    """The output's metadata: DPI times ``scale`` (same printed size), the rest unchanged."""
    dpi = None if meta.dpi is None else (meta.dpi[0] * scale, meta.dpi[1] * scale)
    return replace(meta, dpi=dpi)
