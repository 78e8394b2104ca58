"""Video throughput: the whole pipeline (decode + net + encode, overlapped) against the net alone
on the same frames, for the shipped models. Writes a Markdown table.

    python benchmarks/video_fps.py            # 480x270 -> x4 and 640x360 -> x2, 48 frames each
"""
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from repsr_ext import FusedSR, video
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


def main() -> int:
    frames = 48
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for (h, w), scale in (((270, 480), 4), ((360, 640), 2)):
            fused = FusedSR.load(shipped_model(scale))
            src = Path(tmp) / f"clip_{w}x{h}.mp4"
            decoded = make_clip(src, frames, h, w)
            batch = np.stack(decoded[:4])
            fused.upscale_frames(batch)  # warm-up
            t0 = time.perf_counter()
            for k in range(0, frames, 4):
                fused.upscale_frames(np.stack(decoded[k:k + 4]))
            net = time.perf_counter() - t0
            for preset in ("medium", "veryfast", "ultrafast"):
                report = video.upscale_video(fused, src, Path(tmp) / f"out_{w}x{h}.mp4", progress=False,
                                             preset=preset, overwrite=True)
                rows.append((f"{w}x{h} -> x{scale} ({w * scale}x{h * scale})", preset, frames / net, report.fps,
                             report.seconds / net - 1))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, PyAV {av.__version__}, libx264 crf 18 "
          f"yuv420p, batch 4, {frames} frames\n")
    print("| clip | x264 preset | net alone (frames/s) | whole pipeline (frames/s) | pipeline time over the net's |")
    print("|---|---|---|---|---|")
    for name, preset, net_fps, fps, over in rows:
        print(f"| {name} | {preset} | {net_fps:.1f} | {fps:.1f} | {over * 100:+.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
