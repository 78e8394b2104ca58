"""benchmarks/hardware_counters.py: the emulator's counts beside Nsight Compute's.

On the CPU: the committed emulator file is whole and consistent, and `compare` matches a profile
(a raw CSV written here in ncu's format from independent factors) launch by launch. On a GPU: the
cases run, and the device's planner makes as many segment launches per case as the emulator's.
"""
import csv
import importlib.util
import io
import random
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EMULATED = ROOT / "benchmarks" / "hardware_counters_emulated.json"

_spec = importlib.util.spec_from_file_location("hardware_counters", ROOT / "benchmarks" / "hardware_counters.py")
hc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hc)


def ncu_csv(launches: list[dict], metrics: list[str], thousands: bool = True, units: dict | None = None) -> str:
    """A raw page as `ncu --import R --csv --page raw` prints it: a header, a units row, a row per launch."""
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_ALL)
    w.writerow(["ID", "Process ID", "Kernel Name", "Grid Size", *metrics])
    w.writerow(["", "", "", "", *[(units or {}).get(m, "") for m in metrics]])
    for i, launch in enumerate(launches):
        values = [(f"{launch[m]:,.0f}" if thousands else f"{launch[m]:.0f}") if float(launch[m]).is_integer()
                  else f"{launch[m]:.2f}" for m in metrics]
        w.writerow([str(i), "4242", launch["kernel"], "(120, 1, 1)", *values])
    return "==PROF== Disconnected\n" + out.getvalue()


def profile_from(cases: list[dict], factors: dict[str, float]) -> list[dict]:
    """Launches whose every metric is the emulator's count times factors[metric] (1 if absent)."""
    launches = []
    for case in cases:
        for seg in case["segments"]:
            launch = {"kernel": f"{seg['kernel']}(repsr::cuda::SegmentParams)",
                      hc.GRID_METRIC: seg["blocks"] * factors.get(hc.GRID_METRIC, 1.0),
                      hc.SMEM_METRIC: seg["smem"] * factors.get(hc.SMEM_METRIC, 1.0)}
            for (group, field), metric in hc.METRICS.items():
                launch[metric] = seg[group][field] * factors.get(metric, 1.0)
            launches.append(launch)
    return launches


def test_committed_emulator_file_is_whole():
    cases, sampled = hc.load_cases(EMULATED)
    assert not sampled and len(cases) >= 6
    assert {c["io"] for c in cases} == {"f32 nchw", "f16 nchw", "bf16 nchw", "u8 nhwc"}
    for case in cases:
        assert case["segments"], hc.case_name(case)
        assert case["segments"][0]["first"] == 0 and case["segments"][-1]["last"] == case["layers"]
        for a, b in zip(case["segments"], case["segments"][1:]):
            assert a["last"] == b["first"]
        for seg in case["segments"]:
            assert seg["sampled_blocks"] == seg["blocks"]  # every block ran
            assert seg["shared_load"]["wavefronts"] >= seg["shared_load"]["ideal"] > 0
            assert seg["global_store"]["sectors"] * 32 >= seg["global_store"]["useful_bytes"] > 0
            tc = seg["kernel"].startswith("segment_tc")
            assert (seg["ldmatrix"]["requests"] > 0) == tc and (seg["mma"] > 0) == tc


@pytest.mark.parametrize("thousands", [True, False])
def test_compare_recovers_the_profile_ratios(tmp_path, thousands):
    cases, sampled = hc.load_cases(EMULATED)
    rng = random.Random(7)
    off = rng.choice(list(hc.METRICS.values()))
    factors = {off: 1.0 + rng.uniform(0.2, 0.5), hc.SMEM_METRIC: 1.0}
    for metric in hc.METRICS.values():
        factors.setdefault(metric, 1.0 + rng.uniform(-0.04, 0.04))  # within the tolerance
    path = tmp_path / "raw.csv"
    metrics = [hc.GRID_METRIC, hc.SMEM_METRIC, *hc.METRICS.values()]
    path.write_text(ncu_csv(profile_from(cases, factors), metrics, thousands))
    rows = hc.compare(cases, sampled, hc.read_ncu_csv(path))
    assert len({(r["case"], r["segment"]) for r in rows}) == sum(len(c["segments"]) for c in cases)
    for r in rows:
        if r["emulator"] == 0:
            continue
        assert r["ratio"] == pytest.approx(factors.get(r["metric"], 1.0), rel=1e-6, abs=0.5 / r["emulator"])
        assert r["flag"] == (r["metric"] == off)
    assert any(r["flag"] for r in rows)
    text = hc.table(rows, sampled)
    assert f"{sum(r['flag'] for r in rows)} flagged" in text and " !" in text


def test_compare_scales_sampled_counts_and_refuses_a_mismatched_profile(tmp_path):
    cases, _ = hc.load_cases(EMULATED)
    case = dict(cases[0])
    seg = dict(case["segments"][0])
    seg["sampled_blocks"] = 4
    seg["blocks"] = 120
    case["segments"] = [seg]
    launches = profile_from([case], {m: 30.0 for m in hc.METRICS.values()})  # 120 / 4 blocks
    rows = hc.compare([case], True, launches)
    assert all(r["ratio"] == pytest.approx(1.0) for r in rows if r["counter"] not in ("blocks", "smem") and r["emulator"])
    with pytest.raises(SystemExit, match="2 segment_\\* launches, the cases 1"):
        hc.compare([case], True, launches * 2)


def test_missing_metric_is_flagged_and_bad_files_are_named(tmp_path):
    cases, sampled = hc.load_cases(EMULATED, "M4C16 f16 nchw b1 ")
    metrics = [hc.GRID_METRIC, *list(hc.METRICS.values())[1:]]  # no shared-load requests, no smem
    path = tmp_path / "raw.csv"
    path.write_text(ncu_csv(profile_from(cases, {}), metrics))
    rows = hc.compare(cases, sampled, hc.read_ncu_csv(path))
    missing = [r for r in rows if r["hardware"] is None]
    assert {r["counter"] for r in missing} == {"smem", "shared_load.requests"} and all(r["flag"] for r in missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"cases": [{"preset": "M4C16"}]}')
    with pytest.raises(SystemExit, match="not an emulator counters file"):
        hc.load_cases(bad)
    with pytest.raises(SystemExit, match="no case matches"):
        hc.load_cases(EMULATED, "no such case")
    with pytest.raises(SystemExit, match="no ncu raw CSV header"):
        hc.read_ncu_csv(bad)


@pytest.mark.parametrize("unit, to_us", [("nsecond", 1e-3), ("usecond", 1.0), ("msecond", 1e3)])
def test_utilization_rows_name_the_busiest_unit(tmp_path, unit, to_us):
    cases, _ = hc.load_cases(EMULATED)
    rng = random.Random(11)
    launches = profile_from(cases, {})
    names = list(hc.UTILIZATION)
    truth = []
    for launch in launches:
        pct = {n: round(rng.uniform(1, 99), 2) for n in names}
        duration = float(rng.randint(1000, 90000))
        launch.update({hc.UTILIZATION[n]: v for n, v in pct.items()}, **{hc.DURATION_METRIC: duration})
        truth.append((pct, duration))
    dropped = names[2]  # a metric this ncu would not know: left out of the profile
    metrics = [hc.GRID_METRIC, hc.SMEM_METRIC, *hc.METRICS.values(), hc.DURATION_METRIC,
               *[hc.UTILIZATION[n] for n in names if n != dropped]]
    path = tmp_path / "raw.csv"
    path.write_text(ncu_csv(launches, metrics, units={hc.DURATION_METRIC: unit}))
    rows = hc.utilization(cases, hc.read_ncu_csv(path))
    assert len(rows) == len(launches)
    for row, (pct, duration) in zip(rows, truth):
        assert row["duration_us"] == pytest.approx(duration * to_us)
        assert row[dropped] is None
        kept = {n: v for n, v in pct.items() if n != dropped}
        for n, v in kept.items():
            assert row[n] == pytest.approx(v)
        assert row["busiest"] == max(kept, key=kept.get)
    text = hc.utilization_table(rows)
    assert text.count("\n| ") == len(rows) + 1 and f"| {rows[0]['busiest']} |" in text
    path.write_text(ncu_csv(launches, metrics, units={hc.DURATION_METRIC: "cycle"}))
    with pytest.raises(SystemExit, match="unknown unit 'cycle'"):
        hc.utilization(cases, hc.read_ncu_csv(path))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_plans_as_many_segments_as_the_emulator():
    from repsr_ext import ops

    if not ops.has_backend("cuda"):
        pytest.skip("the extension has no CUDA backend")
    from torch.profiler import ProfilerActivity, profile

    cases, _ = hc.load_cases(EMULATED)
    for case in cases:
        hc.run_cases([case])  # warm (attributes, allocations), then counted
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            hc.run_cases([case])
        launches = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "segment_" in e.name]
        assert len(launches) == len(case["segments"]), hc.case_name(case)
