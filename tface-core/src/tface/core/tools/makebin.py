"""``tface data bin``: build a verification ``.bin`` from LFW ``pairs.txt`` or a plain pair list.

With ``--landmarks`` the images are raw photos, aligned to 112×112 ArcFace crops on the way in.
"""

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
              help="Every image must be this size, square (aligned crops); with --landmarks, the crop size.")
@click.option("--landmarks", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TFace pts_list (path then 5 or 68 x y pairs, optional score): align raw photos, store JPEG crops.")
def bin_cmd(pairs_path: Path, out: Path, root: Path, fmt: str, ext: str, image_size: int,
            landmarks: Path | None) -> None:
    """Pack the images of PAIRS into OUT.bin, the insightface/TFace verification format.

    Every image must exist, decode and be IMAGE-SIZE square; its original file bytes are stored. With
    --landmarks every image is instead aligned to the ArcFace template (as `tface data pack` does) and
    stored as a JPEG crop; an image without landmarks is an error. Pair k is images 2k and 2k+1 of the
    file, then the list of same-identity flags.
    """
    from tface.core.data.align import read_landmark_list
    from tface.core.data.binfile import write_bin
    from tface.core.data.index import IndexFormatError
    from tface.core.data.pairs import PairsError, landmark_key, load_pair_images, read_lfw_pairs, read_pair_list

    try:
        if fmt == "lfw":
            pairs = read_lfw_pairs(pairs_path, root, ext.lstrip("."))
        else:
            pairs = read_pair_list(pairs_path, root)
        table = read_landmark_list(landmarks) if landmarks is not None else None
        images, flags = load_pair_images(
            pairs, pairs_path, image_size=image_size, landmarks=table, root=root,
            progress=lambda items, length: progress(
                items, length=length, label="aligning images" if table is not None else "reading images"))
    except (PairsError, IndexFormatError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        write_bin(out, images, flags)
    except OSError as exc:
        raise click.ClickException(f"{out}: cannot write: {exc.strerror or exc}") from exc
    same = sum(flags)
    distinct = {p for pair in pairs for p in (pair.first, pair.second)}
    rows: list[tuple[str, object]] = [
        ("pairs", len(flags)),
        ("same / different", f"{same} / {len(flags) - same}"),
        ("distinct images", len(distinct)),
        ("bytes", out.stat().st_size),
    ]
    if table is not None:
        unused = len(table) - len({landmark_key(p, root, table) for p in distinct})
        rows.insert(3, ("aligned", f"{len(distinct)} images to {image_size}x{image_size} JPEG crops"
                                   + (f" ({unused} landmark entries matched no image)" if unused else "")))
    summary(f"wrote {out}", rows)
