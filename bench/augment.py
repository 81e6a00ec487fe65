"""Augmentation throughput, images/s on one thread (as in a loader worker), tface-augment against Pillow.

Inputs: 32 SynthFace renders, 112×112 uint8, held in memory (tface: ``[3, H, W]`` tensors; Pillow: RGB
``Image`` objects, so neither side pays a conversion). ``torch.set_num_threads(1)``.

  (a) every registered tface-augment augmenter at its defaults with ``p = 1`` (it always acts), alone;
      aliases (``flip``) are timed once; occluders get the image with its template landmarks;
  (b) a typical pipeline, every op with ``p = 1``: hflip, rotate [-15, 15], random_resized_crop
      (scale [0.8, 1], ratio [0.9, 1.1]), color_jitter (0.3, 0.3, 0.3), blur (sigma [0.5, 2]), jpeg
      (quality [30, 90]), random_erasing (scale [0.02, 0.25], constant fill), through ``Compose``;
  (c) the same pipeline written with Pillow: ``transpose``, ``rotate`` (bilinear), ``resize(box=...)``
      (bilinear), ``ImageEnhance`` brightness / contrast / colour in a random order, ``GaussianBlur``,
      JPEG save + load, ``ImageDraw.rectangle``.
  (d) the ops with a batch form (``on = "device"``) on a uint8 batch of ``--batch`` images on ``--device`` against
      (a)'s one image at a time, and the pipeline without jpeg through ``DeviceAugment`` against ``Compose``.

(b) and (c) run round after round, interleaved, so a busy machine slows both alike; the median round of
each is reported, and the ratio (b) / (c) (> 1: tface is faster).

    python bench/augment.py [--images 400] [--rounds 5] [--batch 128] [--device cpu|cuda]

Measured 2026-12-03, 2 cores, ``python bench/augment.py`` (load 1.1), after the batch forms (``on = "device"``)
and the per-image parameter maths in numpy:

    (a) one op, defaults, p = 1, 112x112 uint8, 1 thread (20 ops), images/s
    posterize 41,181 · hflip 23,279 · grayscale 14,824 · autocontrast 11,544 · random_erasing 11,143 ·
    solarize 10,704 · lowres 5,071 · equalize 4,280 · noise 4,207 · color_jitter 3,647 · jpeg 3,088 ·
    shift 2,307 · sharpness 2,271 · random_resized_crop 2,052 · rotate 1,645 · motion_blur 1,332 · blur 1,319 ·
    glasses 310 · mask 179 · headscarf 110

    (b, c) pipeline of 7 ops, all p = 1: median of 5 rounds x 400 images
    tface (Compose) 398 images/s (2512 µs) · Pillow 765 images/s (1307 µs) · ratio tface / Pillow: 0.52x

    (d) ops with a batch form: batches of 128 on the CPU (1 thread) vs one image at a time, images/s
    posterize 10.69x · random_erasing 3.53x · random_resized_crop 1.72x · shift 1.66x · blur 1.47x ·
    hflip 1.24x · noise 1.11x · rotate 1.08x · color_jitter 0.93x · grayscale 0.93x · solarize 0.45x
    pipeline without jpeg: workers (Compose, per image) 467 · device (batch of 128, cpu) 591 · ratio 1.27x

Earlier runs: 362 vs 607 images/s (0.60x) before the batch forms on a quieter machine; 0.36x right after them,
when every op drew its per-image parameters as small tensors (a random resized crop's matrix took 153 µs, now
53 µs in numpy). The tface pipeline takes about twice as long per image as Pillow's: the float blur and the
float ``grid_sample`` warps cost most of it; Pillow does them in uint8 C loops. The occluders (glasses, mask,
headscarf) are the dearest ops by far. On a GPU, ``--device cuda`` measures the batch forms where they are meant
to run (not measured here: no GPU was lent).
"""

from __future__ import annotations

import argparse
import io
import math
import random
import statistics
import time
from collections.abc import Callable

import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from tface.augment.preview import synthface_images
from tface.core import registry
from tface.core.data.sample import FaceSample, takes_sample
from tface.core.train.batchaugment import DeviceAugment
from tface.core.train.components import Compose

PIPELINE = [
    ("hflip", {}),
    ("rotate", {"degrees": [-15.0, 15.0]}),
    ("random_resized_crop", {"scale": [0.8, 1.0], "ratio": [0.9, 1.1]}),
    ("color_jitter", {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3}),
    ("blur", {"sigma": [0.5, 2.0]}),
    ("jpeg", {"quality": [30, 90]}),
    ("random_erasing", {"scale": [0.02, 0.25], "ratio": [0.3, 3.3], "fill": "constant"}),
]


def pil_pipeline(img: Image.Image, rng: random.Random) -> Image.Image:
    """(c): the pipeline's ops and ranges with Pillow."""
    w, h = img.size
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    area, ratio = rng.uniform(0.8, 1.0), math.exp(rng.uniform(math.log(0.9), math.log(1.1)))
    cw, ch = min(w, w * math.sqrt(area * ratio)), min(h, h * math.sqrt(area / ratio))
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    img = img.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    rng.shuffle(enhancers)
    for enhancer in enhancers:
        img = enhancer(img).enhance(rng.uniform(0.7, 1.3))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(30, 90))
    buf.seek(0)
    img = Image.open(buf).convert("RGB")
    for _ in range(10):
        area = w * h * rng.uniform(0.02, 0.25)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 1 <= eh <= h and 1 <= ew <= w:
            top, left = rng.randint(0, h - eh), rng.randint(0, w - ew)
            ImageDraw.Draw(img).rectangle([left, top, left + ew - 1, top + eh - 1], fill=(0, 0, 0))
            break
    return img


def rate(fn: Callable[[object], object], inputs: list, n: int) -> float:
    """Images/s of ``fn`` over ``n`` images, cycling through ``inputs``."""
    start = time.perf_counter()
    for i in range(n):
        fn(inputs[i % len(inputs)])
    return n / (time.perf_counter() - start)


def as_input(op: Callable) -> Callable:
    if takes_sample(op):
        return lambda img: op(FaceSample.aligned(img))
    return op


def batch_rate(fn: Callable[[torch.Tensor, int], torch.Tensor], images: torch.Tensor, rounds: int) -> float:
    """Images/s of ``fn(batch, k)`` over ``rounds`` calls on ``images`` (synchronised on a GPU)."""
    fn(images, 0)  # warm-up
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for k in range(rounds):
        fn(images, k + 1)
    if images.is_cuda:
        torch.cuda.synchronize()
    return rounds * len(images) / (time.perf_counter() - start)


def batch_section(tensors: list[torch.Tensor], per_image: dict[str, float], batch: int, rounds: int,
                  device: torch.device) -> None:
    """(d): the ops with a batch form on a whole uint8 batch (``on = "device"``) vs one image at a time."""
    images = torch.stack([tensors[i % len(tensors)] for i in range(batch)]).to(device)
    rows = []
    for name, r in per_image.items():
        op = registry.get("augmenters", name)(p=1.0)
        if not callable(getattr(op, "batch", None)):
            continue
        gen = torch.Generator(device=device)
        b = statistics.median(batch_rate(lambda x, k, op=op, gen=gen: op.batch(x, gen.manual_seed(k)), images, rounds)
                              for _ in range(3))
        rows.append((name, r, b))
    print(f"\n(d) ops with a batch form: one image at a time (a) vs batches of {batch} on {device} "
          f"({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})\n")
    print(f"| {'op':<20} | {'per image/s':>11} | {'batch images/s':>14} | {'ratio':>6} |")
    print(f"|{'-' * 22}|{'-' * 12}:|{'-' * 15}:|{'-' * 7}:|")
    for name, r, b in sorted(rows, key=lambda x: -x[2] / x[1]):
        print(f"| {name:<20} | {r:>11,.0f} | {b:>14,.0f} | {b / r:>5.2f}x |")
    ops = [(name, opts) for name, opts in PIPELINE if name != "jpeg"]
    compose = Compose([registry.get("augmenters", name)(p=1.0, **opts) for name, opts in ops])
    device_aug = DeviceAugment([registry.get("augmenters", name)(p=1.0, on="device", **opts) for name, opts in ops],
                               seed=0)
    one = statistics.median(rate(compose, tensors, max(batch, 200)) for _ in range(3))
    whole = statistics.median(batch_rate(lambda x, k: device_aug(x, step=k), images, rounds) for _ in range(3))
    print(f"\npipeline without jpeg ({', '.join(n for n, _ in ops)}), all p = 1:\n")
    print(f"| {'placement':<28} | {'images/s':>9} |")
    print(f"|{'-' * 30}|{'-' * 10}:|")
    print(f"| {'workers (Compose, per image)':<28} | {one:>9,.0f} |")
    print(f"| {'device (batch of ' + str(batch) + ', ' + device.type + ')':<28} | {whole:>9,.0f} |")
    print(f"\nratio device / workers: {whole / one:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400, help="images per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median reported)")
    parser.add_argument("--batch", type=int, default=128, help="batch size of the batch forms (d)")
    parser.add_argument("--device", default="cpu", help="where (d) runs the batch forms: cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with open("/proc/loadavg") as f:
        print(f"loadavg before: {f.read().strip()}")
    tensors = synthface_images(32, 112)
    pils = [Image.fromarray(t.permute(1, 2, 0).numpy(), "RGB") for t in tensors]

    seen: set[str] = set()
    rows: list[tuple[str, float]] = []
    for entry in registry.entries("augmenters"):
        if entry.distribution != "tface-augment" or entry.target in seen:
            continue
        seen.add(entry.target)
        op = as_input(registry.get("augmenters", entry.qualified)(p=1.0))
        rate(op, tensors, 20)  # warm-up
        rows.append((entry.name, statistics.median(rate(op, tensors, args.images // 2) for _ in range(3))))

    compose = Compose([registry.get("augmenters", name)(p=1.0, **opts) for name, opts in PIPELINE])
    rng = random.Random(0)
    rate(compose, tensors, 20)
    rate(lambda im: pil_pipeline(im, rng), pils, 20)
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(rate(compose, tensors, args.images))
        theirs.append(rate(lambda im: pil_pipeline(im, rng), pils, args.images))
    t, p = statistics.median(ours), statistics.median(theirs)

    print(f"\n(a) one op, defaults, p = 1, 112x112 uint8, 1 thread ({len(rows)} ops)\n")
    print(f"| {'op':<20} | {'images/s':>9} | {'µs/image':>8} |")
    print(f"|{'-' * 22}|{'-' * 10}:|{'-' * 9}:|")
    for name, r in sorted(rows, key=lambda x: -x[1]):
        print(f"| {name:<20} | {r:>9,.0f} | {1e6 / r:>8.0f} |")
    print(f"\n(b, c) pipeline of {len(PIPELINE)} ops, all p = 1: median of {args.rounds} rounds x "
          f"{args.images} images\n")
    print(f"| {'pipeline':<20} | {'images/s':>9} | {'µs/image':>8} |")
    print(f"|{'-' * 22}|{'-' * 10}:|{'-' * 9}:|")
    print(f"| {'tface (Compose)':<20} | {t:>9,.0f} | {1e6 / t:>8.0f} |")
    print(f"| {'Pillow':<20} | {p:>9,.0f} | {1e6 / p:>8.0f} |")
    print(f"\nratio tface / Pillow: {t / p:.2f}x")
    batch_section(tensors, dict(rows), args.batch, max(2, args.images // args.batch), torch.device(args.device))
    with open("/proc/loadavg") as f:
        print(f"loadavg after: {f.read().strip()}")


if __name__ == "__main__":
    main()
