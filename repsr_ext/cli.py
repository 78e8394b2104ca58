"""The ``repsr`` command (also ``python -m repsr_ext``):

    repsr train --config repsr_ext/configs/pretrained_x4.yaml --output runs/x4
    repsr export runs/x4/checkpoints/last.pt -o m4c16_x4.safetensors --onnx m4c16_x4.onnx
    repsr upscale photo.png -o photo_x4.png --compare
    repsr eval --model m4c16_x4.safetensors
    repsr bench --preset M4C16 --size 180x320
    repsr info
    repsr experiment run --seeds 3      (then: repsr experiment summarize; see experiments/README.md)

Errors the user can fix (bad arguments, missing or unusable files, a missing extension) are reported
in one line, ``repsr: error: ...``, with exit status 2 for usage errors and 1 for runtime failures;
``--debug`` shows their traceback instead.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
from dataclasses import astuple, dataclass
from glob import glob
from itertools import takewhile
from pathlib import Path

import torch

from . import __version__, experiment, images, ops, train, video
from .data import (
    IMAGE_EXTENSIONS,
    bicubic_upscale,
    embedded_images,
    evaluation_pair,
    large_enough_for_ssim,
    list_images,
    validation_images,
)
from .formats import DeployedFileError, GuessedActivationWarning, export_onnx
from .images import ImageFileError
from .fused import FusedSR
from .metrics import psnr_ssim_y
from .nets import PlainSR, RepSRNet, parse_preset

MODELS_DIR = Path(__file__).resolve().parent / "models"
SHIPPED_SCALES = (2, 4)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ONNX_TOLERANCE = 1e-5


class UsageError(Exception):
    """A bad command line: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits; the CLI reports every error the same way instead.
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- argument types -------------------------------------------------------------------------------


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def image_size(text: str) -> tuple[int, int]:
    """``"180x320"`` -> ``(180, 320)`` (height x width)."""
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 180x320, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"expected a positive HEIGHTxWIDTH, got {text!r}")
    return height, width


def quality(text: str) -> int:
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"expected a quality from 1 to 100, got {text!r}")
    return value


def preset_name(text: str) -> str:
    try:
        parse_preset(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# --- shared helpers -------------------------------------------------------------------------------


def shipped_model(scale: int) -> Path:
    path = MODELS_DIR / f"repsr_m4c16_x{scale}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"the shipped x{scale} model is missing ({path}); pass --model FILE")
    return path


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU and the extension has CUDA kernels, else the CPU. On a
    GPU model the kernels have not been validated on, says so on stderr."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() and ops.has_backend("cuda") else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA GPU")
    device = torch.device(name)
    if device.type == "cuda":
        note = ops.cuda_validation_note(torch.cuda.get_device_name(device))
        if note:
            print(f"repsr: note: {note}", file=sys.stderr)
    return device


def resolve_dtype(args, device: torch.device) -> torch.dtype:
    """``--dtype``, except that ``--device auto`` landing on the CPU runs float32 (with a note): the
    help promises that; an explicit ``--device cpu --dtype float16`` stays an error."""
    dtype = DTYPES[args.dtype]
    if args.device == "auto" and device.type == "cpu" and dtype != torch.float32:
        print(f"repsr: note: --device auto chose the CPU, which runs float32 (--dtype {args.dtype} ignored)",
              file=sys.stderr)
        return torch.float32
    return dtype


def fused_for(args, plain: PlainSR) -> FusedSR:
    """``plain`` on ``--device`` in ``--dtype``."""
    device = resolve_device(args.device)
    return FusedSR(plain, device=device, dtype=resolve_dtype(args, device))


def plain_from_checkpoint(state: dict) -> PlainSR:
    """The deployed network of a training checkpoint, from its EMA weights when it has them."""
    config = train.TrainConfig.from_dict(state["config"], source="checkpoint config")
    net = train.build_network(config)
    net.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
    return net.eval().reparameterize()


def load_model(path, act: str | None = None) -> tuple[PlainSR, str]:
    """A deployed file (repsr_ext or SRVGGNetCompact; ``act`` for SRVGG files without PReLU
    weights) or a training checkpoint as a PlainSR, and where it came from, in words."""
    path = Path(path)
    try:
        return PlainSR.load(path, act=act), "deployed file"
    except DeployedFileError as not_deployed:
        try:
            state = train.load_checkpoint(path)
        except Exception:  # torch.load fails in many ways on other files; the deployed error says more
            raise not_deployed from None
    weights = "EMA weights" if state["ema"] is not None else "weights"
    return plain_from_checkpoint(state), f"training checkpoint, iteration {state['iteration']}, {weights}"


def load_model_for_scale(model: str | None, scale: int | None, act: str | None = None) -> PlainSR:
    """``--model`` if given (its scale must match an explicit ``--scale``), else the shipped model
    for ``--scale`` (default 4)."""
    if model is None:
        return load_model(shipped_model(scale or 4))[0]
    plain = load_model(model, act)[0]
    if scale is not None and plain.scale != scale:
        raise UsageError(f"--scale {scale} but {model} is an x{plain.scale} model")
    return plain


def describe(plain: PlainSR) -> str:
    parameters = sum(p.numel() for p in plain.parameters())
    return (f"x{plain.scale}, {plain.num_layers} conv layers, channels {plain.channels}, "
            f"{plain.act_type}, {parameters:,} parameters")


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return ((output.double() - reference.double()).norm() / reference.double().norm()).item()


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others (numbers) right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def is_same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


# --- export ---------------------------------------------------------------------------------------


def check_onnx(plain: PlainSR, path: Path) -> str:
    """Runs the ONNX file in ONNX Runtime on a random non-square input and compares it to PlainSR."""
    try:
        import onnxruntime
    except ImportError:
        return "not checked (onnxruntime is not installed)"
    x = torch.rand(1, plain.in_channels, 24, 40, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run(None, {"lr": x.numpy()})
    with torch.inference_mode():
        error = relative_error(torch.from_numpy(onnx_output), plain(x))
    if not error <= ONNX_TOLERANCE:
        raise RuntimeError(
            f"{path}: ONNX Runtime differs from PlainSR, relative error {error:.1e} > {ONNX_TOLERANCE:.0e}"
        )
    return f"checked with ONNX Runtime {onnxruntime.__version__}: relative error {error:.1e} vs PlainSR"


def run_export(args) -> int:
    source = Path(args.source)
    outputs = [Path(p) for p in (args.output, args.onnx, args.srvgg) if p]
    if any(is_same_file(out, source) for out in outputs):
        raise UsageError(f"refusing to overwrite the input {source}: choose another output path")
    with warnings.catch_warnings():
        # An SRVGG file without PReLU weights is ReLU or LeakyReLU: a guess must not be baked
        # into the deployed file.
        warnings.simplefilter("error", GuessedActivationWarning)
        try:
            plain, origin = load_model(source, args.act)
        except GuessedActivationWarning as e:
            raise UsageError(f"{e}; export needs to know: pass --act relu or --act lrelu") from None
    print(f"{source}: {origin}; {describe(plain)}")
    plain.save(args.output)
    print(f"wrote {args.output}")
    if args.srvgg:
        plain.export_srvgg(args.srvgg)
        print(f"wrote {args.srvgg} (SRVGGNetCompact state dict)")
    if args.onnx:
        export_onnx(plain, args.onnx)
        print(f"wrote {args.onnx}, {check_onnx(plain, Path(args.onnx))}")
    return 0


# --- upscale --------------------------------------------------------------------------------------


@dataclass
class UpscaleJob:
    source: Path
    target: Path


def is_video_input(path: Path) -> bool:
    """Whether ``path`` goes through the video path (``video.is_video_path``), except that a .gif /
    .webp PIL cannot open is an image: its error is then "cannot read image", not a video's."""
    if path.suffix.lower() in video.ANIMATED_EXTENSIONS and path.is_file():
        from PIL import Image

        try:
            with Image.open(path):
                pass
        except Exception:  # (video.is_video_path says True here)
            return False
    return video.is_video_path(path)


def output_name(source: Path) -> Path:
    """The name of ``source``'s output in an output folder: PNG for images (lossless, 16 bits and
    alpha), the same container for videos and animated GIF / WebP."""
    return Path(source.name) if is_video_input(source) else Path(source.name).with_suffix(".png")


def collect_inputs(patterns: list[str], output: Path | None = None) -> list[tuple[Path, Path]]:
    """``(input path, output path relative to an output folder)`` for each INPUT: a file, a folder
    (searched recursively, subfolders kept: every extension PIL reads, and video containers; hidden
    files left out) or a glob. An ``output`` folder inside a searched folder is left out: it holds
    earlier results, not inputs."""
    jobs = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            skip = _inside_output(path, output)
            videos = {f for f in path.rglob("*") if f.suffix.lower() in video.VIDEO_EXTENSIONS
                      and not f.name.startswith(".") and f.is_file()}
            found = sorted(f for f in set(list_images(path)) | videos if not skip(f))
            jobs += [(f, f.relative_to(path).parent / output_name(f)) for f in found]
        elif path.is_file():
            jobs.append((path, output_name(path)))
        elif any(c in pattern for c in "*?["):
            matches = sorted(Path(p) for p in glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"no files match {pattern!r}")
            root = Path(*takewhile(lambda part: not any(c in part for c in "*?["), path.parts))
            skip = _inside_output(root, output)
            jobs += [(match, output_name(match)) for match in matches if not skip(match)]
        else:
            raise FileNotFoundError(f"input not found: {pattern}")
    if not jobs:
        raise FileNotFoundError(f"no image or video files in {' '.join(patterns)}")
    return jobs


def _inside_output(root: Path, output: Path | None):
    """The test for files a search under ``root`` leaves out: those in the ``output`` folder when
    that lies inside ``root`` (an output folder that is ``root`` itself leaves nothing out)."""
    if output is None:
        return lambda f: False
    out = output.resolve()
    if root.resolve() not in out.parents:
        return lambda f: False
    return lambda f: out in f.resolve().parents


def compare_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_compare.png")


def side_by_side(image, upscaled, scale: int):
    """Bicubic upscaling (PIL) of ``image`` | ``upscaled``, under a strip that labels them. With an
    alpha channel the canvas is RGBA (transparent where the images are), labels on white."""
    from PIL import Image, ImageDraw

    has_alpha = "A" in image.getbands() or "A" in upscaled.getbands()
    mode = "RGBA" if has_alpha else "RGB"
    width, height = upscaled.size
    label_height = 16
    bicubic = image.convert(mode).resize(upscaled.size, Image.BICUBIC)
    canvas = Image.new(mode, (2 * width, height + label_height), (255, 255, 255, 0) if has_alpha else "white")
    canvas.paste(bicubic, (0, label_height))
    canvas.paste(upscaled.convert(mode), (width, label_height))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, 2 * width, label_height - 1), fill="white")
    draw.text((4, 2), f"bicubic x{scale}", fill="black")
    draw.text((width + 4, 2), f"RepSR x{scale}", fill="black")
    return canvas


def run_upscale(args) -> int:
    from tqdm import tqdm

    if not args.inputs:
        plain = load_model_for_scale(args.model, args.scale, args.act)
        demo = plan_demo(args, plain.scale)  # the output is checked before the work
        return upscale_demo(fused_for(args, plain), args, demo) if demo else 0
    # arguments are checked before the model is loaded
    if args.output is None:
        raise UsageError("upscale needs -o OUTPUT (a file for one input image, else a folder)")
    jobs = plan_outputs(args.inputs, args.output, args.compare, args.bit_depth)
    jobs, skipped = existing_outputs(jobs, args)
    fused = fused_for(args, load_model_for_scale(args.model, args.scale, args.act))
    written, failed = 0, []
    progress = tqdm(jobs, unit="image", disable=True if args.no_progress else None)  # no bar unless a terminal
    for job in progress:
        try:
            upscale_one(fused, job, args)
            written += 1
        except (ImageFileError, FileNotFoundError, ValueError, OSError) as e:
            if len(jobs) == 1 and not skipped:
                raise  # one input: its error is the command's error
            failed.append(job.source)
            progress.write(f"repsr: failed: {' '.join(str(e).split())}", file=sys.stderr)
    if len(jobs) + len(skipped) == 1 and written == 1:
        print(f"wrote {jobs[0].target} (x{fused.scale}, {fused.device})")
    else:
        print(f"{written} written, {len(failed)} failed, {len(skipped)} skipped (existing) in {args.output} "
              f"(x{fused.scale}, {fused.device})")
    return 1 if failed else 0


def upscale_one(fused: FusedSR, job: UpscaleJob, args) -> None:
    if is_video_input(job.source):  # makes its folders itself, and removes them if it fails
        return upscale_one_video(fused, job, args)
    job.target.parent.mkdir(parents=True, exist_ok=True)
    source, result, notes = fused.upscale_file_pictures(
        job.source, job.target, tile=args.tile, bit_depth=args.bit_depth, quality=args.quality,
        max_pixels=args.max_pixels,
    )
    for note in notes:
        print(f"repsr: note: {note}", file=sys.stderr)
    if args.compare:  # at 8 bits: PIL's RGB conversion of a 16-bit grey (I;16) image clips it to white
        before, after = source.to_bit_depth(8).to_pil(), result.to_bit_depth(8).to_pil()
        images.write_image_file(compare_path(job.target),
                                images.Picture.from_pil(side_by_side(before, after, fused.scale)))


def upscale_one_video(fused: FusedSR, job: UpscaleJob, args) -> None:
    from PIL import Image

    # An existing target got here only with --overwrite (existing_outputs).
    report = fused.upscale_video(
        job.source, job.target, codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt,
        batch=args.batch,
        tile=args.tile, overwrite=True, progress=False if args.no_progress else None,
        compare_frame=args.compare_frame if args.compare else None)
    for note in report.notes:
        print(f"repsr: note: {note}", file=sys.stderr)
    audio = f", audio {report.audio_copied} copied" + (f", {report.audio_reencoded} re-encoded" if report.audio_reencoded else "")
    print(f"{job.target}: {report.frames} frames {report.size[0]}x{report.size[1]} {report.codec} {report.pix_fmt}"
          f"{audio if report.audio_copied or report.audio_reencoded else ''}, {report.fps:.1f} frames/s", file=sys.stderr)
    if args.compare:
        if report.compare is None:  # a clip that did not declare its length (else refused up front)
            print(f"repsr: warning: {job.source}: --compare-frame {args.compare_frame} is past its "
                  f"{report.frames} frames: the video is written, no compare still", file=sys.stderr)
            return
        before, after = (Image.fromarray(frame) for frame in report.compare)
        images.write_image_file(compare_path(job.target),
                                images.Picture.from_pil(side_by_side(before, after, fused.scale)))


def plan_outputs(inputs: list[str], output: str, compare: bool, bit_depth: int | None = None) -> list[UpscaleJob]:
    """The input images and where each goes: ``output`` itself for one input file (unless it is a
    folder: existing, ending in '/', or without an extension), else a PNG under the folder
    ``output``, which is created."""
    target = Path(output)
    jobs = collect_inputs(inputs, target)
    as_folder = target.is_dir() or output.endswith(("/", os.sep)) or not target.suffix
    if len(inputs) == 1 and Path(inputs[0]).is_file() and not as_folder:
        if is_video_input(jobs[0][0]):
            if target.suffix.lower() not in video.VIDEO_EXTENSIONS + video.ANIMATED_EXTENSIONS:
                raise UsageError(f"output {target}: a video needs a video container "
                                 f"({', '.join(video.VIDEO_EXTENSIONS + video.ANIMATED_EXTENSIONS)})")
        elif target.suffix.lower() in video.VIDEO_EXTENSIONS:
            raise UsageError(f"output {target} is a video container but {jobs[0][0]} is a still image")
        else:
            check_image_target(target, bit_depth)
        planned = [UpscaleJob(jobs[0][0], target)]
    else:
        if target.exists() and not target.is_dir():
            raise UsageError(f"output {target} is a file; several outputs need a folder")
        planned = [UpscaleJob(source, target / relative) for source, relative in jobs]
    check_targets(planned, compare)
    return planned


def check_image_target(target: Path, bit_depth: int | None) -> None:
    """Refuses an image output whose extension no writer takes, or that cannot hold ``--bit-depth``."""
    suffix = target.suffix.lower()
    if suffix not in images.writable_extensions():
        raise UsageError(f"output {target}: {target.suffix} is not an image format this PIL writes; "
                         "use .png, .jpg, .webp, .tif, ... or a folder")
    if bit_depth == 16 and suffix not in images.SIXTEEN_BIT_SUFFIXES:
        raise UsageError(f"output {target}: {suffix} files hold 8 bits per channel; --bit-depth 16 needs "
                         f"{' or '.join(images.SIXTEEN_BIT_SUFFIXES)}")


def check_targets(jobs: list[UpscaleJob], compare: bool) -> None:
    """Refuses outputs that would overwrite an input or each other."""
    written = [j.target for j in jobs] + ([compare_path(j.target) for j in jobs] if compare else [])
    inputs = {job.source.resolve() for job in jobs}
    seen = set()
    for target in written:
        resolved = target.resolve()
        if resolved in inputs:
            raise UsageError(f"refusing to overwrite the input {target}: choose another -o")
        if resolved in seen:
            raise UsageError(f"two inputs would both be written to {target}; upscale them separately")
        seen.add(resolved)


def existing_outputs(jobs: list[UpscaleJob], args) -> tuple[list[UpscaleJob], list[UpscaleJob]]:
    """(jobs to run, jobs skipped): outputs that exist are replaced only with --overwrite, kept with
    --skip-existing, and otherwise stop the command before anything is written."""
    def exists(job):
        return job.target.exists() or (args.compare and compare_path(job.target).exists())

    present = [job for job in jobs if exists(job)]
    if not present or args.overwrite:
        return jobs, []
    if args.skip_existing:
        return [job for job in jobs if not exists(job)], present
    first = present[0].target if present[0].target.exists() else compare_path(present[0].target)
    more = f" and {len(present) - 1} more" if len(present) > 1 else ""
    raise UsageError(f"{first}{more} already exist(s): pass --overwrite to replace, "
                     "or --skip-existing to keep them and do the rest")


@dataclass
class DemoJob:
    target: Path
    name: str  # of the photograph
    photo: object  # H x W x 3 uint8 numpy array


def plan_demo(args, scale: int) -> DemoJob | None:
    """Where the demo (no INPUT) goes, checked as file mode checks its output: ``-o`` (a file, or a
    folder, made if missing, that gets the default name), else ``repsr_demo_x<scale>.png`` here. An
    existing output needs --overwrite; None when --skip-existing keeps it."""
    name, photo = embedded_images("val")[0]  # a held-out photograph that ships with scikit-image
    default = f"repsr_demo_x{scale}.png"
    target = Path(args.output or default)
    if args.output and (target.is_dir() or args.output.endswith(("/", os.sep)) or not target.suffix):
        if target.exists() and not target.is_dir():
            raise UsageError(f"output {target} is a file, not a folder")
        target = target / default
    if target.suffix.lower() in video.VIDEO_EXTENSIONS:
        raise UsageError(f"output {target} is a video container; the demo is a still image")
    check_image_target(target, args.bit_depth)
    try:
        images.check_output(target, (photo.shape[1] * scale, photo.shape[0] * scale))
    except ImageFileError as e:
        raise UsageError(str(e)) from None
    jobs, skipped = existing_outputs([UpscaleJob(Path(default), target)], args)
    if skipped:
        print(f"kept {target}: it exists (--skip-existing)")
        return None
    return DemoJob(target, name, photo)


def upscale_demo(fused: FusedSR, args, demo: DemoJob) -> int:
    """No INPUT: upscale a held-out photograph that ships with scikit-image (never trained on)."""
    from PIL import Image

    result = fused.upscale_picture(images.Picture(demo.photo), tile=args.tile)
    demo.target.parent.mkdir(parents=True, exist_ok=True)
    notes = images.write_image_file(demo.target, result.to_bit_depth(args.bit_depth or 8), quality=args.quality)
    for note in notes:
        print(f"repsr: note: {note}", file=sys.stderr)
    height, width = demo.photo.shape[:2]
    print(f"wrote {demo.target}: the held-out photograph {demo.name!r} "
          f"({width}x{height} -> {result.size[0]}x{result.size[1]})")
    if args.compare:
        compare = side_by_side(Image.fromarray(demo.photo), result.to_pil(), fused.scale)
        images.write_image_file(compare_path(demo.target), images.Picture.from_pil(compare))
        print(f"wrote {compare_path(demo.target)}: bicubic | RepSR")
    return 0


# --- eval -----------------------------------------------------------------------------------------


@dataclass
class Scores:
    bicubic_psnr: float
    bicubic_ssim: float
    psnr: float
    ssim: float


def evaluate(fused: FusedSR, hr_image) -> Scores:
    """PSNR/SSIM (Y, border = scale) of the model and of bicubic upscaling, against ``hr_image``
    (H x W x 3 uint8), from its bicubic LR rounded to 8 bit."""
    scale = fused.scale
    lr, hr = evaluation_pair(hr_image, scale)
    lr_uint8 = lr.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    upscaled = fused.upscale(lr_uint8)
    return Scores(*psnr_ssim_y(bicubic_upscale(lr, scale), hr, crop_border=scale),
                  *psnr_ssim_y(upscaled, hr, crop_border=scale))


def run_eval(args) -> int:
    if args.csv:  # checked (and its folder made) before the work, as upscale does with -o
        table = Path(args.csv)
        if table.is_dir() or args.csv.endswith(("/", os.sep)):
            raise UsageError(f"--csv {args.csv} is a folder; give a file name such as {table / 'scores.csv'}")
        table.parent.mkdir(parents=True, exist_ok=True)
    fused = fused_for(args, load_model_for_scale(args.model, args.scale, args.act))
    scale = fused.scale
    header = ["image", "size", "bicubic PSNR", "bicubic SSIM", "RepSR PSNR", "RepSR SSIM", "gain dB"]
    rows, results = [], []
    for name, image in validation_images(args.hr_folder or "embedded"):
        if not large_enough_for_ssim(image, scale):
            print(f"repsr: leaving out {name}: {image.shape[1]}x{image.shape[0]} is too small", file=sys.stderr)
            continue
        scores = evaluate(fused, image)
        results.append(scores)
        rows.append([name, f"{image.shape[1]}x{image.shape[0]}", *score_cells(scores)])
    if not results:
        raise ValueError("no image large enough to evaluate")
    mean = Scores(*(sum(values) / len(results) for values in zip(*map(astuple, results))))
    rows.append([f"mean ({len(results)})", "", *score_cells(mean)])
    print(f"x{scale}, Y channel, border {scale}; LR = MATLAB bicubic downscaling, rounded to 8 bit")
    print(format_table(header, rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        print(f"wrote {args.csv}")
    return 0


def score_cells(scores: Scores) -> list[str]:
    return [f"{scores.bicubic_psnr:.2f}", f"{scores.bicubic_ssim:.4f}", f"{scores.psnr:.2f}",
            f"{scores.ssim:.4f}", f"{scores.psnr - scores.bicubic_psnr:+.2f}"]


# --- bench ----------------------------------------------------------------------------------------


def median_seconds(fn, repeats: int = 7) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_fused_vs_eager(plain: PlainSR, x: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median seconds of PyTorch eager (channels_last, inference mode) and of the fused engine on
    ``x``, on its device with the threads torch has now, and the fused output's relative error."""
    device = x.device
    fused = FusedSR(plain, device=device)
    eager_model = plain.to(device, memory_format=torch.channels_last)
    x_channels_last = x.contiguous(memory_format=torch.channels_last)

    def eager():
        with torch.inference_mode():
            return eager_model(x_channels_last)

    def synchronized(fn):
        if device.type != "cuda":
            return fn

        def run():  # CUDA runs asynchronously: wait inside the timed region
            fn()
            torch.cuda.synchronize(device)

        return run

    eager_seconds = median_seconds(synchronized(eager), repeats)
    fused_seconds = median_seconds(synchronized(lambda: fused(x)), repeats)
    return eager_seconds, fused_seconds, relative_error(fused(x), eager())


def run_bench(args) -> int:
    if args.model:
        plain = load_model(args.model)[0]
        name = Path(args.model).name
    else:
        plain = RepSRNet.preset(args.preset, args.scale).eval().reparameterize()
        name = f"{args.preset} (untrained)"
    device = resolve_device(args.device)
    height, width = args.size
    x = torch.rand(args.batch, plain.in_channels, height, width, device=device)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count())  # PyTorch at its best: all cores
    try:
        eager_seconds, fused_seconds, error = time_fused_vs_eager(plain, x, args.repeats)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    where = f"{device}" + (f" ({ops.cpu_isa()}, {used_threads} threads)" if device.type == "cpu" else "")
    print(f"{name}, x{plain.scale}, batch {args.batch}, {height}x{width} -> "
          f"{height * plain.scale}x{width * plain.scale}, {where}, median of {args.repeats}")
    print(format_table(
        ["engine", "median ms", "speed-up"],
        [["PyTorch eager (channels_last)", f"{eager_seconds * 1e3:.2f}", "1.00x"],
         ["repsr_ext fused", f"{fused_seconds * 1e3:.2f}", f"{eager_seconds / fused_seconds:.2f}x"]],
    ))
    print(f"fused vs eager relative error {error:.1e}")
    return 0


# --- info -----------------------------------------------------------------------------------------


def run_info(args) -> int:
    info = {"repsr_ext": __version__, "torch": torch.__version__}
    try:
        ops.require_extension()
    except RuntimeError as e:
        info["extension"] = f"not usable: {' '.join(str(e).split())}"
    else:
        build = ops.build_info
        info["built against"] = f"torch {build.TORCH_VERSION}, CUDA {build.CUDA_VERSION or 'none'}"
        info["build decision"] = getattr(build, "BUILD_DECISION", "not recorded (built by an older setup.py)")
        info["backends"] = ", ".join(ops.backends()) + " (kernels registered with the dispatcher)"
        info["CPU ISA"] = ops.cpu_isa()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["CUDA devices"] = "; ".join(f"{i}: {n}" for i, n in enumerate(gpus)) or "none"
    info["CUDA kernels validated on"] = (", ".join(ops.VALIDATED_CUDA_DEVICES)
                                         or "no GPU yet (run in CI on a CPU emulator of CUDA only)")
    for name in gpus:
        note = ops.cuda_validation_note(name)
        if note:
            info[f"note ({name})"] = note
    info["threads"] = f"{torch.get_num_threads()} (of {os.cpu_count()} CPUs)"
    for scale in SHIPPED_SCALES:
        path = MODELS_DIR / f"repsr_m4c16_x{scale}.safetensors"
        info[f"shipped x{scale} model"] = str(path) if path.is_file() else f"missing ({path})"
    width = max(map(len, info)) + 2
    print("\n".join(f"{key:<{width}}{value}" for key, value in info.items()))
    return 0


# --- the parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="repsr", description="RepSR super-resolution: train, export, upscale, evaluate, benchmark.")
    parser.add_argument("--version", action="version", version=f"repsr_ext {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, **kwargs) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=summary, **kwargs)

    # train's own parser, so its --help lists every config key; train.main parses them again.
    command("train", "Train a RepSR network (every TrainConfig key is a flag; --config FILE reads a YAML/TOML).",
            parents=[train.build_parser()], add_help=False)

    p = command("export", "Write the deployed safetensors file of a training checkpoint or a deployed file "
                          "(repsr_ext or SRVGGNetCompact), optionally also as ONNX and SRVGGNetCompact.")
    p.add_argument("source", metavar="CHECKPOINT_OR_MODEL",
                   help="a training checkpoint (<output>/checkpoints/last.pt; its EMA weights when it has them) "
                        "or a deployed file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.safetensors", help="the deployed file to write")
    p.add_argument("--onnx", metavar="OUT.onnx", help="also write ONNX (checked with ONNX Runtime when installed)")
    p.add_argument("--srvgg", metavar="OUT.pth",
                   help="also write a Real-ESRGAN SRVGGNetCompact state dict (.pth or .safetensors)")
    add_act_option(p)
    p.set_defaults(run=run_export)

    p = command("upscale", "Upscale images and videos with the fused engine. Without INPUT, upscales a held-out "
                           "photograph that ships with scikit-image.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image or video file, folder (searched recursively; every format PIL reads, and "
                        "video containers) or glob such as 'photos/*.jpg'")
    p.add_argument("-o", "--output", metavar="OUTPUT",
                   help="output file for one input file (format by extension), else a folder (created; PNG files "
                        "named after the inputs); without INPUT: default repsr_demo_x<scale>.png")
    add_model_options(p)
    p.add_argument("--tile", type=positive_int, metavar="N",
                   help="process N x N input tiles: the same result, with the network's working memory bounded "
                        "by the tile (the whole output is still held); keep N well above the network's depth")
    p.add_argument("--compare", action="store_true",
                   help="also write <name>_compare.png: bicubic | RepSR side by side")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=None,
                   help="bits per channel of the output (default: the input's; 16 needs .png or .tif)")
    p.add_argument("--quality", type=quality, default=None, metavar="Q",
                   help="JPEG / WebP quality 1-100 (default: 95)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    existing.add_argument("--skip-existing", action="store_true",
                          help="keep outputs that already exist and do the rest (resumes a batch)")
    p.add_argument("--max-pixels", type=positive_int, default=images.DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse input images of more than N pixels (default: {images.DEFAULT_MAX_PIXELS:,}, "
                        "PIL's decompression-bomb limit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    v = p.add_argument_group("video (.mp4 .mkv .mov .webm .avi, animated .gif/.webp; needs PyAV: pip install av)")
    v.add_argument("--codec", default=None, metavar="NAME",
                   help=f"video encoder (default: {video.DEFAULT_CODEC}; .webm: libvpx-vp9; also libx265, "
                        "libsvtav1, ffv1 (lossless), ...; h264, hevc, vp9, av1 name those)")
    v.add_argument("--crf", type=int, default=None, metavar="Q",
                   help=f"constant quality, lower is better: x264/x265 0-51, VP9/AV1 0-63 (default: {video.DEFAULT_CRF})")
    v.add_argument("--preset", default=None, metavar="NAME",
                   help="encoder speed preset: x264/x265 ultrafast ... placebo (default: medium), SVT-AV1 -1 to 13")
    v.add_argument("--pix-fmt", default=None, metavar="FMT",
                   help="encoded pixel format (default: yuv420p; yuv444p for odd sizes)")
    v.add_argument("--batch", type=positive_int, default=4, metavar="N", help="frames per call of the net (default: 4)")
    v.add_argument("--compare-frame", type=non_negative_int, default=0, metavar="N",
                   help="with --compare: the frame of the bicubic | RepSR still (default: 0)")
    p.set_defaults(run=run_upscale)

    p = command("eval", "PSNR/SSIM (Y channel, border = scale) of a model against bicubic upscaling, per image "
                        "and mean; LR images are made by MATLAB-bicubic downscaling of the HR images.")
    p.add_argument("hr_folder", nargs="?", metavar="HR_FOLDER",
                   help="folder of HR images (default: the held-out photographs, data.HELDOUT)")
    add_model_options(p)
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.set_defaults(run=run_eval)

    p = command("bench", "Time the fused engine against PyTorch eager (channels_last, inference_mode, all cores).")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", type=preset_name, default="M4C16",
                        help="untrained network M<blocks>C<channels> (default: M4C16)")
    source.add_argument("--model", metavar="FILE", help="a deployed file or training checkpoint instead of a preset")
    p.add_argument("--scale", type=positive_int, default=4, help="scale of the preset (default: 4)")
    p.add_argument("--size", type=image_size, default=(180, 320), metavar="HxW",
                   help="LR input size (default: 180x320)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default: 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--repeats", type=positive_int, default=7,
                   help="timed runs per engine, after one warm-up (default: 7)")
    p.set_defaults(run=run_bench)

    p = command("info", "Versions, build, CPU instruction set, GPUs, threads and shipped models.")
    p.set_defaults(run=run_info)

    # The paper's claims at a small scale; the actions (run, summarize, measure) live in experiment.py.
    p = command("experiment", "Reproduce RepSR's claims at a small scale: a resumable grid of training arms x seeds.")
    experiment.add_arguments(p)
    _accept_debug_after_commands(parser)
    return parser


def _accept_debug_after_commands(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after the command too (``repsr upscale x.png -o y.png --debug``). Not given
    there, it leaves the top level's value (default SUPPRESS: argparse copies only what is set)."""
    seen = set()

    def visit(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if id(sub) not in seen:
                        seen.add(id(sub))
                        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                         help="show tracebacks instead of one-line errors")
                        visit(sub)

    visit(parser)


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="FILE",
                   help="deployed file or training checkpoint (default: the shipped M4C16 model for --scale)")
    p.add_argument("--scale", type=int, choices=SHIPPED_SCALES,
                   help="which shipped model to use (default: 4); with --model it must match the model")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: cuda when a GPU is available and the extension has CUDA kernels (default)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES),
                   help="compute type on CUDA (float16 / bfloat16 run on tensor cores); the CPU runs float32")
    add_act_option(p)


def add_act_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--act", choices=("relu", "lrelu", "prelu"), default=None,
                   help="activation of an SRVGGNetCompact file without PReLU weights, which cannot tell ReLU "
                        "from LeakyReLU(0.1) (default there: lrelu, with a warning)")


# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
_USAGE_ERRORS = (UsageError, FileNotFoundError, IsADirectoryError)
_RUNTIME_ERRORS = (ValueError, TypeError, RuntimeError, OSError)  # DeployedFileError is a ValueError


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"repsr: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"repsr: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = _one_line_warning
            if args.command == "train":
                # Global options are flags, so the first "train" is the command and the rest is train's
                # (but --debug, which is the CLI's).
                rest = [a for a in argv[argv.index("train") + 1:] if a != "--debug"]
                return train.main(rest, prog="repsr train")
            return args.run(args)
    except KeyboardInterrupt:
        print("repsr: interrupted", file=sys.stderr)
        return 130
    except video.VideoInterrupted as e:
        print(f"repsr: {e}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`repsr info | head`): stop quietly, as other tools do; point
        # stdout at /dev/null so that the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except _USAGE_ERRORS + _RUNTIME_ERRORS as e:
        if args.debug:
            raise
        print(f"repsr: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2 if isinstance(e, _USAGE_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
