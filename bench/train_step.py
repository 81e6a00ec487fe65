"""Training-step throughput of tface's StepEngine against a hand-written plain PyTorch loop, same process.

MobileFaceNet + ArcFace (both from the registry), SGD with momentum and weight decay (none on norms, PReLU and
biases), a warm-up schedule, batches of 112×112 uint8 images held in memory. The plain loop does the same
maths by hand (normalise, backbone, ArcFace logits, cross-entropy, SGD, schedule); the engine adds its
bookkeeping (per-branch loss and top-1, the NaN check). Also bf16 autocast, channels-last and (``--compile``)
torch.compile + channels-last, each against the engine in fp32. Every variant runs one step per round, round
after round, so a busy machine slows them alike; the median step of each is reported.

    python bench/train_step.py [--batch 32] [--classes 1000] [--rounds 2] [--threads 2] [--no-modes] [--compile]

The default run (batch 32, 12 steps) takes 1.5 minutes on 2 quiet cores, about 6 while they were shared by
several test suites. `--batch 128 --rounds 3` is the size the goal is
stated for (20 minutes there); `--compile` adds several minutes of compiling.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from tface.core import recipe, registry
from tface.core.classifier import Classifier
from tface.core.data.branches import MultiBatch
from tface.core.train.engine import StepEngine
from tface.core.train.setup import TrainingSetup, optimisation_parts

LR, MOMENTUM, WD, WARMUP = 0.1, 0.9, 5e-4, 100


class Plain:
    """The loop a user would write without tface: same weights, same data, same maths."""

    def __init__(self, backbone: nn.Module, centres: torch.Tensor, s: float, m: float, channels_last: bool):
        self.model = copy.deepcopy(backbone)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format).train()
        self.w = nn.Parameter(centres.detach().clone())
        self.s, self.cos_m, self.sin_m = s, math.cos(m), math.sin(m)
        self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
        params = [*self.model.parameters(), self.w]
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": WD},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        self.opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda i: 0.1 + 0.9 * min(i, WARMUP) / WARMUP)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        x = images.float().div_(127.5).sub_(1.0).contiguous(memory_format=self.memory_format)
        emb = self.model(x).float()
        cos = F.linear(F.normalize(emb), F.normalize(self.w)).clamp(-1.0, 1.0)
        t = cos.gather(1, labels[:, None])
        sin = torch.sqrt((1.0 - t * t).clamp(min=1e-7))
        phi = torch.where(t > self.th, t * self.cos_m - sin * self.sin_m, t - self.mm)
        loss = F.cross_entropy(cos.scatter(1, labels[:, None], phi) * self.s, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.item()


class Engine:
    """tface's StepEngine on a hand-built TrainingSetup (what build_training makes, minus the data loader)."""

    def __init__(self, backbone: nn.Module, classifier: Classifier, **train):
        cfg = recipe.TrainConfig(lr=LR, momentum=MOMENTUM, weight_decay=WD, warmup_steps=WARMUP, **train)
        backbone = copy.deepcopy(backbone).train()
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        backbone = backbone.to(memory_format=memory_format)
        classifiers = nn.ModuleDict({"a": copy.deepcopy(classifier)})
        cpu = torch.device("cpu")
        self.setup = TrainingSetup(device=cpu, backbone=backbone, classifiers=classifiers, weights={"a": 1.0},
                                   loader=None, memory_format=memory_format, eval_provided={}, data_seconds=0.0,
                                   cfg=cfg, **optimisation_parts(cfg, backbone, classifiers, cpu))
        self.engine = StepEngine(self.setup)
        self.n = 0

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.n += 1
        return self.engine.step([MultiBatch(images, (labels,), ("a",), (len(labels),))], self.n).loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32, help="images per step (the goal is stated for 128)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-modes", action="store_true", help="only plain vs engine in fp32 (skip bf16, channels-last)")
    ap.add_argument("--compile", action="store_true",
                    help="add torch.compile + channels-last (compiling takes minutes on 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = registry.create("backbones", "mobilefacenet")
    head = registry.create("heads", "arcface")
    classifier = Classifier(args.classes, backbone.embedding_size, head)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 256, (args.batch, 3, 112, 112), dtype=torch.uint8, generator=g),
             torch.randint(0, args.classes, (args.batch,), generator=g)) for _ in range(2)]

    variants: dict[str, object] = {
        "plain loop fp32": Plain(backbone, classifier.weight, head.s, head.m, channels_last=False),
        "tface engine fp32": Engine(backbone, classifier),
    }
    if not args.no_modes:
        variants["tface engine bf16"] = Engine(backbone, classifier, precision="bf16")
        variants["tface engine channels_last"] = Engine(backbone, classifier, channels_last=True)
    if args.compile:
        variants["tface engine compile+channels_last"] = Engine(backbone, classifier, compile=True, channels_last=True)

    times: dict[str, list[float]] = {name: [] for name in variants}
    first: dict[str, float] = {}
    for r in range(args.rounds + 1):  # round 0 warms up allocators and kernels (and compiles)
        images, labels = data[r % len(data)]
        for name, v in variants.items():
            t0 = time.perf_counter()
            loss = v.step(images, labels)
            dt = time.perf_counter() - t0
            if r == 0:
                first[name] = loss
                if "compile" in name:
                    print(f"({name}: first step incl. compilation {dt:.0f}s)", flush=True)
            else:
                times[name].append(dt)
    a, b = first["plain loop fp32"], first["tface engine fp32"]
    print(f"same maths: first-step loss plain {a:.5f}, engine {b:.5f}")
    rate = {name: args.batch / statistics.median(ts) for name, ts in times.items()}
    base, engine = rate["plain loop fp32"], rate["tface engine fp32"]
    print(f"batch {args.batch}, {args.classes} classes, {args.threads} threads, median of {args.rounds} steps")
    print(f"baseline  plain loop fp32:       {base:7.1f} images/s  ratio 1.00")
    print(f"tface     engine fp32:           {engine:7.1f} images/s  ratio {engine / base:.2f}  (goal >= 0.95)")
    for name, value in rate.items():
        if name.startswith("tface engine") and name != "tface engine fp32":
            label = name.removeprefix("tface engine ") + ":"
            print(f"tface     {label:<22} {value:7.1f} images/s  ratio {value / engine:.2f}  vs engine fp32")


if __name__ == "__main__":
    main()
