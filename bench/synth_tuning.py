"""Size SynthFace and the quickstart training settings to the CPU budget.

Generates SynthFace training images and held-out verification pairs in memory (JPEG q95 round trip, as
the real pipeline stores them), evaluates the randomly initialised MobileFaceNet, trains it with an
ArcFace head (SGD, momentum 0.9, weight decay on weights only, linear warm-up then step decay, random
horizontal flip) and evaluates again. Prints each phase's wall time and both accuracies, so one run
answers "does the quickstart fit in its time budget and does training clearly help".

Run from the repository root::

    PYTHONPATH=tface-core/src:tface-backbones/src python bench/synth_tuning.py --seed 0
    ... --size 64 --identities 200 --images 50 --steps 950 --decay 760,880 --lr 0.1   (64×64 crops)

Verification follows insightface: flip test (embedding(x) + embedding(mirror x)), L2 normalisation,
squared euclidean distance, 10 folds with the best threshold of the other 9 folds.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing as mp
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tface.core.allocator import keep_freed_memory
from tface.core.data import synthrender
from tface.core.data.synthface import _jpeg

#: crop side (``--size``); set before the generation processes fork
SIZE = 112


def jpeg_roundtrip(img: np.ndarray, quality: int = 95) -> np.ndarray:
    """The image as the pipeline stores it (SynthFace's encoder: area-downsampled to SIZE, JPEG) and decodes it."""
    return np.asarray(Image.open(io.BytesIO(_jpeg(img, quality, SIZE))).convert("RGB"))


def _identity_images(args: tuple[int, int, int]) -> np.ndarray:
    seed, index, count = args
    identity = synthrender.train_identity(seed, index)
    return np.stack([jpeg_roundtrip(im) for im in synthrender.train_images(seed, index, identity, count)])


def _pairs(args: tuple[int, int, int, float, int, int]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    seed, n_ids, n_pairs, hard, start, stop = args
    return [(jpeg_roundtrip(a), jpeg_roundtrip(b), same)
            for a, b, same in synthrender.verification_pairs(seed, n_ids, n_pairs, hard, start=start, stop=stop)]


def generate(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    jobs = [(args.seed, i, args.images) for i in range(args.identities)]
    chunk = max(2, args.pairs // 16)
    pair_jobs = [(args.seed, args.val_identities, args.pairs, args.hard_fraction, s, min(s + chunk, args.pairs))
                 for s in range(0, args.pairs, chunk)]
    if args.workers > 1:
        with mp.get_context("fork").Pool(args.workers) as pool:
            per_id = pool.map(_identity_images, jobs, chunksize=4)
            parts = pool.map(_pairs, pair_jobs)
    else:
        per_id = [_identity_images(j) for j in jobs]
        parts = [_pairs(j) for j in pair_jobs]
    x = torch.from_numpy(np.concatenate(per_id)).permute(0, 3, 1, 2).contiguous()  # uint8 N,3,H,W
    y = torch.arange(args.identities).repeat_interleave(args.images)
    pairs = [p for part in parts for p in part]
    val = torch.from_numpy(np.stack([im for a, b, _ in pairs for im in (a, b)])).permute(0, 3, 1, 2).contiguous()
    issame = np.array([s for _, _, s in pairs])
    return x, y, val, issame


def normalize(batch: torch.Tensor) -> torch.Tensor:
    return (batch.float() / 255.0 - 0.5) / 0.5


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch: int = 32, channels_last: bool = True) -> np.ndarray:
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    for i in range(0, len(images), batch):
        x = normalize(images[i:i + batch]).contiguous(memory_format=fmt)
        e = model(x) + model(torch.flip(x, dims=[3]))
        out.append(e.float().numpy())
    emb = np.concatenate(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)


def breakdown(emb: np.ndarray, issame: np.ndarray, kinds: np.ndarray) -> str:
    """Accuracy per pair kind at the single best threshold: genuine / easy impostor / hard (sibling)."""
    dist = ((emb[0::2] - emb[1::2]) ** 2).sum(1)
    ths = np.arange(0, 4, 0.01)
    th = ths[np.argmax([((dist < t) == issame).mean() for t in ths])]
    pred = dist < th
    parts = [f"{name} {np.mean(pred[kinds == k] == issame[kinds == k]):.3f}"
             for k, name in ((0, "genuine"), (2, "easy-imp"), (1, "hard-imp")) if (kinds == k).any()]
    return f"threshold {th:.2f}: " + ", ".join(parts)


def verification_accuracy(emb: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> tuple[float, float]:
    dist = ((emb[0::2] - emb[1::2]) ** 2).sum(1)
    thresholds = np.arange(0, 4, 0.01)
    n = len(issame)
    folds = np.array_split(np.arange(n), nfolds)
    accs = []

    def acc(th: np.ndarray, idx: np.ndarray) -> np.ndarray:
        pred = dist[idx][None, :] < th[:, None]
        return (pred == issame[idx][None, :]).mean(1)

    for f in folds:
        train = np.setdiff1d(np.arange(n), f)
        best = thresholds[np.argmax(acc(thresholds, train))]
        accs.append(acc(np.array([best]), f)[0])
    return float(np.mean(accs)), float(np.std(accs))


class ArcFaceHead(nn.Module):
    def __init__(self, emb: int, classes: int, s: float, m: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, emb).normal_(0, 0.01))
        self.s, self.m = s, m
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1, 1)
        target = cos.gather(1, labels[:, None])
        sin = (1 - target**2).clamp_min(1e-9).sqrt()
        phi = target * self.cos_m - sin * self.sin_m
        phi = torch.where(target > self.th, phi, target - self.mm)
        return cos.scatter(1, labels[:, None], phi) * self.s


def build_model(args) -> nn.Module:
    from tface.backbones.mobilefacenet import mobilefacenet

    model = mobilefacenet(embedding_size=args.emb, input_size=args.size)
    return model.to(memory_format=torch.channels_last) if args.channels_last else model


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * 0.1 ** sum(step >= d for d in args.decay)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args) -> None:
    head = ArcFaceHead(args.emb, args.identities, args.s, args.m)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay + [head.weight], "weight_decay": args.wd},
                           {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, momentum=0.9)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    order = torch.randperm(len(x), generator=g)
    pos = 0
    t0 = time.time()
    run_loss = run_acc = 0.0
    for step in range(args.steps):
        if pos + args.batch > len(order):
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos:pos + args.batch]
        pos += args.batch
        xb = normalize(x[idx])
        flip = torch.rand(len(idx), generator=g) < 0.5
        xb[flip] = torch.flip(xb[flip], dims=[3])
        if args.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        logits = head(model(xb), y[idx])
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss = 0.9 * run_loss + 0.1 * loss.item() if step else loss.item()
        run_acc = 0.9 * run_acc + 0.1 * (logits.argmax(1) == y[idx]).float().mean().item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.time() - t0
            print(f"  step {step + 1}/{args.steps} lr {lr_at(step, args):.4f} loss {run_loss:.3f} "
                  f"train-acc(margin) {run_acc:.3f} {el:.0f}s ({(step + 1) * args.batch / el:.1f} img/s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--identities", type=int, default=200)
    ap.add_argument("--images", type=int, default=40, help="images per training identity")
    ap.add_argument("--val-identities", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--hard-fraction", type=float, default=0.25)
    ap.add_argument("--emb", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.06)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--decay", type=lambda s: [int(v) for v in s.split(",") if v], default=[400, 460])
    ap.add_argument("--s", type=float, default=16.0)
    ap.add_argument("--m", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=112, help="crop side: renders are area-downsampled to it "
                    "(SynthFace's image_size) and MobileFaceNet gets that input_size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--workers", type=int, default=1, help="processes for data generation")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--skip-untrained", action="store_true")
    ap.add_argument("--cache", default="", help="tuning only: save/load the generated data to/from this file")
    args = ap.parse_args()
    print(vars(args), flush=True)
    global SIZE
    SIZE = args.size
    keep_freed_memory()  # as `tface run` does
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_all = time.time()

    t = time.time()
    if args.cache and os.path.exists(args.cache):
        d = torch.load(args.cache, weights_only=True)
        x, y, val, issame = d["x"], d["y"], d["val"], d["issame"]
        print(f"loaded cached data from {args.cache} (generation time below is not comparable)")
    else:
        x, y, val, issame = generate(args)
        if args.cache:
            torch.save({"x": x, "y": y, "val": val, "issame": [bool(v) for v in issame]}, args.cache)
    t_gen = time.time() - t
    print(f"generate: {len(x)} train images, {len(val)} val images in {t_gen:.1f}s "
          f"({t_gen / (len(x) + len(val)) * 1000:.2f} ms/img incl. JPEG)", flush=True)

    specs = synthrender.pair_specs(args.seed, args.val_identities, args.pairs, args.hard_fraction)
    kinds = np.array([0 if sp.same else (1 if sp.b == -1 else 2) for sp in specs])
    model = build_model(args)
    acc0 = (float("nan"), 0.0)
    t_eval0 = 0.0
    if not args.skip_untrained:
        t = time.time()
        emb = embed(model, val, channels_last=args.channels_last)
        acc0 = verification_accuracy(emb, issame)
        t_eval0 = time.time() - t
        print(f"untrained: acc {acc0[0]:.4f} +- {acc0[1]:.4f} ({t_eval0:.1f}s); {breakdown(emb, issame, kinds)}",
              flush=True)

    t = time.time()
    train(model, x, y, args)
    t_train = time.time() - t

    t = time.time()
    emb = embed(model, val, channels_last=args.channels_last)
    acc1 = verification_accuracy(emb, issame)
    t_eval1 = time.time() - t
    print(f"trained: acc {acc1[0]:.4f} +- {acc1[1]:.4f} ({t_eval1:.1f}s); {breakdown(emb, issame, kinds)}",
          flush=True)
    total = time.time() - t_all
    print(f"SUMMARY seed={args.seed} gen={t_gen:.0f}s eval0={t_eval0:.0f}s train={t_train:.0f}s eval1={t_eval1:.0f}s "
          f"total={total:.0f}s untrained={acc0[0]:.4f} trained={acc1[0]:.4f}", flush=True)


if __name__ == "__main__":
    main()
