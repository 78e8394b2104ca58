"""A two-minute tour: train-time RepSR network -> exact re-parameterization -> fused engine.

    python -m repsr_ext.demo [--preset M4C16] [--scale 4] [--size 180x320]

The network is randomly initialized (with random BN statistics), so the point is the data path and
the numbers, not the picture: the deployed PlainSR must equal the training network, and the fused op
must equal PlainSR and beat PyTorch eager on the same chain.
"""
import argparse
import os
import time

import torch

from . import FusedSR, RepSRNet, ops


def _median_seconds(fn, repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m repsr_ext.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="M4C16")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--size", default="180x320", help="LR input HxW")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(os.cpu_count())

    net = RepSRNet.preset(args.preset, scale=args.scale)
    with torch.no_grad():  # random BN statistics, so the BN folding is really exercised
        for bn in net.batchnorms():
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    net.switch_bn_to_population()
    x = torch.rand(1, 3, h, w)
    with torch.inference_mode():
        train_out = net(x)
        plain = net.reparameterize()
        plain_out = plain(x)
    fused = FusedSR.load(plain)
    fused_out = fused(x)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    print(f"RepSRNet {args.preset} x{args.scale}: {sum(p.numel() for p in net.parameters()):,} training parameters")
    print(f"PlainSR: {plain.num_layers} conv layers, {sum(p.numel() for p in plain.parameters()):,} parameters")
    print(f"  training net vs PlainSR   relative error {rel(plain_out, train_out):.2e}")
    print(f"  PlainSR vs fused ({ops.cpu_isa()}) relative error {rel(fused_out, plain_out):.2e}")

    plain_cl = plain.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def eager():
        with torch.inference_mode():
            plain_cl(x_cl)

    t_eager = _median_seconds(eager)
    t_fused = _median_seconds(lambda: fused(x))
    print(f"  {h}x{w} -> {h * args.scale}x{w * args.scale}, {torch.get_num_threads()} threads:")
    print(f"    PyTorch eager (channels_last) {t_eager * 1e3:8.1f} ms")
    print(f"    repsr_ext fused               {t_fused * 1e3:8.1f} ms   ({t_eager / t_fused:.2f}x)")


if __name__ == "__main__":
    main()
