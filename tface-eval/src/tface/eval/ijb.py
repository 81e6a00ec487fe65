"""IJB-B / IJB-C template verification (1:1) and identification (1:N), as insightface's IJB scripts.

Pipeline: meta files (:mod:`tface.eval.ijb_data`, validated before any model work) → every image read from
``loose_crop/``, decoded as RGB, aligned by its 5 landmarks to the 112×112 ArcFace template and normalised
``(x/255 − 0.5)/0.5`` → raw embeddings of the crop and of its horizontal mirror (model in eval mode,
batched, decoding in DataLoader workers) → the N/D/F test mode (:func:`tface.eval.ijb_metrics.image_features`)
→ media mean / template sum / L2 norm → cosine per pair → TAR at each FAR, read out both as insightface
does (nearest ROC point) and strictly (FPR ≤ target). The math lives in :mod:`tface.eval.ijb_metrics`.

Raw embeddings are what costs (469k images for IJB-C); with ``cache_dir`` they are written in chunks under a
key derived from the model's weights, the crops and the options that change them, so an interrupted
extraction resumes at its last complete chunk and a finished one is reused — also for the other N/D modes,
which only change what happens after the embeddings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tface.core.attached import with_confidence
from tface.core.backbone import DEFAULT_MEAN, DEFAULT_STD, backbone_info
from tface.core.config import option, options
from tface.core.data.image import normalize
from tface.core.fsutil import atomic_write, atomic_write_bytes
from tface.core.protocol import EvalContext, Result
from tface.core.tools.common import progress
from tface.eval.ijb_data import (
    TARGETS,
    IdentificationMeta,
    IJBImages,
    IJBMeta,
    check_images,
    dataset_fingerprint,
    find_root,
    meta_files,
    read_identification_meta,
    read_meta,
)
from tface.eval.ijb_metrics import (
    DEFAULT_FARS,
    Roc,
    downsample_roc,
    identification,
    image_features,
    pool_templates,
    score_pairs,
)
from tface.eval.verification import _EvalMode

__all__ = [
    "IJB",
    "CACHE_CHUNK",
    "extract_features",
    "cache_folder",
    "model_fingerprint",
    "mode_name",
    "mode_description",
    "far_label",
    "downsample_roc",
]

#: Images per cache chunk: ~16k × 2 × 512 float32 = 64 MB per file, a few minutes of work on one GPU at
#: most, which bounds what an interruption loses.
CACHE_CHUNK = 16384
_CACHE_FORMAT = 1


def _input_description(size: int, mean: Sequence[float], std: Sequence[float]) -> str:
    """What the crops fed to the model are, for the cache identity (112 and [-1, 1]: the historical text)."""
    if tuple(mean) == DEFAULT_MEAN and tuple(std) == DEFAULT_STD:
        norm = "(x/255-0.5)/0.5"
    else:
        norm = f"(x/255-{list(mean)})/{list(std)}"
    return f"rgb, 5-point similarity warp to the {size}x{size} ArcFace template, {norm}"


# --------------------------------------------------------------------------------------------------
# Names used in results


def mode_name(norm: bool, detector: bool, flip: bool, confidence: bool = False) -> str:
    """``"N0D1F1"`` style, with ``ijb_evals.py``'s meaning of N (N1 = every image feature L2-normalised); ``K1``
    appended for confidence-aware pooling (ours, SCF's)."""
    return f"N{int(norm)}D{int(detector)}F{int(flip)}" + ("K1" if confidence else "")


def mode_description(norm: bool, detector: bool, flip: bool, confidence: bool = False) -> str:
    """The test mode in plain words; the N/D/F label alone is ambiguous across insightface's scripts."""
    if confidence:
        views = "κ(crop)·unit(embedding(crop)) + κ(mirror)·unit(embedding(mirror))" if flip else \
            "κ(crop)·unit(embedding(crop))"
        weight = "each view L2-normalised and weighted by its confidence κ (SCF)"
        return "; ".join([f"image feature = {views}", weight,
                          "scaled by the detector's faceness score" if detector else "faceness ignored"])
    return "; ".join(
        [
            "image feature = embedding(crop) + embedding(mirror)" if flip else "image feature = embedding(crop)",
            "L2-normalised per image" if norm else "raw norm kept (acts as a quality weight)",
            "scaled by the detector's faceness score" if detector else "faceness ignored",
        ]
    )


def far_label(far: float) -> str:
    """``1e-4`` → ``"1e-4"``, ``2.5e-3`` → ``"2.5e-3"`` (mantissa without padding, exponent without zeros)."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _round6(values: np.ndarray) -> list[float]:
    """Six significant digits: plenty for a plot, and a third of the JSON of full ``repr`` floats."""
    return [float(f"{v:.6g}") for v in values.tolist()]


# --------------------------------------------------------------------------------------------------
# Embedding and the feature cache


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's class and every ``state_dict`` entry (names, dtypes, shapes and bytes).

    The feature cache is keyed by it, so features are reused only for bit-identical weights. Hashing reads
    each tensor once (~0.5 s for an R100's 260 MB).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # extra state: whatever the module chose to save
            h.update(f"\0{name}\0{value!r}".encode())
    return h.hexdigest()


def _forward(model: nn.Module, batch: torch.Tensor, device: torch.device, dtype: torch.dtype,
             mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD) -> np.ndarray:
    out = model(normalize(batch.to(device), mean, std).to(dtype))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"ijb: the model must return a [batch, dim] embedding tensor, got {got}")
    return out.detach().float().cpu().numpy()


class _Cache:
    """Chunked raw-feature cache in one folder: ``chunk-NNNNNN.npy`` files and ``manifest.json``.

    Each chunk holds float32 ``[images, copies, dim]`` (copies: crop, and mirror when flipping). A chunk file
    is written (atomically) before the manifest lists it, and the manifest is rewritten atomically after each
    chunk, so whatever the manifest lists is complete; a chunk that fails to load is recomputed with all
    later ones.
    """

    def __init__(self, folder: pathlib.Path, identity: Mapping[str, Any], images: int, copies: int):
        self.folder = folder
        self.identity = json.loads(json.dumps(identity, sort_keys=True))
        self.images = images
        self.copies = copies
        self.dim: int | None = None
        self.chunks: list[dict[str, int | str]] = []

    @property
    def done(self) -> int:
        return int(self.chunks[-1]["stop"]) if self.chunks else 0

    def load(self, out: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """Read the listed chunks into ``out`` (allocated here), keeping the longest loadable prefix."""
        path = self.folder / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            return out
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != _CACHE_FORMAT
            or manifest.get("identity") != self.identity
            or manifest.get("images") != self.images
            or manifest.get("copies") != self.copies
        ):
            return out
        dim = manifest.get("dim")
        good: list[dict[str, int | str]] = []
        stop = 0
        for chunk in manifest.get("chunks", []):
            try:
                start, end = int(chunk["start"]), int(chunk["stop"])
                if start != stop or not start < end <= self.images:
                    break
                arr = np.load(self.folder / str(chunk["file"]), allow_pickle=False)
            except (OSError, ValueError, KeyError, TypeError):
                break
            if arr.dtype != np.float32 or arr.shape != (end - start, self.copies, dim):
                break
            if out[0] is None:
                out = [np.empty((self.images, int(dim)), dtype=np.float32) for _ in range(self.copies)]
            for k in range(self.copies):
                out[k][start:end] = arr[:, k]
            good.append({"start": start, "stop": end, "file": str(chunk["file"])})
            stop = end
        if good:
            self.dim = int(dim)
            self.chunks = good
        return out

    def add(self, start: int, stop: int, data: np.ndarray) -> None:
        self.dim = int(data.shape[-1])
        name = f"chunk-{start:09d}.npy"
        atomic_write(self.folder / name, lambda f: np.save(f, np.ascontiguousarray(data), allow_pickle=False))
        self.chunks.append({"start": start, "stop": stop, "file": name})
        manifest = {
            "format": _CACHE_FORMAT,
            "identity": self.identity,
            "images": self.images,
            "copies": self.copies,
            "dim": self.dim,
            "complete": stop == self.images,
            "chunks": self.chunks,
        }
        atomic_write_bytes(self.folder / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())


def cache_folder(cache_dir: str | os.PathLike, identity: Mapping[str, Any], prefix: str = "ijb") -> pathlib.Path:
    """``cache_dir/<prefix>-<hash of identity>``: one folder per model, data and crop options."""
    key = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=12).hexdigest()
    return pathlib.Path(cache_dir) / f"{prefix}-{key}"


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    flip: bool = True,
    cache_dir: str | os.PathLike | None = None,
    identity: Mapping[str, Any] | None = None,
    chunk_size: int = CACHE_CHUNK,
    label: str = "ijb",
    before_work: Any = None,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw float32 embeddings ``[N, D]`` of every crop of ``dataset`` and (with ``flip``) of its mirror.

    ``dataset[i]`` is a uint8 ``[3, S, S]`` crop. The model runs in eval mode under ``torch.no_grad()`` (each
    submodule's mode is restored), inputs normalised on ``device`` with ``mean``/``std`` (the backbone's,
    :mod:`tface.core.backbone`). With ``cache_dir`` the embeddings go to
    ``cache_dir/<label>-<hash of identity>/`` in chunks of ``chunk_size`` images: complete chunks found
    there are loaded instead of recomputed (a finished cache never calls the model) and an interrupted run
    continues after its last complete chunk. ``identity`` must then describe everything that determines the
    embeddings (model weights, crops, flip) as JSON data. ``before_work(start)``, if given, is called once
    before the first image is computed (e.g. to check the image files exist), not when all is cached.
    """
    if batch_size <= 0 or chunk_size <= 0:
        raise ValueError(f"batch_size and chunk_size must be positive, got {batch_size} and {chunk_size}")
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{label}: no images to embed")
    copies = 2 if flip else 1
    cache = None
    out: list[np.ndarray | None] = [None] * copies
    if cache_dir is not None:
        if identity is None:
            raise ValueError("a feature cache needs the identity of what is cached (model, data, options)")
        cache = _Cache(cache_folder(cache_dir, identity, label), identity, n, copies)
        out = cache.load(out)
    start = cache.done if cache is not None else 0
    if start < n:
        if before_work is not None:
            before_work(start)
        if cache is not None and start:
            print(f"{label}: resuming the feature cache in {cache.folder} at image {start}/{n}", file=sys.stderr)
        out = _embed_range(model, dataset, out, start, n, device, batch_size, workers, flip, chunk_size, cache, label,
                           mean, std)
    return out[0], (out[1] if flip else None)  # type: ignore[return-value]


def _embed_range(
    model: nn.Module,
    dataset: Dataset,
    out: list[np.ndarray | None],
    start: int,
    n: int,
    device: torch.device | str,
    batch_size: int,
    workers: int,
    flip: bool,
    chunk_size: int,
    cache: _Cache | None,
    label: str,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> list[np.ndarray | None]:
    device = torch.device(device)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # Batches never straddle a chunk boundary, so a chunk is complete exactly when its last batch is.
    bounds = [(a, min(a + chunk_size, n)) for a in range(start, n, chunk_size)]
    batches = [list(range(b, min(b + batch_size, c1))) for c0, c1 in bounds for b in range(c0, c1, batch_size)]
    chunk_ends = {c1 for _, c1 in bounds}
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda")
    chunk_start = start
    with _EvalMode(model), torch.no_grad():
        for idx, batch in zip(batches, progress(loader, length=len(batches), label=f"{label} embeddings")):
            batch = batch.to(device, non_blocking=True)  # uint8 over the bus once; mirrored there
            views = (batch, batch.flip(-1)) if flip else (batch,)
            for k, view in enumerate(views):
                emb = _forward(model, view, device, dtype, mean, std)
                if out[k] is None:
                    out[k] = np.empty((n, emb.shape[1]), dtype=np.float32)
                out[k][idx[0] : idx[-1] + 1] = emb  # type: ignore[index]
            stop = idx[-1] + 1
            if stop in chunk_ends:
                if cache is not None:
                    cache.add(chunk_start, stop, np.stack([o[chunk_start:stop] for o in out], axis=1))  # type: ignore[index]
                chunk_start = stop
    return out


# --------------------------------------------------------------------------------------------------
# The protocol


def _check_fars(_inst: Any, _attr: Any, value: Sequence[float]) -> None:
    if not value:
        raise ValueError("at least one FAR is needed")
    for far in value:
        if not (0 < far <= 1) or math.isnan(far):
            raise ValueError(f"every FAR must be in (0, 1], got {far}")


@options
class IJB:
    """The ``ijb`` protocol: IJB-B / IJB-C 1:1 TAR@FAR (and 1:N when enabled) as insightface computes them."""

    name = "ijb"

    def __init__(
        self,
        # Folder holding ``meta/`` and ``loose_crop/`` (or the folder above ``IJBB/`` / ``IJBC/``).
        root: pathlib.Path,
        # ``"IJBB"`` or ``"IJBC"``: picks the ``ijbb_`` / ``ijbc_`` meta files.
        target: str = option("IJBC", attrs.validators.in_(tuple(TARGETS))),
        # N: L2-normalise every image feature before pooling (False keeps the norm as a quality weight).
        norm: bool = False,
        # D: multiply every image feature by its detector faceness score.
        detector: bool = True,
        # F: image feature = embedding(crop) + embedding(horizontal mirror).
        flip: bool = True,
        # Images per forward pass.
        batch_size: int = option(64, attrs.validators.gt(0)),
        # DataLoader worker processes for reading, decoding and aligning (0: in the main process).
        workers: int = option(0, attrs.validators.ge(0)),
        # Where raw embeddings are cached in chunks (resumable, reused for all N/D modes); none when unset.
        cache_dir: pathlib.Path | None = None,
        # Target FARs of the TAR read-out.
        fars: Sequence[float] = option(DEFAULT_FARS, _check_fars),
        # Also run 1:N identification (mixed probes against both galleries; needs the 1:N CSVs in meta/).
        identification: bool = False,
        # Confidence-aware pooling (SCF): each view's unit embedding weighted by the per-image confidence κ that
        # the model's training method attached (``[method] name = "scf"``); needs ``norm = false``.
        confidence: bool = False,
    ):
        if confidence and norm:
            raise ValueError("confidence = true weights every image by its κ; norm = true would erase the weights")
        self.config = self.Config(
            root=pathlib.Path(root),
            target=target,
            norm=norm,
            detector=detector,
            flip=flip,
            batch_size=batch_size,
            workers=workers,
            cache_dir=None if cache_dir is None else pathlib.Path(cache_dir),
            fars=[float(f) for f in fars],
            identification=identification,
            confidence=confidence,
        )
        #: Images per cache chunk (a tuning knob, not a recipe option: it never changes results).
        self.cache_chunk = CACHE_CHUNK

    # -- pieces, usable on their own ------------------------------------------------------------------

    def check_inputs(self) -> list[str]:
        """The meta files of ``target`` missing under ``root`` (their content is checked by :meth:`read`)."""
        root = find_root(self.config.root, self.config.target)
        missing = [str(p) for p in meta_files(root, self.config.target).values() if not p.is_file()]
        return [f"root: {TARGETS[self.config.target][1]} meta files not found: {', '.join(missing)}"] if missing else []

    def read(self) -> tuple[IJBMeta, IdentificationMeta | None]:
        """Read and validate every meta file the configuration needs (before any model work)."""
        meta = read_meta(self.config.root, self.config.target)
        ident = read_identification_meta(meta) if self.config.identification else None
        return meta, ident

    def features(
        self, model: nn.Module, meta: IJBMeta, ctx: EvalContext, identity: Mapping[str, Any] | None = None,
        net: nn.Module | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw embeddings of every image (and mirror), through the cache when ``cache_dir`` is set.

        ``net`` is the module run (default ``model``; with confidence, :class:`~tface.core.attached.WithConfidence`,
        whose last output column is κ). ``identity`` defaults to a hash of ``net``'s weights plus the data and crop
        options. Crops are aligned at the backbone's declared ``input_size`` and normalised with its ``mean``/``std``.
        """
        cfg = self.config
        info = backbone_info(model)
        net = model if net is None else net
        if cfg.cache_dir is not None and identity is None:
            identity = {
                "model": model_fingerprint(net),
                "data": dataset_fingerprint(meta, info.input_size),
                "flip": cfg.flip,
                "input": _input_description(info.input_size, info.mean, info.std),
            }
        return extract_features(
            net,
            IJBImages(meta, info.input_size),
            device=ctx.device,
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            flip=cfg.flip,
            cache_dir=cfg.cache_dir,
            identity=identity,
            chunk_size=self.cache_chunk,
            label=f"ijb-{meta.target.lower()}",
            before_work=lambda start: check_images(meta, range(start, len(meta.names))),
            mean=info.mean,
            std=info.std,
        )

    # -- the protocol -----------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, ctx: EvalContext) -> list[Result]:
        cfg = self.config
        meta, ident = self.read()
        net = self._net(model)
        raw, raw_flip = self.features(model, meta, ctx, net=net)
        kappa = kappa_flip = None
        if cfg.confidence:  # the last column is κ (WithConfidence)
            kappa, raw = raw[:, -1], raw[:, :-1]
            if raw_flip is not None:
                kappa_flip, raw_flip = raw_flip[:, -1], raw_flip[:, :-1]
        feats = image_features(
            raw, raw_flip, meta.faceness, norm=cfg.norm, detector=cfg.detector, flip=cfg.flip, kappa=kappa,
            kappa_flip=kappa_flip,
        )
        del raw, raw_flip
        template_ids, template_feats = pool_templates(feats, meta.templates, meta.medias)
        del feats
        scores = score_pairs(template_ids, template_feats, meta.pairs)
        head = {
            "protocol": self.name,
            "dataset": meta.dataset,
            "step": ctx.step,
            "mode": mode_name(cfg.norm, cfg.detector, cfg.flip, cfg.confidence),
        }
        results = [self._verification(head, meta, scores, int(template_ids.size))]
        if ident is not None:
            results.append(self._identification(head, ident, template_ids, template_feats))
        return results

    def _net(self, model: nn.Module) -> nn.Module:
        """The module to run: ``model``, or with ``confidence`` the model with its attached confidence."""
        if not self.config.confidence:
            return model
        net = with_confidence(model)
        if net is None:
            raise ValueError(
                "ijb: confidence = true needs a per-image confidence attached to the model by its training method "
                '([method] name = "scf"): evaluate during that run, or with tface eval --run RUN_DIR (which restores '
                "it from the run's checkpoints/last.pt); none is attached to this model")
        return net

    def _verification(self, head: dict[str, Any], meta: IJBMeta, scores: np.ndarray, templates: int) -> Result:
        cfg = self.config
        fars = list(cfg.fars)
        roc = Roc(meta.labels, scores, overwrite=True)  # one sort (of scores itself) for every read-out and the curve
        nearest = roc.tar_at_far(fars, readout="nearest")
        strict = roc.tar_at_far(fars, readout="strict")
        result: Result = {**head, "task": "1:1",
                          "mode_description": mode_description(cfg.norm, cfg.detector, cfg.flip, cfg.confidence)}
        readout: dict[str, dict[str, float]] = {}
        for far in fars:
            key = far_label(far)
            result[f"tar@far={key}"] = 100.0 * nearest[far]["tar"]
            result[f"tar@far={key} (strict)"] = 100.0 * strict[far]["tar"]
            readout[key] = {
                "far_used": nearest[far]["far_used"],
                "threshold": nearest[far]["threshold"],
                "strict_far_used": strict[far]["far_used"],
                "strict_threshold": strict[far]["threshold"],
            }
        fpr, tpr, _ = roc.curve()
        fpr, tpr = downsample_roc(fpr, tpr)
        result.update(
            {
                "images": len(meta.names),
                "templates": templates,
                "pairs": int(meta.labels.size),
                "genuine": int(np.count_nonzero(meta.labels)),
                "readout": readout,
                "curves": {"roc": {"fpr": _round6(fpr), "tpr": _round6(tpr)}},
            }
        )
        return result

    def _identification(
        self, head: dict[str, Any], ident: IdentificationMeta, template_ids: np.ndarray, template_feats: np.ndarray
    ) -> Result:
        """Mixed probes against each gallery (open set), then the mean as insightface's ``ijb_evals.py``.

        Rank-k of the mean counts rank-k hits of both galleries over all probes (every IJB probe is mated in
        exactly one gallery); TPIR of the mean is the average of the two galleries' TPIRs.
        """
        cfg = self.config

        def rows(templates: np.ndarray) -> np.ndarray:
            return template_feats[np.searchsorted(template_ids, templates)]

        probe_t, probe_s = ident.probes
        probe_f = rows(probe_t)
        ranks, fpirs = (1, 5, 10), (0.01, 0.1)
        per: dict[str, dict[str, Any]] = {}
        for name, (gal_t, gal_s) in ident.galleries.items():
            per[name] = identification(gal_s, rows(gal_t), probe_s, probe_f, ranks=ranks, fpirs=fpirs)
        result: Result = {
            **head,
            "task": "1:N",
            "mode_description": mode_description(cfg.norm, cfg.detector, cfg.flip, cfg.confidence),
        }
        n_probes = int(probe_t.size)
        for k in ranks:
            hits = sum(int(np.count_nonzero(r["mated_ranks"] <= k)) for r in per.values())
            result[f"rank{k}"] = 100.0 * hits / n_probes
        for f in fpirs:
            result[f"tpir@fpir={f:g}"] = 100.0 * float(np.mean([r["tpir"][f]["tpir"] for r in per.values()]))
        for name, r in per.items():
            for k in ranks:
                result[f"rank{k} ({name})"] = 100.0 * r["cmc"][k]
            for f in fpirs:
                result[f"tpir@fpir={f:g} ({name})"] = 100.0 * r["tpir"][f]["tpir"]
        result["probes"] = n_probes
        for name, (gal_t, _) in ident.galleries.items():
            result[f"gallery ({name})"] = int(gal_t.size)
            result[f"mated probes ({name})"] = per[name]["n_mated"]
        return result
