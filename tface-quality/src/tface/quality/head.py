"""SDD-FIQA's quality regression head, how its weights are found, and scoring images with it.

TFace's quality model (``use_type = "Qua"``) is the recognition trunk with a regression head on its last feature
map: ``Flatten(C×7×7) → PReLU(C·49) → Dropout(0.5) → Linear(C·49 → 1)``. :class:`QualityHead` is that head,
with its tensors under TFace's names (``quality.1.weight`` for the PReLU, ``quality.3.*`` for the linear layer),
preceded by an adaptive average pool to ``map_size × map_size`` (ours): the head's size is then known from the
backbone's declared ``feature_channels`` alone, before any forward pass, so it exists before the optimiser is
built. At the 112-pixel input of IR and MobileFaceNet the map is already 7 × 7 and the pool is the identity.

The head is not part of the backbone's ``state_dict`` (``backbone.pt`` stays the recognition layout): a run keeps
it in its checkpoints under ``method.quality``. :func:`load_quality_head` reads it from a run checkpoint, a head
file, or a TFace SDD-FIQA checkpoint (its ``quality.*`` tensors).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tface.core.attached import attach, attached
from tface.core.backbone import BackboneInfo, backbone_info, forward_features
from tface.core.frozen import Frozen
from tface.core.weights import WeightsError, load_into, read_file, read_weights, strip_wrappers

__all__ = ["DEFAULT_MAP_SIZE", "HEAD_KEY", "QualityHead", "attach_head", "attached_head", "embeddings", "fit_crops",
           "load_quality_head", "quality_scores", "unfreeze"]

#: TFace's map side at 112 pixels (IR, MobileFaceNet): the pool's output side by default.
DEFAULT_MAP_SIZE = 7
#: The key a run checkpoint keeps the head under: ``checkpoint["method"][HEAD_KEY]``.
HEAD_KEY = "quality"


class QualityHead(nn.Module):
    """Feature map ``[N, C, h, w]`` → quality ``[N]`` (unbounded; trained on 0–100 targets).

    ``AdaptiveAvgPool2d(map_size) → Flatten → PReLU(C·s²) → Dropout(dropout) → Linear(C·s² → 1)``: TFace's head
    after a pool that fixes its size (see the module docstring). The PReLU has one slope per flattened element, as
    TFace's ``PReLU(25088)``.
    """

    def __init__(self, channels: int, map_size: int = DEFAULT_MAP_SIZE, dropout: float = 0.5):
        super().__init__()
        if channels < 1 or map_size < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"QualityHead needs channels >= 1, map_size >= 1 and dropout in [0, 1), got {channels}, "
                             f"{map_size}, {dropout}")
        self.channels, self.map_size = int(channels), int(map_size)
        width = self.channels * self.map_size**2
        self.pool = nn.AdaptiveAvgPool2d(self.map_size)
        self.quality = nn.Sequential(nn.Flatten(), nn.PReLU(width), nn.Dropout(dropout), nn.Linear(width, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4 or features.shape[1] != self.channels:
            raise ValueError(f"QualityHead expects a feature map [N, {self.channels}, h, w], got "
                             f"{list(features.shape)}")
        return self.quality(self.pool(features)).squeeze(1)


# --- the head a quality_regression run trains, found from its backbone (in-run evaluation) ---------------

#: The key the head is attached under (tface.core.attached: weak, outside the backbone, found through wrappers).
QUALITY = "quality"


def attach_head(backbone: nn.Module, head: QualityHead) -> None:
    """Record that ``head`` scores ``backbone``'s feature maps, so the ``evrc`` protocol finds it during a run.

    A protocol receives only the backbone; the backbone's own ``state_dict`` and attributes stay untouched.
    """
    attach(backbone, QUALITY, head)


def attached_head(model: nn.Module) -> QualityHead | None:
    """The head :func:`attach_head` recorded for ``model`` (or for the module inside a wrapper), else None."""
    head = attached(model, QUALITY)
    return head if isinstance(head, QualityHead) else None


# --- reading a head -----------------------------------------------------------------------------------------


def _head_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The head's tensors in ``path``: a run checkpoint's ``method.quality``, a head state_dict, or the
    ``quality.*`` tensors of a file holding a whole TFace quality model."""
    obj = read_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("method"), Mapping):
        modules = obj["method"]
        if HEAD_KEY not in modules:
            raise WeightsError(f"{path}: a run checkpoint without a quality head (its method modules: "
                               f"{', '.join(map(str, modules)) or 'none'}); is it a quality_regression run?")
        sd, _ = strip_wrappers(modules[HEAD_KEY])
        return sd
    sd = read_weights(obj).state_dict
    if any(not k.startswith("quality.") for k in sd):
        picked = {k: v for k, v in sd.items() if k.startswith("quality.")}
        if not picked:
            raise WeightsError(f"{path}: no quality head in it (no tensors named quality.*; found e.g. "
                               f"{', '.join(list(sd)[:3])})")
        return picked
    return sd


def load_quality_head(path: str | os.PathLike, channels: int, dropout: float = 0.5) -> QualityHead:
    """A :class:`QualityHead` for ``channels``-channel maps with the weights in ``path`` (see :func:`_head_state`).

    The map size is read off the linear layer's width (``channels · s²``); a file that does not fit raises
    :class:`~tface.core.weights.WeightsError` naming it.
    """
    sd = _head_state(path)
    weight = sd.get("quality.3.weight")
    if weight is None or weight.dim() != 2 or weight.shape[0] != 1:
        raise WeightsError(f"{path}: no quality head in it (expected quality.3.weight of shape [1, C·s²])")
    cells, rest = divmod(int(weight.shape[1]), channels)
    side = math.isqrt(cells)
    if rest or side * side != cells or side < 1:
        raise WeightsError(f"{path}: its quality head takes {int(weight.shape[1])} inputs, which is not "
                           f"{channels} channels × s² for any map side s (does it belong to this backbone?)")
    head = QualityHead(channels, side, dropout)
    load_into(head, sd, what=f"quality head from {path}")
    return head


# --- scoring ------------------------------------------------------------------------------------------------


def unfreeze(model: nn.Module) -> nn.Module:
    """The module inside a :class:`~tface.core.frozen.Frozen` (a component reference built ``frozen``)."""
    return model.module if isinstance(model, Frozen) else model


def fit_crops(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` → ``[N, 3, size, size]``: unchanged at that size, else resized on the short side
    (bicubic) and centre-cropped, as tface-eval's verification prepares ``.bin`` crops."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    new_h, new_w = (size * h // w, size) if h > w else (size, size * w // h)
    out = F.interpolate(images.float(), size=(new_h, new_w), mode="bicubic", align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return out[..., top : top + size, left : left + size]


class _EvalModes:
    """Every submodule of the given modules in evaluation mode for the block; each one's own flag restored after
    (a protocol runs between training steps, and the trainer re-enables training on the backbone only)."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self) -> None:
        self.saved = [(m, m.training) for root in self.modules for m in root.modules()]
        for root in self.modules:
            root.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.saved:
            m.training = mode


def quality_scores(model: nn.Module, head: nn.Module, images: Sequence[torch.Tensor] | torch.Tensor, *,
                   device: torch.device | str = "cpu", batch_size: int = 64,
                   info: BackboneInfo | None = None) -> torch.Tensor:
    """Quality of each uint8 ``[3, H, W]`` image: ``head(feature map of model)``, float64 ``[N]`` on the CPU.

    Images are fitted to the model's input (:func:`fit_crops`) and normalised with its mean/std; both modules run
    in evaluation mode without gradient (their modes are restored afterwards).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inner = unfreeze(model)
    info = info or backbone_info(inner)
    device = torch.device(device)
    out = torch.empty(len(images), dtype=torch.float64)
    with _EvalModes(inner, head), torch.no_grad():
        for lo in range(0, len(images), batch_size):
            chunk = [fit_crops(im[None], info.input_size)[0] for im in images[lo : lo + batch_size]]
            x = info.normalize(torch.stack(chunk)).to(device)
            _, fmap = forward_features(inner, x)
            out[lo : lo + len(chunk)] = head(fmap.float()).double().cpu()
    return out


def embeddings(model: nn.Module, images: Sequence[torch.Tensor] | torch.Tensor, *, device: torch.device | str = "cpu",
               batch_size: int = 64, flip: bool = False) -> torch.Tensor:
    """L2-normalised float32 embeddings ``[N, D]`` of uint8 images (with ``flip``: of image + mirror, summed first,
    insightface's flip test), in evaluation mode without gradient."""
    inner = unfreeze(model)
    info = backbone_info(inner)
    device = torch.device(device)
    rows: list[torch.Tensor] = []
    with _EvalModes(inner), torch.no_grad():
        for lo in range(0, len(images), batch_size):
            chunk = torch.stack([fit_crops(im[None], info.input_size)[0] for im in images[lo : lo + batch_size]])
            x = info.normalize(chunk).to(device)
            emb = inner(x).float()
            if flip:
                emb = emb + inner(x.flip(-1)).float()
            rows.append(F.normalize(emb, dim=1).cpu())
    return torch.cat(rows)
