"""The CUDA kernels' hardware counters beside the emulator's (issue: GPU kernel efficiency without a GPU).

The model (benchmarks/gpu_model.py) and the kernels' tuning rest on the CUDA emulator's counts of
shared-memory requests and wavefronts, ldmatrix, and global requests and sectors. On a GPU,
Nsight Compute measures the same quantities; this script runs the emulator's cases there and sets
the two side by side, launch by launch, and prints where each launch's time goes (issue slots,
FMA / tensor pipe, shared memory, L1 and DRAM as % of their peaks): the measure of whether a
change that trades instructions for shared-memory wavefronts would pay.

    # here (no GPU): the emulator's counts, every block of some small cases
    build/cmake/csrc/cuda/emulation/test_cuda_emulated_plain --hardware-json benchmarks/hardware_counters_emulated.json
    # on the GPU (python_tests/gpu_check.sh does this):
    ncu --clock-control none --kernel-name regex:segment_ --metrics "$(python benchmarks/hardware_counters.py metrics)" \\
        --export OUT/counters python benchmarks/hardware_counters.py run CASES.json
    ncu --import OUT/counters.ncu-rep --csv --page raw > OUT/counters.csv
    python benchmarks/hardware_counters.py compare OUT/counters.csv CASES.json [--json OUT/counters.json]

CASES.json is either file the emulator writes: --hardware-json (every block ran: the totals must
agree) or --model-json (the benchmark cases, sampled blocks: their counts are scaled to the launch
as the model scales them, so the comparison measures the model's inputs). `--cases REGEX` picks
cases by "PRESET IO bBATCH HxW" for `run` and `compare` alike. The counts do not depend on the
weights or the image, only on the shapes, so random ones serve.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

# (emulator counter, field) -> Nsight Compute metric measuring the same thing
METRICS = {
    ("shared_load", "requests"): "smsp__sass_inst_executed_op_shared_ld.sum",
    ("shared_load", "wavefronts"): "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum",
    ("shared_store", "requests"): "smsp__sass_inst_executed_op_shared_st.sum",
    ("shared_store", "wavefronts"): "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum",
    ("ldmatrix", "requests"): "smsp__sass_inst_executed_op_ldsm.sum",
    ("ldmatrix", "wavefronts"): "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum",
    ("global_load", "requests"): "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum",
    ("global_load", "sectors"): "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
    ("global_store", "requests"): "l1tex__t_requests_pipe_lsu_mem_global_op_st.sum",
    ("global_store", "sectors"): "l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum",
}
# Where each launch's time goes (no emulator counterpart; printed beside the comparison): which
# unit bounds a kernel -- instruction issue, the FMA or tensor pipe, shared memory, L1, HBM --
# is what decides whether a fix that trades instructions for shared wavefronts pays (the float32
# tails: csrc/cuda/README.md, "Not done / limits"). Percentages of the unit's sustained peak.
UTILIZATION = {
    "issue": "sm__inst_issued.avg.pct_of_peak_sustained_active",
    "fma pipe": "sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active",
    "tensor pipe": "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
    "shared wavefronts": "l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed",
    "L1": "l1tex__throughput.avg.pct_of_peak_sustained_active",
    "DRAM": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
}
DURATION_METRIC = "gpu__time_duration.sum"
TIME_UNITS_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
                 "second": 1e6, "s": 1e6}
GRID_METRIC = "launch__grid_size"
SMEM_METRIC = "launch__shared_mem_per_block_dynamic"
KERNEL_PATTERN = "segment_"
TOLERANCE = 0.05  # a ratio further than this from 1 is flagged


def case_name(case: dict) -> str:
    return f"{case['preset']} {case['io']} b{case['batch']} {case['height']}x{case['width']}"


def load_cases(path: Path, pattern: str | None = None) -> tuple[list[dict], bool]:
    """The cases of an emulator JSON (--hardware-json or --model-json), those matching `pattern`,
    and whether the emulator sampled blocks."""
    try:
        data = json.loads(Path(path).read_text())
        cases, sampled = data["cases"], bool(data.get("sampled", True))
        for case in cases:
            for key in ("preset", "channels", "layers", "io", "batch", "height", "width", "scale", "segments"):
                if key not in case:
                    raise KeyError(key)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not an emulator counters file from test_cuda_emulated --hardware-json/--model-json ({e!r})")
    if pattern:
        cases = [c for c in cases if re.search(pattern, case_name(c))]
    if not cases:
        raise SystemExit(f"{path}: no case matches {pattern!r}")
    return cases, sampled


def run_cases(cases: list[dict]) -> None:
    """Runs each case once on the GPU, as the emulator did: x`scale`, widths 3, channels x
    (layers - 1), 3 scale^2, PReLU, the upsampled input added. Under ncu, only the segment kernels
    are profiled."""
    import torch

    import repsr_ext  # noqa: F401  (registers the ops)

    g = torch.Generator().manual_seed(0)
    for case in cases:
        widths = [3] + [case["channels"]] * (case["layers"] - 1) + [3 * case["scale"] ** 2]
        weights = [(torch.randn(o, i, 3, 3, generator=g) * 0.05).cuda() for i, o in zip(widths[:-1], widths[1:])]
        biases = [(torch.randn(o, generator=g) * 0.01).cuda() for o in widths[1:]]
        slopes = [torch.full((o,), 0.1).cuda() for o in widths[1:-1]]
        shape = (case["batch"], 3, case["height"], case["width"])
        if case["io"] == "u8 nhwc":
            image = torch.randint(0, 256, (shape[0], shape[2], shape[3], 3), dtype=torch.uint8, generator=g).cuda()
            torch.ops.repsr_ext.fused_sr_u8(image, weights, biases, slopes, case["scale"], True)
        else:
            dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[case["io"].split()[0]]
            x = torch.rand(shape, generator=g).to("cuda", dtype)
            torch.ops.repsr_ext.fused_sr(x, weights, biases, slopes, case["scale"], True, False)
        torch.cuda.synchronize()
        print(f"ran {case_name(case)}: {len(case['segments'])} segment launches", file=sys.stderr)


def _number(text: str) -> float | None:
    text = text.replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def read_ncu_csv(path: Path) -> list[dict]:
    """The profiled launches of `ncu --import R --csv --page raw`, in order: kernel name, the
    numeric metrics and, under "units", the units row's entries (if there is one)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        raise SystemExit(f"cannot read {path}: {e}")
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise SystemExit(f"{path}: no ncu raw CSV header (a line starting with \"ID\") found")
    launches, units = [], {}
    for row in csv.DictReader(lines[start:]):
        name = row.get("Kernel Name") or row.get("Function Name") or ""
        if not row.get("ID", "").strip().isdigit():
            units = {k: v.strip() for k, v in row.items() if k and v and v.strip()}  # the units row
            continue
        values = {k: _number(v) for k, v in row.items() if k and v is not None}
        launches.append({"kernel": name, "units": units, **{k: v for k, v in values.items() if v is not None}})
    return launches


def segment_launches(cases: list[dict], launches: list[dict]) -> list[tuple[dict, dict, dict]]:
    """(segment, its profiled launch, where: case / segment / layers / tile / kernel) for every
    segment of the cases, in order; the profile must hold exactly one segment launch for each."""
    launches = [launch for launch in launches if KERNEL_PATTERN in launch["kernel"]]
    segments = [(case, index, segment) for case in cases for index, segment in enumerate(case["segments"])]
    if len(launches) != len(segments):
        raise SystemExit(
            f"the profile has {len(launches)} {KERNEL_PATTERN}* launches, the cases {len(segments)}: "
            "were `run` and `compare` given the same cases file and --cases?")
    return [(segment, launch, {"case": case_name(case), "segment": index, "layers": segment["last"] - segment["first"],
                               "tile": f"{segment['th']}x{segment['tw']}", "kernel": launch["kernel"]})
            for (case, index, segment), launch in zip(segments, launches)]


def compare(cases: list[dict], sampled: bool, launches: list[dict]) -> list[dict]:
    """Rows: one per case, segment and counter, with the emulator's count (scaled to the launch
    when sampled), the hardware's and their ratio."""
    rows = []
    for segment, launch, where in segment_launches(cases, launches):
        scale_up = segment["blocks"] / max(1, segment["sampled_blocks"]) if sampled else 1.0
        for counter, emulated in (("blocks", segment["blocks"]), ("smem", segment["smem"])):
            metric = GRID_METRIC if counter == "blocks" else SMEM_METRIC
            rows.append({**where, "counter": counter, "emulator": float(emulated),
                         "hardware": launch.get(metric), "metric": metric})
        for (group, field), metric in METRICS.items():
            emulated = segment[group][field] * scale_up
            hardware = launch.get(metric)
            if hardware is None and emulated == 0:
                continue
            rows.append({**where, "counter": f"{group}.{field}", "emulator": emulated, "hardware": hardware,
                         "metric": metric})
    for row in rows:
        e, h = row["emulator"], row["hardware"]
        row["ratio"] = None if h is None or e == 0 else h / e
        row["flag"] = h is None or (e == 0 and h != 0) or (row["ratio"] is not None and abs(row["ratio"] - 1) > TOLERANCE)
    return rows


def utilization(cases: list[dict], launches: list[dict]) -> list[dict]:
    """One row per segment launch: its duration in microseconds and the UTILIZATION percentages
    (None where the profile lacks the metric), and the busiest unit."""
    rows = []
    for _, launch, where in segment_launches(cases, launches):
        duration = launch.get(DURATION_METRIC)
        unit = launch.get("units", {}).get(DURATION_METRIC, "nsecond")
        if duration is not None:
            if unit not in TIME_UNITS_US:
                raise SystemExit(f"{DURATION_METRIC}: unknown unit {unit!r}")
            duration *= TIME_UNITS_US[unit]
        values = {name: launch.get(metric) for name, metric in UTILIZATION.items()}
        known = {k: v for k, v in values.items() if v is not None}
        rows.append({**where, "duration_us": duration, **values,
                     "busiest": max(known, key=known.get) if known else None})
    return rows


def utilization_table(rows: list[dict]) -> str:
    names = list(UTILIZATION)
    out = ["Where the time goes (% of each unit's sustained peak, ncu):", "",
           "| case | segment | us | " + " | ".join(names) + " | busiest |",
           "|---|---|---|" + "---|" * len(names) + "---|"]
    for r in rows:
        us = "-" if r["duration_us"] is None else f"{r['duration_us']:.1f}"
        cells = ["-" if r[n] is None else f"{r[n]:.0f}" for n in names]
        out.append(f"| {r['case']} | {r['segment']}: {r['layers']}@{r['tile']} | {us} | " + " | ".join(cells) +
                   f" | {r['busiest'] or '-'} |")
    return "\n".join(out)


def table(rows: list[dict], sampled: bool) -> str:
    basis = "emulator scaled from its sampled blocks (the model's inputs)" if sampled else "emulator, every block"
    out = [f"hardware / {basis}; '!' where the ratio is off by more than {TOLERANCE:.0%} or the metric is missing",
           "", "| case | segment | counter | emulator | hardware | hw / emu |", "|---|---|---|---|---|---|"]
    for r in rows:
        h = "missing" if r["hardware"] is None else f"{r['hardware']:.0f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        seg = f"{r['segment']}: {r['layers']}@{r['tile']}"
        out.append(f"| {r['case']} | {seg} | {r['counter']} | {r['emulator']:.0f} | {h} | {ratio}{' !' if r['flag'] else ''} |")
    flagged = sum(r["flag"] for r in rows)
    out += ["", f"{len(rows)} counts compared, {flagged} flagged"]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("metrics", help="the ncu --metrics list")
    p_run = sub.add_parser("run", help="run the cases on the GPU (under ncu)")
    p_run.add_argument("cases_json", type=Path)
    p_run.add_argument("--cases", help="regex on 'PRESET IO bBATCH HxW'")
    p_cmp = sub.add_parser("compare", help="the ncu raw CSV beside the emulator's counts")
    p_cmp.add_argument("ncu_csv", type=Path)
    p_cmp.add_argument("cases_json", type=Path)
    p_cmp.add_argument("--cases", help="regex on 'PRESET IO bBATCH HxW' (as given to run)")
    p_cmp.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.command == "metrics":
        print(",".join([GRID_METRIC, SMEM_METRIC, *METRICS.values(), DURATION_METRIC, *UTILIZATION.values()]))
        return 0
    cases, sampled = load_cases(args.cases_json, args.cases)
    if args.command == "run":
        run_cases(cases)
        return 0
    launches = read_ncu_csv(args.ncu_csv)
    rows, busy = compare(cases, sampled, launches), utilization(cases, launches)
    print(table(rows, sampled))
    print()
    print(utilization_table(busy))
    if args.json:
        args.json.write_text(json.dumps({"sampled": sampled, "tolerance": TOLERANCE, "rows": rows,
                                         "utilization": busy}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
