"""``tface data bin``: build a verification ``.bin`` from LFW ``pairs.txt`` or a plain pair list."""

from __future__ import annotations

from pathlib import Path

import click

from tface.core.tools.common import progress, summary


@click.command("bin")
@click.argument("pairs_path", metavar="PAIRS", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", metavar="OUT.bin", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of the images (LFW: ROOT/name/name_0001.jpg).")
@click.option("--format", "fmt", type=click.Choice(["lfw", "list"]), default="lfw", show_default=True,
              help="lfw: pairs.txt ('name i j' / 'name1 i name2 j'); list: 'path1 path2 issame' lines.")
@click.option("--ext", default="jpg", show_default=True, help="Image file extension (lfw format).")
@click.option("--image-size", default=112, show_default=True, type=click.IntRange(min=1),
              help="Every image must be this size, square (aligned crops).")
def bin_cmd(pairs_path: Path, out: Path, root: Path, fmt: str, ext: str, image_size: int) -> None:
    """Pack the images of PAIRS into OUT.bin, the insightface/TFace verification format.

    Every image must exist, decode and be IMAGE-SIZE square; its original file bytes are stored.
    Pair k is images 2k and 2k+1 of the file, then the list of same-identity flags.
    """
    from tface.core.data.binfile import write_bin
    from tface.core.data.pairs import PairsError, load_pair_images, read_lfw_pairs, read_pair_list

    try:
        if fmt == "lfw":
            pairs = read_lfw_pairs(pairs_path, root, ext.lstrip("."))
        else:
            pairs = read_pair_list(pairs_path, root)
        images, flags = load_pair_images(
            pairs, pairs_path, image_size=image_size,
            progress=lambda items, length: progress(items, length=length, label="reading images"))
    except PairsError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        write_bin(out, images, flags)
    except OSError as exc:
        raise click.ClickException(f"{out}: cannot write: {exc.strerror or exc}") from exc
    same = sum(flags)
    summary(f"wrote {out}", [
        ("pairs", len(flags)),
        ("same / different", f"{same} / {len(flags) - same}"),
        ("distinct images", len({p for pair in pairs for p in (pair.first, pair.second)})),
        ("bytes", out.stat().st_size),
    ])
