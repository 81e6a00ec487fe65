"""The component kinds: the one table that the registry, the recipe loader and the CLI derive their lists from.

A kind is a family of plugins: its entry-point group, the word messages use for one of them, what each
one must be (checked by the zoo test on every installed component) and where a recipe names them.
This module imports nothing heavy (``tface --help`` and ``tface list`` import no torch); the base
types are named as ``"module:attribute"`` and imported only by :meth:`Kind.base_type`.
"""

from __future__ import annotations

import importlib
from typing import Any

import attrs

__all__ = ["Kind", "TABLE", "NAMES", "get", "singular", "in_recipe"]


@attrs.frozen
class Kind:
    """One row of :data:`TABLE`."""

    #: plural name: ``tface list KIND``, ``registry.entries(KIND)`` and the entry-point group ``tface.<name>``
    name: str
    #: one component of the kind, in messages (``unknown head 'x'``) and as the options' key path
    singular: str
    #: ``"module:attribute"`` of the class or protocol a built component is an instance of
    base: str
    #: the recipe key naming such components, or None when a recipe cannot name one
    slot: str | None
    #: whether the slot takes an array of tables (``[[augment]]``) rather than one table (``[head]``)
    many: bool = False

    @property
    def group(self) -> str:
        """The entry-point group components of this kind are registered in."""
        return f"tface.{self.name}"

    def base_type(self) -> Any:
        """The class or protocol named by :attr:`base` (imported now)."""
        module, _, attribute = self.base.partition(":")
        return getattr(importlib.import_module(module), attribute)


#: Every kind, in the order ``tface list`` shows them.
TABLE: tuple[Kind, ...] = (
    Kind("backbones", "backbone", "torch.nn:Module", slot="backbone"),
    Kind("heads", "head", "tface.core.classifier:MarginHead", slot="head"),
    # ``[[loss]]``: the objective (tface.core.losses says which inputs each loss takes)
    Kind("losses", "loss", "torch.nn:Module", slot="loss", many=True),
    # ``[method]``: what a training step computes (margin_softmax when the recipe names none)
    Kind("methods", "method", "tface.core.method:TrainingMethod", slot="method"),
    Kind("augmenters", "augmenter", "collections.abc:Callable", slot="augment", many=True),
    # ``[data]`` (one branch) or ``[[data]]`` (several); the recipe splits off the branch keys
    Kind("datasets", "dataset", "tface.core.data.source:DatasetSource", slot="data", many=True),
    Kind("protocols", "protocol", "tface.core.protocol:EvalProtocol", slot="eval", many=True),
    # hook modules apply to every run: no recipe table names one, and they take no options
    Kind("plugins", "plugin", "types:ModuleType", slot=None),
)

#: The kind names, in table order.
NAMES: tuple[str, ...] = tuple(k.name for k in TABLE)

_BY_NAME = {k.name: k for k in TABLE}


def get(name: str) -> Kind:
    """The row of kind ``name``; ``KeyError`` for anything else (the registry words the user-facing error)."""
    return _BY_NAME[name]


def singular(name: str) -> str:
    """``"head"`` for ``"heads"``; an unknown name is returned as it is."""
    kind = _BY_NAME.get(name)
    return kind.singular if kind is not None else name


def in_recipe() -> tuple[Kind, ...]:
    """The kinds a recipe names, in table order (the order the recipe loader reports problems in)."""
    return tuple(k for k in TABLE if k.slot is not None)
