"""Verification accuracy on insightface/TFace ``.bin`` pair files (LFW, CFP-FP, AgeDB-30, ...).

Follows insightface's ``verification.py`` (see ``metrics``): RGB decode, resize only when the crop is
not ``image_size`` square, flip test (embedding = raw(image) + raw(mirror), then L2-normalised), squared
euclidean pair distances and the 10-fold threshold protocol. XNorm is the mean L2 norm of all raw
embeddings. Embeddings and distances are float32, normalised like ``sklearn.preprocessing.normalize``.

Each set is embedded once; the flip-test and no-flip accuracies (insightface prints the latter as 0), the
exact sorted-split accuracy, the mean best threshold (TFace's second number), TAR@FAR=1e-3 and a small ROC
curve for plots are all derived from the same raw embeddings. Within a set each distinct image (equal
encoded bytes) is decoded and embedded once and its embedding copied to every slot that holds it: public
sets repeat images across pairs, and a forward pass per slot would only recompute the same rows.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tface.core.backbone import DEFAULT_MEAN, DEFAULT_STD, BackboneInfo, backbone_info
from tface.core.config import option, options
from tface.core.data.binfile import BinFormatError, read_bin
from tface.core.data.image import ImageDecodeError, decode_rgb, normalize
from tface.core.protocol import EvalContext, Result
from tface.eval.metrics import exact_accuracy, pair_distances, verification_metrics

__all__ = [
    "Verification",
    "bin_set_metrics",
    "distinct_slots",
    "embed_pairs",
    "embed_raw",
    "is_channels_last",
    "l2_normalize",
    "load_crops",
    "pair_set_metrics",
    "roc_curve_points",
    "xnorm_of",
]

NFOLDS = 10


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, as ``sklearn.preprocessing.normalize`` (dtype kept, ~0 rows kept)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
    return x / norms[:, np.newaxis]


def _resize_short(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[3,H,W]`` → short side ``size`` (bicubic, like ``mx.image.resize_short``), centre ``size²``."""
    h, w = img.shape[-2:]
    if h > w:
        new_h, new_w = size * h // w, size
    else:
        new_h, new_w = size, size * w // h
    out = F.interpolate(img[None].float(), size=(new_h, new_w), mode="bicubic", align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return out[:, top : top + size, left : left + size]


def load_crops(
    images: Sequence[bytes], start: int, stop: int, image_size: int, source: Any = None
) -> torch.Tensor:
    """Decode ``images[start:stop]`` to a uint8 ``[B, 3, S, S]`` batch (RGB)."""
    crops = []
    for i in range(start, stop):
        try:
            img = decode_rgb(images[i])
        except ImageDecodeError as exc:
            where = f"{source}: " if source is not None else ""
            raise BinFormatError(f"{where}image {i} cannot be decoded: {exc}") from exc
        if tuple(img.shape[-2:]) != (image_size, image_size):
            img = _resize_short(img, image_size)
        crops.append(img)
    return torch.stack(crops)


def model_input(model: nn.Module, image_size: int | None, protocol: str) -> BackboneInfo:
    """The backbone's declared input (:func:`tface.core.backbone.backbone_info`); a protocol's ``image_size``
    option, when set, must agree with it (the model was built for one size)."""
    info = backbone_info(model)
    if image_size is not None and image_size != info.input_size:
        raise ValueError(f"{protocol}: image_size = {image_size}, but the backbone takes {info.input_size}x"
                         f"{info.input_size} inputs (its input_size); leave image_size unset to use the backbone's")
    return info


def _embed(model: nn.Module, batch: torch.Tensor, device: torch.device, dtype: torch.dtype,
           memory_format: torch.memory_format = torch.contiguous_format, mean: Sequence[float] = DEFAULT_MEAN,
           std: Sequence[float] = DEFAULT_STD) -> np.ndarray:
    out = model(normalize(batch, mean, std).to(device=device, dtype=dtype).contiguous(memory_format=memory_format))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"verification: the model must return a [batch, dim] embedding tensor, got {got}")
    return out.detach().float().cpu().numpy()


class _EvalMode:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes:
            m.training = mode


def distinct_slots(images: Sequence[bytes]) -> tuple[list[int], np.ndarray]:
    """``(first, rows)``: the slot of the first occurrence of each distinct encoded image, in slot order,
    and for every slot the index into ``first`` of its image.

    Images are told apart by their bytes (used as dict keys: hashed, then compared in full on a hash
    match), so two slots share an embedding only when their files are byte-for-byte equal.
    """
    row_of: dict[bytes, int] = {}
    first: list[int] = []
    rows = np.empty(len(images), dtype=np.int64)
    for i, data in enumerate(images):
        row = row_of.setdefault(bytes(data), len(first))
        if row == len(first):
            first.append(i)
        rows[i] = row
    return first, rows


def is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s 4-D weights are in channels-last memory format (``train.channels_last``)."""
    return any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())


class _ChannelsLast:
    """Run ``model`` in channels-last for the block when asked (or when it already is); restore it after."""

    def __init__(self, model: nn.Module, wanted: bool):
        self.model, self.wanted = model, wanted

    def __enter__(self) -> torch.memory_format:
        self.converted = self.wanted and not is_channels_last(self.model)
        if self.converted:
            self.model.to(memory_format=torch.channels_last)
        cl = self.converted or is_channels_last(self.model)
        return torch.channels_last if cl else torch.contiguous_format

    def __exit__(self, *exc: object) -> None:
        if self.converted:
            self.model.to(memory_format=torch.contiguous_format)


def embed_raw(
    model: nn.Module,
    images: Sequence[bytes],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    flip: bool = True,
    image_size: int = 112,
    source: Any = None,
    channels_last: bool = False,
    *,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw (un-normalised) float32 embeddings of ``images`` and, with ``flip``, of their mirrors.

    Both flip-test and no-flip numbers derive from these two arrays, so a set is embedded once however
    many variants are reported. Each distinct image (:func:`distinct_slots`) is decoded and embedded once
    and its rows are copied to every slot holding it. Runs ``model`` in eval mode under
    ``torch.no_grad()`` and restores every submodule's mode. Inputs follow the model's memory format;
    ``channels_last`` converts a contiguous model to channels-last for the pass and back afterwards.
    ``source`` (e.g. the file) is named in decode errors, which give the slot of the image. Crops are
    normalised with ``mean``/``std`` (the backbone's, :mod:`tface.core.backbone`).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not images:
        raise ValueError(f"{source or 'verification'}: no images to embed")
    device = torch.device(device)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    first, rows = distinct_slots(images)
    raw: list[np.ndarray | None] = [None, None]
    with _EvalMode(model), _ChannelsLast(model, channels_last) as memory_format, torch.no_grad():
        for start in range(0, len(first), batch_size):
            slots = first[start : start + batch_size]
            batch = torch.cat([load_crops(images, i, i + 1, image_size, source) for i in slots])
            copies = (batch, batch.flip(-1)) if flip else (batch,)
            for k, copy in enumerate(copies):
                emb = _embed(model, copy, device, dtype, memory_format, mean, std)
                if raw[k] is None:
                    raw[k] = np.empty((len(first), emb.shape[1]), dtype=np.float32)
                raw[k][start : start + len(slots)] = emb
    assert raw[0] is not None
    return raw[0][rows], (raw[1][rows] if raw[1] is not None else None)


def xnorm_of(*raw: np.ndarray | None) -> float:
    """Mean L2 norm of all rows of the given raw embedding sets (insightface's XNorm).

    insightface takes per-row ``np.linalg.norm`` (float32) and sums them one by one into a Python float
    (float64), all originals first, then all mirrors; the cumulative sum repeats that order exactly.
    """
    norms = np.array([np.linalg.norm(row) for r in raw if r is not None for row in r], dtype=np.float64)
    return float(np.cumsum(norms)[-1] / norms.size)


def embed_pairs(
    model: nn.Module,
    images: Sequence[bytes],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    flip: bool = True,
    image_size: int = 112,
    source: Any = None,
    channels_last: bool = False,
    *,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> tuple[np.ndarray, float]:
    """L2-normalised float32 embeddings of ``images`` (one row per image) and their XNorm.

    With ``flip`` the embedding is raw(image) + raw(horizontal mirror) before normalisation and XNorm
    averages the norms of both raw sets (insightface's order: all originals, then all mirrors); without
    it, raw(image) and the originals' norms. Runs ``model`` in eval mode under ``torch.no_grad()`` and
    restores every submodule's mode. ``source`` (e.g. the file) is named in decode errors; ``channels_last``
    as in :func:`embed_raw`.
    """
    orig, mirror = embed_raw(model, images, device, batch_size, flip, image_size, source, channels_last,
                             mean=mean, std=std)
    summed = orig + mirror if mirror is not None else orig
    return l2_normalize(summed), xnorm_of(orig, mirror)


#: Points kept of a fold-averaged ROC curve in a result (enough for a smooth plot, small in report.json).
CURVE_POINTS = 100


def roc_curve_points(fpr: np.ndarray, tpr: np.ndarray, max_points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """A downsampled ``{"fpr": [...], "tpr": [...]}`` of a threshold-ordered curve, for reports and plots.

    Repeated points (the flat ends of the 400-threshold grid) are dropped first; if more than
    ``max_points`` remain, evenly spaced ones are kept, always including the first and the last.
    Values are rounded to 6 significant digits, which no plot can tell apart.
    """
    pts = np.stack([np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)], axis=1)
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[keep]
    if len(pts) > max_points:
        pts = pts[np.unique(np.linspace(0, len(pts) - 1, max_points).round().astype(np.int64))]
    return {
        "fpr": [float(f"{v:.6g}") for v in pts[:, 0]],
        "tpr": [float(f"{v:.6g}") for v in pts[:, 1]],
    }


def bin_set_metrics(model: nn.Module, path: str | os.PathLike, *, device: torch.device | str = "cpu",
                    batch_size: int = 64, flip: bool = True, image_size: int = 112,
                    channels_last: bool = False, mean: Sequence[float] = DEFAULT_MEAN,
                    std: Sequence[float] = DEFAULT_STD) -> dict[str, Any]:
    """:func:`pair_set_metrics` of the ``.bin`` file at ``path`` (read with the restricted unpickler)."""
    images, issame = read_bin(path)
    return pair_set_metrics(model, images, issame, device=device, batch_size=batch_size, flip=flip,
                            image_size=image_size, source=path, channels_last=channels_last, mean=mean, std=std)


def pair_set_metrics(
    model: nn.Module,
    images: Sequence[bytes],
    issame: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    flip: bool = True,
    image_size: int = 112,
    source: Any = None,
    channels_last: bool = False,
    *,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> dict[str, Any]:
    """Every verification number of one pair set from a single embedding pass (percent where a rate).

    Keys: ``accuracy``/``accuracy_std`` (flip test, or no-flip when ``flip`` is false), ``accuracy_noflip``
    (raw(image) only), ``accuracy_exact`` (the sorted-split variant of ``accuracy``), ``best_threshold``
    (mean of the per-fold grid thresholds, squared distance), ``tar@far=1e-3``, ``xnorm``, ``pairs`` and
    ``curves`` (the downsampled fold-averaged ROC of ``accuracy``'s embeddings). ``metrics`` holds the
    full :func:`verification_metrics` dict (fractions) for callers that need more.
    """
    if issame.size < NFOLDS:
        raise BinFormatError(f"{source}: {issame.size} pairs; {NFOLDS}-fold verification needs ≥ {NFOLDS}")
    orig, mirror = embed_raw(model, images, device, batch_size, flip, image_size, source, channels_last,
                             mean=mean, std=std)
    xnorm = xnorm_of(orig, mirror)
    dist_noflip = pair_distances(l2_normalize(orig))
    dist = pair_distances(l2_normalize(orig + mirror)) if mirror is not None else dist_noflip
    m = verification_metrics(dist, issame, nfolds=NFOLDS)
    noflip = verification_metrics(dist_noflip, issame, nfolds=NFOLDS) if mirror is not None else m
    exact = exact_accuracy(dist, issame, nfolds=NFOLDS)
    return {
        "accuracy": 100.0 * m["accuracy"],
        "accuracy_std": 100.0 * m["accuracy_std"],
        "accuracy_noflip": 100.0 * noflip["accuracy"],
        "accuracy_exact": 100.0 * exact["accuracy"],
        "best_threshold": m["best_threshold"],
        "tar@far=1e-3": 100.0 * m["val"],
        "xnorm": xnorm,
        "pairs": int(issame.size),
        "curves": {"roc": roc_curve_points(m["fpr"], m["tpr"])},
        "metrics": m,
    }


@options
class Verification:
    """The ``verification`` protocol: insightface 10-fold accuracy on ``.bin`` pair files.

    One result per set: ``accuracy`` ± ``accuracy_std`` (percent; flip test unless ``flip = false``),
    ``accuracy_noflip``, ``accuracy_exact``, ``best_threshold``, ``tar@far=1e-3``, ``xnorm``, ``pairs`` and
    ``curves.roc`` (see :func:`pair_set_metrics`).
    """

    name = "verification"

    def __init__(
        self,
        # Explicit ``.bin`` files; each one's dataset name is its file stem (``lfw.bin`` → ``lfw``).
        bins: Sequence[pathlib.Path] = (),
        # Also evaluate the ``.bin`` files the training data source offers (``ctx.provided["verification"]``).
        use_provided: bool = True,
        # Images per forward pass.
        batch_size: int = option(64, attrs.validators.gt(0)),
        # Flip test: embed each image and its mirror and add the two embeddings.
        flip: bool = True,
        # Side of the square model input; other crops are resized (short side) and centre-cropped. Unset: the
        # backbone's declared ``input_size`` (a set value must equal it).
        image_size: int | None = option(None, attrs.validators.optional(attrs.validators.gt(0))),
        # Run the model in channels-last memory format (as ``train.channels_last``): a contiguous model is
        # converted for the evaluation and back. A model already in channels-last gets channels-last inputs
        # either way.
        channels_last: bool = option(False, attrs.validators.instance_of(bool)),
    ):
        self.config = self.Config(
            bins=[pathlib.Path(b) for b in bins],
            use_provided=use_provided,
            batch_size=batch_size,
            flip=flip,
            image_size=image_size,
            channels_last=channels_last,
        )

    def datasets(self, ctx: EvalContext) -> list[tuple[str, pathlib.Path]]:
        """``(name, path)`` of every set to evaluate: explicit ``bins`` first, then the provided ones."""
        sets: dict[str, pathlib.Path] = {}
        candidates = [(p.stem, p) for p in self.config.bins]
        if self.config.use_provided:
            provided = (ctx.provided or {}).get(self.name, {}) or {}
            candidates += [(str(n), pathlib.Path(p)) for n, p in provided.items()]
        for name, path in candidates:
            if name in sets:
                if os.path.abspath(sets[name]) == os.path.abspath(path):
                    continue
                raise ValueError(
                    f"verification: two evaluation sets are named {name!r}: {sets[name]} and {path}; "
                    "rename one of the files"
                )
            sets[name] = path
        return list(sets.items())

    def check_inputs(self) -> list[str]:
        """The explicit ``bins`` that are missing (the provided ones may be written during a run)."""
        return [f"bins[{i}]: {p} does not exist" if not p.exists() else f"bins[{i}]: {p} is not a file"
                for i, p in enumerate(self.config.bins) if not p.is_file()]

    def evaluate(self, model: nn.Module, ctx: EvalContext) -> list[Result]:
        sets = self.datasets(ctx)
        if not sets:
            raise ValueError(
                "verification: no .bin files to evaluate — list them in `bins`"
                + (
                    " (the training data source offers none)"
                    if self.config.use_provided
                    else " or set `use_provided = true`"
                )
            )
        for name, path in sets:  # fail before spending time on the first set
            if not path.is_file():
                raise FileNotFoundError(f"verification: {path} (set {name!r}) does not exist")
        info = model_input(model, self.config.image_size, self.name)
        results: list[Result] = []
        for name, path in sets:
            numbers = bin_set_metrics(model, path, device=ctx.device, batch_size=self.config.batch_size,
                                      flip=self.config.flip, image_size=info.input_size,
                                      channels_last=self.config.channels_last, mean=info.mean, std=info.std)
            numbers.pop("metrics")
            results.append({"protocol": self.name, "dataset": name, "step": ctx.step, **numbers})
        return results
