"""Training-loader throughput: tface's loader vs a TFace-style reader vs JPEG decoding alone.

All three read the same 112×112 JPEG face records (SynthFace renders, quality 95), in one process (one
"worker"), in the same shuffled order:

  (a) tface      ``IndexedTFRecordDataset`` through a ``DataLoader(batch_size=128, num_workers=0)``:
                 cached shard descriptors and one ``pread`` per record, both CRCs checked, the
                 hand-written Example parser, torchvision JPEG decode, uint8 batches collated in
                 channels-last order (normalised later, on the device, per batch).
  (b) baseline   what TFace's ``IndexTFRDataset`` does per sample: open the shard, seek, read the
                 12-byte header (native-order length), read the payload, protobuf ``Example`` parse,
                 sort the features, PIL decode + RGB, torchvision ``ToTensor`` + ``Normalize``; same
                 DataLoader settings.
  (c) limit      torchvision ``decode_jpeg`` of the same JPEG bytes already in memory, nothing else.

Prints images/s, the ratios (a)/(b) and (a)/(c), and where (a)'s time goes per image.

    python bench/data_loading.py [--records 8000] [--repeats 3] [--distinct 800]
"""

from __future__ import annotations

import argparse
import io
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from data_read import best_rate as rate  # this folder's shared timing helper (run as a script)
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tface.core.data import synthrender
from tface.core.data.base import collate_faces
from tface.core.data.dataset import IndexedTFRecordDataset
from tface.core.data.image import decode_rgb
from tface.core.data.index import read_index
from tface.core.data.tfrecord import bytes_feature
from tface.core.data.writer import ShardWriter

BATCH = 128


def render_jpegs(distinct: int) -> list[bytes]:
    out = []
    per = 8
    for ident in range(0, (distinct + per - 1) // per):
        identity = synthrender.train_identity(0, ident)
        for img in synthrender.train_images(0, ident, identity, per):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            out.append(buf.getvalue())
    return out[:distinct]


class TFaceStyle(Dataset):
    """Reads like TFace v0.1.0's IndexTFRDataset (reference §1.5): open per sample, protobuf, PIL."""

    def __init__(self, index_path: Path):
        from tfrecord import example_pb2  # protobuf, as TFace's generated module
        from torchvision import transforms

        idx = read_index(index_path)
        self.rows = [(str(idx.files[f]), int(o), int(lab)) for f, o, lab in zip(idx.file_id, idx.offsets, idx.labels)]
        self.example_cls = example_pb2.Example
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        path, offset, label = self.rows[i]
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(12)
            (length,) = struct.unpack("Q", head[:8])
            payload = f.read(length)
        example = self.example_cls()
        example.ParseFromString(payload)
        features = sorted(example.features.feature.items())
        image = dict(features)["image"].bytes_list.value[0]
        img = Image.open(io.BytesIO(image)).convert("RGB")
        return self.transform(img), label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=8000)
    ap.add_argument("--distinct", type=int, default=800, help="distinct rendered images (records cycle them)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one loader worker = one core
    jpegs = render_jpegs(args.distinct)
    print(f"{len(jpegs)} distinct 112x112 JPEGs, mean {np.mean([len(j) for j in jpegs]):.0f} bytes; "
          f"{args.records} records, batch {BATCH}, best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        with ShardWriter(tmp, "bench", shard_size=max(1, args.records // 4)) as w:
            for i in range(args.records):
                w.add(jpegs[i % len(jpegs)], label=i % 500)
        index = Path(tmp) / "bench.txt"
        order = np.random.default_rng(1).permutation(args.records).tolist()
        n = len(order) // BATCH * BATCH

        def through_loader(ds: Dataset, collate=None) -> None:
            for _ in DataLoader(ds, batch_size=BATCH, sampler=order, drop_last=True, num_workers=0,
                                collate_fn=collate):
                pass

        ours = IndexedTFRecordDataset(index)
        theirs = TFaceStyle(index)
        assert torch.allclose(theirs[5][0], ours[5][0].float() / 127.5 - 1, atol=1.1 / 127.5), "different pixels"
        in_memory = [jpegs[i % len(jpegs)] for i in order]

        def decode_only() -> None:
            for data in in_memory:
                decode_rgb(data)

        r_a = rate(lambda: through_loader(ours, collate_faces), n, args.repeats)
        r_b = rate(lambda: through_loader(theirs), n, args.repeats)
        r_c = rate(decode_only, len(in_memory), args.repeats)
        print(f"(a) tface loader      {r_a:8.0f} images/s")
        print(f"(b) TFace-style       {r_b:8.0f} images/s")
        print(f"(c) decode only       {r_c:8.0f} images/s")
        print(f"ratio (a)/(b) = {r_a / r_b:.2f}   (goal >= 3)")
        print(f"ratio (a)/(c) = {r_a / r_c:.2f}   (goal >= 0.8)")

        # where (a)'s time goes, per image
        payloads = []

        def read_all() -> None:
            payloads.clear()
            for i in order:
                payloads.append(ours.read_payload(i))

        def parse_all() -> None:
            for p in payloads:
                bytes_feature(p, "image")

        def collate_all() -> None:
            items = [(decode_rgb(jpegs[0]), 0)] * BATCH
            for _ in range(n // BATCH):
                collate_faces(items)

        stages = {
            "pread + 2 CRCs": 1e6 / rate(read_all, len(order), args.repeats),
            "Example parse": 1e6 / rate(parse_all, len(order), args.repeats),
            "JPEG decode": 1e6 / r_c,
            "collate (uint8, NHWC)": 1e6 / rate(collate_all, n, args.repeats),
        }
        total = 1e6 / r_a
        print(f"(a) per image: {total:.1f} us")
        for name, us in stages.items():
            print(f"    {name:24s} {us:6.1f} us ({100 * us / total:4.1f}%)")
        rest = total - sum(stages.values())
        print(f"    {'other (DataLoader, calls)':24s} {rest:6.1f} us ({100 * rest / total:4.1f}%)")


if __name__ == "__main__":
    main()
