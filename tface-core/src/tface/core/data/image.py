"""Decode user images (the one decoder of tface) and map pixels to [-1, 1] the way TFace and insightface do.

Every path that reads images — ``tface data pack``, the ``image_folder``/``image_list`` sources, the
training loader, ``tface data bin``/``verify``, verification and IJB evaluation — calls
:func:`decode_rgb`, so a file that works in one works in all, with the same pixels:

* JPEG (including grayscale and CMYK) and WebP go to torchvision (libjpeg-turbo, libwebp): the fastest
  decoders available, pixel-identical to Pillow on JPEG; the training loader's records are JPEGs. A
  torchvision without a WebP decoder (< 0.20) or without EXIF orientation leaves those files to Pillow.
* Everything else goes to Pillow: PNG (torchvision 0.29's libpng wrapper crashes the process with a
  segmentation fault on any data error after the header — a CRC mismatch, a bad filter byte, short image
  data — so a damaged file would kill a training run instead of being reported), BMP, PGM/PPM/PBM, TIFF,
  GIF (only the first frame is decoded; torchvision would decode every frame of an animation) and WebP
  files carrying EXIF (torchvision ignores their orientation).
* EXIF orientation is applied, as ``cv2.imread`` does, so landmarks refer to the upright image. Records
  written by ``tface data pack`` carry no EXIF, so the training loader's pixels do not depend on it.
* 16-bit samples (16-bit gray, gray+alpha, RGB and RGBA PNGs, 16-bit PGM and TIFF) become 8-bit by keeping
  the high byte (``v >> 8``, i.e. ``floor(v / 256)``), as libpng's ``strip_16`` and Pillow's own 48-bit
  PNG loader do; 16-bit grayscale (Pillow's ``I;16`` and ``I`` modes, which ``convert("RGB")`` would clip
  to white) is converted here the same way. Float images (mode ``F``) have no defined 8-bit scale and are
  refused by name.
* The pixel count is read from the header before anything is decoded (JPEG SOFn and WebP chunk header
  parsed here, Pillow's lazy ``open`` for the rest, e.g. the PNG IHDR) and images above
  :data:`DEFAULT_MAX_PIXELS` (or the ``TFACE_MAX_IMAGE_PIXELS`` environment variable, or the ``max_pixels``
  argument) are refused, so a decompression bomb costs microseconds instead of gigabytes.

torchvision and Pillow are imported on first use, so importing this module is cheap.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch

# torchvision 0.29 deprecates its codecs in favour of TorchCodec; they remain the fastest JPEG decoder
# shipped with torchvision, which this project pins, so the notice is silenced for these calls only.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV", "IMAGE_EXTENSIONS", "ImageDecodeError", "ImageTooLargeError",
           "decode_rgb", "image_size", "max_image_pixels", "normalize", "decode_normalized"]

#: Default pixel limit (width × height). Raw photos of 40 MP (e.g. 7700×5200) still decode; a decoded
#: image at the limit takes 120 MB as 8-bit RGB (240 MB at 16 bits), per loader worker. Pillow's own
#: warning threshold is ~89 MP and it refuses only above ~179 MP, after which a 12000×12000 PNG of a
#: few KB would decode to 432 MB (864 MB at 16 bits) in every worker.
DEFAULT_MAX_PIXELS = 40_000_000
#: Environment variable overriding :data:`DEFAULT_MAX_PIXELS` (a positive integer).
MAX_PIXELS_ENV = "TFACE_MAX_IMAGE_PIXELS"

#: File name endings of the formats :func:`decode_rgb` reads (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif",
                    ".pgm", ".ppm", ".pbm", ".pnm", ".tif", ".tiff")


class ImageDecodeError(RuntimeError):
    """Bytes that are not a readable image (the message says why; callers add the file name)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose header declares more pixels than the limit; nothing was decoded."""


_CPP_PREFIX = re.compile(r"^\w+, \S+:\d+, ")
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_tv = None  # (decode(buf) -> tensor, WebP supported, EXIF supported) once torchvision is imported


def _torchvision():
    """torchvision's RGB decoder and what this version can do (WebP from 0.20; EXIF orientation)."""
    global _tv
    if _tv is None:
        import inspect

        import torchvision.io as tio

        exif = "apply_exif_orientation" in inspect.signature(tio.decode_image).parameters
        rgb = tio.ImageReadMode.RGB
        op = getattr(getattr(torch.ops, "image", None), "decode_image", None)
        if op is not None:
            # The registered op ``decode_image`` wraps, minus the wrapper's per-call usage logging and
            # deprecation warning (~5 us of a ~95 us 112x112 JPEG decode on the training hot path).
            args = (rgb.value, True) if exif else (rgb.value,)

            def decode(buf: torch.Tensor) -> torch.Tensor:
                return op(buf, *args)
        else:
            kwargs = {"mode": rgb, **({"apply_exif_orientation": True} if exif else {})}

            def decode(buf: torch.Tensor) -> torch.Tensor:
                return tio.decode_image(buf, **kwargs)
        _tv = (decode, hasattr(tio, "decode_webp"), exif)
    return _tv


def _open(data: bytes):
    """Pillow's lazy ``Image.open`` (header only); its bomb warning is replaced by our stricter check."""
    from PIL import Image

    with warnings.catch_warnings():  # not thread-safe, but tface decodes in processes, never in threads
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels``, else ``$TFACE_MAX_IMAGE_PIXELS``, else the default."""
    if max_pixels is not None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels}")
        return max_pixels
    text = os.environ.get(MAX_PIXELS_ENV)
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive integer (a pixel count), got {text!r}")
    return value


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOFn marker; skips stray bytes between segments as libjpeg does."""
    n = len(data)
    i = 2
    while i + 1 < n:
        if data[i] != 0xFF:
            i = data.find(b"\xff", i)
            if i < 0:
                return None
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            return None
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            return (data[i + 7] << 8) | data[i + 8], (data[i + 5] << 8) | data[i + 6]
        if i + 4 > n:
            return None
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return (int.from_bytes(data[26:28], "little") & 0x3FFF), (int.from_bytes(data[28:30], "little") & 0x3FFF)
    return None


def _kind(data: bytes) -> str:
    """``"jpeg"``, ``"webp"`` (torchvision decodes these) or ``"other"`` (Pillow does)."""
    head = data[:4]
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head == b"RIFF" and data[8:12] == b"WEBP":
        # torchvision ignores a WebP's EXIF orientation: VP8X flag 0x08 (EXIF present) goes to Pillow.
        if data[12:16] == b"VP8X" and len(data) > 20 and data[20] & 0x08:
            return "other"
        return "webp"
    return "other"


def _header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    return _jpeg_size(data) if kind == "jpeg" else _webp_size(data)


def _check_size(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            f"(a decompression bomb, or a photo larger than face data needs; set {MAX_PIXELS_ENV} to raise it)")


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) as the header declares it, without decoding the pixels.

    EXIF orientation is not applied (a rotated image swaps the two). Raises :class:`ImageDecodeError`
    when the header cannot be read.
    """
    kind = _kind(data)
    size = _header_size(data, kind) if kind != "other" else None
    if size is not None:
        return size
    with _open_header(data, None) as im:
        return im.size


def _open_header(data: bytes, limit: int | None):
    """Pillow's lazy open (header only), its failures turned into one-line decode errors."""
    from PIL import Image

    try:
        return _open(data)
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb(exc, limit) from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format (or an empty file)") from None
    except Exception as exc:  # Pillow's plugins raise many types on malformed headers
        raise ImageDecodeError(f"cannot read the image header: {_reason(exc)}") from None


def _pillow_bomb(exc: Exception, limit: int | None) -> ImageTooLargeError:
    """Pillow refuses images over twice its ``MAX_IMAGE_PIXELS`` in ``open``, before we see the size."""
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    pillow = 2 * int(Image.MAX_IMAGE_PIXELS or 0)
    if limit is None or limit >= pillow:
        return ImageTooLargeError(f"image has {pixels}, over Pillow's limit of {pillow:,} for this format")
    return ImageTooLargeError(f"image has {pixels}, over the limit of {limit:,} "
                              f"(set {MAX_PIXELS_ENV} to raise it)")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def decode_rgb(data: bytes, *, max_pixels: int | None = None) -> torch.Tensor:
    """Encoded image bytes (any format in :data:`IMAGE_EXTENSIONS`) → uint8 ``[3, H, W]`` RGB tensor.

    Grayscale becomes three equal channels, alpha is dropped, 16-bit samples keep their high byte, EXIF
    orientation is applied. Images declaring more than ``max_pixels`` pixels (default:
    :func:`max_image_pixels`) are refused from their header. Raises :class:`ImageDecodeError`
    (:class:`ImageTooLargeError` for the size) with a one-line reason.
    """
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        limit = max_image_pixels(max_pixels)
    except ValueError as exc:  # a bad environment variable: every caller reports decode errors by file
        raise ImageDecodeError(str(exc)) from None
    kind = _kind(data)
    if kind == "other":
        return _decode_pillow(data, limit)
    decode, webp_ok, exif_ok = _torchvision()
    if (kind == "webp" and not webp_ok) or (not exif_ok and kind == "jpeg" and b"Exif\0\0" in data[:65536]):
        return _decode_pillow(data, limit)  # an older torchvision: no WebP, or no EXIF orientation
    size = _header_size(data, kind)
    if size is None:  # a header we cannot parse: Pillow reads it (or says why it cannot)
        size = image_size(data)
    _check_size(size[0], size[1], limit)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        return decode(buf)
    except (RuntimeError, ValueError) as exc:
        raise ImageDecodeError(_CPP_PREFIX.sub("", str(exc)).split(" For avif")[0]) from None


def _decode_pillow(data: bytes, limit: int) -> torch.Tensor:

    im = _open_header(data, limit)
    with im:
        _check_size(im.size[0], im.size[1], limit)
        what = f"{im.format or 'image'} ({im.mode})"
        try:
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation (getexif loads a PNG to find eXIf)
                from PIL import ImageOps

                im = ImageOps.exif_transpose(im)
            arr = _pillow_rgb(im)
        except ImageDecodeError:
            raise
        except Exception as exc:  # truncated data, bad EXIF, unsupported mode, ...
            raise ImageDecodeError(f"cannot decode {what}: {_reason(exc)}") from None
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)  # a writable copy, laid out as torchvision's


def _pillow_rgb(im) -> np.ndarray:
    """A loaded Pillow image → uint8 ``H×W×3``, 16-bit modes by their high byte."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise ImageDecodeError(f"32-bit integer image (mode I) with values outside 0..65535 "
                                   f"({values.min()}..{values.max()}): no defined 8-bit scale")
        gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageDecodeError("32-bit float image (mode F): no defined 8-bit scale; save it as 8- or 16-bit")
    return np.asarray(im.convert("RGB"))


def normalize(img: torch.Tensor, mean: Sequence[float] = (0.5, 0.5, 0.5),
              std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` → float32 ``(x/255 − mean)/std`` per channel (a backbone's ``mean``/``std``,
    :mod:`tface.core.backbone`); the default is [-1, 1].

    Computed as ``x / (255·std) − mean/std``: for the default that is ``x / 127.5 − 1`` exactly.
    """
    out = img.to(torch.float32)
    if len(set(mean)) == 1 and len(set(std)) == 1:  # one value for all channels: scalars, no broadcast tensors
        return out.div_(255.0 * std[0]).sub_(mean[0] / std[0])
    scale = torch.tensor([255.0 * s for s in std], dtype=torch.float32, device=out.device).view(3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32, device=out.device).view(3, 1, 1)
    return out.div_(scale).sub_(shift)


def decode_normalized(data: bytes) -> torch.Tensor:
    return normalize(decode_rgb(data))
