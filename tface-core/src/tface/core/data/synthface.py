"""SynthFace as a data source: procedural identities written as TFace shards + index + verification ``.bin``.

Generation is deterministic in the seed and the sizes, so the cache folder is named after them; a run
finding a complete folder (its ``synthface.json`` manifest is written last) reuses it. Rendering is
split over processes per identity, and each identity's images depend only on ``(seed, identity)``, so
the bytes do not depend on the number of workers.

``groups`` makes a designed demographic-style imbalance (synthetic looks, not races): training families get
the looks of :data:`~tface.core.data.synthrender.GROUP_LOOKS` in the given shares, and every look gets its own
held-out ``group-<NAME>_test.bin``, which the ``rfw`` protocol evaluates per group.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
from PIL import Image

from tface.core.config import ConfigError, field_problems, option, options
from tface.core.data import synthrender
from tface.core.data.binfile import write_bin
from tface.core.data.dataset import IndexedTFRecordDataset
from tface.core.data.pairdataset import PairTFRecordDataset
from tface.core.data.source import DatasetSource, Transform
from tface.core.data.writer import ShardWriter
from tface.core.fsutil import atomic_write_bytes, default_cache_root
from tface.core.outdir import OutputFolder

__all__ = ["SynthFaceSource", "SynthPaths", "default_cache_root", "write_pair_index"]

RECORD_NAME = "synthface"
MANIFEST = "synthface.json"


def _at_least(low: int, why: str = ""):
    def check(_inst: object, _attr: attrs.Attribute, value: int) -> None:
        if value < low:
            raise ValueError(f"must be >= {low}{f' ({why})' if why else ''}, got {value}")
    return check


def _within(low: float, high: float):
    def check(_inst: object, _attr: attrs.Attribute, value: float) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
    return check


def _even_pairs(_inst: object, _attr: attrs.Attribute, value: int) -> None:
    if value <= 0 or value % 2:
        raise ValueError(f"must be a positive even number (half genuine, half impostor pairs), got {value}")


def _shares(_inst: object, _attr: attrs.Attribute, value: list[float] | None) -> None:
    if value is None:
        return
    looks = ", ".join(look.name for look in synthrender.GROUP_LOOKS)
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= len(synthrender.GROUP_LOOKS):
        raise ValueError(f"must list 1 to {len(synthrender.GROUP_LOOKS)} training shares, one per look ({looks} "
                         f"in order), got {value!r}")
    for share in value:
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) or share <= 0:
            raise ValueError(f"every share must be a positive number (they are normalised by their sum), got {value!r}")


@attrs.frozen
class SynthPaths:
    root: Path
    index: Path
    bin: Path

    @property
    def pairs(self) -> Path:
        """The pair index of positive training pairs (``pairs = true``), beside the index."""
        return self.root / f"{RECORD_NAME}-pairs.txt"


#: The side the renderer draws at; smaller ``image_size`` values are area-downsampled from it.
RENDER_SIZE = 112


def _jpeg(img: np.ndarray, quality: int, size: int = RENDER_SIZE) -> bytes:
    """JPEG bytes of a rendered image, area-averaged (PIL's box filter) to ``size`` × ``size`` first.

    Not ``synthrender.render(size=...)``: that resamples the 2× face canvas bilinearly straight to the small
    side (aliased below 112) and adds full-strength pixel noise there, so its 64×64 crops carry about 25%
    more pixel-to-pixel variation than an area-averaged 112 render, which is what an aligner's small crop is.
    """
    im = Image.fromarray(img)
    if size != im.width:
        im = im.resize((size, size), Image.Resampling.BOX)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _render_identity(args: tuple[int, int, int, int, int, str, synthrender.GroupLook | None]) -> list[bytes]:
    seed, index, count, quality, size, nuisance, look = args
    identity = synthrender.train_identity(seed, index, look)
    level = synthrender.NUISANCE_LEVELS[nuisance]
    return [_jpeg(img, quality, size) for img in synthrender.train_images(seed, index, identity, count, level)]


def _render_pairs(args: tuple[int, int, int, float, int, int, int, int, str, synthrender.GroupLook | None]
                  ) -> list[tuple[bytes, bytes, bool]]:
    seed, num_identities, num_pairs, hard_fraction, start, stop, quality, size, nuisance, look = args
    level = synthrender.NUISANCE_LEVELS[nuisance]
    return [(_jpeg(a, quality, size), _jpeg(b, quality, size), same)
            for a, b, same in synthrender.verification_pairs(seed, num_identities, num_pairs, hard_fraction,
                                                             start=start, stop=stop, nuisance=level, look=look)]


def write_pair_index(index: Path, out: Path) -> Path:
    """A pair index (TFace's 8 columns) of positive pairs from a training index: each identity's photos in index
    order, every photo with the next one (the last with the first), so each photo is in two pairs."""
    from tface.core.data.index import read_index

    idx = read_index(index)
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(idx.labels.tolist()):
        by_label.setdefault(label, []).append(i)

    def row(i: int) -> str:
        name, shard = idx.keys[int(idx.file_id[i])]
        return f"{name}\t{shard}\t{int(idx.offsets[i])}\t{int(idx.labels[i])}"

    lines = [f"{row(rows[k])}\t{row(rows[(k + 1) % len(rows)])}\n"
             for label in sorted(by_label) for rows in [by_label[label]] if len(rows) >= 2 for k in range(len(rows))]
    return atomic_write_bytes(out, "".join(lines).encode())


@options
class SynthFaceSource(DatasetSource):
    """Procedural face identities; the default training data of the quickstart (no download)."""

    @classmethod
    def problems(cls, **options: object) -> list[tuple[str, str]]:
        """``(option, message)`` for every invalid option: one set of rules for recipes, CLI and API."""
        with attrs.validators.disabled():
            config = cls.Config(**options)
        return field_problems(config)

    def __init__(self, seed: int = option(0, _at_least(0, "it seeds numpy's SeedSequence")),
                 identities: int = option(400, _at_least(2, "a classifier needs at least 2 classes")),
                 images_per_identity: int = option(30, _at_least(1)),
                 val_identities: int = option(200, _at_least(2, "impostor pairs need two held-out identities")),
                 val_pairs: int = option(2000, _even_pairs), hard_fraction: float = option(0.5, _within(0, 1)),
                 cache_dir: Path | None = None, workers: int = option(0, _at_least(0, "0 = one per CPU core")),
                 jpeg_quality: int = option(95, _within(1, 100)),
                 # Side of the stored crops: 112 (the renderer's), or smaller, area-downsampled from 112. A
                 # 64×64 set trains a small CPU model about 3× faster per image (the quickstart's choice).
                 image_size: int = option(RENDER_SIZE, _within(16, RENDER_SIZE)),
                 # "hard": strong nuisance (turns, occluders, harsh light, blur, noise) on the same identities
                 nuisance: Literal["normal", "hard"] = "normal",
                 # train on positive pairs (two photos of one identity) instead of single photos: a pair branch
                 pairs: bool = False,
                 # training shares of the first len(groups) looks A, B, C, D (normalised by their sum), e.g.
                 # [0.55, 0.25, 0.12, 0.08]; each look also gets a held-out group-<NAME>_test.bin for ``rfw``
                 groups: list[float] | None = option(None, _shares)):
        problems = self.problems(seed=seed, identities=identities, images_per_identity=images_per_identity,
                                 val_identities=val_identities, val_pairs=val_pairs, hard_fraction=hard_fraction,
                                 workers=workers, jpeg_quality=jpeg_quality, image_size=image_size, groups=groups)
        if nuisance not in synthrender.NUISANCE_LEVELS:
            problems.append(("nuisance", f"must be one of {', '.join(synthrender.NUISANCE_LEVELS)}, got {nuisance!r}"))
        if problems:
            raise ConfigError([f"{key}: {message}" for key, message in problems])
        self.seed, self.identities, self.images_per_identity = seed, identities, images_per_identity
        self.val_identities, self.val_pairs, self.hard_fraction = val_identities, val_pairs, hard_fraction
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.workers = workers or os.cpu_count() or 1
        self.jpeg_quality = jpeg_quality
        self.image_size = image_size
        self.nuisance, self.pairs = nuisance, pairs
        # Normalised, and rounded so that [55, 25, 12, 8] and [0.55, 0.25, 0.12, 0.08] are one set (one folder).
        total = math.fsum(groups) if groups is not None else 0.0
        self.groups: list[float] | None = None if groups is None else [round(g / total, 12) for g in groups]
        self._family_groups: list[int] | None = None

    @property
    def looks(self) -> list[synthrender.GroupLook]:
        """The looks of this set (the first ``len(groups)`` of ``GROUP_LOOKS``); empty without ``groups``."""
        return list(synthrender.GROUP_LOOKS[:len(self.groups)]) if self.groups is not None else []

    def _look_of(self, label: int) -> synthrender.GroupLook | None:
        if self.groups is None:
            return None
        if self._family_groups is None:
            families = -(-self.identities // synthrender.FAMILY)
            self._family_groups = synthrender.group_of_families(families, self.groups)
        return self.looks[self._family_groups[label // synthrender.FAMILY]]

    def group_of_label(self, label: int) -> str:
        """The look name (``"A"`` ...) of training label ``label``: siblings share their family's look."""
        if self.groups is None:
            raise ValueError("group_of_label: this SynthFace set has no groups (set the `groups` option)")
        if not 0 <= label < self.identities:
            raise ValueError(f"group_of_label: label {label} is not a training label (0 .. {self.identities - 1})")
        look = self._look_of(label)
        assert look is not None
        return look.name

    def group_counts(self) -> dict[str, int]:
        """Training identities per look, in look order (a look can get none when ``identities`` is small)."""
        counts = {look.name: 0 for look in self.looks}
        for label in range(self.identities if self.groups is not None else 0):
            counts[self.group_of_label(label)] += 1
        return counts

    @property
    def key(self) -> str:
        """Folder name: every input of the bytes, plus the renderer version."""
        return (f"v{synthrender.VERSION}-s{self.seed}-i{self.identities}x{self.images_per_identity}"
                f"-v{self.val_identities}p{self.val_pairs}h{self.hard_fraction:g}-q{self.jpeg_quality}"
                + (f"-r{self.image_size}" if self.image_size != RENDER_SIZE else "")
                + (f"-n{self.nuisance}" if self.nuisance != "normal" else "")
                # percent shares joined by "_" (never part of a number), e.g. -g55_25_12_8
                + ("-g" + "_".join(f"{100 * g:g}" for g in self.groups) if self.groups is not None else ""))

    def folder(self) -> Path:
        return (self.cache_dir if self.cache_dir is not None else default_cache_root() / "synthface") / self.key

    def _manifest(self) -> dict:
        return {"generator": "synthface", "version": synthrender.VERSION, "seed": self.seed,
                "identities": self.identities, "images_per_identity": self.images_per_identity,
                "val_identities": self.val_identities, "val_pairs": self.val_pairs,
                "hard_fraction": self.hard_fraction, "jpeg_quality": self.jpeg_quality,
                "image_size": self.image_size,
                **({"nuisance": self.nuisance} if self.nuisance != "normal" else {}),
                **({"groups": dict(zip([look.name for look in self.looks], self.groups)),
                    "group_identities": self.group_counts()} if self.groups is not None else {})}

    def paths(self, root: Path | None = None) -> SynthPaths:
        root = root or self.folder()
        return SynthPaths(root, root / f"{RECORD_NAME}.txt", root / f"{RECORD_NAME}-val.bin")

    def group_bins(self, root: Path | None = None) -> dict[str, Path]:
        """Look name -> its held-out ``group-<NAME>_test.bin`` (the ``rfw`` naming); empty without ``groups``."""
        root = root or self.folder()
        return {look.name: root / f"group-{look.name}_test.bin" for look in self.looks}

    def is_complete(self, root: Path | None = None) -> bool:
        manifest = (root or self.folder()) / MANIFEST
        try:
            return json.loads(manifest.read_text()) == self._manifest()
        except (OSError, ValueError):
            return False

    def _pool(self):
        if self.workers <= 1:
            return None
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        return mp.get_context(method).Pool(self.workers)

    def _map(self, pool, fn, jobs: list) -> Iterator:
        if pool is None:
            return map(fn, jobs)
        return pool.imap(fn, jobs, chunksize=max(1, len(jobs) // (8 * self.workers)))

    def generate(self, root: Path | None = None, *, overwrite: bool | None = None) -> SynthPaths:
        """Write shards, index, ``.bin`` and manifest into ``root`` (default: the cache folder).

        A folder that already holds this exact set is reused. Otherwise output is assembled in a
        temporary sibling and moved into place (:class:`~tface.core.outdir.OutputFolder`), so an
        interrupted or concurrent generation never leaves a half-written set behind. A non-empty
        ``root`` is refused (:class:`~tface.core.outdir.OutputExistsError`) unless ``overwrite``, which
        replaces only the files tface wrote there; the cache folder (``root=None``) is tface's own,
        so ``overwrite`` defaults to true for it.
        """
        final = Path(root) if root is not None else self.folder()
        if self.is_complete(final):
            return self.paths(final)
        output = OutputFolder(final, overwrite=root is None if overwrite is None else overwrite, last=[MANIFEST])
        with output:
            pool = self._pool()
            try:
                tmp = output.path
                with ShardWriter(tmp, RECORD_NAME) as writer:
                    jobs = [(self.seed, i, self.images_per_identity, self.jpeg_quality, self.image_size,
                             self.nuisance, self._look_of(i)) for i in range(self.identities)]
                    for label, images in enumerate(self._map(pool, _render_identity, jobs)):
                        for data in images:
                            writer.add(data, label)
                # the ungrouped held-out set, then one per look: one job list, so every worker stays busy
                sets: list[synthrender.GroupLook | None] = [None, *self.looks]
                chunk = max(2, len(sets) * self.val_pairs // (4 * self.workers))
                jobs = [(self.seed, self.val_identities, self.val_pairs, self.hard_fraction, s,
                         min(s + chunk, self.val_pairs), self.jpeg_quality, self.image_size, self.nuisance, look)
                        for look in sets for s in range(0, self.val_pairs, chunk)]
                pairs: dict[str | None, list[bytes]] = {None if look is None else look.name: [] for look in sets}
                issame: dict[str | None, list[bool]] = {name: [] for name in pairs}
                for job, part in zip(jobs, self._map(pool, _render_pairs, jobs)):
                    name = None if job[-1] is None else job[-1].name
                    for a, b, same in part:
                        pairs[name] += [a, b]
                        issame[name].append(same)
            finally:
                if pool is not None:
                    pool.close()
                    pool.join()
            write_bin(self.paths(tmp).bin, pairs[None], issame[None])
            for name, path in self.group_bins(tmp).items():
                write_bin(path, pairs[name], issame[name])
            write_pair_index(self.paths(tmp).index, self.paths(tmp).pairs)
            atomic_write_bytes(tmp / MANIFEST, (json.dumps(self._manifest(), indent=2) + "\n").encode())
            if self.is_complete(final):
                output.discard()  # another process finished first; its bytes are identical
        return self.paths(final)

    def train_dataset(self, transform: Transform | None = None) -> IndexedTFRecordDataset | PairTFRecordDataset:
        paths = self.generate()
        if not self.pairs:
            return IndexedTFRecordDataset(paths.index, paths.root, transform=transform)
        if not paths.pairs.is_file():  # a set generated before pair indexes existed: derive it from its index
            write_pair_index(paths.index, paths.pairs)
        return PairTFRecordDataset(paths.pairs, paths.root, transform=transform)

    def eval_sets(self) -> dict[str, dict[str, Path]]:
        """The ungrouped held-out set for ``verification``; with ``groups``, also each look's set for ``rfw``."""
        name = "synthface-val" if self.nuisance == "normal" else f"synthface-{self.nuisance}-val"
        paths = self.generate()
        sets: dict[str, dict[str, Path]] = {"verification": {name: paths.bin}}
        if self.groups is not None:
            sets["rfw"] = self.group_bins(paths.root)
        return sets
