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
``feature_channels``      Optional, with the method ``forward_features(x) -> (embedding [N, D], feature_map
(int)                     [N, C, h, w])``: ``C``, the channels of the last spatial feature map before the output
                          layer. Both come from one pass, and the embedding is exactly ``forward(x)``. Methods that
                          learn from the map of a frozen backbone (SCF's uncertainty head) size themselves from it.
========================  ==========================================================================================

The attributes may be set in ``__init__`` (they usually depend on options) or on the class. Subclassing the
:class:`Backbone` mixin documents the contract and supplies the ``mean``/``std`` defaults. Consumers call
:func:`backbone_info`, which checks the declaration and raises :class:`BackboneContractError` naming the
missing or invalid attribute; nothing ever runs a dummy forward pass to find out. :func:`forward_features`
calls the optional method, and names what is missing when a backbone does not offer it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MEAN", "DEFAULT_STD", "Backbone", "BackboneContractError", "BackboneInfo", "backbone_info",
           "forward_features"]

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
    #: Channels of the map ``forward_features(x)`` returns beside the embedding; ``None``: no feature map
    #: (a backbone that offers one sets it and defines ``forward_features``).
    feature_channels: int | None = None


@attrs.frozen
class BackboneInfo:
    """A backbone's validated declaration (see the module docstring)."""

    embedding_size: int
    input_size: int
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    #: ``C`` of ``forward_features``' map ``[N, C, h, w]``, or ``None`` when the backbone offers no feature map.
    feature_channels: int | None = None

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


def _feature_channels(model: Any, where: str) -> int | None:
    """``feature_channels`` checked, and only with a ``forward_features`` method: the two together are the offer.

    A ``forward_features`` alone is not taken as one (timm's, for instance, returns the map only).
    """
    if getattr(model, "feature_channels", None) is None:
        return None
    channels = _size(model, "feature_channels", "the channels of the map forward_features returns", where)
    if not callable(getattr(model, "forward_features", None)):
        raise BackboneContractError(
            f"{where} declares feature_channels but has no forward_features(x) method returning "
            "(embedding, feature_map) (see the backbone contract in docs/plugins.md)")
    return channels


def _unwrap(model: Any, name: str | None) -> tuple[Any, str]:
    from tface.core.weights import unwrap_model  # torch: only once there is a model

    inner = unwrap_model(model)
    cls = type(inner)
    where = f"backbone {name!r} ({cls.__module__}.{cls.__qualname__})" if name else \
        f"backbone {cls.__module__}.{cls.__qualname__}"
    return inner, where


def backbone_info(model: Any, name: str | None = None) -> BackboneInfo:
    """The contract ``model`` declares, checked; :class:`BackboneContractError` names what is missing or wrong.

    ``name`` (e.g. the registry name) makes the message say which backbone; wrappers (DataParallel, DDP,
    ``torch.compile``) are looked through.
    """
    inner, where = _unwrap(model, name)
    return BackboneInfo(
        embedding_size=_size(inner, "embedding_size", "the width of its output embedding", where),
        input_size=_size(inner, "input_size", "the side of its square input image in pixels", where),
        mean=_triple(inner, "mean", DEFAULT_MEAN, where, positive=False),
        std=_triple(inner, "std", DEFAULT_STD, where, positive=True),
        feature_channels=_feature_channels(inner, where),
    )


def forward_features(model: Any, x: torch.Tensor, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embedding [N, D], feature_map [N, C, h, w])`` of ``model`` on ``x``, from one forward pass.

    For methods that need the map (SCF); :class:`BackboneContractError` names the backbone and what it lacks
    when it offers none, or when it returns something else. Wrappers are looked through and the inner
    module's method is called, so a DDP wrapper's gradient hooks do not run: meant for frozen backbones.
    """
    inner, where = _unwrap(model, name)
    has_method = callable(getattr(inner, "forward_features", None))
    if getattr(inner, "feature_channels", None) is None:
        missing = ("no feature_channels (a forward_features method alone is not taken as the offer)" if has_method
                   else "neither feature_channels nor a forward_features(x) method")
        raise BackboneContractError(
            f"{where} offers no feature map: it has {missing}; a backbone that offers one sets "
            "self.feature_channels and defines forward_features(x) -> (embedding, feature_map) "
            "(see the backbone contract in docs/plugins.md)")
    channels = _feature_channels(inner, where)
    out = inner.forward_features(x)
    pair = isinstance(out, tuple) and len(out) == 2
    shape = tuple(getattr(out[1], "shape", ())) if pair else ()
    if len(shape) != 4 or shape[1] != channels:
        got = f"a feature map of shape {list(shape)}" if pair else f"a {type(out).__name__}, not a pair"
        raise BackboneContractError(
            f"{where}: forward_features must return (embedding [N, D], feature_map [N, {channels}, h, w]), got {got}")
    return out
