"""Time and memory of one classifier step: local vs sharded over processes vs sampled (Partial FC).

For each class count C: one forward + backward of the classification loss for a batch of random embeddings
``[batch, dim]`` (random labels, a CosFace head s = 64, m = 0.4 defined here, so only tface-core is needed) in
three layouts, each in fresh spawned processes:

- ``local``: :class:`~tface.core.classifier.Classifier`, every centre in one process (``--threads`` threads);
- ``sharded``: :class:`~tface.core.classifier.ShardedClassifier` on 2 gloo processes, 1 thread each, each
  process given batch/2 rows and holding C/2 centres; the time of a step is the slowest rank's;
- ``sampled``: ``ShardedClassifier(..., sample_rate=--rate)`` in one process, training mode.

The median over ``--repeats`` steps after one warm-up is reported, with the ratio ``local time / variant time``
(the baseline is the local run of the same C, run moments before). Peak memory is the process's peak resident
set (``VmHWM``, reset via ``/proc/self/clear_refs`` once the batch is built) minus its resident set before the
classifier is built; "centre MB" is the bytes of the centre tensors the process holds (``weight``, plus the
sampled copy ``sub`` in sampled mode). ``--step`` adds an SGD step (momentum 0.9, weight decay 5e-4, with
``attach`` for the sampled layout) to every variant. A variant whose estimated peak exceeds the free memory is
skipped with a note; a child that dies is reported, not raised.

``--simulate`` ("toward internet scale"): C = 10,000,000 classes, D = 128, on 8 gloo processes (1 thread each),
8 rows per process (global batch 64), each holding a ``ShardedClassifier`` of its class range with an SGD
optimiser (momentum 0.9, weight decay 5e-4, ``attach``-ed) and running 3 training steps. Per rank: centre bytes,
the per-row optimiser state bytes (``row_state`` when sampled, the momentum buffer when not), their share of
the total over ranks (expected ~1/8), the step times and the peak resident set.

    python bench/classifier.py [--classes 10000,100000,1000000] [--dim 512] [--batch 256] [--rate 0.1]
                               [--repeats 3] [--threads 2] [--step]
    python bench/classifier.py --simulate [--sim-rate 0.1[,1]] [--sim-classes 10000000] [--sim-world 8]

Measured 2026-12-03, 2 cores (AMD EPYC, AVX-512), 24 GiB, after the classifier's cosines stopped normalising
the centres (load average 0.8 before, 1.9 after, which counts this bench's own busy processes; times on this
shared machine vary by up to 2x, the memory columns do not). ``python bench/classifier.py``::

    | C | variant | median s | min s | ratio vs local | peak RSS MB (per proc.) | centre MB (per proc.) | loss 1 |
    |---|---|---|---|---|---|---|---|
    | 10,000 | local | 0.137 | 0.118 | 1.00 | 227 | 20 | 38.9902 |
    | 10,000 | sharded | 0.121 | 0.106 | 1.13 | 108 / 111 | 10 / 10 | 38.9902 |
    | 10,000 | sampled r=0.1 | 0.010 | 0.009 | 13.96 | 56 | 21 | 36.6273 |
    | 100,000 | local | 1.547 | 1.400 | 1.00 | 855 | 195 | 41.1373 |
    | 100,000 | sharded | 1.264 | 1.212 | 1.22 | 464 / 438 | 98 / 98 | 41.1373 |
    | 100,000 | sampled r=0.1 | 0.116 | 0.089 | 13.34 | 404 | 215 | 38.7938 |
    | 1,000,000 | local | 16.218 | 15.727 | 1.00 | 7867 | 1953 | 43.3501 |
    | 1,000,000 | sharded | 13.392 | 12.528 | 1.21 | 3976 / 3976 | 977 / 977 | 43.3502 |
    | 1,000,000 | sampled r=0.1 | 1.511 | 1.436 | 10.73 | 2819 | 2148 | 41.0409 |

Before that change (normalised copy of the centres; load 2.0) the same run gave local 0.086 / 1.596 / 19.08 s
with peaks 256 / 1275 / 11790 MB, and sampled 11.2x at 1M.

Sampled is 10.7x faster than local at 1M classes (goal >= 5x); sharded halves each process's centres and peak
(1/W) and gives the local loss to 4 decimals; on one 2-core machine it gains little (same flops, one thread
each). The following were measured before the change above. About half the CPU time of the big steps is the
kernel's (page faults of fresh multi-GB temporaries:
``time`` gave user 2m59 s, sys 2m43 s). ``--step --classes 100000,1000000`` (load 2.2-2.4): local 2.13 / 20.1 s,
sharded 1.95 / 19.1 s, sampled 0.147 / 2.02 s (14.5x / 9.9x), peak 1590 / 13865, 873 / 7013, 853 / 5497 MB
(sampled 1M: the 1953 MB momentum store appears at the first step).

``python bench/classifier.py --simulate --sim-rate 0.1,1`` (10M x 128, 8 processes, rate 0.1), every rank
alike (0.1250 = 1/8.00 of the total)::

    | rank | classes | centres MB | optim. row state MB | sub MB | share | build s | step times s | RSS after
    imports MB | peak RSS MB (above imports) |
    | 0 | 1,250,000 | 610 | 610 | 61 | 0.1250 (1/8.00) | 5.1 | 11.54, 6.68, 3.57 | 512 | 2542 (2030) |
    | 7 | 1,250,000 | 610 | 610 | 61 | 0.1250 (1/8.00) | 4.2 | 11.47, 6.69, 3.63 | 512 | 2520 (2008) |
    total over ranks: centres 4883 MB + optimiser row state 4883 MB = 9766 MB; summed peak RSS 19.6 GiB;
    slowest rank per step 11.63, 6.69, 3.65 s (the first step allocates the momentum store)

Rate 1 at 10M was skipped: ~5.7 GiB per process (weight, gradient, momentum, normalised copy, [64, 1.25M]
tables), 48 GiB in all. At 2M classes (``--simulate --sim-rate 1,0.1 --sim-classes 2000000 --sim-steps 4``,
8 busy processes): sharded 122 MB centres + 122 MB momentum per rank (1/8.00), peak 1068 MB above imports,
6.3-7.0 s per step; sampled the same store sizes, peak 527-581 MB, 0.77 s per step after the first (1.27 s).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from procmem import reset_peak, status_bytes

from tface.core.classifier import Classifier, HeadInput, MarginHead, ShardedClassifier

MB = 1 << 20
SEED = 1  # the centres' seed: local and sharded start from the same centres (ops.init_centres)
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4


class CosFace(MarginHead):
    """CosFace (Wang et al. 2018): target logit ``s·(cos θ − m)``, every other ``s·cos θ``."""

    def __init__(self, s: float = 64.0, m: float = 0.4):
        super().__init__()
        self.s, self.m = float(s), float(m)

    def forward(self, batch: HeadInput) -> torch.Tensor:
        rows, cols, target = batch.local_targets()
        return batch.with_targets(rows, cols, target - self.m) * self.s


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# -- one process ----------------------------------------------------------------------------------------------

def _build(job: dict, rank: int, world: int) -> torch.nn.Module:
    from tface.core.classifier.ops import GroupContext

    c, d = job["classes"], job["dim"]
    if job["variant"] == "local":
        return Classifier(c, d, CosFace(), seed=SEED)
    ctx = GroupContext(rows_split=False) if world > 1 else None
    rate = job["rate"] if job["variant"] == "sampled" else 1.0
    return ShardedClassifier(c, d, CosFace(), ctx=ctx, sample_rate=rate, seed=SEED)


def _worker(rank: int, folder: str, world: int, job: dict) -> None:
    torch.set_num_threads(job["threads"])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world)
    try:
        rows = job["batch"] // world
        g = torch.Generator().manual_seed(7)  # the same global batch in every layout
        batches = []
        for _ in range(job["repeats"] + 1):
            emb = torch.randn(job["batch"], job["dim"], generator=g)
            labels = torch.randint(0, job["classes"], (job["batch"],), generator=g)
            batches.append((emb[rank * rows:(rank + 1) * rows].clone(), labels[rank * rows:(rank + 1) * rows].clone()))
        base = status_bytes("VmRSS")
        peak_reset = reset_peak()
        clf = _build(job, rank, world).train()
        opt = None
        if job["step"]:
            opt = torch.optim.SGD(clf.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
            if isinstance(clf, ShardedClassifier):
                clf.attach(opt)
        times, losses = [], []
        for emb, labels in batches:
            emb = emb.requires_grad_(True)
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            out = clf(emb, labels)
            out.loss.backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            losses.append(float(out.loss.detach()))
            clf.zero_grad(set_to_none=True)
            del out, emb
        centre = clf.weight.numel() * clf.weight.element_size()
        sub = getattr(clf, "sub", None)
        if sub is not None:
            centre += sub.numel() * sub.element_size()
        state = 0
        if opt is not None:
            param = sub if sub is not None else clf.weight
            state = sum(v.numel() * v.element_size() for v in opt.state[param].values()
                        if isinstance(v, torch.Tensor) and v.dim())
            state += sum(v.numel() * v.element_size() for v in getattr(clf, "row_state", {}).values())
        record = {"times": times[1:], "first_loss": losses[0], "base": base, "hwm": status_bytes("VmHWM"),
                  "peak_reset": peak_reset, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "centre": centre, "state": state}
        Path(folder, f"rank{rank}.json").write_text(json.dumps(record))
        if world > 1:
            dist.barrier()  # gloo aborts a process whose peer tears down mid-exchange
    finally:
        if world > 1:
            dist.destroy_process_group()


def _sim_worker(rank: int, folder: str, world: int, job: dict) -> None:
    from tface.core.classifier.ops import GroupContext

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world)
    try:
        c, d, rows = job["classes"], job["dim"], job["rows"]
        g = torch.Generator().manual_seed(100 + rank)
        batches = [(torch.randn(rows, d, generator=g), torch.randint(0, c, (rows,), generator=g))
                   for _ in range(job["steps"])]
        base = status_bytes("VmRSS")
        peak_reset = reset_peak()
        t0 = time.perf_counter()
        clf = ShardedClassifier(c, d, CosFace(), ctx=GroupContext(rows_split=False), sample_rate=job["rate"],
                                seed=SEED).train()
        build_s = time.perf_counter() - t0
        opt = torch.optim.SGD(clf.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        clf.attach(opt)
        after_build = status_bytes("VmRSS")
        times, losses = [], []
        for emb, labels in batches:
            emb = emb.requires_grad_(True)
            dist.barrier()
            t0 = time.perf_counter()
            out = clf(emb, labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            losses.append(float(out.loss.detach()))
        weight = clf.weight.numel() * clf.weight.element_size()
        if clf.sampled:
            state = sum(v.numel() * v.element_size() for v in clf.row_state.values())
            sub = clf.sub.numel() * clf.sub.element_size()
        else:
            buf = opt.state[clf.weight].get("momentum_buffer")
            state = buf.numel() * buf.element_size() if buf is not None else 0
            sub = 0
        record = {"classes_here": clf.num_local, "weight": weight, "state": state, "sub": sub, "times": times,
                  "losses": losses, "base": base, "after_build": after_build, "hwm": status_bytes("VmHWM"),
                  "peak_reset": peak_reset, "build_s": build_s}
        Path(folder, f"rank{rank}.json").write_text(json.dumps(record))
        dist.barrier()  # gloo aborts a process whose peer tears down mid-exchange
    finally:
        dist.destroy_process_group()


def _spawn(fn, world: int, job: dict, timeout: float) -> list[dict] | str:  # noqa: ANN001
    """Run ``fn`` on ``world`` spawned processes; their records, or why there are none."""
    with tempfile.TemporaryDirectory(prefix="tface-bench-clf-") as folder:
        ctx = mp.start_processes(fn, args=(folder, world, job), nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    return f"not finished within {timeout:g} s"
        except mp.ProcessExitedException as e:
            why = f"signal {e.signal_name}" if e.signal_name else f"exit code {e.exit_code}"
            return f"a process died ({why}{', out of memory?' if e.signal_name == 'SIGKILL' else ''})"
        except mp.ProcessRaisedException as e:
            return "a process raised: " + str(e).strip().splitlines()[-1]
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join()
        return [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in range(world)]


# -- the step comparison ------------------------------------------------------------------------------------

def _estimate(variant: str, c: int, d: int, n: int, rate: float, world: int) -> float:
    """Rough peak bytes of one process above its baseline, fitted on the 100k-class runs: ~4 copies of the
    [C, D] centres it scores (normalised copy, gradients, the normalise backward's temporaries; sampled: plus
    the store) and ~5 tables [N, C] (cosines, margin, scale, softmax, gradients). Only used to skip what
    cannot fit."""
    held = c // world if variant == "sharded" else c
    scored = held * rate if variant == "sampled" else held
    store = held * d * 4 if variant == "sampled" else 0
    return store + 4 * scored * d * 4 + 5 * n * scored * 4


def compare(args: argparse.Namespace) -> None:
    classes = [int(c) for c in args.classes.split(",")]
    print(f"one {'forward+backward+SGD step' if args.step else 'forward+backward'}, batch {args.batch}, "
          f"dim {args.dim}, CosFace s=64 m=0.4, median of {args.repeats} after 1 warm-up; "
          f"local/sampled: 1 process x {args.threads} threads, sharded: 2 processes x 1 thread (batch/2 rows each)")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    rows = []
    for c in classes:
        local_time = None
        for variant in ("local", "sharded", "sampled"):
            world = 2 if variant == "sharded" else 1
            job = {"variant": variant, "classes": c, "dim": args.dim, "batch": args.batch, "rate": args.rate,
                   "repeats": args.repeats, "threads": 1 if world > 1 else args.threads, "step": args.step}
            need = _estimate(variant, c, args.dim, args.batch, args.rate, world) * world + world * 400 * MB
            avail = _available_bytes()
            name = f"sampled r={args.rate:g}" if variant == "sampled" else variant
            if need > 0.9 * avail:
                rows.append((c, name, f"skipped: needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB free"))
                print(f"C={c} {name}: skipped (needs ~{need / 2**30:.1f} GiB)", flush=True)
                continue
            res = _spawn(_worker, world, job, args.timeout)
            if isinstance(res, str):
                rows.append((c, name, res))
                print(f"C={c} {name}: {res}", flush=True)
                continue
            steps = [max(step) for step in zip(*(r["times"] for r in res))]  # the slowest rank's, step by step
            t = statistics.median(steps)
            if variant == "local":
                local_time = t
            ratio = f"{local_time / t:.2f}" if local_time else "-"
            peak = " / ".join(f"{(r['hwm'] - r['base']) / MB:.0f}" for r in res)
            centre = " / ".join(f"{r['centre'] / MB:.0f}" for r in res)
            rows.append((c, name, f"{t:.3f}", f"{min(steps):.3f}", ratio, peak, centre, f"{res[0]['first_loss']:.4f}"))
            note = "" if res[0]["peak_reset"] else " (VmHWM could not be reset: includes the imports' peak)"
            print(f"C={c} {name}: {t:.3f} s, peak {peak} MB{note}", flush=True)
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    print()
    print("| C | variant | median s | min s | ratio vs local | peak RSS MB (per process) | centre MB (per process) "
          "| loss step 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if len(row) == 3:
            print(f"| {row[0]:,} | {row[1]} | {row[2]} | | | | | |")
        else:
            print("| " + f"{row[0]:,} | " + " | ".join(row[1:]) + " |")


# -- the simulation -----------------------------------------------------------------------------------------

def simulate(args: argparse.Namespace) -> None:
    c, d, w, n = args.sim_classes, 128, args.sim_world, 8
    print(f"simulate: {c:,} classes x {d}, {w} gloo processes x 1 thread, {n} rows each (global batch {n * w}), "
          f"SGD momentum {MOMENTUM} weight decay {WD}, {args.sim_steps} training steps")
    for rate in (float(r) for r in args.sim_rate.split(",")):
        print(f"\nrate {rate:g} ({'sampled' if rate < 1 else 'sharded'}); "
              f"load average {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
        per_rank = (c // w) * d * 4
        # sampled: weight + row_state stores, ~10 sampled-size temporaries; sharded (fitted on the 1M-class
        # runs): weight, grad, momentum, the normalised copy and its backward's temporaries (~5 shards), plus
        # ~5 tables [N, C/W]
        need_one = (2 * per_rank + 10 * per_rank * rate + 5 * n * w * (c // w) * rate * 4 if rate < 1
                    else 5 * per_rank + 5 * n * w * (c // w) * 4)
        need = w * (need_one + 350 * MB)
        avail = _available_bytes()
        if need > 0.9 * avail:
            print(f"skipped: needs ~{need / 2**30:.1f} GiB in all (~{need_one / 2**30:.2f} GiB above the imports "
                  f"per process), {avail / 2**30:.1f} GiB free")
            continue
        t0 = time.perf_counter()
        job = {"classes": c, "dim": d, "rows": n, "rate": rate, "steps": args.sim_steps}
        res = _spawn(_sim_worker, w, job, args.timeout)
        wall = time.perf_counter() - t0
        if isinstance(res, str):
            print(res)
            continue
        total_w = sum(r["weight"] for r in res)
        total_s = sum(r["state"] for r in res)
        print(f"wall {wall:.0f} s (spawn, import, build, {args.sim_steps} steps); loss per step "
              + ", ".join(f"{x:.3f}" for x in res[0]["losses"]))
        print("| rank | classes | centres MB | optimiser row state MB | sampled copy MB | share of total "
              "| build s | step times s | RSS after imports MB | peak RSS MB (above imports) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(res):
            share = (r["weight"] + r["state"]) / (total_w + total_s)
            print(f"| {i} | {r['classes_here']:,} | {r['weight'] / MB:.0f} | {r['state'] / MB:.0f} | "
                  f"{r['sub'] / MB:.0f} | {share:.4f} (1/{1 / share:.2f}) | {r['build_s']:.1f} | "
                  + ", ".join(f"{x:.2f}" for x in r["times"])
                  + f" | {r['base'] / MB:.0f} | {r['hwm'] / MB:.0f} ({(r['hwm'] - r['base']) / MB:.0f}) |")
        steps = [max(s) for s in zip(*(r["times"] for r in res))]
        print(f"total over ranks: centres {total_w / MB:.0f} MB + optimiser row state {total_s / MB:.0f} MB = "
              f"{(total_w + total_s) / MB:.0f} MB (one process would hold all of it); "
              f"summed peak RSS {sum(r['hwm'] for r in res) / 2**30:.1f} GiB; "
              f"slowest rank per step " + ", ".join(f"{s:.2f}" for s in steps) + " s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default="10000,100000,1000000", help="comma-separated class counts")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256, help="global batch (the sharded processes get half each)")
    ap.add_argument("--rate", type=float, default=0.1, help="sample rate of the sampled variant")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the one-process variants")
    ap.add_argument("--step", action="store_true", help="add an SGD step (momentum, weight decay) to every variant")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per variant before giving up")
    ap.add_argument("--simulate", action="store_true", help="the 10M-class, 8-process simulation instead")
    ap.add_argument("--sim-rate", default="0.1", help="comma-separated rates for --simulate (1 = sharded)")
    ap.add_argument("--sim-classes", type=int, default=10_000_000)
    ap.add_argument("--sim-world", type=int, default=8)
    ap.add_argument("--sim-steps", type=int, default=3)
    args = ap.parse_args()
    if args.simulate:
        simulate(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
