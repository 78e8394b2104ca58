"""Video throughput: the whole pipeline (decode + net + encode, overlapped) against each stage alone
on the same frames. Writes a Markdown table.

    python benchmarks/video_fps.py            # about 4 minutes on 2 cores

Two kinds of rows:
- the shipped M4C16 models with all the cores (torch's default threads): on a small machine the
  encoder of a 1080p/720p output needs about as much CPU as the net, so the stages compete;
- a net that is the bottleneck: a wider preset (random weights: speed does not depend on them)
  with the net given one thread less than the machine has, so a core is left to the codecs. There
  the pipeline should run at the net's speed: its time over the net's is the pipeline's overhead.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from repsr_ext import FusedSR, RepSRNet, video
from repsr_ext.cli import shipped_model


def make_clip(path: Path, frames: int, height: int, width: int) -> list[np.ndarray]:
    """A moving photograph (scikit-image's astronaut, panned), encoded with libx264 at 25 fps."""
    from skimage import data
    from PIL import Image

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((width + frames * 2, height)))
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=25, options={"crf": "18"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    rgb = []
    for i in range(frames):
        frame = np.ascontiguousarray(photo[:, 2 * i:2 * i + width])
        rgb.append(frame)
        f = av.VideoFrame.from_ndarray(frame, format="rgb24")
        f.pts = i
        for p in stream.encode(f):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)
    out.close()
    return rgb


def decode_seconds(path: Path) -> float:
    """Demux + decode + conversion to RGB, as the pipeline's reader does it."""
    t0 = time.perf_counter()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
    return time.perf_counter() - t0


def encode_seconds(path: Path, frames: list[np.ndarray], preset: str) -> float:
    """RGB -> yuv420p, libx264 CRF 18 at ``preset``, muxed, as the pipeline's writer does it."""
    t0 = time.perf_counter()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "18", "preset": preset})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            f.pts = i
            for p in stream.encode(f):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return time.perf_counter() - t0


def measure(tmp: Path, name: str, fused: FusedSR, size: tuple[int, int], frames: int, presets, threads: int):
    h, w = size
    torch.set_num_threads(threads)
    src = tmp / f"clip_{w}x{h}.mp4"
    decoded = make_clip(src, frames, h, w)
    fused.upscale_frames(np.stack(decoded[:4]))  # warm-up
    t0 = time.perf_counter()
    upscaled = []
    for k in range(0, frames, 4):
        upscaled.extend(fused.upscale_frames(np.stack(decoded[k:k + 4])))
    net = time.perf_counter() - t0
    decode = decode_seconds(src)
    rows = []
    for preset in presets:
        encode = encode_seconds(tmp / "encode_only.mp4", upscaled, preset)
        report = video.upscale_video(fused, src, tmp / f"out_{w}x{h}.mp4", progress=False, preset=preset,
                                     overwrite=True)
        assert report.frames == frames
        rows.append((f"{w}x{h} -> x{fused.scale} ({w * fused.scale}x{h * fused.scale})", name, threads, preset,
                     frames / decode, frames / net, frames / encode, report.fps, report.seconds / net - 1,
                     report.seconds / (decode + net + encode)))
    return rows


def main() -> int:
    cores = os.cpu_count() or 1
    default_threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for (h, w), scale in (((270, 480), 4), ((360, 640), 2)):
            rows += measure(tmp, "shipped M4C16", FusedSR.load(shipped_model(scale)), (h, w), 48,
                            ("medium", "ultrafast"), default_threads)
        net_threads = max(1, cores - 1)
        for (h, w), scale, preset_name, frames in (((270, 480), 4, "M16C64", 24), ((360, 640), 2, "M10C32", 24)):
            net = RepSRNet.preset(preset_name, scale=scale).eval()
            rows += measure(tmp, f"{preset_name} (random weights)", FusedSR.load(net), (h, w), frames,
                            ("medium",), net_threads)
    print(f"{cores} cores, torch {torch.__version__}, PyAV {av.__version__}, libx264 CRF 18 yuv420p, batch 4; "
          "frames/s of each stage alone and of the whole pipeline\n")
    print("| clip | net | net threads | x264 preset | decode alone | net alone | encode alone | whole pipeline "
          "| pipeline time over the net's | pipeline time / sum of the stages' |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clip, name, threads, preset, dec, net, enc, fps, over, share in rows:
        print(f"| {clip} | {name} | {threads} | {preset} | {dec:.1f} | {net:.1f} | {enc:.1f} | {fps:.1f} "
              f"| {over * 100:+.0f}% | {share:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
