"""Small CUDA cases for compute-sanitizer (memcheck / racecheck), run by python_tests/gpu_check.sh:

    compute-sanitizer --tool memcheck python python_tests/cuda_sanitize_case.py

Covers every kernel variant once on tiny inputs: float32 (CUDA cores), float16 and bfloat16
(tensor cores, narrow and wide warp tiles), uint8 NHWC, a chain split into several segments
(boundary maps in the workspace), a 1x1 image, a non-contiguous input and edge tiles. Inputs and
references are made on the CPU so that almost every GPU kernel in the run is one of ours. Exits
non-zero if an output is wrong (the sanitizer reports memory errors and races itself).
"""
import sys

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
from helpers import reference_chain, rel_err  # noqa: E402

import repsr_ext  # noqa: E402,F401  (registers the ops)


def net(widths, seed):
    g = torch.Generator().manual_seed(seed)
    w, b, s = [], [], []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        w.append(torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5)
        b.append(torch.randn(cout, generator=g) * 0.1)
        if i < len(widths) - 2:
            s.append(torch.rand(cout, generator=g) * 0.3)
    return w, b, s


def to_dev(ts):
    return [t.cuda() for t in ts]


def main() -> int:
    failures = []
    cases = [
        # name, widths, scale, input shape (N, C, H, W), dtype
        ("fp32 4x16 x4", [3, 16, 16, 16, 48], 4, (1, 3, 13, 21), torch.float32),
        ("fp16 4x16 x4", [3, 16, 16, 16, 48], 4, (1, 3, 13, 21), torch.float16),
        ("bf16 3x64 x2", [3, 64, 64, 12], 2, (2, 3, 11, 9), torch.bfloat16),
        ("fp16 split 10x64 x3", [3] + [64] * 9 + [27], 3, (1, 3, 29, 31), torch.float16),
        ("fp32 split 10x64 x3", [3] + [64] * 9 + [27], 3, (1, 3, 29, 31), torch.float32),
        ("fp16 96ch x2", [3, 96, 12], 2, (1, 3, 7, 10), torch.float16),
        ("fp32 1x1 image", [3, 8, 8, 12], 2, (1, 3, 1, 1), torch.float32),
        ("fp16 1x17 image", [3, 13, 27], 3, (1, 3, 1, 17), torch.float16),
    ]
    for name, widths, scale, shape, dtype in cases:
        w, b, s = net(widths, seed=len(name))
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        ref = reference_chain(x, w, b, s, scale)
        out = torch.ops.repsr_ext.fused_sr(x.to(dtype).cuda(), to_dev(w), to_dev(b), to_dev(s), scale, True, False)
        err = rel_err(out.cpu(), ref)
        bound = 1e-5 if dtype == torch.float32 else 3e-2
        print(f"{name:24s} rel err {err:.2e}")
        if not err <= bound:
            failures.append(name)

    # Non-contiguous float input: a channels_last tensor, sliced on the device.
    w, b, s = net([3, 16, 12], seed=3)
    full = torch.rand(2, 3, 19, 26, generator=torch.Generator().manual_seed(2))
    xd = full.cuda().contiguous(memory_format=torch.channels_last)[:, :, ::2, 1:]
    ref = reference_chain(full[:, :, ::2, 1:], w, b, s, 2)
    out = torch.ops.repsr_ext.fused_sr(xd, to_dev(w), to_dev(b), to_dev(s), 2, True, False)
    err = rel_err(out.cpu(), ref)
    print(f"{'fp32 sliced chan_last':24s} rel err {err:.2e}")
    if not err <= 1e-5:
        failures.append("channels_last")

    # uint8 NHWC.
    w, b, s = net([3, 16, 16, 48], seed=4)
    image = torch.randint(0, 256, (1, 9, 14, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    out = torch.ops.repsr_ext.fused_sr_u8(image.cuda(), to_dev(w), to_dev(b), to_dev(s), 4, True).cpu()
    ref = reference_chain(image.permute(0, 3, 1, 2).double() / 255, w, b, s, 4, clamp=True) * 255
    diff = (out.double() - torch.round(ref).permute(0, 2, 3, 1)).abs().max().item()
    print(f"{'uint8 x4':24s} max level diff {diff:.0f}")
    if diff > 1:
        failures.append("uint8")

    torch.cuda.synchronize()
    if failures:
        print("FAILED:", ", ".join(failures))
        return 1
    print("all sanitizer cases produced correct outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
