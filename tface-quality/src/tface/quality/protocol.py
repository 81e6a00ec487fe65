"""The ``evrc`` protocol: error-versus-reject curves of a quality model on verification ``.bin`` files.

Per ``.bin`` (insightface/TFace pair files, read by core's :func:`~tface.core.data.binfile.read_bin`): every image
slot is one image; the quality model scores each (its backbone's feature map through the quality head), a
recogniser named by ``recognizer`` embeds each (L2-normalised, optionally flip-summed), a pair's score is the
cosine of its two embeddings, and :func:`tface.quality.evrc.evrc` gives the curves at each FMR with their AOC and
relative AOC.

Where the quality head comes from: a protocol receives only the run's model, the backbone. ``head`` names a file
holding the head (a quality_regression run's ``checkpoints/last.pt`` or ``step-N.pt``, whose ``method.quality``
it reads, a head state_dict, or a TFace SDD-FIQA checkpoint's ``quality.*`` tensors). Unset, the protocol uses the
head the ``quality_regression`` method attached to that backbone (:func:`tface.quality.head.attach_head`), which
is how ``[[eval]] name = "evrc"`` in a quality recipe evaluates the model being trained, and how ``tface eval --run``
of such a run finds it (the method's ``attach_eval`` reads it from the run's ``last.pt``); ``tface eval`` of a bare
checkpoint needs ``head``.

Plots: every result carries its curves (``curves.evrc``, hence in ``report.json``) with a ``plot`` spec (FNMR per
FMR over the reject ratio), so core's report writer draws ``evrc-evrc-<dataset>.png`` into the run folder (``tface
run``) or the report folder (``tface eval``) like any ROC, one line per model and FMR (needs matplotlib, the
``tface-core[plots]`` extra).
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import nn

from tface.core.attached import CONFIDENCE, attached
from tface.core.backbone import backbone_info
from tface.core.config import option, options
from tface.core.data.binfile import BinFormatError, read_bin
from tface.core.data.image import ImageDecodeError, decode_rgb
from tface.core.protocol import EvalContext, Result
from tface.core.reference import BackboneRef
from tface.quality.evrc import DEFAULT_FMRS, DEFAULT_RATIOS, EVRCResult, evrc
from tface.quality.head import attached_head, embeddings, load_quality_head, quality_scores, unfreeze

__all__ = ["EVRCProtocol", "bin_evrc", "evrc_numbers", "fmr_label"]


def fmr_label(fmr: float) -> str:
    """``1e-3`` for 0.001 (an exact power of ten), else ``%g``: the FMR as result keys spell it."""
    k = round(math.log10(fmr)) if fmr > 0 else 0
    return f"1e{k}" if fmr > 0 and k < 0 and 10.0**k == fmr else f"{fmr:g}"


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def evrc_numbers(result: EVRCResult) -> dict[str, Any]:
    """The scalar metrics of one EVRC, keyed ``aoc@fmr=1e-3`` etc. (NaN, e.g. a relative AOC with no failing
    genuine pair before rejection, becomes None), plus ``curves.evrc`` with the thresholds and the curves."""
    rel = result.aoc_relative[np.isfinite(result.aoc_relative)]
    out: dict[str, Any] = {"aoc": _finite(result.mean_aoc), "aoc_rel": float(rel.mean()) if rel.size else None}
    for i, f in enumerate(result.fmrs):
        label = fmr_label(f)
        out[f"aoc@fmr={label}"] = _finite(float(result.aoc[i]))
        out[f"aoc_rel@fmr={label}"] = _finite(float(result.aoc_relative[i]))
        out[f"fnmr@fmr={label}"] = _finite(float(result.fnmr[i, 0]))
    out["curves"] = {"evrc": {
        "ratios": [float(r) for r in result.ratios],
        "thresholds": {fmr_label(f): _finite(float(t)) for f, t in zip(result.fmrs, result.thresholds)},
        "fnmr": {fmr_label(f): [_finite(float(v)) for v in row] for f, row in zip(result.fmrs, result.fnmr)},
        # how core's report writer draws it (tface.core.report.write_plots): one line per FMR
        "plot": {"x": "ratios", "y": "fnmr", "xlabel": "ratio of unconsidered images", "ylabel": "FNMR"},
    }}
    return out


def _decoded(images: Sequence[bytes], lo: int, hi: int, source: Any) -> list[torch.Tensor]:
    out = []
    for i in range(lo, hi):
        try:
            out.append(decode_rgb(images[i]))
        except ImageDecodeError as exc:
            raise BinFormatError(f"{source}: image {i} cannot be decoded: {exc}") from exc
    return out


def bin_evrc(model: nn.Module, head: nn.Module, recognizer: nn.Module, path: str | os.PathLike, *,
             device: torch.device | str = "cpu", batch_size: int = 64, flip: bool = True,
             fmrs: Sequence[float] = DEFAULT_FMRS, ratios: np.ndarray | None = None
             ) -> tuple[EVRCResult, np.ndarray, np.ndarray, np.ndarray]:
    """EVRC of the ``.bin`` at ``path``: ``(result, quality [M], pair scores [P], genuine [P])``.

    Image slot ``2p`` and ``2p + 1`` form pair ``p``; the slots are decoded ``batch_size`` at a time and scored by
    both models, so memory holds one batch of crops.
    """
    images, issame = read_bin(path)
    if len(images) != 2 * len(issame) or not len(issame):
        raise BinFormatError(f"{path}: {len(images)} images for {len(issame)} pairs (expected two per pair)")
    quality = torch.empty(len(images), dtype=torch.float64)
    emb: torch.Tensor | None = None
    for lo in range(0, len(images), batch_size):
        hi = min(lo + batch_size, len(images))
        crops = _decoded(images, lo, hi, path)
        quality[lo:hi] = quality_scores(model, head, crops, device=device, batch_size=batch_size)
        e = embeddings(recognizer, crops, device=device, batch_size=batch_size, flip=flip)
        if emb is None:
            emb = torch.empty(len(images), e.shape[1], dtype=torch.float32)
        emb[lo:hi] = e
    assert emb is not None
    scores = (emb[0::2].double() * emb[1::2].double()).sum(1).numpy()
    genuine = np.asarray(issame, dtype=bool)
    q = quality.numpy()
    index = np.arange(len(issame), dtype=np.int64) * 2
    return evrc(q, index, index + 1, genuine, scores, fmrs=fmrs, ratios=ratios), q, scores, genuine


def _ratio(instance: Any, attribute: Any, value: float) -> None:
    if not 0.01 <= value <= 0.95 or abs(value * 100 - round(value * 100)) > 1e-9:
        raise ValueError(f"must be a multiple of 0.01 in [0.01, 0.95], got {value}")


def _fmrs(instance: Any, attribute: Any, value: Sequence[float]) -> None:
    if not value or not all(0.0 < float(f) < 1.0 for f in value):
        raise ValueError(f"must be a non-empty array of FMRs in (0, 1), got {list(value)}")


@options
class EVRCProtocol:
    """The ``evrc`` protocol (see the module docstring). One result per ``.bin``: ``aoc`` and ``aoc_rel`` (means
    over the FMRs), per FMR ``aoc@fmr=…``, ``aoc_rel@fmr=…`` and ``fnmr@fmr=…`` (before rejection), ``pairs``,
    ``images``, ``quality_mean`` and ``curves.evrc`` (drawn into the run's folder by core's report writer)."""

    name = "evrc"

    def __init__(
        self,
        # ``.bin`` pair files; each one's dataset name is its file stem.
        bins: Sequence[pathlib.Path] = (),
        # Also the ``.bin`` files the training data source offers (for ``evrc`` or ``verification``).
        use_provided: bool = True,
        # The recogniser whose cosines score the pairs: { name = "ir_50", checkpoint = "..." }. Required.
        recognizer: BackboneRef | None = None,
        # The quality head's weights (a quality_regression run's checkpoint, a head file, a TFace SDD-FIQA
        # checkpoint); unset: the head the quality_regression method trains with this model.
        head: pathlib.Path | None = None,
        # Target false-match rates, each in (0, 1).
        fmrs: Sequence[float] = option(DEFAULT_FMRS, _fmrs),
        # The largest reject ratio: the curves run over 0, 0.01, ..., max_ratio (0.95: the paper's; lower it for a
        # small set, where no genuine pair may survive the last ratios, leaving the FNMR and the AOC undefined).
        max_ratio: float = option(0.95, _ratio),
        # Images per forward pass.
        batch_size: int = option(64, attrs.validators.gt(0)),
        # Recogniser flip test: the embedding of image + mirror (the quality model sees the image only).
        flip: bool = True,
        # Where an image's quality comes from: "head" (a quality head, see `head`) or "confidence" (the per-image
        # confidence the model's training method attached, e.g. SCF's κ; `head` must then be unset).
        quality: Literal["head", "confidence"] = "head",
    ):
        if quality == "confidence" and head is not None:
            raise ValueError('quality = "confidence" scores images by the attached confidence; drop `head`')
        self.bins = [pathlib.Path(b) for b in bins]
        self.use_provided = use_provided
        self.recognizer = recognizer
        self.head = pathlib.Path(head) if head is not None else None
        self.fmrs = tuple(float(f) for f in fmrs)
        self.max_ratio = float(max_ratio)
        #: 0, 0.01, ..., max_ratio
        self.ratios = DEFAULT_RATIOS[: round(self.max_ratio * 100) + 1]
        self.batch_size = batch_size
        self.flip = flip
        self.quality = quality

    def datasets(self, ctx: EvalContext) -> list[tuple[str, pathlib.Path]]:
        """``(name, path)`` of every set: explicit ``bins`` first, then the provided ones (a name once)."""
        sets: dict[str, pathlib.Path] = {}
        candidates = [(p.stem, p) for p in self.bins]
        if self.use_provided:
            for key in (self.name, "verification"):
                candidates += [(str(n), pathlib.Path(p)) for n, p in ((ctx.provided or {}).get(key) or {}).items()]
        for name, path in candidates:
            if name in sets and os.path.abspath(sets[name]) != os.path.abspath(path):
                raise ValueError(f"evrc: two evaluation sets are named {name!r}: {sets[name]} and {path}; rename one")
            sets.setdefault(name, path)
        return list(sets.items())

    def check_inputs(self) -> list[str]:
        problems = [f"bins[{i}]: {p} does not exist" if not p.exists() else f"bins[{i}]: {p} is not a file"
                    for i, p in enumerate(self.bins) if not p.is_file()]
        if self.recognizer is None:
            problems.append('recognizer: not set: name the recognition model, e.g. { name = "ir_50", '
                            'checkpoint = "backbone.pt" }')
        elif self.recognizer.missing_file():
            problems.append(f"recognizer.{self.recognizer.missing_file()}")
        if self.head is not None and not self.head.is_file():
            problems.append(f"head: {self.head} {'is not a file' if self.head.exists() else 'does not exist'}")
        return problems

    def _head(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module mapping the model's feature map to each image's quality."""
        if self.quality == "confidence":
            confidence = attached(unfreeze(model), CONFIDENCE)
            if confidence is None:
                raise ValueError('evrc: quality = "confidence" needs a per-image confidence attached to the model by '
                                 'its training method ([method] name = "scf"): evaluate during that run or with '
                                 "tface eval --run RUN_DIR; none is attached to this model")
            return confidence
        channels = backbone_info(unfreeze(model)).feature_channels
        if channels is None:
            raise ValueError("evrc: the quality model's backbone offers no feature map (feature_channels), which "
                             "the quality head reads")
        if self.head is not None:
            return load_quality_head(self.head, channels).to(device)
        head = attached_head(model)
        if head is None:
            raise ValueError("evrc: no quality head for this model: set head = the quality_regression run's "
                             "checkpoints/last.pt (or a head file); a model trained by quality_regression brings its "
                             "own in its run and in `tface eval --run RUN_DIR`")
        return head

    def _recognizer(self, device: torch.device) -> nn.Module:
        """Built anew per evaluation: a run does not keep a second model on its device between evaluations."""
        assert self.recognizer is not None
        return self.recognizer.build("recognizer").to(device)

    def evaluate(self, model: nn.Module, ctx: EvalContext) -> list[Result]:
        sets = self.datasets(ctx)
        if not sets:
            raise ValueError("evrc: no .bin files to evaluate: list them in `bins`")
        problems = self.check_inputs()
        for name, path in sets:
            if not path.is_file():
                problems.append(f"{path} (set {name!r}) does not exist")
        if problems:
            raise ValueError("evrc: " + "; ".join(problems))
        head = self._head(model, ctx.device)
        recognizer = self._recognizer(ctx.device)
        results: list[Result] = []
        for name, path in sets:
            result, quality, _, genuine = bin_evrc(model, head, recognizer, path, device=ctx.device,
                                                   batch_size=self.batch_size, flip=self.flip, fmrs=self.fmrs,
                                                   ratios=self.ratios)
            row: Result = {"protocol": self.name, "dataset": name, "step": ctx.step, "pairs": int(genuine.size),
                           "images": int(quality.size), "quality_mean": float(quality.mean()), **evrc_numbers(result)}
            results.append(row)
        return results
