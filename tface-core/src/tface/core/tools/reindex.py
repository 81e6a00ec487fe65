"""``tface data reindex``: TFace's ``convert_new_index`` (pack index + label list → training index)."""

from __future__ import annotations

from pathlib import Path

import click

from tface.core.tools.common import record_name_param, summary

#: label-list paths without a record that are printed (all of them go to ``--unmatched``)
SHOW_UNMATCHED = 20


@click.command("reindex")
@click.argument("pack_index", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("label_list", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_index", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--record-name", default=None, callback=record_name_param,
              help="Record name written in every row (default: PACK_INDEX's basename without .index).")
@click.option("--unmatched", "unmatched_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every label-list path that has no record here, one per line.")
def reindex_cmd(pack_index: Path, label_list: Path, out_index: Path, record_name: str | None,
                unmatched_path: Path | None) -> None:
    """Join PACK_INDEX (image_path, shard, offset) with LABEL_LIST (path label) into OUT_INDEX.

    Rows follow LABEL_LIST's order, so an index can be cleaned, relabelled or reordered without
    touching the shards. Label-list paths missing from the pack index are reported and skipped.
    Outputs are written atomically and replace existing files of the same name, but never an input.
    """
    import numpy as np

    from tface.core.data.index import (
        IndexFormatError,
        check_record_name,
        join_labels,
        label_space,
        read_label_list,
        read_pack_index,
        write_index,
    )
    from tface.core.fsutil import atomic_write_bytes
    from tface.core.outdir import SameFileError, check_distinct

    try:
        check_distinct({"OUT_INDEX": out_index, "--unmatched": unmatched_path},
                       {"PACK_INDEX": pack_index, "LABEL_LIST": label_list})
    except SameFileError as exc:
        raise click.UsageError(str(exc)) from None
    name = record_name if record_name is not None else pack_index.name.removesuffix(".index")
    try:
        check_record_name(name)
    except ValueError as exc:
        raise click.ClickException(f"{pack_index}: {exc}; give one with --record-name") from None
    try:
        pack = read_pack_index(pack_index)
        labels = read_label_list(label_list)
    except IndexFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    result = join_labels(pack, labels, name)

    for img, line in result.unmatched[:SHOW_UNMATCHED]:
        click.echo(f"unmatched: {img} ({label_list}:{line})")
    if len(result.unmatched) > SHOW_UNMATCHED:
        more = f"; all of them are in {unmatched_path}" if unmatched_path else " (list them all with --unmatched)"
        click.echo(f"... and {len(result.unmatched) - SHOW_UNMATCHED} more unmatched paths{more}")
    if unmatched_path is not None:
        atomic_write_bytes(unmatched_path, "".join(f"{img}\n" for img, _ in result.unmatched).encode("utf-8"))
    if not result.rows:
        raise click.ClickException(f"{label_list}: none of its {len(labels)} paths is in {pack_index}; "
                                   f"{out_index} was not written")

    write_index(out_index, result.rows)
    space = label_space(np.asarray([r[3] for r in result.rows], dtype=np.int64))
    summary(f"wrote {out_index}", [
        ("record name", name),
        ("rows", len(result.rows)),
        ("label-list lines", len(labels)),
        ("unmatched label-list paths", len(result.unmatched)),
        ("pack images without a label", result.unlabelled),
        ("label space", space.describe()),
    ])
