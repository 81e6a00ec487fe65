"""The backbone contract: what a backbone declares so that the trainer, evaluation and export need not probe it.

A backbone is an ``nn.Module`` that maps a float32 batch ``[N, 3, S, S]`` to embeddings ``[N, D]``, and says:

========================  ==========================================================================================
``embedding_size`` (int)  ``D``, the width of its output. Required: the classifier is sized from it.
``input_size`` (int)      ``S``, the side of the square face crop it takes, in pixels (112 for ArcFace crops).
                          Required: evaluation resizes crops to it and ONNX export fixes it in the graph; a guessed
                          size gives a shape error deep in the model, or worse, a model that runs on the wrong size.
``mean``, ``std``         3 numbers each (R, G, B, pixel values scaled to [0, 1]): the model sees
                          ``(x / 255 - mean) / std``. Optional, default ``(0.5, 0.5, 0.5)`` for both, i.e. [-1, 1]:
                          the normalisation of TFace, insightface and every tface backbone, so a checkpoint from
                          either project is fed the way it was trained.
========================  ==========================================================================================

The attributes may be set in ``__init__`` (they usually depend on options) or on the class. Subclassing the
:class:`Backbone` mixin documents the contract and supplies the ``mean``/``std`` defaults. Consumers call
:func:`backbone_info`, which checks the declaration and raises :class:`BackboneContractError` naming the
missing or invalid attribute; nothing ever runs a dummy forward pass to find out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MEAN", "DEFAULT_STD", "Backbone", "BackboneContractError", "BackboneInfo", "backbone_info"]

#: Per-channel mean and std (RGB, in [0, 1] units) when a backbone declares none: ``(x/255 - 0.5)/0.5``.
DEFAULT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEFAULT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


class BackboneContractError(TypeError):
    """A backbone that does not declare (or mis-declares) the contract; the message names the attribute."""


class Backbone:
    """Mixin for backbone classes: ``class MyNet(Backbone, nn.Module)``; set the two sizes in ``__init__``."""

    #: Width of the embedding the forward pass returns.
    embedding_size: int
    #: Side of the square input image, in pixels.
    input_size: int
    #: The model sees ``(x / 255 - mean) / std`` per RGB channel.
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD


@attrs.frozen
class BackboneInfo:
    """A backbone's validated declaration (see the module docstring)."""

    embedding_size: int
    input_size: int
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 3, H, W]`` → float32 ``(x/255 − mean)/std``, the input this backbone expects."""
        from tface.core.data.image import normalize

        return normalize(images, self.mean, self.std)


def _size(model: Any, attr: str, what: str, where: str) -> int:
    value = getattr(model, attr, None)
    if value is None:
        raise BackboneContractError(
            f"{where} does not declare {attr} ({what}); a tface backbone sets self.{attr} "
            "(see the backbone contract in docs/plugins.md)")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BackboneContractError(f"{where}: {attr} must be a positive int ({what}), got {value!r}")
    return value


def _triple(model: Any, attr: str, default: tuple[float, float, float], where: str,
            positive: bool) -> tuple[float, float, float]:
    value = getattr(model, attr, None)
    if value is None:
        return default
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or (positive and min(out) <= 0):
        need = "3 positive numbers" if positive else "3 numbers"
        raise BackboneContractError(f"{where}: {attr} must be {need} (R, G, B in [0, 1] pixel units), got {value!r}")
    return out  # type: ignore[return-value]


def backbone_info(model: Any, name: str | None = None) -> BackboneInfo:
    """The contract ``model`` declares, checked; :class:`BackboneContractError` names what is missing or wrong.

    ``name`` (e.g. the registry name) makes the message say which backbone; wrappers (DataParallel, DDP,
    ``torch.compile``) are looked through.
    """
    from tface.core.weights import unwrap_model  # torch: only once there is a model

    inner = unwrap_model(model)
    cls = type(inner)
    where = f"backbone {name!r} ({cls.__module__}.{cls.__qualname__})" if name else \
        f"backbone {cls.__module__}.{cls.__qualname__}"
    return BackboneInfo(
        embedding_size=_size(inner, "embedding_size", "the width of its output embedding", where),
        input_size=_size(inner, "input_size", "the side of its square input image in pixels", where),
        mean=_triple(inner, "mean", DEFAULT_MEAN, where, positive=False),
        std=_triple(inner, "std", DEFAULT_STD, where, positive=True),
    )
