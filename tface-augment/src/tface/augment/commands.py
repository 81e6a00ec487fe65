"""``tface augment preview``, added to the core CLI through its command hook (``tface.plugins`` entry point).

Kept import-light: torch, Pillow and the augmenters load only when the command runs (``tface --help`` and
``tface list`` import no torch).
"""

from __future__ import annotations

from pathlib import Path

import click

from tface.core.hooks import hookimpl

__all__ = ["tface_register_commands", "augment_group", "preview_cmd"]


@click.group("augment")
def augment_group() -> None:
    """Look at a recipe's training augmentation (tface-augment)."""


@click.command("preview")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--images", "images", default="synthface", show_default=True, metavar="DIR|synthface",
              help="A folder of face crops (any image files, searched recursively, sorted by path), or "
                   "'synthface' for procedurally rendered faces (no files needed; ./synthface is a folder).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The PNG grid to write.")
@click.option("--count", "-n", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Rows: how many images to show.")
@click.option("--copies", "-k", default=5, show_default=True, type=click.IntRange(1, 64),
              help="Augmented copies per image (columns after the original).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1),
              help="Seeds every copy's draw (each copy gets its own seed derived from it).")
@click.option("--size", default=112, show_default=True, type=click.IntRange(8, 1024),
              help="Tile side in pixels: images are centre-cropped to a square and resized to it.")
@click.option("--landmarks/--no-landmarks", default=False, show_default=True,
              help="Draw the five landmarks (moved along by the geometric ops) as coloured dots.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value with a TOML value (repeatable), as `tface run --set`, e.g. "
                   "--set 'augment=[{name=\"mask\", p=1.0}]'.")
@click.option("--colours", "colours", type=click.IntRange(2, 256), default=None, metavar="N",
              help="Write a palette PNG of at most N colours (a third of the size at 256, for docs); the "
                   "pixels are then approximate. Default: exact RGB.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def preview_cmd(recipe: Path, images: str, out: Path, count: int, copies: int, seed: int, size: int,
                landmarks: bool, overrides: tuple[str, ...], colours: int | None, overwrite: bool) -> None:
    """Write a PNG grid of RECIPE's [[augment]] pipeline: per row the original, then COPIES augmented copies.

    The augmenters are built from the recipe through the registry and applied with the same Compose as
    training; geometric ops move the landmarks along, which --landmarks draws (left eye red, right eye
    green, nose blue, left mouth corner yellow, right mouth corner magenta). Tiles are SIZE px with a
    2 px white gap around and between them.
    """
    from tface.augment import preview

    try:
        result = preview.preview(recipe, images, out, count=count, copies=copies, seed=seed, size=size,
                                 landmarks=landmarks, overrides=overrides, colours=colours,
                                 overwrite=overwrite)
    except preview.PreviewError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {result.path}: {result.rows} rows x {result.columns} columns "
               f"(original + {copies} augmented), {size} px tiles, {result.width}x{result.height} px")
    for line in result.pipeline:
        click.echo(f"  {line}", err=True)


@hookimpl
def tface_register_commands(groups):
    root = groups["tface"]
    existing = root.commands.get("augment")
    group = existing if isinstance(existing, click.Group) else augment_group  # another plugin's group: join it
    group.add_command(preview_cmd)  # every time: the CLI registers commands again when plugins change
    if group is augment_group:
        root.add_command(augment_group)
