"""Random-access TFRecord reading (tface, CRC-checked) vs the ``tfrecord`` package's sequential reader.

Baseline: ``tfrecord.reader.tfrecord_loader`` streaming one shard front to back (no CRC check, no random
access). Measured: ``IndexedTFRecordDataset.read_image_bytes`` in a shuffled order, with and without CRC
verification, on the same records in the same process. Prints records/s and the ratio to the baseline.

    python bench/data_read.py [--records 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tface.core.data.dataset import IndexedTFRecordDataset
from tface.core.data.writer import ShardWriter


def make(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
        blobs.append(buf.getvalue())
    with ShardWriter(root, "bench", shard_size=n) as w:
        for i in range(n):
            w.add(blobs[i % 64], label=i % 1000)
    return root / "bench.txt"


def best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from tfrecord.reader import tfrecord_loader

    with tempfile.TemporaryDirectory() as tmp:
        index = make(Path(tmp), args.records)
        shard = str(Path(tmp) / "bench" / "bench-00000.tfrecord")
        order = np.random.default_rng(1).permutation(args.records)

        def baseline():
            for _ in tfrecord_loader(shard, None, ["image"]):
                pass

        def ours(verify: bool):
            ds = IndexedTFRecordDataset(index, verify_crc=verify)
            for i in order:
                ds.read_image_bytes(int(i))

        base = best_rate(baseline, args.records, args.repeats)
        checked = best_rate(lambda: ours(True), args.records, args.repeats)
        unchecked = best_rate(lambda: ours(False), args.records, args.repeats)
    print(f"baseline  tfrecord.reader.tfrecord_loader, sequential: {base:10.0f} records/s  ratio 1.00")
    print(f"tface     random access, CRC verified:                 {checked:10.0f} records/s  "
          f"ratio {checked / base:.2f}")
    print(f"tface     random access, no CRC:                       {unchecked:10.0f} records/s  "
          f"ratio {unchecked / base:.2f}")


if __name__ == "__main__":
    main()
