"""``tface data synth``: generate a SynthFace data set (shards + index + verification ``.bin``)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from tface.core.tools.common import summary


def _shares(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    """``0.55,0.25,0.12,0.08`` -> floats; their range is SynthFace's to check (one message for recipe and CLI)."""
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 0.55,0.25,0.12,0.08, got {value!r}",
                                 ctx, param) from None


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Everything is derived from this seed.")
@click.option("--identities", default=None, type=int, help="Training identities.")
@click.option("--images-per-identity", default=None, type=int)
@click.option("--val-identities", default=None, type=int, help="Held-out identities for the .bin.")
@click.option("--val-pairs", default=None, type=int, help="Verification pairs (half genuine).")
@click.option("--image-size", default=None, type=int,
              help="Side of the stored crops (default 112; smaller sides are area-downsampled from 112).")
@click.option("--groups", default=None, callback=_shares, metavar="SHARES",
              help="Training shares of the looks A,B,C,D (1 to 4, comma-separated, normalised), e.g. "
                   "0.55,0.25,0.12,0.08; each look also gets a held-out group-<NAME>_test.bin.")
@click.option("--hard-fraction", default=None, type=float,
              help="Share of the impostor pairs that are look-alike siblings (default 0.5).")
@click.option("--nuisance", default=None, type=click.Choice(["normal", "hard"]),
              help="hard: the same identities with strong nuisance (turns, occluders, harsh light, blur, noise).")
@click.option("--workers", default=0, show_default=True, type=int, help="Processes (0 = one per CPU core).")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty OUT_DIR: replaces the files tface wrote there, keeps all others.")
def synth_cmd(out_dir: Path, seed: int, identities: int | None, images_per_identity: int | None,
              val_identities: int | None, val_pairs: int | None, image_size: int | None,
              groups: list[float] | None, hard_fraction: float | None, nuisance: str | None, workers: int,
              overwrite: bool) -> None:
    """Generate a SynthFace data set: TFRecord shards + index, and a verification .bin.

    OUT_DIR must be new or empty (or already hold this very set, which is then reused); --overwrite
    lets it hold other files, and deletes only those listed in its tface-manifest.txt.
    """
    from tface.core.data.synthface import SynthFaceSource
    from tface.core.outdir import OutputExistsError

    opts = {k: v for k, v in {"identities": identities, "images_per_identity": images_per_identity,
                              "val_identities": val_identities, "val_pairs": val_pairs,
                              "image_size": image_size, "groups": groups,
                              "hard_fraction": hard_fraction}.items() if v is not None}
    for key, message in SynthFaceSource.problems(seed=seed, workers=workers, **opts):
        raise click.BadParameter(message, param_hint=f"'--{key.replace('_', '-')}'")
    source = SynthFaceSource(seed=seed, cache_dir=out_dir, workers=workers, nuisance=nuisance or "normal", **opts)
    t0 = time.perf_counter()
    reused = source.is_complete(out_dir)
    try:
        paths = source.generate(out_dir, overwrite=overwrite)
    except OutputExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or out_dir}: {exc.strerror or exc}") from None
    verb = "found a complete set: reused" if reused else "wrote"
    summary(f"{verb} {paths.index} and {paths.bin} in {time.perf_counter() - t0:.1f}s", [
        ("identities", source.identities),
        ("images", source.identities * source.images_per_identity),
        ("verification pairs", source.val_pairs),
        *[(f"group {name} identities", count) for name, count in source.group_counts().items()],
        *([("pairs per group", source.val_pairs)] if source.groups is not None else []),
    ])
