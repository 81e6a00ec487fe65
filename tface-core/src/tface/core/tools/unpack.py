"""``tface data unpack``: write an index's images back to files (to look at them, or to re-pack them)."""

from __future__ import annotations

from pathlib import Path

import click

from tface.core.tools.common import progress, summary


@click.command("unpack")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the shards (default: the index's folder).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N index lines.")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty OUT_DIR: replaces the files tface wrote there, keeps all others.")
def unpack_cmd(index_path: Path, out_dir: Path, root: Path | None, limit: int | None, overwrite: bool) -> None:
    """Write the images of INDEX to files under OUT_DIR, one folder per label.

    Files are OUT_DIR/<label>/<record>-<shard:05d>-<offset>.<ext>, unique per record; the extension
    comes from the image's magic bytes (jpg, png, else bin). OUT_DIR/unpacked.tsv maps each file to its
    index line, its label and the record's 'path' feature when it has one. OUT_DIR must be new or
    empty unless --overwrite; the files appear there only once all of them are written.
    """
    from tface.core.data.errors import DataError
    from tface.core.data.index import IndexFormatError, read_index
    from tface.core.data.unpack import unpack
    from tface.core.outdir import OutputExistsError, SameFileError

    try:
        index = read_index(index_path, root)
        result = unpack(index, out_dir, limit=limit, overwrite=overwrite,
                        progress=lambda rows, length: progress(rows, length=length, label="unpacking"))
    except SameFileError as exc:
        raise click.UsageError(str(exc)) from None
    except OutputExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except (IndexFormatError, DataError) as exc:
        raise click.ClickException(f"{exc}; check the data with `tface data verify`") from exc
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or out_dir}: {exc.strerror or exc}") from exc
    summary(f"unpacked {result.files} images into {result.out_dir}", [
        ("images", result.files),
        ("labels", result.labels),
        ("bytes", result.bytes),
        ("table", result.tsv),
    ])
