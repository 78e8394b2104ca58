"""The fused CUDA chain against PyTorch/cuDNN at its best, side by side in one run, on a GPU.

Skipped without a GPU and the extension's CUDA backend. Cases: x4, LR 1280x720, batch 1 and 8,
presets M4C16, M4C32, M10C32, M16C64 (random weights, deployed form). Per case:

    fused fp32 / fp16 / bf16        torch.ops.repsr_ext.fused_sr (FusedSR)
    cudnn fp16                      channels_last, cudnn.benchmark, inference_mode
    cudnn fp16 graph                the same captured in a CUDA graph (no launch overhead)
    cudnn fp32 tf32 / fp32 strict   channels_last, TF32 convs on / off
    compile fp16                    torch.compile of the same net (REPSR_BENCH_COMPILE=0 skips it)

Each is warmed up and timed with CUDA events (median of REPEATS runs of one call), also reported
to pytest-benchmark (wall time, synchronized). Beside each case: its floors, measured in the same
run -- FLOPs over the measured fp16 matmul rate, and the minimum bytes (input read once, output
written once) over the measured device-to-device copy bandwidth -- and, where the model
(benchmarks/gpu_model.py) gives one, the predicted time. Everything goes to a JSON file:
$REPSR_BENCH_JSON, default benchmarks/cuda_results.json.

    python -m pytest python_tests/test_benchmarks_cuda.py --benchmark-enable -q
"""
import json
import os
import statistics
from pathlib import Path

import pytest
import torch

from helpers import randomize_, rel_err
from repsr_ext import FusedSR, RepSRNet, ops

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.has_backend("cuda")),
    reason="needs a CUDA device and the extension's CUDA backend",
)

PRESETS = ["M4C16", "M4C32", "M10C32", "M16C64"]
BATCHES = [1, 8]
SCALE, HEIGHT, WIDTH = 4, 720, 1280
REPEATS = int(os.environ.get("REPSR_BENCH_REPEATS", "10"))
RESULTS: list[dict] = []
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_ms(fn, repeats=REPEATS, warmup=3) -> float:
    """Median milliseconds of one call, by CUDA events around each call, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@pytest.fixture(scope="session")
def device_rates():
    """The floors' rates, measured here: fp16 matmul FLOP/s and device copy bytes/s."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    matmul_ms = cuda_ms(lambda: a @ b, repeats=10)
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = cuda_ms(lambda: dst.copy_(src), repeats=10)
    rates = {"fp16_matmul_flops": 2 * n ** 3 / (matmul_ms * 1e-3),
             "copy_bytes_per_s": 2 * src.numel() / (copy_ms * 1e-3),  # read + write
             "device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}
    del a, b, src, dst
    torch.cuda.empty_cache()
    return rates


@pytest.fixture(scope="session", autouse=True)
def write_json(request):
    yield
    if not RESULTS:
        return
    path = Path(os.environ.get("REPSR_BENCH_JSON", "benchmarks/cuda_results.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cases": RESULTS}, indent=1))


def _plain(preset):
    net = randomize_(RepSRNet.preset(preset, scale=SCALE), seed=0, scale=0.1).eval()
    return net.reparameterize()


def _flops(plain, batch) -> float:
    macs_per_pixel = sum(9 * c.in_channels * c.out_channels for c in plain.convs)
    return 2.0 * macs_per_pixel * batch * HEIGHT * WIDTH


def _min_bytes(batch, element) -> float:
    pixels = batch * 3 * HEIGHT * WIDTH
    return pixels * element * (1 + SCALE * SCALE)


def _prediction(preset, batch, variant):
    """benchmarks/gpu_model.py's predict_ms, when that file exists and knows the case."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_model.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("gpu_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.predict_ms(preset, batch, variant, torch.cuda.get_device_name())


def _record(benchmark, rates, preset, batch, variant, fn, element_bytes, plain):
    ms = cuda_ms(fn)

    def synced():
        fn()
        torch.cuda.synchronize()

    benchmark.group = f"{preset} b{batch}"
    benchmark.pedantic(synced, rounds=3, iterations=1, warmup_rounds=1)
    flops = _flops(plain, batch)
    entry = {
        "preset": preset, "batch": batch, "variant": variant, "cuda_event_ms": ms,
        "compute_floor_ms": flops / rates["fp16_matmul_flops"] * 1e3,
        "memory_floor_ms": _min_bytes(batch, element_bytes) / rates["copy_bytes_per_s"] * 1e3,
        "predicted_ms": _prediction(preset, batch, variant),
        "device": rates["device"], "torch": rates["torch"], "cuda": rates["cuda"],
        "fp16_matmul_tflops": rates["fp16_matmul_flops"] / 1e12, "copy_gb_per_s": rates["copy_bytes_per_s"] / 1e9,
    }
    benchmark.extra_info.update(entry)
    RESULTS.append(entry)


CASES = [(p, b) for p in PRESETS for b in BATCHES]
IDS = [f"{p}-b{b}" for p, b in CASES]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("preset,batch", CASES, ids=IDS)
def test_fused(benchmark, device_rates, preset, batch, dtype_name):
    dtype = DTYPES[dtype_name]
    plain = _plain(preset)
    fused = FusedSR(plain, device="cuda", dtype=dtype)
    x = torch.rand(batch, 3, HEIGHT, WIDTH, device="cuda", dtype=dtype)
    out = fused(x)
    # A check, not a benchmark of correctness: the first image against PyTorch's fp32 chain.
    with torch.inference_mode():
        ref = plain.cuda()(x[:1].float())
    assert rel_err(out[:1].float(), ref) < (1e-5 if dtype == torch.float32 else 2e-2)
    _record(benchmark, device_rates, preset, batch, f"fused {dtype_name}", lambda: fused(x), x.element_size(), plain)


@pytest.mark.parametrize("variant", ["cudnn fp16", "cudnn fp16 graph", "cudnn fp32 tf32", "cudnn fp32 strict",
                                     "compile fp16"])
@pytest.mark.parametrize("preset,batch", CASES, ids=IDS)
def test_torch(benchmark, device_rates, preset, batch, variant):
    if variant == "compile fp16" and os.environ.get("REPSR_BENCH_COMPILE", "1") == "0":
        pytest.skip("REPSR_BENCH_COMPILE=0")
    torch.backends.cudnn.benchmark = True
    tf32 = variant == "cudnn fp32 tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    dtype = torch.float16 if "fp16" in variant else torch.float32
    plain = _plain(preset).to(device="cuda", dtype=dtype, memory_format=torch.channels_last)
    x = torch.rand(batch, 3, HEIGHT, WIDTH, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)

    def eager():
        with torch.inference_mode():
            return plain(x)

    fn = eager
    if variant == "cudnn fp16 graph":
        for _ in range(3):  # cudnn.benchmark picks its algorithms before capture
            eager()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = eager()
        fn = graph.replay
        assert static_out.shape == (batch, 3, HEIGHT * SCALE, WIDTH * SCALE)
    elif variant == "compile fp16":
        compiled = torch.compile(plain)

        def fn():
            with torch.inference_mode():
                return compiled(x)

    try:
        _record(benchmark, device_rates, preset, batch, variant, fn, x.element_size(), _plain(preset))
    finally:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = False
