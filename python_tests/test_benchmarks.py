"""Fused op vs PyTorch eager vs ONNX Runtime, side by side in one run (pytest-benchmark).

Not timed in CI (pyproject sets --benchmark-disable: each case runs once, as a smoke test).
Time them with:
    python -m pytest python_tests/test_benchmarks.py --benchmark-enable --benchmark-json=benchmarks/cpu.json
    python benchmarks/summarize.py benchmarks/cpu.json
"""
import os

import pytest
import torch

from helpers import randomize_, rel_err
from repsr_ext import FusedSR, RepSRNet, ops


@pytest.fixture(scope="module", autouse=True)
def extension():
    ops.require_extension()  # fail loudly, with the fix, rather than skip


# (preset, LR height, LR width), x4, batch 1: the cases of the engine issue.
CASES = [("M4C16", 180, 320), ("M4C32", 180, 320), ("M10C32", 180, 320), ("M16C64", 90, 160)]
SCALE = 4


@pytest.fixture(scope="module", autouse=True)
def all_cores():
    previous = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count())
    yield
    torch.set_num_threads(previous)


def _model(preset):
    net = randomize_(RepSRNet.preset(preset, scale=SCALE), seed=0, scale=0.1).eval()
    return net.reparameterize()


def _input(h, w):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("preset,h,w", CASES, ids=[c[0] for c in CASES])
def test_fused(benchmark, preset, h, w):
    benchmark.group = preset
    plain, x = _model(preset), _input(h, w)
    fused = FusedSR.load(plain)
    out = benchmark(fused, x)
    with torch.inference_mode():
        assert rel_err(out, plain.double()(x.double())) <= 1e-5


@pytest.mark.parametrize("preset,h,w", CASES, ids=[c[0] for c in CASES])
def test_torch_eager(benchmark, preset, h, w):
    """PyTorch at its best on this CPU: channels_last (oneDNN), inference_mode, all cores."""
    benchmark.group = preset
    plain = _model(preset).to(memory_format=torch.channels_last)
    x = _input(h, w).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            return plain(x)

    assert benchmark(run).shape == (1, 3, h * SCALE, w * SCALE)


@pytest.mark.parametrize("preset,h,w", CASES, ids=[c[0] for c in CASES])
def test_onnxruntime(benchmark, preset, h, w, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from repsr_ext.formats import export_onnx

    benchmark.group = preset
    plain, x = _model(preset), _input(h, w)
    path = tmp_path / "model.onnx"
    export_onnx(plain, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"lr": x.numpy()}
    out = benchmark(session.run, None, feed)[0]
    with torch.inference_mode():
        assert rel_err(torch.from_numpy(out), plain.double()(x.double())) <= 1e-5
