"""The ``tface`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from tface.core import __version__, registry
from tface.core.backbone import BackboneContractError
from tface.core.config import ConfigError

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Turn known user errors (recipe, registry, a plugin's backbone contract) into one ``Error: ...`` line and
    exit status 1, not a traceback.

    A wrong command line (unknown option, bad option value) stays click's usage error, exit status 2.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ConfigError, registry.RegistryError, BackboneContractError) as exc:
            raise click.ClickException(str(exc)) from exc


class _RootGroup(_Group):
    """The ``tface`` group: plugins add commands through the ``tface_register_commands`` hook on first use.

    Each plugin's hook runs on its own (``hooks.register_commands``), so a broken plugin costs only its own
    commands. The commands are registered again when the installed hook plugins change (tests, notebooks)."""

    _plugins_key: tuple[object, ...] | None = None
    _base_commands: dict[str, dict[str, click.Command]] | None = None

    def _groups(self) -> dict[str, click.Group]:
        return {"tface": self, **{n: c for n, c in self.commands.items() if isinstance(c, click.Group)}}

    def _load_plugin_commands(self) -> None:
        key = tuple(registry.entries("plugins"))
        if key == self._plugins_key:
            return
        from tface.core import hooks

        groups = self._groups()
        if self._base_commands is None:
            self._base_commands = {name: dict(g.commands) for name, g in groups.items()}
        else:  # forget the commands of the previous set of plugins
            for name, group in groups.items():
                if name in self._base_commands:  # a group a plugin brought is its own: dropped, never emptied
                    group.commands.clear()
                    group.commands.update(self._base_commands[name])
        self._plugins_key = key
        hooks.register_commands(hooks.plugin_manager(), self._groups())

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, name)


@click.group(cls=_RootGroup)
@click.version_option(__version__, prog_name="tface")
def cli() -> None:
    """tface: face-recognition training and evaluation with plugins."""


@cli.group("bench", cls=_Group)
def bench_cmd() -> None:
    """Benchmarks contributed by plugins.

    tface-backbones adds `tface bench latency`; any plugin can add more (docs/plugins.md)."""


@cli.group("export", cls=_Group)
def export_cmd() -> None:
    """Model export contributed by plugins.

    `tface export backbone` is built in; tface-backbones adds `tface export onnx`; any plugin can add more
    (docs/plugins.md)."""


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(registry.KINDS))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--no-check", is_flag=True, help="Read metadata only; do not import plugins to check them.")
@click.option("--check", "full_check", is_flag=True,
              help="Import every listed component now (ignore remembered checks); exit status 1 if any is broken.")
def list_cmd(kind: str | None, as_json: bool, no_check: bool, full_check: bool) -> None:
    """List registered components (all kinds, or one KIND) and whether each loads.

    A component is checked by importing it; a passed check is remembered until anything it imported
    changes (docs/plugins.md). Exit status: 0, also when some component is broken; with --check, 1
    when any listed component is broken."""
    from tface.core import hooks, plugincheck

    if no_check and full_check:
        raise click.UsageError("--check and --no-check exclude each other")
    listed = registry.entries(kind)
    known = hooks.problems()  # hook plugins found broken while loading the commands
    checked = {} if no_check else plugincheck.statuses(listed, remembered=not full_check)
    rows = []
    for e in listed:
        rows.append({
            "kind": e.kind,
            "name": e.name,
            "aliases": [*e.aliases, e.qualified],
            "distribution": e.distribution,
            "version": e.version,
            "target": e.target,
            "status": f"broken: {known[e]}" if e in known else checked.get(e, "unchecked"),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no components registered" + (f" for {kind}" if kind else ""))
    else:
        _print_table(rows)
    broken = [r for r in rows if r["status"].startswith("broken")]
    if full_check and broken:
        raise click.ClickException(
            f"{len(broken)} of {len(rows)} listed components are broken: "
            + ", ".join(f"{r['kind']} {r['name']!r} ({r['distribution']})" for r in broken)
        )


def _print_table(rows: list[dict]) -> None:
    cols = ["kind", "name", "distribution", "version", "status"]
    if any(len(r["aliases"]) > 1 for r in rows):  # the last alias is always "dist:name"
        cols.insert(2, "also")
        for r in rows:
            r["also"] = ", ".join(r["aliases"][:-1])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    click.echo("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from tface.core.recipe import check_device

    problem = None if value is None else check_device(value)
    if problem:
        raise click.BadParameter(problem)
    return value


@cli.command("run")
@click.argument("recipe_path", metavar="[RECIPE]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value with a TOML value (repeatable), e.g. --set head.m=0.4")
@click.option("--dry-run", is_flag=True, help="Build every component, print the resolved recipe, and exit.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (default: the recipe's output_dir, else a new runs/<recipe>-<time>). "
                   "It must not exist, or be empty, unless --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Reuse a run folder holding an earlier run: delete the files that run listed in its "
                   "status.json (nothing else), then run.")
@click.option("--resume", "resume_dir", metavar="RUN_DIR", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in RUN_DIR from its last checkpoint, in the same folder. The recipe is "
                   "RUN_DIR's own (or RECIPE); it may differ only in train.max_steps, train.log_every, "
                   "train.checkpoint_every, train.keep_checkpoints (e.g. --set train.max_steps=2000).")
@click.option("--device", callback=_check_device,
              help="auto, cpu, cuda or cuda:N; overrides the recipe's device (distributed: cuda means "
                   "cuda:LOCAL_RANK).")
@click.option("--nproc-per-node", type=click.IntRange(1, 1024), metavar="N",
              help="Train data-parallel in N processes on this machine, started by torch.distributed.run "
                   "(gloo on CPU, NCCL on CUDA). Under torchrun, leave it out: the run joins torchrun's group.")
def run_cmd(recipe_path: Path | None, overrides: tuple[str, ...], dry_run: bool, output_dir: Path | None,
            overwrite: bool, resume_dir: Path | None, device: str | None, nproc_per_node: int | None) -> None:
    """Train, checkpoint, evaluate and report, as RECIPE says; or continue a run: --resume RUN_DIR."""
    from tface.core import recipe as recipe_mod
    from tface.core.allocator import keep_freed_memory
    from tface.core.train import distributed
    from tface.core.train.rundir import RunDirError, check_run_dir
    from tface.core.train.trainer import Trainer, TrainingError, build_components

    if resume_dir is not None:
        clash = [flag for flag, on in (("--output-dir", output_dir), ("--overwrite", overwrite),
                                       ("--dry-run", dry_run)) if on]
        if clash:
            raise click.UsageError(f"--resume continues RUN_DIR in place; drop {' and '.join(clash)}")
        if recipe_path is None:
            recipe_path = resume_dir / "recipe.toml"
            if not recipe_path.is_file():
                raise click.ClickException(f"--resume {resume_dir}: holds no tface run ({recipe_path.name} "
                                           "is missing)")
    elif recipe_path is None:
        raise click.UsageError("name a RECIPE to run, or give --resume RUN_DIR")
    if device is not None:
        overrides = (*overrides, f"device={json.dumps(device)}")
    recipe = recipe_mod.load(recipe_path, overrides)
    if nproc_per_node is not None and not dry_run:
        try:
            launched = distributed.env_ranks() is not None
        except distributed.DistributedError as exc:
            raise click.ClickException(str(exc)) from exc
        if launched:
            raise click.UsageError("--nproc-per-node: this process was started by torchrun (RANK and WORLD_SIZE "
                                   "are set); drop --nproc-per-node and let torchrun start the processes")
        folder = output_dir or recipe.output_dir
        if folder is not None and resume_dir is None:
            try:
                check_run_dir(folder, overwrite, "--output-dir" if output_dir is not None else "output_dir")
            except RunDirError as exc:
                raise click.ClickException(str(exc)) from exc
        worker = ["run", str(recipe_path.resolve())]
        for item in overrides:
            worker += ["--set", item]
        if resume_dir is not None:
            worker += ["--resume", str(resume_dir.resolve())]
        if output_dir is not None:
            worker += ["--output-dir", str(output_dir.resolve())]
        if overwrite:
            worker.append("--overwrite")
        try:
            distributed.launch(nproc_per_node, worker)
        except TrainingError as exc:
            raise click.ClickException(str(exc)) from exc
        return
    if dry_run:
        parts = build_components(recipe)
        parts.check_inputs()
        folder = output_dir or recipe.output_dir
        if folder is not None:
            try:
                check_run_dir(folder, overwrite, "--output-dir" if output_dir is not None else "output_dir")
            except RunDirError as exc:
                raise click.ClickException(str(exc)) from exc
        click.echo(recipe_mod.dumps(recipe).rstrip())
        click.echo("")
        click.echo("# components")
        for line in parts.describe():
            click.echo(f"# {line}")
        return
    keep_freed_memory()
    try:
        Trainer(recipe, resume_dir or output_dir, overwrite=overwrite, resume=resume_dir is not None,
                echo=click.echo).run()
    except distributed.PeerLost as exc:
        if distributed.env_ranks() is None:
            raise click.ClickException(str(exc)) from exc
        # The run has recorded why it failed. Its process group is broken: gloo threads may still wait on the
        # lost peer, and tearing them down at interpreter exit can abort the process (SIGABRT, "terminate
        # called without an active exception") after the error was reported. Leave at once, status 1.
        click.echo(f"Error: {exc}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except (TrainingError, RunDirError) as exc:
        raise click.ClickException(str(exc)) from exc


@export_cmd.command("backbone")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write: the backbone's plain state_dict (for tface eval --checkpoint and export onnx).")
@click.option("--step", type=click.IntRange(min=1), help="Take a checkpoint kept by train.keep_checkpoints "
                                                          "instead of the last one.")
@click.option("--overwrite", is_flag=True, help="Replace FILE when it exists.")
def export_backbone_cmd(run_dir: Path, out: Path, step: int | None, overwrite: bool) -> None:
    """The backbone weights of a run's last checkpoint (also of a run still training) as a plain state_dict."""
    from tface.core.train.errors import TrainingError
    from tface.core.train.state import export_backbone

    try:
        path, saved = export_backbone(run_dir, out, step, overwrite)
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path} (backbone of step {saved})")


@cli.command("eval")
@click.argument("protocol", required=False)
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="A run folder: its recipe.toml gives the backbone and the [[eval]] tables (PROTOCOL replaces "
                   "them), its checkpoints/backbone.pt the weights.")
@click.option("--backbone", help="Registered backbone name (without --run).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Backbone weights (a state_dict, also wrapped or nested); default with --run: "
                   "RUN_DIR/checkpoints/backbone.pt. 'none': the randomly initialised backbone (the baseline).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the random initialisation with --checkpoint none.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A protocol option as a TOML value (repeatable), e.g. --option 'bins=[\"lfw.bin\"]'")
@click.option("--backbone-option", "backbone_options", multiple=True, metavar="KEY=VALUE",
              help="A backbone option as a TOML value (repeatable), e.g. --backbone-option embedding_size=512")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (default: RUN_DIR/eval with --run, else ./eval-<protocol>-<time>).")
@click.option("--label", help="Row name in the benchmark table (default: the run folder or backbone name).")
def eval_cmd(protocol: str | None, run_dir: Path | None, backbone: str | None, checkpoint: Path | None,
             seed: int, options: tuple[str, ...], backbone_options: tuple[str, ...], device: str,
             output_dir: Path | None, label: str | None) -> None:
    """Evaluate a saved backbone: `tface eval PROTOCOL --backbone NAME --checkpoint FILE` or
    `tface eval --run RUN_DIR`. Prints the results table; writes eval-report.json, eval-report.md and plots."""
    from tface.core import evaluate as ev
    from tface.core.allocator import keep_freed_memory
    from tface.core.report import markdown_table

    keep_freed_memory()

    if run_dir is not None:
        if backbone or backbone_options:
            raise click.UsageError("--run takes the backbone from RUN_DIR/recipe.toml; drop --backbone and "
                                   "--backbone-option (or drop --run)")
        if options and protocol is None:
            raise click.UsageError("--option needs a PROTOCOL; with --run alone the recipe's [[eval]] tables are used")
    else:
        if protocol is None:
            raise click.UsageError("name a PROTOCOL (with --backbone and --checkpoint) or give --run RUN_DIR")
        lacking = [flag for flag, value in (("--backbone", backbone), ("--checkpoint", checkpoint)) if not value]
        if lacking:
            raise click.UsageError(f"PROTOCOL needs {' and '.join(lacking)} (or --run RUN_DIR)")
    try:
        if run_dir is not None:
            plan = ev.plan_run(run_dir, checkpoint, protocol, options, output_dir, label)
        else:
            assert protocol is not None and backbone is not None and checkpoint is not None
            weights = None if str(checkpoint) == ev.NO_CHECKPOINT else checkpoint
            plan = ev.plan_adhoc(protocol, backbone, weights, options, backbone_options, output_dir, label)
        plan.seed = seed
        outcome = ev.evaluate(plan, device=device, echo=lambda msg: click.echo(msg, err=True))
    except ev.EvalError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(markdown_table(outcome.results).rstrip())


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--label", "labels", multiple=True,
              help="Row name of each run, in order (repeat once per RUN_DIR; default: the folder names).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write compare.md, compare.json and the plots (one line per run) into this folder.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier comparison in --output-dir (only its files).")
def compare_cmd(run_dirs: tuple[Path, ...], labels: tuple[str, ...], output_dir: Path | None,
                overwrite: bool) -> None:
    """Compare finished runs: `tface compare RUN_A RUN_B`. Prints their last evaluation side by side (benchmark
    table, per-group accuracy with mean/std/SER for RFW-style protocols, every protocol's results)."""
    from tface.core.compare import CompareError, compare_markdown, final_results, write_comparison
    from tface.core.outdir import OutputExistsError

    if labels and len(labels) != len(run_dirs):
        raise click.UsageError(f"--label: give one per RUN_DIR ({len(run_dirs)}), got {len(labels)}")
    names = list(labels) or [d.resolve().name for d in run_dirs]
    if len(set(names)) != len(names):
        raise click.UsageError(f"two runs would share a row name ({', '.join(names)}); name them with --label")
    try:
        results = [r for d, name in zip(run_dirs, names) for r in final_results(d, name)]
    except CompareError as exc:
        raise click.ClickException(str(exc)) from exc
    runs = [str(d) for d in run_dirs]
    if output_dir is not None:
        try:
            files, note = write_comparison(output_dir, results, runs, overwrite=overwrite)
        except OutputExistsError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"wrote {', '.join(str(f) for f in files)}", err=True)
        if note:
            click.echo(note, err=True)
    click.echo(compare_markdown(results, runs).rstrip())


#: ``tface data`` sub-commands: name -> "module:click command", imported only when that command runs.
DATA_COMMANDS = {
    "pack": "tface.core.tools.pack:pack_cmd",
    "reindex": "tface.core.tools.reindex:reindex_cmd",
    "unpack": "tface.core.tools.unpack:unpack_cmd",
    "stats": "tface.core.tools.stats:stats_cmd",
    "verify": "tface.core.tools.verify:verify_cmd",
    "bin": "tface.core.tools.makebin:bin_cmd",
    "subset": "tface.core.tools.subset:subset_cmd",
    "synth": "tface.core.tools.synth:synth_cmd",
}


class _LazyGroup(_Group):
    """A group whose sub-commands live in their own modules, so ``tface data --help`` stays fast."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(n for n in self.lazy if self._available(n))})

    def _available(self, name: str) -> bool:
        import importlib.util

        module = self.lazy[name].partition(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, _, attr = self.lazy[name].partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
                return None
        return super().get_command(ctx, name)


@cli.group("data", cls=_LazyGroup, lazy=DATA_COMMANDS)
def data_cmd() -> None:
    """Data tools: pack, reindex, unpack, stats, verify, bin, subset, synth."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="tface")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
