"""Video upscaling (repsr_ext/video.py): clips made here with PyAV itself; what must survive
(frames, timestamps, audio packets, rotation, aspect), exactness against the image path through a
lossless codec, corrupt / truncated / interrupted runs leaving nothing under the output name."""
import threading
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from helpers import randomize_
from repsr_ext import FusedSR, RepSRNet, video
from repsr_ext.cli import main

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def fused():
    net = randomize_(RepSRNet.preset("M2C8", scale=2), seed=5, scale=0.05).eval().reparameterize()
    return FusedSR(net)


def moving_frames(n, h, w, seed=0):
    """A textured square moving over a noisy gradient: every frame differs."""
    rng = np.random.default_rng(seed)
    base = (np.linspace(0, 200, w)[None, :, None] + rng.integers(0, 40, (h, w, 3))).clip(0, 255)
    frames = []
    for i in range(n):
        f = base.copy()
        y, x = (2 * i) % max(1, h - 6), (3 * i) % max(1, w - 6)
        f[y:y + 6, x:x + 6] = rng.integers(0, 256, (min(6, h - y), min(6, w - x), 3))
        frames.append(f.astype(np.uint8))
    return frames


def write_clip(path, frames, codec="libx264", pix_fmt="yuv420p", rate=25, pts=None, time_base=None,
               audio=None, rotation=0):
    """``audio``: None or (codec, seconds). ``pts``/``time_base``: explicit (variable) timestamps."""
    out = av.open(str(path), "w")
    h, w = frames[0].shape[:2]
    vs = out.add_stream(codec, rate=rate)
    vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
    if time_base is not None:
        vs.codec_context.time_base = time_base
        vs.time_base = time_base
    if rotation:
        vs.set_display_rotation(rotation)
    aus = None
    if audio is not None:
        aus = out.add_stream(audio[0], rate=48000)
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        frame.pts = i if pts is None else pts[i]
        if time_base is not None:
            frame.time_base = time_base
        for p in vs.encode(frame):
            out.mux(p)
    if aus is not None:
        n, t = 960, 0
        while t < audio[1] * 48000:
            tone = (0.3 * np.sin(2 * np.pi * 440 * (np.arange(n) + t) / 48000)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            af.sample_rate, af.pts = 48000, t
            t += n
            for p in aus.encode(af):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    out.close()


def decoded(path):
    with av.open(str(path)) as c:
        return [(f.pts, f.to_ndarray(format="rgb24"), f.rotation) for f in c.decode(video=0)]


def audio_packets(path):
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        s = c.streams.audio[0]
        return [(p.pts, bytes(p)) for p in c.demux(s) if p.dts is not None]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_lossless_clip_equals_image_path_frame_by_frame(tmp_path, fused):
    frames = moving_frames(7, 18, 22, seed=1)
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mkv"
    write_clip(src, frames, codec="ffv1", pix_fmt="bgr0")
    for batch in (1, 3):
        report = video.upscale_video(fused, src, dst, codec="ffv1", pix_fmt="bgr0", batch=batch, overwrite=True,
                                     progress=False)
        assert report.frames == 7 and report.size == (44, 36)
        out = decoded(dst)
        inp = decoded(src)
        assert [p for p, _, _ in out] == [p for p, _, _ in inp]
        for (_, o, _), (_, i, _) in zip(out, inp):
            np.testing.assert_array_equal(o, fused.upscale(i))  # exact: lossless codec, same op


def test_one_batch_stays_in_flight_and_frames_keep_their_order(tmp_path, fused, monkeypatch):
    """The net's stage starts batch i + 1 before it takes batch i's result (on CUDA the copies of
    one overlap the net on the other); the output is still every frame in order, exactly."""
    frames = moving_frames(7, 10, 14, seed=3)
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mkv"
    write_clip(src, frames, codec="ffv1", pix_fmt="bgr0")
    events = []
    real = FusedSR.start_frames

    class Deferred:
        def __init__(self, k, value):
            self.k, self.value = k, value

        def result(self):
            events.append(("result", self.k))
            return self.value

    def start(self, batch, tile=None):
        k = sum(kind == "start" for kind, _ in events)
        events.append(("start", k))
        return Deferred(k, real(self, batch, tile).result())

    monkeypatch.setattr(FusedSR, "start_frames", start)
    video.upscale_video(fused, src, dst, codec="ffv1", pix_fmt="bgr0", batch=2, progress=False)
    assert events == [("start", 0), ("start", 1), ("result", 0), ("start", 2), ("result", 1), ("start", 3),
                      ("result", 2), ("result", 3)]
    out, inp = decoded(dst), decoded(src)
    assert [p for p, _, _ in out] == [p for p, _, _ in inp]
    for (_, o, _), (_, i, _) in zip(out, inp):
        np.testing.assert_array_equal(o, fused.upscale(i))


def test_mp4_keeps_frames_timestamps_audio_and_rotation(tmp_path, fused):
    frames = moving_frames(12, 16, 24, seed=2)
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_clip(src, frames, audio=("aac", 0.6), rotation=90)
    report = fused.upscale_video(src, dst, progress=False)
    assert report.frames == 12 and report.audio_copied == 1 and report.codec == "libx264"
    out, inp = decoded(dst), decoded(src)
    assert [p for p, _, _ in out] == [p for p, _, _ in inp]
    assert all(r == 90 for _, _, r in out)
    assert out[0][1].shape == (32, 48, 3)
    assert audio_packets(dst) == audio_packets(src)  # copied packet for packet
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        assert b.streams.video[0].average_rate == a.streams.video[0].average_rate
    # Lossy codec: each frame close to the image path's result for the decoded input frame, in
    # luma (4:2:0 halves the chroma resolution of this per-pixel noise by design).
    luma = np.array([0.299, 0.587, 0.114])
    for (_, o, _), (_, i, _) in zip(out, inp):
        ref = fused.upscale(i).astype(np.float64) @ luma
        psnr = 10 * np.log10(255.0 ** 2 / np.mean((o @ luma - ref) ** 2))
        assert psnr > 30, psnr


def test_aspect_ratio_and_colour_tags_survive(tmp_path, fused):
    """A full-range BT.709 clip with 4:3 pixels: tags kept, and frames converted with them (a
    conversion with the default BT.601 limited range would shift the colours)."""
    src, dst = tmp_path / "tagged.mp4", tmp_path / "tagged_x2.mp4"
    out = av.open(str(src), "w")
    vs = out.add_stream("libx264", rate=25, options={"crf": "10"})
    vs.width, vs.height, vs.pix_fmt = 24, 16, "yuv420p"
    ctx = vs.codec_context
    ctx.sample_aspect_ratio = Fraction(4, 3)
    ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc = 2, 1, 1, 1  # JPEG range, BT.709
    smooth = [np.clip(f.astype(int) // 2 + 60, 0, 255).astype(np.uint8) for f in moving_frames(4, 16, 24, seed=15)]
    for i, rgb in enumerate(smooth):
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", dst_colorspace=1, dst_color_range=2)
        f.pts, f.color_range, f.colorspace, f.color_primaries, f.color_trc = i, 2, 1, 1, 1
        for p in vs.encode(f):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    out.close()
    video.upscale_video(fused, src, dst, progress=False)
    luma = np.array([0.2126, 0.7152, 0.0722])  # BT.709's Y: what 4:2:0 keeps at full resolution
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        assert b.streams.video[0].sample_aspect_ratio == Fraction(4, 3)
        for fa, fb in zip(a.decode(video=0), b.decode(video=0)):
            assert (fb.color_range, fb.colorspace, fb.color_primaries, fb.color_trc) == (2, 1, 1, 1)
            ia = fa.to_ndarray(format="rgb24", src_colorspace=1, src_color_range=2)
            ob = fb.to_ndarray(format="rgb24", src_colorspace=1, src_color_range=2)
            ref = fused.upscale(ia).astype(np.float64) @ luma
            assert 10 * np.log10(255.0 ** 2 / np.mean((ob @ luma - ref) ** 2)) > 30


def test_variable_frame_rate_timestamps_survive(tmp_path, fused):
    pts = [0, 40, 55, 130, 140, 300, 310, 460]
    frames = moving_frames(len(pts), 12, 16, seed=3)
    src, dst = tmp_path / "vfr.mkv", tmp_path / "vfr_x2.mkv"
    write_clip(src, frames, codec="ffv1", pix_fmt="bgr0", time_base=Fraction(1, 1000), pts=pts)
    assert [p for p, _, _ in decoded(src)] == pts
    video.upscale_video(fused, src, dst, codec="libx264", progress=False)
    assert [p for p, _, _ in decoded(dst)] == pts


def test_odd_output_size_uses_full_chroma(tmp_path):
    net = randomize_(RepSRNet.preset("M2C8", scale=3), seed=9, scale=0.05).eval().reparameterize()
    frames = moving_frames(3, 11, 13, seed=4)
    src, dst = tmp_path / "odd.mkv", tmp_path / "odd_x3.mp4"
    write_clip(src, frames, codec="ffv1", pix_fmt="bgr0")
    report = video.upscale_video(FusedSR(net), src, dst, progress=False)
    assert report.pix_fmt == "yuv444p" and any("odd-sized" in n for n in report.notes)
    with av.open(str(dst)) as c:
        s = c.streams.video[0].codec_context
        assert (s.width, s.height) == (39, 33)
    assert len(decoded(dst)) == 3


def test_container_that_cannot_hold_the_audio_reencodes_it(tmp_path, fused):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.webm"
    write_clip(src, moving_frames(6, 16, 16, seed=5), audio=("aac", 0.5))
    report = video.upscale_video(fused, src, dst, progress=False)
    assert report.audio_reencoded == 1 and any("re-encoded" in n for n in report.notes)
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
        assert c.streams.audio[0].codec_context.name in ("opus", "vorbis")
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples / 48000 - 0.5) < 0.1


def test_corrupt_and_truncated_inputs_leave_no_output(tmp_path, fused):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(video.VideoError, match="junk.mp4"):
        video.upscale_video(fused, junk, tmp_path / "a.mp4", progress=False)
    good = tmp_path / "good.mkv"
    write_clip(good, moving_frames(40, 24, 32, seed=6), codec="libx264")
    data = good.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(video.VideoError, match="truncated|corrupt|decode"):
        video.upscale_video(fused, cut, tmp_path / "b.mkv", progress=False)
    mp4 = tmp_path / "good.mp4"
    write_clip(mp4, moving_frames(10, 16, 16, seed=7))
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[:-200])
    with pytest.raises(video.VideoError):
        video.upscale_video(fused, tmp_path / "cut.mp4", tmp_path / "c.mp4", progress=False)
    assert not any((tmp_path / n).exists() for n in ("a.mp4", "b.mkv", "c.mp4"))
    assert leftovers(tmp_path) == []
    # The CLI: one line, exit 1, nothing written.
    assert main(["upscale", str(junk), "-o", str(tmp_path / "d.mp4"), "--no-progress"]) == 1


def test_interrupt_keeps_the_existing_output_and_says_how_far_it_got(tmp_path, fused, monkeypatch, capsys):
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mkv"
    write_clip(src, moving_frames(10, 12, 12, seed=8), codec="ffv1", pix_fmt="bgr0")
    dst.write_bytes(b"the user's earlier file")
    calls = {"n": 0}
    real = FusedSR.upscale_frames

    def interrupted(self, frames, tile=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, frames, tile)

    monkeypatch.setattr(FusedSR, "upscale_frames", interrupted)
    with pytest.raises(video.VideoInterrupted, match="frames were done"):
        video.upscale_video(fused, src, dst, batch=2, overwrite=True, progress=False)
    assert dst.read_bytes() == b"the user's earlier file" and leftovers(tmp_path) == []
    calls["n"] = 0
    assert main(["upscale", str(src), "-o", str(dst), "--overwrite", "--batch", "2", "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert dst.read_bytes() == b"the user's earlier file" and leftovers(tmp_path) == []


def test_encoder_failure_is_reported_and_leaves_nothing(tmp_path, fused, monkeypatch):
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mkv"
    write_clip(src, moving_frames(6, 12, 12, seed=10), codec="ffv1", pix_fmt="bgr0")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", staticmethod(lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))))
    with pytest.raises(OSError, match="disk full"):
        video.upscale_video(fused, src, dst, progress=False)
    assert not dst.exists() and leftovers(tmp_path) == []


def test_memory_stays_bounded_with_a_slow_encoder(tmp_path, fused, monkeypatch):
    """The reader may run ahead of the writer by at most the two queues and the net's two batches."""
    src, dst = tmp_path / "long.mkv", tmp_path / "long_x2.mkv"
    write_clip(src, moving_frames(60, 8, 8, seed=11), codec="ffv1", pix_fmt="bgr0")
    gaps = []
    real_reformat = av.VideoFrame.reformat

    def slow_reformat(self, *a, **k):
        run = runs[0]
        gaps.append(run.frames_read - run.frames_written)
        threading.Event().wait(0.002)
        return real_reformat(self, *a, **k)

    runs = []
    real_init = video._Run.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        runs.append(self)

    monkeypatch.setattr(video._Run, "__init__", init)
    monkeypatch.setattr(av.VideoFrame, "reformat", slow_reformat)
    queue_size, batch = 2, 3
    report = video.upscale_video(fused, src, dst, batch=batch, queue_size=queue_size, codec="ffv1",
                                 pix_fmt="bgr0", progress=False)
    assert report.frames == 60
    # decoded, in the net (one batch in flight while the next runs), upscaled, writing, reading
    bound = queue_size + 2 * batch + queue_size * batch + batch + 1
    assert max(gaps) <= bound, (max(gaps), bound)


def test_refusals(tmp_path, fused):
    src = tmp_path / "in.mp4"
    write_clip(src, moving_frames(3, 8, 8))
    with pytest.raises(video.VideoError, match="overwrite the input"):
        video.upscale_video(fused, src, src, overwrite=True)
    (tmp_path / "exists.mp4").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="overwrite"):
        video.upscale_video(fused, src, tmp_path / "exists.mp4")
    with pytest.raises(video.VideoError, match="not a video container"):
        video.upscale_video(fused, src, tmp_path / "out.png")
    with pytest.raises(video.VideoError, match="not in this PyAV build"):
        video.upscale_video(fused, src, tmp_path / "out.mp4", codec="no-such-codec")
    with pytest.raises(video.VideoError, match="crf applies"):
        video.upscale_video(fused, src, tmp_path / "out.mkv", codec="ffv1", crf=10)
    assert main(["upscale", str(src), "-o", str(tmp_path / "x.png")]) == 2


def test_cli_video_with_compare_still_and_y_model(tmp_path, capsys):
    src = tmp_path / "clip.mkv"
    frames = moving_frames(5, 10, 14, seed=12)
    write_clip(src, frames, codec="ffv1", pix_fmt="bgr0")
    assert main(["upscale", str(src), "-o", str(tmp_path / "out") + "/", "--no-progress", "--compare",
                 "--compare-frame", "2", "--scale", "2"]) == 0
    out = tmp_path / "out" / "clip.mkv"
    assert out.is_file() and (tmp_path / "out" / "clip_compare.png").is_file()
    assert Image.open(tmp_path / "out" / "clip_compare.png").size[0] == 2 * 28
    assert "5 frames" in capsys.readouterr().err
    # A Y model: the image path's Y handling, frame by frame.
    net = randomize_(RepSRNet.preset("M2C8", scale=2, in_channels=1, out_channels=1), seed=13, scale=0.05).eval().reparameterize()
    y = FusedSR(net)
    video.upscale_video(y, src, tmp_path / "y.mkv", codec="ffv1", pix_fmt="bgr0", progress=False)
    for (_, o, _), i in zip(decoded(tmp_path / "y.mkv"), frames):
        np.testing.assert_array_equal(o, y.upscale(i))


def test_animated_gif_and_webp(tmp_path, fused):
    frames = [Image.fromarray(f) for f in moving_frames(4, 10, 12, seed=14)]
    for ext in (".gif", ".webp"):
        src = tmp_path / f"anim{ext}"
        frames[0].save(src, save_all=True, append_images=frames[1:], duration=[50, 80, 120, 60], loop=0)
        assert video.is_video_path(src)
        dst = tmp_path / f"anim_x2{ext}"
        report = video.upscale_video(fused, src, dst, progress=False)
        assert report.frames == 4
        with Image.open(dst) as im:
            assert im.n_frames == 4 and im.size == (24, 20)
            durations = []
            for k in range(4):
                im.seek(k)
                durations.append(im.info.get("duration"))
        if ext == ".webp":  # Pillow does not report WebP frame durations: read the ANMF chunks
            durations = webp_frame_durations(dst.read_bytes())
        assert durations == [50, 80, 120, 60]
    still = tmp_path / "still.gif"
    frames[0].save(still)
    assert not video.is_video_path(still)  # one frame: the image path


def webp_frame_durations(data: bytes) -> list[int]:
    """Frame durations (ms) from the ANMF chunks of an animated WebP (RIFF; WebP container spec:
    X, Y, width-1, height-1, duration as 24-bit little-endian fields after the chunk header)."""
    out, pos = [], 12
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if kind == b"ANMF":
            out.append(int.from_bytes(data[pos + 8 + 12:pos + 8 + 15], "little"))
        pos += 8 + size + (size & 1)
    return out


def test_missing_pyav_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_av(name, *a, **k):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(RuntimeError, match=r"pip install 'repsr_ext\[video\]'"):
        video.require_av()


def luma_psnr(out, ref, weights=(0.299, 0.587, 0.114)):
    w = np.array(weights)
    return 10 * np.log10(255.0 ** 2 / np.mean((out.astype(np.float64) @ w - ref.astype(np.float64) @ w) ** 2))


def test_matroska_audio_running_past_the_video_is_not_truncation(tmp_path, fused):
    """Matroska has no per-stream duration field and the container's is the longest stream's:
    audio 1 s past a 0.24 s video is a valid file. A cut one (audio too) is still refused."""
    cases = [("in.mkv", dict(codec="ffv1", pix_fmt="bgr0", audio=("aac", 1.0))),
             ("in.webm", dict(codec="libvpx-vp9", audio=("libopus", 1.0)))]
    for name, options in cases:
        src, dst = tmp_path / name, tmp_path / f"out_{name}.mkv"
        write_clip(src, moving_frames(6, 16, 16, seed=20), **options)
        with av.open(str(src)) as c:
            assert c.duration / 1e6 > 0.9 and c.streams.video[0].duration is None  # as the muxer writes it
        report = video.upscale_video(fused, src, dst, codec="ffv1", pix_fmt="bgr0", progress=False)
        assert report.frames == 6 and report.audio_copied == 1
        assert audio_packets(dst) == audio_packets(src)
    good = tmp_path / "long.mkv"
    write_clip(good, moving_frames(40, 24, 32, seed=21), audio=("aac", 2.0))
    (tmp_path / "cut.mkv").write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.4)])
    with pytest.raises(video.VideoError, match="truncated or corrupt"):
        video.upscale_video(fused, tmp_path / "cut.mkv", tmp_path / "cut_x2.mkv", progress=False)
    assert not (tmp_path / "cut_x2.mkv").exists() and leftovers(tmp_path) == []


def test_avi_output_keeps_frame_times_and_reads_back(tmp_path, fused):
    """AVI stores one decode time per frame slot: the default x264 (B-frames) used to scramble the
    times, at a 600/s slot rate, and the file could not be read back. A variable rate keeps its
    gaps as empty slots."""
    pts = [0, 40, 80, 160, 200, 240, 360, 400]  # ms: 25/s slots 0 1 2 4 5 6 9 10
    src, avi = tmp_path / "in.mkv", tmp_path / "out.avi"
    write_clip(src, moving_frames(len(pts), 16, 24, seed=22), codec="ffv1", pix_fmt="bgr0",
               time_base=Fraction(1, 1000), pts=pts)
    report = video.upscale_video(fused, src, avi, progress=False)
    assert report.frames == len(pts) and report.codec == "libx264"
    with av.open(str(avi)) as c:
        s = c.streams.video[0]
        assert s.time_base == Fraction(1, 25) and s.average_rate == 25
        assert [p.dts for p in c.demux(s) if p.size] == [0, 1, 2, 4, 5, 6, 9, 10]
    with av.open(str(avi)) as c:
        stamps = [f.pts for f in c.decode(video=0)]  # FFmpeg guesses H.264-in-AVI times: in order now
    assert len(stamps) == len(pts) and stamps == sorted(stamps)
    back = tmp_path / "back.mkv"
    again = video.upscale_video(fused, avi, back, codec="ffv1", pix_fmt="bgr0", progress=False)
    assert again.frames == len(pts)
    assert [p for p, _, _ in decoded(back)] == pts


def test_avi_input_with_b_frames_comes_out_in_order(tmp_path, fused):
    """An AVI from another tool with B-frames: FFmpeg's guessed times are scrambled (1 4 3 5 2 ...);
    the frames, decoded in display order, take the file's frame slots 0, 1/25, 2/25 ..."""
    frames = moving_frames(10, 16, 32, seed=23)
    src, dst = tmp_path / "b.avi", tmp_path / "b_x2.mkv"
    write_clip(src, frames, codec="libx264")
    with av.open(str(src)) as c:
        guessed = [f.pts for f in c.decode(video=0)]
    assert guessed != sorted(guessed)  # the clip does have reordered frames
    report = video.upscale_video(fused, src, dst, codec="ffv1", pix_fmt="bgr0", progress=False)
    assert report.frames == 10
    out, inp = decoded(dst), decoded(src)
    assert [float(p * Fraction(1, 1000)) for p, _, _ in out] == [i / 25 for i in range(10)]
    for (_, o, _), (_, i, _) in zip(out, inp):
        np.testing.assert_array_equal(o, fused.upscale(i))


def test_repeated_timestamps_are_made_strictly_increasing(tmp_path, fused):
    src, dst = tmp_path / "dup.mkv", tmp_path / "dup_x2.mp4"
    write_clip(src, moving_frames(5, 8, 8, seed=24), codec="ffv1", pix_fmt="bgr0", time_base=Fraction(1, 1000),
               pts=[0, 40, 40, 80, 120])
    assert [p for p, _, _ in decoded(src)] == [0, 40, 40, 80, 120]
    assert video.upscale_video(fused, src, dst, progress=False).frames == 5
    with av.open(str(dst)) as c:  # each one a frame (1/25 s) after the last
        assert [f.pts * f.time_base for f in c.decode(video=0)] == [Fraction(k, 25) for k in range(5)]


def test_opus_and_flac_into_mov_are_reencoded(tmp_path, fused):
    """MOV's muxer refuses Opus and FLAC (MP4 only) though it lists them."""
    for codec in ("libopus", "flac"):
        src, dst = tmp_path / f"{codec}.mkv", tmp_path / f"{codec}.mov"
        write_clip(src, moving_frames(5, 16, 16, seed=25), codec="ffv1", pix_fmt="bgr0", audio=(codec, 0.5))
        report = video.upscale_video(fused, src, dst, progress=False)
        name = "opus" if codec == "libopus" else "flac"
        assert report.audio_reencoded == 1 and report.audio_copied == 0
        assert any(f"re-encoded as aac: .mov cannot hold {name}" in n for n in report.notes)
        with av.open(str(dst)) as c:
            assert c.streams.audio[0].codec_context.name == "aac"
            rate = c.streams.audio[0].codec_context.sample_rate
            samples = sum(f.samples for f in c.decode(audio=0))
        assert abs(samples / rate - 0.5) < 0.1


def test_encoder_arguments_are_checked_before_any_work(tmp_path, fused, monkeypatch):
    src = tmp_path / "in.mkv"
    write_clip(src, moving_frames(3, 8, 8, seed=26), codec="ffv1", pix_fmt="bgr0")
    real_probe = video._probe
    monkeypatch.setattr(video, "_probe", lambda *a: pytest.fail("probed before the arguments were checked"))
    dst = tmp_path / "new" / "out.mp4"
    for kwargs, message in [
        (dict(crf=-1), "crf for libx264 must be an integer from 0 to 51, got -1"),
        (dict(crf=52), "from 0 to 51, got 52"),
        (dict(codec="libvpx-vp9", crf=64), "crf for libvpx-vp9 must be an integer from 0 to 63"),
        (dict(codec="libsvtav1", crf=70), "from 0 to 63"),
        (dict(preset="turbo"), "preset for libx264 must be one of ultrafast, .*placebo, got 'turbo'"),
        (dict(codec="libsvtav1", preset=14), "libsvtav1 must be an integer from -1 to 13, got 14"),
        (dict(codec="libsvtav1", preset="fast"), "from -1 to 13, got 'fast'"),
        (dict(codec="aac"), "'aac' is an audio encoder, not a video encoder"),
        (dict(compare_frame=-1), "compare_frame must be a frame index"),
    ]:
        with pytest.raises(ValueError, match=message):
            video.upscale_video(fused, src, dst, progress=False, **kwargs)
    assert not (tmp_path / "new").exists()
    # The names FFmpeg users know select the tuned encoders, so their default CRF applies.
    for alias, name in [("h264", "libx264"), ("hevc", "libx265"), ("h265", "libx265"), ("vp9", "libvpx-vp9"),
                        ("av1", "libsvtav1")]:
        assert video._encoder_options(av, alias, None, None, None) == (name, video._CRF_OPTIONS[name](18))
    assert video._encoder_options(av, "libsvtav1", 63, "12", None)[1] == {"crf": "63", "preset": "12"}
    monkeypatch.setattr(video, "_probe", real_probe)
    report = video.upscale_video(fused, src, tmp_path / "alias.mp4", codec="h264", progress=False)
    assert report.codec == "libx264" and len(decoded(tmp_path / "alias.mp4")) == 3


def test_ffmpeg_errors_say_why(tmp_path):
    """The one-line error carries FFmpeg's own message, not only "Generic error"/"Invalid argument";
    PyAV's logging is left as it was."""
    net = randomize_(RepSRNet.preset("M2C8", scale=3), seed=9, scale=0.05).eval().reparameterize()
    src, dst = tmp_path / "odd.mkv", tmp_path / "odd_x3.mp4"
    write_clip(src, moving_frames(3, 11, 13, seed=27), codec="ffv1", pix_fmt="bgr0")
    with pytest.raises(video.VideoError, match=r"odd_x3\.mp4: .*libx264: width not divisible by 2 \(39x33\)"):
        video.upscale_video(FusedSR(net), src, dst, pix_fmt="yuv420p", progress=False)  # 4:2:0 needs even sizes
    assert not dst.exists() and leftovers(tmp_path) == []
    assert av.logging.get_level() is None
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 4000)
    with pytest.raises(video.VideoError, match="junk.mp4: cannot open as video: .*moov atom not found"):
        video.upscale_video(FusedSR(net), junk, tmp_path / "j.mp4", progress=False)


def test_mjpeg_defaults_work_in_full_range(tmp_path, fused):
    frames = [np.clip(f.astype(int) // 2 + 60, 0, 255).astype(np.uint8) for f in moving_frames(4, 16, 24, seed=28)]
    src = tmp_path / "in.mkv"
    write_clip(src, frames, codec="ffv1", pix_fmt="bgr0")
    for ext in (".avi", ".mov"):
        dst = tmp_path / f"mjpeg{ext}"
        report = video.upscale_video(fused, src, dst, codec="mjpeg", progress=False)
        assert report.frames == 4 and report.pix_fmt == "yuv420p"
        luma = np.array([0.299, 0.587, 0.114])
        with av.open(str(dst)) as c:
            for f, i in zip(c.decode(video=0), frames):
                assert f.color_range == 2  # JPEG: full range
                out, ref = f.to_ndarray(format="rgb24"), fused.upscale(i)
                assert luma_psnr(out, ref) > 33  # constant quality: every frame, not only the first
                # Converted in full range too: limited-range levels read as full would flatten the
                # contrast by 219/255 (a slope near 0.82 here; 4:2:0 and clipping make it 0.95).
                slope = np.polyfit((ref @ luma).ravel(), (out @ luma).ravel(), 1)[0]
                assert 0.92 < slope < 1.05, slope


def test_sample_aspect_ratio_is_kept_or_said_lost(tmp_path, fused):
    """MP4 / MOV keep the encoder's ratio; Matroska / WebM read it from the stream (which PyAV
    cannot set), so there it survives only in an H.264 / H.265 bitstream, and otherwise the report
    says it was not kept."""
    src = tmp_path / "sar.mp4"
    out = av.open(str(src), "w")
    vs = out.add_stream("libx264", rate=25)
    vs.width, vs.height, vs.pix_fmt = 24, 16, "yuv420p"  # x2: 48 wide, 64 displayed
    vs.codec_context.sample_aspect_ratio = Fraction(4, 3)
    for i, rgb in enumerate(moving_frames(3, 16, 24, seed=29)):
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        f.pts = i
        for p in vs.encode(f):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    out.close()
    for name, codec in [("out.mp4", None), ("vp9.mp4", "libvpx-vp9"), ("out.mov", None), ("x264.mkv", None)]:
        report = video.upscale_video(fused, src, tmp_path / name, codec=codec, progress=False)
        assert not any("aspect" in n for n in report.notes), name
        with av.open(str(tmp_path / name)) as c:
            assert c.streams.video[0].sample_aspect_ratio == Fraction(4, 3), name
    for name, codec in [("out.webm", None), ("out.mkv", "ffv1")]:
        report = video.upscale_video(fused, src, tmp_path / name, codec=codec, progress=False)
        assert any("sample aspect ratio 4/3 not kept" in n for n in report.notes), name


def test_rgb_input_gets_no_rgb_matrix_tag_on_yuv_output(tmp_path, fused):
    frames = [np.clip(f.astype(int) // 2 + 60, 0, 255).astype(np.uint8) for f in moving_frames(4, 16, 24, seed=30)]
    src, dst = tmp_path / "rgb.mkv", tmp_path / "yuv.mp4"
    write_clip(src, frames, codec="libx264rgb", pix_fmt="rgb24")
    with av.open(str(src)) as c:
        assert next(c.decode(video=0)).colorspace == 0  # RGB ("identity")
    video.upscale_video(fused, src, dst, progress=False)
    with av.open(str(dst)) as c:
        for f, (_, i, _) in zip(c.decode(video=0), decoded(src)):
            assert f.format.name == "yuv420p" and f.colorspace != 0
            assert luma_psnr(f.to_ndarray(format="rgb24"), fused.upscale(i)) > 30


def test_gif_loop_count_or_none_is_kept(tmp_path, fused):
    frames = [Image.fromarray(f) for f in moving_frames(3, 8, 10, seed=31)]
    once, thrice = tmp_path / "once.gif", tmp_path / "thrice.gif"
    frames[0].save(once, save_all=True, append_images=frames[1:], duration=60)  # no loop: plays once
    frames[0].save(thrice, save_all=True, append_images=frames[1:], duration=60, loop=3)

    def loop_of(path):
        with Image.open(path) as im:
            return im.info.get("loop")

    video.upscale_video(fused, once, tmp_path / "once_x2.gif", progress=False)
    assert loop_of(tmp_path / "once_x2.gif") is None and b"NETSCAPE" not in (tmp_path / "once_x2.gif").read_bytes()
    video.upscale_video(fused, thrice, tmp_path / "thrice_x2.gif", progress=False)
    assert loop_of(tmp_path / "thrice_x2.gif") == 3
    video.upscale_video(fused, once, tmp_path / "once_x2.webp", progress=False)
    assert loop_of(tmp_path / "once_x2.webp") == 1  # WebP always has a count: 1 plays once
    video.upscale_video(fused, tmp_path / "once_x2.webp", tmp_path / "once_again.gif", progress=False)
    assert loop_of(tmp_path / "once_again.gif") is None


def test_compare_frame_out_of_range(tmp_path, fused, monkeypatch):
    mp4, mkv = tmp_path / "in.mp4", tmp_path / "in.mkv"
    write_clip(mp4, moving_frames(4, 8, 8, seed=32))
    write_clip(mkv, moving_frames(4, 8, 8, seed=32), codec="ffv1", pix_fmt="bgr0")
    gif = tmp_path / "in.gif"
    still = [Image.fromarray(f) for f in moving_frames(4, 8, 8, seed=32)]
    still[0].save(gif, save_all=True, append_images=still[1:], duration=50, loop=0)
    monkeypatch.setattr(video._Run, "execute", lambda self: pytest.fail("ran past a refused compare frame"))
    for src in (mp4, gif):  # the count is declared (MP4) or known before any work (animations)
        for frame in (-1, 4):
            with pytest.raises(ValueError, match="compare"):
                video.upscale_video(fused, src, tmp_path / "new" / f"out{src.suffix}", compare_frame=frame,
                                    progress=False)
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    # Matroska declares no count: known only at the end, the video is kept, a note says so.
    report = video.upscale_video(fused, mkv, tmp_path / "out.mkv", compare_frame=4, progress=False)
    assert report.frames == 4 and report.compare is None
    assert any("compare frame 4 is past the 4 frames" in n for n in report.notes)
    report = video.upscale_video(fused, mkv, tmp_path / "out3.mkv", compare_frame=3, progress=False)
    assert report.compare is not None and report.compare[1].shape == (16, 16, 3)


def test_avi_notes_the_rotation_it_cannot_hold(tmp_path, fused):
    src, dst = tmp_path / "rot.mp4", tmp_path / "rot.avi"
    write_clip(src, moving_frames(3, 8, 12, seed=33), rotation=90)
    report = video.upscale_video(fused, src, dst, progress=False)
    assert "rotation 90 degrees not kept: AVI has no rotation metadata" in report.notes
    assert all(r == 0 for _, _, r in decoded(dst))


def test_failed_run_removes_the_folders_it_created(tmp_path, fused, monkeypatch):
    src = tmp_path / "in.mkv"
    write_clip(src, moving_frames(4, 8, 8, seed=34), codec="ffv1", pix_fmt="bgr0")
    (tmp_path / "there").mkdir()
    monkeypatch.setattr(av.VideoFrame, "from_ndarray",
                        staticmethod(lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))))
    for target in (tmp_path / "new" / "deeper" / "out.mkv", tmp_path / "there" / "sub" / "out.mkv"):
        with pytest.raises(OSError, match="disk full"):
            video.upscale_video(fused, src, target, progress=False)
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "there").is_dir() and list((tmp_path / "there").iterdir()) == []  # it was there before


def test_cli_compare_frame_out_of_range(tmp_path, capsys):
    """Negative: a usage error. Past a clip that declares its length (MP4): refused before any
    work, nothing written. Past one that does not (Matroska): the video is kept, with a warning."""
    frames = moving_frames(4, 10, 14, seed=40)
    mp4, mkv = tmp_path / "clip.mp4", tmp_path / "clip.mkv"
    write_clip(mp4, frames)
    write_clip(mkv, frames, codec="ffv1", pix_fmt="bgr0")
    base = ["--no-progress", "--compare", "--scale", "2"]
    assert main(["upscale", str(mp4), "-o", str(tmp_path / "a.mp4"), *base, "--compare-frame", "-1"]) == 2
    assert main(["upscale", str(mp4), "-o", str(tmp_path / "b.mp4"), *base, "--compare-frame", "4"]) == 1
    assert not (tmp_path / "b.mp4").exists() and not (tmp_path / "b_compare.png").exists()
    capsys.readouterr()
    assert main(["upscale", str(mkv), "-o", str(tmp_path / "c.mkv"), *base, "--compare-frame", "9"]) == 0
    assert "--compare-frame 9 is past its 4 frames" in capsys.readouterr().err
    assert (tmp_path / "c.mkv").is_file() and not (tmp_path / "c_compare.png").exists()


def test_cli_failed_video_leaves_no_folders(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    assert main(["upscale", str(bad), "-o", str(tmp_path / "nd" / "deep" / "x.mp4"), "--no-progress"]) == 1
    assert not (tmp_path / "nd").exists()
