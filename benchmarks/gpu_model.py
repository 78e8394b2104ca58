"""A performance model of the fused CUDA chain on H100 SXM and H200, with a lower bound for the
layer-by-layer cuDNN chain beside it. A PREDICTION, not a measurement: it is what can be known
without the chip, to be confirmed or corrected by one device run (python_tests/gpu_check.sh).

Inputs: benchmarks/gpu_model_counters.json, written by the CUDA emulator from the real kernels:

    cmake --build build/cmake --target test_cuda_emulated_plain
    build/cmake/csrc/cuda/emulation/test_cuda_emulated_plain --model-json benchmarks/gpu_model_counters.json
    python benchmarks/gpu_model.py                  # Markdown tables, one per GPU

For every benchmark case (x4, LR 1280x720, batch 1 and 8, M4C16 / M4C32 / M10C32 / M16C64, fp32 /
fp16 / bf16 NCHW and the uint8 NHWC image path) it holds the segment plan the CUDA planner picks
(the emulated device has the H100/H200's 132 SMs and 227 KiB of shared memory per block, so the
plan is the one these GPUs get), the useful and the executed MACs of each segment (executed:
at kernel granularity, channel padding and halo recomputation included), and the emulator's
counters of four sampled blocks per segment (corners and middle), which this model scales to the
whole launch.

Per segment:  time = max(compute, HBM, shared memory) + launch overhead, where
  compute  executed MACs / the path's MAC rate (below), divided by the wave utilisation
           (blocks / (waves x resident block slots));
  HBM      bytes that must cross HBM once (tiles with their halos -- neighbouring tiles' halos
           are counted again, an upper bound where L2 would serve them --, boundary maps, the
           output at the sector efficiency the emulator counted, the residual input), over the
           achievable bandwidth; weights (a few hundred KB, L2-resident) are left out;
  shared   wavefronts (ldmatrix + loads + stores, counted with their bank conflicts) at one
           wavefront per clock per SM.
The cuDNN chain's lower bound: every layer reads its input map and writes its output map once at
full HBM bandwidth or computes at the dense tensor-core (or TF32 / FP32) peak, whichever is
slower, plus a pixel-shuffle pass and a residual pass, and the same launch overhead per kernel.
A real cuDNN run is slower than this bound, so the predicted speed-up is a lower bound too.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COUNTERS = HERE / "gpu_model_counters.json"

# Published figures (dense, without sparsity).
GPUS = {
    "H100 SXM": {
        "sms": 132, "clock_hz": 1.98e9, "hbm_bytes_per_s": 3.35e12, "fp16_tensor_flops": 989.4e12,
        "tf32_tensor_flops": 494.7e12, "fp32_flops": 66.9e12, "smem_per_sm": 228 * 1024,
        "source": "NVIDIA H100 Tensor Core GPU datasheet, SXM5 column (FP16/BF16 989.4 TFLOPS dense, "
                  "TF32 494.7, FP32 66.9, HBM3 3.35 TB/s); 132 SMs, 1.98 GHz boost, 228 KiB shared "
                  "memory per SM: NVIDIA Hopper architecture whitepaper / CUDA programming guide",
    },
    "H200": {
        "sms": 132, "clock_hz": 1.98e9, "hbm_bytes_per_s": 4.8e12, "fp16_tensor_flops": 989.4e12,
        "tf32_tensor_flops": 494.7e12, "fp32_flops": 66.9e12, "smem_per_sm": 228 * 1024,
        "source": "NVIDIA H200 Tensor Core GPU datasheet, SXM column (same GH100 compute as H100 SXM, "
                  "HBM3e 4.8 TB/s)",
    },
}

# Assumptions, each to be replaced by what the device run measures.
MMA_SYNC_FRACTION = 0.66    # mma.sync (the sm_80 instruction used here) vs Hopper's wgmma peak
FFMA_FRACTION = 0.8         # the float32 kernel's FFMA issue rate vs the FP32 peak
HBM_FRACTION = 0.9          # achievable share of the HBM bandwidth
LAUNCH_S = 3e-6             # per kernel launch, back to back on one stream
SCALE = 4


def element_bytes(io: str) -> int:
    return {"f32 nchw": 4, "f16 nchw": 2, "bf16 nchw": 2, "u8 nhwc": 1}[io]


def resident_blocks(gpu: dict, segment: dict) -> int:
    """Blocks per SM: the kernel variant's register bound (launch bounds) and shared memory."""
    kernel = segment["kernel"]
    by_registers = 1 if "<=64" in kernel else 2
    by_smem = max(1, gpu["smem_per_sm"] // max(1, segment["smem"]))
    return max(1, min(by_registers, by_smem))


def segment_time(gpu: dict, case: dict, segment: dict, compute: str) -> dict:
    blocks, sampled = segment["blocks"], max(1, segment["sampled_blocks"])
    scale_up = blocks / sampled
    if compute == "f32":
        mac_rate = gpu["fp32_flops"] / 2 * FFMA_FRACTION
    else:
        mac_rate = gpu["fp16_tensor_flops"] / 2 * MMA_SYNC_FRACTION
    slots = gpu["sms"] * resident_blocks(gpu, segment)
    utilisation = blocks / (math.ceil(blocks / slots) * slots)
    compute_s = segment["executed_macs"] / mac_rate / utilisation

    n, h, w = case["batch"], case["height"], case["width"]
    el = case["element_bytes"]
    map_el = 4 if compute == "f32" else 2
    k = segment["last"] - segment["first"]
    cin, cout = segment["widths"][0], segment["widths"][-1]
    pad16 = lambda c: -(-c // 16) * 16  # noqa: E731  (tensor-core maps store channels padded to 16)
    tiles_h, tiles_w = math.ceil(h / segment["th"]), math.ceil(w / segment["tw"])
    in_pixels = n * tiles_h * tiles_w * (segment["th"] + 2 * k) * (segment["tw"] + 2 * k)
    if segment["first"] == 0:
        read = in_pixels * cin * el
    else:
        read = in_pixels * (cin if compute == "f32" else pad16(cin)) * map_el
    if segment["tail"]:
        store = segment["global_store"]
        efficiency = store["useful_bytes"] / (32 * store["sectors"]) if store["sectors"] else 1.0
        write = n * h * w * cout * el / efficiency
        read += n * h * w * (cout // (SCALE * SCALE)) * el  # the residual input
    else:
        efficiency = None
        write = n * h * w * (cout if compute == "f32" else pad16(cout)) * map_el
    hbm_bytes = read + write
    hbm_s = hbm_bytes / (gpu["hbm_bytes_per_s"] * HBM_FRACTION)

    wavefronts = sum(segment[key]["wavefronts"] for key in ("ldmatrix", "shared_load", "shared_store")) * scale_up
    smem_s = wavefronts / (gpu["sms"] * gpu["clock_hz"])
    ldm = segment["ldmatrix"]
    plain = [segment[key] for key in ("shared_load", "shared_store")]
    bound = max((compute_s, "compute"), (hbm_s, "HBM"), (smem_s, "shared"))
    return {
        "time_s": bound[0] + LAUNCH_S, "bound": bound[1], "compute_s": compute_s, "hbm_s": hbm_s,
        "smem_s": smem_s, "hbm_bytes": hbm_bytes, "wavefronts": wavefronts,
        "ldmatrix_conflicts": ldm["wavefronts"] / ldm["ideal"] if ldm["ideal"] else None,
        # loads and stores other than ldmatrix (planes, copies, staging), scaled like `wavefronts`
        "plain_wavefronts": sum(c["wavefronts"] for c in plain) * scale_up,
        "plain_ideal": sum(c["ideal"] for c in plain) * scale_up,
        "tail_store_efficiency": efficiency,
    }


def fused_prediction(gpu: dict, case: dict) -> dict:
    compute = case["compute"]
    segments = [segment_time(gpu, case, s, compute) for s in case["segments"]]
    total = sum(s["time_s"] for s in segments) + LAUNCH_S  # + the weight-packing launch
    bounds = sorted({s["bound"] for s in segments})
    useful = sum(s["useful_macs"] for s in case["segments"])
    executed = sum(s["executed_macs"] for s in case["segments"])
    conflicts = [s["ldmatrix_conflicts"] for s in segments if s["ldmatrix_conflicts"]]
    tail = [s["tail_store_efficiency"] for s in segments if s["tail_store_efficiency"] is not None]
    return {
        "time_s": total, "bounds": "/".join(bounds), "useful_macs": useful, "executed_macs": executed,
        "hbm_bytes": sum(s["hbm_bytes"] for s in segments), "wavefronts": sum(s["wavefronts"] for s in segments),
        "ldmatrix_conflicts": max(conflicts) if conflicts else None,
        "plain_conflicts": sum(s["plain_wavefronts"] for s in segments) / sum(s["plain_ideal"] for s in segments),
        "tail_store_efficiency": tail[0] if tail else None,
    }


def cudnn_lower_bound(gpu: dict, widths: list[int], batch: int, h: int, w: int, precision: str) -> float:
    """Seconds: layer by layer, each map written and read once, at the peak rates."""
    el = 4 if precision in ("tf32", "fp32") else 2
    flops = {"fp16": gpu["fp16_tensor_flops"], "tf32": gpu["tf32_tensor_flops"], "fp32": gpu["fp32_flops"]}[precision]
    bw = gpu["hbm_bytes_per_s"]
    pixels = batch * h * w
    total = 0.0
    for cin, cout in zip(widths[:-1], widths[1:]):
        total += max(2 * 9 * cin * cout * pixels / flops, pixels * (cin + cout) * el / bw) + LAUNCH_S
    out_elements = pixels * widths[-1]
    total += 2 * out_elements * el / bw + LAUNCH_S                               # pixel shuffle
    total += (pixels * widths[0] + 2 * out_elements) * el / bw + LAUNCH_S        # + nearest(x)
    return total


def load_cases(path: Path = COUNTERS) -> list[dict]:
    return json.loads(path.read_text())["cases"]


def case_widths(case: dict) -> list[int]:
    widths = [case["segments"][0]["widths"][0]]
    for s in case["segments"]:
        widths += s["widths"][1:]
    return widths


def predict_ms(preset: str, batch: int, variant: str, device_name: str) -> float | None:
    """The model's time for a benchmark variant of python_tests/test_benchmarks_cuda.py."""
    gpu = GPUS["H200" if "H200" in device_name else "H100 SXM"]
    if not COUNTERS.is_file():
        return None
    ios = {"fused fp32": "f32 nchw", "fused fp16": "f16 nchw", "fused bf16": "bf16 nchw"}
    cases = [c for c in load_cases() if c["preset"] == preset and c["batch"] == batch]
    if not cases:
        return None
    if variant in ios:
        case = next((c for c in cases if c["io"] == ios[variant]), None)
        return None if case is None else fused_prediction(gpu, case)["time_s"] * 1e3
    precision = "tf32" if "tf32" in variant else "fp32" if "fp32" in variant else "fp16"
    c = cases[0]
    return cudnn_lower_bound(gpu, case_widths(c), batch, c["height"], c["width"], precision) * 1e3


def table(gpu_name: str, cases: list[dict]) -> str:
    gpu = GPUS[gpu_name]
    lines = [
        f"**{gpu_name}** (prediction; {gpu['source']})",
        "",
        "| case | plan (layers@tile) | GMAC useful / executed | HBM MB | smem Mwavefronts | wavefronts / ideal: ldmatrix, other shared | tail store eff. "
        "| fused ms (bound) | cuDNN lower bound ms | predicted speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        f = fused_prediction(gpu, c)
        precision = {"f32": "fp32"}.get(c["compute"], "fp16")  # like for like: the fused fp32 kernel is true FP32
        cudnn = cudnn_lower_bound(gpu, case_widths(c), c["batch"], c["height"], c["width"], precision)
        plan = " ".join(f"{s['last'] - s['first']}@{s['th']}x{s['tw']}" for s in c["segments"])
        if len(plan) > 40:
            sizes = {f"{s['th']}x{s['tw']}" for s in c["segments"]}
            plan = f"{len(c['segments'])} segments @ {'/'.join(sorted(sizes))}"
        ldm = f"{f['ldmatrix_conflicts']:.2f}" if f["ldmatrix_conflicts"] else "-"
        ldm += f", {f['plain_conflicts']:.2f}"
        tail = f"{100 * f['tail_store_efficiency']:.0f}%" if f["tail_store_efficiency"] is not None else "-"
        lines.append(
            f"| {c['preset']} b{c['batch']} {c['io']} | {plan} | {f['useful_macs'] / 1e9:.0f} / {f['executed_macs'] / 1e9:.0f} "
            f"| {f['hbm_bytes'] / 1e6:.0f} | {f['wavefronts'] / 1e6:.1f} | {ldm} | {tail} | {f['time_s'] * 1e3:.2f} ({f['bounds']}) "
            f"| {cudnn * 1e3:.2f} ({precision}) | {cudnn / f['time_s']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else COUNTERS
    if not path.is_file():
        print(f"{path} not found: run test_cuda_emulated_plain --model-json {path} first", file=sys.stderr)
        return 1
    cases = load_cases(path)
    print(f"Assumptions: mma.sync at {MMA_SYNC_FRACTION:.0%} of the dense tensor peak, FFMA at {FFMA_FRACTION:.0%} "
          f"of FP32 peak, HBM at {HBM_FRACTION:.0%} of its bandwidth, {LAUNCH_S * 1e6:.0f} us per launch.\n")
    for name in GPUS:
        print(table(name, cases))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
