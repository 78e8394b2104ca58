"""Video upscaling: decode, upscale in small batches, encode, with the audio copied.

    from repsr_ext import FusedSR, video
    fused = FusedSR.load("model.safetensors")
    report = video.upscale_video(fused, "clip.mp4", "clip_x4.mp4")   # or fused.upscale_video(...)
    print(report.frames, report.fps)

Three stages run at once, joined by bounded queues: a reader thread demuxes the input, decodes
video frames to RGB and passes the other streams' packets along; the calling thread runs the net
on batches of frames; a writer thread converts, encodes and muxes (FFmpeg, through PyAV, releases
the GIL while it decodes and encodes, and so does the fused op). Memory is bounded whatever the
clip's length: at most ``queue`` decoded frames wait for the net, two batches are in it (one in
flight while the next is started, so that on a CUDA device the transfers overlap the net), and at
most ``queue`` upscaled batches wait for the encoder, plus the encoder's own look-ahead (libx264: about
40 frames at its default settings).

Kept from the input: every frame's timestamp (so the frame rate, the time base and a variable frame
rate), the frame count, the sample (hence display) aspect ratio, the rotation, the colour range,
matrix, primaries and transfer where the decoder reports them, and every audio stream, copied
packet for packet (re-encoded with the output container's default audio codec only when the
container cannot hold the codec, with a note). Subtitle and data streams are dropped, with a note.

The output is written to a temporary file beside the target and renamed at the end: an error or an
interrupt leaves nothing under the target's name (and says how many frames were done); the input is
never overwritten; an existing target needs ``overwrite=True``.
"""
from __future__ import annotations

import collections
import contextlib
import heapq
import numbers
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

# Containers the video path reads and writes (by extension), and animated image formats it reads
# and writes when the file holds more than one frame.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi")
ANIMATED_EXTENSIONS = (".gif", ".webp")

DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 18  # x264/x265: visually near-lossless; VP9/AV1 get their own scale below

# Encoder option that sets constant quality, per codec; None: the codec has no such knob here.
_CRF_OPTIONS = {
    "libx264": lambda q: {"crf": str(q)},
    "libx265": lambda q: {"crf": str(q), "x265-params": "log-level=error"},
    "libvpx-vp9": lambda q: {"crf": str(q), "b": "0"},
    "libsvtav1": lambda q: {"crf": str(q)},
}
# Its constant-quality range (the encoder's own limits, checked before any work).
_CRF_RANGES = {"libx264": (0, 51), "libx265": (0, 51), "libvpx-vp9": (0, 63), "libsvtav1": (0, 63)}
# Speed presets: x264/x265 by name, SVT-AV1 by number (the range its FFmpeg wrapper takes).
_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                 "placebo")
_SVTAV1_PRESETS = range(-1, 14)
# The names FFmpeg users know, for the encoders tuned above (so that the default CRF applies to them).
_CODEC_ALIASES = {"h264": "libx264", "hevc": "libx265", "h265": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
# Codecs a container extension implies when the user names none.
_DEFAULT_CODECS = {".webm": "libvpx-vp9"}
# Encoders that take only full-range YUV (JPEG's): "Non full-range YUV is non-standard" otherwise.
_FULL_RANGE_CODECS = {"mjpeg"}
# Audio codecs a container lists in ``supported_codecs`` but refuses when the header is written:
# FFmpeg's MOV muxer takes Opus and FLAC only in MP4 mode ("opus only supported in MP4"). Re-encoded.
_REFUSED_AUDIO = {".mov": {"opus", "flac"}}

_STOP = object()  # end of a queue


class VideoError(ValueError):
    """A video that cannot be read or written (one line, names the file)."""


class VideoInterrupted(RuntimeError):
    """The run was interrupted (Ctrl-C); nothing was written under the target's name."""


def require_av():
    """The PyAV module, or an error saying how to install it."""
    try:
        import av
    except ImportError as e:
        raise RuntimeError("video needs PyAV: pip install 'repsr_ext[video]' (or: pip install av)") from e
    return av


def is_video_path(path) -> bool:
    """Whether ``path`` goes through the video path: a video container by its extension, or an
    animated GIF / WebP (more than one frame, as PIL reads it)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix in ANIMATED_EXTENSIONS and path.is_file():
        from PIL import Image

        try:
            with Image.open(path) as im:
                return getattr(im, "n_frames", 1) > 1
        except Exception:  # not an image PIL reads: let the video decoder say what it is
            return True
    return False


@dataclass
class VideoReport:
    """What ``upscale_video`` did."""

    target: Path
    frames: int
    seconds: float
    size: tuple[int, int]  # output width, height
    codec: str
    pix_fmt: str
    audio_copied: int = 0
    audio_reencoded: int = 0
    notes: list[str] = field(default_factory=list)
    compare: tuple[np.ndarray, np.ndarray] | None = None  # (input frame, output frame) RGB

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Probe:
    width: int
    height: int
    frames: int  # 0 when the container does not say
    rate: Fraction | None
    slot_rate: Fraction | None  # the rate at which every frame time falls on a slot (FFmpeg's guess)
    time_base: Fraction
    sample_aspect_ratio: Fraction | None
    rotation: int
    colour: dict
    rgb: bool  # the decoded frames are RGB (their matrix tag, if any, is RGB's)
    duration: float | None  # seconds: the video stream's own, where the file declares it
    audio: list  # input audio stream indices
    dropped: list[str]
    dts_timing: bool  # AVI: the file holds decode times only, one per frame slot


def _open_input(av, source: Path):
    try:
        with _ffmpeg_reasons(av):  # opening probes with one thread: safe to keep the reason
            container = av.open(str(source), "r")
    except av.FFmpegError as e:
        raise VideoError(f"{source}: cannot open as video: {_ffmpeg_message(e)}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{source}: no video stream")
    return container


def _ffmpeg_message(e) -> str:
    """FFmpeg's error on one line: its code's text, and the message FFmpeg logged with it where PyAV
    kept one (``e.log``: level, component, message), which says why ("opus only supported in MP4")."""
    text = " ".join(str(getattr(e, "strerror", None) or e).split())
    log = getattr(e, "log", None)
    if log and len(log) >= 3 and str(log[2]).strip():
        reason = " ".join(str(log[2]).split()).rstrip(".")
        where = f"{log[1]}: " if log[1] else ""
        text = f"{text} ({where}{reason})"
    return text


_reasons_lock = threading.Lock()
_reasons_users = 0


@contextlib.contextmanager
def _ffmpeg_reasons(av):
    """PyAV keeps FFmpeg's error message on its exceptions only while its logging is on, and it is off
    by default. Around a call that runs in one thread (an open, the header write), this turns on
    the lowest level: FFmpeg's errors are recorded for the exceptions, nothing is printed. Not
    around decoding and encoding: with logging on, FFmpeg's worker threads need the GIL to log,
    which can deadlock a close. A level the caller set is left alone."""
    global _reasons_users
    with _reasons_lock:
        if _reasons_users == 0 and av.logging.get_level() is not None:
            owned = False
        else:
            owned = True
            _reasons_users += 1
            if _reasons_users == 1:
                av.logging.set_level(av.logging.PANIC)
    try:
        yield
    finally:
        if owned:
            with _reasons_lock:
                _reasons_users -= 1
                if _reasons_users == 0:
                    av.logging.set_level(None)


def _probe(av, source: Path) -> _Probe:
    """Stream facts, and the first frame's rotation and colour description (the decoder reports
    them per frame), from a first short pass over the input."""
    with _open_input(av, source) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rotation, colour, rgb = 0, {}, False
        try:
            for frame in container.decode(stream):
                rotation = int(frame.rotation or 0)
                colour = {name: getattr(frame, name) for name in ("color_range", "colorspace", "color_primaries", "color_trc")}
                rgb = bool(frame.format.is_rgb) or colour.get("colorspace") == _RGB_MATRIX
                break
            else:
                raise VideoError(f"{source}: the video stream has no frames")
        except av.FFmpegError as e:
            raise VideoError(f"{source}: cannot decode: {_ffmpeg_message(e)}") from None
        # The video's own duration, for the truncation check: the container's is the longest
        # stream's (audio or subtitles may run past the video), so only when the video is alone.
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = _tagged_duration(stream.metadata)
            if duration is None and container.duration is not None and len(container.streams) == 1:
                duration = container.duration / 1e6
        dropped = [f"{s.type} stream {s.index} ({s.codec_context.name if s.codec_context else '?'})"
                   for s in container.streams if s.type not in ("video", "audio")]
        dropped += [f"video stream {s.index}" for s in container.streams.video[1:]]
        sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
        return _Probe(
            width=ctx.width, height=ctx.height, frames=int(stream.frames or 0),
            rate=stream.average_rate or stream.guessed_rate, slot_rate=stream.guessed_rate,
            time_base=stream.time_base or Fraction(1, 90000),
            sample_aspect_ratio=Fraction(sar) if sar else None, rotation=rotation, colour=colour, rgb=rgb,
            duration=duration, audio=[s.index for s in container.streams.audio], dropped=dropped,
            dts_timing=container.format.name == "avi")


_RGB_MATRIX = 0  # AVCOL_SPC_RGB: the "matrix" tag of RGB (GBR) data


def _tagged_duration(metadata) -> float | None:
    """A Matroska track's own duration: its writers (FFmpeg, mkvmerge) tag each track with it, as
    DURATION (or DURATION-<language>) = HH:MM:SS.nnnnnnnnn, since Matroska has no per-track field."""
    for key, value in (metadata or {}).items():
        if key.upper() == "DURATION" or key.upper().startswith("DURATION-"):
            try:
                hours, minutes, seconds = str(value).strip().split(":")
                return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            except ValueError:
                return None
    return None


def _pick_pix_fmt(av, codec: str, pix_fmt: str | None, width: int, height: int, notes: list[str]) -> str:
    formats = [f.name for f in (av.codec.Codec(codec, "w").video_formats or [])]
    if pix_fmt is not None:
        if formats and pix_fmt not in formats:
            raise VideoError(f"encoder {codec} does not take pixel format {pix_fmt}; it takes {', '.join(formats)}")
        return pix_fmt
    preferred = "yuv420p" if "yuv420p" in formats or not formats else formats[0]
    if preferred == "yuv420p" and (width % 2 or height % 2):
        # 4:2:0 needs even sizes; an odd output (x3 of an odd frame) keeps full chroma instead.
        if "yuv444p" in formats:
            notes.append(f"output {width}x{height} is odd-sized: encoded as yuv444p (yuv420p needs even sizes)")
            return "yuv444p"
        raise VideoError(f"output {width}x{height} is odd-sized and {codec} has no 4:4:4 format: use another codec")
    return preferred


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Blocking put that gives up when the run is stopping."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _STOP


def upscale_video(fused, source, target, *, codec: str | None = None, crf: int | None = None,
                  pix_fmt: str | None = None, batch: int = 4, tile: int | None = None,
                  overwrite: bool = False, progress: bool | None = None, queue_size: int = 8,
                  compare_frame: int | None = None, preset: str | None = None) -> VideoReport:
    """Upscales the video file ``source`` into ``target`` (container by its extension) with the
    deployed network ``fused`` (a ``FusedSR``); see the module docstring for what is kept.

    ``codec``: the video encoder (default libx264; .webm: libvpx-vp9; .gif: gif; .webp:
    libwebp_anim; h264, hevc/h265, vp9, av1 name libx264, libx265, libvpx-vp9, libsvtav1); ``crf``:
    its constant-quality setting where it has one (default 18; lower is better; x264/x265 0-51,
    VP9/AV1 0-63); ``pix_fmt``: the encoded pixel format (default yuv420p, yuv444p for odd sizes;
    mjpeg: full range); ``batch``: frames per call of the net; ``tile``: as for images;
    ``progress``: a tqdm bar (None: only on a terminal); ``compare_frame``: also return that frame
    before and after (refused up front where the file declares fewer frames; otherwise a note and no
    compare); ``preset``: the encoder's speed preset (x264/x265: ultrafast ... placebo, default
    medium; SVT-AV1: -1 to 13). Arguments are checked before any work (ValueError). AVI output:
    no B-frames and a time base of one frame slot (AVI stores decode times only), no rotation."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise FileNotFoundError(f"input not found: {source}")
    if target.exists() and target.resolve() == source.resolve():
        raise VideoError(f"refusing to overwrite the input {source}: choose another output")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists: pass overwrite=True (--overwrite) to replace it")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if compare_frame is not None and (isinstance(compare_frame, bool) or not isinstance(compare_frame, numbers.Integral)
                                      or compare_frame < 0):
        raise ValueError(f"compare_frame must be a frame index (0 or more), got {compare_frame!r}")
    if fused.in_channels not in (1, 3) or fused.out_channels != fused.in_channels:
        raise ValueError(f"video needs a model with 1 or 3 channels in and out, this one has "
                         f"{fused.in_channels} in and {fused.out_channels} out")
    suffix = target.suffix.lower()
    animated_in = source.suffix.lower() in ANIMATED_EXTENSIONS
    if animated_in or suffix in ANIMATED_EXTENSIONS:
        if not (animated_in and suffix in ANIMATED_EXTENSIONS):
            raise VideoError(f"{source} -> {target}: animated GIF / WebP go to animated GIF / WebP, videos to "
                             f"{', '.join(VIDEO_EXTENSIONS)}")
        return _upscale_animation(fused, source, target, tile, progress, compare_frame)
    if suffix not in VIDEO_EXTENSIONS:
        raise VideoError(f"output {target}: {target.suffix or 'no extension'} is not a video container this writes; "
                         f"use one of {', '.join(VIDEO_EXTENSIONS + ANIMATED_EXTENSIONS)}")
    av = require_av()
    codec, options = _encoder_options(av, codec or _DEFAULT_CODECS.get(suffix, DEFAULT_CODEC), crf, preset, pix_fmt)
    notes: list[str] = []
    probe = _probe(av, source)
    if compare_frame is not None and probe.frames and compare_frame >= probe.frames:
        raise ValueError(f"{source}: compare frame {compare_frame} is past its {probe.frames} frames "
                         f"(0 to {probe.frames - 1})")
    out_w, out_h = probe.width * fused.scale, probe.height * fused.scale
    pix_fmt = _pick_pix_fmt(av, codec, pix_fmt, out_w, out_h, notes)
    colour = _output_colour(av, probe, codec, pix_fmt)
    notes += [f"dropped {what}: only video and audio are kept" for what in probe.dropped]
    if probe.rotation and suffix == ".avi":
        notes.append(f"rotation {probe.rotation} degrees not kept: AVI has no rotation metadata")

    created = _make_folders(target.parent)
    partial = target.with_name(f".{target.stem}.partial-{os.getpid()}{target.suffix}")
    run = _Run(av, fused, source, partial, probe, codec, pix_fmt, options, batch, tile, queue_size,
               compare_frame, notes, progress, target=target, colour=colour)
    try:
        run.execute()
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        _remove_folders(created)
        raise
    if compare_frame is not None and run.compare is None:  # the count was not declared: known only now
        notes.append(f"no compare still: compare frame {compare_frame} is past the {run.frames_written} frames")
    return VideoReport(target=target, frames=run.frames_written, seconds=run.seconds, size=(out_w, out_h),
                       codec=codec, pix_fmt=pix_fmt, audio_copied=run.audio_copied,
                       audio_reencoded=run.audio_reencoded, notes=notes, compare=run.compare)


def _encoder_options(av, codec: str, crf, preset, pix_fmt) -> tuple[str, dict]:
    """The video encoder's name and options; every argument checked here, before any work."""
    codec = _CODEC_ALIASES.get(codec, codec)
    if codec not in av.codecs_available:
        raise VideoError(f"video encoder {codec!r} is not in this PyAV build")
    try:
        kind = av.codec.Codec(codec, "w").type
    except Exception:  # a decoder only (UnknownCodecError for "w")
        raise ValueError(f"{codec!r} is not an encoder in this PyAV build") from None
    if kind != "video":
        raise ValueError(f"{codec!r} is an {kind} encoder, not a video encoder: choose one with --codec, "
                         f"e.g. libx264, libx265, libvpx-vp9, libsvtav1, ffv1")
    options = {}
    if crf is not None or codec in _CRF_OPTIONS:
        if codec not in _CRF_OPTIONS:
            raise VideoError(f"crf applies to {', '.join(_CRF_OPTIONS)}; {codec} has no constant-quality option here")
        if crf is not None:
            low, high = _CRF_RANGES[codec]
            if isinstance(crf, bool) or not isinstance(crf, numbers.Integral) or not low <= crf <= high:
                raise ValueError(f"crf for {codec} must be an integer from {low} to {high}, got {crf!r}")
        options = _CRF_OPTIONS[codec](DEFAULT_CRF if crf is None else int(crf))
    if preset is not None:
        if codec in ("libx264", "libx265"):
            if preset not in _X26X_PRESETS:
                raise ValueError(f"preset for {codec} must be one of {', '.join(_X26X_PRESETS)}, got {preset!r}")
        elif codec == "libsvtav1":
            try:
                number = int(str(preset).strip()) if not isinstance(preset, (bool, float)) else None
            except ValueError:
                number = None
            if number not in _SVTAV1_PRESETS:
                raise ValueError(f"preset for libsvtav1 must be an integer from {_SVTAV1_PRESETS[0]} to "
                                 f"{_SVTAV1_PRESETS[-1]}, got {preset!r}")
            preset = number
        else:
            raise ValueError(f"preset applies to libx264, libx265 and libsvtav1, not {codec}")
        options["preset"] = str(preset)
    if pix_fmt is not None:
        formats = [f.name for f in (av.codec.Codec(codec, "w").video_formats or [])]
        if formats and pix_fmt not in formats:
            raise VideoError(f"encoder {codec} does not take pixel format {pix_fmt}; it takes {', '.join(formats)}")
    return codec, options


def _output_colour(av, probe: _Probe, codec: str, pix_fmt: str) -> dict:
    """The colour description the output gets (and is converted to). Primaries and transfer say
    what the colours are and always go over; the matrix and the range say how this file's YUV
    encodes RGB, so they go over only between two YUV (or two RGB) formats: an RGB input's matrix
    tag (RGB) on a YUV output would make players read its YUV as GBR. JPEG encoders want full range."""
    colour = dict(probe.colour)
    if probe.rgb != bool(av.VideoFormat(pix_fmt).is_rgb):
        colour["colorspace"] = colour["color_range"] = None
    if codec in _FULL_RANGE_CODECS or pix_fmt.startswith("yuvj"):
        colour["color_range"] = _FULL_RANGE
    return colour


_FULL_RANGE = 2  # AVCOL_RANGE_JPEG
_MJPEG_QUALITY = 3  # JPEG quantizer scale, 2 (best) ... 31
_QP2LAMBDA = 118  # FF_QP2LAMBDA: FFmpeg's global_quality is in lambda units


def _make_folders(folder: Path) -> list[Path]:
    """Creates ``folder`` and its missing parents; returns those it created, deepest first."""
    created, missing = [], folder
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_folders(created: list[Path]) -> None:
    """Undoes ``_make_folders`` after a failed run: removes the folders it made, where still empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty (something else wrote there) or already gone
            return


def _upscale_animation(fused, source: Path, target: Path, tile, progress, compare_frame) -> VideoReport:
    """Animated GIF / WebP through PIL (FFmpeg's GIF encoder wants a palette swscale cannot make,
    and this FFmpeg does not decode animated WebP): every frame upscaled as an image (alpha
    included), each frame's duration, the loop count and the disposal kept. Held in memory whole:
    animations are short."""
    from PIL import Image, ImageSequence
    from tqdm import tqdm

    start = time.perf_counter()
    try:
        with Image.open(source) as im:
            # No loop count (a GIF without the NETSCAPE block) plays once; 0 loops forever.
            loop = im.info.get("loop")
            originals, durations, end = [], [], 0
            for frame in ImageSequence.Iterator(im):
                originals.append(frame.convert("RGBA" if _has_alpha(frame) else "RGB"))
                duration = frame.info.get("duration")
                # Pillow's WebP reader keeps each frame's end time only privately (Pillow <= 13).
                stamp = getattr(frame, "_WebPImageFile__timestamp", None)
                if duration is None and stamp is not None:
                    duration, end = stamp - end, stamp
                durations.append(100 if duration is None else duration)
    except (OSError, ValueError, SyntaxError) as e:
        raise VideoError(f"{source}: cannot read as an animation: {' '.join(str(e).split())}") from None
    if compare_frame is not None and compare_frame >= len(originals):
        raise ValueError(f"{source}: compare frame {compare_frame} is past its {len(originals)} frames "
                         f"(0 to {len(originals) - 1})")
    frames = []
    for frame in tqdm(originals, unit="frame", disable=True if progress is False else None, leave=False):
        frames.append(fused.upscale(frame, tile=tile))
    gif = target.suffix.lower() == ".gif"
    extra = {"disposal": 2} if gif else {"lossless": True}
    # "Plays once" is no count in a GIF, a count of 1 in a WebP (which always has one).
    plays_once = loop is None or (source.suffix.lower() == ".webp" and loop == 1)
    if not gif:
        extra["loop"] = 1 if plays_once else loop
    elif not plays_once:
        extra["loop"] = loop
    partial = target.with_name(f".{target.stem}.partial-{os.getpid()}{target.suffix}")
    created = _make_folders(target.parent)
    try:
        frames[0].save(partial, format="GIF" if gif else "WEBP", save_all=True,
                       append_images=frames[1:], duration=durations, **extra)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        _remove_folders(created)
        raise
    compare = None
    if compare_frame is not None:
        compare = (np.asarray(originals[compare_frame].convert("RGB")), np.asarray(frames[compare_frame].convert("RGB")))
    width, height = frames[0].size
    return VideoReport(target=target, frames=len(frames), seconds=time.perf_counter() - start, size=(width, height),
                       codec=target.suffix.lower().lstrip("."), pix_fmt=frames[0].mode, compare=compare)


def _has_alpha(frame) -> bool:
    return frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info


class _Run:
    """One upscale_video run: the three stages and what they share."""

    def __init__(self, av, fused, source, partial, probe, codec, pix_fmt, options, batch, tile, queue_size,
                 compare_frame, notes, progress, target=None, colour=None):
        self.av, self.fused, self.source, self.partial, self.probe = av, fused, source, partial, probe
        self.target = target or partial
        self.colour = probe.colour if colour is None else colour  # the output's (``_output_colour``)
        self.codec, self.pix_fmt, self.options = codec, pix_fmt, options
        self.batch, self.tile, self.compare_frame, self.notes = batch, tile, compare_frame, notes
        self.progress = progress
        self.decoded = queue.Queue(maxsize=max(1, queue_size))  # ("v", rgb, pts) / ("a", packet) / failure
        self.upscaled = queue.Queue(maxsize=max(1, queue_size))  # ("v", [rgb], [pts]) / ("a", packet)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []  # the first one is reported
        self.frames_read = self.frames_read_by_net = self.frames_written = 0
        self.audio_copied = self.audio_reencoded = 0
        self.seconds = 0.0
        self.compare = None
        self.last_end = 0.0  # seconds: end of the last decoded frame
        self.slots_read = 0  # AVI: frame slots up to the last frame read (an empty slot is a dropped frame)

    # --- the calling thread: the net ---------------------------------------------------------------
    def execute(self):
        from tqdm import tqdm

        av = self.av
        self.input = _open_input(av, self.source)
        # AVI places audio by its sample count, not its timestamps: shifting every stream to make a
        # negative audio start (AAC's priming) zero would only leave an empty first video slot.
        options = {"avoid_negative_ts": "disabled"} if self.partial.suffix.lower() == ".avi" else {}
        try:
            self.output = av.open(str(self.partial), "w", options=options)
        except av.FFmpegError as e:
            self.input.close()
            raise VideoError(f"{self.partial}: cannot create: {_ffmpeg_message(e)}") from None
        self.bar = tqdm(total=self.probe.frames or None, unit="frame", disable=True if self.progress is False else None,
                        leave=False)
        threads = [threading.Thread(target=self._guarded, args=(stage,), name=f"repsr-video-{stage.__name__}", daemon=True)
                   for stage in (self._read, self._write)]
        start = time.perf_counter()
        try:
            self._setup_output()
            for thread in threads:
                thread.start()
            self._compute()
        except BaseException as e:  # Ctrl-C or an error here: stop the stages, then report
            self.errors.insert(0, e)
            self.stop.set()
        finally:
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
            self.seconds = time.perf_counter() - start
            self.bar.close()
            self._close()
        if self.errors:
            error = self.errors[0]
            done = f"{self.frames_written} of {self.probe.frames or '?'} frames were done"
            if isinstance(error, KeyboardInterrupt):
                raise VideoInterrupted(f"interrupted: {done}; nothing written under the output name") from None
            if isinstance(error, av.FFmpegError):
                raise VideoError(f"{self.source}: {_ffmpeg_message(error)} ({done})") from None
            raise error
        if self.frames_read == 0:
            raise VideoError(f"{self.source}: no video frames could be decoded")
        declared = self.probe.duration
        if declared is not None and self.probe.rate:
            frame_s = 1.0 / float(self.probe.rate)
            if self.last_end < declared - max(0.5, 3 * frame_s):
                raise VideoError(f"{self.source}: the video ends at {self.last_end:.2f} s but the file declares "
                                 f"{declared:.2f} s: truncated or corrupt")
        # AVI declares its frame slots, empty ones (dropped frames: a variable rate) included.
        read = max(self.frames_read, self.slots_read) if self.probe.dts_timing else self.frames_read
        if self.probe.frames and read < self.probe.frames:
            raise VideoError(f"{self.source}: {read} of the {self.probe.frames} frames it declares "
                             "could be decoded: truncated or corrupt")

    def _guarded(self, stage):
        try:
            stage()
        except BaseException as e:  # reported by the calling thread
            self.errors.append(e)
            self.stop.set()

    def _compute(self):
        """Runs the net on batches of decoded frames until the reader's end (or a stop). One batch
        stays in flight: the next is started before the previous one's result is taken, so on a
        CUDA device the transfers of one overlap the net on the other (``FusedSR.start_frames``).
        Audio packets go out after the frames decoded before them, as they came in."""
        frames, stamps, pending_audio = [], [], []
        in_flight = collections.deque()  # [PendingFrames, stamps, compare, audio packets after the batch]

        def emit(job) -> bool:
            pending, batch_stamps, compare, audio = job
            out = pending.result()
            if compare is not None:
                self.compare = (compare[1], out[compare[0]])
            items = [("v", list(out), batch_stamps)] + [("a", packet) for packet in audio]
            return all(_put(self.upscaled, item, self.stop) for item in items)

        def flush(last: bool) -> bool:
            if frames:
                first = self.frames_read_by_net - len(frames)
                compare = None
                if self.compare_frame is not None and first <= self.compare_frame < self.frames_read_by_net:
                    i = self.compare_frame - first
                    compare = (i, frames[i])
                in_flight.append([self.fused.start_frames(np.stack(frames), tile=self.tile), list(stamps), compare, []])
                frames.clear()
                stamps.clear()
            if in_flight:  # audio decoded with a batch's frames goes out after them
                in_flight[-1][3].extend(pending_audio)
            elif not all(_put(self.upscaled, ("a", packet), self.stop) for packet in pending_audio):
                return False
            pending_audio.clear()
            while len(in_flight) > (0 if last else 1):
                if not emit(in_flight.popleft()):
                    return False
            return True

        while True:
            item = _get(self.decoded, self.stop)
            if item is _STOP:
                if not self.stop.is_set() and flush(last=True):
                    _put(self.upscaled, _STOP, self.stop)
                return
            if item[0] == "v":
                frames.append(item[1])
                stamps.append(item[2])
                self.frames_read_by_net += 1
                if len(frames) == self.batch and not flush(last=False):
                    return
            else:
                pending_audio.append(item[1])

    # --- reader thread ------------------------------------------------------------------------------
    def _read(self):
        stream = self.input.streams.video[0]
        streams = [stream] + [self.input.streams[i] for i in self.probe.audio]
        tb = self.probe.time_base
        colour = self.probe.colour
        frame_ticks = 1 / (float(self.probe.rate or 25) * float(tb))  # one frame, in time-base units
        step = max(1, round(frame_ticks))
        # AVI keeps one decode time per frame slot and no presentation times (FFmpeg guesses them,
        # scrambled by B-frames): the frames, out in display order, take the slots in order.
        slots = [] if self.probe.dts_timing else None
        last = None
        for packet in self.input.demux(streams):
            if self.stop.is_set():
                return
            if packet.stream.type == "audio":
                if packet.dts is not None and not _put(self.decoded, ("a", packet), self.stop):
                    return
                continue
            if slots is not None and packet.dts is not None and packet.size:
                heapq.heappush(slots, packet.dts)
                self.slots_read = max(self.slots_read, packet.dts + 1)
            for frame in packet.decode():
                pts = heapq.heappop(slots) if slots else frame.pts
                # The encoder and the muxer need strictly increasing times: a missing or repeated
                # (or backwards) one goes one frame after the previous.
                if pts is None or (last is not None and pts <= last):
                    pts = 0 if last is None else last + step
                last = pts
                rgb = frame.to_ndarray(format="rgb24", src_colorspace=colour.get("colorspace"),
                                       src_color_range=colour.get("color_range"))
                duration = frame.duration or frame_ticks
                self.last_end = max(self.last_end, float((pts + duration) * tb))
                self.frames_read += 1
                if not _put(self.decoded, ("v", rgb, pts), self.stop):
                    return
        _put(self.decoded, _STOP, self.stop)

    # --- writer thread ------------------------------------------------------------------------------
    def _setup_output(self):
        av, probe, fused = self.av, self.probe, self.fused
        out_w, out_h = probe.width * fused.scale, probe.height * fused.scale
        avi = self.output.format.name == "avi"
        rate = probe.rate if probe.rate else Fraction(25)
        if avi and probe.slot_rate:  # one slot per frame time: a variable rate keeps its gaps
            rate = Fraction(probe.slot_rate)
        try:
            self.video_out = self.output.add_stream(self.codec, rate=rate, options=self.options)
        except ValueError as e:  # PyAV: "'webm' format does not support 'libx264' codec"
            raise ValueError(f"{self.target}: {e}: choose another codec or container") from None
        ctx = self.video_out.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = out_w, out_h, self.pix_fmt
        # The input's timestamps go through unchanged, except into AVI: it has one frame slot per
        # 1/rate (given a finer time base, it pads with empty slots and claims that rate) and
        # stores decode times only, so B-frames (their decode order) would scramble the frames' times.
        self.out_time_base = Fraction(1) / rate if avi else probe.time_base
        self.pts_scale = probe.time_base / self.out_time_base if avi else None
        self.last_pts, self.moved = None, 0
        if avi:
            ctx.max_b_frames = 0
        if self.codec == "mjpeg":  # constant quality (ffmpeg's -q:v): its rate control starves frame after frame
            ctx.qscale, ctx.global_quality = True, _MJPEG_QUALITY * _QP2LAMBDA
        ctx.time_base = self.out_time_base
        self.video_out.time_base = self.out_time_base
        if probe.sample_aspect_ratio:
            ctx.sample_aspect_ratio = probe.sample_aspect_ratio
            # Matroska / WebM read it from the AVStream, which PyAV does not let us set (MP4, MOV
            # and AVI take the encoder's); H.264 / H.265 also carry it in their bitstream, which
            # every player reads. Other codecs there lose it: said, not hidden.
            if (self.output.format.name in ("matroska", "webm") and probe.sample_aspect_ratio != 1
                    and self.codec not in ("libx264", "libx265")):
                self.notes.append(f"sample aspect ratio {probe.sample_aspect_ratio} not kept: {self.target.suffix} "
                                  f"with {self.codec} cannot record it here (use .mp4 / .mov, or libx264 / libx265)")
        for name, value in self.colour.items():
            if value is not None and hasattr(ctx, name):
                try:
                    setattr(ctx, name, value)
                except (ValueError, TypeError, AttributeError):
                    pass
        if probe.rotation and not avi:
            self.video_out.set_display_rotation(probe.rotation)
        self.audio_out = {}
        supported = self.output.supported_codecs
        refused = _REFUSED_AUDIO.get(self.target.suffix.lower(), ())
        for index in probe.audio:
            stream = self.input.streams[index]
            name = stream.codec_context.name
            if name in supported and name not in refused:
                self.audio_out[index] = ("copy", self.output.add_stream_from_template(stream))
                self.audio_copied += 1
            else:
                codec = self.output.default_audio_codec
                if not codec or codec == "none":
                    raise VideoError(f"{self.partial.suffix} cannot hold audio ({name}) and has no audio codec")
                rate = stream.codec_context.sample_rate
                rates = av.codec.Codec(codec, "w").audio_rates
                if rates and rate not in rates:
                    rate = 48000 if 48000 in rates else max(rates)
                out = self.output.add_stream(codec, rate=rate)
                out.codec_context.layout = stream.codec_context.layout
                self.audio_out[index] = ("encode", out)
                self.audio_reencoded += 1
                self.notes.append(f"audio stream {index} ({name}) re-encoded as {codec}: "
                                  f"{self.partial.suffix} cannot hold {name}")
        # Open the encoders and write the header now, in this one thread, where FFmpeg's reason for
        # a refusal (a pixel format, a codec in this container) can be kept for the error.
        try:
            with _ffmpeg_reasons(av):
                self.output.start_encoding()
        except av.FFmpegError as e:
            raise VideoError(f"{self.target}: cannot start writing {self.codec} {self.pix_fmt}: "
                             f"{_ffmpeg_message(e)}") from None

    def _out_pts(self, pts: int) -> int:
        """A frame's timestamp in the output's time base (AVI: its frame slot, the next free one
        where two frames fall into one)."""
        if self.pts_scale is None:
            return pts
        exact = pts * self.pts_scale
        out = round(exact)
        if self.last_pts is not None and out <= self.last_pts:
            out = self.last_pts + 1
        if abs(out - exact) * self.out_time_base > Fraction(1, 1000):
            self.moved += 1
        self.last_pts = out
        return out

    def _write(self):
        av = self.av
        colour = self.colour
        while True:
            item = _get(self.upscaled, self.stop)
            if item is _STOP:
                break
            if item[0] == "a":
                self._write_audio(item[1])
                continue
            for rgb, pts in zip(item[1], item[2]):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame = frame.reformat(format=self.pix_fmt, dst_colorspace=colour.get("colorspace"),
                                       dst_color_range=colour.get("color_range"))
                frame.pts = self._out_pts(pts)
                frame.time_base = self.out_time_base
                for packet in self.video_out.encode(frame):
                    self.output.mux(packet)
                self.frames_written += 1
                self.bar.update(1)
        if self.stop.is_set():
            return
        for packet in self.video_out.encode():
            self.output.mux(packet)
        for kind, out in self.audio_out.values():
            if kind == "encode":
                for packet in out.encode():
                    self.output.mux(packet)
        if self.moved:
            self.notes.append(f"{self.moved} frame times moved to AVI's frame slots: AVI holds one frame rate "
                              f"({float(1 / self.out_time_base):g} frames/s)")

    def _write_audio(self, packet):
        kind, out = self.audio_out[packet.stream.index]
        if kind == "copy":
            packet.stream = out
            self.output.mux(packet)
            return
        for frame in packet.decode():
            for encoded in out.encode(frame):
                self.output.mux(encoded)

    def _close(self):
        output, inp = getattr(self, "output", None), getattr(self, "input", None)
        for container in (output, inp):
            if container is None:
                continue
            try:
                container.close()
            except Exception as e:  # a failed trailer write: the file is not usable
                if container is output and not self.errors:
                    self.errors.append(VideoError(f"{self.partial}: cannot finish the file: {_ffmpeg_message(e)}"))
