"""``tface bench latency`` and ``tface export onnx``, added to the core CLI through its command hook.

Kept import-light: torch, onnx and the models load only when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tface.core.hooks import hookimpl

__all__ = ["tface_register_commands", "latency_cmd", "onnx_cmd"]


def _options(items: tuple[str, ...]) -> dict[str, Any]:
    from tface.core.recipe import parse_value

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--option")
        try:
            out[key.strip()] = parse_value(text.strip())
        except Exception as exc:
            raise click.BadParameter(f"{item!r}: not a TOML value ({exc})", param_hint="--option") from None
    return out


@click.command("latency")
@click.option("--backbones", "-b", default=None, metavar="NAMES",
              help="Comma-separated backbone names (default: the models of TFace's latency table).")
@click.option("--batch", default=1, show_default=True, help="Images per forward pass.")
@click.option("--threads", default=1, show_default=True, help="Intra-op threads for torch and ONNX Runtime.")
@click.option("--input-size", default=112, show_default=True, type=click.Choice(["112", "224"]),
              help="Input resolution.")
@click.option("--onnx", is_flag=True, help="Also time ONNX Runtime (needs tface-backbones[onnx]).")
@click.option("--channels-last", is_flag=True, help="Also time eager with channels-last tensors.")
@click.option("--repeats", default=20, show_default=True, help="Timed forward passes (median reported).")
@click.option("--warmup", default=5, show_default=True, help="Untimed passes first.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results here as JSON (default: latency.json in the current folder).")
def latency_cmd(backbones: str | None, batch: int, threads: int, input_size: str, onnx: bool, channels_last: bool,
                repeats: int, warmup: int, json_path: Path | None) -> None:
    """Parameters, fp32 size, GFLOPs and median latency per backbone, as a Markdown table + JSON."""
    from tface.backbones.latency import TFACE_TABLE, bench_backbone, markdown
    from tface.core import registry

    names = [n.strip() for n in backbones.split(",") if n.strip()] if backbones else list(TFACE_TABLE)
    for name in names:
        registry.resolve("backbones", name)  # unknown names fail before anything is measured
    if onnx:
        import importlib.util

        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise click.ClickException(f"--onnx needs {', '.join(missing)}: pip install \"tface-backbones[onnx]\"")
    results = []
    for name in names:
        click.echo(f"measuring {name} ...", err=True)
        results.append(bench_backbone(name, batch=batch, threads=threads, input_size=int(input_size), onnx=onnx,
                                      channels_last=channels_last, warmup=warmup, repeats=repeats))
    click.echo(markdown(results), nl=False)
    path = json_path or Path("latency.json")
    path.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n", encoding="utf-8")
    click.echo(f"\nwrote {path}", err=True)


@click.command("onnx")
@click.option("--backbone", "-b", required=True, help="Registered backbone name (tface list backbones).")
@click.option("--checkpoint", "-c", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Backbone weights (a state_dict file: a run's checkpoints/backbone.pt, TFace Backbone_*.pth, "
                   "insightface backbone.pth). Without it the weights are random.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX file.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Backbone option as a TOML value (repeatable), e.g. --option embedding_size=256.")
@click.option("--opset", default=18, show_default=True, help="ONNX opset version.")
@click.option("--normalize", is_flag=True, help="Bake the L2 normalisation of the embedding into the graph.")
@click.option("--tolerance", default=1e-4, show_default=True,
              help="Fail when ONNX Runtime and PyTorch differ by more than this (max abs).")
def onnx_cmd(backbone: str, checkpoint: Path | None, out: Path, options: tuple[str, ...], opset: int,
             normalize: bool, tolerance: float) -> None:
    """Export a backbone to ONNX (dynamic batch) and verify it against PyTorch with ONNX Runtime."""
    from tface.backbones.onnx_export import ExportError, export_onnx
    from tface.core import registry
    from tface.core.backbone import backbone_info
    from tface.core.config import ConfigError

    opts = _options(options)
    try:
        model = registry.create("backbones", backbone, **opts)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if checkpoint is not None:
        from tface.core.weights import WeightsError, load_into

        try:
            load_into(model, checkpoint, what=f"backbone {backbone!r}")
        except WeightsError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        click.echo("warning: no --checkpoint: exporting randomly initialised weights", err=True)
    input_size = backbone_info(model, backbone).input_size
    try:
        report = export_onnx(model, out, input_size=input_size, opset=opset, normalize=normalize, tolerance=tolerance)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {report.path} (opset {report.opset}, {report.exporter} exporter, input [batch, 3, "
               f"{input_size}, {input_size}]{', L2-normalised output' if normalize else ''})")
    click.echo(f"  ONNX Runtime vs PyTorch, batches {list(report.batch_sizes)}: max abs diff "
               f"{report.max_abs_diff:.3g} (tolerance {tolerance:g}), outputs up to {report.max_abs_output:.3g}, "
               f"relative {report.relative_diff or 0:.3g}")


@hookimpl
def tface_register_commands(groups: dict[str, Any]) -> None:
    groups["bench"].add_command(latency_cmd)
    groups["export"].add_command(onnx_cmd)
