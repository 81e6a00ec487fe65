"""Shared pieces of the ``tface data`` commands: progress bars on stderr and the closing summary."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import click

__all__ = ["progress", "summary", "record_name_param"]

T = TypeVar("T")


def progress(items: Iterable[T], *, length: int | None = None, label: str = "") -> Iterator[T]:
    """Iterate with a progress bar on stderr when it is a terminal (plain iteration otherwise)."""
    if not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, length=length, label=label, file=sys.stderr, show_pos=True) as bar:
        yield from bar


def summary(title: str, rows: Iterable[tuple[str, object]]) -> None:
    """Print ``title`` then aligned ``name: value`` lines to stdout (the last thing a tool prints)."""
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    click.echo(title)
    for k, v in rows:
        click.echo(f"  {k.ljust(width)}  {v}")


def record_name_param(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a record name option that breaks the record-name rule is a bad option value (exit 2)."""
    from tface.core.data.index import check_record_name

    if value is None:
        return None
    try:
        return check_record_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
