"""IJB protocol: meta reading and validation, aligned embedding, the feature cache, 1:1 and 1:N results.

The tiny IJB-C-like folder holds 14 images of 6 templates. Each image is a 160×160 PNG of noise with a
112×112 two-colour patch pasted at an integer offset; its landmarks are the ArcFace template shifted by
that offset, so aligning must return exactly the patch. The test model reports the patch's mean colour and
the left-minus-right difference of its red channel, so every embedding (and its mirror's) is known by
hand, and template features, scores and TARs are recomputed here with plain loops and scikit-learn.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_curve as sk_roc_curve
from torch import nn

from tface.core.backbone import BackboneContractError
from tface.core.config import ConfigError, structure, validate_options
from tface.core.data.align import ARCFACE_TEMPLATE
from tface.core.protocol import EvalContext, EvalProtocol
from tface.eval import ijb
from tface.eval.ijb import IJB, downsample_roc, extract_features, far_label, mode_description, mode_name
from tface.eval.ijb_data import IJBFormatError, IJBImages, read_meta, read_table, read_template_subjects

# --------------------------------------------------------------------------------------------------
# The tiny data set

#: Template directions in colour space (see the module docstring); chosen so that, in the default mode,
#: the pair scores rank genuine(1,2) > impostor(1,3) > genuine(3,4) > impostor(2,3) > the two others, and
#: so that in 1:N template 5 outranks template 1 for probe 2 while template 3 is probe 4's best match.
DIRS = {1: (1, 0, 0), 2: (0.9, 0.436, 0), 3: (0.8, -0.3, 0.52), 4: (0.2, -0.2, 0.96), 5: (0.75, 0.66, 0), 6: (0, 1, 0)}
#: One row per image: template, media, perturbation of the direction, scale, red left/right asymmetry,
#: faceness, patch offset (x, y) in the 160×160 image.
ROWS = [
    (1, 10, (0, 0.03, 0), 0.8, 10, 0.99, (24, 20)),
    (1, 10, (0, -0.03, 0), 0.7, 0, 0.98, (0, 0)),
    (1, 10, (0, 0, 0.03), 0.9, -6, 0.97, (48, 48)),
    (1, 11, (0, 0, -0.03), 0.5, 0, 0.1, (10, 33)),
    (2, 20, (0, 0, 0.03), 0.8, 8, 0.99, (3, 41)),
    (2, 21, (0.03, 0, 0), 0.6, 0, 0.5, (40, 7)),
    (3, 30, (0, 0.03, 0), 0.8, 0, 0.99, (17, 29)),
    (3, 30, (0.03, 0, 0), 0.7, 12, 0.96, (31, 2)),
    (3, 30, (0, 0, -0.03), 0.9, 0, 0.99, (5, 12)),
    (4, 40, (0.03, 0, 0), 0.8, -9, 0.99, (44, 19)),
    (4, 41, (0, 0.03, 0), 0.5, 0, 0.8, (22, 46)),
    (4, 42, (0, 0, 0), 0.7, 4, 0.99, (36, 36)),
    (5, 50, (0, 0, 0), 0.8, 0, 0.99, (12, 24)),
    (6, 60, (0, 0, 0), 0.8, 0, 0.99, (28, 8)),
]
PAIRS = [(1, 2, 1), (3, 4, 1), (1, 3, 0), (1, 4, 0), (2, 3, 0), (2, 4, 0)]
#: 1:N: gallery → {template: subject}; probes (mixed) likewise. Subjects: 1 = templates 1, 2; 2 = 3, 4.
GALLERIES = {"G1": {1: 1, 5: 3}, "G2": {3: 2, 6: 4}}
PROBES = {2: 1, 4: 2}


def name_of(i: int) -> str:
    return f"{i + 1}.png"


def colours(row: tuple) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB of the patch's left and right halves."""
    t, _, pert, scale, asym, _, _ = row
    v = scale * (np.array(DIRS[t], dtype=np.float64) + np.array(pert))
    c = np.clip(np.rint(127.5 * (1 + v)), 0, 255)
    left, right = c.copy(), c.copy()
    left[0] = np.clip(c[0] + asym, 0, 255)
    right[0] = np.clip(c[0] - asym, 0, 255)
    return left.astype(np.uint8), right.astype(np.uint8)


def render(row: tuple, seed: int) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    left, right = colours(row)
    dx, dy = row[6]
    img[dy : dy + 112, dx : dx + 56] = left
    img[dy : dy + 112, dx + 56 : dx + 112] = right
    return img


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def meta_lines(rows=ROWS, pairs=PAIRS) -> dict[str, list[str]]:
    tid = [f"{name_of(i)} {r[0]} {r[1]}" for i, r in enumerate(rows)]
    pts = []
    for i, r in enumerate(rows):
        lmk = ARCFACE_TEMPLATE + np.array(r[6], dtype=np.float64)
        pts.append(f"{name_of(i)} " + " ".join(f"{v:.4f}" for v in lmk.ravel()) + f" {r[5]:.3f}")
    pair = [f"{a} {b} {label}" for a, b, label in pairs]
    return {"face_tid_mid.txt": tid, "name_5pts_score.txt": pts, "template_pair_label.txt": pair}


def make_ijb(base: Path, target: str = "IJBC", *, rows=ROWS, pairs=PAIRS, one_to_n: bool = True) -> Path:
    """Write the tiny set under ``base`` (meta/ and loose_crop/) and return ``base``."""
    prefix = target.lower()
    for i, row in enumerate(rows):
        path = base / "loose_crop" / name_of(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(row, seed=i)).save(path)
    for suffix, lines in meta_lines(rows, pairs).items():
        write_lines(base / "meta" / f"{prefix}_{suffix}", lines)
    if one_to_n:
        names = ("G1", "G2") if target == "IJBC" else ("S1", "S2")
        lists = {f"gallery_{n}": GALLERIES[g] for n, g in zip(names, ("G1", "G2"))}
        lists["probe_mixed"] = PROBES
        for key, members in lists.items():
            lines = ["TEMPLATE_ID,SUBJECT_ID,FILENAME"]
            for i, r in enumerate(rows):
                if r[0] in members:
                    lines.append(f"{r[0]},{members[r[0]]},img/{name_of(i)}")
            write_lines(base / "meta" / f"{prefix}_1N_{key}.csv", lines)
    return base


@pytest.fixture(scope="module")
def ijbc(tmp_path_factory) -> Path:
    return make_ijb(tmp_path_factory.mktemp("ijbc"))


# --------------------------------------------------------------------------------------------------
# The test model and hand-made expectations


class PatchModel(nn.Module):
    """Embedding = mean R, G, B of the crop and mean(left half red) − mean(right half red), times ``scale``.

    Counts the images it sees; raises once ``fail_after`` forward calls have been made (an interruption).
    Declares the backbone contract: 4-d embeddings of 112×112 crops, the default [-1, 1] normalisation.
    """

    embedding_size = 4
    input_size = 112

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.calls = 0
        self.images = 0
        self.fail_after: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls += 1
        self.images += x.shape[0]
        asym = x[:, 0, :, :56].mean((1, 2)) - x[:, 0, :, 56:].mean((1, 2))
        return torch.cat([x.mean((2, 3)), asym[:, None]], 1) * self.scale


def hand_embeddings(rows=ROWS, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Raw embeddings of every crop and of its mirror, from the patch colours alone."""
    raw, mirror = [], []
    for row in rows:
        left, right = colours(row)
        vl, vr = left / 127.5 - 1, right / 127.5 - 1
        mean = (vl + vr) / 2
        raw.append(np.r_[mean, vl[0] - vr[0]] * scale)
        mirror.append(np.r_[mean, vr[0] - vl[0]] * scale)
    return np.array(raw), np.array(mirror)


def hand_templates(norm: bool, detector: bool, flip: bool, rows=ROWS) -> dict[int, np.ndarray]:
    """insightface's aggregation written out: per-image mode, media mean, template sum, L2 norm."""
    raw, mirror = hand_embeddings(rows)
    feats = []
    for i, row in enumerate(rows):
        f = raw[i] + mirror[i] if flip else raw[i].copy()
        if norm:
            f = f / math.sqrt(sum(v * v for v in f))
        if detector:
            f = f * float(np.float32(row[5]))
        feats.append(f)
    out = {}
    for t in sorted({r[0] for r in rows}):
        total = np.zeros(raw.shape[1])
        for m in sorted({r[1] for r in rows if r[0] == t}):
            frames = [feats[i] for i, r in enumerate(rows) if r[0] == t and r[1] == m]
            total += sum(frames) / len(frames)
        out[t] = total / math.sqrt(sum(v * v for v in total))
    return out


def hand_scores(norm: bool, detector: bool, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    tf = hand_templates(norm, detector, flip)
    scores = np.array([float(np.dot(tf[a], tf[b])) for a, b, _ in PAIRS])
    labels = np.array([label for _, _, label in PAIRS])
    return labels, scores


def sk_nearest(labels: np.ndarray, scores: np.ndarray, far: float) -> tuple[float, float]:
    """insightface's read-out on scikit-learn's ROC: reversed arrays, first index of minimal |fpr − far|.

    Returns the TAR and the threshold (a pair score) it is read at.
    """
    fpr, tpr, thr = sk_roc_curve(labels, scores)
    fpr, tpr, thr = fpr[::-1], tpr[::-1], thr[::-1]
    i = int(np.argmin(np.abs(fpr - far)))
    return float(tpr[i]), float(thr[i])


def brute_strict(labels: np.ndarray, scores: np.ndarray, far: float) -> float:
    """Highest TPR over all thresholds (accept iff score ≥ t) whose FPR is ≤ far."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    best = 0.0
    for t in sorted(set(scores.tolist())):
        if np.count_nonzero(neg >= t) / neg.size <= far:
            best = max(best, np.count_nonzero(pos >= t) / pos.size)
    return best


def run(root: Path, model: nn.Module | None = None, **options) -> list[dict]:
    proto = IJB(root, **options)
    return proto.evaluate(model if model is not None else PatchModel(), EvalContext(step=7))


# --------------------------------------------------------------------------------------------------
# Meta reading


def test_read_meta_values(ijbc):
    meta = read_meta(ijbc, "IJBC")
    assert meta.dataset == "IJB-C" and meta.root == ijbc
    assert meta.names == [name_of(i) for i in range(len(ROWS))]
    assert meta.templates.tolist() == [r[0] for r in ROWS]
    assert meta.medias.tolist() == [r[1] for r in ROWS]
    assert meta.landmarks.dtype == np.float32 and meta.landmarks.shape == (14, 5, 2)
    np.testing.assert_allclose(meta.landmarks[2], ARCFACE_TEMPLATE + (48, 48), atol=1e-5)
    assert meta.faceness.dtype == np.float32 and meta.faceness[3] == np.float32(0.1)
    assert meta.pairs.tolist() == [[a, b] for a, b, _ in PAIRS]
    assert meta.labels.tolist() == [label for *_, label in PAIRS]


def test_root_may_be_the_folder_above(ijbc, tmp_path):
    parent = tmp_path / "data"
    parent.mkdir()
    os.symlink(ijbc, parent / "IJBC")
    assert read_meta(parent, "IJBC").root == parent / "IJBC"


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_read_table_chunks_blank_lines_and_no_final_newline(tmp_path, chunk):
    rng = np.random.default_rng(1)
    lines = []
    for i in range(300):
        lines.append(f"n{i}.jpg  {rng.integers(0, 10**9)}\t{rng.integers(0, 99)}")
        if i % 37 == 0:
            lines.append("   ")
    path = tmp_path / "t.txt"
    path.write_bytes(("\r\n".join(lines)).encode())  # CRLF and no newline at the end
    (names,), numbers, lines_map = read_table(path, "sii", chunk_size=chunk)
    expected = [ln.split() for ln in lines if ln.strip()]
    assert names == [e[0] for e in expected]
    assert numbers.dtype == np.int64
    assert numbers.tolist() == [[int(e[1]), int(e[2])] for e in expected]
    # record → line number, blank lines included
    physical = [k + 1 for k, ln in enumerate(lines) if ln.strip()]
    assert [lines_map.line(r) for r in range(len(expected))] == physical


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_read_table_errors_name_the_line(tmp_path, chunk):
    path = tmp_path / "p.txt"
    path.write_text("1 2 1\n\n3 4 0\n5 6 x7\n")
    with pytest.raises(IJBFormatError, match=r"p\.txt:4: column 3: expected an integer, got 'x7'"):
        read_table(path, "iii", chunk_size=chunk)
    path.write_text("1 2 1\n3 4 0\n\n5 6\n")
    with pytest.raises(IJBFormatError, match=r"p\.txt:4: expected 3 columns \(3 integers\), got 2"):
        read_table(path, "iii", chunk_size=chunk)
    path.write_text("1 2 1\n3 4\x01 0\n")
    with pytest.raises(IJBFormatError, match=r"p\.txt:2: control character"):
        read_table(path, "iii", chunk_size=chunk)


def _mutate(root: Path, suffix: str, line: int, text: str | None) -> None:
    """Replace (or delete, with ``None``) 1-based ``line`` of ``meta/ijbc_<suffix>``."""
    path = root / "meta" / f"ijbc_{suffix}"
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    write_lines(path, lines)


TID, PTS, PAIR = "face_tid_mid.txt", "name_5pts_score.txt", "template_pair_label.txt"
LMK = "1 2 3 4 5 6 7 8 9"


@pytest.mark.parametrize(
    ("suffix", "line", "text", "pattern"),
    [
        (TID, 3, "3.png 1", r"ijbc_face_tid_mid\.txt:3: expected 3 columns \(name, 2 integers\), got 2"),
        (TID, 5, "5.png two 20", r"ijbc_face_tid_mid\.txt:5: column 2: expected an integer, got 'two'"),
        (PTS, 2, "2.png 1 2 3", r"ijbc_name_5pts_score\.txt:2: expected 12 columns \(name, 11 numbers\)"),
        (PTS, 6, f"6.png {LMK} abc 0.9", r"ijbc_name_5pts_score\.txt:6: column 11: expected a number"),
        (PTS, 4, f"4.png {LMK} nan 0.9", r"ijbc_name_5pts_score\.txt:4: numbers must be finite"),
        (PTS, 7, f"8.png {LMK} 10 0.9", r"_5pts_score\.txt:7: image '8\.png' where .*_tid_mid\.txt:7 lists '7\.png'"),
        (PTS, 14, None, r"ijbc_name_5pts_score\.txt: 13 images .*ijbc_face_tid_mid\.txt:14 \('14\.png'\)"),
        (PAIR, 4, "1 99 0", r"ijbc_template_pair_label\.txt:4: template 99 \(column 2\) is not in"),
        (PAIR, 2, "3 4 2", r"ijbc_template_pair_label\.txt:2: label must be 0 or 1, got 2"),
        (PAIR, 6, "2 4 0.5", r"ijbc_template_pair_label\.txt:6: column 3: expected an integer"),
        (PAIR, 1, "1 2 1 7", r"ijbc_template_pair_label\.txt:1: expected 3 columns"),
    ],
)
def test_malformed_meta_names_file_and_line(tmp_path, suffix, line, text, pattern):
    root = make_ijb(tmp_path, one_to_n=False)
    _mutate(root, suffix, line, text)
    with pytest.raises(IJBFormatError, match=pattern):
        read_meta(root, "IJBC")


def test_missing_meta_file_is_named(tmp_path):
    root = make_ijb(tmp_path, one_to_n=False)
    (root / "meta" / "ijbc_template_pair_label.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ijbc_template_pair_label\.txt"):
        read_meta(root, "IJBC")


def test_ijbb_reads_the_ijbb_files(tmp_path):
    # Both sets in one folder with different pair lists: each target must read its own files.
    root = make_ijb(tmp_path, "IJBC", one_to_n=False)
    make_ijb(tmp_path, "IJBB", pairs=PAIRS[:4], one_to_n=True)
    assert len(read_meta(root, "IJBB").labels) == 4
    assert len(read_meta(root, "IJBC").labels) == 6
    results = run(root, target="IJBB", identification=True)
    assert [r["dataset"] for r in results] == ["IJB-B", "IJB-B"]
    assert results[0]["pairs"] == 4
    assert results[1]["rank1 (S1)"] == 0.0 and results[1]["rank1 (S2)"] == 100.0
    # IJB-B alone: asking for IJB-C names the ijbc file that is missing
    only_b = make_ijb(tmp_path / "b", "IJBB", one_to_n=False)
    with pytest.raises(FileNotFoundError, match=r"ijbc_face_tid_mid\.txt"):
        read_meta(only_b, "IJBC")
    with pytest.raises(ValueError, match=r"'IJBB', 'IJBC'"):
        read_meta(only_b, "IJBA")


def test_one_to_n_csv_errors(tmp_path, ijbc):
    known = np.unique(read_meta(ijbc).templates)
    path = tmp_path / "g.csv"
    path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,1,a.jpg\n\n1,1,b.jpg\n77,2,c.jpg\n")
    with pytest.raises(IJBFormatError, match=r"g\.csv:5: template 77 is not in face_tid_mid"):
        read_template_subjects(path, known)
    path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,1,a.jpg\n1,2,b.jpg\n")
    with pytest.raises(IJBFormatError, match=r"g\.csv:3: template 1 has subject 2 but subject 1 at line 2"):
        read_template_subjects(path, known)
    path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,x,a.jpg\n")
    with pytest.raises(IJBFormatError, match=r"g\.csv:2: TEMPLATE_ID and SUBJECT_ID must be integers"):
        read_template_subjects(path, known)
    path.write_text("TID,SID\n1,1\n")
    with pytest.raises(IJBFormatError, match=r"g\.csv:1: the header must name TEMPLATE_ID and SUBJECT_ID"):
        read_template_subjects(path, known)
    path.write_text("FILENAME,SUBJECT_ID,TEMPLATE_ID\nx,5,3\ny,5,3\nz,6,1\n")
    templates, subjects = read_template_subjects(path, known)
    assert templates.tolist() == [1, 3] and subjects.tolist() == [6, 5]


def test_identification_needs_its_files(tmp_path):
    root = make_ijb(tmp_path, one_to_n=False)
    with pytest.raises(FileNotFoundError, match=r"ijbc_1N_gallery_G1\.csv.*ijbc_1N_probe_mixed\.csv"):
        run(root, identification=True)


# --------------------------------------------------------------------------------------------------
# Images and embeddings


def test_alignment_gives_the_patch(ijbc):
    meta = read_meta(ijbc)
    crops = IJBImages(meta)
    for i in (0, 2, 9):
        crop = crops[i]
        assert crop.shape == (3, 112, 112) and crop.dtype == torch.uint8
        left, right = colours(ROWS[i])
        assert (crop[:, :, :56] == torch.from_numpy(left)[:, None, None]).all()
        assert (crop[:, :, 56:] == torch.from_numpy(right)[:, None, None]).all()


@pytest.mark.parametrize("workers", [0, 1])
def test_features_match_hand_embeddings(ijbc, workers):
    model = PatchModel()
    model.train()
    raw, mirror = IJB(ijbc, batch_size=4, workers=workers).features(model, read_meta(ijbc), EvalContext())
    want_raw, want_mirror = hand_embeddings()
    assert raw.dtype == np.float32 and raw.shape == (14, 4)
    np.testing.assert_allclose(raw, want_raw, atol=2e-6)
    np.testing.assert_allclose(mirror, want_mirror, atol=2e-6)
    assert model.training  # the mode is restored
    assert model.images == 2 * 14


def test_missing_or_broken_image_names_file_and_line(tmp_path):
    root = make_ijb(tmp_path, one_to_n=False)
    (root / "loose_crop" / "5.png").unlink()
    model = PatchModel()
    with pytest.raises(IJBFormatError, match=r"5\.png: image missing \(listed at .*ijbc_name_5pts_score\.txt:5\)"):
        run(root, model)
    assert model.calls == 0  # checked before any model work
    (root / "loose_crop" / "5.png").write_bytes(b"not an image")
    with pytest.raises(IJBFormatError, match=r"5\.png: cannot decode .*listed at .*ijbc_name_5pts_score\.txt:5"):
        run(root, model)


def test_model_output_must_be_an_embedding_batch(ijbc):
    class Bad(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"\[batch, dim\] embedding tensor, got \(2, 3, 112, 112\)"):
        extract_features(Bad(), IJBImages(read_meta(ijbc)), batch_size=2)


# --------------------------------------------------------------------------------------------------
# 1:1 results


def test_default_mode_results_by_hand(ijbc):
    labels, scores = hand_scores(norm=False, detector=True, flip=True)
    # the designed ranking: genuine(1,2) > impostor(1,3) > genuine(3,4) > impostor(2,3) > the other two
    assert np.argsort(-scores).tolist() == [0, 2, 1, 4, 3, 5]
    fars = [1e-4, 0.1, 0.2, 0.45]
    (r,) = run(ijbc, fars=fars, batch_size=5)
    assert (r["protocol"], r["dataset"], r["step"], r["task"], r["mode"]) == ("ijb", "IJB-C", 7, "1:1", "N0D1F1")
    assert r["mode_description"] == mode_description(False, True, True)
    assert (r["images"], r["templates"], r["pairs"], r["genuine"]) == (14, 6, 6, 2)
    # ROC: (0, .5) (.25, .5) (.25, 1) (.5, 1) (.75, 1) (1, 1). Nearest point: FAR .1 → FPR 0; .2 → FPR .25.
    assert [r[f"tar@far={far_label(f)}"] for f in fars] == [50.0, 50.0, 100.0, 100.0]
    assert [r[f"tar@far={far_label(f)} (strict)"] for f in fars] == [50.0, 50.0, 50.0, 100.0]
    keys = list(r)
    assert keys.index("tar@far=1e-4") + 1 == keys.index("tar@far=1e-4 (strict)")
    assert r["readout"]["2e-1"]["far_used"] == 0.25 and r["readout"]["2e-1"]["strict_far_used"] == 0.0
    # thresholds are pair scores: the top genuine one at FPR 0, the second genuine one at FPR .25
    assert math.isclose(r["readout"]["1e-4"]["threshold"], scores[0], abs_tol=1e-6)
    assert math.isclose(r["readout"]["2e-1"]["threshold"], scores[1], abs_tol=1e-6)
    roc = r["curves"]["roc"]
    assert roc["fpr"][0] == 0.0 and roc["tpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0
    json.dumps(r)  # results go to report.json


def test_one_roc_gives_both_readouts_and_the_curve(ijbc, monkeypatch):
    """The 1:1 result sorts its scores once: one Roc, read out as both TARs and the plotted curve, which is
    scikit-learn's ROC of the hand-computed scores, downsampled."""
    built = []

    class CountingRoc(ijb.Roc):
        def __init__(self, labels: np.ndarray, scores: np.ndarray, *, overwrite: bool = False) -> None:
            built.append((len(scores), overwrite))
            super().__init__(labels, scores, overwrite=overwrite)

    monkeypatch.setattr(ijb, "Roc", CountingRoc)
    (r,) = run(ijbc, fars=[0.1, 0.45])
    assert built == [(len(PAIRS), True)]  # the protocol lets it sort the scores in place (it needs no copy)
    labels, scores = hand_scores(norm=False, detector=True, flip=True)
    fpr, tpr = downsample_roc(*sk_roc_curve(labels, scores)[:2])
    assert r["curves"]["roc"] == {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    assert r["tar@far=1e-1"] == 100 * sk_nearest(labels, scores, 0.1)[0]
    assert r["tar@far=4.5e-1 (strict)"] == 100 * brute_strict(labels, scores, 0.45)


@pytest.mark.parametrize(
    ("norm", "detector", "flip"), [(True, False, False), (False, False, True), (True, True, False)]
)
def test_other_modes_match_brute_force(ijbc, norm, detector, flip):
    labels, scores = hand_scores(norm, detector, flip)
    fars = [1e-6, 1e-3, 0.1, 0.3, 0.6]
    (r,) = run(ijbc, norm=norm, detector=detector, flip=flip, fars=fars)
    assert r["mode"] == mode_name(norm, detector, flip)
    for far in fars:
        tar, threshold = sk_nearest(labels, scores, far)
        assert r[f"tar@far={far_label(far)}"] == pytest.approx(100 * tar)
        assert r["readout"][far_label(far)]["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert r[f"tar@far={far_label(far)} (strict)"] == pytest.approx(100 * brute_strict(labels, scores, far))


class MappedPatchModel(PatchModel):
    """PatchModel offering a feature map: ``[N, 1, 1, 1]`` holding its red asymmetry (the 4th embedding value)."""

    feature_channels = 1

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self(x)
        return emb, emb[:, 3].reshape(-1, 1, 1, 1)


class ExpConfidence(nn.Module):
    """κ = exp(4 · map): the crop and its mirror (opposite asymmetry) get different confidences."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return torch.exp(4.0 * feature_map.flatten(1)[:, 0])


def hand_confidence_templates(detector: bool, flip: bool) -> dict[int, np.ndarray]:
    """SCF's pooling written out: per image Σ over views of κ·unit(view), the faceness, media mean, template
    sum, L2 norm."""
    raw, mirror = hand_embeddings()
    out = {}
    feats = []
    for i, row in enumerate(ROWS):
        f = np.exp(4 * raw[i][3]) * raw[i] / np.linalg.norm(raw[i])
        if flip:
            f = f + np.exp(4 * mirror[i][3]) * mirror[i] / np.linalg.norm(mirror[i])
        feats.append(f * float(np.float32(row[5])) if detector else f)
    for t in sorted({r[0] for r in ROWS}):
        total = np.zeros(raw.shape[1])
        for m in sorted({r[1] for r in ROWS if r[0] == t}):
            frames = [feats[i] for i, r in enumerate(ROWS) if r[0] == t and r[1] == m]
            total += sum(frames) / len(frames)
        out[t] = total / np.linalg.norm(total)
    return out


@pytest.mark.parametrize("detector, flip", [(True, True), (False, False)])
def test_confidence_pooling_weights_views_by_the_attached_kappa(ijbc, tmp_path, detector, flip):
    from tface.core.attached import CONFIDENCE, attach

    model = MappedPatchModel()
    with pytest.raises(ValueError, match=r"confidence = true needs a per-image confidence attached .*scf"):
        run(ijbc, model, confidence=True)
    attach(model, CONFIDENCE, ExpConfidence())
    fars = [1e-3, 0.3, 0.6]
    (r, n) = run(ijbc, model, confidence=True, detector=detector, flip=flip, fars=fars, identification=True)
    assert r["mode"] == mode_name(False, detector, flip, True) == f"N0D{int(detector)}F{int(flip)}K1"
    assert "κ" in r["mode_description"] and n["mode"] == r["mode"]
    tf = hand_confidence_templates(detector, flip)
    scores = np.array([float(np.dot(tf[a], tf[b])) for a, b, _ in PAIRS])
    labels = np.array([label for _, _, label in PAIRS])
    plain = hand_scores(False, detector, flip)[1]
    assert np.abs(scores - plain).max() > 1e-3  # the weights change the scores
    for far in fars:
        tar, threshold = sk_nearest(labels, scores, far)
        assert r[f"tar@far={far_label(far)}"] == pytest.approx(100 * tar)
        assert r["readout"][far_label(far)]["threshold"] == pytest.approx(threshold, abs=1e-6)
    # the feature cache keys on the confidence too: a confidence run and a plain run keep separate folders
    IJB(ijbc, cache_dir=tmp_path / "c", confidence=True).evaluate(model, EvalContext())
    IJB(ijbc, cache_dir=tmp_path / "c").evaluate(model, EvalContext())
    assert len(list((tmp_path / "c").iterdir())) == 2
    with pytest.raises(ValueError, match="norm = true would erase the weights"):
        IJB(ijbc, confidence=True, norm=True)


def test_default_fars_and_registry_config(ijbc):
    (r,) = run(ijbc)
    assert [k for k in r if k.startswith("tar@far=") and "strict" not in k] == [
        "tar@far=1e-6", "tar@far=1e-5", "tar@far=1e-4", "tar@far=1e-3", "tar@far=1e-2", "tar@far=1e-1"
    ]
    assert isinstance(IJB(ijbc), EvalProtocol)
    kwargs = validate_options(IJB, {"root": str(ijbc), "target": "IJBB", "identification": True}, "eval")
    proto = IJB(**kwargs)
    assert proto.config.target == "IJBB" and proto.config.cache_dir is None and proto.config.workers == 0
    with pytest.raises(ConfigError, match=r"eval\.target: 'target' must be in \('IJBB', 'IJBC'\)"):
        structure(IJB.Config, {"root": "x", "target": "IJBA"}, "eval")
    with pytest.raises(ConfigError, match=r"eval\.fars: every FAR must be in \(0, 1\]"):
        structure(IJB.Config, {"root": "x", "fars": [0.0]}, "eval")
    with pytest.raises(ConfigError, match=r"eval\.root: required key is missing"):
        structure(IJB.Config, {}, "eval")


def test_small_helpers():
    assert [far_label(f) for f in (1e-6, 1e-4, 0.1, 2.5e-3, 1.0)] == ["1e-6", "1e-4", "1e-1", "2.5e-3", "1e0"]
    assert mode_name(True, False, True) == "N1D0F1"
    assert "L2-normalised per image" in mode_description(True, False, True)
    fpr = np.r_[0.0, np.arange(1, 2001) / 2000]
    tpr = np.sqrt(fpr)
    f, t = downsample_roc(fpr, tpr, max_points=50)
    assert len(f) <= 50 and f[0] == 0.0 and f[-1] == 1.0
    assert np.all(np.diff(f) > 0) and np.array_equal(t, np.sqrt(f))
    ratios = f[2:-1] / f[1:-2]  # log-spaced: successive ratios about equal once the grid is coarser than 1/2000
    assert ratios[-10:].max() / ratios[-10:].min() < 1.2
    assert downsample_roc(fpr[:10], tpr[:10])[0].tolist() == fpr[:10].tolist()


# --------------------------------------------------------------------------------------------------
# 1:N


def test_identification_by_hand(ijbc):
    results = run(ijbc, identification=True)
    assert [r["task"] for r in results] == ["1:1", "1:N"]
    r = results[1]
    assert (r["protocol"], r["dataset"], r["step"], r["mode"]) == ("ijb", "IJB-C", 7, "N0D1F1")
    # G1 = {T1: s1, T5: s3}: probe T2 (s1) scores T5 above T1 → rank 2. G2 = {T3: s2, T6: s4}: probe T4 (s2)
    # ranks T3 first, above the best non-mated score (probe T2 against G2), so it is found at any FPIR.
    tf = hand_templates(False, True, True)
    assert np.dot(tf[2], tf[5]) > np.dot(tf[2], tf[1])
    assert np.dot(tf[4], tf[3]) > max(np.dot(tf[4], tf[6]), np.dot(tf[2], tf[3]), np.dot(tf[2], tf[6]))
    assert (r["rank1 (G1)"], r["rank5 (G1)"], r["rank1 (G2)"], r["rank5 (G2)"]) == (0.0, 100.0, 100.0, 100.0)
    assert (r["tpir@fpir=0.01 (G1)"], r["tpir@fpir=0.1 (G2)"]) == (0.0, 100.0)
    assert (r["rank1"], r["rank5"], r["rank10"]) == (50.0, 100.0, 100.0)
    assert (r["tpir@fpir=0.01"], r["tpir@fpir=0.1"]) == (50.0, 50.0)
    assert (r["probes"], r["gallery (G1)"], r["gallery (G2)"]) == (2, 2, 2)
    assert (r["mated probes (G1)"], r["mated probes (G2)"]) == (1, 1)


# --------------------------------------------------------------------------------------------------
# Feature cache


def test_cache_resume_and_reuse(tmp_path):
    root = make_ijb(tmp_path / "data", one_to_n=False)
    cache = tmp_path / "cache"
    fresh = run(root, batch_size=2)

    def proto(**options) -> IJB:
        p = IJB(root, batch_size=2, cache_dir=cache, **options)
        p.cache_chunk = 4  # chunks [0,4) [4,8) [8,12) [12,14), two batches each but the last
        return p

    # 1) interrupted in the first batch of the second chunk: only the first chunk is kept
    model = PatchModel()
    model.fail_after = 5  # 2 forward calls (crop + mirror) per batch
    with pytest.raises(RuntimeError, match="interrupted"):
        proto().evaluate(model, EvalContext(step=7))
    (folder,) = cache.iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(c["start"], c["stop"]) for c in manifest["chunks"]] == [(0, 4)] and not manifest["complete"]
    assert manifest["copies"] == 2 and manifest["dim"] == 4

    # 2) resumed: only the 10 remaining images are embedded; results equal an uncached run
    model = PatchModel()
    assert proto().evaluate(model, EvalContext(step=7)) == fresh
    assert model.images == 2 * 10
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and [c["stop"] for c in manifest["chunks"]] == [4, 8, 12, 14]

    # 3) complete: reused without calling the model, also for another N/D mode
    model = PatchModel()
    model.fail_after = 0
    assert proto().evaluate(model, EvalContext(step=7)) == fresh
    (other,) = proto(norm=True, detector=False).evaluate(model, EvalContext(step=7))
    assert other["mode"] == "N1D0F1" and model.calls == 0

    # 4) a damaged chunk is recomputed together with the chunks after it
    (folder / "chunk-000000008.npy").write_bytes(b"truncated")
    model = PatchModel()
    assert proto().evaluate(model, EvalContext(step=7)) == fresh
    assert model.images == 2 * 6

    # 5) other weights or no flip: a separate cache entry, computed afresh
    model = PatchModel(scale=2.0)
    proto().evaluate(model, EvalContext(step=7))
    assert model.images == 2 * 14
    model = PatchModel()
    proto(flip=False).evaluate(model, EvalContext(step=7))
    assert model.images == 14
    assert len(list(cache.iterdir())) == 3


def test_check_inputs_names_missing_meta_files(tmp_path):
    (tmp_path / "IJBB" / "meta").mkdir(parents=True)
    meta = tmp_path / "IJBB" / "meta"
    (meta / "ijbb_face_tid_mid.txt").write_text("")
    problems = IJB(tmp_path, target="IJBB").check_inputs()  # the folder above IJBB/ is accepted
    assert problems == [f"root: IJB-B meta files not found: {meta / 'ijbb_name_5pts_score.txt'}, "
                        f"{meta / 'ijbb_template_pair_label.txt'}"]
    (meta / "ijbb_name_5pts_score.txt").write_text("")
    (meta / "ijbb_template_pair_label.txt").write_text("")
    assert IJB(tmp_path, target="IJBB").check_inputs() == []


class Declaring(nn.Module):
    """Declares 64×64 inputs normalised to [0, 1] (mean 0, std 1); records what it is fed."""

    embedding_size = 3
    input_size = 64
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[tuple[int, ...], float, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((tuple(x.shape[1:]), float(x.min()), float(x.max())))
        return x.mean((2, 3)) + 0.1


def test_crops_follow_the_backbone_contract(ijbc: Path, tmp_path: Path) -> None:
    """Crops are aligned at the backbone's input_size and normalised with its mean/std (issue 10: no fixed 112)."""
    model = Declaring()
    run(ijbc, model, cache_dir=tmp_path / "cache")
    assert model.seen and {s for s, _, _ in model.seen} == {(3, 64, 64)}
    assert min(lo for _, lo, _ in model.seen) >= 0.0 and max(hi for _, _, hi in model.seen) <= 1.0
    assert max(hi for _, _, hi in model.seen) > 0.5  # [0, 1], not [-1, 1] and not x/255 of nothing
    default = PatchModel()
    run(ijbc, default, cache_dir=tmp_path / "cache")  # another input: another cache entry, never mixed
    assert default.images > 0 and len(list((tmp_path / "cache").iterdir())) == 2


def test_a_model_without_the_contract_is_refused_by_name(ijbc: Path) -> None:
    class Bare(nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    with pytest.raises(BackboneContractError, match=r"Bare does not declare embedding_size"):
        run(ijbc, Bare())
