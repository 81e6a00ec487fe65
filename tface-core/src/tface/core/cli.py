"""The ``tface`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from tface.core import __version__, registry
from tface.core.config import ConfigError

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Turn known user errors into one clear line and exit status 2 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ConfigError, registry.RegistryError) as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="tface")
def cli() -> None:
    """tface: face-recognition training and evaluation with plugins."""


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(registry.KINDS))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--no-check", is_flag=True, help="Read metadata only; do not import plugins to check them.")
def list_cmd(kind: str | None, as_json: bool, no_check: bool) -> None:
    """List registered components (all kinds, or one KIND)."""
    rows = []
    for e in registry.entries(kind):
        rows.append({
            "kind": e.kind,
            "name": e.name,
            "aliases": [e.qualified],
            "distribution": e.distribution,
            "version": e.version,
            "target": e.target,
            "status": "unchecked" if no_check else registry.status(e),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no components registered" + (f" for {kind}" if kind else ""))
        return
    cols = ["kind", "name", "distribution", "version", "status"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    click.echo("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())


@cli.command("run")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value with a TOML value (repeatable), e.g. --set head.m=0.4")
@click.option("--dry-run", is_flag=True, help="Build every component, print the resolved recipe, and exit.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (default: the recipe's output_dir, else runs/<recipe>-<time>).")
def run_cmd(recipe_path: Path, overrides: tuple[str, ...], dry_run: bool, output_dir: Path | None) -> None:
    """Train, checkpoint, evaluate and report, as RECIPE says."""
    from tface.core import recipe as recipe_mod
    from tface.core.train.trainer import Trainer, TrainingError, build_components

    recipe = recipe_mod.load(recipe_path, overrides)
    if dry_run:
        parts = build_components(recipe)
        click.echo(recipe_mod.dumps(recipe).rstrip())
        click.echo("")
        click.echo("# components")
        for line in parts.describe():
            click.echo(f"# {line}")
        return
    run_dir = output_dir or recipe.output_dir or Path("runs") / f"{recipe_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        Trainer(recipe, run_dir, echo=click.echo).run()
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.group("data")
def data_cmd() -> None:
    """Data tools."""


@data_cmd.command("synth")
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
    click.echo(f"wrote {paths.index} and {paths.bin} in {time.perf_counter() - t0:.1f}s")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="tface")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
