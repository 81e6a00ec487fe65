"""Component references: a method option that names another component, e.g. a frozen teacher backbone.

In a recipe such an option is a table like any component's, plus the weights to load and whether to freeze::

    [method]
    name = "ddl"
    teacher = { name = "ir_50", checkpoint = "teacher.pt", frozen = true }

It is checked when the recipe loads as ``[backbone]`` is (an unknown name or option, or a missing file, is
refused naming ``method.teacher...``) and built by the method at the start of the run. This module imports no
torch (recipes load without it); :class:`~tface.core.frozen.Frozen` is imported when a reference is built.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from tface.core import kinds, registry

__all__ = ["BackboneRef", "ComponentRef", "HeadRef", "LossRef", "REF_KEYS"]

#: keys of a reference table that are not the component's own options
REF_KEYS = ("name", "checkpoint", "strict", "frozen")


@attrs.frozen
class ComponentRef:
    """A component named inside another's options. Subclasses fix the kind (:class:`BackboneRef`, ...)."""

    kind: ClassVar[str] = ""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)
    #: weights to load into it (any file the weights reader takes), resolved against the recipe's folder
    checkpoint: pathlib.Path | None = None
    strict: bool = True
    #: no gradient, evaluation mode throughout training (``Frozen``)
    frozen: bool = False

    @classmethod
    def __tface_structure__(cls, value: Any, path: str, problems: list[str]) -> ComponentRef | None:
        """The reference a recipe table describes, or None after adding its problems (config's hook)."""
        from tface.core.config import ConfigError, validate_options

        word = kinds.singular(cls.kind)
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected a table naming a {word} (name = ...), got {value!r}")
            return None
        name = value.get("name")
        obj = registry.get_named(cls.kind, name, path, problems)
        if obj is None:
            return None
        before = len(problems)
        checkpoint, strict, frozen = value.get("checkpoint"), value.get("strict", True), value.get("frozen", False)
        if checkpoint is not None and not isinstance(checkpoint, (str, pathlib.PurePath)):
            problems.append(f"{path}.checkpoint: expected a path, got {checkpoint!r}")
        for key, flag in (("strict", strict), ("frozen", frozen)):
            if not isinstance(flag, bool):
                problems.append(f"{path}.{key}: expected true or false, got {flag!r}")
        try:
            options = validate_options(obj, {k: v for k, v in value.items() if k not in REF_KEYS}, path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None
        if len(problems) > before:
            return None
        return cls(name, options, pathlib.Path(checkpoint) if checkpoint is not None else None, strict, frozen)

    def __tface_unstructure__(self) -> dict[str, Any]:
        from tface.core.config import unstructure

        table = {"name": self.name, **unstructure(self.options)}
        if self.checkpoint is not None:
            table.update(checkpoint=str(self.checkpoint), strict=self.strict)
        if self.frozen:
            table["frozen"] = True
        return table

    def resolved(self, base: pathlib.Path) -> ComponentRef:
        """This reference with a relative checkpoint path taken against ``base`` (the recipe's folder)."""
        if self.checkpoint is None or self.checkpoint.is_absolute():
            return self
        return attrs.evolve(self, checkpoint=(base / self.checkpoint).resolve())

    def missing_file(self) -> str | None:
        """``checkpoint: problem`` when the named weights file is not there (checked before a run starts)."""
        if self.checkpoint is None or self.checkpoint.is_file():
            return None
        what = "is not a file" if self.checkpoint.exists() else "no such file"
        return f"checkpoint: {what}: {self.checkpoint}"

    def build(self, key: str, echo: Callable[[str], None] = lambda message: None) -> Any:
        """Build the component, load its weights, and wrap it in :class:`Frozen` when asked.

        ``key`` (``method.teacher``) names it in errors: a file that does not fit raises ``ValueError``.
        """
        from torch import nn

        from tface.core.frozen import Frozen
        from tface.core.weights import WeightsError, load_into

        component = registry.get(self.kind, self.name)(**self.options)
        if self.checkpoint is not None:
            try:
                report = load_into(component, self.checkpoint, strict=self.strict, what=f"{key} {self.name!r}")
            except WeightsError as exc:
                raise ValueError(f"{key}.checkpoint: {exc}") from exc
            echo(f"{key}: loaded {self.checkpoint} ({report.loaded} tensors"
                 + ("" if report.exact else f"; {report.summary()}") + ")")
        return Frozen(component) if self.frozen and isinstance(component, nn.Module) else component


class BackboneRef(ComponentRef):
    kind: ClassVar[str] = "backbones"


class HeadRef(ComponentRef):
    kind: ClassVar[str] = "heads"


class LossRef(ComponentRef):
    kind: ClassVar[str] = "losses"
