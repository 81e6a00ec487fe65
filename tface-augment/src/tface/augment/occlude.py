"""Occluders placed by the five landmarks: face masks, glasses and sunglasses, headscarves and headbands.

Each is a sample op (``takes_sample = True``): it reads the landmarks of the
:class:`~tface.core.data.sample.FaceSample` it gets, so it lands on the face after any flip, rotation, shift
or crop placed before it, at any image size. Nothing is loaded from disk: every occluder is drawn here.

**The face frame.** From the landmarks: the eye centre ``E`` (mean of the eyes), ``ex`` = right eye − left
eye and ``ey`` = mouth centre − ``E``. Frame point ``(s, t)`` is pixel ``E + s·ex + t·ey``: the eyes are at
``(∓0.5, 0)``, the mouth centre at ``(0, 1)``, the nose tip near ``(0, 0.5)``. Shapes (polygons: mask
outlines, superellipse lenses, bands; strokes: rims, bridges, temple arms, ear loops) are written in frame
units, mapped to pixels, and rasterised with a signed distance in pixels, so their edges are anti-aliased
(coverage ``clamp(0.5 − d, 0, 1)``) and follow rotations and anisotropic stretching of the face exactly.
Textures (stripes, checks, dots, noise, weave, pleats, folds) are functions of ``(s, t)`` too, so a pattern
turns with the face.

**Blending.** Each op draws a variant (:meth:`draw`: style, shape, colour, pattern, size and position
jitter, all from torch's global generator, which the loader seeds per worker and batch), computes the
coverage map ``alpha`` ``[H, W]`` in [0, 1] (:meth:`alpha`) and a colour layer, and writes
``round(img·(1 − alpha) + layer·alpha)``: pixels the occluder does not reach are unchanged.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as nnf
from torch import Tensor

from tface.augment._base import PROBABILITY, Augmenter, between, randint, span, uniform
from tface.core.config import option, options
from tface.core.data.sample import FaceSample

__all__ = ["Frame", "Glasses", "Headscarf", "Mask", "blend"]

_FAR = 1e4  # signed distance of pixels outside a shape's bounding box
_PATTERNS = ("plain", "stripes", "checks", "dots", "noise", "fabric")


# ---------------------------------------------------------------------------------------------------
# The face frame and shapes in it


@attrs.frozen
class Frame:
    """The face-aligned frame of one sample: frame ``(s, t)`` is pixel ``origin + s·ex + t·ey``."""

    origin: Tensor  # [2] the eye centre, pixels (x, y)
    axes: Tensor  # [2, 2] columns ex (left eye → right eye) and ey (eye centre → mouth centre)
    h: int
    w: int

    @classmethod
    def of(cls, sample: FaceSample) -> Frame | None:
        """The frame of ``sample``'s landmarks; None when they are not finite or degenerate."""
        lm = sample.landmarks.detach().to(torch.float64).cpu()
        if lm.shape != (5, 2) or not bool(torch.isfinite(lm).all()):
            return None
        eye = (lm[0] + lm[1]) / 2
        ex, ey = lm[1] - lm[0], (lm[3] + lm[4]) / 2 - eye
        axes = torch.stack([ex, ey], dim=1)
        scale = float(ex.norm() * ey.norm())
        if scale < 1e-6 or abs(float(torch.linalg.det(axes))) < 0.05 * scale:
            return None  # the eyes and the mouth in a line: no face to place anything on
        h, w = sample.image.shape[-2:]
        return cls(eye.float(), axes.float(), int(h), int(w))

    @property
    def eye_distance(self) -> float:
        """Pixels per frame unit along the eye line."""
        return float(self.axes[:, 0].norm())

    @property
    def t_unit(self) -> float:
        """Pixels per frame unit along the eyes → mouth direction."""
        return float(self.axes[:, 1].norm())

    def to_pixels(self, st: Tensor) -> Tensor:
        """Frame points ``[K, 2]`` as pixel ``(x, y)`` ``[K, 2]``."""
        return self.origin + st.float() @ self.axes.T

    def coords(self) -> tuple[Tensor, Tensor]:
        """The frame coordinates ``(s, t)`` of every pixel centre, each ``[H, W]``."""
        ys, xs = torch.meshgrid(torch.arange(self.h, dtype=torch.float32), torch.arange(self.w, dtype=torch.float32),
                                indexing="ij")
        inverse = torch.linalg.inv(self.axes.double()).float()
        d = torch.stack([xs - self.origin[0], ys - self.origin[1]], dim=-1) @ inverse.T
        return d[..., 0], d[..., 1]


def _window(frame: Frame, pts: Tensor, pad: float) -> tuple[tuple[int, int, int, int], Tensor] | None:
    """The pixels within ``pad`` of the bounding box of ``pts`` (pixels ``[K, 2]``): their box and centres."""
    x0 = max(math.floor(float(pts[:, 0].min()) - pad), 0)
    x1 = min(math.ceil(float(pts[:, 0].max()) + pad), frame.w - 1)
    y0 = max(math.floor(float(pts[:, 1].min()) - pad), 0)
    y1 = min(math.ceil(float(pts[:, 1].max()) + pad), frame.h - 1)
    if x0 > x1 or y0 > y1:
        return None
    ys, xs = torch.meshgrid(torch.arange(y0, y1 + 1, dtype=torch.float32),
                            torch.arange(x0, x1 + 1, dtype=torch.float32), indexing="ij")
    return (y0, y1 + 1, x0, x1 + 1), torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def _segment_distance(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Distance from each point ``[N, 2]`` to the nearest of the segments ``a[k] → b[k]`` (``[K, 2]`` each)."""
    ex, ey = (b - a).unbind(1)
    inv = 1 / (ex * ex + ey * ey).clamp_min(1e-12)
    wx = p[:, 0:1] - a[:, 0]  # [N, K]
    wy = p[:, 1:2] - a[:, 1]
    h = ((wx * ex + wy * ey) * inv).clamp_(0, 1)
    dx = wx.sub_(h * ex)
    dy = wy.sub_(h * ey)
    return (dx.mul_(dx).add_(dy.mul_(dy))).min(dim=1).values.sqrt_()


def polygon_sd(frame: Frame, st: Tensor) -> Tensor:
    """Signed distance in pixels (negative inside) to the polygon with frame vertices ``st`` ``[K, 2]``.

    Exact within 2 px of the polygon's bounding box; ``_FAR`` beyond it (outside anyway).
    """
    out = torch.full((frame.h, frame.w), _FAR)
    pts = frame.to_pixels(st)
    found = _window(frame, pts, 2.0)
    if found is None:
        return out
    (y0, y1, x0, x1), p = found
    a, b = pts, pts.roll(-1, dims=0)
    dist = _segment_distance(p, a, b)
    py, px = p[:, 1:2], p[:, 0:1]
    ay, by = a[:, 1][None], b[:, 1][None]
    straddles = (ay <= py) != (by <= py)
    dy = torch.where(by == ay, torch.ones_like(by), by - ay)
    cross_x = a[:, 0][None] + (py - ay) * (b[:, 0] - a[:, 0])[None] / dy
    inside = ((straddles & (px < cross_x)).sum(dim=1) % 2) == 1
    out[y0:y1, x0:x1] = torch.where(inside, -dist, dist).view(y1 - y0, x1 - x0)
    return out


def stroke_sd(frame: Frame, st: Tensor, width: float) -> Tensor:
    """Signed distance in pixels to a polyline through frame points ``st`` ``[K, 2]``, ``width`` pixels thick."""
    out = torch.full((frame.h, frame.w), _FAR)
    pts = frame.to_pixels(st)
    found = _window(frame, pts, width / 2 + 2.0)
    if found is None:
        return out
    (y0, y1, x0, x1), p = found
    dist = _segment_distance(p, pts[:-1], pts[1:]) - width / 2
    out[y0:y1, x0:x1] = dist.view(y1 - y0, x1 - x0)
    return out


def coverage(sd: Tensor) -> Tensor:
    """Anti-aliased coverage of a pixel by a shape from its signed distance (pixels): a 1-pixel ramp."""
    return (0.5 - sd).clamp(0, 1)


def _sgnpow(x: Tensor, e: float) -> Tensor:
    return x.sign() * x.abs().pow(e)


def superellipse(cs: float, ct: float, rs: float, rt_top: float, rt_bottom: float, n: float = 2.0,
                 k: int = 40) -> Tensor:
    """``k`` frame vertices of ``|Δs/rs|^n + |Δt/rt|^n = 1`` (``rt`` = ``rt_top`` above, ``rt_bottom`` below)."""
    theta = torch.linspace(0, 2 * math.pi, k + 1)[:-1]
    c, s = torch.cos(theta), torch.sin(theta)
    rt = torch.where(s > 0, torch.tensor(rt_bottom), torch.tensor(rt_top))
    return torch.stack([cs + rs * _sgnpow(c, 2 / n), ct + rt * _sgnpow(s, 2 / n)], dim=1)


# ---------------------------------------------------------------------------------------------------
# Colours and textures


def _choice(items: Sequence[Any]) -> Any:
    return items[randint(0, len(items) - 1)]


def _hsv(h: float, s: float, v: float) -> list[float]:
    return [255.0 * c for c in colorsys.hsv_to_rgb(h % 1.0, s, v)]


def _jitter(rgb: Sequence[float], amount: float) -> list[float]:
    """``rgb`` with its brightness and each channel moved by up to ``amount`` (relative)."""
    g = 1 + uniform(-amount, amount)
    return [min(255.0, max(0.0, c * g * (1 + uniform(-amount / 2, amount / 2)))) for c in rgb]


def _fabric() -> dict[str, Any]:
    """A random fabric: two colours and a pattern (with its scale and angle in frame units)."""
    h, s, v = uniform(0, 1), uniform(0.15, 0.9), uniform(0.15, 0.95)
    main = _hsv(h, s, v)
    if uniform(0, 1) < 0.5:  # a second colour of the same hue, lighter or darker
        second = _hsv(h + uniform(-0.05, 0.05), s * uniform(0.3, 1.0), min(1.0, max(0.05, v + _choice([-0.4, 0.4]))))
    else:
        second = _hsv(uniform(0, 1), uniform(0.0, 0.9), uniform(0.2, 1.0))
    return {"colour": main, "second": second, "pattern": _choice(_PATTERNS), "period": uniform(0.14, 0.32),
            "angle": uniform(0, math.pi), "phase": uniform(0, 2 * math.pi), "noise": torch.rand(1, 1, 6, 6),
            "grain": torch.rand(1, 1, 24, 24)}


def _sample_grid(grid: Tensor, s: Tensor, t: Tensor, extent: float) -> Tensor:
    """Bilinear lookup of a small grid spread over ``[-extent, extent]²`` of the frame (about the face centre)."""
    g = torch.stack([s / extent, (t - 0.5) / extent], dim=-1)[None]
    return nnf.grid_sample(grid, g, mode="bilinear", padding_mode="reflection", align_corners=False)[0, 0]


def pattern(fabric: dict[str, Any], s: Tensor, t: Tensor, frame: Frame) -> Tensor:
    """The fabric's colour layer ``[3, H, W]`` (0-255 floats) at frame coordinates ``s``, ``t``."""
    kind, period, a, phase = fabric["pattern"], fabric["period"], fabric["angle"], fabric["phase"]
    u = s * math.cos(a) + t * math.sin(a)
    v = -s * math.sin(a) + t * math.cos(a)
    sharp = max(1.0, period * frame.eye_distance / 4)  # edges about 2 px wide at any image size

    def stripes(x: Tensor) -> Tensor:
        return (0.5 + sharp * torch.sin(2 * math.pi * x / period + phase)).clamp(0, 1)

    if kind == "stripes":
        mix = stripes(u)
    elif kind == "checks":  # gingham: the crossings are darkest
        mix = 0.5 * (stripes(u) + stripes(v))
    elif kind == "dots":
        du = torch.remainder(u / period + phase, 1.0) - 0.5
        dv = torch.remainder(v / period + phase, 1.0) - 0.5
        r = torch.sqrt(du * du + dv * dv) * period * frame.eye_distance  # pixels from the nearest dot centre
        mix = (0.5 + 0.3 * period * frame.eye_distance - r).clamp(0, 1)
    elif kind == "noise":  # blotches, camouflage-like
        mix = ((_sample_grid(fabric["noise"], s, t, 1.6) - 0.5) * 4 + 0.5).clamp(0, 1)
    elif kind == "fabric":  # a fine weave: mostly the main colour
        weave = torch.sin(2 * math.pi * s / (period / 3)) * torch.sin(2 * math.pi * t / (period / 3))
        mix = (0.15 + 0.1 * weave + 0.2 * (_sample_grid(fabric["grain"], s, t, 1.6) - 0.5)).clamp(0, 1)
    else:
        mix = torch.zeros_like(s)
    c1 = torch.tensor(fabric["colour"]).view(3, 1, 1)
    c2 = torch.tensor(fabric["second"]).view(3, 1, 1)
    layer = c1 * (1 - mix) + c2 * mix
    grain = 1 + 0.06 * (_sample_grid(fabric["grain"], s * 3, t * 3, 1.6) - 0.5)  # faint texture on every fabric
    return layer * grain


def _over(layers: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Composite ``(alpha [H, W], colour [3, H, W] or [3, 1, 1])`` layers bottom to top: ``(alpha, colour)``."""
    total = torch.zeros_like(layers[0][0])
    premultiplied = torch.zeros(3, *total.shape)
    for a, c in layers:
        premultiplied = c * a + premultiplied * (1 - a)
        total = a + total * (1 - a)
    return total, premultiplied / total.clamp_min(1e-6)


def blend(image: Tensor, alpha: Tensor, layer: Tensor) -> Tensor:
    """``round(image·(1 − alpha) + layer·alpha)`` as uint8; pixels with ``alpha = 0`` stay as they are."""
    out = image.float() * (1 - alpha) + layer * alpha
    return out.round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------
# The ops


class _Occluder(Augmenter):
    """Draw a variant with probability ``p``, render its coverage and colour, alpha-blend onto the image."""

    takes_sample = True
    styles: Sequence[str]

    def draw(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """One random variant (style, shape, colour, pattern, size, position jitter)."""
        raise NotImplementedError

    def _render(self, frame: Frame, v: dict[str, Any], with_layer: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError  # pragma: no cover - abstract

    def alpha(self, sample: FaceSample, params: dict[str, Any]) -> Tensor:
        """The coverage map ``[H, W]`` (float in [0, 1]) of the variant ``params`` on ``sample``."""
        frame = Frame.of(sample)
        if frame is None:
            return torch.zeros(sample.image.shape[-2:])
        return self._render(frame, params, False)[0]

    def render(self, sample: FaceSample, params: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``(alpha [H, W], layer [3, H, W])``: coverage and colour (0-255 floats) of the variant."""
        frame = Frame.of(sample)
        if frame is None:
            h, w = sample.image.shape[-2:]
            return torch.zeros(h, w), torch.zeros(3, h, w)
        a, layer = self._render(frame, params, True)
        assert layer is not None
        return a, layer

    def __call__(self, sample: FaceSample | Tensor) -> FaceSample | Tensor:  # type: ignore[override]
        if not self.fires():
            return sample
        if isinstance(sample, Tensor):  # a bare aligned crop: the template's landmarks
            return self._apply(FaceSample.aligned(sample)).image
        return self._apply(sample)

    def _apply(self, sample: FaceSample) -> FaceSample:
        params = self.draw()
        a, layer = self.render(sample, params)
        if not bool((a > 0).any()):
            return sample
        return FaceSample(blend(sample.image, a, layer).contiguous(), sample.landmarks)


MaskStyle = Literal["surgical", "cloth"]
GlassesStyle = Literal["regular", "sunglasses"]
ScarfStyle = Literal["headscarf", "headband"]
_NONEMPTY = attrs.validators.min_len(1)

_SURGICAL = ([150.0, 195.0, 225.0], [236.0, 238.0, 240.0], [34.0, 34.0, 38.0])  # light blue, white, black


@options
class Mask(_Occluder):
    """A face mask from the nose bridge down past the chin, between the cheeks.

    ``surgical``: light blue, white or black, with faint horizontal pleats and a seam along the edges;
    ``cloth``: contoured to a point over the nose, a random colour and pattern (plain, stripes, checks, dots,
    blotches, weave). Ear loops with probability ``ear_loops``. ``size`` scales the width and the depth below
    the mouth; ``shift`` moves it by up to that fraction of the eye distance (and of the eye-to-mouth distance).
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 styles: Sequence[MaskStyle] = option(("surgical", "cloth"), _NONEMPTY),
                 size: tuple[float, float] = option((0.9, 1.15), span(0.75, 1.3)),
                 opacity: tuple[float, float] = option((0.95, 1.0), span(0, 1)),
                 shift: float = option(0.04, between(0, 0.08)),
                 ear_loops: float = option(0.5, *PROBABILITY)):
        self._store(p=p, styles=styles, size=size, opacity=opacity, shift=shift, ear_loops=ear_loops)

    def draw(self) -> dict[str, Any]:
        style = _choice(self.styles)
        v: dict[str, Any] = {"style": style, "size": uniform(*self.size), "opacity": uniform(*self.opacity),
                             "ds": uniform(-self.shift, self.shift), "dt": uniform(-self.shift, self.shift),
                             "loops": bool(torch.rand(()) < self.ear_loops)}
        if style == "surgical":
            v.update(top_mid=uniform(0.26, 0.32), top_side=uniform(0.36, 0.44), q=2.0, n=uniform(2.6, 3.6),
                     width=uniform(0.86, 0.94), pleats=randint(2, 3))
            colour = _jitter(_choice(_SURGICAL), 0.06)
            v["fabric"] = {"colour": colour, "second": colour, "pattern": "plain", "period": 0.2, "angle": 0.0,
                           "phase": 0.0, "noise": torch.rand(1, 1, 6, 6), "grain": torch.rand(1, 1, 24, 24)}
            v["loop_colour"] = _jitter(_choice([_SURGICAL[1], colour]), 0.05)
        else:
            v.update(top_mid=uniform(0.18, 0.27), top_side=uniform(0.40, 0.50), q=uniform(1.1, 1.7),
                     n=uniform(2.0, 2.6), width=uniform(0.8, 0.88), pleats=0)
            v["fabric"] = _fabric()
            v["loop_colour"] = [c * 0.8 for c in v["fabric"]["colour"]]
        return v

    @staticmethod
    def outline(v: dict[str, Any]) -> Tensor:
        """The mask's frame polygon: a curved top edge, straight sides, a superellipse bottom."""
        w = v["width"] * v["size"]
        corner, bottom = 0.85, 1.0 + 0.62 * v["size"]
        s = torch.linspace(-w, w, 17)
        top = v["top_mid"] + (v["top_side"] - v["top_mid"]) * (s.abs() / w).pow(v["q"])
        theta = torch.linspace(0, math.pi, 25)
        bs = w * _sgnpow(torch.cos(theta), 2 / v["n"])
        bt = corner + (bottom - corner) * torch.sin(theta).abs().pow(2 / v["n"])
        st = torch.cat([torch.stack([s, top], 1), torch.stack([bs, bt], 1)])
        return st + torch.tensor([v["ds"], v["dt"]])

    def _render(self, frame: Frame, v: dict[str, Any], with_layer: bool) -> tuple[Tensor, Tensor | None]:
        sd = polygon_sd(frame, self.outline(v))
        body = coverage(sd)
        layers = []
        w = v["width"] * v["size"]
        thin = max(0.8, 0.025 * frame.eye_distance)
        if v["loops"]:
            loop_a = torch.zeros_like(body)
            for side in (-1.0, 1.0):
                path = torch.tensor([[w * 0.97, v["top_side"] + 0.04], [w + 0.24, 0.12], [w + 0.3, 0.42],
                                     [w + 0.22, 0.72], [w * 0.97, 0.95]])
                path = path * torch.tensor([side, 1.0]) + torch.tensor([v["ds"], v["dt"]])
                loop_a = torch.maximum(loop_a, coverage(stroke_sd(frame, path, thin)))
            layers.append((loop_a, torch.tensor(v["loop_colour"]).view(3, 1, 1)))
        alpha_total = body if not layers else layers[0][0] + body * (1 - layers[0][0])  # as _over composes
        if not with_layer:
            return alpha_total * v["opacity"], None
        s, t = frame.coords()
        colour = pattern(v["fabric"], s, t, frame)
        rel = ((s - v["ds"]) / w).clamp(-1.2, 1.2)
        shade = 1 - 0.22 * rel * rel  # the mask bends round the cheeks
        edge = (1 + sd / max(1.0, 0.05 * frame.eye_distance)).clamp(0, 1)  # a seam along the outline
        shade = shade * (1 - 0.1 * edge)
        if v["pleats"]:
            sigma = max(0.6, 0.012 * frame.eye_distance) / frame.t_unit
            bottom = 1.0 + 0.62 * v["size"]
            for i in range(v["pleats"]):
                ti = v["dt"] + 0.5 + (i + 1) / (v["pleats"] + 1) * (bottom - 0.75)
                shade = shade * (1 - 0.14 * torch.exp(-((t - ti) / sigma) ** 2)
                                 + 0.05 * torch.exp(-((t - ti + 2.5 * sigma) / (1.5 * sigma)) ** 2))
        else:  # cloth: a seam down the middle and a highlight on the nose ridge
            shade = shade * (1 - 0.1 * torch.exp(-((s - v["ds"]) * frame.eye_distance / 0.8) ** 2)
                             + 0.06 * torch.exp(-((s - v["ds"]) / 0.12) ** 2) * (t < 0.8))
        layers.insert(0, (body, colour * shade))
        a, layer = _over(layers)
        return a * v["opacity"], layer


@options
class Glasses(_Occluder):
    """Glasses over the eyes, turned with the eye line: two lenses, their rims, a bridge and temple arms.

    ``regular``: clear lenses with a slight tint (alpha drawn from ``tint``) and a faint reflection;
    ``sunglasses``: dark lenses (alpha from ``shade``), sometimes graded lighter towards the bottom.
    Lens shapes: round, rectangular, aviator, cat-eye; frames black, tortoiseshell, gold, silver or coloured,
    thin (metal) or thick (plastic). ``size`` scales the lenses; ``shift`` moves them up or down by up to that
    fraction of the eye-to-mouth distance.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 styles: Sequence[GlassesStyle] = option(("regular", "sunglasses"), _NONEMPTY),
                 size: tuple[float, float] = option((0.9, 1.1), span(0.8, 1.15)),
                 tint: tuple[float, float] = option((0.06, 0.2), span(0, 0.6)),
                 shade: tuple[float, float] = option((0.86, 0.97), span(0.3, 1)),
                 shift: float = option(0.03, between(0, 0.05))):
        self._store(p=p, styles=styles, size=size, tint=tint, shade=shade, shift=shift)

    _SHAPES = {  # half-width, top and bottom half-heights (frame units), superellipse exponent
        "round": (0.33, 0.28, 0.28, 2.0), "rect": (0.39, 0.2, 0.2, 4.5),
        "aviator": (0.39, 0.23, 0.3, 2.3), "cat": (0.39, 0.22, 0.19, 3.2),
    }

    def draw(self) -> dict[str, Any]:
        style = _choice(self.styles)
        shape = _choice(sorted(self._SHAPES))
        size = uniform(*self.size)
        rs, top, bottom, n = self._SHAPES[shape]
        metal = bool(torch.rand(()) < 0.4)
        if metal:
            rim = _jitter(_choice([[205.0, 175.0, 95.0], [185.0, 188.0, 195.0], [60.0, 60.0, 64.0]]), 0.08)
        else:
            rim = _choice([[22.0, 22.0, 25.0], [70.0, 42.0, 22.0], _hsv(uniform(0, 1), uniform(0.4, 0.9),
                                                                        uniform(0.25, 0.7))])
        v: dict[str, Any] = {
            "style": style, "shape": shape, "rs": min(rs * size, 0.44), "top": top * size, "bottom": bottom * size,
            "n": n,
            "dt": uniform(-self.shift, self.shift), "metal": metal, "rim": rim,
            "thickness": uniform(0.018, 0.03) if metal else uniform(0.035, 0.06),
            "tortoise": (not metal) and bool(torch.rand(()) < 0.3), "noise": torch.rand(1, 1, 12, 12),
            "glint": uniform(0.1, 0.3), "glint_angle": uniform(0.5, 1.1),
        }
        if style == "sunglasses":
            v["lens"] = _jitter(_choice([[28.0, 28.0, 30.0], [45.0, 32.0, 22.0], [26.0, 40.0, 30.0],
                                         [20.0, 30.0, 55.0]]), 0.15)
            v["lens_alpha"], v["gradient"] = uniform(*self.shade), bool(torch.rand(()) < 0.3)
        else:
            v["lens"] = _choice([[150.0, 158.0, 168.0], [170.0, 140.0, 100.0], [120.0, 145.0, 180.0],
                                 [205.0, 200.0, 150.0]])
            v["lens_alpha"], v["gradient"] = uniform(*self.tint), False
        return v

    def lenses(self, v: dict[str, Any]) -> list[Tensor]:
        """The two lens outlines (frame polygons), centred on the eyes."""
        return [superellipse(cs, v["dt"], v["rs"], v["top"], v["bottom"], v["n"]) for cs in (-0.5, 0.5)]

    def _render(self, frame: Frame, v: dict[str, Any], with_layer: bool) -> tuple[Tensor, Tensor | None]:
        lens_sd = torch.minimum(*[polygon_sd(frame, poly) for poly in self.lenses(v)])
        width = max(0.7, v["thickness"] * frame.eye_distance)
        rim_a = coverage(lens_sd.abs() - width / 2)
        rs, top, dt = v["rs"], v["top"], v["dt"]
        inner = 0.5 - rs * 0.95
        bridge = torch.tensor([[-inner, dt - top * 0.45], [-inner / 2, dt - top * 0.6], [0.0, dt - top * 0.64],
                               [inner / 2, dt - top * 0.6], [inner, dt - top * 0.45]])
        rim_a = torch.maximum(rim_a, coverage(stroke_sd(frame, bridge, width * 0.9)))
        for side in (-1.0, 1.0):
            arm = torch.tensor([[0.5 + rs * 0.97, dt - top * 0.5], [0.5 + rs + 0.12, dt - top * 0.55],
                                [1.2, dt - top * 0.3]]) * torch.tensor([side, 1.0])
            rim_a = torch.maximum(rim_a, coverage(stroke_sd(frame, arm, width * 0.85)))
        inside = coverage(lens_sd)
        lens_a = inside * v["lens_alpha"]
        s, t = frame.coords()
        if v["gradient"]:
            fade = ((t - dt) / v["bottom"] - 0.5).clamp(0, 1)
            lens_a = lens_a * (1 - 0.35 * fade)
        u = (torch.remainder(s + 0.5, 1.0) - 0.5) * math.cos(v["glint_angle"]) + (t - dt) * math.sin(v["glint_angle"])
        glint = inside * v["glint"] * torch.exp(-((u + 0.12) / 0.07) ** 2)  # a soft reflection across each lens
        rim_c = torch.tensor(v["rim"]).view(3, 1, 1)
        if v["tortoise"]:
            spots = _sample_grid(v["noise"], s * 2, t * 2, 1.6)
            rim_c = rim_c * (0.6 + 0.9 * spots)
        elif v["metal"]:  # a highlight along the top of the rims
            rim_c = rim_c * (1 + 0.25 * (t < dt))
        layers = [(lens_a, torch.tensor(v["lens"]).view(3, 1, 1)),
                  (glint, torch.full((3, 1, 1), 245.0)), (rim_a, rim_c.clamp(0, 255))]
        a, layer = _over(layers)
        return a, (layer if with_layer else None)


@options
class Headscarf(_Occluder):
    """Fabric over the head, placed by the eyes and mouth.

    ``headscarf``: covers the forehead, the hair and the sides of the face down to about mouth level, leaving
    an oval opening for the eyes, nose and mouth; drapes with soft folds and a shadow along the opening.
    ``headband``: a band across the forehead above the eyebrows, following its curve. A random colour and
    pattern (plain, stripes, checks, dots, blotches, weave). ``size`` scales the scarf's reach and the band's
    height.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 styles: Sequence[ScarfStyle] = option(("headscarf", "headband"), _NONEMPTY),
                 size: tuple[float, float] = option((0.9, 1.1), span(0.85, 1.3)),
                 opacity: tuple[float, float] = option((0.95, 1.0), span(0, 1))):
        self._store(p=p, styles=styles, size=size, opacity=opacity)

    def draw(self) -> dict[str, Any]:
        style = _choice(self.styles)
        size = uniform(*self.size)
        v: dict[str, Any] = {"style": style, "size": size, "opacity": uniform(*self.opacity), "fabric": _fabric(),
                             "folds": uniform(5, 9), "fold_phase": uniform(0, 2 * math.pi)}
        if style == "headscarf":
            v.update(top=uniform(-0.5, -0.36), half_width=uniform(0.82, 0.95), outer_s=uniform(1.5, 1.8) * size,
                     outer_t=uniform(1.5, 1.8) * size, bottom=uniform(0.85, 1.15) + 0.3 * (size - 1),
                     ds=uniform(-0.03, 0.03))
        else:
            v.update(edge=uniform(-0.52, -0.4), height=uniform(0.44, 0.56) * size, bend=uniform(0.0, 0.12),
                     half_width=uniform(1.0, 1.2))
            if torch.rand(()) < 0.4:  # knitted ribs across the band
                v["fabric"].update(pattern="stripes", angle=0.0, period=uniform(0.05, 0.09))
        return v

    @staticmethod
    def opening(v: dict[str, Any]) -> Tensor:
        """The face opening of a headscarf: an egg from ``top`` down past the chin."""
        rt = 0.95
        return superellipse(v["ds"], v["top"] + rt, v["half_width"], rt, 1.3, 2.0, 48)

    @staticmethod
    def outer(v: dict[str, Any]) -> Tensor:
        """A headscarf's outline: a big oval round the head, cut level at ``bottom``."""
        st = superellipse(v["ds"], 0.0, v["outer_s"], v["outer_t"], v["outer_t"], 2.2, 36)
        return torch.stack([st[:, 0], st[:, 1].clamp(max=v["bottom"])], dim=1)

    @staticmethod
    def band(v: dict[str, Any]) -> Tensor:
        """A headband's outline: two edges bending down towards the temples."""
        s = torch.linspace(-v["half_width"], v["half_width"], 33)
        lower = v["edge"] + v["bend"] * s * s
        return torch.cat([torch.stack([s, lower], 1), torch.stack([s.flip(0), lower.flip(0) - v["height"]], 1)])

    def _render(self, frame: Frame, v: dict[str, Any], with_layer: bool) -> tuple[Tensor, Tensor | None]:
        if v["style"] == "headscarf":
            open_sd = polygon_sd(frame, self.opening(v))
            sd = torch.maximum(polygon_sd(frame, self.outer(v)), -open_sd)
        else:
            open_sd, sd = None, polygon_sd(frame, self.band(v))
        a = coverage(sd) * v["opacity"]
        if not with_layer:
            return a, None
        s, t = frame.coords()
        colour = pattern(v["fabric"], s, t, frame)
        if open_sd is not None:
            angle = torch.atan2(t - (v["top"] + 0.95), s - v["ds"])
            shade = 1 + 0.1 * torch.sin(angle * v["folds"] + v["fold_phase"])
            shade = shade * (1 - 0.3 * torch.exp(-open_sd.clamp(min=0) / max(1.0, 0.08 * frame.eye_distance)))
        else:  # rounded: lighter along the middle of the band
            mid = v["edge"] - v["height"] / 2 + v["bend"] * s * s
            shade = 1 - 0.25 * ((t - mid) / (v["height"] / 2)).clamp(-1, 1) ** 2 - 0.1 * (s / v["half_width"]) ** 2
        return a, (colour * shade).clamp(0, 255)
