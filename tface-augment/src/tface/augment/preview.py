"""The grid behind ``tface augment preview``: originals and augmented copies of a recipe's ``[[augment]]``.

Layout: ``rows x (1 + copies)`` tiles of ``size x size`` pixels, a :data:`PAD`-pixel white gap around and
between them, so the PNG is ``(1 + copies) * (size + PAD) + PAD`` wide and ``rows * (size + PAD) + PAD``
high; column 0 holds the images as read (after the centre-crop/resize to ``size``), columns 1.. the
copies. Copy ``k`` of row ``r`` is drawn with torch's generator seeded from ``(seed, r, k)`` (inside
``torch.random.fork_rng``, so the caller's generator is left alone): the same arguments give the same PNG,
and one copy does not change when ``--copies`` or ``--count`` grow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from tface.core import recipe as recipe_mod
from tface.core import registry
from tface.core.config import ConfigError
from tface.core.data.image import IMAGE_EXTENSIONS, ImageDecodeError, decode_rgb
from tface.core.data.sample import FaceSample
from tface.core.fsutil import atomic_write
from tface.core.train.components import Compose

__all__ = ["PAD", "BACKGROUND", "COLOURS", "PreviewError", "Preview", "copy_seed", "folder_images",
           "synthface_images", "grid", "preview"]

#: Gap in pixels around and between the tiles.
PAD = 2
#: Colour of the gaps.
BACKGROUND = (255, 255, 255)
#: Dot colours of the landmarks: left eye, right eye, nose tip, left and right mouth corner.
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
#: Smallest dot radius in pixels (a 3 x 3 dot; :func:`dot_radius`).
DOT = 1.5
#: The word for procedurally rendered faces in ``--images``.
SYNTHFACE = "synthface"


class PreviewError(RuntimeError):
    """A problem with the inputs or the output, as one line naming the file."""


@attrs.frozen
class Preview:
    path: Path
    rows: int
    columns: int
    width: int
    height: int
    #: the augmenters, one line each (``augment[i] name: repr``)
    pipeline: list[str]


def copy_seed(seed: int, row: int, copy: int) -> int:
    """The torch seed of copy ``copy`` (1-based) of row ``row``: one SeedSequence draw, below 2**63."""
    state = np.random.SeedSequence([seed, row, copy]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def fit(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop uint8 ``[3, H, W]`` to a square and resize it to ``size`` (unchanged when already so)."""
    h, w = img.shape[-2:]
    side = min(h, w)
    if (h, w) != (side, side):
        img = F.center_crop(img, [side, side])
    if side != size:
        img = F.resize(img, [size, size], antialias=True)
    return img.contiguous()


def folder_images(folder: Path, count: int, size: int) -> list[torch.Tensor]:
    """The first ``count`` image files under ``folder`` (by path), decoded with tface's decoder and fitted."""
    if not folder.exists():
        raise PreviewError(f"{folder}: no such folder (--images takes a folder or 'synthface')")
    if not folder.is_dir():
        raise PreviewError(f"{folder}: not a folder (--images takes a folder or 'synthface')")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise PreviewError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    out = []
    for path in files[:count]:
        try:
            img = decode_rgb(path.read_bytes())
        except ImageDecodeError as exc:
            raise PreviewError(f"{path}: cannot decode image: {exc}") from None
        except OSError as exc:
            raise PreviewError(f"{path}: cannot read image: {exc.strerror or exc}") from None
        out.append(fit(img, size))
    return out


def synthface_images(count: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` SynthFace photos, as SynthFace(seed) renders its training images: the first photo of every
    other training identity (one per family, so no two rows show look-alike siblings)."""
    from tface.core.data import synthrender as sr

    out = []
    for i in range(count):
        index = i * sr.FAMILY
        img = sr.render(sr.train_identity(seed, index), sr.image_rng(seed, "train", index, 0), size)
        out.append(torch.tensor(img).permute(2, 0, 1).contiguous())
    return out


def dot_radius(size: int) -> float:
    """Dot radius for ``size``-pixel tiles: 1.5 px (a 3 x 3 dot) up to 112 px, growing with larger tiles."""
    return max(DOT, size / 75)


def _tile(img: torch.Tensor, landmarks: torch.Tensor | None) -> Image.Image:
    """The tile of ``img``; with ``landmarks``, every pixel whose centre lies within :func:`dot_radius` of a
    landmark (OpenCV's pixel-centre convention, as the augmenters use) takes that landmark's colour."""
    px = img.permute(1, 2, 0).numpy()
    if landmarks is not None:
        px = px.copy()
        h, w = px.shape[:2]
        r = dot_radius(w)
        ys, xs = np.mgrid[0:h, 0:w]
        for (x, y), colour in zip(landmarks.tolist(), COLOURS):
            px[(xs - x) ** 2 + (ys - y) ** 2 <= r * r] = colour
    return Image.fromarray(np.ascontiguousarray(px), "RGB")


def grid(images: Sequence[torch.Tensor], compose: Compose, copies: int, seed: int,
         landmarks: bool = False) -> Image.Image:
    """The preview grid (see the module docstring) of ``images`` (uint8 ``[3, S, S]``, all one size)."""
    size = images[0].shape[-1]
    cols = 1 + copies
    canvas = Image.new("RGB", (cols * (size + PAD) + PAD, len(images) * (size + PAD) + PAD), BACKGROUND)
    for r, img in enumerate(images):
        original = FaceSample.aligned(img)
        tiles = [_tile(img, original.landmarks if landmarks else None)]
        for k in range(1, cols):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(copy_seed(seed, r, k))
                sample = compose.sample(img.clone(), original.landmarks.clone())
            tiles.append(_tile(sample.image, sample.landmarks if landmarks else None))
        for c, tile in enumerate(tiles):
            canvas.paste(tile, (PAD + c * (size + PAD), PAD + r * (size + PAD)))
    return canvas


def palette(canvas: Image.Image, colours: int, keep: Sequence[tuple[int, int, int]] = ()) -> Image.Image:
    """``canvas`` as a palette image of at most ``colours`` colours (median cut); pixels of exactly a colour in
    ``keep`` (the landmark dots) keep it, so the dots stay pure."""
    keep = list(keep)[: colours - 1]
    px = np.asarray(canvas)
    masks = [(px == colour).all(axis=2) for colour in keep]
    quantized = canvas.quantize(colours - len(keep), method=Image.Quantize.MEDIANCUT)
    if not keep:
        return quantized
    base = len(quantized.getpalette() or []) // 3
    indices = np.asarray(quantized).copy()
    for i, mask in enumerate(masks):
        indices[mask] = base + i
    out = Image.fromarray(indices, "P")
    out.putpalette([*quantized.getpalette()[: 3 * base], *(v for colour in keep for v in colour)])
    return out


def preview(recipe_path: Path, images: str, out: Path, *, count: int = 8, copies: int = 5, seed: int = 0,
            size: int = 112, landmarks: bool = False, overrides: Sequence[str] = (),
            colours: int | None = None, overwrite: bool = False) -> Preview:
    """Load the recipe, build its augmenters, render the grid and write it to ``out`` atomically."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise PreviewError(f"{out}: exists; pass --overwrite to replace it")
    try:
        recipe = recipe_mod.load(recipe_path, overrides)
        if not recipe.augment:
            raise PreviewError(f"{recipe_path}: the recipe has no [[augment]] tables, so there is nothing to "
                               "preview (training would use the images as they are)")
        # the same registry build as training's Components (key ``augment[i]`` in errors)
        steps = [c.build(f"augment[{i}]") for i, c in enumerate(recipe.augment)]
    except (ConfigError, registry.RegistryError) as exc:
        raise PreviewError(str(exc)) from None
    compose = Compose(steps)
    if images == SYNTHFACE:
        originals = synthface_images(count, size)
    else:
        originals = folder_images(Path(images), count, size)
    canvas = grid(originals, compose, copies, seed, landmarks)
    if colours is not None:
        canvas = palette(canvas, colours, keep=COLOURS if landmarks else ())
    try:
        atomic_write(out, lambda f: canvas.save(f, format="PNG", optimize=True))
    except OSError as exc:
        raise PreviewError(f"{out}: cannot write: {exc.strerror or exc}") from None
    pipeline = [f"augment[{i}] {c.name}: {s!r}" for i, (c, s) in enumerate(zip(recipe.augment, steps))]
    return Preview(out, len(originals), 1 + copies, canvas.width, canvas.height, pipeline)
