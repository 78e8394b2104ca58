"""Deployed files: the repsr_ext safetensors format, and Real-ESRGAN SRVGGNetCompact state dicts.

The deployed file is a safetensors file (never pickle) with the PlainSR state dict
(``convs.{i}.weight`` [Cout, Cin, 3, 3], ``convs.{i}.bias`` [Cout], ``acts.{i}.weight`` [Cout] for
PReLU) and string metadata: format, format_version, scale, channels (JSON list of every layer
boundary), activation, lrelu_slope, residual, block, package_version. ``load_plain`` validates all of
it and raises ``DeployedFileError`` (a ValueError) naming the file and the problem.

SRVGGNetCompact is the same deployed network: ``body.{2k}`` are the convs, ``body.{2k+1}.weight``
the PReLU slopes (absent for ReLU/LeakyReLU), and the residual is the nearest-upsampled input.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path

import torch

from .nets import ACTIVATIONS, DEFAULT_LRELU_SLOPE, RESIDUAL_MODES, PlainSR

FORMAT_NAME = "repsr_ext.plain_sr"
FORMAT_VERSION = 1
# Weights beyond this magnitude come from no trained SR network: a damaged or foreign file.
MAX_PLAUSIBLE_WEIGHT = 1e4


class DeployedFileError(ValueError):
    """A deployed or SRVGG file that cannot be used; the message names the file and the problem."""


class GuessedActivationWarning(UserWarning):
    """An SRVGGNetCompact file without PReLU weights was read as LeakyReLU(0.1): the state dict
    cannot tell ReLU from LeakyReLU; ``act=`` / ``--act`` says which."""


def _package_version() -> str:
    from . import __version__

    return __version__


# --- writing ---------------------------------------------------------------------------------------
def save_plain(model: PlainSR, path) -> None:
    """Writes ``model`` as a deployed safetensors file, atomically (a crash never leaves half a file
    in place of an existing one)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "scale": str(model.scale),
        "channels": json.dumps(model.channels),
        "activation": model.act_type,
        "lrelu_slope": repr(model.lrelu_slope),
        "residual": model.residual,
        "block": model.block_type,
        "package_version": _package_version(),
        "tensors_sha256": tensors_sha256(tensors),
    }
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order: recorded in the
    deployed file so that damage inside the tensor data (which safetensors does not detect) is."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_srvgg(model: PlainSR, path) -> None:
    """Writes ``model`` as an SRVGGNetCompact state dict: ``.safetensors`` by that extension,
    otherwise a ``.pth`` holding ``{"params": state_dict}`` as Real-ESRGAN does (tensors only, so it
    loads with ``torch.load(weights_only=True)``).

    Every activation is written as PReLU weights (``body.{2k+1}.weight``): ReLU as slope 0,
    LeakyReLU as its slope, identity as slope 1 -- the same function exactly. A state dict without
    them is what Real-ESRGAN writes for ReLU / LeakyReLU nets, but it cannot say which, and spandrel
    only recognises SRVGGNetCompact files that have them."""
    widths = model.channels
    problems = []
    if len(set(widths[1:-1])) > 1:
        problems.append(f"hidden layers must all have the same width, got {widths[1:-1]}")
    if model.residual != "nearest":
        problems.append("SRVGGNetCompact always adds the nearest-upsampled input (residual='nearest')")
    if model.num_layers < 2:
        problems.append("SRVGGNetCompact has at least two convs (head and tail)")
    if problems:
        raise ValueError("cannot export as SRVGGNetCompact: " + "; ".join(problems))
    state = {}
    slopes = model.negative_slopes()
    for k, conv in enumerate(model.convs):
        state[f"body.{2 * k}.weight"] = conv.weight.detach().cpu().contiguous()
        state[f"body.{2 * k}.bias"] = conv.bias.detach().cpu().contiguous()
        if k < model.num_layers - 1:
            state[f"body.{2 * k + 1}.weight"] = slopes[k].detach().to(conv.weight.dtype).cpu().contiguous()
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        _atomic_write(path, lambda tmp: save_file(state, tmp))
    else:
        _atomic_write(path, lambda tmp: torch.save({"params": state}, tmp))


def _atomic_write(path, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        # Some writers create files 0600; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --- reading ---------------------------------------------------------------------------------------
def load_plain(path, act: str | None = None) -> PlainSR:
    """Reads a deployed repsr_ext file or an SRVGGNetCompact state dict (.pth or .safetensors)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"model path is a directory, not a file: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    tensors, metadata = _read_tensors(path)
    if metadata.get("format") == FORMAT_NAME:
        plain = _plain_from_deployed(path, tensors, metadata)
        if act is not None and act != plain.act_type:
            raise DeployedFileError(f"{path}: the file records activation {plain.act_type!r}, not {act!r} "
                                    "(act= / --act is for SRVGGNetCompact files without PReLU weights)")
        return plain
    if any(k.startswith("body.") for k in tensors):
        return _plain_from_srvgg(path, tensors, act)
    shown = ", ".join(sorted(tensors)[:6]) or "no tensors"
    raise DeployedFileError(
        f"{path}: neither a repsr_ext deployed file (no '{FORMAT_NAME}' metadata) nor an "
        f"SRVGGNetCompact state dict (no 'body.N.weight' keys); found {shown}"
    )


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if _looks_like_safetensors(path):
        return _read_safetensors(path)
    if path.suffix == ".safetensors":
        raise DeployedFileError(f"{path}: not a safetensors file (no safetensors header)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors: all mean "unusable file"
        raise DeployedFileError(
            f"{path}: not a safetensors file and not a torch state dict of tensors ({torch_load_failure(e)})"
        ) from None
    if isinstance(obj, dict):
        # Real-ESRGAN / BasicSR wrap the state dict; prefer the EMA weights as they do.
        for wrapper in ("params_ema", "params", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DeployedFileError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj), {}


def torch_load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words. Not torch's own
    message: that advises ``weights_only=False``, i.e. unpickling a file nobody has vetted, which
    repsr_ext never does."""
    text = str(error)
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds Python objects besides tensors, and repsr_ext does not unpickle files"
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:160]}" if first else type(error).__name__


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # safetensors reports a corrupt file as a Rust panic (BaseException)
        raise DeployedFileError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    return tensors, metadata


def _plain_from_deployed(path: Path, tensors: dict, meta: dict) -> PlainSR:
    def fail(msg: str):
        raise DeployedFileError(f"{path}: {msg}")

    for key in ("format_version", "scale", "channels", "activation", "residual"):
        if key not in meta:
            fail(f"metadata lacks '{key}'")
    try:
        version = int(meta["format_version"])
    except ValueError:
        fail(f"format_version {meta['format_version']!r} is not an integer")
    if version != FORMAT_VERSION:
        fail(
            f"unsupported format_version {version}: this repsr_ext ({_package_version()}) reads "
            f"version {FORMAT_VERSION}; upgrade repsr_ext to read newer files"
        )
    try:
        scale = int(meta["scale"])
        channels = json.loads(meta["channels"])
    except (ValueError, TypeError):
        fail(f"malformed metadata: scale={meta['scale']!r}, channels={meta['channels']!r}")
    try:
        lrelu_slope = float(meta.get("lrelu_slope", DEFAULT_LRELU_SLOPE))
    except (ValueError, TypeError):
        fail(f"malformed metadata: lrelu_slope={meta['lrelu_slope']!r} is not a number")
    # The slope is a weight of the network (the checksum covers only the tensors): held to the
    # same plausibility bound.
    if not math.isfinite(lrelu_slope) or abs(lrelu_slope) > MAX_PLAUSIBLE_WEIGHT:
        fail(f"lrelu_slope {meta['lrelu_slope']!r} is not a finite number of magnitude <= {MAX_PLAUSIBLE_WEIGHT:g}")
    if scale < 1:
        fail(f"scale must be >= 1, got {scale}")
    if (
        not isinstance(channels, list)
        or len(channels) < 2
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
    ):
        fail(f"channels must be a list of at least 2 positive integers, got {meta['channels']!r}")
    act, residual = meta["activation"], meta["residual"]
    if act not in ACTIVATIONS:
        fail(f"unknown activation {act!r}, expected one of {ACTIVATIONS}")
    if residual not in RESIDUAL_MODES:
        fail(f"unknown residual mode {residual!r}, expected one of {RESIDUAL_MODES}")

    num_layers = len(channels) - 1
    expected = {}
    for i in range(num_layers):
        expected[f"convs.{i}.weight"] = (channels[i + 1], channels[i], 3, 3)
        expected[f"convs.{i}.bias"] = (channels[i + 1],)
        if act == "prelu" and i < num_layers - 1:
            expected[f"acts.{i}.weight"] = (channels[i + 1],)
    _check_tensors(path, tensors, expected)
    recorded = meta.get("tensors_sha256")
    if recorded is None:
        warnings.warn(f"{path}: written without a checksum (before repsr_ext recorded one), so damage "
                      "to its weights cannot be detected; re-save it (repsr export) to add one", stacklevel=4)
    elif tensors_sha256(tensors) != recorded:
        fail("corrupt: its tensor data does not match the SHA-256 recorded when it was written")
    weights = [tensors[f"convs.{i}.weight"] for i in range(num_layers)]
    biases = [tensors[f"convs.{i}.bias"] for i in range(num_layers)]
    slopes = [tensors[f"acts.{i}.weight"] for i in range(num_layers - 1)] if act == "prelu" else None
    try:
        return PlainSR(
            weights, biases, act=act, slopes=slopes, scale=scale, residual=residual,
            lrelu_slope=lrelu_slope, block_type=meta.get("block", "unknown"),
        )
    except ValueError as e:
        fail(str(e))


def _check_tensors(path: Path, tensors: dict, expected: dict) -> None:
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise DeployedFileError(f"{path}: missing tensor(s) {', '.join(missing)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise DeployedFileError(f"{path}: unexpected tensor(s) {', '.join(unexpected)}")
    for key, shape in expected.items():
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise DeployedFileError(f"{path}: tensor '{key}' has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point():
            raise DeployedFileError(f"{path}: tensor '{key}' has dtype {t.dtype}, expected a float dtype")
        if not torch.isfinite(t).all():
            raise DeployedFileError(f"{path}: tensor '{key}' contains NaN or infinity")
        largest = t.abs().max().item() if t.numel() else 0.0
        if largest > MAX_PLAUSIBLE_WEIGHT:
            raise DeployedFileError(f"{path}: tensor '{key}' has a value of magnitude {largest:.3g}, "
                                    f"beyond any trained network's (> {MAX_PLAUSIBLE_WEIGHT:g}): the file is damaged")


_BODY_KEY = re.compile(r"^body\.(\d+)\.(weight|bias)$")


def _plain_from_srvgg(path: Path, tensors: dict, act: str | None) -> PlainSR:
    def fail(msg: str):
        raise DeployedFileError(f"{path}: SRVGGNetCompact state dict: {msg}")

    bad = [k for k in tensors if not _BODY_KEY.match(k)]
    if bad:
        fail(f"unexpected key(s) {', '.join(sorted(bad)[:5])}")
    conv_ids = sorted({int(_BODY_KEY.match(k).group(1)) for k in tensors if tensors[k].dim() == 4})
    if not conv_ids or conv_ids != list(range(0, 2 * len(conv_ids), 2)):
        fail(f"conv layers must be body.0, body.2, body.4, ...; found {conv_ids}")
    num_layers = len(conv_ids)
    hidden, in_ch = tensors["body.0.weight"].shape[:2]
    has_prelu = "body.1.weight" in tensors
    if act is None:
        act = "prelu" if has_prelu else "lrelu"
        if not has_prelu:
            warnings.warn(
                f"{path}: no PReLU weights, so the activation is ReLU or LeakyReLU(0.1) and the "
                "state dict cannot tell which; assuming 'lrelu' (act='relu' / --act relu to override)",
                GuessedActivationWarning,
                stacklevel=3,
            )
    if act == "prelu" and not has_prelu:
        fail("act='prelu' but the state dict has no PReLU weights (body.1.weight)")
    if act in ("relu", "lrelu") and has_prelu:
        fail(f"act={act!r} but the state dict has PReLU weights (body.1.weight): leave act out")
    if act not in ("prelu", "relu", "lrelu"):
        fail(f"activation must be prelu, relu or lrelu, got {act!r}")

    tail_out = tensors[f"body.{2 * (num_layers - 1)}.weight"].shape[0]
    scale = math.isqrt(tail_out // in_ch) if tail_out % in_ch == 0 else 0
    if scale < 1 or scale * scale * in_ch != tail_out:
        fail(f"tail conv has {tail_out} channels, not {in_ch} x scale^2 for an integer scale")
    channels = [in_ch] + [hidden] * (num_layers - 1) + [tail_out]
    expected = {}
    for k in range(num_layers):
        expected[f"body.{2 * k}.weight"] = (channels[k + 1], channels[k], 3, 3)
        expected[f"body.{2 * k}.bias"] = (channels[k + 1],)
        if act == "prelu" and k < num_layers - 1:
            expected[f"body.{2 * k + 1}.weight"] = (channels[k + 1],)
    _check_tensors(path, tensors, expected)
    weights = [tensors[f"body.{2 * k}.weight"] for k in range(num_layers)]
    biases = [tensors[f"body.{2 * k}.bias"] for k in range(num_layers)]
    slopes = [tensors[f"body.{2 * k + 1}.weight"] for k in range(num_layers - 1)] if act == "prelu" else None
    return PlainSR(weights, biases, act=act, slopes=slopes, scale=scale, residual="nearest", block_type="srvgg")


# --- ONNX ------------------------------------------------------------------------------------------
def export_onnx(model: PlainSR, path, opset: int = 17) -> None:
    """Writes ``model`` as ONNX with dynamic batch, height and width (input "lr", output "sr")."""
    model = model.eval()
    example = torch.rand(1, model.in_channels, 16, 16, dtype=next(model.parameters()).dtype)
    dynamic = {"lr": {0: "batch", 2: "height", 3: "width"}, "sr": {0: "batch", 2: "out_height", 3: "out_width"}}

    def write(tmp: str) -> None:
        # The TorchScript exporter needs no extra package (the dynamo one needs onnxscript).
        torch.onnx.export(
            model, (example,), tmp, input_names=["lr"], output_names=["sr"],
            dynamic_axes=dynamic, opset_version=opset, dynamo=False,
        )

    _atomic_write(path, write)
