"""Trainer life-cycle hooks (pluggy), for loggers and research callbacks.

Hook implementations live in modules registered under the ``tface.plugins`` entry-point group::

    from tface.core.hooks import hookimpl

    @hookimpl
    def tface_step_end(step, metrics): ...

A module that fails to import is reported (with its distribution) and skipped; a misspelled hook name is
an error (``check_pending``), so a callback never silently does nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pluggy

from tface.core import registry

__all__ = ["hookspec", "hookimpl", "HookSpecs", "plugin_manager", "HookPluginError"]

hookspec = pluggy.HookspecMarker("tface")
hookimpl = pluggy.HookimplMarker("tface")


class HookPluginError(RuntimeError):
    pass


class HookSpecs:
    """Every hook the trainer calls. Arguments are passed by keyword; implementations may take a subset."""

    @hookspec
    def tface_run_start(self, recipe: Any, run_dir: Path, model: Any) -> None:
        """Before the first step (after the untrained evaluation, if any)."""

    @hookspec
    def tface_step_end(self, step: int, metrics: dict[str, float]) -> None:
        """After each optimiser step; ``metrics`` has ``loss``, ``lr`` and what was logged."""

    @hookspec
    def tface_epoch_end(self, epoch: int, step: int) -> None:
        """When the data loader has been exhausted once."""

    @hookspec
    def tface_evaluation_done(self, step: int, results: list[dict[str, Any]]) -> None:
        """After each evaluation round, with the protocol results."""

    @hookspec
    def tface_checkpoint_saved(self, step: int, path: Path) -> None:
        """After a checkpoint file has been written (atomically)."""

    @hookspec
    def tface_run_end(self, run_dir: Path, step: int, results: list[dict[str, Any]]) -> None:
        """After the final evaluation and report."""

    @hookspec
    def tface_register_commands(self, groups: dict[str, Any]) -> None:
        """Add click commands to the ``tface`` CLI: ``groups`` maps ``"tface"``, ``"bench"``, ``"export"`` and
        ``"data"`` to their click groups (``groups["bench"].add_command(cmd)``). Called once per CLI start;
        keep the module light and import heavy libraries inside the commands."""


def plugin_manager(extra: list[Any] = ()) -> pluggy.PluginManager:
    """A fresh manager with every ``tface.plugins`` entry point (and ``extra`` objects) registered."""
    pm = pluggy.PluginManager("tface")
    pm.add_hookspecs(HookSpecs)
    for entry in registry.entries("plugins"):
        try:
            plugin = registry.get("plugins", entry.qualified)
        except registry.PluginLoadError as exc:
            warnings.warn(f"skipping hook plugin: {exc}", RuntimeWarning, stacklevel=2)
            continue
        pm.register(plugin, name=entry.qualified)
    for i, plugin in enumerate(extra):
        pm.register(plugin, name=f"extra-{i}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise HookPluginError(f"hook plugin {exc.plugin!r}: {exc}") from exc
    return pm
