"""Decode encoded face crops and map pixels to [-1, 1] the way TFace and insightface do."""

from __future__ import annotations

import re
import warnings

import torch
from torchvision.io import ImageReadMode, decode_image

# torchvision 0.29 deprecates its codecs in favour of TorchCodec; they remain the fastest JPEG decoder
# shipped with torchvision, which this project pins, so the notice is silenced for these calls only.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

__all__ = ["decode_rgb", "normalize", "decode_normalized"]


_CPP_PREFIX = re.compile(r"^\w+, \S+:\d+, ")


def decode_rgb(data: bytes) -> torch.Tensor:
    """Encoded image bytes (JPEG, PNG, WebP, GIF) → uint8 ``[3, H, W]`` RGB tensor.

    Raises ``RuntimeError`` with torchvision's reason (its C++ source location removed).
    """
    if not data:
        raise RuntimeError("empty image data")
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        return decode_image(buf, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise RuntimeError(_CPP_PREFIX.sub("", str(exc)).split(" For avif")[0]) from None


def normalize(img: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` → float32 ``(x/255 − 0.5)/0.5``."""
    return img.to(torch.float32).div_(127.5).sub_(1.0)


def decode_normalized(data: bytes) -> torch.Tensor:
    return normalize(decode_rgb(data))
