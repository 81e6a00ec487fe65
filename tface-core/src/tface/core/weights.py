"""The one reader and loader of weights files.

``tface eval``, ``tface export onnx``, tface-backbones' ``load_backbone`` and the trainer all load weights
through :func:`load_into`, so a file that one of them accepts the others accept too.

A checkpoint is untrusted input: it is read with ``torch.load(weights_only=True)`` onto the CPU, so it
cannot run code and a GPU-saved file loads anywhere. Accepted layouts:

* a plain state_dict (parameter name → tensor), or one nested up to three levels deep under the first of
  :data:`NESTED_KEYS` that holds a mapping (TFace's and insightface's files, ``{"state_dict": ..., "epoch":
  ...}``, tface's own run checkpoint ``last.pt``, which keeps the backbone under ``backbone``), or under the
  entry named by ``key``;
* wrapper names in the keys: every ``_orig_mod.`` segment (``torch.compile``, wherever it was applied) and
  a ``module.`` prefix shared by every key (DataParallel/DDP). A wrapped *model* is unwrapped likewise.

Keys and shapes are compared before the model is touched: a strict load that does not fit raises
:class:`WeightsMismatchError` naming the file, the missing, unexpected and mis-shaped keys, with hints (plugins
add architecture hints through the ``tface_weights_hint`` hook), and leaves the model as it was; a non-strict
load copies what fits and returns a :class:`LoadReport` of what did not.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

__all__ = [
    "NESTED_KEYS",
    "LoadReport",
    "Weights",
    "WeightsError",
    "WeightsMismatchError",
    "load_into",
    "read_file",
    "read_weights",
    "strip_wrappers",
    "unwrap_model",
]

#: Keys under which training scripts nest the weights, tried in this order. ``backbone`` comes before
#: ``model``: a file with both most likely keeps the whole network (backbone and head) under ``model``.
NESTED_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "backbone", "model", "net")
#: How many names each list in an error message shows before "… and N more".
SHOW = 10
_MAX_NESTING = 3
_DDP_PREFIX = "module."
_COMPILE_SEGMENT = "_orig_mod"

Shape = tuple[int, ...]


class WeightsError(ValueError):
    """A weights file that cannot be read or holds no usable state_dict; the message starts with the file."""


class WeightsMismatchError(WeightsError):
    """The weights do not fit the model; the attributes hold the full lists (the message shows the first few)."""

    def __init__(self, message: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 mismatched: Iterable[tuple[str, Shape, Shape]] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)


@attrs.frozen
class Weights:
    """What :func:`read_weights` found: the plain state_dict and how it was unwrapped."""

    state_dict: dict[str, torch.Tensor]
    #: The file (or ``<in-memory state_dict>``), as error messages name it.
    source: str
    #: The dotted path of nesting keys followed (``"model.state_dict"``), None at the top level.
    nested_key: str | None = None
    #: Wrapper names removed from the keys, e.g. ``("_orig_mod.", "module.")``.
    stripped: tuple[str, ...] = ()
    #: The training step an enclosing level records (``{"step": 7, "backbone": ...}``), else None.
    step: int | None = None


@attrs.frozen
class LoadReport:
    """What :func:`load_into` did. ``mismatched`` items are ``(key, checkpoint shape, model shape)``."""

    source: str
    loaded: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, Shape, Shape], ...] = ()
    nested_key: str | None = None
    stripped: tuple[str, ...] = ()
    step: int | None = None

    @property
    def exact(self) -> bool:
        """True when every model tensor came from the checkpoint and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line: how many tensors loaded and, by kind, what did not (for logs and warnings)."""
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        parts += _difference_parts(list(self.missing), list(self.unexpected), list(self.mismatched))
        return "; ".join(parts)


# --- reading ------------------------------------------------------------------------------------------------


def _describe(source: str | os.PathLike | Mapping[str, Any]) -> str:
    return "<in-memory state_dict>" if isinstance(source, Mapping) else str(Path(source))


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _short(items: Sequence[str], limit: int = SHOW) -> str:
    more = f", … and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more


def _load_file(path: Path) -> Any:
    """``torch.load`` on CPU with ``weights_only``; refusals and corrupt files become one clear error."""
    if not path.is_file():
        raise WeightsError(f"{path}: {'is not a file' if path.exists() else 'no such file'}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" not in text:  # not a pickle torch can read at all (junk, another format)
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
            first = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
            raise WeightsError(f"{path}: not a readable PyTorch checkpoint (UnpicklingError: {first})") from exc
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" (it references {found.group(1)})" if found else ""
        raise WeightsError(
            f"{path}: refused by torch.load(weights_only=True){what}: the file pickles Python objects, not just "
            "tensors (e.g. a whole model saved with torch.save(model)); only if you trust it, load it yourself and "
            "re-save its weights with torch.save(model.state_dict(), path)") from exc
    except Exception as exc:  # truncated, not a torch file, unreadable: torch raises many types
        first = (str(exc).strip().splitlines() or [""])[0]
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {first})") from exc


def read_file(path: str | os.PathLike) -> Any:
    """The whole content of a weights file (``weights_only``), for callers that pick entries themselves."""
    return _load_file(Path(path))


def _step_of(obj: Mapping[str, Any]) -> int | None:
    step = obj.get("step")
    return int(step) if isinstance(step, int) and not isinstance(step, bool) else None


def _unwrap(obj: Any, name: str, key: str | None) -> tuple[Mapping[str, Any], str | None, int | None]:
    """The state_dict inside ``obj``, the dotted nesting path followed and the step an enclosing level records."""
    path: list[str] = []
    step = None
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = _short([repr(k) for k in obj]) if isinstance(obj, Mapping) else type(obj).__name__
            raise WeightsError(f"{name}: no entry {key!r} at the top level (found: {found})")
        step = _step_of(obj)
        obj, path = obj[key], [key]
    for _ in range(_MAX_NESTING + 1):
        if not isinstance(obj, Mapping):
            where = f" under {'.'.join(path)!r}" if path else ""
            raise WeightsError(f"{name}: expected a state_dict (a mapping of names to tensors){where}, "
                               f"found {type(obj).__name__}")
        if _is_state_dict(obj):
            break
        nested = next((k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None or len(path) >= _MAX_NESTING:
            break
        step = _step_of(obj) if _step_of(obj) is not None else step
        obj = obj[nested]
        path.append(nested)
    bad = [(k, v) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if not obj or bad:
        where = f" under {'.'.join(path)!r}" if path else ""
        detail = "it is empty" if not obj else "non-tensor values: " + _short(
            [f"{k!r} ({type(v).__name__})" for k, v in bad])
        raise WeightsError(f"{name}: no state_dict found{where}: {detail}; weights are looked for at the top level "
                           f"or under one of {', '.join(NESTED_KEYS)} (in Python, key=... chooses another entry)")
    return obj, ".".join(path) or None, step


def strip_wrappers(sd: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Drop ``_orig_mod`` segments anywhere and a ``module.`` prefix shared by every key (repeatedly)."""
    stripped: list[str] = []
    out = dict(sd)
    if any(_COMPILE_SEGMENT in k.split(".") for k in out):
        out = {".".join(p for p in k.split(".") if p != _COMPILE_SEGMENT): v for k, v in out.items()}
        stripped.append(_COMPILE_SEGMENT + ".")
    while out and all(k.startswith(_DDP_PREFIX) for k in out):
        out = {k[len(_DDP_PREFIX):]: v for k, v in out.items()}
        stripped.append(_DDP_PREFIX)
    return out, tuple(stripped)


def read_weights(source: str | os.PathLike | Mapping[str, Any], *, key: str | None = None) -> Weights:
    """The plain state_dict in ``source`` (a file or an in-memory mapping), nesting and wrapper names undone.

    Raises :class:`WeightsError` (naming the file) for a missing, unreadable or refused file and for content
    that holds no state_dict.
    """
    name = _describe(source)
    obj = source if isinstance(source, Mapping) else _load_file(Path(source))
    sd, nested, step = _unwrap(obj, name, key)
    out, stripped = strip_wrappers(sd)
    return Weights(out, name, nested, stripped, step)


# --- loading ------------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose keys a checkpoint uses: inside DataParallel/DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _fmt(shape: Shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _difference_parts(missing: list[str], unexpected: list[str],
                      mismatched: list[tuple[str, Shape, Shape]]) -> list[str]:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_short(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
    if mismatched:
        shown = [f"{k} (checkpoint {_fmt(c)}, model {_fmt(m)})" for k, c, m in mismatched]
        parts.append(f"{len(mismatched)} of another shape: {_short(shown)}")
    return parts


def _plugin_hints(keys: list[str], model: nn.Module) -> list[str]:
    """What ``tface_weights_hint`` implementations say; one that raises is skipped with a warning."""
    from tface.core import registry
    from tface.core.hooks import plugin_manager

    hints = []
    kwargs = {"keys": keys, "model": model}
    for impl in reversed(plugin_manager().hook.tface_weights_hint.get_hookimpls()):  # pluggy's call order
        try:
            hint = impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception as exc:  # a hint must never hide the error it explains
            registry.warn_once(f"hook plugin {impl.plugin_name!r}: tface_weights_hint raised "
                               f"{type(exc).__name__}: {exc}")
            continue
        if isinstance(hint, str) and hint.strip():
            hints.append(" ".join(hint.split()))
    return hints


def _hints(ckpt_keys: list[str], model: nn.Module, own: Mapping[str, torch.Tensor],
           mismatched: list[tuple[str, Shape, Shape]]) -> list[str]:
    hints = _plugin_hints(ckpt_keys, model)
    if not hints and not set(ckpt_keys) & set(own):
        tops_c = sorted({k.split(".")[0] for k in ckpt_keys})
        tops_m = sorted({k.split(".")[0] for k in own})
        hints.append(f"no key in common; checkpoint modules: {_short(tops_c)}; model modules: {_short(tops_m)}")
    size = getattr(model, "embedding_size", None)  # the backbone contract (tface.core.backbone)
    for key, c_shape, m_shape in mismatched:
        if len(c_shape) != 2 or len(m_shape) != 2 or not key.endswith("weight") or m_shape[0] != size:
            continue
        if c_shape[0] != m_shape[0]:
            hints.append(f"{key}: the checkpoint's embedding size is {c_shape[0]} (model {m_shape[0]}); "
                         f"pass embedding_size={c_shape[0]}")
        if c_shape[1] != m_shape[1]:
            hints.append(f"{key}: {c_shape[1]} input features vs {m_shape[1]}; the checkpoint was probably trained "
                         "at another input_size")
    return hints


def load_into(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *, strict: bool = True,
              key: str | None = None, what: str | None = None) -> LoadReport:
    """Load the weights in ``source`` (a file or an in-memory mapping) into ``model``.

    ``strict=True`` (the default): any missing, unexpected or mis-shaped key raises
    :class:`WeightsMismatchError` and the model is unchanged. ``strict=False``: every tensor whose key and
    shape fit is copied, and the returned report lists the rest (fine-tuning from another head or size).
    A missing BatchNorm ``num_batches_tracked`` is no difference: it is a counter, and PyTorch fills it in.
    ``what`` names the model in messages (default: its class), e.g. ``"backbone 'ir_50'"``.
    """
    weights = read_weights(source, key=key)
    sd = weights.state_dict
    target = unwrap_model(model)
    own = target.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items()
                  if k in own and v.shape != own[k].shape]
    label = f"{what} ({type(target).__name__})" if what else type(target).__name__
    if strict and (missing or unexpected or mismatched):
        parts = _difference_parts(missing, unexpected, mismatched)
        parts += [f"hint: {h}" for h in _hints(list(sd), target, own, mismatched)]
        raise WeightsMismatchError(f"{weights.source} does not fit {label}: " + "; ".join(parts),
                                   missing, unexpected, mismatched)
    bad = {k for k, _, _ in mismatched}
    usable = {k: v for k, v in sd.items() if k in own and k not in bad}
    try:
        result = target.load_state_dict(usable, strict=False)
    except RuntimeError as exc:  # e.g. a dtype torch cannot copy
        raise WeightsError(f"{weights.source}: cannot be copied into {label}: "
                           f"{' '.join(str(exc).split())}") from exc
    left = [k for k in result.missing_keys if k not in set(missing) | bad and not k.endswith("num_batches_tracked")]
    if left or result.unexpected_keys:  # our pre-check and PyTorch's own must agree
        raise WeightsMismatchError(f"{weights.source} does not fit {label}: "
                                   + "; ".join(_difference_parts(left, list(result.unexpected_keys), [])),
                                   left, result.unexpected_keys)
    return LoadReport(source=weights.source, loaded=len(usable), missing=tuple(missing),
                      unexpected=tuple(unexpected), mismatched=tuple(mismatched), nested_key=weights.nested_key,
                      stripped=weights.stripped, step=weights.step)
