"""The library behind ``tface quality score`` and ``tface quality labels`` (importable without the CLI).

``load_quality_model`` finds a quality model (backbone + head) from a quality_regression run folder or from a
backbone name and weights files; ``score_files`` scores image files with it; ``pseudo_label_files`` runs
SDD-FIQA's first stage (recogniser features → :func:`~tface.quality.pseudo.pseudo_labels`) over an image folder or
list and writes TFace's ``path<TAB>score`` file, which the ``quality_list`` source reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tface.core import recipe as recipe_mod
from tface.core import registry
from tface.core.backbone import backbone_info
from tface.core.config import validate_options
from tface.core.data.image import ImageDecodeError, decode_rgb
from tface.core.data.imagelist import ImageList, read_image_list, scan_folder
from tface.core.fsutil import atomic_write_bytes
from tface.core.weights import WeightsError, load_into, read_file
from tface.quality.head import QualityHead, embeddings, load_quality_head, quality_scores
from tface.quality.pseudo import pseudo_labels

__all__ = ["QualityToolError", "load_backbone", "load_quality_model", "pseudo_label_files", "read_images",
           "score_files"]

METHOD = "quality_regression"


class QualityToolError(RuntimeError):
    """A problem the user can fix (a missing file, a run of another method, a bad image); one clear line."""


def load_backbone(name: str, options: dict[str, Any], checkpoint: str | os.PathLike | None,
                  what: str = "backbone") -> nn.Module:
    """A registered backbone built from ``options`` (checked by its ``Config``) with ``checkpoint``'s weights
    (strictly, through core's weights reader: a run's ``last.pt`` gives its ``backbone`` entry)."""
    kwargs = validate_options(registry.get("backbones", name), dict(options), what)
    model = registry.get("backbones", name)(**kwargs)
    if checkpoint is not None:
        try:
            load_into(model, checkpoint, what=f"{what} {name!r}")
        except WeightsError as exc:
            raise QualityToolError(str(exc)) from exc
    return model


def _feature_channels(model: nn.Module, name: str) -> int:
    channels = backbone_info(model, name).feature_channels
    if channels is None:
        raise QualityToolError(f"backbone {name!r} offers no feature map (feature_channels), which a quality head "
                               "reads; every tface-backbones model offers one")
    return channels


def load_quality_model(*, run_dir: str | os.PathLike | None = None, backbone: str | None = None,
                       backbone_options: dict[str, Any] | None = None, checkpoint: str | os.PathLike | None = None,
                       head: str | os.PathLike | None = None) -> tuple[nn.Module, QualityHead]:
    """``(backbone, head)`` with their trained weights, in evaluation mode.

    ``run_dir``: a quality_regression run folder: its ``recipe.toml`` names the backbone, its
    ``checkpoints/last.pt`` (or ``checkpoint``) holds both models (the EMA weights of the backbone when the run
    kept them, as ``backbone.pt``). Otherwise ``backbone`` (a registered name, with ``backbone_options``) and
    ``checkpoint`` (its weights; a run checkpoint works too), and ``head`` (default: ``checkpoint`` itself, which
    then must hold the head: a run checkpoint or a TFace SDD-FIQA file).
    """
    if run_dir is not None:
        run = Path(run_dir)
        recipe_file = run / "recipe.toml"
        if not recipe_file.is_file():
            what = "no recipe.toml: is it a tface run folder?" if run.is_dir() else "does not exist"
            raise QualityToolError(f"--run {run}: {what}")
        recipe = recipe_mod.load(recipe_file)
        if recipe.method.name != METHOD:
            raise QualityToolError(f"--run {run}: a {recipe.method.name!r} run, not a {METHOD} one (its model has no "
                                   "quality head)")
        ckpt = Path(checkpoint) if checkpoint is not None else run / "checkpoints" / "last.pt"
        from tface.core.train.state import backbone_weights

        try:
            state = read_file(ckpt)
        except WeightsError as exc:
            raise QualityToolError(str(exc)) from exc
        if not isinstance(state, dict) or "backbone" not in state:
            raise QualityToolError(f"{ckpt}: not a tface run checkpoint (no backbone entry)")
        model = recipe.backbone.build("backbone")
        try:
            load_into(model, backbone_weights(state), what=f"backbone {recipe.backbone.name!r} of {ckpt}")
            quality = load_quality_head(ckpt, _feature_channels(model, recipe.backbone.name),
                                        float(recipe.method.options.get("dropout", 0.5)))
        except WeightsError as exc:
            raise QualityToolError(str(exc)) from exc
        return model.eval(), quality.eval()
    if backbone is None or checkpoint is None:
        raise QualityToolError("name the quality model: --run RUN_DIR, or --backbone NAME with --checkpoint FILE")
    for flag, path in (("--checkpoint", checkpoint), ("--head", head)):
        if path is not None and not Path(path).is_file():
            raise QualityToolError(f"{flag} {path}: {'is not a file' if Path(path).exists() else 'no such file'}")
    model = load_backbone(backbone, backbone_options or {}, checkpoint)
    try:
        quality = load_quality_head(head if head is not None else checkpoint, _feature_channels(model, backbone))
    except WeightsError as exc:
        hint = "" if head is not None else " (give the head's file with --head)"
        raise QualityToolError(f"{exc}{hint}") from exc
    return model.eval(), quality.eval()


def read_images(paths: Sequence[str | os.PathLike], batch_size: int) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """``(names, uint8 images)`` per batch of ``paths``, decoded by core's decoder; a file that cannot be read or
    decoded raises :class:`QualityToolError` naming it."""
    for lo in range(0, len(paths), batch_size):
        names, crops = [], []
        for p in paths[lo : lo + batch_size]:
            try:
                data = Path(p).read_bytes()
            except OSError as exc:
                raise QualityToolError(f"{p}: cannot read: {exc.strerror or exc}") from None
            try:
                crops.append(decode_rgb(data))
            except ImageDecodeError as exc:
                raise QualityToolError(f"{p}: cannot decode image: {exc}") from None
            names.append(str(p))
        yield names, crops


def score_files(model: nn.Module, head: QualityHead, paths: Sequence[str | os.PathLike], *,
                device: torch.device | str = "cpu", batch_size: int = 64) -> Iterator[tuple[str, float]]:
    """``(path, quality)`` per image file, in order, a batch at a time (crops fitted to the model's input)."""
    model.to(device)
    head.to(device)
    for names, crops in read_images(paths, batch_size):
        yield from zip(names, quality_scores(model, head, crops, device=device, batch_size=batch_size).tolist())


def _image_source(source: str | os.PathLike) -> ImageList:
    """An identity folder (``root/<identity>/<image>``) or an image list (``path<TAB>label``, or paths whose
    parent folder names the identity), read by core's readers."""
    from tface.core.data.imagelist import ImageSourceError
    from tface.core.data.index import IndexFormatError

    src = Path(source)
    try:
        return scan_folder(src) if src.is_dir() else read_image_list(src)
    except (ImageSourceError, IndexFormatError) as exc:
        raise QualityToolError(str(exc)) from None


def pseudo_label_files(source: str | os.PathLike, recognizer: nn.Module, out: str | os.PathLike, *,
                       k: int = 24, rounds: int = 12, seed: int = 0, flip: bool = False,
                       device: torch.device | str = "cpu", batch_size: int = 64, overwrite: bool = False,
                       echo: Callable[[str], None] = lambda message: None) -> tuple[Path, torch.Tensor]:
    """SDD-FIQA pseudo labels of every image of ``source``, written to ``out`` as ``path<TAB>score`` lines.

    Paths are written absolute (``quality_list`` then needs no ``root``), scores with 6 decimals, in the
    source's order. ``out`` appears atomically; an existing one is refused unless ``overwrite`` (checked before
    any image is read). Returns the file and the float64 labels.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise QualityToolError(f"--out {out} exists; pass --overwrite to replace it")
    images = _image_source(source)
    files = [images.file(i).resolve() for i in range(len(images))]
    echo(f"{len(files)} images of {images.num_classes} identities from {images.source}; embedding ...")
    recognizer.to(device)
    feats = []
    for _, crops in read_images(files, batch_size):
        feats.append(embeddings(recognizer, crops, device=device, batch_size=batch_size, flip=flip))
    try:
        labels = pseudo_labels(torch.cat(feats), torch.as_tensor(images.labels), k=k, rounds=rounds, seed=seed)
    except ValueError as exc:
        raise QualityToolError(f"{images.source}: {exc}") from None
    text = "".join(f"{f}\t{float(s):.6f}\n" for f, s in zip(files, labels.tolist()))
    return atomic_write_bytes(out, text.encode("utf-8")), labels
