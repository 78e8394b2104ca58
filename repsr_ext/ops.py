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


# The input dtypes each device's kernels take (ops.cpp, ops_cuda.cpp); "meta" is shape inference
# on meta tensors, which any real device's dtype may reach.
_FLOAT_DTYPES = {
    "cpu": (torch.float32,),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
    "meta": (torch.float32, torch.float16, torch.bfloat16),
}


def _check_net(input, input_name: str, layout: str, weights, biases, neg_slopes, scale, residual) -> int:
    """The argument checks of csrc/binding.h, with its messages, for the fake kernels: shape
    inference (torch.compile, meta tensors) refuses what the real op refuses instead of inventing
    an output. ``input`` is seen as [N, C, H, W]. Returns the output channel count."""
    def fail(message: str):
        raise RuntimeError(f"repsr_ext: {message}")

    if len(weights) < 1:
        fail("`weights` must hold at least one conv layer")
    if len(biases) != len(weights):
        fail(f"`biases` must have one tensor per layer ({len(weights)}), got {len(biases)}")
    if len(neg_slopes) != len(weights) - 1:
        fail(f"`neg_slopes` must have one tensor per activation ({len(weights) - 1} = layers - 1, "
             f"the tail has none), got {len(neg_slopes)}")
    if scale < 1:
        fail(f"`scale` must be >= 1, got {scale}")
    cin = input.shape[1]
    if weights[0].dim() == 4 and weights[0].shape[1] != cin:
        fail(f"`{input_name}` has {cin} channels but weights[0] takes {weights[0].shape[1]}: "
             f"`{input_name}` must be {layout} with C = {weights[0].shape[1]}")
    for i, w in enumerate(weights):
        if w.dim() != 4 or w.shape[1] != cin or tuple(w.shape[2:]) != (3, 3):
            fail(f"weights[{i}] must have shape [Cout, {cin}, 3, 3], got {list(w.shape)}")
        tensors = [("weights", w), ("biases", biases[i])] + ([("neg_slopes", neg_slopes[i])] if i < len(neg_slopes) else [])
        for name, t in tensors:
            if t.device != input.device:
                fail(f"{name}[{i}] is on {t.device} but the {input_name} is on {input.device}")
        cout = w.shape[0]
        for name, t in tensors[1:]:
            if t.dim() != 1 or t.shape[0] != cout:
                fail(f"{name}[{i}] must have shape [{cout}], got {list(t.shape)}")
        cin = cout
    if cin % (scale * scale):
        fail(f"the tail conv has {cin} channels, not a multiple of scale^2 = {scale * scale}")
    if residual and cin // (scale * scale) != input.shape[1]:
        fail(f"residual=True needs {input.shape[1]} output channels (as many as the input has), "
             f"the tail gives {cin // (scale * scale)}")
    return cin // (scale * scale)


def _refuse_backward(ctx, grad):
    raise RuntimeError(
        "repsr_ext's fused ops have no backward: they run deployed networks for inference. Train "
        "the RepSRNet (or PlainSR), which are ordinary torch modules, and call the fused op under "
        "torch.no_grad() or on tensors that do not require grad")


if _load_error is None:

    @torch.library.register_fake("repsr_ext::fused_sr")
    def _fused_sr_fake(input, weights, biases, neg_slopes, scale, residual, clamp):
        if input.dim() != 4:
            raise RuntimeError(f"repsr_ext: `input` must be 4-D [N, C, H, W], got {input.dim()}-D "
                               f"with shape {list(input.shape)}")
        allowed = _FLOAT_DTYPES.get(input.device.type, ())
        if input.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed) or "none"
            raise RuntimeError(f"repsr_ext: on {input.device.type} `input` must be one of ({names}), got {input.dtype}")
        out_c = _check_net(input, "input", "[N, C, H, W]", weights, biases, neg_slopes, scale, residual)
        n, _, h, w = input.shape
        return input.new_empty((n, out_c, h * scale, w * scale))

    @torch.library.register_fake("repsr_ext::fused_sr_u8")
    def _fused_sr_u8_fake(image, weights, biases, neg_slopes, scale, residual):
        if image.dim() != 4:
            raise RuntimeError(f"repsr_ext: `image` must be 4-D uint8 [N, H, W, C], got {image.dim()}-D "
                               f"with shape {list(image.shape)}")
        if image.dtype != torch.uint8:
            raise RuntimeError(f"repsr_ext: `image` must be uint8, got {image.dtype}")
        out_c = _check_net(image.permute(0, 3, 1, 2), "image", "[N, H, W, C]", weights, biases, neg_slopes,
                           scale, residual)
        n, h, w, _ = image.shape
        return image.new_empty((n, h * scale, w * scale, out_c))

    # No silent wrong gradients: without an autograd formula PyTorch would pass requires_grad on
    # and leave the op's part out of every gradient. The error comes at backward time, so a
    # forward call on tensors that happen to require grad still works.
    torch.library.register_autograd("repsr_ext::fused_sr", _refuse_backward)
    torch.library.register_autograd("repsr_ext::fused_sr_u8", _refuse_backward)
