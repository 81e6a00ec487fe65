"""The library behind ``tface eval``: evaluate a saved backbone with any registered protocol.

Two ways to say what to evaluate:

* ad hoc — a protocol name and its options, a backbone name and its options, a checkpoint file
  (:func:`plan_adhoc`);
* a run folder — ``RUN_DIR/recipe.toml`` gives the backbone and the ``[[eval]]`` tables (or one protocol
  named on the command line), ``RUN_DIR/checkpoints/backbone.pt`` the weights (:func:`plan_run`).

Components are found through :mod:`tface.core.registry` only (the core never imports a plugin
distribution), and every option is validated by the component's own ``Config`` before the checkpoint is
read, so a typo costs nothing. Checkpoints are read by :mod:`tface.core.weights` (the reader ``tface export
onnx`` and the trainer use too), strictly: a checkpoint that does not fit the backbone stops with the file and
the first missing, unexpected and mis-shaped keys instead of silently evaluating random weights.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from tface.core import recipe as recipe_mod
from tface.core import registry
from tface.core.backbone import backbone_info
from tface.core.config import ConfigError, unstructure, validate_options
from tface.core.fsutil import atomic_write_bytes
from tface.core.protocol import EvalContext, check_inputs
from tface.core.recipe import Component
from tface.core.report import benchmark_table, markdown_table, write_plots
from tface.core.weights import WeightsError, load_into, read_file

__all__ = [
    "EvalError",
    "EvalOutcome",
    "EvalPlan",
    "evaluate",
    "parse_options",
    "plan_adhoc",
    "plan_run",
    "resolve_device",
]

class EvalError(RuntimeError):
    """A problem the user can fix (missing file, checkpoint that does not fit, bad device); one clear line."""


@attrs.define
class EvalPlan:
    """What to evaluate, validated; nothing has been read or built yet."""

    backbone: Component
    protocols: list[Component]
    #: The weights; None evaluates the randomly initialised backbone (``--checkpoint none``, seeded by ``seed``).
    checkpoint: Path | None
    label: str
    output_dir: Path
    #: The run folder (``--run``), else None.
    run_dir: Path | None = None
    #: The run's data sources: their ``eval_sets()`` become ``EvalContext.provided``, as during training.
    sources: list[Component] = attrs.field(factory=list)
    #: The training step the weights belong to, when the run folder says so.
    step: int | None = None
    #: Seeds torch before the backbone is built: the random initialisation of ``checkpoint = None``.
    seed: int = 0
    #: The run's ``[method]`` (``--run``): what it attaches for evaluation is restored from the run's ``last.pt``.
    method: Component | None = None


@attrs.define
class EvalOutcome:
    """What :func:`evaluate` produced, so callers (the CLI, notebooks) need not re-read the files."""

    results: list[dict[str, Any]]
    summary: dict[str, Any]
    #: ``eval-report.json``, ``eval-report.md`` and the plots, in that order.
    files: list[Path]
    #: Why plots are missing (matplotlib not installed), else None.
    note: str | None = None


# --- planning ---------------------------------------------------------------------------------------------


def parse_options(items: Iterable[str], flag: str = "--option") -> dict[str, Any]:
    """``KEY=VALUE`` strings → a dict; values are TOML (``8``, ``true``, ``["a.bin"]``), a bare word a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError([f"{flag} {item}: expected KEY=VALUE"])
        try:
            out[key] = recipe_mod.parse_value(text.strip())
        except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
            raise ConfigError([f"{flag} {key}: not a TOML value: {text!r} ({exc})"]) from None
    return out


def _absolute(value: Any, base: Path) -> Any:
    """Path-typed option values made absolute (the report then says exactly which files were used)."""
    if isinstance(value, os.PathLike):
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p).resolve()
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    return value


def _component(kind: str, name: str, options: Mapping[str, Any], path: str, base: Path) -> Component:
    obj = registry.get(kind, name)
    kwargs = validate_options(obj, dict(options), path)
    return Component(kind, name, {k: _absolute(v, base) for k, v in kwargs.items()})


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "eval"


def plan_adhoc(
    protocol: str,
    backbone: str,
    checkpoint: str | os.PathLike | None,
    options: Iterable[str] = (),
    backbone_options: Iterable[str] = (),
    output_dir: str | os.PathLike | None = None,
    label: str | None = None,
) -> EvalPlan:
    """``tface eval PROTOCOL --backbone NAME --checkpoint FILE``: names and options validated now.

    ``checkpoint = None`` evaluates the randomly initialised backbone (the untrained baseline).

    Relative paths in options resolve against the current directory. The default output folder is
    ``./eval-<protocol>-<time>``; the default label is the backbone name.
    """
    cwd = Path.cwd()
    proto = _component("protocols", protocol, parse_options(options), protocol, cwd)
    model = _component("backbones", backbone, parse_options(backbone_options, "--backbone-option"), "backbone",
                       cwd)
    out = Path(output_dir) if output_dir is not None else Path(
        f"eval-{_slug(protocol)}-{time.strftime('%Y%m%d-%H%M%S')}")
    return EvalPlan(model, [proto], Path(checkpoint) if checkpoint is not None else None, label or backbone, out)


def _run_step(run_dir: Path) -> int | None:
    """Steps trained, from ``report.json``'s summary (absent while a run is still going)."""
    try:
        steps = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))["summary"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


#: What ``--checkpoint`` takes to mean "no weights: random initialisation" (a file so named: ``./none``).
NO_CHECKPOINT = "none"


def plan_run(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    protocol: str | None = None,
    options: Iterable[str] = (),
    output_dir: str | os.PathLike | None = None,
    label: str | None = None,
) -> EvalPlan:
    """``tface eval --run RUN_DIR``: the backbone and ``[[eval]]`` tables of ``RUN_DIR/recipe.toml``.

    ``protocol`` (with ``options``) replaces the recipe's evaluations by that one protocol. The checkpoint
    defaults to ``RUN_DIR/checkpoints/backbone.pt`` (``"none"``: the run's backbone randomly initialised),
    the output folder to ``RUN_DIR/eval`` and the label to the run folder's name.
    """
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.toml"
    if not recipe_file.is_file():
        what = "does not exist" if not run_dir.exists() else "has no recipe.toml — is it a tface run folder?"
        raise EvalError(f"--run {run_dir}: {what}")
    recipe = recipe_mod.load(recipe_file)
    options = list(options)
    if protocol is not None:
        protocols = [_component("protocols", protocol, parse_options(options), protocol, Path.cwd())]
    else:
        if options:
            raise EvalError("--option needs a PROTOCOL; the run's own [[eval]] tables are used as written")
        protocols = list(recipe.eval)
        if not protocols:
            raise EvalError(f"{recipe_file} has no [[eval]] tables; name one: tface eval --run {run_dir} PROTOCOL")
    if checkpoint is None:
        ckpt: Path | None = run_dir / "checkpoints" / "backbone.pt"
    else:
        ckpt = None if str(checkpoint) == NO_CHECKPOINT else Path(checkpoint)
    return EvalPlan(
        backbone=recipe.backbone,
        protocols=protocols,
        checkpoint=ckpt,
        label=label or run_dir.resolve().name,
        output_dir=Path(output_dir) if output_dir is not None else run_dir / "eval",
        run_dir=run_dir,
        sources=[b.source for b in recipe.data],
        step=_run_step(run_dir) if checkpoint is None else None,
        method=recipe.method,
    )


# --- running ----------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise EvalError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    raise EvalError(f"--device {name}: expected auto, cpu, cuda or cuda:N")


def _provided(sources: Sequence[Component], echo: Callable[[str], None]) -> dict[str, dict[str, Path]]:
    """The evaluation files the run's data sources offer; a source that cannot say is only noted."""
    provided: dict[str, dict[str, Path]] = {}
    for comp in sources:
        try:
            sets = comp.build().eval_sets()
        except Exception as exc:  # a source's own problem must not stop evaluating explicit sets
            echo(f"note: data source {comp.name!r} offers no evaluation sets here: {type(exc).__name__}: {exc}")
            continue
        for proto, named in sets.items():
            provided.setdefault(proto, {}).update(named)
    return provided


def _describe(comp: Component) -> str:
    """``name {key = value, ...}`` with JSON-spelled values (paths as strings), one readable line."""
    opts = ", ".join(f"{k} = {json.dumps(unstructure(v), ensure_ascii=False)}" for k, v in comp.options.items())
    return f"{comp.name} {{{opts}}}" if opts else comp.name


def _report_md(outcome_results: list[dict[str, Any]], summary: dict[str, Any], plots: list[Path],
               note: str | None) -> str:
    lines = ["# tface eval report", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items() if k != "plugins"]
    lines += ["", "## Results", "", markdown_table(outcome_results).rstrip()]
    bench = benchmark_table(outcome_results)
    if bench:
        lines += ["", "## Benchmark", "", bench.rstrip()]
    if plots or note:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        if note:
            lines.append(f"_{note}_")
    return "\n".join(lines) + "\n"


def _prefixed(name: str, exc: BaseException) -> str:
    """``"<protocol>: <message>"``, without doubling a prefix the protocol's own message already has."""
    text = str(exc)
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


def _attach_method(plan: EvalPlan, model: nn.Module, say: Callable[[str], None]) -> None:
    """Restore what the run's method attaches for evaluation (SCF's confidence), from ``RUN_DIR/checkpoints/last.pt``.

    Only for a method that defines ``attach_eval``. A missing or unreadable ``last.pt`` is a note, not an error:
    most protocols do not need the attachment, and one that does says so by name.
    """
    from tface.core.method import TrainingMethod
    from tface.core.train.state import LAST

    if plan.method is None or plan.run_dir is None:
        return
    method = plan.method.build("method")
    if getattr(type(method), "attach_eval", TrainingMethod.attach_eval) is TrainingMethod.attach_eval:
        return
    last = plan.run_dir / "checkpoints" / LAST
    try:
        checkpoint = read_file(last)
    except WeightsError as exc:
        say(f"note: method {plan.method.name!r}: nothing attached for evaluation, {last} could not be read ({exc})")
        return
    state = checkpoint.get("method") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, dict) or not state:
        say(f"note: method {plan.method.name!r}: nothing attached for evaluation, {last} holds no method modules")
        return
    try:
        method.attach_eval(model, state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise EvalError(f"method {plan.method.name!r}: {last}: {exc}") from exc


def evaluate(plan: EvalPlan, device: str = "auto", echo: Callable[[str], None] | None = None) -> EvalOutcome:
    """Build the backbone, load the checkpoint, run every protocol, write the reports and plots.

    Every result gets ``label``. ``echo`` receives progress notes (the CLI sends them to stderr, keeping
    stdout for the table). Files: ``eval-report.json`` (results, curves included, and a summary),
    ``eval-report.md`` (summary, results table, TFace-style benchmark table, plots) and ROC/DET PNGs.
    """
    say = echo or (lambda msg: print(msg, flush=True))
    dev = resolve_device(device)
    t0 = time.perf_counter()
    protocols = [(c, c.build(c.name)) for c in plan.protocols]
    problems = [f"{c.name}.{p}" for c, proto in protocols for p in check_inputs(proto)]
    if problems:  # before the checkpoint is read or the model built: a missing .bin costs nothing
        raise EvalError("; ".join(problems))
    torch.manual_seed(plan.seed)  # the random initialisation, when there is no checkpoint
    model: nn.Module = plan.backbone.build("backbone")
    backbone_info(model, plan.backbone.name)  # the contract checked before any work (its input, its size)
    ckpt_step = None
    if plan.checkpoint is not None:
        try:
            ckpt_step = load_into(model, plan.checkpoint, what=f"backbone {plan.backbone.name!r}").step
        except WeightsError as exc:
            raise EvalError(str(exc)) from exc
    _attach_method(plan, model, say)
    model.to(dev)
    step = ckpt_step if ckpt_step is not None else (plan.step or 0)
    ctx = EvalContext(device=dev, step=step, provided=_provided(plan.sources, say))
    if plan.checkpoint is not None:
        say(f"evaluating {plan.checkpoint} ({plan.backbone.name}, step {step}) on {dev} ...")
    else:
        say(f"evaluating {plan.backbone.name} with random weights (seed {plan.seed}) on {dev} ...")
    results: list[dict[str, Any]] = []
    for comp, proto in protocols:
        try:
            found = proto.evaluate(model, ctx)
        except (OSError, ValueError) as exc:  # missing or malformed evaluation files, bad protocol options
            raise EvalError(_prefixed(comp.name, exc)) from exc
        results.extend({"label": plan.label, **r} for r in found)
    summary: dict[str, Any] = {
        "label": plan.label,
        "backbone": _describe(plan.backbone),
        "checkpoint": str(plan.checkpoint.resolve()) if plan.checkpoint is not None else NO_CHECKPOINT,
        "protocols": ", ".join(_describe(c) for c in plan.protocols),
        "step": step,
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if plan.checkpoint is None:
        summary["seed"] = plan.seed
    if plan.run_dir is not None:
        summary["run_dir"] = str(plan.run_dir.resolve())
    summary["plugins"] = registry.loaded_versions()
    out = plan.output_dir
    out.mkdir(parents=True, exist_ok=True)
    js = atomic_write_bytes(out / "eval-report.json",
                            (json.dumps({"results": results, "summary": summary}, indent=2, default=str)
                             + "\n").encode())
    plots, note = write_plots(out, results)
    md = atomic_write_bytes(out / "eval-report.md", _report_md(results, summary, plots, note).encode())
    say(f"reports: {js} and {md}" + (f", {len(plots)} plots" if plots else ""))
    if note:
        say(f"note: {note}")
    return EvalOutcome(results, summary, [js, md, *plots], note)
