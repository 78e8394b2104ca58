"""The `repsr` command line, through cli.main([...]) (and once through `python -m repsr_ext`)."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from repsr_ext import PlainSR, RepSRNet, cli, ops
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
