"""FusedSR: a deployed network bound to a device and run by the fused op (csrc/).

    fused = FusedSR.load("model.safetensors")      # or a PlainSR, or a RepSRNet
    y = fused(x)                                   # float [N, C, H, W] -> [N, C, rH, rW]
    img = fused.upscale("photo.png")               # PIL / uint8 HxWxC numpy / path -> same kind
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import ops
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
                f"{', '.join(ops.build_info.BACKENDS)}); rebuild on a machine with a CUDA torch and "
                "nvcc: pip install --no-build-isolation ."
            )
        self.device = device
        self.dtype = dtype
        self.clamp = clamp
        self.scale = model.scale
        self.residual = model.residual == "nearest"
        self.in_channels = model.in_channels
        self.out_channels = model.out_channels
        self.channels = model.channels
        # Receptive radius: each 3x3 layer sees one more pixel on every side.
        self.halo = model.num_layers
        weights, biases, slopes = model.layer_tensors()
        # float32 on every path: the CUDA launch packs its fp16/bf16 copy itself.
        self.weights = [w.to(device=device, dtype=torch.float32).contiguous() for w in weights]
        self.biases = [b.to(device=device, dtype=torch.float32).contiguous() for b in biases]
        self.neg_slopes = [s.to(device=device, dtype=torch.float32).contiguous() for s in slopes]

    @classmethod
    def load(cls, source, device="cpu", dtype: torch.dtype = torch.float32, clamp: bool = False) -> "FusedSR":
        """``source``: a deployed file path (repsr_ext or SRVGGNetCompact), a ``PlainSR``, or a
        ``RepSRNet`` (re-parameterized here, once)."""
        if isinstance(source, (str, Path)):
            model = PlainSR.load(source)
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
        """Upscales a PIL image, an HxWxC uint8 numpy array, or an image file path.

        Returns a PIL image for PIL and path input, a uint8 numpy array for numpy input. Rounding and
        clamping to uint8 happen inside the fused op. An alpha channel is upscaled bicubically."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            image = _open_image(Path(image))
        if isinstance(image, Image.Image):
            return self._upscale_pil(image, tile)
        if isinstance(image, np.ndarray):
            return self._upscale_array(image, tile)
        raise TypeError(f"upscale needs a PIL image, a uint8 numpy array or a path, got {type(image).__name__}")

    def _upscale_pil(self, image, tile):
        from PIL import Image

        alpha = None
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            alpha = image.getchannel("A")
        mode = "L" if self.in_channels == 1 else "RGB"
        result = Image.fromarray(self._upscale_array(np.asarray(image.convert(mode)), tile))
        if alpha is not None and mode == "RGB":
            result.putalpha(alpha.resize(result.size, Image.BICUBIC))
        return result

    def _upscale_array(self, array: np.ndarray, tile) -> np.ndarray:
        if array.dtype != np.uint8:
            raise TypeError(f"image array must be uint8, got {array.dtype}")
        squeeze = array.ndim == 2 and self.in_channels == 1
        if squeeze:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] != self.in_channels:
            raise ValueError(
                f"image array must have shape [H, W, {self.in_channels}], got {tuple(array.shape)}"
            )
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
            array = array.copy()
        batch = torch.from_numpy(array).unsqueeze(0).to(self.device)

        def run(crop: torch.Tensor) -> torch.Tensor:
            return torch.ops.repsr_ext.fused_sr_u8(
                crop, self.weights, self.biases, self.neg_slopes, self.scale, self.residual
            )

        out = self._tiled(run, batch, spatial_dims=(1, 2), tile=tile)[0].cpu().numpy()
        return out[:, :, 0] if squeeze else out

    # --- tiling -------------------------------------------------------------------------------------
    def _tiled(self, run: Callable, x: torch.Tensor, spatial_dims: tuple[int, int], tile: int | None):
        if tile is not None and (not isinstance(tile, int) or tile < 1):
            raise ValueError(f"tile must be a positive integer or None, got {tile!r}")
        dy, dx = spatial_dims
        height, width = x.shape[dy], x.shape[dx]
        if tile is None or (height <= tile and width <= tile):
            return run(x)
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
                    out = part.new_empty(shape)
                out.narrow(dy, y0 * s, (y1 - y0) * s).narrow(dx, x0 * s, (x1 - x0) * s).copy_(part)
        return out


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
