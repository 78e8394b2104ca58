"""FusedSR: a deployed network bound to a device and run by the fused op (csrc/).

    fused = FusedSR.load("model.safetensors")      # or a PlainSR, or a RepSRNet
    y = fused(x)                                   # float [N, C, H, W] -> [N, C, rH, rW]
    img = fused.upscale("photo.png")               # PIL / uint8|uint16 HxWxC numpy / path -> same kind
    fused.upscale_file("in.tif", "out.png")        # bit depth, orientation, ICC, EXIF, DPI kept
"""
from __future__ import annotations

import operator
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import images, ops
from .data import LUMA, upscale_rgb_with_y_model
from .nets import PlainSR, RepSRNet


# dtypes the fused op accepts on each device type.
SUPPORTED_DTYPES = {
    "cpu": (torch.float32,),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}


class FusedSR:
    """A deployed network on one device, run as one fused op per call.

    The weights are converted once, here; every call runs the whole chain (convs, activations,
    tail, pixel shuffle, residual) without writing any intermediate feature map."""

    def __init__(self, model: PlainSR, device="cpu", dtype: torch.dtype = torch.float32, clamp: bool = False):
        if not isinstance(model, PlainSR):
            raise TypeError(f"FusedSR needs a PlainSR, got {type(model).__name__}; use FusedSR.load()")
        device = torch.device(device)
        if device.type not in SUPPORTED_DTYPES:
            raise ValueError(f"unsupported device {device}: repsr_ext runs on cpu and cuda")
        if dtype not in SUPPORTED_DTYPES[device.type]:
            names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES[device.type])
            raise ValueError(f"dtype {dtype} is not supported on {device.type}: use one of {names}")
        ops.require_extension()
        if not ops.has_backend(device.type):
            raise RuntimeError(
                f"repsr_ext was built without {device.type.upper()} kernels (built backends: "
                f"{', '.join(ops.backends())}); rebuild on a machine with a CUDA torch and "
                "nvcc: pip install --no-build-isolation ."
            )
        self.dtype = dtype
        self.clamp = clamp
        self.scale = model.scale
        self.residual = model.residual == "nearest"
        self.in_channels = model.in_channels
        self.out_channels = model.out_channels
        self.channels = model.channels
        # Receptive radius: each 3x3 layer sees one more pixel on every side.
        self.halo = model.num_layers
        self._copy_streams = None  # CUDA (upload, download) streams of start_frames, made on first use
        weights, biases, slopes = model.layer_tensors()

        # float32 on every path (the CUDA launch packs its fp16/bf16 copy itself), and always a
        # copy: a PlainSR trained or edited later must not change the deployed engine.
        def snapshot(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device=device, dtype=torch.float32, memory_format=torch.contiguous_format, copy=True)

        self.weights = [snapshot(w) for w in weights]
        self.biases = [snapshot(b) for b in biases]
        self.neg_slopes = [snapshot(s) for s in slopes]
        # Where the weights actually are: "cuda" means the current device, and tensors there
        # report it with its index (cuda:0), so that is what inputs are compared with.
        self.device = self.weights[0].device

    @classmethod
    def load(cls, source, device="cpu", dtype: torch.dtype = torch.float32, clamp: bool = False,
             act: str | None = None) -> "FusedSR":
        """``source``: a deployed file path (repsr_ext or SRVGGNetCompact), a ``PlainSR``, or a
        ``RepSRNet`` (re-parameterized here, once). ``act`` ('relu', 'lrelu' or 'prelu') names the
        activation of an SRVGGNetCompact file without PReLU weights, which the file cannot tell."""
        if act is not None and not isinstance(source, (str, Path)):
            raise ValueError("act= applies to SRVGGNetCompact files only; a network object knows its activation")
        if isinstance(source, (str, Path)):
            model = PlainSR.load(source, act=act)
        elif isinstance(source, RepSRNet):
            model = source.reparameterize()
        elif isinstance(source, PlainSR):
            model = source
        else:
            raise TypeError(
                f"FusedSR.load needs a file path, a PlainSR or a RepSRNet, got {type(source).__name__}"
            )
        return cls(model, device=device, dtype=dtype, clamp=clamp)

    def __repr__(self) -> str:
        return (
            f"FusedSR(x{self.scale}, channels={self.channels}, device={self.device}, "
            f"dtype={str(self.dtype).replace('torch.', '')}, clamp={self.clamp})"
        )

    # --- float tensors ------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """x: [N, C, H, W] (any strides, channels_last included) -> [N, C_out, H*scale, W*scale].

        ``tile``: process the image in tiles of at most tile x tile input pixels, overlapping by the
        receptive radius, for images too large for memory; the result equals the untiled one."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}; use upscale() for images")
        if x.dim() != 4:
            raise ValueError(f"input must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channels, the model expects {self.in_channels} "
                f"(shape {tuple(x.shape)}, expected [N, {self.in_channels}, H, W])"
            )
        if x.dtype != self.dtype:
            raise TypeError(f"input dtype is {x.dtype}, the model runs in {self.dtype}: convert with x.to({self.dtype})")
        if x.device != self.device:
            raise ValueError(f"input is on {x.device} but the model is on {self.device}: move it with x.to('{self.device}')")

        def run(crop: torch.Tensor) -> torch.Tensor:
            return torch.ops.repsr_ext.fused_sr(
                crop, self.weights, self.biases, self.neg_slopes, self.scale, self.residual, self.clamp
            )

        return self._tiled(run, x, spatial_dims=(2, 3), tile=tile)

    # --- images -------------------------------------------------------------------------------------
    def upscale(self, image, tile: int | None = None):
        """Upscales a PIL image, an H x W (x C) uint8 or uint16 numpy array, or an image file path.

        Returns the same kind: a PIL image for PIL and path input (16-bit grey stays ``I;16``;
        16-bit colour from a file comes back as 8-bit PIL, use ``upscale_file`` to keep it), a numpy
        array of the input's dtype and layout for numpy input. Any PIL mode is converted as
        ``images.Picture.from_pil`` says; a file's EXIF orientation is applied. Grey input stays
        grey; alpha is upscaled bicubically. 8-bit images are rounded and clamped inside the fused
        op; 16-bit ones run through the float op and are rounded to 16 bits."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            return self.upscale_picture(images.read_image_file(image), tile).to_pil()
        if isinstance(image, Image.Image):
            return self.upscale_picture(images.Picture.from_pil(image), tile).to_pil()
        if isinstance(image, np.ndarray):
            return self._upscale_array(image, tile)
        raise TypeError(f"upscale needs a PIL image, a uint8/uint16 numpy array or a path, got {type(image).__name__}")

    def upscale_file(self, source, target, tile: int | None = None, bit_depth: int | None = None,
                     quality: int | None = None, max_pixels: int | None = images.DEFAULT_MAX_PIXELS) -> list[str]:
        """Reads ``source``, upscales it and writes ``target`` (format by its extension) with the
        input's bit depth (or ``bit_depth`` 8 / 16), ICC profile, EXIF (orientation reset) and DPI
        times the scale; ``quality`` for JPEG / WebP (default 95); images over ``max_pixels`` are
        refused (None: no limit). Written atomically. Returns notes on what the output format
        could not keep."""
        return self.upscale_file_pictures(source, target, tile, bit_depth, quality, max_pixels)[2]

    def upscale_file_pictures(self, source, target, tile=None, bit_depth=None, quality=None,
                              max_pixels=images.DEFAULT_MAX_PIXELS):
        """``upscale_file`` that also returns the decoded input and the result: (input, output, notes)."""
        source, target = Path(source), Path(target)
        images.output_format(target)  # checked before the work: a target it could not write
        if target.resolve() == source.resolve():
            raise images.ImageFileError(f"refusing to overwrite the input {source}: choose another output path")
        picture = images.read_image_file(source, max_pixels=max_pixels)
        bits, note = images.output_bit_depth(bit_depth, picture, target)
        images.check_output(target, (picture.size[0] * self.scale, picture.size[1] * self.scale))
        result = self.upscale_picture(picture, tile).to_bit_depth(bits)
        result.metadata = images.scaled_metadata(picture.metadata, self.scale)
        target.parent.mkdir(parents=True, exist_ok=True)
        notes = ([note] if note else []) + images.write_image_file(target, result, quality=quality)
        return picture, result, notes

    def upscale_picture(self, picture: "images.Picture", tile: int | None = None) -> "images.Picture":
        """The network applied to a decoded picture (same bit depth, grey stays grey)."""
        color = picture.color
        grey = picture.grayscale
        if self.in_channels == 3 and grey:
            color = np.repeat(color, 3, axis=2)  # an RGB model sees a grey image as R = G = B
        if self.in_channels not in (1, 3) or self.out_channels != self.in_channels:
            raise ValueError(f"images need a model with 1 or 3 channels in and out, this one has "
                             f"{self.in_channels} in and {self.out_channels} out")
        if self.in_channels == 1 and not grey:
            out = self._run_y_model(color, tile)
        else:
            out = self._run_image(color, tile)
            if grey and out.shape[2] == 3:
                out = _luma(out)  # rounded once, from the unrounded channels where there are any
            elif out.dtype != color.dtype:
                out = _quantize(out, color.dtype)
        alpha = None if picture.alpha is None else _resize_alpha(picture.alpha, self.scale)
        return images.Picture(out, alpha, picture.metadata)

    def upscale_frames(self, frames: np.ndarray, tile: int | None = None) -> np.ndarray:
        """A batch of RGB frames, uint8 [N, H, W, 3] -> [N, rH, rW, 3], each exactly as ``upscale``
        would return it (one fused call for the batch with an RGB model; Y models frame by frame)."""
        self._check_frames(frames)
        if self.in_channels == 3 and self.out_channels == 3:
            return self._upscale_u8_batch(frames, tile)
        return np.stack([self.upscale_picture(images.Picture(np.ascontiguousarray(f)), tile).color for f in frames])

    def start_frames(self, frames: np.ndarray, tile: int | None = None) -> "PendingFrames":
        """``upscale_frames`` without waiting for the result: ``.result()`` returns it.

        On a CUDA device, for an RGB model whose batch fits the GPU whole, the batch is queued on
        the device: its upload from pinned host memory on one copy stream, the net on the current
        stream, the download into pinned host memory on another copy stream, so a caller that
        starts the next batch before taking this one's result overlaps the next upload and this
        download with the net. Everywhere else it runs at once."""
        if self.device.type != "cuda" or self.in_channels != 3 or self.out_channels != 3:
            return PendingFrames(self.upscale_frames(frames, tile))
        self._check_frames(frames)
        n, height, width, _ = frames.shape
        free, _ = torch.cuda.mem_get_info(self.device)
        tiled = tile is not None and (height > tile or width > tile)
        if tiled or n == 0 or cuda_image_tile(height, width, self._bytes_per_pixel(1) * n, free // 2) is not None:
            return PendingFrames(self._upscale_u8_batch(frames, tile))
        if self._copy_streams is None:  # (upload, download), made once per FusedSR
            self._copy_streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device))
        upload, download = self._copy_streams
        compute = torch.cuda.current_stream(self.device)
        # pin_memory() copies into torch's caching host allocator, which keeps the block until the
        # upload that reads it has finished.
        host_in = _host_tensor(frames).pin_memory()
        with torch.cuda.stream(upload):
            x = host_in.to(self.device, non_blocking=True)
        compute.wait_stream(upload)
        x.record_stream(compute)  # allocated on the upload stream, read on the compute stream
        y = self._fused_u8(x)
        download.wait_stream(compute)
        host_out = torch.empty(y.shape, dtype=torch.uint8, pin_memory=True)
        with torch.cuda.stream(download):
            host_out.copy_(y, non_blocking=True)
        y.record_stream(download)
        done = torch.cuda.Event()
        done.record(download)
        return PendingFrames(host_out, done)

    def _check_frames(self, frames) -> None:
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            shape = getattr(frames, "shape", None)
            raise ValueError(f"frames must be a uint8 numpy array [N, H, W, 3], got "
                             f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {shape}")

    def upscale_video(self, source, target, **options):
        """Upscales a video file; see ``repsr_ext.video.upscale_video`` for the options and what is
        kept. Returns its ``VideoReport``."""
        from . import video

        return video.upscale_video(self, source, target, **options)

    def _run_image(self, color: np.ndarray, tile) -> np.ndarray:
        """H x W x C uint8 -> (rH) x (rW) x C_out uint8 (rounded in the op); uint16 -> float64 in
        [0, 1] (rounded by the caller)."""
        if color.dtype == np.uint8:
            return self._upscale_u8(color, tile)
        x = torch.from_numpy(color.astype(np.float32) / 65535.0).permute(2, 0, 1).unsqueeze(0)
        y = self._run_clamped(x, tile)[0].permute(1, 2, 0).numpy()
        return np.clip(y.astype(np.float64), 0, 1)

    def _run_clamped(self, x: torch.Tensor, tile) -> torch.Tensor:
        """The float op with clamping on a CPU float32 [1, C, H, W] image in [0, 1] (any device,
        the model's dtype on the way): float32 [1, C_out, rH, rW] on the CPU."""
        def run(crop: torch.Tensor) -> torch.Tensor:
            return torch.ops.repsr_ext.fused_sr(
                crop, self.weights, self.biases, self.neg_slopes, self.scale, self.residual, True
            )

        x = x.to(device=self.device, dtype=self.dtype)
        return self._tiled(run, x, spatial_dims=(2, 3), tile=tile, image=True).float().cpu()

    def _run_y_model(self, rgb: np.ndarray, tile) -> np.ndarray:
        """A one-channel (Y) model on an RGB image, as Y-trained SR papers evaluate it: Y (BT.601,
        full range) through the network, Cb and Cr upscaled bicubically, then back to RGB."""
        top = 255.0 if rgb.dtype == np.uint8 else 65535.0
        x = torch.from_numpy(rgb.astype(np.float32) / top).permute(2, 0, 1).unsqueeze(0)
        out = upscale_rgb_with_y_model(lambda y: self._run_clamped(y, tile), x, self.scale)
        out = out[0].permute(1, 2, 0).mul(top).round().numpy()
        return out.astype(rgb.dtype)

    def _upscale_array(self, array: np.ndarray, tile) -> np.ndarray:
        if array.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"image array must be uint8 or uint16, got {array.dtype}")
        squeeze = array.ndim == 2
        if squeeze:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise ValueError(f"image array must have shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                             f"got {tuple(array.shape)}")
        alpha = array[:, :, 3] if array.shape[2] == 4 else None
        picture = images.Picture(np.ascontiguousarray(array[:, :, :3] if alpha is not None else array),
                                 None if alpha is None else np.ascontiguousarray(alpha))
        result = self.upscale_picture(picture, tile)
        out = result.color if result.alpha is None else np.concatenate([result.color, result.alpha[:, :, None]], 2)
        return out[:, :, 0] if squeeze and out.shape[2] == 1 else out

    def _upscale_u8(self, array: np.ndarray, tile) -> np.ndarray:
        return self._upscale_u8_batch(array[None], tile)[0]

    def _upscale_u8_batch(self, array: np.ndarray, tile) -> np.ndarray:
        """uint8 [N, H, W, C] -> [N, rH, rW, C_out] through the uint8 op (rounded and clamped in it)."""
        batch = _host_tensor(array)
        if self.device.type == "cuda":  # pinned: the copy runs as DMA, without a staging copy
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return self._tiled(self._fused_u8, batch, spatial_dims=(1, 2), tile=tile, image=True).cpu().numpy()

    def _fused_u8(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 op on an NHWC uint8 batch on the model's device."""
        return torch.ops.repsr_ext.fused_sr_u8(x, self.weights, self.biases, self.neg_slopes, self.scale, self.residual)

    # --- tiling -------------------------------------------------------------------------------------
    def _bytes_per_pixel(self, element: int) -> int:
        """GPU bytes per input pixel of one run with ``element``-byte images: the input, the output
        (scale^2 larger), and two boundary maps of the widest layer (a split chain ping-pongs
        between them)."""
        compute = 4 if self.dtype == torch.float32 else 2
        return (self.in_channels * element + self.out_channels * self.scale ** 2 * element
                + 2 * max(self.channels) * compute)

    def _tiled(self, run: Callable, x: torch.Tensor, spatial_dims: tuple[int, int], tile: int | None,
               image: bool = False):
        """``run`` over tiles of ``x``. ``image``: the caller takes the result to the CPU anyway, so
        on CUDA the output is assembled there and a tile is chosen when the whole image would not
        fit in the GPU's free memory (``cuda_image_tile``)."""
        if tile is not None:
            given = tile
            try:  # any integral type (numpy's too), but not bool or float
                tile = 0 if isinstance(tile, (bool, np.bool_)) else operator.index(tile)
            except TypeError:
                tile = 0
            if tile < 1:
                raise ValueError(f"tile must be a positive integer or None, got {given!r}")
        dy, dx = spatial_dims
        height, width = x.shape[dy], x.shape[dx]
        out_device = x.device
        if image and x.device.type == "cuda":
            out_device = torch.device("cpu")
            if tile is None:
                free, _ = torch.cuda.mem_get_info(x.device)
                tile = cuda_image_tile(height, width, self._bytes_per_pixel(x.element_size()) * x.shape[0], free // 2)
        if tile is None or (height <= tile and width <= tile) or height == 0 or width == 0:
            return run(x)  # (an empty image has no tiles; the op makes its empty output)
        overhead = ((tile + 8 * self.halo) / tile) ** 2
        if overhead > 4:
            warnings.warn(
                f"tile={tile} is small next to this network's reach ({4 * self.halo} pixels per side "
                f"for {self.halo} layers): each tile computes about {overhead:.0f}x its own pixels; "
                f"tile >= {8 * self.halo} keeps that under 4x", stacklevel=3)
        # The CPU op runs 3x3 convs as Winograd F(4x4, 3x3) on 4x4 blocks aligned to multiples of 4
        # from the crop's pixel 0 (csrc/README.md). A block's rounding depends on its whole 6x6
        # input window, so an output pixel's bits depend on up to 4 (not 1) more pixels per side
        # per layer: crops extend 4 * num_layers pixels past the tile, and start on a multiple of 4
        # so that the crop's block grid is the whole image's. Then tiled == untiled, bit for bit.
        s, halo, out = self.scale, 4 * self.halo, None
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
                # The crop's border is either the image's own border (zero padding, as untiled) or
                # at least `halo` pixels away from the tile, beyond every pixel it depends on.
                cy0, cx0 = max(0, y0 - halo) // 4 * 4, max(0, x0 - halo) // 4 * 4
                cy1, cx1 = min(height, y1 + halo), min(width, x1 + halo)
                crop = x.narrow(dy, cy0, cy1 - cy0).narrow(dx, cx0, cx1 - cx0)
                part = run(crop).narrow(dy, (y0 - cy0) * s, (y1 - y0) * s).narrow(dx, (x0 - cx0) * s, (x1 - x0) * s)
                if out is None:
                    shape = list(part.shape)
                    shape[dy], shape[dx] = height * s, width * s
                    out = torch.empty(shape, dtype=part.dtype, device=out_device)
                out.narrow(dy, y0 * s, (y1 - y0) * s).narrow(dx, x0 * s, (x1 - x0) * s).copy_(part)
        return out



def _host_tensor(array: np.ndarray) -> torch.Tensor:
    """A contiguous CPU tensor over ``array`` (copied when it is not contiguous or read-only, e.g.
    np.asarray of a PIL image: torch wants writable memory)."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


class PendingFrames:
    """A batch started by ``FusedSR.start_frames``; ``result()`` waits for it (once) and returns
    the upscaled frames, uint8 [N, rH, rW, 3]."""

    def __init__(self, value, done=None):
        self._value = value  # a numpy array, or a pinned CPU tensor that `done` completes
        self._done = done  # a torch.cuda.Event, or None when the value is ready

    def result(self) -> np.ndarray:
        if self._done is not None:
            self._done.synchronize()
            self._done = None
            self._value = self._value.numpy()  # shares the pinned memory, keeps the tensor alive
        return self._value


def cuda_image_tile(height: int, width: int, bytes_per_pixel: int, budget: int) -> int | None:
    """The tile side for an image whose whole-image run (``bytes_per_pixel`` per input pixel:
    input, output and the widest intermediate map, see ``FusedSR._bytes_per_pixel``) would need
    more than ``budget`` bytes of GPU memory; None when it fits whole. At least 256, so that halo
    recomputation stays small; a multiple of 4 (Winograd-aligned like every tile)."""
    if height * width * bytes_per_pixel <= budget:
        return None
    side = int((budget / bytes_per_pixel) ** 0.5) // 4 * 4
    return max(256, side)


def _quantize(values01: np.ndarray, dtype) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.round(np.clip(values01, 0, 1) * top).astype(dtype)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 -> H x W x 1: ITU-R 601 luma, as PIL's convert("L"). uint8 stays uint8; float
    values in [0, 1] (from 16-bit input) become uint16."""
    y = rgb.astype(np.float64) @ np.array(LUMA)
    if rgb.dtype == np.uint8:
        return np.clip(np.round(y), 0, 255).astype(np.uint8)[:, :, None]
    return _quantize(y, np.uint16)[:, :, None]


def _resize_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upscaling of an alpha plane (PIL), in its dtype."""
    from PIL import Image

    size = (alpha.shape[1] * scale, alpha.shape[0] * scale)
    if alpha.dtype == np.uint8:
        return np.asarray(Image.fromarray(alpha).resize(size, Image.BICUBIC)).copy()
    plane = Image.fromarray(alpha.astype(np.float32)).resize(size, Image.BICUBIC)
    return np.clip(np.round(np.asarray(plane)), 0, 65535).astype(np.uint16)
