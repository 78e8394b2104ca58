"""Image files as users bring them: every PIL mode, 16-bit colour, orientation, metadata, limits,
and the upscale of each through the fused engine against a float64 PlainSR reference."""
import copy
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from helpers import randomize_
from repsr_ext import FusedSR, PlainSR, RepSRNet, images
from repsr_ext.images import ImageFileError, Picture, read_image_file, write_image_file

SCALE = 2


@pytest.fixture(scope="module")
def plain():
    return randomize_(RepSRNet.preset("M2C8", scale=SCALE), seed=21, scale=0.05).eval().reparameterize()


@pytest.fixture(scope="module")
def fused(plain):
    return FusedSR(plain)


def reference(plain: PlainSR, rgb01: np.ndarray) -> np.ndarray:
    """The network in float64 on an H x W x 3 image in [0, 1], clamped: H*s x W*s x 3."""
    x = torch.from_numpy(rgb01).permute(2, 0, 1).unsqueeze(0).double()
    with torch.no_grad():
        y = copy.deepcopy(plain).double()(x)
    return y[0].permute(1, 2, 0).clamp(0, 1).numpy()


def png16_bytes(array: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (zlib + struct), independent of every library under test."""
    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[planes]
    big_endian = array.astype(">u2").reshape(height, width * planes)
    raw = b"".join(b"\x00" + row.tobytes() for row in big_endian)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def rng_image(seed, shape, dtype=np.uint8):
    top = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, top, shape, dtype=np.int64).astype(dtype)


# --- decoding every mode ---------------------------------------------------------------------------


def test_modes_convert_as_documented(tmp_path):
    rgb = rng_image(1, (6, 5, 3))
    grey = rng_image(2, (6, 5))
    alpha = rng_image(3, (6, 5))
    cases = {
        "1": (Image.fromarray(grey > 127), (np.where(grey > 127, 255, 0)[:, :, None], None)),
        "L": (Image.fromarray(grey), (grey[:, :, None], None)),
        "LA": (Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]), (grey[:, :, None], alpha)),
        "RGB": (Image.fromarray(rgb), (rgb, None)),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha])), (rgb, alpha)),
        "I;16": (Image.fromarray((grey.astype(np.uint16) * 257).astype("<u2")),
                 ((grey.astype(np.uint16) * 257)[:, :, None], None)),
        "I": (Image.fromarray(grey.astype(np.int32) * 300 - 9000),
              (np.clip(grey.astype(np.int64) * 300 - 9000, 0, 65535).astype(np.uint16)[:, :, None], None)),
        "F": (Image.fromarray(grey.astype(np.float32) / 200.0),
              (np.round(np.clip(grey / 200.0, 0, 1) * 65535).astype(np.uint16)[:, :, None], None)),
    }
    for mode, (image, (color, alpha_ref)) in cases.items():
        assert image.mode == mode
        picture = Picture.from_pil(image)
        assert np.array_equal(picture.color, color.astype(picture.color.dtype)), mode
        if alpha_ref is None:
            assert picture.alpha is None, mode
        else:
            assert np.array_equal(picture.alpha, alpha_ref), mode


def test_palette_and_cmyk():
    rgb = rng_image(4, (8, 9, 3))
    palette = Image.fromarray(rgb).quantize(16)
    picture = Picture.from_pil(palette)
    assert np.array_equal(picture.color, np.asarray(palette.convert("RGB")))
    palette.info["transparency"] = 0
    with_alpha = Picture.from_pil(palette)
    assert with_alpha.alpha is not None and set(np.unique(with_alpha.alpha)) <= {0, 255}
    grey_palette = Image.fromarray(rng_image(5, (4, 4))).convert("P")
    grey_palette.putpalette([v for i in range(256) for v in (i, i, i)])
    assert Picture.from_pil(grey_palette).grayscale
    # CMYK without a profile: PIL's formula, R = 255 - C (K = 0) -- checked on pure cyan/magenta.
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 100, 0, 0))
    converted = Picture.from_pil(cmyk).color
    assert tuple(converted[0, 0]) == (0, 255, 255) and tuple(converted[0, 1]) == (255, 155, 255)


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
def test_16bit_png_every_colour_type(tmp_path, planes):
    shape = (7, 6) if planes == 1 else (7, 6, planes)
    array = rng_image(6 + planes, shape, np.uint16)
    path = tmp_path / "wide.png"
    path.write_bytes(png16_bytes(array))
    picture = read_image_file(path)
    assert picture.bit_depth == 16
    full = array if array.ndim == 3 else array[:, :, None]
    color_planes = 1 if planes <= 2 else 3
    assert np.array_equal(picture.color, full[:, :, :color_planes])
    if planes in (2, 4):
        assert np.array_equal(picture.alpha, full[:, :, -1])
    else:
        assert picture.alpha is None
    # and the 8-bit view for training: round(v / 257)
    expected8 = np.round(full[:, :, :color_planes] / 257).astype(np.uint8)
    expected8 = np.repeat(expected8, 3, axis=2) if color_planes == 1 else expected8
    assert np.array_equal(picture.rgb8(), expected8)


def test_16bit_tiff_rgb(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    array = rng_image(11, (5, 8, 3), np.uint16)
    tifffile.imwrite(tmp_path / "wide.tif", array, photometric="rgb")
    picture = read_image_file(tmp_path / "wide.tif")
    assert picture.bit_depth == 16 and np.array_equal(picture.color, array)


# --- orientation and metadata ----------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_and_reset(tmp_path, orientation):
    rgb = rng_image(12, (5, 7, 3))
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[images.EXIF_ORIENTATION] = orientation
    path = tmp_path / "phone.png"
    image.save(path, exif=exif.tobytes())
    picture = read_image_file(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert np.array_equal(picture.color, expected)
    kept = Image.Exif()
    kept.load(picture.metadata.exif)
    assert kept[images.EXIF_ORIENTATION] == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_array_orientation_matches_pil_for_16bit(orientation):
    rgb = rng_image(13, (4, 6, 3))
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[images.EXIF_ORIENTATION] = orientation
    image.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    wide = Picture(rgb.astype(np.uint16) * 257, rgb[:, :, 0].astype(np.uint16))
    turned = images._orient(wide, orientation)
    assert np.array_equal(turned.to_bit_depth(8).color, expected)
    assert turned.alpha.shape == expected.shape[:2]


def test_rotated_jpeg_keeps_icc_exif_dpi_through_upscale_file(tmp_path, fused):
    rgb = rng_image(14, (10, 16, 3))
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[images.EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "TestCam"  # Make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = tmp_path / "phone.jpg"
    image.save(source, exif=exif.tobytes(), icc_profile=icc, dpi=(72, 72), quality=95)
    for suffix in (".jpg", ".png", ".webp", ".tif"):
        target = tmp_path / f"out{suffix}"
        fused.upscale_file(source, target)
        with Image.open(target) as out:
            assert out.size == (10 * SCALE, 16 * SCALE)  # upright: height and width swapped
            assert out.info.get("icc_profile") == icc, suffix
            written = out.getexif()
            assert written.get(images.EXIF_ORIENTATION, 1) == 1 and written.get(0x010F) == "TestCam", suffix
            if suffix != ".webp":  # WebP has no resolution field
                assert tuple(round(float(v)) for v in out.info["dpi"]) == (144, 144), suffix


def test_quality_option_changes_jpeg(tmp_path, fused):
    source = tmp_path / "in.png"
    Image.fromarray(rng_image(15, (24, 24, 3))).save(source)
    fused.upscale_file(source, tmp_path / "low.jpg", quality=20)
    fused.upscale_file(source, tmp_path / "high.jpg", quality=98)
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / "high.jpg").stat().st_size


# --- upscaling: bit depth, grey, alpha -------------------------------------------------------------


def test_16bit_grey_png_upscales_to_16bit_against_float64(tmp_path, plain, fused):
    """The issue's bug: a 16-bit grey PNG used to come out all white."""
    height, width = 9, 12
    ramp = np.linspace(0, 65535, height * width).reshape(height, width)
    ramp = (ramp + rng_image(16, (height, width)) * 20).clip(0, 65535).astype(np.uint16)
    source = tmp_path / "ramp16.png"
    Image.fromarray(ramp.astype("<u2")).save(source)
    target = tmp_path / "out16.png"
    fused.upscale_file(source, target)
    with Image.open(target) as out:
        assert out.mode in ("I;16", "I")
        result = np.asarray(out).astype(np.int64)
    # Reference: the RGB network on R = G = B, in float64, back to grey by ITU-R 601 luma.
    rgb01 = np.repeat(ramp[:, :, None] / 65535.0, 3, axis=2)
    ref = reference(plain, rgb01) @ np.array([0.299, 0.587, 0.114]) * 65535
    assert np.abs(result - ref).max() <= 1.5  # float32 engine, rounding to 16 bits
    assert result.std() > 1000  # not a flat (white) image
    assert ((result == 0) | (result == 65535)).mean() < 0.1  # and mostly not clipped: a real check


def test_16bit_rgb_png_round_trip_through_fused(tmp_path, plain, fused):
    array = rng_image(17, (6, 7, 3), np.uint16)
    source = tmp_path / "rgb16.png"
    source.write_bytes(png16_bytes(array))
    target = tmp_path / "rgb16_x2.png"
    fused.upscale_file(source, target)
    result = read_image_file(target)
    assert result.bit_depth == 16 and result.color.shape == (12, 14, 3)
    ref = reference(plain, array / 65535.0) * 65535
    assert np.abs(result.color.astype(np.float64) - ref).max() <= 1.5
    # --bit-depth 8: the same, rounded to 8 bits
    fused.upscale_file(source, tmp_path / "rgb8.png", bit_depth=8)
    eight = read_image_file(tmp_path / "rgb8.png")
    assert eight.bit_depth == 8 and np.abs(eight.color.astype(np.float64) - ref / 257).max() <= 1.01


def test_16bit_into_8bit_format(tmp_path, fused):
    source = tmp_path / "rgb16.png"
    source.write_bytes(png16_bytes(rng_image(18, (5, 5, 3), np.uint16)))
    with pytest.raises(ImageFileError, match="8 bits per channel"):
        fused.upscale_file(source, tmp_path / "x.jpg", bit_depth=16)
    assert not (tmp_path / "x.jpg").exists()
    notes = fused.upscale_file(source, tmp_path / "x.jpg")
    assert any("8 bits" in note for note in notes)


def test_grey_stays_grey_and_alpha_is_kept(tmp_path, plain, fused):
    grey = rng_image(19, (8, 10))
    alpha = rng_image(20, (8, 10))
    up = fused.upscale(Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]))
    assert up.mode == "LA" and up.size == (20, 16)
    ref = reference(plain, np.repeat(grey[:, :, None] / 255.0, 3, axis=2)) @ np.array([0.299, 0.587, 0.114]) * 255
    assert np.abs(np.asarray(up.getchannel("L")).astype(np.float64) - ref).max() <= 1.01
    expected_alpha = np.asarray(Image.fromarray(alpha).resize((20, 16), Image.BICUBIC))
    assert np.array_equal(np.asarray(up.getchannel("A")), expected_alpha)


def test_y_model_on_rgb_image(plain):
    y_net = randomize_(RepSRNet(scale=SCALE, channels=8, num_blocks=2, in_channels=1, out_channels=1), seed=22, scale=0.05)
    y_plain = y_net.eval().reparameterize()
    y_fused = FusedSR(y_plain)
    # Low saturation, so that no channel clips and the output's luma is exactly the net's Y.
    rng = np.random.default_rng(23)
    base = rng.uniform(0.35, 0.65, (9, 8, 1))
    rgb = np.round(np.clip(base + rng.uniform(-0.04, 0.04, (9, 8, 3)), 0, 1) * 255).astype(np.uint8)
    out = y_fused.upscale(rgb)
    assert out.shape == (18, 16, 3) and out.dtype == np.uint8
    # Y through the net (float64 reference), Cb/Cr bicubic: the output's luma is the net's Y.
    x = rgb / 255.0
    y = x @ np.array([0.299, 0.587, 0.114])
    with torch.no_grad():
        y_ref = copy.deepcopy(y_plain).double()(torch.from_numpy(y)[None, None])[0, 0].numpy()
    luma = out.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    inside = (y_ref > 0.06) & (y_ref < 0.94)  # where no channel clips (|Cb|, |Cr| < 0.03 here)
    assert inside.mean() > 0.15
    assert np.abs(luma - y_ref)[inside].max() < 1.5 / 255  # 8-bit rounding of three channels


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, why", [(b"", "empty"), (b"hello, not an image\n", "cannot read image"),
                                          ("truncated", "cannot read image")])
def test_unreadable_files_name_the_file(tmp_path, content, why):
    path = tmp_path / "bad.png"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(rng_image(24, (32, 32, 3))).save(buffer, format="PNG")
        content = buffer.getvalue()[:200]
    path.write_bytes(content)
    with pytest.raises(ImageFileError, match=why) as raised:
        read_image_file(path)
    assert "bad.png" in str(raised.value)


def test_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(path)
    with pytest.raises(ImageFileError, match=r"300x200 = 60,000 pixels is over the limit of 59,999.*--max-pixels"):
        read_image_file(path, max_pixels=59_999)
    assert read_image_file(path, max_pixels=60_000).size == (300, 200)
    # PIL's own bomb check is bypassed (ours applies), and restored afterwards
    limit = Image.MAX_IMAGE_PIXELS
    read_image_file(path, max_pixels=None)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    target.write_bytes(b"user's file")
    picture = Picture(rng_image(25, (4, 4, 3)))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(ImageFileError, match="disk full"):
        write_image_file(target, picture)
    assert target.read_bytes() == b"user's file"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_cuda_image_tile_bounds_memory():
    from repsr_ext.fused import cuda_image_tile

    # 720p x4 RGB uint8 with 64-channel fp16 maps: 3 + 48 + 256 bytes per input pixel
    per_pixel = 3 + 3 * 16 + 2 * 64 * 2
    assert cuda_image_tile(720, 1280, per_pixel, budget=8 << 30) is None  # fits whole
    tile = cuda_image_tile(4320, 7680, per_pixel, budget=1 << 30)
    assert tile % 4 == 0 and 256 <= tile and tile * tile * per_pixel <= 1 << 30
    assert cuda_image_tile(4320, 7680, per_pixel, budget=1 << 20) == 256  # never below 256


def test_small_tile_warns_and_still_matches(fused):
    rgb = rng_image(26, (20, 24, 3))
    with pytest.warns(UserWarning, match="tile=4 is small"):
        tiled = fused.upscale(rgb, tile=4)
    assert np.array_equal(tiled, fused.upscale(rgb))


# --- TIFF metadata, EXIF sizes, colour keys, alpha by format (QA pass) ------------------------------

MAKE, IMAGE_WIDTH, STRIP_OFFSETS, DATE_TIME_ORIGINAL = 0x010F, 256, 273, 0x9003


def _camera_exif(orientation=1, **ifd0):
    """An EXIF block with Make, an Exif sub-IFD (DateTimeOriginal) and the given IFD0 tags."""
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    exif[images.EXIF_ORIENTATION] = orientation
    for tag, value in ifd0.items():
        exif[int(tag)] = value
    exif.get_ifd(0x8769)[DATE_TIME_ORIGINAL] = "2024:05:06 07:08:09"
    return exif


@pytest.mark.parametrize("kind", ["rgb", "cmyk", "icc+dpi"])
def test_8bit_tiff_to_tiff_keeps_picture_tags_not_layout(tmp_path, fused, kind):
    """Every 8-bit TIFF -> TIFF used to fail ("codec configuration error"): the source's own IFD0
    (compression, strip offsets, ...) travelled as "EXIF" into every output."""
    rgb = rng_image(40, (10, 12, 3))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.fromarray(rgb).convert("CMYK") if kind == "cmyk" else Image.fromarray(rgb)
    options = dict(icc_profile=icc, dpi=(300, 150)) if kind == "icc+dpi" else {}
    source = tmp_path / "scan.tif"
    image.save(source, exif=_camera_exif().tobytes(), **options)
    for suffix in (".tif", ".png", ".jpg"):
        target = tmp_path / f"out{suffix}"
        fused.upscale_file(source, target)
        with Image.open(target) as out:
            assert out.size == (12 * SCALE, 10 * SCALE) and out.mode == "RGB", suffix
            exif = out.getexif()
            assert exif.get(MAKE) == "TestCam", suffix
            assert exif.get_ifd(0x8769).get(DATE_TIME_ORIGINAL) == "2024:05:06 07:08:09", suffix
            if suffix == ".tif":  # the output's own directory: its size, not the source's
                assert exif[IMAGE_WIDTH] == 12 * SCALE
            else:
                assert IMAGE_WIDTH not in exif and STRIP_OFFSETS not in exif, suffix
            if kind == "icc+dpi":
                assert out.info.get("icc_profile") == icc, suffix
                assert tuple(round(float(v)) for v in out.info["dpi"]) == (300 * SCALE, 150 * SCALE), suffix
    # and the picture itself survived the trip (the JPEG aside)
    expected = read_image_file(tmp_path / "out.png").color
    assert np.array_equal(read_image_file(tmp_path / "out.tif").color, expected)


def test_16bit_tiff_output_keeps_exif(tmp_path, fused):
    tifffile = pytest.importorskip("tifffile")
    source = tmp_path / "phone.jpg"
    exif = _camera_exif(orientation=6)
    exif.get_ifd(0x8769).update({0xA002: 16, 0xA003: 10})  # PixelXDimension / PixelYDimension
    Image.fromarray(rng_image(41, (10, 16, 3))).save(source, exif=exif.tobytes(), dpi=(300, 150))
    target = tmp_path / "wide.tif"
    assert fused.upscale_file(source, target, bit_depth=16) == []
    with tifffile.TiffFile(target) as tif:  # a valid TIFF to another reader, pixels included
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.shape == (16 * SCALE, 10 * SCALE, 3)
        assert page.tags["Make"].value == "TestCam" and page.tags["Orientation"].value == 1
        assert page.tags["ExifTag"].value["DateTimeOriginal"] == "2024:05:06 07:08:09"
        pixels = page.asarray()
    back = read_image_file(target)
    assert np.array_equal(back.color, pixels) and back.metadata.dpi == (150 * SCALE, 300 * SCALE)
    kept = Image.Exif()
    kept.load(back.metadata.exif)
    assert kept[MAKE] == "TestCam" and IMAGE_WIDTH not in kept
    # the sub-IFD's pixel dimensions are the upright output's
    assert (kept.get_ifd(0x8769)[0xA002], kept.get_ifd(0x8769)[0xA003]) == (10 * SCALE, 16 * SCALE)


def test_exif_too_long_for_jpeg_is_dropped_with_a_note(tmp_path, fused):
    source = tmp_path / "annotated.png"
    Image.fromarray(rng_image(42, (8, 8, 3))).save(source, exif=_camera_exif(**{"270": "x" * 70_000}).tobytes())
    notes = fused.upscale_file(source, tmp_path / "out.jpg")
    assert any("EXIF dropped" in note for note in notes)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (8 * SCALE, 8 * SCALE) and not out.getexif()
    assert fused.upscale_file(source, tmp_path / "out.png") == []  # PNG holds it
    with Image.open(tmp_path / "out.png") as out:
        assert len(out.getexif()[270]) == 70_000


def test_16bit_grey_alpha_tiff_round_trip(tmp_path):
    pytest.importorskip("tifffile")
    grey, alpha = rng_image(43, (7, 9, 1), np.uint16), rng_image(44, (7, 9), np.uint16)
    path = tmp_path / "la16.tif"
    picture = Picture(grey, alpha, images.Metadata(exif=_camera_exif().tobytes(), dpi=(200.0, 100.0)))
    assert write_image_file(path, picture) == []
    with pytest.raises(Exception):
        Image.open(path)  # PIL has no 16-bit grey + alpha mode: the reason for the tifffile path
    back = read_image_file(path)
    assert back.bit_depth == 16 and back.grayscale
    assert np.array_equal(back.color, grey) and np.array_equal(back.alpha, alpha)
    assert back.metadata.dpi == (200.0, 100.0)
    kept = Image.Exif()
    kept.load(back.metadata.exif)
    assert kept[MAKE] == "TestCam"


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_colour_key_transparency_becomes_alpha(tmp_path, mode):
    """PNG tRNS on a grey or RGB image: the pixels of the key colour are transparent."""
    if mode == "RGB":
        pixels = rng_image(45, (6, 7, 3)) // 64 * 64  # few colours, so the key occurs
        key = tuple(int(v) for v in pixels[2, 3])
        keyed = (pixels == key).all(axis=2)
        image = Image.fromarray(pixels)
    else:
        pixels = rng_image(45, (6, 7)) // 64 * 64
        if mode == "I;16":
            pixels = pixels.astype(np.uint16) * 257
        key = int(pixels[2, 3])
        keyed = pixels == key
        image = Image.fromarray(pixels.astype("<u2") if mode == "I;16" else pixels)
    assert image.mode == mode and 0 < keyed.sum() < keyed.size
    path = tmp_path / "keyed.png"
    image.save(path, transparency=key)
    picture = read_image_file(path)
    top = 65535 if mode == "I;16" else 255
    assert picture.alpha is not None and np.array_equal(picture.alpha, np.where(keyed, 0, top))
    assert np.array_equal(picture.color[:, :, 0] if picture.grayscale else picture.color, pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_dpi_follows_the_orientation_and_exif_resolution_matches(tmp_path, fused, orientation):
    source = tmp_path / "phone.jpg"
    exif = _camera_exif(orientation, **{"282": 300, "283": 150, "296": 2})
    Image.fromarray(rng_image(46, (10, 16, 3))).save(source, exif=exif.tobytes(), dpi=(300, 150))
    expected = (150 * SCALE, 300 * SCALE) if orientation >= 5 else (300 * SCALE, 150 * SCALE)
    for suffix in (".jpg", ".tif", ".png"):
        target = tmp_path / f"out{suffix}"
        fused.upscale_file(source, target)
        with Image.open(target) as out:
            assert tuple(round(float(v)) for v in out.info["dpi"]) == expected, suffix
            written = out.getexif()
            assert (float(written[282]), float(written[283])) == expected, suffix  # no stale input value


@pytest.mark.parametrize("suffix", [".png", ".apng", ".tif", ".webp", ".gif", ".tga", ".qoi", ".jp2", ".ico", ".avif"])
@pytest.mark.parametrize("grey", [False, True], ids=["RGBA", "LA"])
def test_alpha_kept_by_every_format_that_holds_it(tmp_path, suffix, grey):
    from PIL import features

    if suffix == ".avif" and not features.check("avif"):
        pytest.skip("this PIL has no AVIF plugin")
    alpha = np.full((8, 10), 255, np.uint8)
    alpha[:4, :5] = 0
    color = rng_image(47, (8, 10, 1 if grey else 3))
    path = tmp_path / f"logo{suffix}"
    assert write_image_file(path, Picture(color, alpha)) == []
    with Image.open(path) as back:
        assert back.size == (10, 8)
        read_alpha = np.asarray(back.convert("RGBA"))[:, :, 3]
    assert (read_alpha[:4, :5] < 128).all() and (read_alpha[4:, 5:] >= 128).all()


def test_alpha_dropped_with_a_note_where_the_format_has_none(tmp_path):
    """BMP, for one, takes RGBA from PIL but reads back RGB: a fixed list of suffixes said it kept alpha."""
    alpha = np.zeros((4, 4), np.uint8)
    for suffix in (".bmp", ".jpg"):
        notes = write_image_file(tmp_path / f"x{suffix}", Picture(rng_image(48, (4, 4, 3)), alpha))
        assert any("alpha channel dropped" in note for note in notes), suffix


def test_ico_is_written_at_its_size_and_refused_over_256(tmp_path, fused):
    source = tmp_path / "icon.png"
    Image.fromarray(rng_image(49, (40, 30, 3))).save(source)
    fused.upscale_file(source, tmp_path / "icon.ico")
    with Image.open(tmp_path / "icon.ico") as out:
        assert out.size == (30 * SCALE, 40 * SCALE)  # not shrunk to PIL's square icon sizes
    Image.fromarray(rng_image(50, (130, 20, 3))).save(source)
    with pytest.raises(ImageFileError, match="at most 256x256"):
        fused.upscale_file(source, tmp_path / "big.ico")
    assert not (tmp_path / "big.ico").exists()


def test_numpy_integer_tile_is_accepted(fused):
    rgb = rng_image(51, (20, 24, 3))
    untiled = fused.upscale(rgb)
    assert np.array_equal(fused.upscale(rgb, tile=np.int64(16)), untiled)
    assert np.array_equal(fused.upscale(rgb, tile=np.uint16(12)), untiled)
    for bad in (True, np.bool_(True), 16.0, np.float32(16), "16", 0, np.int64(-1)):
        with pytest.raises(ValueError, match="tile must be a positive integer"):
            fused.upscale(rgb, tile=bad)


def test_upscale_file_checks_its_target(tmp_path, fused, monkeypatch):
    source = tmp_path / "in.png"
    Image.fromarray(rng_image(52, (6, 6, 3))).save(source)
    nested = tmp_path / "new" / "deeper" / "out.png"
    fused.upscale_file(source, nested)  # missing folders are made
    assert Image.open(nested).size == (12, 12)
    # a target it could not write is refused before anything is read or computed
    for target, why in ((tmp_path / "out.xyz", "not an image format"), (tmp_path / "out", "no file extension")):
        with pytest.raises(ImageFileError, match=why):
            fused.upscale_file(tmp_path / "missing.png", target)
    before = source.read_bytes()
    with pytest.raises(ImageFileError, match="refusing to overwrite the input"):
        fused.upscale_file(source, tmp_path / "new" / ".." / "in.png")
    assert source.read_bytes() == before
    # a failing write names the target, never the temporary file beside it

    def full_disk(self, fp, *args, **kwargs):
        raise OSError(28, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(ImageFileError) as raised:
        fused.upscale_file(source, tmp_path / "full.png")
    assert "No space left on device" in str(raised.value) and ".tmp" not in str(raised.value)
    assert str(tmp_path / "full.png") in str(raised.value)
