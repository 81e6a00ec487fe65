"""``tface quality score`` and ``tface quality labels``, added to the core CLI through its command hook
(``tface.plugins`` entry point ``quality-commands``).

Kept import-light: torch and the models load only when a command runs (``tface --help`` imports no torch).
"""

from __future__ import annotations

from pathlib import Path

import click

from tface.core.hooks import hookimpl

__all__ = ["labels_cmd", "quality_group", "score_cmd", "tface_register_commands"]


def _device(name: str):  # noqa: ANN202 - torch.device, imported lazily
    from tface.core.evaluate import EvalError, resolve_device

    try:
        return resolve_device(name)
    except EvalError as exc:
        raise click.ClickException(str(exc)) from None


def _options(items: tuple[str, ...], flag: str) -> dict:
    from tface.core.evaluate import parse_options

    return parse_options(items, flag)


@click.group("quality")
def quality_group() -> None:
    """Face image quality (tface-quality): score images, make SDD-FIQA pseudo labels."""


@click.command("score")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A quality_regression run folder: its recipe.toml and checkpoints/last.pt give the model.")
@click.option("--backbone", default=None, metavar="NAME", help="The quality model's backbone (without --run).")
@click.option("--backbone-option", "backbone_options", multiple=True, metavar="KEY=VALUE",
              help="A backbone option as a TOML value (repeatable), e.g. --backbone-option input_size=112")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The backbone's weights (a run's last.pt works); with --run: another checkpoint of the run.")
@click.option("--head", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The quality head's weights (default: --checkpoint, which must then hold it).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 65536))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
def score_cmd(images: tuple[Path, ...], run_dir: Path | None, backbone: str | None,
              backbone_options: tuple[str, ...], checkpoint: Path | None, head: Path | None, batch_size: int,
              device: str) -> None:
    """Print `path<TAB>quality` for each of IMAGES (higher = better; SDD-FIQA's scale is about 0-100).

    Images are decoded by tface's decoder and, when not the model's input size, resized on the short side and
    centre-cropped (aligned face crops are expected).
    """
    from tface.quality import tools

    if run_dir is not None and (backbone is not None or backbone_options or head is not None):
        raise click.UsageError("--run takes the model from the run folder: drop --backbone, --backbone-option "
                               "and --head (--checkpoint picks another checkpoint of the run)")
    try:
        model, quality = tools.load_quality_model(run_dir=run_dir, backbone=backbone,
                                                  backbone_options=_options(backbone_options, "--backbone-option"),
                                                  checkpoint=checkpoint, head=head)
        for path, score in tools.score_files(model, quality, images, device=_device(device), batch_size=batch_size):
            click.echo(f"{path}\t{score:.4f}")
    except tools.QualityToolError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("labels")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--recognizer", required=True, metavar="NAME", help="The recognition backbone (a registered name).")
@click.option("--recognizer-option", "recognizer_options", multiple=True, metavar="KEY=VALUE",
              help="A recogniser option as a TOML value (repeatable).")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The recogniser's weights.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The path<TAB>score file to write (the quality_list source's input).")
@click.option("--k", "k", default=24, show_default=True, type=click.IntRange(1, 10_000),
              help="Positive and negative similarities per image and round (TFace: 24).")
@click.option("--rounds", default=12, show_default=True, type=click.IntRange(1, 1000), help="TFace: 12.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--flip/--no-flip", default=False, show_default=True,
              help="Embed image + mirror (TFace's feature extraction does not).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 65536))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def labels_cmd(source: Path, recognizer: str, recognizer_options: tuple[str, ...], checkpoint: Path, out: Path,
               k: int, rounds: int, seed: int, flip: bool, batch_size: int, device: str, overwrite: bool) -> None:
    """SDD-FIQA pseudo quality labels of SOURCE's images, written to --out as `path<TAB>score` (0-100).

    SOURCE is an identity folder (root/<identity>/<image>) or an image list (`path<TAB>label`, or paths whose
    parent folder names the identity); every identity needs at least 2 images.
    """
    from tface.quality import tools

    try:
        model = tools.load_backbone(recognizer, _options(recognizer_options, "--recognizer-option"), checkpoint,
                                    what="recognizer")
        path, labels = tools.pseudo_label_files(source, model, out, k=k, rounds=rounds, seed=seed, flip=flip,
                                                device=_device(device), batch_size=batch_size, overwrite=overwrite,
                                                echo=lambda m: click.echo(m, err=True))
    except tools.QualityToolError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}: {labels.numel()} labels, mean {float(labels.mean()):.2f}, "
               f"min {float(labels.min()):.2f}, max {float(labels.max()):.2f}")


@hookimpl
def tface_register_commands(groups):
    root = groups["tface"]
    existing = root.commands.get("quality")
    group = existing if isinstance(existing, click.Group) else quality_group  # another plugin's group: join it
    group.add_command(score_cmd)  # every time: the CLI registers commands again when plugins change
    group.add_command(labels_cmd)
    if group is quality_group:
        root.add_command(quality_group)
