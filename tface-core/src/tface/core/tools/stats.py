"""``tface data stats``: images, identities, label space, identity sizes and shards of an index."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tface.core.tools.common import progress, summary


def _fmt_bytes(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


@click.command("stats")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the shards (default: the index's folder).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
def stats_cmd(index_path: Path, root: Path | None, as_json: bool) -> None:
    """Describe INDEX: images, identities, label gaps, images per identity, shards.

    Reads the index only; shard files are stat-ed for their size, never read.
    """
    from tface.core.data.index import IndexFormatError, read_index
    from tface.core.data.stats import index_stats

    try:
        stats = index_stats(read_index(index_path, root),
                            progress=lambda paths, length: progress(paths, length=length, label="shards"))
    except IndexFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2))
        return
    space = stats.label_space
    rows: list[tuple[str, object]] = [
        ("images", stats.images),
        ("identities", stats.identities),
        ("label space", space.describe()),
        ("images per identity", f"min {stats.per_identity_min}, median {stats.per_identity_median:g}, "
                                f"mean {stats.per_identity_mean:.2f}, max {stats.per_identity_max}"),
    ]
    for lo, hi, n in stats.histogram:
        rows.append((f"  {lo}" if lo == hi else f"  {lo}-{hi}", f"{n} identities"))
    rows += [
        ("shards", stats.shards),
        ("shard bytes", f"{stats.shard_bytes} ({_fmt_bytes(stats.shard_bytes)})"),
        ("records per shard", f"min {stats.records_per_shard_min}, max {stats.records_per_shard_max}"),
        ("missing shards", len(stats.missing_shards)),
    ]
    for path in stats.missing_shards[:20]:
        click.echo(f"missing shard: {path}")
    if len(stats.missing_shards) > 20:
        click.echo(f"... and {len(stats.missing_shards) - 20} more missing shards")
    summary(f"stats of {index_path}", rows)
