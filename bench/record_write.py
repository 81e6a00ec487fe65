"""Writing records: tface's ``ShardWriter`` (own Example serialiser, no protobuf) vs the ``tfrecord`` package.

Baseline: ``tfrecord.writer.TFRecordWriter`` (protobuf ``Example`` objects, default backend) writing the
datums a ``pack --extra-keys`` run writes (image, label, landmarks, path). Measured: ``ShardWriter`` with
``extra_keys=True`` writing the same records, index included, in the same process. Prints records/s and the
ratio to the baseline.

    python bench/record_write.py [--records 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from data_read import best_rate  # this folder's shared timing helper (run as a script)

from tface.core.data.writer import ShardWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from tfrecord.writer import TFRecordWriter

    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, 5000, dtype=np.uint8).tobytes() for _ in range(64)]  # JPEG-sized payloads
    points = [float(v) for v in rng.uniform(20, 90, 10)]
    n = args.records

    with tempfile.TemporaryDirectory() as tmp:
        def baseline():
            w = TFRecordWriter(str(Path(tmp) / "ref.tfrecord"))
            for i in range(n):
                w.write({"image": (blobs[i % 64], "byte"), "label": (i, "int"), "landmarks": (points, "float"),
                         "path": (f"id{i % 1000}/{i}.jpg".encode(), "byte")})
            w.close()

        def ours():
            with ShardWriter(tmp, "bench", shard_size=n, extra_keys=True) as w:
                for i in range(n):
                    w.add(blobs[i % 64], i, landmarks=points, path=f"id{i % 1000}/{i}.jpg")

        base = best_rate(baseline, n, args.repeats)
        mine = best_rate(ours, n, args.repeats)
    print(f"baseline  tfrecord.writer.TFRecordWriter (protobuf):  {base:10.0f} records/s  ratio 1.00")
    print(f"tface     ShardWriter (own serialiser, with index):   {mine:10.0f} records/s  ratio {mine / base:.2f}")


if __name__ == "__main__":
    main()
