"""The `repsr` command line, through cli.main([...]) (and once through `python -m repsr_ext`)."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from repsr_ext import FusedSR, PlainSR, RepSRNet, cli, ops
from repsr_ext.images import read_image_file
from repsr_ext.cli import main
from repsr_ext.train import TrainConfig, train

SCALE = 2
IMAGE_SIZES = {"a": (40, 48), "b": (36, 44)}  # name -> (height, width)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    torch.manual_seed(0)
    RepSRNet.preset("M1C4", scale=SCALE).eval().reparameterize().save(path)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (height, width) in IMAGE_SIZES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def upscaled_size(name):
    height, width = IMAGE_SIZES[name]
    return width * SCALE, height * SCALE  # PIL order


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["train"], ["export"], ["upscale"], ["eval"], ["bench"], ["info"]],
                         ids=lambda c: c[0] if c else "repsr")
def test_help(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert out.startswith(f"usage: {' '.join(['repsr', *command])}")


def test_python_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "repsr_ext", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("train", "export", "upscale", "eval", "bench", "info"):
        assert command in result.stdout


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert torch.__version__ in out
    for text in ("CPU ISA", ops.cpu_isa(), "backends", "threads", "CUDA devices"):
        assert text in out


def test_upscale_file_with_compare(capsys, tiny_model, images, tmp_path):
    output = tmp_path / "out" / "a_x2.png"
    output.parent.mkdir()
    code, out, _ = run(capsys, "upscale", images / "a.png", "-o", output, "--model", tiny_model, "--compare")
    assert code == 0 and "wrote" in out
    assert Image.open(output).size == upscaled_size("a")
    width, height = upscaled_size("a")
    compare = Image.open(output.with_name("a_x2_compare.png"))
    assert compare.width == 2 * width and compare.height > height  # side by side, with a label strip


def test_upscale_folder(capsys, tiny_model, images, tmp_path):
    code, _, _ = run(capsys, "upscale", images, "-o", tmp_path / "out", "--model", tiny_model, "--tile", "16")
    assert code == 0
    for name in IMAGE_SIZES:
        assert Image.open(tmp_path / "out" / f"{name}.png").size == upscaled_size(name)


def test_upscale_glob(capsys, tiny_model, images, tmp_path):
    code, _, _ = run(capsys, "upscale", f"{images}/a*.png", "-o", tmp_path / "out", "--model", tiny_model)
    assert code == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]
    assert Image.open(tmp_path / "out" / "a.png").size == upscaled_size("a")


def test_upscale_without_input_uses_the_shipped_model(capsys, tmp_path, monkeypatch):
    if not (cli.MODELS_DIR / "repsr_m4c16_x4.safetensors").is_file():
        pytest.skip("the shipped x4 model is not in this checkout")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "upscale")
    assert code == 0 and "astronaut" in out
    assert Image.open(tmp_path / "repsr_demo_x4.png").size == (2048, 2048)


def test_export_from_checkpoint(capsys, tmp_path):
    result = train(TrainConfig(preset="M1C4", scale=SCALE, iterations=5, patch_size=16, batch_size=2,
                               ema_decay=0.9, val_every=0, progress=False, output=str(tmp_path / "run")))
    output = tmp_path / "exported.safetensors"
    code, out, _ = run(capsys, "export", result.checkpoint_path, "-o", output)
    assert code == 0 and "EMA weights" in out
    # The trainer deploys the EMA weights too: both files must hold the same network.
    exported, deployed = PlainSR.load(output), PlainSR.load(result.model_path)
    for a, b in zip(exported.state_dict().values(), deployed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_export_deployed_to_onnx_and_srvgg(capsys, tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    code, out, _ = run(capsys, "export", tiny_model, "-o", tmp_path / "m.safetensors",
                       "--onnx", tmp_path / "m.onnx", "--srvgg", tmp_path / "m.pth")
    assert code == 0
    assert "checked with ONNX Runtime" in out
    assert PlainSR.load(tmp_path / "m.pth").scale == SCALE
    assert PlainSR.load(tmp_path / "m.safetensors").channels == PlainSR.load(tiny_model).channels


def test_eval_table(capsys, tiny_model, images, tmp_path):
    table = tmp_path / "scores.csv"
    code, out, _ = run(capsys, "eval", "--model", tiny_model, images, "--csv", table)
    assert code == 0
    lines = out.splitlines()
    for name in IMAGE_SIZES:
        assert any(line.startswith(f"{name} ") for line in lines)
    assert any(line.startswith("mean (2)") for line in lines)
    rows = list(csv.reader(open(table)))
    assert rows[0][:3] == ["image", "size", "bicubic PSNR"] and len(rows) == 1 + 2 + 1


def test_bench(capsys):
    code, out, _ = run(capsys, "bench", "--preset", "M1C4", "--scale", "2", "--size", "12x16", "--repeats", "1")
    assert code == 0
    assert "PyTorch eager" in out and "repsr_ext fused" in out


@pytest.mark.parametrize("case", ["missing input", "missing model", "garbage model", "unknown preset",
                                  "output is input", "bad size", "train: unknown preset", "train: nothing to resume"])
def test_errors_are_one_line(capsys, tiny_model, images, tmp_path, case):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 4)
    argv = {
        "missing input": ["upscale", tmp_path / "nothing.png", "-o", tmp_path / "x.png", "--model", tiny_model],
        "missing model": ["eval", "--model", tmp_path / "nothing.safetensors"],
        "garbage model": ["upscale", images / "a.png", "-o", tmp_path / "x.png", "--model", garbage],
        "unknown preset": ["bench", "--preset", "M4Q16"],
        "output is input": ["upscale", images / "a.png", "-o", images / "a.png", "--model", tiny_model],
        "bad size": ["bench", "--size", "big"],
        "train: unknown preset": ["train", "--preset", "M4Q16", "--output", tmp_path / "run"],
        "train: nothing to resume": ["train", "--output", tmp_path / "run", "--resume"],
    }[case]
    code, _, err = run(capsys, *argv)
    assert code != 0
    assert "Traceback" not in err
    prefix = "repsr train: error: " if case.startswith("train") else "repsr: error: "
    assert len(err.strip().splitlines()) == 1 and err.startswith(prefix), err


# --- batches as users run them ---------------------------------------------------------------------


def _mixed_folder(tmp_path):
    """Good PNG, good 16-bit TIFF, truncated PNG, empty file, text named .jpg."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / "good.png")
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(folder / "sub" / "wide.tif", rng.integers(0, 65536, (8, 6, 3), dtype=np.uint16), photometric="rgb")
    whole = folder / "good.png"
    (folder / "truncated.png").write_bytes(whole.read_bytes()[:60])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is text, not a JPEG\n")
    return folder


def test_batch_keeps_going_past_bad_files(capsys, tiny_model, tmp_path):
    folder = _mixed_folder(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "upscale", folder, "-o", out, "--model", tiny_model)
    assert code == 1  # something failed
    assert "2 written, 3 failed, 0 skipped" in stdout
    failures = [line for line in err.splitlines() if line.startswith("repsr: failed:")]
    assert len(failures) == 3 and "Traceback" not in err
    for name in ("truncated.png", "empty.png", "notes.jpg"):
        assert any(name in line for line in failures), name
    assert Image.open(out / "good.png").size == (10 * SCALE, 12 * SCALE)
    wide = out / "sub" / "wide.png"  # .tif found in a subfolder, written as 16-bit PNG
    assert read_image_file(wide).bit_depth == 16
    assert sorted(p.name for p in out.rglob("*")) == ["good.png", "sub", "wide.png"]  # no partial files


def test_existing_outputs_need_overwrite_or_skip(capsys, tiny_model, images, tmp_path):
    out = tmp_path / "out"
    assert run(capsys, "upscale", images, "-o", out, "--model", tiny_model)[0] == 0
    (out / "a.png").write_bytes(b"the user's edit")
    code, _, err = run(capsys, "upscale", images, "-o", out, "--model", tiny_model)
    assert code == 2 and "already exist" in err and "--overwrite" in err and "--skip-existing" in err
    assert (out / "a.png").read_bytes() == b"the user's edit"
    (out / "b.png").unlink()
    code, stdout, _ = run(capsys, "upscale", images, "-o", out, "--model", tiny_model, "--skip-existing")
    assert code == 0 and "1 written, 0 failed, 1 skipped" in stdout
    assert (out / "a.png").read_bytes() == b"the user's edit" and (out / "b.png").is_file()
    code, _, _ = run(capsys, "upscale", images, "-o", out, "--model", tiny_model, "--overwrite")
    assert code == 0 and Image.open(out / "a.png").size == upscaled_size("a")


def test_output_folder_is_made(capsys, tiny_model, images, tmp_path):
    target = tmp_path / "new" / "dir"
    code, _, _ = run(capsys, "upscale", images / "a.png", "-o", f"{target}/", "--model", tiny_model)
    assert code == 0 and Image.open(target / "a.png").size == upscaled_size("a")


def test_single_bad_file_is_one_line_error(capsys, tiny_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    code, _, err = run(capsys, "upscale", bad, "-o", tmp_path / "out.png", "--model", tiny_model)
    assert code == 1 and err.startswith("repsr: error: cannot read image") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_pixel_limit_option(capsys, tiny_model, images, tmp_path):
    argv = ["upscale", images / "a.png", "-o", tmp_path / "o.png", "--model", tiny_model]
    code, _, err = run(capsys, *argv, "--max-pixels", "100")
    assert code == 1 and "over the limit of 100" in err and "--max-pixels" in err
    assert run(capsys, *argv, "--max-pixels", "100000")[0] == 0


def test_bit_depth_quality_and_compare_with_alpha(capsys, tiny_model, tmp_path):
    rgba = np.dstack([np.random.default_rng(4).integers(0, 256, (10, 12, 3), dtype=np.uint8),
                      np.linspace(0, 255, 120).reshape(10, 12).astype(np.uint8)])
    source = tmp_path / "logo.png"
    Image.fromarray(rgba).save(source)
    out = tmp_path / "logo_x2.png"
    code, _, _ = run(capsys, "upscale", source, "-o", out, "--model", tiny_model, "--bit-depth", "16", "--compare")
    assert code == 0
    picture = read_image_file(out)
    assert picture.bit_depth == 16 and picture.alpha is not None
    compare = Image.open(tmp_path / "logo_x2_compare.png")
    assert compare.mode == "RGBA" and compare.width == 2 * 24
    code, _, err = run(capsys, "upscale", source, "-o", tmp_path / "x.jpg", "--model", tiny_model, "--bit-depth", "16")
    assert code == 2 and "8 bits per channel" in err  # a usage error, found before the model loads
    code, _, err = run(capsys, "upscale", source, "-o", tmp_path / "q.jpg", "--model", tiny_model, "--quality", "50")
    assert code == 0 and "alpha channel dropped" in err
    assert run(capsys, "upscale", source, "-o", tmp_path / "z.jpg", "--quality", "101")[0] == 2


# --- activation-less SRVGG files -------------------------------------------------------------------


def _relu_srvgg(tmp_path):
    g = torch.Generator().manual_seed(5)
    widths = [3, 8, 8, 3 * SCALE * SCALE]
    state = {}
    for k, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        state[f"body.{2 * k}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.2
        state[f"body.{2 * k}.bias"] = torch.randn(cout, generator=g) * 0.1
    path = tmp_path / "relu_srvgg.pth"
    torch.save({"params": state}, path)
    return path, state


def _srvgg_relu_forward64(state, x):
    y = x.double()
    n = len(state) // 2
    for k in range(n):
        y = F.conv2d(y, state[f"body.{2 * k}.weight"].double(), state[f"body.{2 * k}.bias"].double(), padding=1)
        if k < n - 1:
            y = F.relu(y)
    return F.pixel_shuffle(y, SCALE) + F.interpolate(x.double(), scale_factor=SCALE, mode="nearest")


def test_act_option_for_srvgg_without_prelu(capsys, tmp_path):
    path, state = _relu_srvgg(tmp_path)
    code, _, err = run(capsys, "export", path, "-o", tmp_path / "guess.safetensors")
    assert code == 2 and "--act relu or --act lrelu" in err and not (tmp_path / "guess.safetensors").exists()
    code, _, _ = run(capsys, "export", path, "-o", tmp_path / "relu.safetensors", "--act", "relu",
                     "--srvgg", tmp_path / "relu_prelu_form.pth")
    assert code == 0
    x = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(6))
    ref = _srvgg_relu_forward64(state, x)
    for exported in ("relu.safetensors", "relu_prelu_form.pth"):
        with torch.no_grad():
            y = PlainSR.load(tmp_path / exported)(x).double()
        assert ((y - ref).norm() / ref.norm()).item() < 1e-6, exported
    fused = FusedSR.load(path, act="relu")
    assert ((fused(x).double() - ref).norm() / ref.norm()).item() < 1e-6
    with pytest.warns(UserWarning, match="assuming 'lrelu'"):
        FusedSR.load(path)
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image)
    code, _, err = run(capsys, "upscale", image, "-o", tmp_path / "out.png", "--model", path)
    assert code == 0 and err.startswith("repsr: warning:") and "--act relu" in err  # one line, not a traceback
    assert run(capsys, "upscale", image, "-o", tmp_path / "out2.png", "--model", path, "--act", "relu")[0] == 0


# --- one-line errors -------------------------------------------------------------------------------


def test_more_errors_are_one_line(capsys, tiny_model, images, tmp_path):
    photo = images / "a.png"
    code, _, err = run(capsys, "export", photo, "-o", tmp_path / "m.safetensors")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "weights_only=False" not in err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    not_a_checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    not_a_checkpoint.write_bytes(b"junk" * 100)
    code, _, err = run(capsys, "train", "--output", tmp_path / "run", "--resume", not_a_checkpoint)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "not a repsr_ext training checkpoint" in err
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "h.png", "--model", tiny_model, "--dtype", "float16",
                       "--device", "cpu")
    assert code == 1 and "float16 is not supported on cpu" in err


def test_broken_pipe_is_quiet():
    """`repsr info | head -0`: the reader is gone before the first write (closed here before the
    interpreter has even imported torch), so every write fails with EPIPE."""
    process = subprocess.Popen([sys.executable, "-m", "repsr_ext", "info"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    err = err.decode()
    assert process.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


# --- the demo, folders, dtype, --debug, eval --csv (QA pass) ---------------------------------------


def _needs_demo_photo():
    from repsr_ext.data import embedded_images

    try:
        embedded_images("val")
    except Exception as e:  # scikit-image's photographs missing
        pytest.skip(f"no held-out photograph: {e}")


def test_demo_checks_its_outputs_as_file_mode_does(capsys, tiny_model, tmp_path, monkeypatch):
    """Demo mode used to overwrite existing files without --overwrite."""
    _needs_demo_photo()
    monkeypatch.chdir(tmp_path)
    demo = ["upscale", "--model", tiny_model]
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"the user's file")
    code, _, err = run(capsys, *demo, "-o", precious)
    assert code == 2 and "already exist" in err and precious.read_bytes() == b"the user's file"
    code, out, _ = run(capsys, *demo, "-o", precious, "--skip-existing")
    assert code == 0 and "kept" in out and precious.read_bytes() == b"the user's file"
    compare = tmp_path / f"repsr_demo_x{SCALE}_compare.png"
    compare.write_bytes(b"an earlier compare")
    code, _, err = run(capsys, *demo, "--compare")
    assert code == 2 and "_compare.png already exist" in err and compare.read_bytes() == b"an earlier compare"
    assert not (tmp_path / f"repsr_demo_x{SCALE}.png").exists()
    assert run(capsys, *demo, "--compare", "--overwrite")[0] == 0
    assert Image.open(compare).width == 2 * 512 * SCALE
    # -o folder/: made, and the demo's name inside it
    code, _, _ = run(capsys, *demo, "-o", "new/folder/")
    assert code == 0 and Image.open(tmp_path / "new" / "folder" / f"repsr_demo_x{SCALE}.png").size == (1024, 1024)
    # usage errors before the work, and --bit-depth as in file mode
    for argv, why in ((["-o", "demo.xyz"], "not an image format"), (["-o", "demo.jpg", "--bit-depth", "16"], "8 bits"),
                      (["-o", "demo.ico"], "at most 256x256")):
        code, _, err = run(capsys, *demo, *argv)
        assert code == 2 and why in err and not (tmp_path / argv[1]).exists(), argv
    assert run(capsys, *demo, "-o", "deep.png", "--bit-depth", "16")[0] == 0
    assert read_image_file(tmp_path / "deep.png").bit_depth == 16


def test_compare_of_16bit_grey_is_not_white(capsys, tiny_model, tmp_path):
    ramp = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype("<u2")
    source = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(source)
    out = tmp_path / "out.png"
    assert run(capsys, "upscale", source, "-o", out, "--model", tiny_model, "--compare")[0] == 0
    compare = np.asarray(Image.open(tmp_path / "out_compare.png").convert("L")).astype(np.float64)
    width = 40 * SCALE
    result8 = read_image_file(out).to_bit_depth(8).color[:, :, 0].astype(np.float64)
    assert abs(compare[16:, width:].mean() - result8.mean()) < 1  # the right half is the result, at 8 bits
    assert abs(compare[16:, :width].mean() - ramp.mean() / 257) < 3  # the left, its bicubic input


def test_output_folder_inside_the_input_folder_is_not_input(capsys, tiny_model, images):
    out = images / "x2"
    code, stdout, _ = run(capsys, "upscale", images, "-o", out, "--model", tiny_model)
    assert code == 0 and "2 written" in stdout
    code, stdout, _ = run(capsys, "upscale", images, "-o", out, "--model", tiny_model, "--skip-existing")
    assert code == 0 and "0 written, 0 failed, 2 skipped" in stdout
    code, _, err = run(capsys, "upscale", images, "-o", out, "--model", tiny_model)
    assert code == 2 and "already exist" in err and "refusing to overwrite the input" not in err
    code, stdout, _ = run(capsys, "upscale", f"{images}/**/*.png", "-o", out, "--model", tiny_model, "--skip-existing")
    assert code == 0 and "2 skipped" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # no x2/x2/...


def test_hidden_videos_in_folders_are_left_out(capsys, tiny_model, images, tmp_path):
    (images / "._clip.mp4").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not a video
    (images / ".hidden.mkv").write_bytes(b"")
    code, stdout, _ = run(capsys, "upscale", images, "-o", tmp_path / "out", "--model", tiny_model)
    assert code == 0 and "2 written, 0 failed" in stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


def test_unreadable_gif_or_webp_is_an_image_error(capsys, tiny_model, tmp_path):
    """Not a usage error about video containers (video.is_video_path takes what PIL cannot open
    for a video)."""
    for name, content in (("bad.webp", b"RIFF, not really"), ("empty.gif", b"")):
        (tmp_path / name).write_bytes(content)
        code, _, err = run(capsys, "upscale", tmp_path / name, "-o", tmp_path / f"x_{name}", "--model", tiny_model)
        assert code == 1 and err.startswith("repsr: error: cannot read image") and name in err, err


def test_half_precision_with_device_auto_on_a_cpu(capsys, tiny_model, images, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, "upscale", images / "a.png", "-o", tmp_path / "h.png", "--model", tiny_model,
                       "--dtype", "float16")
    assert code == 0 and "runs float32" in err and Image.open(tmp_path / "h.png").size == upscaled_size("a")
    code, out, err = run(capsys, "eval", "--model", tiny_model, images, "--dtype", "bfloat16")
    assert code == 0 and "runs float32" in err and "mean (2)" in out
    # an explicit CPU stays an error (test_more_errors_are_one_line)


def test_debug_after_the_command(capsys, tiny_model, tmp_path):
    argv = ["upscale", tmp_path / "missing.png", "-o", tmp_path / "x.png", "--model", tiny_model]
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    for where in ("before", "after"):
        with pytest.raises(FileNotFoundError):  # --debug: the exception itself, with its traceback
            main([str(a) for a in (["--debug", *argv] if where == "before" else [*argv, "--debug"])])
    assert main(["info", "--debug"]) == 0


def test_eval_csv_is_checked_before_the_work(capsys, tiny_model, images, tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    # the --csv error comes first, before the (missing) model is even looked for
    code, _, err = run(capsys, "eval", "--model", tmp_path / "missing.safetensors", images, "--csv", folder)
    assert code == 2 and "is a folder" in err
    table = tmp_path / "new" / "dir" / "scores.csv"
    code, out, _ = run(capsys, "eval", "--model", tiny_model, images, "--csv", table)
    assert code == 0 and len(list(csv.reader(open(table)))) == 1 + 2 + 1
