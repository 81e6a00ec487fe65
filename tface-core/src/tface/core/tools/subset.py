"""``tface data subset``: a smaller training index (identities and images per identity), deterministic."""

from __future__ import annotations

from pathlib import Path

import click

from tface.core.tools.common import progress, summary


@click.command("subset")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_index", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the shards, to report missing ones (default: the index's folder).")
@click.option("--identities", type=click.IntRange(min=1), default=None,
              help="Keep N identities chosen at random (among those with --min-images).")
@click.option("--identity-list", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Keep the labels listed in FILE (one per line, '#' comments).")
@click.option("--min-images", type=click.IntRange(min=1), default=1, show_default=True,
              help="Drop identities with fewer images than this.")
@click.option("--max-per-identity", type=click.IntRange(min=1), default=None,
              help="Keep at most M images of each identity (chosen at random).")
@click.option("--fraction", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Keep this fraction of each identity's images (rounded, at least one).")
@click.option("--seed", default=0, show_default=True, help="Every random choice is derived from this seed.")
@click.option("--keep-labels", is_flag=True,
              help="Keep the original labels (default: renumber 0..K-1 and write OUT_INDEX.labels.tsv).")
def subset_cmd(index_path: Path, out_index: Path, root: Path | None, identities: int | None,
               identity_list: Path | None, min_images: int, max_per_identity: int | None, fraction: float | None,
               seed: int, keep_labels: bool) -> None:
    """Write OUT_INDEX with a subset of INDEX's rows (same shards and offsets).

    Identities are filtered by --min-images, then restricted to --identity-list or to --identities
    random ones; each kept identity keeps --fraction of its images, then at most --max-per-identity.
    Rows keep INDEX's order. Labels are renumbered 0..K-1 in increasing order of the old label, with
    OUT_INDEX.labels.tsv mapping new to old, unless --keep-labels. Outputs are written atomically and
    replace existing files of the same name, but never an input (INDEX, the list, a shard).
    """
    import numpy as np

    from tface.core.data.index import IndexFormatError, index_rows, read_index, write_index
    from tface.core.data.subset import SubsetError, read_identity_list, select_subset, write_label_map
    from tface.core.outdir import SameFileError, check_distinct

    if identities is not None and identity_list is not None:
        raise click.ClickException("--identities and --identity-list cannot be combined")
    label_map_path = None if keep_labels else Path(f"{out_index}.labels.tsv")
    outputs = {"OUT_INDEX": out_index, "the label map": label_map_path}
    try:
        check_distinct(outputs, {"INDEX": index_path, "--identity-list": identity_list})
        index = read_index(index_path, root)
        check_distinct(outputs, {f"shard {p}": p for p in index.files})
        wanted = read_identity_list(identity_list) if identity_list is not None else None
        result = select_subset(index, identities=identities, identity_list=wanted, min_images=min_images,
                               max_per_identity=max_per_identity, fraction=fraction, seed=seed,
                               keep_labels=keep_labels)
    except SameFileError as exc:
        raise click.UsageError(str(exc)) from None
    except (IndexFormatError, SubsetError) as exc:
        raise click.ClickException(str(exc)) from exc

    sub = result.index
    write_index(out_index, index_rows(sub))
    rows: list[tuple[str, object]] = [
        ("identities", f"{result.identities_before} -> {result.identities}"),
        ("images", f"{result.images_before} -> {result.images}"),
    ]
    if result.relabelled:
        assert label_map_path is not None
        label_map = write_label_map(label_map_path, result.old_labels)
        rows.append(("labels", f"renumbered 0..{result.identities - 1}; new -> old in {label_map}"))
    else:
        rows.append(("labels", sub.label_space().describe()))
    used = np.unique(sub.file_id).tolist()
    missing = sum(not sub.files[f].exists() for f in progress(used, length=len(used), label="checking shards"))
    rows.append(("shards", f"{len(used)} used" + (f", {missing} missing" if missing else "")))
    summary(f"wrote {out_index}", rows)
