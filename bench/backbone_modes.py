"""Which execution modes help a backbone on this CPU: channels-last, bf16 autocast, torch.compile.

For each backbone, inference (eval, ``inference_mode``) and a training step (forward + backward + SGD
step, train mode) are timed in one process. Baseline: eager fp32 NCHW. Prints images/s and the ratio
to the baseline, and checks that every mode computes the same embeddings (max abs difference relative
to the largest baseline value; bf16 is looser by nature).

    python bench/backbone_modes.py [--backbones mobilefacenet,ir_18] [--batch 32] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from tface.backbones.latency import median_ms
from tface.core import registry


def rate(fn, batch: int, warmup: int, repeats: int) -> float:
    """Images per second from the median time of ``repeats`` calls after ``warmup`` calls."""
    return batch * 1e3 / median_ms(fn, warmup=warmup, repeats=repeats)


def modes(name: str, compile_too: bool):
    base = registry.create("backbones", name)
    state = base.state_dict()

    def build(channels_last: bool, compiled: bool):
        m = registry.create("backbones", name)
        m.load_state_dict(state)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return torch.compile(m) if compiled else m

    yield "eager fp32 NCHW (baseline)", build(False, False), False, False
    yield "channels-last", build(True, False), True, False
    yield "bf16 autocast", build(False, False), False, True
    yield "bf16 autocast + channels-last", build(True, False), True, True
    if compile_too:
        yield "torch.compile", build(False, True), False, False
        yield "torch.compile + channels-last", build(True, True), True, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="mobilefacenet,ir_18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also torch.compile (slow to compile: about a minute)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    for name in args.backbones.split(","):
        print(f"\n{name}: batch {args.batch}, {args.threads} threads")
        print(f"  {'mode':32s} {'infer img/s':>11s} {'ratio':>6s} {'train img/s':>11s} {'ratio':>6s} {'rel diff':>9s}")
        ref = None
        base_inf = base_train = None
        for label, model, cl, bf16 in modes(name, args.compile):
            xin = x.contiguous(memory_format=torch.channels_last) if cl else x
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            model.eval()
            with torch.inference_mode(), amp:
                out = model(xin).float()

                def infer():
                    model(xin)  # noqa: B023 - timed immediately

                inf = rate(infer, args.batch, 2, args.repeats)
            diff = 0.0 if ref is None else float((out - ref).abs().max() / ref.abs().max())
            ref = out if ref is None else ref
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-4)

            def step():
                with amp:  # noqa: B023
                    loss = model(xin).float().pow(2).mean()  # noqa: B023
                opt.zero_grad(set_to_none=True)  # noqa: B023
                loss.backward()
                opt.step()  # noqa: B023

            tr = rate(step, args.batch, 2, args.repeats)
            base_inf = base_inf or inf
            base_train = base_train or tr
            print(f"  {label:32s} {inf:11.1f} {inf / base_inf:6.2f} {tr:11.1f} {tr / base_train:6.2f} {diff:9.2g}")


if __name__ == "__main__":
    main()
