"""Prints a Markdown table of medians and speed-ups from a pytest-benchmark JSON file.

    python benchmarks/summarize.py benchmarks/cpu.json
Ratios are of medians measured in the same run: "<other> / fused" > 1 means the fused op is faster.
"""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    medians = defaultdict(dict)  # group -> runner -> median seconds
    for bench in data["benchmarks"]:
        runner = bench["name"].split("[")[0].removeprefix("test_")
        medians[bench["group"]][runner] = bench["stats"]["median"]
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {}).get("id", "?")[:10]
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} cores; commit {commit}\n")
    others = sorted({r for g in medians.values() for r in g} - {"fused"})
    header = ["case", "fused ms"] + [f"{o} ms" for o in others] + [f"{o} / fused" for o in others]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for group, runs in medians.items():
        fused = runs.get("fused")
        row = [group, f"{fused * 1e3:.1f}" if fused else "-"]
        row += [f"{runs[o] * 1e3:.1f}" if o in runs else "-" for o in others]
        row += [f"{runs[o] / fused:.2f}x" if fused and o in runs else "-" for o in others]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
