"""``tface data`` reindex / unpack / stats / bin / subset, each checked against a brute-force reference."""

from __future__ import annotations

import io
import json
import math
import pickle
import random
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from tface.core.cli import cli
from tface.core.data.binfile import read_bin
from tface.core.data.writer import ShardWriter


def encoded(i: int, size: int = 16, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (23 * i % 256, 90, 180 - 11 * i % 180)).save(buf, format=fmt)
    return buf.getvalue()


def data(*args: object):
    return CliRunner().invoke(cli, ["data", *map(str, args)])


def read_rows(path: Path) -> list[tuple[str, int, int, int]]:
    out = []
    for line in path.read_text().splitlines():
        name, shard, offset, label = line.split("\t")
        out.append((name, int(shard), int(offset), int(label)))
    return out


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(f"{n}\t{s}\t{o}\t{lab}\n" for n, s, o, lab in rows))
    return path


# --- reindex --------------------------------------------------------------------------------------------


def packed(tmp_path: Path, n: int) -> tuple[Path, dict[str, tuple[int, int]]]:
    with ShardWriter(tmp_path, "pk", shard_size=4, pack_index=True) as w:
        for i in range(n):
            w.add(encoded(i), 0, path=f"/imgs/id{i % 3}/{i}.jpg")
    where = {p: (s, o) for p, s, o in w.pack_rows}
    return tmp_path / "pk" / "pk.index", where


def test_reindex_joins_in_label_list_order_and_reports_unmatched(tmp_path):
    pack, where = packed(tmp_path, 10)
    paths = sorted(where)
    listed = [paths[7], paths[2], paths[5], paths[0]]  # 6 pack images get no label
    missing = [f"/elsewhere/{k}.jpg" for k in range(25)]
    lines, labels = [], {}
    for k, p in enumerate(listed):
        labels[p] = 2 * k  # gaps on purpose: 0, 2, 4, 6
        lines.append(f"{p}\t{2 * k}")
        if k == 1:
            lines += [f"{m} 9" for m in missing]  # space-separated lines work too
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "train.txt"
    result = data("reindex", pack, tmp_path / "labels.txt", out, "--unmatched", tmp_path / "un.txt")
    assert result.exit_code == 0, result.output
    assert read_rows(out) == [("pk", *where[p], labels[p]) for p in listed]
    shown = [ln for ln in result.output.splitlines() if ln.startswith("unmatched: ")]
    assert shown == [f"unmatched: {m} ({tmp_path / 'labels.txt'}:{3 + k})" for k, m in enumerate(missing[:20])]
    assert "... and 5 more unmatched paths" in result.output
    assert (tmp_path / "un.txt").read_text().splitlines() == missing
    summary = {ln.split("  ")[1].strip(): ln.split("  ")[-1].strip()
               for ln in result.output.splitlines() if ln.startswith("  ")}
    assert summary["rows"] == "4"
    assert summary["unmatched label-list paths"] == "25"
    assert summary["pack images without a label"] == "6"
    assert summary["label space"].startswith("labels span 0..6 but 3 of them have no sample")


def test_reindex_record_name_and_errors(tmp_path):
    pack, where = packed(tmp_path, 3)
    p = sorted(where)[1]
    (tmp_path / "labels.txt").write_text(f"{p} 0\n")
    out = tmp_path / "t.txt"
    assert data("reindex", pack, tmp_path / "labels.txt", out, "--record-name", "other").exit_code == 0
    assert read_rows(out) == [("other", *where[p], 0)]
    (tmp_path / "none.txt").write_text("/nope.jpg 1\n")
    result = data("reindex", pack, tmp_path / "none.txt", tmp_path / "n.txt")
    assert result.exit_code == 1 and "none of its 1 paths" in result.output
    assert not (tmp_path / "n.txt").exists()
    (tmp_path / "bad.txt").write_text(f"{p} 0\n{p} x\n")
    result = data("reindex", pack, tmp_path / "bad.txt", out)
    assert result.exit_code == 1 and f"{tmp_path / 'bad.txt'}:2: label must be an integer" in result.output
    assert "--unmatched" in data("reindex", "--help").output


# --- unpack ---------------------------------------------------------------------------------------------


def test_unpack_names_bytes_and_table(tmp_path):
    images = [encoded(0), encoded(1, fmt="PNG"), b"not an image", encoded(3)]
    with ShardWriter(tmp_path, "u", shard_size=2, extra_keys=True) as w:
        for i, img in enumerate(images):
            w.add(img, label=i % 2, path=f"src/{i}\tx.jpg" if i == 0 else (f"src/{i}.jpg" if i != 3 else None))
    rows = list(w.rows)
    index = write_rows(tmp_path / "u.txt", rows + [("u", rows[1][1], rows[1][2], 5)])  # same record, new label
    out = tmp_path / "out"
    result = data("unpack", index, out)
    assert result.exit_code == 0, result.output
    ext = ["jpg", "png", "bin", "jpg", "png"]
    expected = []
    for k, (name, shard, offset, label) in enumerate(read_rows(index)):
        rel = f"{label}/{name}-{shard:05d}-{offset}.{ext[k]}"
        assert (out / rel).read_bytes() == images[k if k < 4 else 1]
        expected.append(rel)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(expected + ["unpacked.tsv", "tface-manifest.txt"])
    listed = [ln for ln in (out / "tface-manifest.txt").read_text().splitlines() if not ln.startswith("#")]
    assert listed == sorted(expected + ["unpacked.tsv"])
    table = (out / "unpacked.tsv").read_text().splitlines()
    assert table[0] == "file\tindex_line\tlabel\tpath"
    assert table[1:] == [f"{expected[0]}\t1\t0\tsrc/0\\tx.jpg", f"{expected[1]}\t2\t1\tsrc/1.jpg",
                         f"{expected[2]}\t3\t0\tsrc/2.jpg", f"{expected[3]}\t4\t1\t",
                         f"{expected[4]}\t5\t5\tsrc/1.jpg"]
    limited = tmp_path / "lim"
    assert data("unpack", index, limited, "--limit", "2").exit_code == 0
    assert len((limited / "unpacked.tsv").read_text().splitlines()) == 3


def test_unpack_errors_name_file_offset_and_line(tmp_path):
    with ShardWriter(tmp_path, "u", shard_size=2) as w:
        for i in range(3):
            w.add(encoded(i), label=i)
    shard0 = tmp_path / "u" / "u-00000.tfrecord"
    off = w.rows[1][2]
    raw = bytearray(shard0.read_bytes())
    raw[off + 30] ^= 0xFF
    shard0.write_bytes(bytes(raw))
    result = data("unpack", tmp_path / "u.txt", tmp_path / "o")
    assert result.exit_code == 1
    assert f"{shard0}: offset {off}: payload CRC mismatch" in result.output and "u.txt:2" in result.output
    (tmp_path / "u" / "u-00001.tfrecord").unlink()
    result = data("unpack", tmp_path / "u.txt", tmp_path / "o2")
    assert result.exit_code == 1 and "u.txt:3: shard file" in result.output and "is missing" in result.output


# --- stats ----------------------------------------------------------------------------------------------


def test_stats_against_brute_force(tmp_path):
    rng = random.Random(3)
    labels = [lab for lab in range(40) if lab % 7 != 3 for _ in range(rng.choice([1, 1, 2, 3, 5, 9, 17, 40]))]
    rng.shuffle(labels)
    rows = [("r", i % 5, 100 * i, lab) for i, lab in enumerate(labels)]
    index = write_rows(tmp_path / "idx.txt", rows)
    sizes = {0: 10, 1: 200, 2: 3000, 4: 7}  # shard 3 is missing
    for s, size in sizes.items():
        (tmp_path / "r").mkdir(exist_ok=True)
        (tmp_path / "r" / f"r-{s:05d}.tfrecord").write_bytes(b"\0" * size)
    result = data("stats", index, "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)

    per = Counter(labels)
    counts = sorted(per.values())
    hist: dict[int, int] = {}
    for c in counts:
        lo = 1
        while lo * 2 <= c:
            lo *= 2
        hist[lo] = hist.get(lo, 0) + 1
    top = max(hist)
    assert got["images"] == len(labels)
    assert got["identities"] == len(per)
    assert got["label_space"]["num_classes"] == max(labels) + 1
    assert got["label_space"]["missing_labels"] == [v for v in range(max(labels) + 1) if v not in per]
    ipi = got["images_per_identity"]
    assert (ipi["min"], ipi["max"]) == (counts[0], counts[-1])
    assert ipi["median"] == statistics.median(counts)
    assert math.isclose(ipi["mean"], len(labels) / len(per))
    lo = 1
    expected_hist = []
    while lo <= top:
        expected_hist.append({"from": lo, "to": 2 * lo - 1, "identities": hist.get(lo, 0)})
        lo *= 2
    assert ipi["histogram"] == expected_hist
    per_shard = Counter(i % 5 for i in range(len(labels)))
    assert got["shards"] == {"count": 5, "bytes": sum(sizes.values()), "records_min": min(per_shard.values()),
                             "records_max": max(per_shard.values()),
                             "missing": [str(tmp_path / "r" / "r-00003.tfrecord")]}
    text = data("stats", index)
    assert text.exit_code == 0 and f"images               {len(labels)}" in text.output
    assert "missing shard: " in text.output


# --- bin ------------------------------------------------------------------------------------------------


def lfw_tree(root: Path, size: int = 16) -> dict[Path, bytes]:
    files = {}
    for n, name in enumerate(["Ann_A", "Bob_B", "Cy_C"]):
        for k in range(1, 4):
            path = root / name / f"{name}_{k:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            files[path] = encoded(10 * n + k, size)
            path.write_bytes(files[path])
    return files


def test_bin_from_lfw_pairs(tmp_path):
    root = tmp_path / "lfw"
    files = lfw_tree(root)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t2\nAnn_A\t1\t2\nBob_B\t1\t3\nAnn_A\t3\tCy_C\t1\nBob_B\t2\tCy_C\t3\n")
    out = tmp_path / "lfw.bin"
    result = data("bin", pairs, out, "--root", root, "--image-size", "16")
    assert result.exit_code == 0, result.output
    expected = [("Ann_A", 1), ("Ann_A", 2), ("Bob_B", 1), ("Bob_B", 3), ("Ann_A", 3), ("Cy_C", 1), ("Bob_B", 2),
                ("Cy_C", 3)]
    want = [files[root / n / f"{n}_{k:04d}.jpg"] for n, k in expected]
    images, flags = read_bin(out)
    assert images == want and flags.tolist() == [True, True, False, False]
    with out.open("rb") as f:  # the insightface loader
        bins, issame = pickle.load(f, encoding="bytes")
    assert list(bins) == want and list(issame) == [True, True, False, False]


def test_bin_from_plain_list(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    blobs = {f"{k}.png": encoded(k, 8, "PNG") for k in range(4)}
    for name, blob in blobs.items():
        (root / name).write_bytes(blob)
    pairs = tmp_path / "list.txt"
    pairs.write_text("0.png 1.png 1\n\n2.png\t3.png\tfalse\n1.png 2.png TRUE\n3.png 0.png 0\n")
    out = tmp_path / "x.bin"
    result = data("bin", pairs, out, "--root", root, "--format", "list", "--image-size", "8")
    assert result.exit_code == 0, result.output
    images, flags = read_bin(out)
    order = ["0", "1", "2", "3", "1", "2", "3", "0"]
    assert images == [blobs[f"{k}.png"] for k in order]
    assert flags.tolist() == [True, False, True, False]


@pytest.mark.parametrize("case", ["missing", "size", "decode", "header", "fields", "issame"])
def test_bin_errors_name_the_pairs_line(tmp_path, case):
    root = tmp_path / "lfw"
    files = lfw_tree(root)
    pairs = tmp_path / "pairs.txt"
    fmt = "lfw"
    size = "16"
    if case == "missing":
        pairs.write_text("Ann_A 1 2\nAnn_A 1 9\n")
        msg = f"{pairs}:2: image {root / 'Ann_A' / 'Ann_A_0009.jpg'} does not exist"
    elif case == "size":
        pairs.write_text("Ann_A 1 2\n")
        size = "112"
        msg = f"{pairs}:1: image {root / 'Ann_A' / 'Ann_A_0001.jpg'} is 16x16, expected 112x112"
    elif case == "decode":
        bad = root / "Cy_C" / "Cy_C_0002.jpg"
        bad.write_bytes(files[bad][:40])
        pairs.write_text("Ann_A 1 2\nBob_B 1 Cy_C 2\n")
        msg = f"{pairs}:2: image {bad} does not decode"
    elif case == "header":
        pairs.write_text("2\nAnn_A 1 2\nAnn_A 1 Bob_B 1\n")
        msg = f"{pairs}:1: the header '2' announces 4 pairs but the file has 2"
    elif case == "fields":
        pairs.write_text("Ann_A 1 2\nAnn_A 1 2 3 4\n")
        msg = f"{pairs}:2: expected 'name i j' or 'name1 i name2 j', got 5 fields"
    else:
        fmt = "list"
        pairs.write_text("Ann_A/Ann_A_0001.jpg Ann_A/Ann_A_0002.jpg maybe\n")
        msg = f"{pairs}:1: issame must be 0/1 or true/false, got 'maybe'"
    result = data("bin", pairs, tmp_path / "o.bin", "--root", root, "--format", fmt, "--image-size", size)
    assert result.exit_code == 1
    assert msg in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.bin").exists()


# --- subset ---------------------------------------------------------------------------------------------


@pytest.fixture
def big_index(tmp_path: Path) -> tuple[Path, list[tuple[str, int, int, int]]]:
    rng = random.Random(11)
    rows = []
    for lab in range(0, 60, 2):  # even labels only: gaps in the input
        for _ in range(rng.randrange(1, 12)):
            rows.append(("s", lab % 3, 1000 + len(rows) * 37, lab))
    rng.shuffle(rows)
    return write_rows(tmp_path / "in.txt", rows), rows


def subset(tmp_path: Path, index: Path, *opts: object, name: str = "out.txt"):
    out = tmp_path / name
    result = data("subset", index, out, *opts)
    assert result.exit_code == 0, result.output
    return read_rows(out), out


def old_label_map(out: Path) -> dict[int, int]:
    lines = Path(f"{out}.labels.tsv").read_text().splitlines()
    assert lines[0] == "new_label\told_label"
    return {int(a): int(b) for a, b in (ln.split("\t") for ln in lines[1:])}


def back_to_input(rows, out: Path) -> list[tuple[str, int, int, int]]:
    mapping = old_label_map(out)
    return [(n, s, o, mapping[lab]) for n, s, o, lab in rows]


def is_ordered_sub(sub, full) -> bool:
    it = iter(full)
    return all(any(r == x for x in it) for r in sub)


def test_subset_relabels_in_old_label_order_and_keeps_rows(tmp_path, big_index):
    index, rows = big_index
    got, out = subset(tmp_path, index, "--min-images", "4")
    per = Counter(r[3] for r in rows)
    kept = sorted(lab for lab, c in per.items() if c >= 4)
    assert old_label_map(out) == dict(enumerate(kept))
    assert back_to_input(got, out) == [r for r in rows if per[r[3]] >= 4]
    assert sorted({r[3] for r in got}) == list(range(len(kept)))


def test_subset_is_deterministic_in_the_seed(tmp_path, big_index):
    index, rows = big_index
    opts = ("--identities", "10", "--max-per-identity", "3")
    a, _ = subset(tmp_path, index, *opts, "--seed", "4", name="a.txt")
    b, _ = subset(tmp_path, index, *opts, "--seed", "4", name="b.txt")
    c, _ = subset(tmp_path, index, *opts, "--seed", "5", name="c.txt")
    assert a == b and a != c


def test_subset_identities_and_caps(tmp_path, big_index):
    index, rows = big_index
    per = Counter(r[3] for r in rows)
    small, out_small = subset(tmp_path, index, "--identities", "5", "--keep-labels", name="s.txt")
    large, _ = subset(tmp_path, index, "--identities", "12", "--keep-labels", name="l.txt")
    assert len({r[3] for r in small}) == 5 and len({r[3] for r in large}) == 12
    assert {r[3] for r in small} <= {r[3] for r in large}  # same seed: a larger N keeps a superset
    assert small == [r for r in rows if r[3] in {x[3] for x in small}]  # all images, input order, old labels
    assert not Path(f"{out_small}.labels.tsv").exists()

    capped, out = subset(tmp_path, index, "--max-per-identity", "3", name="m.txt")
    got = Counter(r[3] for r in back_to_input(capped, out))
    assert got == {lab: min(c, 3) for lab, c in per.items()}
    assert is_ordered_sub(back_to_input(capped, out), rows)

    frac, out = subset(tmp_path, index, "--fraction", "0.3", "--max-per-identity", "2", name="f.txt")
    got = Counter(r[3] for r in back_to_input(frac, out))
    assert got == {lab: min(2, max(1, math.floor(0.3 * c + 0.5))) for lab, c in per.items()}


def test_subset_identity_list(tmp_path, big_index):
    index, rows = big_index
    (tmp_path / "ids.txt").write_text("# keep these\n4\n\n10  # ten\n58\n")
    got, out = subset(tmp_path, index, "--identity-list", tmp_path / "ids.txt")
    assert back_to_input(got, out) == [r for r in rows if r[3] in (4, 10, 58)]
    assert old_label_map(out) == {0: 4, 1: 10, 2: 58}
    (tmp_path / "bad.txt").write_text("4\n5\n")
    result = data("subset", index, tmp_path / "x.txt", "--identity-list", tmp_path / "bad.txt")
    assert result.exit_code == 1 and f"{tmp_path / 'bad.txt'}:2: label 5 has no image in {index}" in result.output
    result = data("subset", index, tmp_path / "x.txt", "--identity-list", tmp_path / "ids.txt", "--identities", "2")
    assert result.exit_code == 1 and "cannot be combined" in result.output
    result = data("subset", index, tmp_path / "x.txt", "--identities", "31")
    assert result.exit_code == 1 and "only 30 have at least 1 images" in result.output
    assert not (tmp_path / "x.txt").exists()


def test_subset_summary(tmp_path, big_index):
    index, rows = big_index
    result = data("subset", index, tmp_path / "o.txt", "--identities", "3")
    assert result.exit_code == 0
    n = len(read_rows(tmp_path / "o.txt"))
    assert "identities  30 -> 3" in result.output and f"images      {len(rows)} -> {n}" in result.output
    used = re.search(r"shards\s+(\d+) used, (\d+) missing", result.output)  # no shard files exist here
    assert used is not None and used.group(1) == used.group(2)


# --- outputs never destroy inputs or the user's files ----------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("spell", ["same", "dotted", "link"])
def test_subset_refuses_to_overwrite_its_input(tmp_path, big_index, spell, monkeypatch):
    index, _ = big_index
    before = index.read_bytes()
    monkeypatch.chdir(tmp_path)
    out = {"same": index, "dotted": Path("sub/../in.txt"), "link": tmp_path / "alias.txt"}[spell]
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.txt").symlink_to(index)
    result = data("subset", index, out, "--identities", "3")
    assert result.exit_code == 2, result.output
    assert f"OUT_INDEX {index} is the input INDEX: write the output somewhere else" in result.output
    assert index.read_bytes() == before and not Path(f"{out}.labels.tsv").exists()


def test_subset_refuses_outputs_on_its_other_inputs(tmp_path, big_index):
    index, _ = big_index
    (tmp_path / "ids.txt").write_text("0\n2\n")
    result = data("subset", index, tmp_path / "ids.txt", "--identity-list", tmp_path / "ids.txt")
    assert result.exit_code == 2 and "is the input --identity-list" in result.output
    assert (tmp_path / "ids.txt").read_text() == "0\n2\n"
    labels = tmp_path / "m.txt.labels.tsv"  # the label map would land on the input
    labels.write_bytes(index.read_bytes())
    result = data("subset", labels, tmp_path / "m.txt", "--identities", "2")
    assert result.exit_code == 2 and "the label map" in result.output and labels.read_bytes() == index.read_bytes()
    (tmp_path / "s").mkdir()
    shard = tmp_path / "s" / "s-00000.tfrecord"
    shard.write_bytes(b"records")
    result = data("subset", index, shard, "--keep-labels")
    assert result.exit_code == 2 and "is the input shard" in result.output and shard.read_bytes() == b"records"


def test_reindex_refuses_to_overwrite_its_inputs(tmp_path):
    pack, where = packed(tmp_path, 3)
    labels = tmp_path / "labels.txt"
    labels.write_text(f"{sorted(where)[0]} 0\n")
    pack_before = pack.read_bytes()
    for out, extra, name in [(labels, [], "LABEL_LIST"), (pack, [], "PACK_INDEX"),
                             (tmp_path / "o.txt", ["--unmatched", labels], "LABEL_LIST")]:
        result = data("reindex", pack, labels, out, *extra)
        assert result.exit_code == 2 and f"is the input {name}" in result.output, result.output
    result = data("reindex", pack, labels, tmp_path / "o.txt", "--unmatched", tmp_path / "o.txt")
    assert result.exit_code == 2 and "are the same file" in result.output
    assert labels.read_text() == f"{sorted(where)[0]} 0\n" and pack.read_bytes() == pack_before
    assert not (tmp_path / "o.txt").exists()


def unpack_fixture(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    with ShardWriter(tmp_path / "data", "u", shard_size=2) as w:
        for i in range(3):
            w.add(encoded(i), label=i % 2)
    return tmp_path / "data" / "u.txt"


def test_unpack_refuses_a_non_empty_folder(tmp_path):
    index = unpack_fixture(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "0").mkdir()
    (out / "0" / "photo.jpg").write_bytes(b"the user's")
    result = data("unpack", index, out)
    assert result.exit_code == 1 and f"Error: {out} is not empty and is not a tface output" in result.output
    assert snapshot(out) == {"0": None, "0/photo.jpg": b"the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mine"]

    result = data("unpack", index, out, "--overwrite")  # adds its files, keeps the user's
    assert result.exit_code == 0, result.output
    assert (out / "0" / "photo.jpg").read_bytes() == b"the user's" and len(list(out.rglob("u-*"))) == 3
    result = data("unpack", index, out, "--overwrite", "--limit", "1")  # a smaller rerun drops its old images
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "0/photo.jpg", f"0/u-00000-{read_rows(index)[0][2]}.jpg", "tface-manifest.txt", "unpacked.tsv"]
    assert data("unpack", index, out).exit_code == 1  # a tface output is not replaced without --overwrite


def test_unpack_refuses_a_folder_holding_its_input(tmp_path):
    index = unpack_fixture(tmp_path)
    before = snapshot(tmp_path / "data")
    for out in (tmp_path / "data", tmp_path):
        result = data("unpack", index, out, "--overwrite")
        assert result.exit_code == 2 and "holds the input" in result.output, result.output
    assert snapshot(tmp_path / "data") == before
