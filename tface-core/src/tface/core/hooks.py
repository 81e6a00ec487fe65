"""Trainer life-cycle hooks (pluggy), for loggers and research callbacks.

Hook implementations live in modules registered under the ``tface.plugins`` entry-point group::

    from tface.core.hooks import hookimpl

    @hookimpl
    def tface_step_end(step, metrics): ...

One broken plugin never takes the others down: a module that fails to import, a misspelled hook name
(``check_pending`` for that plugin alone) or a ``tface_register_commands`` that raises makes that plugin
*broken*: it is skipped with one warning on stderr, ``tface list`` shows the reason, the others keep working.
Recipes cannot name hook plugins, so no run needs one; plugins passed to the trainer in code are needed,
and a misspelled hook there is an error (:class:`HookPluginError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

from tface.core import registry
from tface.core.config import closest

__all__ = ["hookspec", "hookimpl", "HookSpecs", "plugin_manager", "register_commands", "problems",
           "HookPluginError"]

hookspec = pluggy.HookspecMarker("tface")
hookimpl = pluggy.HookimplMarker("tface")


class HookPluginError(RuntimeError):
    pass


class HookSpecs:
    """Every hook the trainer calls. Arguments are passed by keyword; implementations may take a subset.

    Every life-cycle hook also gets ``rank`` and ``world_size`` (0 and 1 for a single process). In a
    distributed run each process calls its hooks: run start, step and epoch ends on every rank; evaluation
    and checkpoints happen on rank 0 only, so their hooks run there; run end on every rank (on the others
    right after their last step, with no results). A logger that should write once checks ``rank == 0``.
    """

    @hookspec
    def tface_run_start(self, recipe: Any, run_dir: Path, model: Any, rank: int, world_size: int) -> None:
        """Before the first step (after the untrained evaluation, if any)."""

    @hookspec
    def tface_step_end(self, step: int, metrics: dict[str, float], rank: int, world_size: int) -> None:
        """After each optimiser step; ``metrics`` has ``loss``, ``lr`` and what was logged (global over ranks)."""

    @hookspec
    def tface_epoch_end(self, epoch: int, step: int, rank: int, world_size: int) -> None:
        """When the data loader has been exhausted once."""

    @hookspec
    def tface_evaluation_done(self, step: int, results: list[dict[str, Any]], rank: int, world_size: int) -> None:
        """After each evaluation round, with the protocol results (rank 0 only)."""

    @hookspec
    def tface_checkpoint_saved(self, step: int, path: Path, rank: int, world_size: int) -> None:
        """After a checkpoint file has been written (atomically; rank 0 only)."""

    @hookspec
    def tface_run_end(self, run_dir: Path, step: int, results: list[dict[str, Any]], rank: int,
                      world_size: int) -> None:
        """After the final evaluation and report (rank 0); after the last step (other ranks)."""

    @hookspec
    def tface_register_commands(self, groups: dict[str, Any]) -> None:
        """Add click commands to the ``tface`` CLI: ``groups`` maps ``"tface"``, ``"bench"``, ``"export"`` and
        ``"data"`` to their click groups (``groups["bench"].add_command(cmd)``). Called once per CLI start;
        keep the module light and import heavy libraries inside the commands."""

    @hookspec
    def tface_weights_hint(self, keys: list[str], model: Any) -> str | None:
        """A one-line hint for a weights file that does not fit ``model`` (:mod:`tface.core.weights`), or None.

        ``keys`` are the file's state_dict keys (wrappers removed); ``model`` is the unwrapped module. Called
        only when a strict load fails, e.g. to say which architecture the keys belong to. Exceptions are
        reported as warnings and ignored: a hint never hides the error it explains."""


_problems: dict[registry.Entry, str] = {}  # broken hook plugins found in this process -> why


def problems() -> dict[registry.Entry, str]:
    """Hook plugins found broken in this process (entry → reason), for ``tface list``."""
    return dict(_problems)


def _broken(entry: registry.Entry, reason: str, consequence: str = "it was skipped") -> None:
    _problems[entry] = reason
    registry.warn_once(f"hook plugin {entry.qualified!r} is broken ({reason}); {consequence}")


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> str | None:
    """Register ``plugin``; if it is invalid, unregister it again and return why."""
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:  # bad hook signature, duplicate
        return " ".join(str(exc).split())  # pluggy's message spans lines
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.has_spec() or all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin):
            continue
        pm.unregister(plugin)
        hint = closest(caller.name, [n for n in dir(HookSpecs) if n.startswith("tface_")])
        return f"unknown hook {caller.name!r}" + (f'; did you mean "{hint}"?' if hint else "")
    return None


def plugin_manager(extra: list[Any] = ()) -> pluggy.PluginManager:
    """A fresh manager with every valid ``tface.plugins`` entry point (and ``extra`` objects) registered.

    A broken entry-point plugin is skipped with a warning (see the module docstring); an invalid ``extra``
    object raises :class:`HookPluginError`, since the caller asked for it.
    """
    pm = pluggy.PluginManager("tface")
    pm.add_hookspecs(HookSpecs)
    for entry in registry.entries("plugins"):
        _problems.pop(entry, None)  # judged afresh (a fixed plugin, after registry.clear_cache())
        try:
            plugin = registry.get("plugins", entry.qualified)
        except registry.PluginLoadError as exc:
            cause = exc.__cause__
            _broken(entry, f"{type(cause).__name__}: {cause}" if cause else str(exc))
            continue
        reason = _register(pm, plugin, entry.qualified)
        if reason:
            _broken(entry, reason)
    for i, plugin in enumerate(extra):
        reason = _register(pm, plugin, f"extra-{i}")
        if reason:
            raise HookPluginError(f"hook plugin {plugin!r}: {reason}")
    return pm


def register_commands(pm: pluggy.PluginManager, groups: dict[str, Any]) -> None:
    """Call each plugin's ``tface_register_commands`` on its own; one that raises adds nothing and is broken
    (its life-cycle hooks still run: only its commands are missing)."""
    entries = {e.qualified: e for e in registry.entries("plugins")}
    plugins = {impl.plugin_name: impl.plugin for impl in pm.hook.tface_register_commands.get_hookimpls()}
    for name, plugin in plugins.items():
        before = {key: dict(group.commands) for key, group in groups.items()}
        caller = pm.subset_hook_caller("tface_register_commands", [p for p in pm.get_plugins() if p is not plugin])
        try:
            caller(groups=groups)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a plugin may not end the CLI
            for key, group in groups.items():  # drop what it added before failing
                group.commands.clear()
                group.commands.update(before[key])
            reason = f"tface_register_commands raised {type(exc).__name__}: {exc}"
            if name in entries:
                _broken(entries[name], reason, "its commands were not added")
            else:
                registry.warn_once(f"hook plugin {name!r}: {reason}; its commands were not added")
