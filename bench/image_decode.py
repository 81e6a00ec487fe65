"""What tface's one decoder costs on the training loader's JPEG path, and what refusing a bomb costs.

Same 112×112 JPEG face records as ``data_loading.py`` (SynthFace renders, quality 95), in memory, one
thread, the two decoders interleaved over several rounds (best round of each), so machine load hits both:

  (a) tface      ``decode_rgb``: magic-byte dispatch, pixel limit (environment lookup + JPEG SOFn header
                 parse), torchvision ``decode_image`` with EXIF orientation.
  (b) bare       torchvision ``decode_image(..., ImageReadMode.RGB)`` of the same bytes, nothing else
                 (what ``decode_rgb`` was before the checks).

Then a 12000×12000 PNG (144 MP, ~140 KB): the time ``decode_rgb`` takes to refuse it from its header, and
the time Pillow takes to decode it (which is what ``pack`` did before).

    python bench/image_decode.py [--distinct 800] [--rounds 7]
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
import zlib

import numpy as np
import torch
from data_loading import render_jpegs  # this folder's shared SynthFace JPEGs (run as a script)
from PIL import Image

from tface.core.data.image import ImageTooLargeError, decode_rgb, image_size


def bomb_png(side: int) -> bytes:
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distinct", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_image

    jpegs = render_jpegs(args.distinct)

    def bare() -> None:
        for data in jpegs:
            decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def ours() -> None:
        for data in jpegs:
            decode_rgb(data)

    def header_only() -> None:
        for data in jpegs:
            image_size(data)

    for data in jpegs[:50]:  # same pixels
        want = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        assert torch.equal(decode_rgb(data), want)
    best = {"tface": float("inf"), "bare": float("inf"), "header": float("inf")}
    for _ in range(args.rounds):
        for name, fn in (("tface", ours), ("bare", bare), ("header", header_only)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / len(jpegs))
    print(f"{len(jpegs)} distinct 112x112 JPEGs, mean {np.mean([len(j) for j in jpegs]):.0f} bytes, "
          f"best of {args.rounds} interleaved rounds")
    print(f"(a) tface decode_rgb   {best['tface'] * 1e6:7.1f} us/image")
    print(f"(b) bare torchvision   {best['bare'] * 1e6:7.1f} us/image")
    print(f"    image_size header  {best['header'] * 1e6:7.1f} us/image")
    print(f"ratio (a)/(b) time = {best['tface'] / best['bare']:.3f}   (goal <= 1.03)")

    bomb = bomb_png(12000)
    t0 = time.perf_counter()
    try:
        decode_rgb(bomb)
    except ImageTooLargeError as exc:
        refused = time.perf_counter() - t0
        print(f"12000x12000 PNG ({len(bomb) // 1024} KB): refused in {refused * 1e3:.2f} ms: {exc}")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(bomb)) as im:
            pixels = np.asarray(im.convert("RGB"))
    print(f"Pillow decoding it instead: {time.perf_counter() - t0:.2f} s, {pixels.nbytes / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
