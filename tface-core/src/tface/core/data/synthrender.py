"""SynthFace renderer: deterministic procedural face identities and images.

This is the embedded default training set: nothing is downloaded, every byte follows from a seed. An
:class:`Identity` holds everything that stays fixed for one person (geometry, colours, skin texture,
marks); :func:`render` draws one photo of it, with its own random nuisance (pose, expression, lighting,
background, occluders, blur, noise), so a model has to learn *who* it is, not *how* it was shot.

:data:`GROUP_LOOKS` are synthetic demographic-style groups (narrowed skin and hair colour ranges, smaller
faces), not races: :func:`apply_look` puts an identity into one, :func:`group_of_families` plans an
imbalanced training set, and the ``look`` argument of the pair functions renders per-group held-out pairs.

Identity differences are deliberately partly subtle (feature geometry, marks, texture) and the nuisance
deliberately strong in global colour and brightness, so an untrained network's colour and layout
statistics score near chance while a trained one verifies well. Sibling identities (:func:`sibling`)
share most parameters with a base identity; they are the hard impostors.

Every random draw comes from a ``numpy`` Generator seeded through :class:`numpy.random.SeedSequence`
with a key per split, identity and image, so any slice of the data can be rendered in any process, in
any order, and gives the same bytes. Only numpy, Pillow and attrs are used.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Iterator

import attrs
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

__all__ = [
    "VERSION",
    "Identity",
    "Nuisance",
    "NUISANCE",
    "HARD_NUISANCE",
    "NUISANCE_LEVELS",
    "PARAMS",
    "FAMILY_TRAITS",
    "GroupLook",
    "GROUP_LOOKS",
    "apply_look",
    "group_of_families",
    "sample_identity",
    "sibling",
    "identity_vector",
    "render",
    "identity_rng",
    "image_rng",
    "train_identity",
    "train_identities",
    "train_images",
    "PairSpec",
    "pair_specs",
    "render_pair",
    "verification_pairs",
]

#: Bumped whenever the bytes for a given seed change (cache folders are keyed on it).
VERSION = 1

#: Continuous identity parameters: name -> (low, high); sampled uniformly, lengths in 112-px units.
PARAMS: dict[str, tuple[float, float]] = {
    "face_w": (30.0, 40.0),  # half width at the cheeks
    "face_h": (43.0, 50.0),  # half height (centre to chin)
    "face_cy": (57.0, 61.0),
    "jaw": (0.0, 1.0),  # 0: round jaw, 1: narrow/pointed chin
    "forehead": (0.85, 1.05),  # upper half width relative to face_w
    "eye_dx": (14.5, 21.0),  # half the distance between the eye centres
    "eye_y": (49.0, 55.0),
    "eye_w": (6.0, 9.5),
    "eye_h": (2.6, 4.6),
    "eye_tilt": (-0.22, 0.22),  # radians, outer corner up when positive
    "iris_r": (2.4, 3.6),
    "eye_asym": (-1.2, 1.2),  # vertical offset between the eyes
    "brow_dy": (6.0, 10.5),
    "brow_len": (10.0, 17.0),
    "brow_thick": (1.0, 4.2),
    "brow_arch": (-0.5, 3.5),
    "brow_tilt": (-0.25, 0.25),
    "brow_inner": (-2.0, 3.0),  # horizontal offset of the inner brow end
    "nose_y": (65.0, 77.0),  # tip height
    "nose_w": (4.5, 9.5),
    "nose_len": (10.0, 20.0),
    "nostril": (0.8, 2.2),
    "nose_bridge": (0.0, 1.0),  # visibility of the bridge shading
    "nose_x": (-1.2, 1.2),
    "mouth_y": (86.0, 97.0),
    "mouth_w": (8.5, 16.0),
    "lip_up": (1.4, 3.8),
    "lip_lo": (2.0, 5.2),
    "mouth_curve": (-1.6, 1.6),
    "bow": (0.0, 1.6),  # Cupid's bow depth
    "ear_y": (50.0, 62.0),
    "ear_size": (7.0, 12.0),
    "hairline": (14.0, 30.0),
    "hair_volume": (0.0, 9.0),
    "fringe": (-1.0, 1.0),  # side and slant of the fringe
    "skin_tone": (0.0, 1.0),
    "skin_hue": (-1.0, 1.0),
    "hair_tone": (0.0, 1.0),
    "hair_red": (0.0, 1.0),
    "iris_tone": (0.0, 1.0),
    "lip_tone": (0.0, 1.0),
    "brow_dark": (0.3, 1.0),
    "blush": (0.0, 1.0),
    "beard_density": (0.2, 1.0),
    "tex_amp": (0.05, 0.16),
    "tex_cells": (6.0, 16.0),
    "freckles": (0.0, 1.0),
    "cheekbone": (0.0, 1.0),  # visibility of a cheekbone shadow
    "dimple": (0.0, 1.0),
}
_NAMES = tuple(PARAMS)
_INDEX = {n: i for i, n in enumerate(_NAMES)}
_LO = np.array([v[0] for v in PARAMS.values()], dtype=np.float64)
_HI = np.array([v[1] for v in PARAMS.values()], dtype=np.float64)

HAIR_STYLES = 5  # 0 short, 1 side-swept fringe, 2 long sides, 3 shaved, 4 straight bangs
BEARDS = 4  # 0 none, 1 moustache, 2 goatee, 3 full beard
_MAX_MOLES = 4
#: Parameters a sibling inherits almost unchanged: the "family look" (colouring and hair), which is
#: what coarse colour/layout statistics see. Geometry, marks, texture and beard differ individually.
FAMILY_TRAITS = ("skin_tone", "skin_hue", "hair_tone", "hair_red", "iris_tone", "lip_tone", "hair_volume",
                 "hairline", "fringe", "blush")
_FAMILY_MASK = np.array([n in FAMILY_TRAITS for n in _NAMES])
#: How far family traits move in a sibling, relative to individual ones.
FAMILY_STEP = 0.5


@attrs.frozen
class Nuisance:
    """Strengths of the per-photo nuisance (one module-wide setting, :data:`NUISANCE`).

    Photometric nuisance (background, light, colour cast) is deliberately strong: it dominates what an
    untrained network sees. Geometric nuisance (pose, expression) stays moderate, so identity geometry
    remains learnable.
    """

    yaw: float = 0.45  # std of the yaw-like turn, in [-1, 1] units
    roll_deg: float = 5.0
    shift: float = 2.0  # std, pixels
    scale: float = 0.07  # uniform +-
    smile: float = 0.35  # std of the smile
    mouth_open_p: float = 0.2
    blink_p: float = 0.04
    occluder_p: float = 0.12  # bar or blob in the image frame
    glasses_p: float = 0.1
    sunglasses_p: float = 0.1  # share of glasses that are dark
    gradient: float = 0.6  # max lighting gradient across the image
    brightness: tuple[float, float] = (0.6, 1.3)
    cast: float = 0.1  # std of the log per-channel gain
    contrast: tuple[float, float] = (0.75, 1.2)
    gamma: float = 0.15  # std of log gamma
    blur_p: float = 0.6
    blur_max: float = 1.4
    noise_max: float = 9.0


NUISANCE = Nuisance()

#: Strong nuisance: SynthFace's "hard" photos (``nuisance = "hard"``), the student data of DDL. Wider turns and
#: tilts, more and darker occluders and sunglasses, harsh light, heavy blur and noise; the identity is the same.
HARD_NUISANCE = Nuisance(yaw=0.8, roll_deg=10.0, shift=4.0, scale=0.12, occluder_p=0.4, glasses_p=0.25,
                         sunglasses_p=0.5, gradient=1.0, brightness=(0.35, 1.5), cast=0.2, contrast=(0.5, 1.3),
                         gamma=0.3, blur_p=0.9, blur_max=2.6, noise_max=20.0)

#: The nuisance levels by name (SynthFace's ``nuisance`` option).
NUISANCE_LEVELS = {"normal": NUISANCE, "hard": HARD_NUISANCE}


@attrs.frozen
class Identity:
    """Everything fixed for one synthetic person; rendering adds only per-photo nuisance."""

    values: tuple[float, ...]  # PARAMS in order, in their natural units
    hair_style: int
    beard: int
    moles: tuple[tuple[float, float, float, float], ...]  # (x, y, radius, darkness) in 112-px face units
    texture_seed: int  # skin noise pattern
    freckle_seed: int
    scale: float = 1.0  # size of the face in the photo (multiplies the pose scale); a group look sets it

    def __getattr__(self, name: str) -> float:
        # Named access to the continuous parameters: ``identity.eye_dx``.
        if name.startswith("_") or name == "values":
            raise AttributeError(name)
        try:
            return self.values[_INDEX[name]]
        except KeyError:
            raise AttributeError(name) from None


def _sample_mole(rng: np.random.Generator) -> tuple[float, float, float, float]:
    # Moles land on the cheeks, forehead, chin or beside the nose, never inside the eyes.
    region = rng.integers(4)
    if region == 0:  # cheek
        x, y = rng.choice([-1, 1]) * rng.uniform(10, 26), rng.uniform(62, 84)
    elif region == 1:  # forehead
        x, y = rng.uniform(-18, 18), rng.uniform(28, 40)
    elif region == 2:  # chin / jaw
        x, y = rng.uniform(-14, 14), rng.uniform(98, 104)
    else:  # near the nose or the mouth
        x, y = rng.choice([-1, 1]) * rng.uniform(7, 14), rng.uniform(70, 90)
    return (float(x), float(y), float(rng.uniform(1.2, 2.6)), float(rng.uniform(0.4, 0.8)))


def sample_identity(rng: np.random.Generator) -> Identity:
    """A fresh random identity: every parameter drawn independently from its range."""
    u = rng.random(len(_NAMES))
    n_moles = int(rng.choice(_MAX_MOLES + 1, p=[0.25, 0.3, 0.25, 0.12, 0.08]))
    return Identity(
        values=tuple(float(v) for v in _LO + u * (_HI - _LO)),
        hair_style=int(rng.integers(HAIR_STYLES)),
        beard=int(rng.choice(BEARDS, p=[0.55, 0.15, 0.12, 0.18])),
        moles=tuple(_sample_mole(rng) for _ in range(n_moles)),
        texture_seed=int(rng.integers(2**31)),
        freckle_seed=int(rng.integers(2**31)),
    )


def sibling(base: Identity, rng: np.random.Generator, closeness: float) -> Identity:
    """A *similar but different* identity, for hard impostors and fine-grained training classes.

    ``closeness`` in [0, 1]; 1 returns ``base`` itself. Individual parameters (geometry, brows, texture
    amplitude...) move the fraction ``1 - closeness`` of the way towards a fresh random identity and
    each discrete trait (beard, each mole, texture and freckle pattern) is kept with probability
    ``closeness``; the family look (:data:`FAMILY_TRAITS`, hair style) moves only :data:`FAMILY_STEP` as much, like
    real siblings, so that colour and hair alone cannot tell them apart.
    """
    c = float(np.clip(closeness, 0.0, 1.0))
    other = sample_identity(rng)
    a, b = np.array(base.values), np.array(other.values)
    step = np.where(_FAMILY_MASK, FAMILY_STEP * (1.0 - c), 1.0 - c)  # family traits move less
    values = a + step * (b - a)
    keep = rng.random(5) < c
    keep[0] = rng.random() < 1 - FAMILY_STEP * (1 - c)  # hair style is a family trait too
    moles = []
    for m in base.moles:
        if rng.random() < c:
            j = rng.normal(0, 2.0 * (1 - c), 2)
            moles.append((m[0] + float(j[0]), m[1] + float(j[1]), m[2], m[3]))
    for m in other.moles:
        if rng.random() >= c:
            moles.append(m)
    return Identity(
        values=tuple(float(v) for v in values),
        hair_style=base.hair_style if keep[0] else other.hair_style,
        beard=base.beard if keep[1] else other.beard,
        moles=tuple(moles[:_MAX_MOLES]),
        texture_seed=base.texture_seed if keep[2] else other.texture_seed,
        freckle_seed=base.freckle_seed if keep[3] else other.freckle_seed,
        scale=base.scale,
    )


def _tone_range(_inst: object, attr: attrs.Attribute, value: tuple[float, float]) -> None:
    lo, hi = value
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"{attr.name} must be a range (lo, hi) with 0 <= lo <= hi <= 1, got {value}")


def _positive(_inst: object, attr: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attr.name} must be > 0, got {value}")


@attrs.frozen
class GroupLook:
    """A synthetic demographic-style group: where its skin and hair tones lie and how large its faces are.

    Looks are rendering parameters, not races. A narrower tone range leaves less colour to tell two members
    apart, and a smaller face (``scale`` < 1) fewer pixels for the features, so such a group is designed to be
    harder: a designed imbalance for fairness experiments (``skin_tone``/``hair_tone`` in the units of
    :data:`PARAMS`, 0 light ... 1 dark skin, 0 black ... 1 grey hair).
    """

    name: str
    skin_tone: tuple[float, float] = attrs.field(validator=_tone_range)
    hair_tone: tuple[float, float] = attrs.field(validator=_tone_range)
    scale: float = attrs.field(default=1.0, validator=_positive)


#: The four looks SynthFace's ``groups`` option draws on, in order. C and D have narrower colour ranges and
#: smaller faces than A and B, so they are designed to be harder to verify.
GROUP_LOOKS: tuple[GroupLook, ...] = (
    GroupLook("A", skin_tone=(0.0, 0.35), hair_tone=(0.3, 1.0), scale=1.0),
    GroupLook("B", skin_tone=(0.3, 0.6), hair_tone=(0.0, 0.6), scale=0.95),
    GroupLook("C", skin_tone=(0.55, 0.8), hair_tone=(0.0, 0.35), scale=0.9),
    GroupLook("D", skin_tone=(0.8, 1.0), hair_tone=(0.0, 0.2), scale=0.85),
)


def apply_look(identity: Identity, look: GroupLook) -> Identity:
    """``identity`` as a member of ``look``: skin and hair tone mapped affinely from their :data:`PARAMS` range
    into the look's range, and the look's face scale.

    Affine, so a sibling pair stays relatively as close as before (in a narrower range, absolutely closer);
    every other trait is unchanged.
    """
    values = list(identity.values)
    for name, (lo, hi) in (("skin_tone", look.skin_tone), ("hair_tone", look.hair_tone)):
        p_lo, p_hi = PARAMS[name]
        i = _INDEX[name]
        values[i] = lo + (values[i] - p_lo) / (p_hi - p_lo) * (hi - lo)
    return attrs.evolve(identity, values=tuple(values), scale=float(look.scale))


def group_of_families(num_families: int, shares: list[float] | tuple[float, ...]) -> list[int]:
    """The group index (into ``shares``) of each of ``num_families`` training families.

    Counts are exact: share ``s_g / sum(s)`` of the families by largest remainder (the leftover families go
    to the largest fractional parts; parts equal to 9 decimals, float noise, are ties, won by the earlier
    group). The order interleaves the groups so every
    prefix of the identities is mixed: family ``f`` goes to the group, among those with quota left, whose
    ``(assigned + 0.5) / quota`` is least (Sainte-Laguë order; ties to the earlier group).
    """
    if num_families < 0:
        raise ValueError(f"num_families must be >= 0, got {num_families}")
    if not shares or not all(math.isfinite(s) and s > 0 for s in shares):
        raise ValueError(f"shares must be one or more positive numbers, got {list(shares)}")
    total = math.fsum(shares)
    exact = [s / total * num_families for s in shares]
    quota = [math.floor(e + 1e-9) for e in exact]  # 2.9999999999999996 families is 3
    rest = [round(e - q, 9) for e, q in zip(exact, quota)]
    by_remainder = sorted(range(len(shares)), key=lambda g: (-rest[g], g))
    for g in by_remainder[: num_families - sum(quota)]:
        quota[g] += 1
    assigned = [0] * len(shares)
    out = []
    for _ in range(num_families):
        g = min((g for g in range(len(shares)) if assigned[g] < quota[g]),
                key=lambda g: ((assigned[g] + 0.5) / quota[g], g))
        assigned[g] += 1
        out.append(g)
    return out


def identity_vector(identity: Identity) -> np.ndarray:
    """Continuous parameters scaled to [0, 1], for distances in parameter space."""
    return (np.array(identity.values) - _LO) / (_HI - _LO)


# ---------------------------------------------------------------------------------------------------
# Colours

_SKIN = np.array([[255, 224, 200], [238, 196, 160], [214, 164, 124], [176, 124, 86], [124, 84, 56], [84, 56, 40]],
                 dtype=np.float64)
_HAIR = np.array([[24, 20, 18], [60, 40, 28], [110, 74, 44], [168, 126, 76], [222, 190, 130], [150, 150, 150]],
                 dtype=np.float64)
_IRIS = np.array([[60, 38, 22], [100, 66, 36], [90, 110, 60], [70, 110, 150], [120, 140, 170]], dtype=np.float64)


def _palette(pal: np.ndarray, t: float) -> np.ndarray:
    x = t * (len(pal) - 1)
    i = min(int(x), len(pal) - 2)
    f = x - i
    return pal[i] * (1 - f) + pal[i + 1] * f


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(v))) for v in c)  # type: ignore[return-value]


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` as float32, cached per size."""
    if size not in _GRIDS:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        _GRIDS[size] = (yy, xx)
    return _GRIDS[size]


# ---------------------------------------------------------------------------------------------------
# Rendering

_SS = 2  # supersampling of the face canvas
_N = 112  # canonical frame size


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 20) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return list(zip((cx + ca * x - sa * y) * _SS, (cy + sa * x + ca * y) * _SS))


def _pts(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    return list(zip(x * _SS, y * _SS))


def _face_outline(p: Identity, cx: float, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Face contour: a super-ellipse whose lower half narrows towards the chin by ``jaw``."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    lower = s > 0
    expo = np.where(lower, 2.0 + 1.2 * (1 - p.jaw), 2.6)
    width = np.where(lower, p.face_w * (1 - 0.28 * p.jaw * s**2), p.face_w * (p.forehead + (1 - p.forehead) * (1 + s)))
    x = cx + width * np.sign(c) * np.abs(c) ** (2 / expo)
    y = p.face_cy + np.where(lower, p.face_h, p.face_h * 1.02) * np.sign(s) * np.abs(s) ** (2 / expo)
    return x, y


def _draw_hair_back(d: ImageDraw.ImageDraw, p: Identity, cx: float, col) -> None:
    top = p.face_cy - p.face_h - 2 - p.hair_volume
    w = p.face_w + 3 + 0.6 * p.hair_volume
    if p.hair_style == 2:  # long: down to the shoulders
        d.rounded_rectangle([(cx - w - 2) * _SS, top * _SS, (cx + w + 2) * _SS, 118 * _SS], radius=int(w * _SS),
                            fill=col)
    elif p.hair_style != 3:
        d.ellipse([(cx - w) * _SS, top * _SS, (cx + w) * _SS, (p.face_cy + 8) * _SS], fill=col)


def _draw_hair_front(d: ImageDraw.ImageDraw, p: Identity, cx: float, col) -> None:
    top = p.face_cy - p.face_h - 2
    hl = p.hairline
    w = p.face_w + 1
    if p.hair_style == 3:  # shaved: a thin cap only
        d.chord([(cx - w) * _SS, (top - 1) * _SS, (cx + w) * _SS, (hl + 16) * _SS], 180, 360, fill=col)
        return
    xs = np.linspace(cx - w, cx + w, 13)
    if p.hair_style == 1:  # side-swept: the hairline slants across the forehead
        ys = hl + 6 * p.fringe * (xs - cx) / w + 3 * np.sin((xs - cx) * 0.35) ** 2
    elif p.hair_style == 4:  # straight bangs
        ys = np.full_like(xs, hl + 6) + 1.0 * np.cos((xs - cx) * 0.9)
    else:  # short / long: rounded hairline
        ys = hl + 0.012 * (xs - cx) ** 2 * (1 + 0.4 * p.fringe)
    ys = np.minimum(ys, p.eye_y - 12)
    poly_x = np.concatenate([[cx - w - 1], xs, [cx + w + 1, cx + w + 1, cx - w - 1]])
    poly_y = np.concatenate([[p.eye_y - 6], ys, [p.eye_y - 6, top - 8, top - 8]])
    d.polygon(_pts(poly_x, poly_y), fill=col)


def _draw_eye(d: ImageDraw.ImageDraw, p: Identity, ex: float, ey: float, side: int, openness: float,
              gaze: tuple[float, float], skin, iris_col, lid_col) -> None:
    # Almond: two arcs through the corners; the iris is clipped by redrawing the lids in skin colour.
    w, h = p.eye_w, p.eye_h * openness
    tilt = side * p.eye_tilt
    t = np.linspace(-1, 1, 13)
    ca, sa = math.cos(tilt), math.sin(tilt)
    xu, yu = w * t, -h * (1 - t**2) * (1 + 0.15 * t * side)
    xl, yl = w * t, 0.7 * h * (1 - t**2)
    rot = lambda x, y: (ex + ca * x - sa * y * side, ey + sa * x * side + ca * y)  # noqa: E731
    ux, uy = rot(xu, yu)
    lx, ly = rot(xl, yl)
    d.polygon(_pts(np.concatenate([ux, lx[::-1]]), np.concatenate([uy, ly[::-1]])), fill=(236, 232, 226))
    ix, iy = ex + gaze[0] * w * 0.3, ey + gaze[1] * 0.8 - 0.2 * h
    r = p.iris_r
    d.ellipse([(ix - r) * _SS, (iy - r) * _SS, (ix + r) * _SS, (iy + r) * _SS], fill=iris_col)
    r2 = r * 0.45
    d.ellipse([(ix - r2) * _SS, (iy - r2) * _SS, (ix + r2) * _SS, (iy + r2) * _SS], fill=(12, 10, 10))
    # lids: skin polygons outside the almond
    d.polygon(_pts(np.concatenate([ux, [ux[-1] + 1, ux[-1] + 1, ux[0] - 1, ux[0] - 1]]),
                   np.concatenate([uy, [uy[-1], ey - 3 * p.iris_r - 2, ey - 3 * p.iris_r - 2, uy[0]]])), fill=skin)
    d.polygon(_pts(np.concatenate([lx, [lx[-1] + 1, lx[-1] + 1, lx[0] - 1, lx[0] - 1]]),
                   np.concatenate([ly, [ly[-1], ey + 2 * p.iris_r + 2, ey + 2 * p.iris_r + 2, ly[0]]])), fill=skin)
    d.line(_pts(ux, uy), fill=lid_col, width=max(1, int(round(0.9 * _SS))))
    # crease above the eye
    d.line(_pts(ux[2:-2], uy[2:-2] - 1.6 - 0.4 * h), fill=tuple(int(0.8 * v) for v in skin), width=1)


def _draw_brow(d: ImageDraw.ImageDraw, p: Identity, ex: float, ey: float, side: int, raise_: float, col) -> None:
    t = np.linspace(0, 1, 9)
    inner = ex - side * (p.eye_w * 0.6 + p.brow_inner)
    x = inner + side * t * p.brow_len
    base = ey - p.brow_dy - raise_
    y = base - p.brow_arch * np.sin(np.pi * t ** 0.8) - p.brow_tilt * (t - 0.5) * p.brow_len
    th = p.brow_thick * (1 - 0.55 * t ** 2)
    poly_x = np.concatenate([x, x[::-1]])
    poly_y = np.concatenate([y - th / 2, (y + th / 2)[::-1]])
    d.polygon(_pts(poly_x, poly_y), fill=col)


def _draw_nose(d: ImageDraw.ImageDraw, p: Identity, nx: float, shade, dark) -> None:
    ny = p.nose_y
    if p.nose_bridge > 0.3:
        top = ny - p.nose_len
        d.line(_pts(np.array([nx - 2.5, nx - p.nose_w * 0.45]), np.array([top, ny - 3])), fill=shade,
               width=max(1, int(p.nose_bridge * 2.5)))
    # tip shadow and nostrils
    d.chord([(nx - p.nose_w * 0.6) * _SS, (ny - 4) * _SS, (nx + p.nose_w * 0.6) * _SS, (ny + 2.2) * _SS], 0, 180,
            fill=shade)
    for s in (-1, 1):
        cx = nx + s * p.nose_w * 0.42
        r = p.nostril
        d.ellipse([(cx - r * 1.3) * _SS, (ny - r * 0.6) * _SS, (cx + r * 1.3) * _SS, (ny + r * 0.6) * _SS], fill=dark)
    for s in (-1, 1):  # alar creases
        cx = nx + s * p.nose_w * 0.62
        start = 100 if s < 0 else -80
        d.arc([(cx - 2.2) * _SS, (ny - 5) * _SS, (cx + 2.2) * _SS, (ny + 1.0) * _SS], start, start + 160,
              fill=shade, width=max(1, _SS))


def _draw_mouth(d: ImageDraw.ImageDraw, p: Identity, mx: float, smile: float, open_: float, lip_col) -> None:
    my = p.mouth_y
    w = p.mouth_w * (1 + 0.12 * smile)
    curve = p.mouth_curve + 2.8 * smile  # corners up when positive
    t = np.linspace(-1, 1, 15)
    x = mx + w * t
    mid = my - curve * t**2 + curve * 0.3  # the lip line
    gap = open_ * 4.0 * (1 - t**2)
    top = mid - gap / 2 - p.lip_up * (1 - t**2) ** 0.7 + p.bow * np.exp(-(t / 0.12) ** 2) * (1 - t**2)
    bot = mid + gap / 2 + p.lip_lo * (1 - t**2) ** 0.8
    upper_inner = mid - gap / 2
    lower_inner = mid + gap / 2
    d.polygon(_pts(np.concatenate([x, x[::-1]]), np.concatenate([top, upper_inner[::-1]])), fill=lip_col)
    d.polygon(_pts(np.concatenate([x, x[::-1]]), np.concatenate([lower_inner, bot[::-1]])), fill=lip_col)
    if open_ > 0.15:
        d.polygon(_pts(np.concatenate([x, x[::-1]]), np.concatenate([upper_inner, lower_inner[::-1]])),
                  fill=(40, 14, 16))
        teeth = np.minimum(lower_inner, upper_inner + 1.4)
        d.polygon(_pts(np.concatenate([x[3:-3], x[3:-3][::-1]]), np.concatenate([upper_inner[3:-3],
                  teeth[3:-3][::-1]])), fill=(230, 226, 214))
    dark = tuple(int(0.55 * v) for v in lip_col)
    d.line(_pts(x, mid), fill=dark, width=max(1, _SS // 2 + 1))


def _draw_beard(d: ImageDraw.ImageDraw, p: Identity, cx: float, mx: float, col) -> None:
    my = p.mouth_y
    if p.beard in (1, 3):  # moustache
        t = np.linspace(-1, 1, 11)
        x = mx + (p.mouth_w + 1.5) * t
        y = my - p.lip_up - 1.2 - 0.8 * (1 - t**2) + 1.8 * t**2
        th = 1.2 + 2.4 * p.beard_density
        d.polygon(_pts(np.concatenate([x, x[::-1]]), np.concatenate([y - th, y[::-1]])), fill=col)
    if p.beard == 2:  # goatee
        d.chord([(mx - 7) * _SS, (my + p.lip_lo) * _SS, (mx + 7) * _SS, (p.face_cy + p.face_h + 1) * _SS], 0, 180,
                fill=col)
        d.rectangle([(mx - 7) * _SS, (my + p.lip_lo + 1) * _SS, (mx + 7) * _SS,
                     (0.5 * (my + p.lip_lo + p.face_cy + p.face_h) + 1) * _SS], fill=col)
    if p.beard == 3:  # full beard along the jaw
        fx, fy = _face_outline(p, cx, 40)
        low = fy > p.mouth_y - 14
        jx, jy = fx[low], fy[low]
        order = np.argsort(jx)
        jx, jy = jx[order], jy[order]
        ix = cx + (jx - cx) * (0.78 - 0.1 * p.beard_density)
        iy = np.maximum(p.mouth_y - 14 + (jy - jy.min()) * 0.2, np.minimum(jy - 5 - 5 * p.beard_density, my + 6))
        d.polygon(_pts(np.concatenate([jx, ix[::-1]]), np.concatenate([jy + 1, iy[::-1]])), fill=col)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """A smooth random field in [-1, 1] (bicubic upsampling of a coarse grid)."""
    g = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((g * 255).astype(np.uint8), "L").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


@functools.lru_cache(maxsize=32)
def _skin_multiplier(p: Identity) -> Image.Image:
    """RGBA multiplier (alpha 255) for the canvas: texture, cheekbone shadow and blush inside the face.

    It depends on the identity only, so it is cached: a training identity's photos are rendered in a row.
    Computed at half resolution and upsampled; the texture darkens the skin by ``tex_amp`` on average.
    """
    n = _N // 2
    cx = _N / 2
    fx, fy = _face_outline(p, cx)
    m_img = Image.new("L", (n, n), 0)
    ImageDraw.Draw(m_img).polygon(list(zip(fx * 0.5, fy * 0.5)), fill=255)
    face_mask = np.asarray(m_img, dtype=np.float32) * np.float32(1 / 255)
    trng = np.random.default_rng(p.texture_seed)
    tex = _smooth_noise(trng, int(p.tex_cells), n) + 0.5 * _smooth_noise(trng, int(2 * p.tex_cells), n)
    yy, xx = _grid(n)
    yy, xx = 2 * yy + 0.5, 2 * xx + 0.5
    ax = np.abs(xx - cx)
    shade = p.cheekbone * 0.12 * np.exp(-((ax - p.face_w * 0.72) * 0.25) ** 2 - ((yy - p.eye_y - 16) * (1 / 6)) ** 2)
    blush = p.blush * 0.3 * np.exp(-((ax - p.eye_dx - 2) * (1 / 6)) ** 2 - ((yy - p.eye_y - 15) * 0.2) ** 2)
    lum = 1.0 - face_mask * (p.tex_amp * (0.75 + 0.5 * tex) + shade)
    mult = np.full((n, n, 4), 255, np.uint8)
    mult[..., 0] = np.clip(lum * 255, 0, 255)
    mult[..., 1] = mult[..., 2] = np.clip(lum * (1.0 - face_mask * blush) * 255, 0, 255)
    return Image.fromarray(mult, "RGBA").resize((_N * _SS, _N * _SS), Image.BILINEAR)


def _face_canvas(p: Identity, rng: np.random.Generator, nz: Nuisance = NUISANCE) -> tuple[Image.Image, float]:
    """The identity in its canonical (aligned) frame at ``_SS`` times resolution, RGBA with a person mask."""
    S = _N * _SS
    yaw = float(np.clip(rng.normal(0, nz.yaw), -1, 1))
    cx = _N / 2
    # Features sit in front of the head contour: a yaw shifts them sideways in proportion to depth.
    fshift = 3.0 * yaw
    smile = float(np.clip(rng.normal(0.1, nz.smile), -0.5, 1.0))
    open_ = float(rng.uniform(0, 1) if rng.random() < nz.mouth_open_p else 0.0)
    openness = float(0.15 if rng.random() < nz.blink_p else rng.uniform(0.6, 1.1))
    raise_ = float(rng.normal(0, 1.0))
    gaze = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))

    skin = _palette(_SKIN, p.skin_tone) + np.array([8, 0, -8]) * p.skin_hue
    skin_c = _rgb(skin)
    hair = _palette(_HAIR, p.hair_tone) + np.array([40, 6, -20]) * p.hair_red * (0.3 + 0.7 * (p.hair_tone > 0.2))
    hair_c = _rgb(hair)
    brow_c = _rgb(hair * (1.1 - 0.7 * p.brow_dark) * (0.6 if p.hair_tone > 0.6 else 1.0))
    lip = skin * np.array([0.92, 0.62, 0.62]) * (0.75 + 0.35 * p.lip_tone) + np.array([30, 0, 0]) * p.lip_tone
    lip_c = _rgb(lip)
    iris_c = _rgb(_palette(_IRIS, p.iris_tone))
    shade_c = _rgb(skin * 0.8)
    dark_c = _rgb(skin * 0.35)
    beard_c = _rgb(hair * 0.95 + skin * 0.05 * (1 - p.beard_density))

    img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    hair_cx = cx + 0.5 * fshift
    _draw_hair_back(d, p, hair_cx, hair_c + (255,))
    # neck and ears
    d.rectangle([(cx - p.face_w * 0.55) * _SS, (p.face_cy + 20) * _SS, (cx + p.face_w * 0.55) * _SS, S],
                fill=_rgb(skin * 0.85) + (255,))
    for s in (-1, 1):
        ex = cx + s * (p.face_w - 1) - 0.6 * fshift
        d.ellipse([(ex - 4.5) * _SS, (p.ear_y - p.ear_size) * _SS, (ex + 4.5) * _SS, (p.ear_y + p.ear_size) * _SS],
                  fill=_rgb(skin * 0.9) + (255,))
    fx, fy = _face_outline(p, cx)
    d.polygon(_pts(fx, fy), fill=skin_c + (255,))

    # Skin texture, cheekbone shadow and blush: an identity-only multiplier over the face polygon
    img = ImageChops.multiply(img, _skin_multiplier(p))
    d = ImageDraw.Draw(img)

    frng = np.random.default_rng(p.freckle_seed)
    nf = int(p.freckles ** 2 * 45)
    if nf:
        fxs = cx + frng.choice([-1, 1], nf) * frng.uniform(3, 24, nf) + fshift
        fys = frng.normal(p.eye_y + 15, 5, nf)
        rs = frng.uniform(0.35, 0.8, nf)
        fc = _rgb(skin * 0.78)
        for x, y, r in zip(fxs, fys, rs):
            d.ellipse([(x - r) * _SS, (y - r) * _SS, (x + r) * _SS, (y + r) * _SS], fill=fc)
    for mx_, my_, r, dk in p.moles:
        x = cx + mx_ + fshift * (0.5 if abs(mx_) < 10 else 0.3)
        d.ellipse([(x - r) * _SS, (my_ - r) * _SS, (x + r) * _SS, (my_ + r) * _SS], fill=_rgb(skin * (1 - dk)))
    if p.dimple > 0.7:
        for s in (-1, 1):
            x = cx + fshift + s * (p.mouth_w + 3)
            start = 90 if s < 0 else -90
            d.arc([(x - 1.5) * _SS, (p.mouth_y - 4) * _SS, (x + 1.5) * _SS, (p.mouth_y + 3) * _SS], start,
                  start + 180, fill=shade_c, width=1)

    # features
    lid_c = _rgb(hair * 0.5 + np.array([10, 8, 8]))
    for s in (-1, 1):
        ex = cx + fshift + s * p.eye_dx * (1 - 0.08 * s * yaw)
        ey = p.eye_y + s * p.eye_asym / 2
        _draw_eye(d, p, ex, ey, s, openness, gaze, skin_c, iris_c, lid_c)
        _draw_brow(d, p, ex, ey, s, raise_, brow_c)
    nx = cx + 1.5 * fshift + p.nose_x
    _draw_nose(d, p, nx, shade_c, dark_c)
    mx = cx + 1.1 * fshift + 0.5 * p.nose_x
    if p.beard:
        _draw_beard(d, p, cx + fshift * 0.8, mx, beard_c)
    _draw_mouth(d, p, mx, smile, open_, lip_c)
    _draw_hair_front(d, p, hair_cx, hair_c + (255,))

    # glasses are nuisance, but they move with the face, so they are drawn in its frame
    if rng.random() < nz.glasses_p:
        sun = rng.random() < nz.sunglasses_p
        frame = _rgb(rng.uniform(0, 200, 3))
        lens_w, lens_h = rng.uniform(8, 12), rng.uniform(5.5, 9)
        width = int(rng.integers(1, 4))
        for s in (-1, 1):
            ex = cx + fshift + s * p.eye_dx
            box = [(ex - lens_w) * _SS, (p.eye_y - lens_h) * _SS, (ex + lens_w) * _SS, (p.eye_y + lens_h) * _SS]
            if sun:
                d.rounded_rectangle(box, radius=int(lens_h * _SS * 0.8), fill=(20, 20, 24, 255), outline=frame,
                                    width=width)
            else:
                d.rounded_rectangle(box, radius=int(lens_h * _SS * rng.uniform(0.2, 1.0)), outline=frame,
                                    width=width)
        d.line([(cx + fshift - p.eye_dx + lens_w) * _SS, (p.eye_y - 1) * _SS,
                (cx + fshift + p.eye_dx - lens_w) * _SS, (p.eye_y - 1) * _SS], fill=frame, width=width)
    return img, yaw


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random backdrop (float32 RGB): gradient, colour blotches, fine texture or stripes."""
    base = rng.uniform(0, 255, 3).astype(np.float32)
    kind = rng.integers(4)
    yy, xx = _grid(size)
    if kind == 0:  # flat with a gradient
        a = rng.uniform(0, 2 * np.pi)
        g = (math.cos(a) / size) * xx + (math.sin(a) / size) * yy - np.float32(0.5 * (math.cos(a) + math.sin(a)))
        bg = base + g[..., None] * rng.uniform(-120, 120, 3).astype(np.float32)
    elif kind == 1:  # coloured blotches
        cells = int(rng.integers(2, 7))
        g = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        bg = np.asarray(Image.fromarray(g, "RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
        bg = 0.5 * bg + 0.5 * base
    elif kind == 2:  # fine texture
        cells = int(rng.integers(12, 40))
        g = rng.normal(128, rng.uniform(10, 50), (cells, cells))
        g = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8), "L").resize((size, size), Image.BILINEAR)
        bg = base + (np.asarray(g, dtype=np.float32) - 128)[..., None]
    else:  # stripes
        a = rng.uniform(0, np.pi)
        k = 2 * np.pi / rng.uniform(6, 30)
        s = np.sin((math.cos(a) * k) * xx + (math.sin(a) * k) * yy)
        bg = base + s[..., None] * rng.uniform(-60, 60, 3).astype(np.float32)
    return bg


def render(identity: Identity, rng: np.random.Generator, size: int = 112,
           nuisance: Nuisance = NUISANCE) -> np.ndarray:
    """One photo of ``identity``: ``size`` x ``size`` x 3 uint8, roughly ArcFace-aligned.

    ``rng`` drives only the nuisance (pose, expression, lighting, background, occluders, blur, noise),
    so two calls with differently seeded generators are two photos of the same person; ``nuisance`` sets its
    strengths (the same ``rng`` with :data:`HARD_NUISANCE` gives a harder photo of the same moment).
    """
    nz = nuisance
    face, yaw = _face_canvas(identity, rng, nz)
    # pose: output pixel -> canonical frame (inverse affine), with a yaw-like horizontal compression; the
    # identity's own scale (1.0 unless a group look set it) shrinks the face about the image centre
    ang = math.radians(float(np.clip(rng.normal(0, nz.roll_deg), -15, 15)))
    scale = float(rng.uniform(1 - nz.scale, 1 + nz.scale)) * identity.scale * size / _N
    sx = scale * (1 - 0.12 * abs(yaw))
    sy = scale * float(rng.uniform(0.96, 1.04))
    tx, ty = rng.normal(0, nz.shift, 2) * size / _N
    c = size / 2
    ca, sa = math.cos(ang), math.sin(ang)
    # forward: q -> p = c + R diag(sx, sy) (q - c_q) + t ; inverse maps p back to q (then * _SS)
    m = np.array([[ca * sx, -sa * sy], [sa * sx, ca * sy]])
    inv = np.linalg.inv(m)
    off = np.array([_N / 2, _N / 2]) - inv @ np.array([c + tx, c + ty])
    coeffs = (inv[0, 0] * _SS, inv[0, 1] * _SS, off[0] * _SS, inv[1, 0] * _SS, inv[1, 1] * _SS, off[1] * _SS)
    face = face.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    bg = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8), "RGB")
    bg.paste(face, (0, 0), face)

    # opaque occluders in the image frame
    if rng.random() < nz.occluder_p:
        od = ImageDraw.Draw(bg)
        col = _rgb(rng.uniform(0, 255, 3))
        if rng.random() < 0.5:  # a bar at any angle
            a = rng.uniform(0, np.pi)
            px, py = rng.uniform(0.2, 0.8, 2) * size
            L, W = rng.uniform(0.5, 1.5) * size, rng.uniform(0.06, 0.16) * size
            dx, dy = math.cos(a), math.sin(a)
            od.polygon([(px - dx * L - dy * W, py - dy * L + dx * W), (px + dx * L - dy * W, py + dy * L + dx * W),
                        (px + dx * L + dy * W, py + dy * L - dx * W), (px - dx * L + dy * W, py - dy * L - dx * W)],
                       fill=col)
        else:  # a blob entering from an edge (hand, scarf, microphone)
            px = rng.uniform(0.1, 0.9) * size
            py = rng.uniform(0.75, 1.05) * size
            r = rng.uniform(0.12, 0.25) * size
            od.ellipse([px - r, py - r * rng.uniform(0.6, 1.4), px + r, py + r], fill=col)
    out = np.asarray(bg, dtype=np.float32)

    # lighting: directional gradient, brightness and colour cast, contrast, then gamma (as a lookup table)
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    k = rng.uniform(0, nz.gradient) / size
    centre = np.float32(1 - 0.5 * size * k * (math.cos(a) + math.sin(a)))
    grad = (math.cos(a) * k) * xx + (math.sin(a) * k) * yy + centre
    gain = (rng.uniform(*nz.brightness) * np.exp(rng.normal(0, nz.cast, 3))).astype(np.float32)
    contrast = rng.uniform(*nz.contrast)
    offset = np.float32(128 * (1 - contrast) + rng.normal(0, 10))
    out *= grad[..., None] * (gain * np.float32(contrast))
    out += offset
    np.clip(out, 0, 255, out=out)
    gamma = float(np.exp(rng.normal(0, nz.gamma)))
    lut = (255.0 * (np.arange(256) / 255.0) ** gamma + 0.5).astype(np.uint8)
    img = lut[out.astype(np.uint8)]

    if rng.random() < nz.blur_p:
        im = Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, nz.blur_max)) * size / _N))
        img = np.asarray(im)
    sigma = rng.uniform(0, nz.noise_max)
    if sigma > 1:
        noisy = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
        img = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------------------------------------------
# Deterministic streams and data sets

_SPLITS = {"train": 0, "val": 1, "val-sibling": 2, "val-pairs": 3}
_IDENTITY, _IMAGE = 0, 1


def _split_code(split: str) -> int:
    return _SPLITS.get(split, zlib.crc32(split.encode()) | 1 << 32)


def identity_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The stream that defines identity ``index`` of ``split``; splits never share a stream."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_split_code(split), _IDENTITY, index)))


def image_rng(seed: int, split: str, index: int, image: int) -> np.random.Generator:
    """The nuisance stream of photo ``image`` of identity (or pair) ``index`` of ``split``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_split_code(split), _IMAGE, index, image)))


#: Training identities come in families: every ``FAMILY``-th one is fresh, the others are its siblings,
#: so a classifier must separate near-duplicates by fine detail.
FAMILY = 2
TRAIN_CLOSENESS = (0.3, 0.6)
#: Closeness of the hard (sibling) impostors in the verification pairs.
VAL_CLOSENESS = 0.3


def _split(split: str, look: GroupLook | None) -> str:
    """A group's own split name (``val/C``): its held-out identities and pairs never share a stream."""
    return split if look is None else f"{split}/{look.name}"


def _in_look(identity: Identity, look: GroupLook | None) -> Identity:
    return identity if look is None else apply_look(identity, look)


def train_identity(seed: int, index: int, look: GroupLook | None = None) -> Identity:
    """Training identity ``index``; depends only on ``(seed, index)``, so processes can split the work.

    With ``look`` it is the same identity put into that group (:func:`apply_look`); a grouped set gives
    every identity of a family its family's look, so siblings share a group.
    """
    head = index - index % FAMILY
    base = sample_identity(identity_rng(seed, "train", head))
    if index == head:
        return _in_look(base, look)
    rng = identity_rng(seed, "train", index)
    return _in_look(sibling(base, rng, float(rng.uniform(*TRAIN_CLOSENESS))), look)


def train_identities(seed: int, n: int) -> list[Identity]:
    """The first ``n`` training identities."""
    return [train_identity(seed, i) for i in range(n)]


def train_images(seed: int, identity_index: int, identity: Identity, count: int,
                 nuisance: Nuisance = NUISANCE) -> Iterator[np.ndarray]:
    """``count`` photos of training identity ``identity_index``, each from its own stream."""
    for j in range(count):
        yield render(identity, image_rng(seed, "train", identity_index, j), nuisance=nuisance)


@attrs.frozen
class PairSpec:
    """What pair ``k`` of the verification set shows (the pixels follow from it and the seed)."""

    index: int
    same: bool
    a: int  # held-out identity index of the first image
    b: int  # second identity: a held-out index, or -1 for a sibling of ``a`` (hard impostor)


def pair_specs(seed: int, num_identities: int, num_pairs: int, hard_fraction: float = 0.5,
               look: GroupLook | None = None) -> list[PairSpec]:
    """The plan of the verification pairs: exactly half genuine, and ``hard_fraction`` of the impostors
    (rounded) against a sibling of the first identity; genuine and impostor pairs are interleaved in a
    seeded order. A ``look`` plans its group's own set (split ``val-pairs/<name>``)."""
    if num_pairs % 2:
        raise ValueError(f"num_pairs must be even, got {num_pairs}")
    if num_identities < 2:
        raise ValueError("need at least 2 held-out identities")
    half = num_pairs // 2
    n_hard = int(round(hard_fraction * half))
    rng = identity_rng(seed, _split("val-pairs", look), 0)
    kinds = np.array([0] * half + [1] * n_hard + [2] * (half - n_hard))  # 0 genuine, 1 hard, 2 easy impostor
    kinds = kinds[rng.permutation(num_pairs)]
    specs = []
    for k, kind in enumerate(kinds):
        a = int(rng.integers(num_identities))
        if kind == 0:
            b = a
        elif kind == 1:
            b = -1
        else:
            b = int(rng.integers(num_identities - 1))
            b += b >= a
        specs.append(PairSpec(k, kind == 0, a, b))
    return specs


def _val_identity(seed: int, index: int, look: GroupLook | None = None) -> Identity:
    """Held-out identity ``index``, *before* a look is applied (a sibling is drawn from the plain one)."""
    return sample_identity(identity_rng(seed, _split("val", look), index))


def render_pair(seed: int, spec: PairSpec, nuisance: Nuisance = NUISANCE,
                look: GroupLook | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """The two images of one planned pair; depends only on ``(seed, spec, look)``.

    With ``look`` both identities (a sibling included) come from the group's own streams and are put into the
    look after the sibling is drawn, so a sibling impostor is as close as in the ungrouped set.
    """
    first = _val_identity(seed, spec.a, look)
    if spec.b == -1:
        second = sibling(first, identity_rng(seed, _split("val-sibling", look), spec.index), VAL_CLOSENESS)
    else:
        second = first if spec.b == spec.a else _val_identity(seed, spec.b, look)
    split = _split("val-pairs", look)
    return (render(_in_look(first, look), image_rng(seed, split, spec.index, 0), nuisance=nuisance),
            render(_in_look(second, look), image_rng(seed, split, spec.index, 1), nuisance=nuisance), spec.same)


def verification_pairs(seed: int, num_identities: int, num_pairs: int, hard_fraction: float = 0.5,
                       start: int = 0, stop: int | None = None, nuisance: Nuisance = NUISANCE,
                       look: GroupLook | None = None) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Verification pairs ``start:stop`` over held-out identities (disjoint streams from training).

    Pair ``k`` becomes images ``2k`` and ``2k + 1`` of a ``.bin`` file. Any slice gives the same pairs as
    the matching slice of the whole list, so the work splits across processes. ``look``: the held-out set
    of that group (its own identities, plan and photos; None is the ungrouped set).
    """
    specs = pair_specs(seed, num_identities, num_pairs, hard_fraction, look)[start:stop]
    return [render_pair(seed, s, nuisance, look) for s in specs]
