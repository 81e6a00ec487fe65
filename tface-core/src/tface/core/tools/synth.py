"""``tface data synth``: generate a SynthFace data set (shards + index + verification ``.bin``)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from tface.core.tools.common import summary


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Everything is derived from this seed.")
@click.option("--identities", default=None, type=int, help="Training identities.")
@click.option("--images-per-identity", default=None, type=int)
@click.option("--val-identities", default=None, type=int, help="Held-out identities for the .bin.")
@click.option("--val-pairs", default=None, type=int, help="Verification pairs (half genuine).")
@click.option("--workers", default=0, show_default=True, help="Processes (0 = one per CPU core).")
def synth_cmd(out_dir: Path, seed: int, identities: int | None, images_per_identity: int | None,
              val_identities: int | None, val_pairs: int | None, workers: int) -> None:
    """Generate a SynthFace data set: TFRecord shards + index, and a verification .bin."""
    from tface.core.data.synthface import SynthFaceSource

    opts = {k: v for k, v in {"identities": identities, "images_per_identity": images_per_identity,
                              "val_identities": val_identities, "val_pairs": val_pairs}.items() if v is not None}
    source = SynthFaceSource(seed=seed, cache_dir=out_dir, workers=workers, **opts)
    t0 = time.perf_counter()
    paths = source.generate(out_dir)
    summary(f"wrote {paths.index} and {paths.bin} in {time.perf_counter() - t0:.1f}s", [
        ("identities", source.identities),
        ("images", source.identities * source.images_per_identity),
        ("verification pairs", source.val_pairs),
    ])
