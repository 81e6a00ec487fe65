"""MobileFaceNet training-step throughput: channels-last vs the contiguous (NCHW) baseline, same process.

    python bench/channels_last.py [--batch 32] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from tface.backbones.mobilefacenet import mobilefacenet


def rate(channels_last: bool, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = mobilefacenet(embedding_size=128)
    x = torch.randn(batch, 3, 112, 112)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    best = float("inf")
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        if i:  # the first step warms up allocators and kernels
            best = min(best, time.perf_counter() - t0)
    return batch / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = rate(False, args.batch, args.steps)
    fast = rate(True, args.batch, args.steps)
    print(f"baseline  contiguous NCHW: {base:7.1f} images/s  ratio 1.00")
    print(f"tface     channels_last:   {fast:7.1f} images/s  ratio {fast / base:.2f}")


if __name__ == "__main__":
    main()
