"""Full-frame parts of a street scene: backgrounds, non-sign distractors, night lights and glare.

Why separate from :mod:`train.data.scene` (which dresses a square crop around
ONE sign): a localizer looks at the whole camera frame, so it must learn that
most of a frame is not a sign -- sky, trees, buildings, road, and above all
things that share a sign's colours or shapes (red cars and tail lights, yellow
buses and barrels, white billboards with lettering, octagons in other colours,
street lamps at night).  Every draw comes from the ``rng`` passed in, so a
seed fixes the bytes; numpy + OpenCV only.
"""

from __future__ import annotations

import math
import string
from typing import Tuple

import cv2
import numpy as np

from . import scene
from .sign_draw import SHIFT

Rng = np.random.Generator
_ONE = 1 << SHIFT

# Paints shared with signs (BGR): the point of a distractor is to look like a sign to a colour detector.
RED, YELLOW, WHITE, ORANGE = (38, 28, 190), (22, 196, 246), (240, 240, 238), (20, 110, 240)
_NON_SIGN_PAINTS = ((150, 80, 20), (40, 70, 120), (60, 120, 20), (90, 90, 90), (120, 40, 110))


def _px(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * _ONE).astype(np.int32)


def _square_texture(rng: Rng, w: int, h: int) -> np.ndarray:
    """One of :func:`train.data.scene.background`'s textures, generated square and resized to (h, w)."""
    s = int(min(max(w, h), 256))  # textures are smooth: generating larger costs time and adds nothing
    tex = scene.background(rng, max(s, 16))
    return cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)


def _sky(rng: Rng, w: int, h: int) -> np.ndarray:
    top = np.array([rng.uniform(150, 235), rng.uniform(110, 190), rng.uniform(50, 150)], np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = top + (np.float32([225, 220, 215]) - top) * t
    clouds = np.clip((scene.fbm(rng, h, w, int(rng.integers(3, 8)), 3) - rng.uniform(0.35, 0.7)) * 2.5, 0, 1)
    return img + (np.float32(rng.uniform(200, 248)) - img) * clouds[:, :, None]


def _skyline(img: np.ndarray, rng: Rng, horizon: int) -> None:
    """Buildings and tree crowns standing on the horizon, textured by the square-crop generators."""
    h, w = img.shape[:2]
    x = int(rng.integers(-60, 0))
    while x < w:
        bw = int(rng.integers(40, 220))
        top = int(horizon - rng.uniform(0.1, 0.9) * horizon)
        if rng.random() < 0.55:  # building block with windows
            tex = _square_texture(rng, bw, max(horizon - top, 2))
            x0, x1 = max(x, 0), min(x + bw, w)
            if x1 > x0 and horizon > top:
                img[top:horizon, x0:x1] = tex[:, x0 - x:x1 - x]
        else:  # tree crown: foliage texture inside an ellipse
            tex = _square_texture(rng, bw, max(horizon - top, 2))
            mask = np.zeros(tex.shape[:2], np.uint8)
            cv2.ellipse(mask, (bw // 2, (horizon - top) // 2 + 4), (bw // 2, (horizon - top) // 2 + 4), 0, 0, 360,
                        255, -1)
            x0, x1 = max(x, 0), min(x + bw, w)
            if x1 > x0 and horizon > top:
                region = img[top:horizon, x0:x1]
                m = mask[:, x0 - x:x1 - x] > 0
                region[m] = tex[:, x0 - x:x1 - x][m]
        x += bw + int(rng.integers(-20, 40))


def _road(img: np.ndarray, rng: Rng, horizon: int) -> None:
    """Asphalt below the horizon in perspective, with lane markings converging to a vanishing point."""
    h, w = img.shape[:2]
    if horizon >= h:
        return
    grass = scene._color(rng, "green" if rng.random() < 0.6 else "earth")
    img[horizon:] = grass * (0.7 + 0.6 * scene.fbm(rng, h - horizon, w, 20, 2))[:, :, None]
    vx = w * rng.uniform(0.3, 0.7)
    half = w * rng.uniform(0.6, 1.4)
    road = np.array([[vx - 2, horizon], [vx + 2, horizon], [vx + half, h], [vx - half, h]])
    asphalt = scene._color(rng, "grey") * 0.6
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [_px(road)], 255, cv2.LINE_AA, SHIFT)
    on = mask > 127
    img[on] = (asphalt * (0.85 + 0.3 * scene.fbm(rng, h, w, 40, 2))[:, :, None])[on]
    for _ in range(int(rng.integers(1, 4))):
        xb = vx + half * rng.uniform(-0.9, 0.9)
        col = (230, 230, 230) if rng.random() < 0.7 else YELLOW
        dash = rng.random() < 0.5
        for t0 in np.arange(0.0, 1.0, 0.12 if dash else 1.0):
            t1 = min(t0 + (0.06 if dash else 1.0), 1.0)
            ya, yb = horizon + (h - horizon) * t0 ** 2, horizon + (h - horizon) * t1 ** 2
            xa, xbb = vx + (xb - vx) * t0 ** 2, vx + (xb - vx) * t1 ** 2
            wa, wb = 1 + 6 * t0 ** 2, 1 + 6 * t1 ** 2
            cv2.fillPoly(img, [_px([[xa - wa, ya], [xa + wa, ya], [xbb + wb, yb], [xbb - wb, yb]])], col,
                         cv2.LINE_AA, SHIFT)


def background(rng: Rng, w: int, h: int) -> Tuple[np.ndarray, int]:
    """A (h, w, 3) uint8 BGR frame without signs, and the horizon row (0 when the frame has none).

    Two thirds are street views (sky, skyline of buildings and trees, road
    in perspective); the rest is one of the square-crop textures stretched
    over the frame (foliage, walls, clutter), the close-up case.
    """
    if rng.random() < 0.67:
        horizon = int(h * rng.uniform(0.3, 0.65))
        img = np.empty((h, w, 3), np.float32)
        img[:horizon] = _sky(rng, w, horizon)
        _road(img, rng, horizon)
        _skyline(img, rng, horizon)
    else:
        horizon = 0
        img = _square_texture(rng, w, h).astype(np.float32)
    grain = (scene.value_noise(rng, h, w, max(2, w // 4)) - 0.5) * rng.uniform(0, 24)
    return np.clip(img + grain[:, :, None], 0, 255).astype(np.uint8), horizon


def _letters(rng: Rng, n: int) -> str:
    return "".join(rng.choice(list(string.ascii_uppercase + string.digits + "  "), n))


def _vehicle(img: np.ndarray, rng: Rng, x: float, y: float, size: float) -> None:
    """A car seen from behind: body in any paint (often red/white/yellow), windows, red tail lights, wheels."""
    paint = [RED, WHITE, YELLOW, scene._color(rng).tolist()][int(rng.integers(4))]
    bw, bh = size, size * rng.uniform(0.55, 0.8)
    body = np.array([[x - bw / 2, y - bh * 0.55], [x + bw / 2, y - bh * 0.55], [x + bw / 2, y + bh / 2],
                     [x - bw / 2, y + bh / 2]])
    cv2.fillPoly(img, [_px(body)], np.array(paint, float).tolist(), cv2.LINE_AA, SHIFT)
    roof = np.array([[x - bw * 0.38, y - bh], [x + bw * 0.38, y - bh], [x + bw * 0.45, y - bh * 0.55],
                     [x - bw * 0.45, y - bh * 0.55]])
    cv2.fillPoly(img, [_px(roof)], (60, 50, 45), cv2.LINE_AA, SHIFT)
    for sx in (-1, 1):
        c = (x + sx * bw * 0.38, y - bh * 0.2)
        cv2.ellipse(img, tuple(int(v * _ONE) for v in c), (int(bw * 0.08 * _ONE), int(bh * 0.08 * _ONE)), 0, 0,
                    360, (30, 30, 220), -1, cv2.LINE_AA, SHIFT)
        cv2.circle(img, (int((x + sx * bw * 0.33) * _ONE), int((y + bh / 2) * _ONE)), int(bh * 0.15 * _ONE),
                   (25, 25, 25), -1, cv2.LINE_AA, SHIFT)


def _billboard(img: np.ndarray, rng: Rng, x: float, y: float, size: float) -> None:
    """A wide board with lettering (white, yellow or red): a sign's colours and text, not its shape."""
    bw, bh = size, size / rng.uniform(1.8, 4.0)
    col = [WHITE, YELLOW, RED, scene._color(rng).tolist()][int(rng.integers(4))]
    cv2.rectangle(img, (int(x - bw / 2), int(y - bh / 2)), (int(x + bw / 2), int(y + bh / 2)), col, -1)
    ink = (20, 20, 20) if col in (WHITE, YELLOW) else (235, 235, 235)
    lines = int(rng.integers(1, 3))
    for i in range(lines):
        text = _letters(rng, int(rng.integers(4, 10)))
        scale = max(0.2, bh / lines / 32.0)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        k = min(1.0, 0.9 * bw / max(tw, 1))
        org = (int(x - bw / 2 + 0.05 * bw), int(y - bh / 2 + (i + 0.8) * bh / lines))
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale * k, ink, max(1, int(scale * 2)), cv2.LINE_AA)


def _shape(img: np.ndarray, rng: Rng, x: float, y: float, size: float) -> None:
    """Octagon-like or round shapes that are not signs: other paints, other vertex counts, no legend."""
    n = int(rng.choice([5, 6, 7, 8, 10, 40]))
    if n == 8:  # an octagon, but never a stop sign's red-and-white
        col = _NON_SIGN_PAINTS[int(rng.integers(len(_NON_SIGN_PAINTS)))]
    else:
        col = [RED, YELLOW, WHITE, ORANGE, _NON_SIGN_PAINTS[int(rng.integers(len(_NON_SIGN_PAINTS)))]][
            int(rng.integers(5))]
    a = np.deg2rad(rng.uniform(0, 360) + 360.0 * np.arange(n) / n)
    r = size / 2
    pts = np.stack([x + r * np.cos(a), y + r * np.sin(a) * rng.uniform(0.7, 1.0)], 1)
    cv2.fillPoly(img, [_px(pts)], np.array(col, float).tolist(), cv2.LINE_AA, SHIFT)


def _barrel(img: np.ndarray, rng: Rng, x: float, y: float, size: float) -> None:
    """A construction barrel / cone: orange (or red) and white stripes."""
    bw, bh = size * 0.6, size
    stripes = int(rng.integers(3, 6))
    for i in range(stripes):
        col = ORANGE if i % 2 == 0 else WHITE
        y0 = y - bh / 2 + i * bh / stripes
        taper = 0.15 * bw * (1 - i / stripes) if rng.random() < 0.5 else 0.0
        pts = np.array([[x - bw / 2 + taper, y0], [x + bw / 2 - taper, y0], [x + bw / 2, y0 + bh / stripes],
                        [x - bw / 2, y0 + bh / stripes]])
        cv2.fillPoly(img, [_px(pts)], col, cv2.LINE_AA, SHIFT)


def _blob(img: np.ndarray, rng: Rng, x: float, y: float, size: float) -> None:
    """A saturated red/yellow/white patch (flowers, umbrellas, shirts): colour without any shape cue."""
    col = [RED, YELLOW, WHITE, ORANGE][int(rng.integers(4))]
    for _ in range(int(rng.integers(2, 7))):
        c = (x + rng.normal(0, size / 4), y + rng.normal(0, size / 4))
        ax = (int(rng.uniform(0.1, 0.35) * size * _ONE), int(rng.uniform(0.1, 0.35) * size * _ONE))
        cv2.ellipse(img, tuple(int(v * _ONE) for v in c), ax, float(rng.uniform(0, 180)), 0, 360,
                    (np.array(col) * rng.uniform(0.7, 1.05)).tolist(), -1, cv2.LINE_AA, SHIFT)


DISTRACTORS = {"vehicle": _vehicle, "billboard": _billboard, "shape": _shape, "barrel": _barrel, "blob": _blob}


def draw_distractor(img: np.ndarray, rng: Rng, min_px: float, max_px: float) -> Tuple[float, float, float]:
    """Draw one random distractor of ``min_px``..``max_px`` (log-uniform); returns its (x, y, size)."""
    h, w = img.shape[:2]
    kind = list(DISTRACTORS)[int(rng.integers(len(DISTRACTORS)))]
    size = float(math.exp(rng.uniform(math.log(min_px), math.log(max_px))))
    x, y = rng.uniform(0, w), rng.uniform(0.1 * h, h)
    DISTRACTORS[kind](img, rng, x, y, size)
    return x, y, size


def night_lights(img: np.ndarray, rng: Rng, horizon: int) -> None:
    """Street lamps, headlights and lit windows at night: bright round glows (white, sodium yellow, red)."""
    h, w = img.shape[:2]
    glow = np.zeros((h, w, 3), np.float32)
    for _ in range(int(rng.integers(2, 10))):
        col = [(255, 255, 255), (120, 200, 255), (60, 60, 255)][int(rng.integers(3))]
        c = (int(rng.uniform(0, w)), int(rng.uniform(0.05 * h, max(horizon, 0.5 * h) + 0.3 * h)))
        r = float(rng.uniform(2, 14))
        cv2.circle(glow, c, int(r), col, -1, cv2.LINE_AA)
        cv2.circle(glow, c, int(r * 4), tuple(0.25 * v for v in col), -1, cv2.LINE_AA)
    glow = cv2.GaussianBlur(glow, (0, 0), 3)
    img[:] = np.clip(img + glow, 0, 255).astype(np.uint8)


def glare(img: np.ndarray, rng: Rng) -> None:
    """Sun glare: a large soft bright disc (+ faint flare rings along a line), washing out part of the frame."""
    h, w = img.shape[:2]
    cx, cy = rng.uniform(0, w), rng.uniform(-0.2 * h, 0.6 * h)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / np.float32((rng.uniform(0.15, 0.5) * w) ** 2)
    light = np.exp(-r2)[:, :, None] * np.float32(rng.uniform(120, 255))
    for _ in range(int(rng.integers(0, 4))):  # flare ghosts on the line through the frame centre
        t = rng.uniform(-1.0, 1.0)
        gx, gy = w / 2 + (w / 2 - cx) * t, h / 2 + (h / 2 - cy) * t
        ring = np.zeros((h, w), np.float32)
        cv2.circle(ring, (int(gx), int(gy)), int(rng.uniform(8, 40)), float(rng.uniform(20, 60)), -1, cv2.LINE_AA)
        light += cv2.GaussianBlur(ring, (0, 0), 2)[:, :, None]
    img[:] = np.clip(img.astype(np.float32) + light, 0, 255).astype(np.uint8)
