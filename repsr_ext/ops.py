"""The compiled ops: loads repsr_ext._C once, checks it was built for this torch, and registers the
fake (meta) kernels so the ops work under torch.compile and pass torch.library.opcheck.

    torch.ops.repsr_ext.fused_sr(input, weights, biases, neg_slopes, scale, residual, clamp)
        float [N, C, H, W] -> [N, C_out, H*scale, W*scale]
    torch.ops.repsr_ext.fused_sr_u8(image, weights, biases, neg_slopes, scale, residual)
        uint8 [N, H, W, C] -> uint8 [N, H*scale, W*scale, C_out] (rounded, clamped)
"""
from __future__ import annotations

import warnings

import torch

_FIX = (
    "Rebuild it against the torch you run, from the repository root:\n"
    "    pip install --no-build-isolation .\n"
    "(add -e for an editable install)."
)



def version_mismatch(built_for: str, running: str) -> str | None:
    """The error for an extension built against another torch (C++ ABI differs between
    releases, and a CPU build lacks CUDA kernels), or None when they match."""
    if built_for == running:
        return None
    return f"the repsr_ext C++ extension was built for torch {built_for} but torch {running} is running. {_FIX}"


_load_error: str | None = None
build_info = None

try:
    from . import _build_info as build_info  # written by setup.py
except ImportError:
    _load_error = f"the repsr_ext C++ extension was never built (no repsr_ext/_build_info.py). {_FIX}"
else:
    # Checked before importing _C: loading a library built for another torch may fail on missing
    # symbols with a less helpful message, or worse, load and misbehave.
    _load_error = version_mismatch(build_info.TORCH_VERSION, torch.__version__)
    if _load_error is None:
        try:
            from . import _C  # noqa: F401  (importing registers the ops)
        except ImportError as e:
            _load_error = f"the repsr_ext C++ extension could not be loaded ({e}). {_FIX}"

if _load_error:
    warnings.warn(_load_error, RuntimeWarning, stacklevel=2)


def require_extension() -> None:
    """Raises with the fix when the extension is missing or built for another torch: the fused
    engine never falls back silently to something slower."""
    if _load_error:
        raise RuntimeError(_load_error)


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def has_backend(device_type: str) -> bool:
    """Whether the loaded extension has kernels for ``device_type``, as the dispatcher says (not
    only as the build record says: that could describe another build)."""
    key = _DISPATCH_KEYS.get(device_type)
    return (_load_error is None and key is not None
            and torch._C._dispatch_has_kernel_for_dispatch_key("repsr_ext::fused_sr", key))


def backends() -> tuple[str, ...]:
    return tuple(d for d in _DISPATCH_KEYS if has_backend(d))


# GPU models on which python_tests/test_cuda.py has passed against the float64 reference (a
# device run records them; benchmarks/RESULTS.md). Until then the CUDA kernels have run only on
# the CPU emulator (csrc/cuda/README.md, "Emulation").
VALIDATED_CUDA_DEVICES: tuple[str, ...] = ()


def cuda_validation_note(device_name: str) -> str | None:
    """A warning for a GPU model the CUDA kernels have not been validated on, or None."""
    if any(model in device_name for model in VALIDATED_CUDA_DEVICES):
        return None
    where = ", ".join(VALIDATED_CUDA_DEVICES) or "no GPU yet (only on a CPU emulator of CUDA)"
    return (f"the CUDA kernels have not been validated on {device_name}: they have run on {where}; "
            "compare with --device cpu if in doubt")


def cpu_isa() -> str:
    require_extension()
    return torch.ops.repsr_ext.cpu_isa()


def _out_channels(biases, scale: int) -> int:
    return biases[-1].shape[0] // (scale * scale)


if _load_error is None:

    @torch.library.register_fake("repsr_ext::fused_sr")
    def _fused_sr_fake(input, weights, biases, neg_slopes, scale, residual, clamp):
        n, _, h, w = input.shape
        return input.new_empty((n, _out_channels(biases, scale), h * scale, w * scale))

    @torch.library.register_fake("repsr_ext::fused_sr_u8")
    def _fused_sr_u8_fake(image, weights, biases, neg_slopes, scale, residual):
        n, h, w, _ = image.shape
        return image.new_empty((n, h * scale, w * scale, _out_channels(biases, scale)))
