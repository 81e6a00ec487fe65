"""5-point alignment: the similarity fit against a closed form, the warp against brute force and Pillow,
landmarks landing on the template, and the landmark-list format."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from tface.core.data.align import (
    ARCFACE_TEMPLATE,
    align_face,
    read_landmark_list,
    reduce68,
    similarity_transform,
    template,
    transform_points,
    warp,
)
from tface.core.data.index import IndexFormatError


def complex_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares ``dst ≈ a·src + b`` over complex a, b (rotation + scale, no reflection) as a 2×3 matrix."""
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sc, dc = s - s.mean(), d - d.mean()
    a = (np.conj(sc) * dc).sum() / (np.abs(sc) ** 2).sum()
    b = d.mean() - a * s.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def brute_force_warp(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """cv2.warpAffine semantics one pixel at a time: pixel centres at integers, outside pixels black."""
    a, b, c = m[0]
    d, e, f = m[1]
    det = a * e - b * d
    h, w = img.shape[:2]
    out = np.zeros((size, size, 3), dtype=np.uint8)
    for v in range(size):
        for u in range(size):
            x = (e * (u - c) - b * (v - f)) / det
            y = (-d * (u - c) + a * (v - f)) / det
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0
            acc = np.zeros(3)
            for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                    if 0 <= xx < w and 0 <= yy < h:
                        acc += wx * wy * img[yy, xx]
            out[v, u] = np.clip(np.floor(acc + 0.5), 0, 255)
    return out


def test_template_is_the_arcface_112_template():
    want = [(38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)]
    assert ARCFACE_TEMPLATE.shape == (5, 2)
    np.testing.assert_array_equal(ARCFACE_TEMPLATE, np.array(want))
    np.testing.assert_allclose(template(224), np.array(want) * 2)


def test_similarity_recovers_an_exact_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, size=(5, 2))
    m = similarity(0.7, 1.7, -12.0, 33.0)
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), m, atol=1e-9)
    np.testing.assert_allclose(transform_points(m, src), dst, atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_similarity_matches_the_closed_form_least_squares(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 300, size=(5, 2))
    dst = rng.uniform(0, 112, size=(5, 2))  # unrelated points: the fit is a genuine compromise
    if seed % 2:
        dst = src * np.array([-1.0, 1.0]) + rng.normal(0, 3, size=(5, 2))  # a mirror: no reflection allowed
    got = similarity_transform(src, dst)
    np.testing.assert_allclose(got, complex_fit(src, dst), atol=1e-9)
    lin = got[:, :2]
    assert np.linalg.det(lin) >= 0
    assert lin[0, 0] == pytest.approx(lin[1, 1]) and lin[0, 1] == pytest.approx(-lin[1, 0])


def test_similarity_collinear_and_degenerate_points():
    src = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    dst = np.array([[5.0, 5.0], [5.0, 7.0], [5.0, 9.0], [5.0, 11.0]])
    np.testing.assert_allclose(similarity_transform(src, dst), complex_fit(src, dst), atol=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="finite"):
        similarity_transform(np.full((5, 2), np.nan), ARCFACE_TEMPLATE)


def test_warp_matches_brute_force_bilinear_everywhere():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(90, 80, 3), dtype=np.uint8)
    m = similarity(0.4, 1.3, -20.0, 5.0)  # part of the output falls outside the image: black border
    got = warp(img, m, 56)
    want = brute_force_warp(img, m, 56)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert (got == 0).all(axis=2).any(), "the test should cover the black border"


def test_warp_agrees_with_pillow_inside_the_image():
    """Pillow puts pixel centres at +0.5: converting the inverse map that way must give the same pixels."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(150, 130, 3), dtype=np.uint8)
    m = similarity(0.3, 0.8, 5.0, -10.0)
    ai = np.linalg.inv(m[:, :2])
    ti = -ai @ m[:, 2]
    c = ti + 0.5 - ai @ np.array([0.5, 0.5])
    pil = np.asarray(Image.fromarray(img).transform(
        (112, 112), Image.AFFINE, (ai[0, 0], ai[0, 1], c[0], ai[1, 0], ai[1, 1], c[1]), resample=Image.BILINEAR))
    ys, xs = np.mgrid[0:112, 0:112]
    sx = ai[0, 0] * xs + ai[0, 1] * ys + ti[0]
    sy = ai[1, 0] * xs + ai[1, 1] * ys + ti[1]
    inside = (sx >= 0) & (sx <= 129) & (sy >= 0) & (sy <= 149)
    assert inside.sum() > 5000
    diff = np.abs(warp(img, m).astype(int) - pil.astype(int)).max(axis=2)
    assert diff[inside].max() <= 1


def test_warp_identity_and_integer_shift_are_exact():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp(img, np.array([[1.0, 0, 0], [0, 1.0, 0]])), img)
    shifted = warp(img, np.array([[1.0, 0, 3], [0, 1.0, -2]]))
    np.testing.assert_array_equal(shifted[:110, 3:], img[2:, :109])
    assert (shifted[:, :3] == 0).all() and (shifted[110:] == 0).all()
    grey = warp(img[:, :, 0], np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    np.testing.assert_array_equal(grey, np.repeat(img[:, :, :1], 3, axis=2))


def test_landmarks_land_on_the_template():
    """Blobs drawn at the landmarks end up centred on the template points (checks the pixel-centre convention)."""
    m_true = similarity(-0.35, 1.6, 31.0, 18.0)  # template -> photo
    pts = transform_points(m_true, ARCFACE_TEMPLATE)
    h, w = 230, 210
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sigma = 3.2  # 2 px after the 1/1.6 scale
    canvas = np.zeros((h, w))
    for x, y in pts:
        canvas += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    img = np.repeat(np.clip(canvas * 250, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)

    np.testing.assert_allclose(transform_points(similarity_transform(pts, ARCFACE_TEMPLATE), pts),
                               ARCFACE_TEMPLATE, atol=1e-9)
    out = align_face(img, pts).astype(np.float64)[:, :, 0]
    oy, ox = np.mgrid[0:112, 0:112].astype(np.float64)
    for tx, ty in ARCFACE_TEMPLATE:
        win = (np.abs(ox - tx) <= 9) & (np.abs(oy - ty) <= 9)
        wgt = out * win
        cx, cy = (wgt * ox).sum() / wgt.sum(), (wgt * oy).sum() / wgt.sum()
        assert abs(cx - tx) < 0.1 and abs(cy - ty) < 0.1, (cx, cy, tx, ty)


def test_reduce68_and_align_with_68_points():
    rng = np.random.default_rng(5)
    p = rng.uniform(20, 180, size=(68, 2))
    want = np.array([(p[36] + p[39]) / 2, (p[42] + p[45]) / 2, p[30], p[48], p[54]])
    np.testing.assert_allclose(reduce68(p), want)
    np.testing.assert_allclose(reduce68(p.ravel()), want)
    with pytest.raises(ValueError):
        reduce68(p[:60])
    img = rng.integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(img, p), align_face(img, want))
    assert align_face(img, want, size=64).shape == (64, 64, 3)


def test_read_landmark_list_formats(tmp_path):
    rng = np.random.default_rng(6)
    five = rng.uniform(0, 100, size=10).round(3)
    sixty8 = rng.uniform(0, 100, size=136).round(3)
    text = "\n".join([
        "a/1.jpg " + " ".join(map(str, five)),
        "a/2.jpg " + " ".join(map(str, five)) + " 0.98",
        "",
        "b/1.jpg " + " ".join(map(str, sixty8)),
        "b/2.jpg\t" + " ".join(map(str, sixty8)) + " 0.5",
    ]) + "\n"
    path = tmp_path / "pts.txt"
    path.write_text(text)
    got = read_landmark_list(path)
    assert list(got) == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg"]
    np.testing.assert_allclose(got["a/1.jpg"], five.reshape(5, 2))
    np.testing.assert_allclose(got["a/2.jpg"], five.reshape(5, 2))
    p = sixty8.reshape(68, 2)
    want68 = [(p[36] + p[39]) / 2, (p[42] + p[45]) / 2, p[30], p[48], p[54]]
    np.testing.assert_allclose(got["b/1.jpg"], want68)
    np.testing.assert_allclose(got["b/2.jpg"], want68)


@pytest.mark.parametrize("line, match", [
    ("x.jpg " + " ".join(["1"] * 9), "got 9 numbers"),
    ("x.jpg " + " ".join(["1"] * 12), "got 12 numbers"),
    ("x.jpg " + " ".join(["1"] * 138), "got 138 numbers"),
    ("x.jpg", "got 0 numbers"),
    ("x.jpg " + " ".join(["1"] * 9) + " abc", "not a number: 'abc'"),
    ("x.jpg " + " ".join(["1"] * 9) + " nan", "finite"),
])
def test_read_landmark_list_bad_lines_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "pts.txt"
    path.write_text("ok.jpg " + " ".join(["2"] * 10) + "\n" + line + "\n")
    with pytest.raises(IndexFormatError, match=match) as info:
        read_landmark_list(path)
    assert f"{path}:2:" in str(info.value)


def test_read_landmark_list_duplicate_and_missing(tmp_path):
    path = tmp_path / "pts.txt"
    row = " ".join(["2"] * 10)
    path.write_text(f"a.jpg {row}\nb.jpg {row}\na.jpg {row} 0.9\n")
    with pytest.raises(IndexFormatError, match=r"pts.txt:3: 'a.jpg' already has landmarks \(line 1\)"):
        read_landmark_list(path)
    with pytest.raises(IndexFormatError, match="cannot read"):
        read_landmark_list(tmp_path / "missing.txt")
