"""Verification embedding: each distinct image once (tface) vs every ``.bin`` slot (the old path), same process.

A SynthFace-rendered set of ``--distinct`` images (4 per identity, JPEG) in ``--pairs`` pairs (half same
identity, half different), so images repeat as in public sets; MobileFaceNet (128-d, eval mode) with the
flip test. Baseline: the former ``embed_raw``, which decoded and embedded all 2N slots (and their mirrors)
— written out below, it is no longer in tface. Measured: ``tface.eval.verification.embed_raw`` with
contiguous and with channels-last inputs. Prints images/s of the whole set (best of ``--repeats``), the
ratio to the baseline, and the largest embedding difference to the baseline.

    python bench/verification_dedup.py [--distinct 400] [--pairs 3000] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from data_read import best_rate  # this folder's shared timing helper (run as a script)
from PIL import Image

from tface.backbones.mobilefacenet import mobilefacenet
from tface.core.data.synthrender import train_identities, train_images
from tface.eval.verification import _embed, _EvalMode, embed_raw, load_crops

PER_IDENTITY = 4


def make_set(distinct: int, pairs: int, seed: int = 0) -> list[bytes]:
    """2·``pairs`` encoded images drawn from ``distinct`` SynthFace renders (``PER_IDENTITY`` per identity)."""
    n_ids = max(2, distinct // PER_IDENTITY)
    blobs: list[list[bytes]] = []
    for i, ident in enumerate(train_identities(seed, n_ids)):
        blobs.append([])
        for arr in train_images(seed, i, ident, PER_IDENTITY):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=95)
            blobs[-1].append(buf.getvalue())
    rng = np.random.default_rng(seed)
    images: list[bytes] = []
    for k in range(pairs):
        a = int(rng.integers(n_ids))
        if k % 2 == 0:
            i, j = rng.choice(PER_IDENTITY, 2, replace=False)
            images += [blobs[a][i], blobs[a][j]]
        else:
            b = (a + 1 + int(rng.integers(n_ids - 1))) % n_ids
            images += [blobs[a][int(rng.integers(PER_IDENTITY))], blobs[b][int(rng.integers(PER_IDENTITY))]]
    return images


def embed_every_slot(model: torch.nn.Module, images: list[bytes], batch_size: int = 64,
                     image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """The old path: decode and embed every slot and its mirror, repeats included."""
    device, dtype = torch.device("cpu"), torch.float32
    raw: list[np.ndarray | None] = [None, None]
    with _EvalMode(model), torch.no_grad():
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            batch = load_crops(images, start, stop, image_size)
            for k, copy in enumerate((batch, batch.flip(-1))):
                emb = _embed(model, copy, device, dtype)
                if raw[k] is None:
                    raw[k] = np.empty((len(images), emb.shape[1]), dtype=np.float32)
                raw[k][start:stop] = emb
    return raw[0], raw[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distinct", type=int, default=400)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = make_set(args.distinct, args.pairs)
    n_distinct = len(set(images))
    print(f"set: {args.pairs} pairs, {len(images)} slots, {n_distinct} distinct images; mobilefacenet-128, flip")
    torch.manual_seed(0)
    model = mobilefacenet(embedding_size=128)
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    embed_raw(model, images[:64])  # warm up allocators and kernels in both memory formats
    embed_raw(model, images[:64], channels_last=True)

    def run(key, fn):
        def call():
            out[key] = fn()
        return best_rate(call, len(images), args.repeats)

    base = run("old", lambda: embed_every_slot(model, images))
    new = run("new", lambda: embed_raw(model, images))
    new_cl = run("cl", lambda: embed_raw(model, images, channels_last=True))
    diff = {k: max(float(np.abs(out[k][0] - out["old"][0]).max()), float(np.abs(out[k][1] - out["old"][1]).max()))
            for k in ("new", "cl")}
    print(f"baseline  every slot (2x{len(images)} forwards):        {base:8.1f} images/s  "
          f"{len(images) / base:7.2f} s  ratio 1.00")
    print(f"tface     distinct images (2x{n_distinct} forwards):    {new:8.1f} images/s  "
          f"{len(images) / new:7.2f} s  ratio {new / base:.2f}  max |diff| {diff['new']:.1e}")
    print(f"tface     distinct, channels_last = true:      {new_cl:8.1f} images/s  "
          f"{len(images) / new_cl:7.2f} s  ratio {new_cl / base:.2f}  max |diff| {diff['cl']:.1e}")


if __name__ == "__main__":
    main()
