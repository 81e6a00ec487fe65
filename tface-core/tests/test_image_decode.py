"""The one image decoder: every format against an independent expected array, bit depth, EXIF, size limits.

Files are built here (Pillow, or by hand from the format descriptions where Pillow cannot write them: 48-bit
PNG, 16-bit PGM); the expected pixels come from the source arrays (lossless formats), from Pillow decoding
the same bytes (JPEG, lossy WebP) or from numpy (16-bit → 8-bit as ``v // 256``, EXIF rotation as rot90).
The call sites (pack, image_folder, data bin, verify) are checked to take the same formats.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageFile

from tface.core.cli import cli
from tface.core.data import image as image_mod
from tface.core.data.errors import DataError
from tface.core.data.folder import ImageFolderSource
from tface.core.data.image import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageDecodeError,
    ImageTooLargeError,
    decode_rgb,
    image_size,
    max_image_pixels,
)
from tface.core.data.imagelist import ImageSourceError, scan_folder
from tface.core.data.pack import PackError, pack
from tface.core.data.pairs import load_pair_images, read_pair_list
from tface.core.data.tfrecord import bytes_feature
from tface.core.data.verify import scan_shard
from tface.core.data.writer import ShardWriter

RNG = np.random.default_rng(1234)
H, W = 24, 20  # not square, so a transposition shows


def smooth(h: int = H, w: int = W, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth uint8 picture (JPEG keeps it to a few levels), different per channel and seed."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = [127 + 100 * np.sin(x / (9 + 2 * c + seed) + y / (12 + 3 * c)) for c in range(channels)]
    return np.clip(np.rint(np.stack(out, axis=-1)), 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[:, :, None], 3, axis=2)


def png(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes | None = None,
        idat: bytes | None = None) -> bytes:
    """A PNG written from the specification: signature, IHDR, one IDAT (filter 0 rows), IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(raw_rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png16(values: np.ndarray) -> bytes:
    """16-bit PNG of ``values`` (H×W gray, H×W×2 gray+alpha, H×W×3 RGB or H×W×4 RGBA), big-endian samples."""
    h, w = values.shape[:2]
    channels = 1 if values.ndim == 2 else values.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    be = values.astype(">u2").reshape(h, -1)
    return png(w, h, 16, color_type, b"".join(b"\x00" + be[y].tobytes() for y in range(h)))


def high_byte(values: np.ndarray) -> np.ndarray:
    """The documented 16 → 8-bit rule, written independently: floor(v / 256)."""
    return np.floor(values.astype(np.float64) / 256).astype(np.uint8)


def as_hwc(img: torch.Tensor) -> np.ndarray:
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
    return img.permute(1, 2, 0).numpy()


def u16(h: int = H, w: int = W, channels: int | None = None) -> np.ndarray:
    shape = (h, w) if channels is None else (h, w, channels)
    v = RNG.integers(0, 65536, size=shape, dtype=np.int64)
    v.flat[:4] = [0, 255, 256, 65535]  # the edges of the conversion
    return v.astype(np.uint16)


# --- every format ---------------------------------------------------------------------------------------


def _case_jpeg():
    data = encode(Image.fromarray(smooth()), "JPEG", quality=95)
    return data, pillow_rgb(data), 2


def _case_png8():
    a = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return encode(Image.fromarray(a), "PNG"), a, 0


def _case_png16_gray():
    a = u16()
    return encode(Image.fromarray(a), "PNG"), gray3(high_byte(a)), 0  # Pillow writes I;16 as 16-bit gray


def _case_png48_rgb():
    a = u16(channels=3)
    return png16(a), high_byte(a), 0


def _case_png64_rgba():
    a = u16(channels=4)
    return png16(a), high_byte(a[:, :, :3]), 0


def _case_png16_gray_alpha():
    a = u16(channels=2)
    return png16(a), gray3(high_byte(a[:, :, 0])), 0


def _case_png_gray_l():
    a = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    return encode(Image.fromarray(a), "PNG"), gray3(a), 0


def _case_png_1bit():
    a = RNG.integers(0, 2, (H, W)).astype(bool)
    return encode(Image.fromarray(a), "PNG"), gray3(a.astype(np.uint8) * 255), 0


def _case_png_palette_transparent():
    idx = RNG.integers(0, 16, (H, W), dtype=np.uint8)
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.ravel().tolist())
    return encode(im, "PNG", transparency=3), palette[idx], 0  # alpha dropped, colours kept


def _case_bmp():
    a = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return encode(Image.fromarray(a), "BMP"), a, 0


def _case_pgm8():
    a = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    return f"P5\n{W} {H}\n255\n".encode() + a.tobytes(), gray3(a), 0  # netpbm, written by hand


def _case_pgm16():
    a = u16()
    return f"P5\n{W} {H}\n65535\n".encode() + a.astype(">u2").tobytes(), gray3(high_byte(a)), 0


def _case_ppm():
    a = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return f"P6\n{W} {H}\n255\n".encode() + a.tobytes(), a, 0


def _case_tiff():
    a = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return encode(Image.fromarray(a), "TIFF"), a, 0


def _case_tiff16_gray():
    a = u16()
    return encode(Image.fromarray(a), "TIFF"), gray3(high_byte(a)), 0


def _case_webp_lossless():
    a = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return encode(Image.fromarray(a), "WEBP", lossless=True), a, 0


def _case_webp_lossy():
    data = encode(Image.fromarray(smooth()), "WEBP", quality=90)
    return data, pillow_rgb(data), 3


def _case_gif():
    idx = RNG.integers(0, 16, (H, W), dtype=np.uint8)
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    frames = []
    for k in range(2):
        im = Image.fromarray((idx + 5 * k) % 16, "P")
        im.putpalette(palette.ravel().tolist())
        frames.append(im)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    return data, palette[idx], 0  # an animation: the first frame


def _case_jpeg_gray():
    data = encode(Image.fromarray(smooth()[:, :, 0]), "JPEG", quality=95)
    return data, pillow_rgb(data), 2


def _case_jpeg_cmyk():
    data = encode(Image.fromarray(smooth(channels=4), "CMYK"), "JPEG", quality=95)
    return data, pillow_rgb(data), 2


CASES = {name[6:]: fn for name, fn in globals().items() if name.startswith("_case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_format_decodes_to_the_expected_pixels(name):
    data, want, tol = CASES[name]()
    got = as_hwc(decode_rgb(data))
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= tol
    assert image_size(data) == (W, H)


def test_jpeg_stays_close_to_its_source_and_gray_has_equal_channels():
    src = smooth()
    got = as_hwc(decode_rgb(encode(Image.fromarray(src), "JPEG", quality=95))).astype(int)
    assert np.abs(got - src).mean() < 2
    gray = as_hwc(decode_rgb(encode(Image.fromarray(src[:, :, 0]), "JPEG", quality=95)))
    assert (gray[:, :, 0] == gray[:, :, 1]).all() and (gray[:, :, 1] == gray[:, :, 2]).all()


def test_sixteen_bit_is_not_clipped():
    """Pillow's own I;16 → RGB conversion clips everything above 255 to white; ours keeps the range."""
    ramp = np.tile(np.linspace(0, 65535, W).astype(np.uint16), (H, 1))
    got = as_hwc(decode_rgb(encode(Image.fromarray(ramp), "PNG")))
    np.testing.assert_array_equal(got[:, :, 0], high_byte(ramp))
    assert got[0, 0, 0] == 0 and got[0, -1, 0] == 255 and 100 < got[0, W // 2, 0] < 155


def test_float_images_are_refused_by_name():
    data = encode(Image.fromarray(RNG.random((H, W)).astype(np.float32)), "TIFF")
    with pytest.raises(ImageDecodeError, match="float image .mode F."):
        decode_rgb(data)


# --- EXIF orientation ---------------------------------------------------------------------------------


def with_orientation(fmt: str, a: np.ndarray, orientation: int = 6, **kw) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(a), fmt, exif=exif.tobytes(), **kw)


def test_exif_orientation_6_rotates_a_jpeg_clockwise():
    data = with_orientation("JPEG", smooth(), quality=95)
    with Image.open(io.BytesIO(data)) as im:  # the stored (unrotated) pixels
        stored = np.asarray(im.convert("RGB")).astype(int)
    got = as_hwc(decode_rgb(data)).astype(int)
    assert got.shape == (W, H, 3)
    assert np.abs(got - np.rot90(stored, k=-1)).max() <= 2  # orientation 6: display rotated 90° clockwise


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_exif_orientation_is_applied_in_every_format(fmt, kw):
    a = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(as_hwc(decode_rgb(with_orientation(fmt, a, **kw))), np.rot90(a, k=-1))


def test_an_older_torchvision_leaves_webp_and_exif_jpeg_to_pillow(monkeypatch):
    """torchvision < 0.20 has no WebP decoder, and older ones no EXIF orientation: same pixels via Pillow."""
    from torchvision.io import ImageReadMode, decode_image

    calls = []

    def old_decode(buf):
        calls.append(len(buf))
        return decode_image(buf, mode=ImageReadMode.RGB)  # no EXIF orientation

    monkeypatch.setattr(image_mod, "_tv", (old_decode, False, False))
    a = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(as_hwc(decode_rgb(encode(Image.fromarray(a), "WEBP", lossless=True))), a)
    rotated = with_orientation("JPEG", smooth(), quality=95)
    with Image.open(io.BytesIO(rotated)) as im:
        stored = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(as_hwc(decode_rgb(rotated)).astype(int) - np.rot90(stored, k=-1)).max() <= 2
    assert calls == []
    plain = encode(Image.fromarray(smooth()), "JPEG", quality=95)
    assert np.abs(as_hwc(decode_rgb(plain)).astype(int) - pillow_rgb(plain)).max() <= 2
    assert len(calls) == 1  # a JPEG without EXIF still takes the fast path


# --- size limit (decompression bombs) -----------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode pixels fails the test: a refusal must come from the header."""
    def boom(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(image_mod, "_tv", (boom, True, True))
    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


@functools.lru_cache(maxsize=1)
def bomb_png(side: int = 12000) -> bytes:
    """A valid 8-bit gray PNG of side×side black pixels (144 MB decoded), compressed to ~140 KB."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png(side, side, 8, 0, idat=idat)


def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def sof_offset(jpeg: bytes) -> int:
    i = 2
    while jpeg[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(jpeg[i + 2:i + 4], "big")
    return i


def _small(fmt: str, **kw) -> bytes:
    im = Image.fromarray(smooth())
    return encode(im.convert("P") if fmt == "GIF" else im, fmt, **kw)


def _vp8l_bomb() -> bytes:
    data = _small("WEBP", lossless=True)
    assert data[12:16] == b"VP8L"
    old = int.from_bytes(data[21:25], "little")
    return patched(data, 21, "<I", (12000 - 1) | ((12000 - 1) << 14) | (old & ~0xFFFFFFF))


def _vp8_bomb() -> bytes:
    data = _small("WEBP", quality=80)
    assert data[12:16] == b"VP8 "
    return patched(data, 26, "<HH", 12000, 12000)


BOMBS = {  # each declares 12000×12000 in its header
    "png": bomb_png,
    "jpeg": lambda: patched(jpeg := _small("JPEG", quality=90), sof_offset(jpeg) + 5, ">HH", 12000, 12000),
    "webp-lossless": _vp8l_bomb,
    "webp-lossy": _vp8_bomb,
    "bmp": lambda: patched(_small("BMP"), 18, "<ii", 12000, 12000),
    "gif": lambda: patched(_small("GIF"), 6, "<HH", 12000, 12000),
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_bombs_are_refused_from_the_header(kind, no_decoding):
    data = BOMBS[kind]()
    assert len(data) < 200_000
    assert image_size(data) == (12000, 12000)
    with pytest.raises(ImageTooLargeError, match=r"12000x12000 = 144,000,000 pixels, over the limit of 40,000,000"):
        decode_rgb(data)


def test_limit_default_argument_and_environment(monkeypatch):
    assert DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    at_limit = png(6400, 6250, 8, 0, idat=b"")  # 40,000,000 pixels: passes the check, then fails to decode
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(at_limit)
    assert not isinstance(info.value, ImageTooLargeError)
    with pytest.raises(ImageTooLargeError, match="6401x6250"):
        decode_rgb(png(6401, 6250, 8, 0, idat=b""))

    a = RNG.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    data = encode(Image.fromarray(a), "PNG")
    bmp = encode(Image.fromarray(a), "BMP")
    np.testing.assert_array_equal(as_hwc(decode_rgb(data, max_pixels=100)), a)
    for blob in (data, bmp):
        with pytest.raises(ImageTooLargeError, match="10x10 = 100 pixels, over the limit of 99 .*" + MAX_PIXELS_ENV):
            decode_rgb(blob, max_pixels=99)
    monkeypatch.setenv(MAX_PIXELS_ENV, "99")
    assert max_image_pixels() == 99
    with pytest.raises(ImageTooLargeError, match="limit of 99"):
        decode_rgb(data)
    np.testing.assert_array_equal(as_hwc(decode_rgb(data, max_pixels=100)), a)  # the argument wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_PIXELS_ENV} must be a positive integer.*'lots'"):
        max_image_pixels()
    with pytest.raises(ImageDecodeError, match=MAX_PIXELS_ENV):
        decode_rgb(data)


def test_jpeg_header_parser_agrees_with_pillow():
    src = Image.fromarray(smooth(37, 53))
    exif = Image.Exif()
    exif[0x010F] = "camera" * 50  # a long APP1 segment before the frame header
    variants = [encode(src, "JPEG", quality=q, progressive=p, exif=exif.tobytes(), optimize=o)
                for q in (50, 95) for p in (False, True) for o in (False, True)]
    plain = encode(src, "JPEG")
    variants.append(plain[:2] + b"\xff\xff" + plain[2:])  # fill bytes before a marker
    for data in variants:
        assert image_size(data) == (53, 37)
        assert tuple(decode_rgb(data).shape) == (3, 37, 53)


@pytest.mark.parametrize("data,match", [
    (b"", "empty image data"),
    (b"hello, not an image", "not a recognised image format"),
    (png(8, 8, 8, 2, b"\x00" * 10), "."),  # a PNG whose data is cut short
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "."),  # a JPEG without a frame header
])
def test_bad_bytes_are_one_line_decode_errors(data, match):
    with pytest.raises(ImageDecodeError, match=match) as info:
        decode_rgb(data)
    assert "\n" not in str(info.value) and ".cpp" not in str(info.value)


# --- the same formats at every call site ---------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ramp16(size: int = 112) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return ((x + y) * 65535 // (2 * size - 2)).astype(np.uint16)


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """112×112 faces as 16-bit PNG, 16-bit RGB PNG, PGM and TIFF, plus a bomb, a text file, an empty identity."""
    root = tmp_path / "faces"
    write(root / "ann" / "deep.png", encode(Image.fromarray(ramp16()), "PNG"))
    write(root / "ann" / "rgb48.png", png16(np.stack([ramp16(), ramp16()[::-1], ramp16()[:, ::-1]], axis=-1)))
    write(root / "bob" / "face.pgm", b"P5\n112 112\n255\n" + (ramp16() >> 8).astype(np.uint8).tobytes())
    write(root / "bob" / "face.tif", encode(Image.fromarray(smooth(112, 112)), "TIFF"))
    write(root / "bob" / "notes.txt", b"not an image")
    write(root / "cid" / "readme.md", b"nothing here")
    write(root / "stray.png", encode(Image.fromarray(smooth()), "PNG"))
    return root


def expected_mixed() -> list[np.ndarray]:
    r = ramp16()
    return [gray3(high_byte(r)), high_byte(np.stack([r, r[::-1], r[:, ::-1]], axis=-1)),
            gray3(high_byte(r)), smooth(112, 112)]


def test_scan_accepts_every_decoder_format_and_reports_what_it_ignores(mixed):
    images = scan_folder(mixed)
    assert images.paths == ("ann/deep.png", "ann/rgb48.png", "bob/face.pgm", "bob/face.tif")
    assert images.ignored == ("bob/notes.txt", "cid/readme.md", "stray.png")
    assert images.empty == ("cid",)
    notes = images.scan_notes(shown=2)
    assert len(notes) == 2
    assert "3 files ignored" in notes[0] and "bob/notes.txt, cid/readme.md ..." in notes[0]
    assert "1 identity folders hold no image" in notes[1] and "cid" in notes[1]


def test_a_folder_without_readable_images_names_what_it_found(tmp_path):
    write(tmp_path / "faces" / "ann" / "1.heic", b"....ftypheic")
    write(tmp_path / "faces" / "ann" / "2.heic", b"....ftypheic")
    with pytest.raises(ImageSourceError, match=r"no images found .*pgm.*; 2 other files, e.g. ann/1\.heic, ann/2"):
        scan_folder(tmp_path / "faces")


def test_a_bad_pixel_limit_fails_when_the_data_set_is_built(mixed, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")
    with pytest.raises(ValueError, match=f"{MAX_PIXELS_ENV} must be a positive integer"):
        ImageFolderSource(root=mixed).train_dataset()


def test_image_folder_source_reads_16_bit_and_netpbm_and_warns(mixed, caplog):
    with caplog.at_level(logging.WARNING, logger="tface.data"):
        ds = ImageFolderSource(root=mixed).train_dataset()
    assert "3 files ignored" in caplog.text and "hold no image" in caplog.text
    for i, want in enumerate(expected_mixed()):
        img, _ = ds[i]
        np.testing.assert_array_equal(as_hwc(img), want)


def test_image_folder_source_refuses_a_bomb_by_file(mixed, no_decoding):
    bomb = write(mixed / "bob" / "huge.png", bomb_png())
    ds = ImageFolderSource(root=mixed).train_dataset()
    i = ds.images.paths.index("bob/huge.png")
    with pytest.raises(DataError, match=rf"{bomb}: cannot decode image: image is 12000x12000"):
        ds.load(i)


def test_pack_converts_16_bit_and_reads_every_format(mixed, tmp_path):
    report = pack(mixed, tmp_path / "out", "faces")
    assert report.written == 4 and report.ignored_files == ("bob/notes.txt", "cid/readme.md", "stray.png")
    ds_rows = (tmp_path / "out" / "faces" / "faces.index").read_text().splitlines()
    shard = (tmp_path / "out" / "faces" / "faces-00000.tfrecord").read_bytes()
    for row, want in zip(ds_rows, expected_mixed()):
        offset = int(row.split("\t")[2])
        (length,) = struct.unpack("<Q", shard[offset:offset + 8])
        jpeg = bytes_feature(shard[offset + 12:offset + 12 + length], "image")
        got = pillow_rgb(jpeg).astype(int)
        assert np.abs(got - want.astype(int)).max() <= 12 and np.abs(got - want.astype(int)).mean() < 2, row


def test_pack_refuses_a_bomb_by_name_or_skips_it(mixed, tmp_path):
    write(mixed / "bob" / "huge.png", bomb_png())
    with pytest.raises(PackError, match=r"bob/huge\.png: cannot decode image: image is 12000x12000"):
        pack(mixed, tmp_path / "o1", "faces")
    report = pack(mixed, tmp_path / "o2", "faces", on_error="skip")
    assert report.written == 4
    assert [(p, r.split(",")[0]) for p, r in report.skipped] == [
        ("bob/huge.png", "cannot decode image: image is 12000x12000 = 144")]


def test_cli_pack_summary_lists_ignored_files(mixed, tmp_path):
    res = CliRunner().invoke(cli, ["data", "pack", str(mixed), str(tmp_path / "out"), "--name", "f",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "ignored files" in res.output and "3 (" in res.output and "bob/notes.txt" in res.output
    assert "empty folders" in res.output


def test_bin_pairs_and_verify_take_the_pack_formats(tmp_path):
    """``data bin`` read BMP/PGM with torchvision only before ("Unsupported image file")."""
    a = smooth(16, 16)
    files = {"a.bmp": encode(Image.fromarray(a), "BMP"), "b.pgm": b"P5\n16 16\n255\n" + a[:, :, 0].tobytes(),
             "c.gif": encode(Image.fromarray(a).convert("P"), "GIF"), "d.tif": encode(Image.fromarray(a), "TIFF")}
    for name, blob in files.items():
        write(tmp_path / "imgs" / name, blob)
    (tmp_path / "pairs.txt").write_text("a.bmp b.pgm 1\nc.gif d.tif 0\n")
    pairs = read_pair_list(tmp_path / "pairs.txt", tmp_path / "imgs")
    images, flags = load_pair_images(pairs, tmp_path / "pairs.txt", image_size=16)
    assert images == list(files.values()) and flags == [True, False]

    with ShardWriter(tmp_path, "mixed") as writer:
        for k, blob in enumerate([*files.values(), bomb_png()]):
            writer.add(blob, k)
    report = scan_shard(tmp_path / "mixed" / "mixed-00000.tfrecord")
    assert report.records == 5
    assert len(report.problems) == 1 and "image is 12000x12000" in str(report.problems[0])


def test_pillow_refusing_first_still_gives_a_size_error():
    """Over twice Pillow's MAX_IMAGE_PIXELS, Pillow's ``open`` refuses before our check sees the size."""
    huge = png(20000, 20000, 8, 0, idat=b"")
    with pytest.raises(ImageTooLargeError, match="image has 400,000,000 pixels, over the limit of 40,000,000"):
        decode_rgb(huge)
    with pytest.raises(ImageTooLargeError, match="400,000,000 pixels, over Pillow's limit"):
        decode_rgb(huge, max_pixels=10**9)


CORRUPT_PNG = {  # each made torchvision 0.29's PNG decoder crash the process (libpng error → segfault)
    "crc": lambda good: good[:-20] + bytes([good[-20] ^ 1]) + good[-19:],
    "short": lambda good: png(8, 8, 8, 0, zlib.compress(b"\x00" * 10)),
    "filter": lambda good: png(8, 8, 8, 0, zlib.compress(b"".join(b"\x07" + b"\x00" * 8 for _ in range(8)))),
}

FRESH_PROCESS = """
import sys
import tface.core.data.image as m
assert "torchvision" not in sys.modules and "PIL" not in sys.modules, "imported eagerly"
jpeg, damaged = eval(sys.stdin.read())
m.decode_rgb(jpeg)  # with -W error::DeprecationWarning: torchvision's notice stays silenced
assert "torchvision" in sys.modules
for name, data in damaged.items():
    try:
        m.decode_rgb(data)
    except m.ImageDecodeError as exc:
        print(name, "error", exc)
    else:
        print(name, "decoded")
"""


def test_fresh_process_lazy_imports_and_damaged_png_is_an_error_not_a_crash():
    """One subprocess (importing torch is slow): a cheap import, no warning, no segfault on damaged PNGs."""
    good = encode(Image.fromarray(smooth()), "PNG")
    blobs = (encode(Image.fromarray(smooth()), "JPEG"), {name: make(good) for name, make in CORRUPT_PNG.items()})
    res = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", FRESH_PROCESS],
                         input=repr(blobs), capture_output=True, text=True)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-800:]}"
    assert [line.split()[:2] for line in res.stdout.splitlines()] == [[n, "error"] for n in CORRUPT_PNG]


def test_pack_writes_the_same_bytes_as_the_pillow_pipeline_for_ordinary_jpegs(tmp_path):
    """Records of plain JPEG/PNG inputs are unchanged by the switch of decoder (libjpeg-turbo either way)."""
    sources = {}
    for k, (fmt, sub) in enumerate([("JPEG", 0), ("JPEG", 2), ("JPEG", 1), ("PNG", None)]):
        kw = {"quality": 90, "subsampling": sub} if fmt == "JPEG" else {}
        data = encode(Image.fromarray(smooth(112, 112, seed=k)), fmt, **kw)
        sources[f"id{k}/{k}.{fmt.lower()}"] = write(tmp_path / "faces" / f"id{k}" / f"{k}.{fmt.lower()}", data)
    pack(tmp_path / "faces", tmp_path / "out", "f")
    shard = (tmp_path / "out" / "f" / "f-00000.tfrecord").read_bytes()
    for row in (tmp_path / "out" / "f" / "f.index").read_text().splitlines():
        path, _, offset = row.split("\t")
        (length,) = struct.unpack("<Q", shard[int(offset):int(offset) + 8])
        stored = bytes_feature(shard[int(offset) + 12:int(offset) + 12 + length], "image")
        with Image.open(sources[path]) as im:  # what pack did before: Pillow decode, Pillow encode
            assert stored == encode(im.convert("RGB"), "JPEG", quality=95), path
