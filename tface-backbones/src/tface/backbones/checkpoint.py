"""Load backbone weights from TFace, insightface arcface_torch and tface checkpoints, with useful errors.

``torch.load`` + ``load_state_dict`` fails on the usual wrappers (a ``module.`` prefix from DataParallel/DDP,
``_orig_mod.`` from ``torch.compile``, the weights nested under ``state_dict``/``model``/``backbone``) and,
when keys really differ, prints hundreds of names. :func:`load_backbone_state` removes the wrappers, then
either loads or raises :class:`CheckpointMismatchError` with short, counted lists and a hint when the file
is plainly another architecture. Files are read with ``weights_only=True``: a checkpoint is untrusted input.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

__all__ = [
    "NESTED_KEYS",
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadReport",
    "guess_architecture",
    "load_backbone",
    "load_backbone_state",
    "read_state_dict",
]

log = logging.getLogger(__name__)

#: Keys under which training frameworks nest the weights, tried in this order (tface's trainer: ``backbone``).
NESTED_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "backbone", "net")
#: How many names each list in an error message shows before "… and N more".
SHOW = 10
_MAX_NESTING = 3
_WRAPPER_PREFIX = "module."  # DataParallel / DistributedDataParallel
_COMPILE_SEGMENT = "_orig_mod."  # torch.compile's OptimizedModule, wherever it was applied

Shape = tuple[int, ...]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or holds no usable state_dict; the message names the file."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the model; attributes hold the full lists."""

    def __init__(
        self,
        message: str,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[tuple[str, Shape, Shape]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)


@attrs.frozen
class LoadReport:
    """What :func:`load_backbone_state` did. ``mismatched`` items are ``(key, checkpoint shape, model shape)``."""

    source: str
    loaded: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, Shape, Shape], ...] = ()
    nested_key: str | None = None
    stripped: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        """True when every model tensor came from the checkpoint and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)


def _describe_source(source: str | os.PathLike | Mapping[str, Any]) -> str:
    return "<in-memory state_dict>" if isinstance(source, Mapping) else str(Path(source))


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _read_file(path: Path) -> Any:
    """``torch.load`` on CPU with ``weights_only``; turn refusals and corrupt files into one clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True){what}. The file pickles Python objects, not just "
            "tensors (e.g. a whole model saved with torch.save(model)). Only load it if you trust it, then re-save "
            "its weights with torch.save(model.state_dict(), path)."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def _unwrap(obj: Any, name: str, key: str | None) -> tuple[Mapping[str, Any], str | None]:
    """Return the state_dict inside ``obj`` and the dotted path of nesting keys followed (None at top level)."""
    path: list[str] = []
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = _short([repr(k) for k in obj]) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{name}: no entry {key!r} at the top level (found: {found})")
        obj, path = obj[key], [key]
    for _ in range(_MAX_NESTING + 1):
        if not isinstance(obj, Mapping):
            where = f" under {'.'.join(path)!r}" if path else ""
            raise CheckpointError(
                f"{name}: expected a state_dict (a mapping of names to tensors){where}, found {type(obj).__name__}"
            )
        if _is_state_dict(obj):
            break
        nested = next((k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None or len(path) >= _MAX_NESTING:
            break
        obj = obj[nested]
        path.append(nested)
    bad = [(k, v) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if not obj or bad:
        where = f" under {'.'.join(path)!r}" if path else ""
        detail = "it is empty" if not obj else "non-tensor values: " + _short(
            [f"{k!r} ({type(v).__name__})" for k, v in bad], quote=False
        )
        raise CheckpointError(
            f"{name}: no state_dict found{where}: {detail}. Weights are looked for at the top level or under "
            f"one of {', '.join(NESTED_KEYS)}; pass key=... to choose another entry."
        )
    return obj, ".".join(path) or None


def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Drop ``_orig_mod.`` segments anywhere and a ``module.`` prefix shared by every key."""
    stripped: list[str] = []
    out = dict(sd)
    if any(_COMPILE_SEGMENT in k for k in out):
        out = {_remove_compile_segments(k): v for k, v in out.items()}
        stripped.append(_COMPILE_SEGMENT)
    while out and all(k.startswith(_WRAPPER_PREFIX) for k in out):
        out = {k[len(_WRAPPER_PREFIX):]: v for k, v in out.items()}
        stripped.append(_WRAPPER_PREFIX)
    return out, tuple(stripped)


def _remove_compile_segments(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "_orig_mod")


def read_state_dict(
    source: str | os.PathLike | Mapping[str, Any], *, key: str | None = None
) -> tuple[dict[str, torch.Tensor], str | None, tuple[str, ...]]:
    """The plain state_dict in ``source`` (a path or a mapping), the nesting key used and the prefixes removed."""
    name = _describe_source(source)
    obj = source if isinstance(source, Mapping) else _read_file(Path(source))
    sd, nested = _unwrap(obj, name, key)
    out, stripped = _strip_wrappers(sd)
    return out, nested, stripped


def _unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose keys a checkpoint uses: inside DataParallel/DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


# --- architecture guessing (for hints) -----------------------------------------------------------------------


def _stage_counts(keys: Iterable[str], pattern: str) -> tuple[int, ...]:
    counts: dict[int, set[int]] = {}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return tuple(len(counts[i]) for i in sorted(counts))


def guess_architecture(keys: Iterable[str]) -> str | None:
    """Name the backbone family (and depth) a set of state_dict keys belongs to, or None if unknown."""
    from tface.backbones import iresnet, irse, resnet  # local: only needed when something went wrong

    keys = set(keys)
    if "conv_6_sep.conv.weight" in keys and "output_layer.conv_6_dw.conv.weight" in keys:
        return "TFace MobileFaceNet (factory mobilefacenet)"
    if any(k.startswith("input_layer.") for k in keys) and any(k.startswith("body.") for k in keys):
        n = 1 + max((int(k.split(".")[1]) for k in keys if re.match(r"body\.\d+\.", k)), default=-1)
        se = any(".se_block." in k for k in keys)
        depth = next((d for d, u in irse.UNITS.items() if sum(u) == n and d != 101), None)
        kind = "IR_SE" if se else "IR"
        if depth is None:
            return f"TFace {kind} with {n} units (input_layer.*, body.*)"
        factory = f"irse.build_ir({depth}{', se=True' if se else ''})"
        return f"TFace {kind}_{depth} (input_layer.*, body.*; {factory})"
    if "bn_o1.weight" in keys and "layer1.0.conv3.weight" in keys:
        layers = _stage_counts(keys, r"layer(\d)\.(\d+)\.")
        depth = next((d for d, u in resnet.LAYERS.items() if u == layers), None)
        return f"TFace ResNet_{depth} (factory resnet_{depth})" if depth else f"TFace ResNet with blocks {layers}"
    if "prelu.weight" in keys and "layer1.0.prelu.weight" in keys and "conv1.weight" in keys:
        units = _stage_counts(keys, r"layer(\d)\.(\d+)\.")
        depth = next((d for d, u in iresnet.UNITS.items() if u == units), None)
        if depth is None:
            return f"insightface iResNet with units {units} (conv1.*, layer1-4.*)"
        return f"insightface arcface_torch iResNet r{depth} (conv1.*, layer1-4.*; factory iresnet_{depth})"
    return None


def _hints(
    ckpt_keys: Iterable[str], model_keys: Iterable[str], mismatched: list[tuple[str, Shape, Shape]]
) -> list[str]:
    ckpt_keys, model_keys = list(ckpt_keys), list(model_keys)
    ckpt_arch, model_arch = guess_architecture(ckpt_keys), guess_architecture(model_keys)
    hints = []
    if ckpt_arch != model_arch and (ckpt_arch or model_arch):
        hints.append(
            f"the checkpoint looks like {ckpt_arch or 'an unknown architecture'}, "
            f"but the model is {model_arch or 'an unknown architecture'}"
        )
    elif not set(ckpt_keys) & set(model_keys):
        tops_c = sorted({k.split(".")[0] for k in ckpt_keys})
        tops_m = sorted({k.split(".")[0] for k in model_keys})
        hints.append(f"no key in common; checkpoint modules: {_short(tops_c)}; model modules: {_short(tops_m)}")
    for key, c_shape, m_shape in mismatched:
        if len(c_shape) == 2 and len(m_shape) == 2 and key.endswith("weight"):
            if c_shape[0] != m_shape[0]:
                hints.append(f"{key}: the checkpoint's embedding size is {c_shape[0]} (model {m_shape[0]}); "
                             f"pass embedding_size={c_shape[0]}")
            if c_shape[1] != m_shape[1]:
                hints.append(f"{key}: {c_shape[1]} input features vs {m_shape[1]}; the checkpoint was probably "
                             "trained at another input_size")
    return hints


# --- loading ---------------------------------------------------------------------------------------------------


def _short(items: list[str], limit: int = SHOW, quote: bool = False) -> str:
    shown = [repr(i) if quote else str(i) for i in items[:limit]]
    more = f", … and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(shown) + more


def _fmt(shape: Shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _mismatch_message(
    name: str,
    model: nn.Module,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, Shape, Shape]],
    hints: list[str],
) -> str:
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape-mismatched keys"
    lines = [f"{name} does not match {type(model).__name__}: {counts}"]
    if missing:
        lines.append(f"  missing from the checkpoint ({len(missing)}): {_short(missing)}")
    if unexpected:
        lines.append(f"  unexpected in the checkpoint ({len(unexpected)}): {_short(unexpected)}")
    if mismatched:
        shown = [f"{k} checkpoint {_fmt(c)} vs model {_fmt(m)}" for k, c, m in mismatched]
        lines.append(f"  shape mismatch ({len(mismatched)}): {_short(shown)}")
    lines.extend(f"  hint: {h}" for h in hints)
    return "\n".join(lines)


def load_backbone_state(
    model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *, strict: bool = True, key: str | None = None
) -> LoadReport:
    """Load the weights in ``source`` (a checkpoint path or a mapping) into ``model``.

    Unwraps ``state_dict``/``model``/``backbone``… nesting (or the entry named by ``key``), strips the
    ``module.`` and ``_orig_mod.`` wrapper prefixes, then checks keys and shapes *before* touching the model.
    With ``strict=True`` any difference raises :class:`CheckpointMismatchError` and the model is unchanged;
    with ``strict=False`` the matching tensors are loaded and the rest is reported. A missing BatchNorm
    ``num_batches_tracked`` counter is not a difference: it holds no weights, and PyTorch itself fills it in
    for legacy state_dicts.
    """
    name = _describe_source(source)
    sd, nested, stripped = read_state_dict(source, key=key)
    target = _unwrap_model(model)
    own = target.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if k in own and v.shape != own[k].shape
    ]
    if strict and (missing or unexpected or mismatched):
        hints = _hints(sd, own, mismatched)
        raise CheckpointMismatchError(
            _mismatch_message(name, target, missing, unexpected, mismatched, hints), missing, unexpected, mismatched
        )
    bad = {k for k, _, _ in mismatched}
    usable = {k: v for k, v in sd.items() if k in own and k not in bad}
    result = target.load_state_dict(usable, strict=False)
    expected_missing = set(missing) | bad
    left = [k for k in result.missing_keys if k not in expected_missing and not k.endswith(".num_batches_tracked")]
    if left or result.unexpected_keys:  # our pre-check and PyTorch's own must agree
        raise CheckpointMismatchError(
            _mismatch_message(name, target, left, list(result.unexpected_keys), [], []), left, result.unexpected_keys
        )
    return LoadReport(
        source=name,
        loaded=len(usable),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        mismatched=tuple(mismatched),
        nested_key=nested,
        stripped=stripped,
    )


def load_backbone(
    name: str, path: str | os.PathLike, *, strict: bool = True, key: str | None = None, **options: Any
) -> nn.Module:
    """Create backbone ``name`` through the registry (options validated by its Config) and load ``path``.

    With ``strict=False`` whatever did not load is logged as a warning; call :func:`load_backbone_state`
    directly to get the :class:`LoadReport`.
    """
    from tface.core import registry

    model = registry.create("backbones", name, **options)
    report = load_backbone_state(model, path, strict=strict, key=key)
    if not report.exact:
        log.warning(
            "%s: loaded %d tensors into backbone %r; %d missing, %d unexpected, %d with another shape",
            report.source, report.loaded, name, len(report.missing), len(report.unexpected), len(report.mismatched),
        )
    return model
