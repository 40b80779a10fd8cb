"""Procedural scene parts around a sign: backgrounds, sign posts, distractors, occluders.

Why: a classifier trained on signs pasted on flat colour learns the flat
colour.  These generators give cheap (sub-millisecond at ~200 px) but varied
clutter -- value-noise textures, sky, foliage, buildings, road, random shapes,
partial sign-like shapes -- drawn only from the ``rng`` they are given, so a
seed fixes the bytes.  numpy + OpenCV only.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import cv2
import numpy as np

from .sign_draw import SHIFT

_ONE = 1 << SHIFT
Rng = np.random.Generator


def value_noise(rng: Rng, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1] (float32, (h, w) or (h, w, c)): a coarse random grid, bicubically upsampled."""
    ch = max(2, int(round(cells * h / max(h, w))))
    cw = max(2, int(round(cells * w / max(h, w))))
    g = rng.random((ch, cw, channels) if channels > 1 else (ch, cw), dtype=np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR)


def fbm(rng: Rng, h: int, w: int, base: int, octaves: int = 3) -> np.ndarray:
    """Fractal (multi-octave) value noise in [0, 1]: cloud, foliage and asphalt textures."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for i in range(octaves):
        out += amp * value_noise(rng, h, w, base * 2**i)
        total += amp
        amp *= 0.5
    return out / total


def _mix(n: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two BGR colours by a [0, 1] field (float32 (h, w, 3))."""
    return c0 + (c1 - c0) * n[:, :, None]


_KINDS = ("sky", "green", "grey", "earth")


def _color(rng: Rng, kind: str = "any") -> np.ndarray:
    """A plausible BGR scene colour: natural palettes dominate, saturated ones are rarer."""
    r = rng.random(5)
    if kind == "any":
        if r[4] >= 0.75:
            return (r[:3] * 255).astype(np.float32)
        kind = _KINDS[int(r[3] * 4)]
    if kind == "sky":
        c = [170 + 80 * r[0], 130 + 90 * r[1], 80 + 110 * r[2]]
    elif kind == "green":
        v = 30 + 110 * r[0]
        c = [v * (0.3 + 0.4 * r[1]), v, v * (0.5 + 0.45 * r[2])]
    elif kind == "grey":
        v = 50 + 150 * r[0]
        c = [v * (0.93 + 0.14 * r[1]), v * (0.93 + 0.14 * r[2]), v * (0.93 + 0.14 * r[3])]
    else:  # earth
        v = 50 + 120 * r[0]
        c = [v * (0.4 + 0.3 * r[1]), v * (0.7 + 0.2 * r[2]), v]
    return np.array(c, np.float32)


def _bg_noise(rng: Rng, s: int) -> np.ndarray:
    n = fbm(rng, s, s, int(rng.integers(2, 6)), 3)
    return _mix(n, _color(rng), _color(rng))


def _bg_gradient(rng: Rng, s: int) -> np.ndarray:
    a = rng.uniform(0, 2 * np.pi)
    x = np.linspace(-0.5, 0.5, s, dtype=np.float32)
    t = np.clip(np.cos(a) * x[None, :] + np.sin(a) * x[:, None] + 0.5, 0, 1)
    return _mix(t, _color(rng), _color(rng))


def _bg_sky(rng: Rng, s: int) -> np.ndarray:
    top, bottom = _color(rng, "sky"), _color(rng, "sky") * 0.3 + 170
    t = np.repeat(np.linspace(0, 1, s, dtype=np.float32)[:, None], s, axis=1)
    img = _mix(t, top, bottom)
    clouds = np.clip((fbm(rng, s, s, int(rng.integers(2, 5)), 3) - rng.uniform(0.35, 0.6)) * 3, 0, 1)
    img = _mix(clouds, img, np.full(3, rng.uniform(200, 250), np.float32))
    if rng.random() < 0.6:  # tree line / rooftops along the bottom
        edge = s * rng.uniform(0.55, 0.95) + (value_noise(rng, 1, s, int(rng.integers(4, 20)))[0] - 0.5) * s * 0.25
        below = np.arange(s, dtype=np.float32)[:, None] > edge[None, :]
        img[below] = _color(rng, "green" if rng.random() < 0.6 else "grey")
    return img


def _bg_foliage(rng: Rng, s: int) -> np.ndarray:
    n = fbm(rng, s, s, int(rng.integers(4, 9)), 3)
    img = _mix(n, _color(rng, "green") * 0.5, _color(rng, "green") * 1.3)
    img = np.ascontiguousarray(img)
    k = int(rng.integers(10, 40))
    p = rng.random((k, 6))
    greens = _color(rng, "green")
    for (x, y, ax, ay, ang, tone) in p.tolist():  # leaves: one vector of draws, rng calls are slow
        axes = (1 + int(ax * s / 10), 1 + int(ay * s / 16))
        col = (greens * (0.5 + 0.9 * tone) if tone < 0.9 else greens * 0.3 + 150).tolist()
        cv2.ellipse(img, (int(x * s), int(y * s)), axes, ang * 180, 0, 360, col, -1, cv2.LINE_AA)
    return img


def _bg_building(rng: Rng, s: int) -> np.ndarray:
    wall = _color(rng, "earth" if rng.random() < 0.5 else "grey")
    img = _mix(fbm(rng, s, s, 6, 2), wall * 0.85, wall * 1.1)
    img = np.ascontiguousarray(img)
    pitch_x, pitch_y = int(rng.integers(s // 8, s // 3 + 2)), int(rng.integers(s // 8, s // 3 + 2))
    ox, oy = int(rng.integers(0, pitch_x)), int(rng.integers(0, pitch_y))
    win = (_color(rng, "sky") * rng.uniform(0.2, 0.9)).tolist()
    fx, fy = rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.8)
    for y in range(oy - pitch_y, s, pitch_y):
        for x in range(ox - pitch_x, s, pitch_x):
            cv2.rectangle(img, (x, y), (x + int(pitch_x * fx), y + int(pitch_y * fy)), win, -1)
    return img


def _bg_road(rng: Rng, s: int) -> np.ndarray:
    img = _bg_sky(rng, s) if rng.random() < 0.5 else _bg_foliage(rng, s)
    hz = int(s * rng.uniform(0.3, 0.8))
    asphalt = _color(rng, "grey") * 0.7
    img[hz:] = _mix(fbm(rng, s - hz, s, 12, 2), asphalt * 0.85, asphalt * 1.15)
    vx = rng.uniform(0.2, 0.8) * s
    for _ in range(int(rng.integers(1, 4))):
        xb = rng.uniform(-0.5, 1.5) * s
        col = (230, 230, 230) if rng.random() < 0.7 else (40, 190, 230)
        pts = np.array([[vx, hz], [xb - s * 0.02, s], [xb + s * 0.02, s]]) * _ONE
        cv2.fillPoly(img, [pts.astype(np.int32)], col, cv2.LINE_AA, SHIFT)
    return img


def _bg_shapes(rng: Rng, s: int) -> np.ndarray:
    img = np.ascontiguousarray(_bg_gradient(rng, s))
    for _ in range(int(rng.integers(4, 16))):
        col = _color(rng).tolist()
        x, y = rng.integers(-s // 4, s + s // 4, 2)
        r = int(rng.integers(2, s // 3 + 3))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(img, (int(x), int(y)), (int(x + rng.integers(2, s // 2 + 3)), int(y + r)), col, -1)
        elif kind == 1:
            cv2.circle(img, (int(x), int(y)), r, col, -1, cv2.LINE_AA)
        else:
            x2, y2 = rng.integers(0, s, 2)
            cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), col, int(rng.integers(1, max(2, s // 12))), cv2.LINE_AA)
    return img


_BACKGROUNDS: Dict[str, Tuple[float, Callable[[Rng, int], np.ndarray]]] = {
    "noise": (0.2, _bg_noise),
    "gradient": (0.08, _bg_gradient),
    "sky": (0.2, _bg_sky),
    "foliage": (0.18, _bg_foliage),
    "building": (0.12, _bg_building),
    "road": (0.1, _bg_road),
    "shapes": (0.12, _bg_shapes),
}
_BG_P = np.array([p for p, _ in _BACKGROUNDS.values()])
_BG_P /= _BG_P.sum()
_BG_F = [f for _, f in _BACKGROUNDS.values()]


def background(rng: Rng, s: int) -> np.ndarray:
    """A random (s, s, 3) uint8 BGR background with fine grain added."""
    img = _BG_F[int(rng.choice(len(_BG_F), p=_BG_P))](rng, s)
    grain = (value_noise(rng, s, s, max(2, s // 3)) - 0.5) * rng.uniform(0, 30)
    return np.clip(img + grain[:, :, None], 0, 255).astype(np.uint8)


def draw_post(img: np.ndarray, rng: Rng, x: float, y_top: float, width: float) -> None:
    """A sign post (galvanised, painted or wooden) from ``y_top`` down to the bottom of the image."""
    h = img.shape[0]
    if y_top >= h:
        return
    r = rng.random()
    base = (_color(rng, "grey") * 1.1 if r < 0.6 else _color(rng, "earth") if r < 0.8 else _color(rng, "green"))
    w = max(1.0, width)
    x0 = x - w / 2
    # Cylinder shading: darker at the sides.
    cols = 5
    for i in range(cols):
        shade = 0.65 + 0.45 * np.sin(np.pi * (i + 0.5) / cols)
        xa, xb = x0 + w * i / cols, x0 + w * (i + 1) / cols
        pts = np.array([[xa, y_top], [xb, y_top], [xb, h + 1], [xa, h + 1]]) * _ONE
        cv2.fillPoly(img, [pts.astype(np.int32)], np.clip(base * shade, 0, 255).tolist(), cv2.LINE_AA, SHIFT)


def draw_distractor(img: np.ndarray, rng: Rng) -> None:
    """A partial sign-like shape near the image border, so colour alone never identifies the class."""
    s = img.shape[0]
    side = int(rng.integers(4))
    t = rng.uniform(0, s)
    c = [(t, -0.1 * s), (s * 1.1, t), (t, s * 1.1), (-0.1 * s, t)][side]
    r = rng.uniform(0.2, 0.4) * s
    n = int(rng.choice([3, 4, 8, 32]))
    a = np.deg2rad(rng.uniform(0, 90) + 360.0 * np.arange(n) / n)
    pts = np.stack([c[0] + r * np.cos(a), c[1] + r * np.sin(a)], 1)
    paints = [(38, 28, 190), (242, 242, 240), (22, 196, 246), (150, 80, 20), (60, 120, 20), (28, 26, 26)]
    col = np.array(paints[int(rng.integers(len(paints)))], np.float64) * rng.uniform(0.6, 1.05)
    cv2.fillPoly(img, [(pts * _ONE).astype(np.int32)], col.tolist(), cv2.LINE_AA, SHIFT)
    if rng.random() < 0.5:
        edge = np.array(paints[int(rng.integers(len(paints)))], np.float64).tolist()
        inner = (pts - c) * 0.85 + c
        cv2.polylines(img, [(inner * _ONE).astype(np.int32)], True, edge, max(1, int(r * 0.06)), cv2.LINE_AA, SHIFT)


def _occluder_shape(rng: Rng, s: int, box: Tuple[float, float, float, float], size: float,
                    layer: np.ndarray, occ: np.ndarray) -> None:
    """Draw one occluder into the colour ``layer`` and the coverage mask ``occ``."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    kind = int(rng.integers(3))
    if kind == 0:  # branch with leaves, entering from a side
        y = rng.uniform(y0, y1)
        start = np.array([-0.05 * s if rng.random() < 0.5 else 1.05 * s, y])
        end = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
        end = start + (end - start) * (0.5 + size)
        pts = np.stack([np.linspace(start[0], end[0], 6), np.linspace(start[1], end[1], 6)], 1)
        pts[1:, 1] += np.cumsum(rng.normal(0, bh * 0.04, 5))
        thick = max(1, int(rng.uniform(0.015, 0.04) * s))
        bark = _color(rng, "earth") * 0.6
        for im, col in ((layer, bark.tolist()), (occ, 255)):
            cv2.polylines(im, [(pts * _ONE).astype(np.int32)], False, col, thick, cv2.LINE_AA, SHIFT)
        for _ in range(int(rng.integers(3, 10))):
            p = pts[int(rng.integers(1, 6))] + rng.normal(0, bw * 0.08, 2)
            ax = (int(bw * rng.uniform(0.04, 0.1) * (0.5 + size) * _ONE), int(bw * rng.uniform(0.02, 0.05) * _ONE))
            ang = float(rng.uniform(0, 180))
            leaf = (_color(rng, "green") * rng.uniform(0.6, 1.3)).tolist()
            for im, col in ((layer, leaf), (occ, 255)):
                cv2.ellipse(im, tuple(int(v) for v in p * _ONE), ax, ang, 0, 360, col, -1, cv2.LINE_AA, SHIFT)
    elif kind == 1:  # pole / lamp post / tree trunk in front
        x = rng.uniform(x0 - 0.05 * bw, x1 + 0.05 * bw)
        w = bw * rng.uniform(0.06, 0.12) * (0.5 + size * 2)
        tilt = rng.normal(0, 0.08) * s
        pts = np.array([[x - w / 2, -1], [x + w / 2, -1], [x + w / 2 + tilt, s + 1], [x - w / 2 + tilt, s + 1]])
        col = (_color(rng, "grey") if rng.random() < 0.6 else _color(rng, "earth") * 0.7).tolist()
        for im, c in ((layer, col), (occ, 255)):
            cv2.fillPoly(im, [(pts * _ONE).astype(np.int32)], c, cv2.LINE_AA, SHIFT)
    else:  # a rectangle (board, vehicle, another sign's back) covering one corner
        cx = x0 if rng.random() < 0.5 else x1
        cy = y0 if rng.random() < 0.5 else y1
        hw, hh = bw * (0.15 + size) * rng.uniform(0.6, 1.2), bh * (0.15 + size) * rng.uniform(0.6, 1.2)
        pts = np.array([[cx - hw, cy - hh], [cx + hw, cy - hh], [cx + hw, cy + hh], [cx - hw, cy + hh]])
        col = _color(rng).tolist()
        for im, c in ((layer, col), (occ, 255)):
            cv2.fillPoly(im, [(pts * _ONE).astype(np.int32)], c, cv2.LINE_AA, SHIFT)


def occlude(img: np.ndarray, rng: Rng, sign: np.ndarray, max_fraction: float, tries: int = 3) -> float:
    """Draw an occluder over part of the sign covering at most ``max_fraction`` of its pixels.

    ``sign`` is a boolean sign mask of ``img``; returns the covered fraction
    (0.0 when every try covered too much and nothing was drawn).
    """
    ys, xs = np.nonzero(sign)
    if len(xs) == 0 or max_fraction <= 0:
        return 0.0
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    area = float(len(xs))
    s = img.shape[0]
    for i in range(tries):
        layer, occ = img.copy(), np.zeros(img.shape[:2], np.uint8)
        _occluder_shape(rng, s, box, max_fraction * (0.7**i), layer, occ)
        frac = float(np.count_nonzero(occ[sign] > 127)) / area
        if 0.0 < frac <= max_fraction:
            a = occ.astype(np.float32)[:, :, None] * np.float32(1.0 / 255.0)
            img[:] = (img + (layer.astype(np.float32) - img) * a + 0.5).astype(np.uint8)
            return frac
    return 0.0
