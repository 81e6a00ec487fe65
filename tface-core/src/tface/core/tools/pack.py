"""``tface data pack``: an image folder or image list → TFace TFRecord shards + indexes."""

from __future__ import annotations

from pathlib import Path

import click

from tface.core.tools.common import progress, record_name_param, summary

#: Skipped images listed one per line before the summary (the rest are counted).
SHOW_SKIPPED = 20


@click.command("pack")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, callback=record_name_param,
              help="Record name: shards go to OUT_DIR/NAME/, the index to OUT_DIR/NAME.txt.")
@click.option("--list", "is_list", is_flag=True,
              help="SOURCE is an image list (path, path<TAB>label or 'path label' lines), not a folder.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder that relative paths of the list resolve against (default: the list's folder).")
@click.option("--landmarks", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TFace pts_list (path then 5 or 68 x y pairs, optional score); aligns every image to 112x112.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Encoding processes (0 = one per CPU core); the output bytes do not depend on it.")
@click.option("--shard-size", default=500_000, show_default=True, type=click.IntRange(min=1),
              help="Images per TFRecord shard.")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100),
              help="JPEG quality (95 is OpenCV's default, which TFace used).")
@click.option("--extra-keys", is_flag=True,
              help="Also store label, landmarks and source path in each record (TFace's reader ignores them).")
@click.option("--on-error", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="An unreadable image or one without landmarks: stop with an error, or skip it and list it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing data set of the same name in OUT_DIR.")
def pack_cmd(source: Path, out_dir: Path, name: str, is_list: bool, root: Path | None, landmarks: Path | None,
             workers: int, shard_size: int, quality: int, extra_keys: bool, on_error: str, overwrite: bool) -> None:
    """Pack face images (SOURCE: one sub-folder per identity, or an image list with --list) into shards."""
    from tface.core.data.imagelist import ImageSourceError
    from tface.core.data.index import IndexFormatError
    from tface.core.data.pack import PackError, pack

    if root is not None and not is_list:
        raise click.UsageError("--root applies to image lists (--list) only")
    if is_list and source.is_dir():
        raise click.UsageError(f"{source} is a folder; drop --list to pack a folder")
    if not is_list and not source.is_dir():
        raise click.UsageError(f"{source} is a file; pass --list if it is an image list")
    try:
        report = pack(source, out_dir, name, image_list=is_list, root=root, landmarks=landmarks,
                      shard_size=shard_size, quality=quality, extra_keys=extra_keys, workers=workers,
                      on_error=on_error, overwrite=overwrite,
                      progress=lambda items, n: progress(items, length=n, label="packing"))
    except (PackError, ImageSourceError, IndexFormatError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # the output cannot be written (permissions, disk full)
        raise click.ClickException(f"{exc.filename or out_dir}: {exc.strerror or exc}") from None
    for path, reason in report.skipped[:SHOW_SKIPPED]:
        click.echo(f"skipped {path}: {reason}", err=True)
    if len(report.skipped) > SHOW_SKIPPED:
        click.echo(f"... and {len(report.skipped) - SHOW_SKIPPED} more skipped", err=True)
    rows: list[tuple[str, object]] = [
        ("images", report.written),
        ("identities", report.identities),
        ("skipped", len(report.skipped)),
        ("shards", len(report.shards)),
        ("training index", report.index),
        ("pack index", report.pack_index),
        ("classes", report.classes_file),
    ]
    if report.identities < report.classes:
        rows.append(("empty labels", f"{report.classes - report.identities} (every image of them was skipped)"))
    if report.empty_identities:
        rows.append(("empty folders", f"{len(report.empty_identities)} (no label): "
                                      + ", ".join(report.empty_identities[:5])
                                      + (" ..." if len(report.empty_identities) > 5 else "")))
    if report.ignored_files:
        rows.append(("ignored files", f"{len(report.ignored_files)} (not an image format tface reads, or outside "
                                      "identity folders): " + ", ".join(report.ignored_files[:5])
                                      + (" ..." if len(report.ignored_files) > 5 else "")))
    if report.unused_landmarks:
        rows.append(("unused landmarks", f"{report.unused_landmarks} entries matched no image"))
    summary(f"packed {report.written} images into {report.out_dir / report.name} in {report.seconds:.1f}s", rows)
