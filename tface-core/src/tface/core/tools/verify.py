"""``tface data verify``: check every record of a data set (CRCs, Example, image) and an index's offsets."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tface.core.tools.common import progress, summary


@click.command("verify")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the shards of an index (default: the index's folder).")
@click.option("--no-decode", is_flag=True, help="Skip decoding the images (framing, CRCs and Example only).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes scanning shard files in parallel.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report instead of lines and a summary.")
def verify_cmd(target: Path, root: Path | None, no_decode: bool, workers: int, as_json: bool) -> None:
    """Check TARGET: a training index, a shard file, or a folder of *.tfrecord files.

    Every shard is scanned from its first byte: header, length CRC, payload, payload CRC, Example parse,
    the 'image' key, and the image decode. For an index, every line's offset must be a record boundary
    of its shard. Each bad record is printed as 'FILE: offset N: reason' (index lines as 'INDEX:LINE:
    reason'). Exit status 1 when anything is bad, 0 when all is well.
    """
    from tface.core.data.index import IndexFormatError
    from tface.core.data.verify import verify

    def bar(items, length):
        return progress(items, length=length, label="verifying shards")

    try:
        report = verify(target, root=root, decode=not no_decode, workers=workers, progress=bar)
    except (IndexFormatError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            click.echo(str(problem))
        rows = [("files", report.files), ("records", report.records), ("bytes", report.bytes)]
        if report.index_lines:
            rows.append(("index lines", report.index_lines))
        rows.append(("bad", report.bad))
        summary(f"verified {target}: {'OK' if report.ok else 'PROBLEMS FOUND'}", rows)
    if not report.ok:
        click.get_current_context().exit(1)
