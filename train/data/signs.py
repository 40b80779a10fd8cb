"""Canonical faces of the 18 LISA US sign classes, drawn after the MUTCD.

Why procedural: the embedded default dataset must work with no download, and
sticker attacks need the exact sign mask in sign coordinates.  Each face is
drawn in a square ``TEMPLATE_SIZE`` template (normalised geometry, see
:mod:`train.data.sign_draw`); the renderer warps it into scenes.  Given an
``rng`` the paint shades, fading, border widths, stroke widths, fonts and
legend placement vary slightly per sample so that a model cannot key on one
exact rendering; ``rng=None`` gives the canonical face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import cv2
import numpy as np

from edge.errors import SignguardError

from . import sign_draw as d
from .classes import LISA_CLASSES
from .sign_draw import TEMPLATE_SIZE

__all__ = ["N_VARIANTS", "TEMPLATE_SIZE", "sign_shape", "sign_template"]

# MUTCD-like paint colours, BGR.
_BASE = {
    "red": (38, 28, 190),
    "white": (242, 242, 240),
    "black": (28, 26, 26),
    "yellow": (22, 196, 246),
    "yg": (40, 232, 196),  # fluorescent yellow-green (school)
    "amber": (10, 170, 250),
    "green": (90, 175, 20),
}
_SPEEDS = (15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65)


@dataclass
class _Style:
    """Per-sample appearance: paint shades, border/stroke scale, font, legend jitter."""

    col: Dict[str, Tuple[float, float, float]]
    border: float
    stroke: float
    font: int
    thick: int
    rng: Optional[np.random.Generator]

    def jit(self, amount: float = 0.012) -> float:
        """A small offset of legend/symbol geometry (template units)."""
        return 0.0 if self.rng is None else float(self.rng.uniform(-amount, amount))


def _style(rng: Optional[np.random.Generator]) -> _Style:
    if rng is None:
        return _Style(dict(_BASE), 1.0, 1.0, cv2.FONT_HERSHEY_SIMPLEX, 5, None)
    col = {}
    for name, base in _BASE.items():
        k = rng.uniform(0.82, 1.04)
        c = np.asarray(base, np.float64) * k + rng.normal(0.0, 5.0, 3)
        col[name] = tuple(float(v) for v in np.clip(c, 0, 255))
    font = cv2.FONT_HERSHEY_SIMPLEX if rng.random() < 0.6 else cv2.FONT_HERSHEY_DUPLEX
    return _Style(col, rng.uniform(0.75, 1.3), rng.uniform(0.85, 1.15), font, int(rng.integers(4, 8)), rng)


# --- shapes -----------------------------------------------------------------------------------------------------

_RECT_TALL = (0.11, 0.01, 0.89, 0.99)  # 24x30 in regulatory signs (R2-1, R4-7)
_RECT_SCHOOL = (0.19, 0.01, 0.81, 0.99)  # S5-1 style, taller
_RECT_SQUARE = (0.02, 0.02, 0.98, 0.98)  # R3-7R
_DIAMOND = np.array([[0.5, 0.005], [0.995, 0.5], [0.5, 0.995], [0.005, 0.5]])
_PENTAGON = np.array([[0.5, 0.01], [0.985, 0.40], [0.985, 0.985], [0.015, 0.985], [0.015, 0.40]])
_TRI_H = 0.98 * np.sqrt(3) / 2
_TRIANGLE = np.array([[0.01, (1 - _TRI_H) / 2], [0.99, (1 - _TRI_H) / 2], [0.5, (1 + _TRI_H) / 2]])
_TRI_C = (0.5, float(_TRIANGLE[:, 1].sum() / 3))


def _rect(r: Tuple[float, float, float, float]) -> np.ndarray:
    return d.rounded_rect(*r, 0.04)


def sign_shape(class_id: int) -> np.ndarray:
    """Outline polygon (N, 2) of a class's sign in normalised template units."""
    name = _name(class_id)
    if name == "stop":
        return d.octagon((0.5, 0.5), 0.497)
    if name == "yield":
        return _TRIANGLE.copy()
    if name == "school":
        return _PENTAGON.copy()
    if name in _DIAMOND_SYMBOLS:
        return _DIAMOND.copy()
    if name == "schoolSpeedLimit25":
        return _rect(_RECT_SCHOOL)
    if name == "rightLaneMustTurn":
        return _rect(_RECT_SQUARE)
    return _rect(_RECT_TALL)


# --- regulatory signs -------------------------------------------------------------------------------------------


def _stop(img: np.ndarray, st: _Style) -> None:
    c = (0.5, 0.5)
    margin = 0.0 if st.rng is None else st.rng.uniform(0.0, 0.015)
    d.fill(img, d.octagon(c, 0.497 - margin), st.col["white"])
    d.fill(img, d.octagon(c, 0.497 - margin - 0.045 * st.border), st.col["red"])
    w, h = 0.76 + st.jit(0.03), 0.31 + st.jit(0.02)
    y = 0.5 + st.jit(0.01)
    d.text(img, "STOP", (0.5 - w / 2, y - h / 2, 0.5 + w / 2, y + h / 2), st.col["white"], st.font, st.thick + 1)


def _yield(img: np.ndarray, st: _Style) -> None:
    d.fill(img, d.scale_about(_TRIANGLE, _TRI_C, 0.975 - 0.02 * st.border), st.col["red"])
    inner = d.scale_about(_TRIANGLE, _TRI_C, 0.5 if st.rng is None else st.rng.uniform(0.45, 0.62))  # sizes differ
    d.fill(img, inner, st.col["white"])
    if st.rng is None or st.rng.random() < 0.8:  # US legend; some (older/foreign-like) faces have none
        top = float(inner[0, 1])
        d.text(img, "YIELD", (0.36, top + 0.035, 0.64, top + 0.115), st.col["red"], st.font, max(3, st.thick - 1))


def _framed_rect(img: np.ndarray, st: _Style, r: Tuple[float, float, float, float]) -> None:
    """White regulatory rectangle with its black inset border."""
    inset = 0.028 * st.border
    x0, y0, x1, y1 = r
    d.stroke(img, d.rounded_rect(x0 + inset, y0 + inset, x1 - inset, y1 - inset, 0.03), st.col["black"],
             0.018 * st.border, closed=True)


def _number(img: np.ndarray, st: _Style, num: str, box: Tuple[float, float, float, float]) -> None:
    d.text(img, num, box, st.col["black"], cv2.FONT_HERSHEY_DUPLEX if st.rng is None else st.font, st.thick + 2)


def _speed_legend(img: np.ndarray, st: _Style, y0: float, x0: float, x1: float) -> float:
    """SPEED / LIMIT lines from ``y0``; returns where the number may start."""
    th = max(3, st.thick - 1)
    j = st.jit(0.01)
    d.text(img, "SPEED", (x0, y0 + j, x1, y0 + 0.13 + j), st.col["black"], st.font, th)
    d.text(img, "LIMIT", (x0 + 0.015, y0 + 0.18 + j, x1 - 0.015, y0 + 0.31 + j), st.col["black"], st.font, th)
    return y0 + 0.38


def _speed_limit(num: int) -> Callable[[np.ndarray, _Style], None]:
    def draw(img: np.ndarray, st: _Style) -> None:
        _framed_rect(img, st, _RECT_TALL)
        y = _speed_legend(img, st, 0.10, 0.22, 0.78)
        w = 0.5 + st.jit(0.03)
        _number(img, st, str(num), (0.5 - w / 2, y + 0.02 + st.jit(0.01), 0.5 + w / 2, 0.88))

    return draw


def _speed_unreadable(img: np.ndarray, st: _Style) -> None:
    """A speed-limit face whose number cannot be read: smeared, blotted, faded or scratched.

    Every mode also softens the digits, so that no variant stays legible at
    32x32 (the label would then be a lie).
    """
    rng = st.rng
    num = 25 if rng is None else int(rng.choice(_SPEEDS))
    _speed_limit(num)(img, st)
    s = img.shape[0]
    y0, y1, x0, x1 = int(0.46 * s), int(0.92 * s), int(0.17 * s), int(0.83 * s)
    roi = img[y0:y1, x0:x1]
    mode = 0 if rng is None else int(rng.integers(0, 4))
    if mode == 0:  # heavily blurred digits (de-focused paint, water film)
        sig = (0.15 if rng is None else rng.uniform(0.12, 0.22)) * s
        small = cv2.resize(roi, (max(2, int(roi.shape[1] / sig)), max(2, int(roi.shape[0] / (0.6 * sig)))),
                           interpolation=cv2.INTER_AREA)
        roi[:] = cv2.GaussianBlur(cv2.resize(small, roi.shape[1::-1], interpolation=cv2.INTER_LINEAR), (0, 0), 3)
        return
    roi[:] = cv2.GaussianBlur(roi, (0, 0), 0.03 * s)
    if mode == 1:  # directional smear (wiped paint)
        n = int(rng.integers(21, 41))
        ang = np.deg2rad(rng.uniform(0, 180))
        ker = np.zeros((n, n), np.float32)
        c, dx, dy = n // 2, int(n / 2 * np.cos(ang)), int(n / 2 * np.sin(ang))
        cv2.line(ker, (c - dx, c - dy), (c + dx, c + dy), 1.0, 1)
        roi[:] = cv2.filter2D(roi, -1, ker / ker.sum(), borderType=cv2.BORDER_REFLECT)
    elif mode == 2:  # dirt / stickers / graffiti blotting most of the digits
        for _ in range(int(rng.integers(5, 10))):
            shade = rng.uniform(30, 220)
            col = tuple(float(shade * g) for g in rng.uniform(0.8, 1.1, 3))
            d.ellipse(img, tuple(rng.uniform([0.3, 0.58], [0.7, 0.8])), tuple(rng.uniform([0.1, 0.07], [0.22, 0.14])),
                      rng.uniform(0, 180), col)
    else:  # faded, scratched digits
        white = np.asarray(st.col["white"], np.float32)
        roi[:] = (roi.astype(np.float32) * 0.12 + white * 0.88).astype(np.uint8)
        for _ in range(int(rng.integers(5, 10))):
            p = rng.uniform([0.2, 0.5], [0.8, 0.9], size=(2, 2))
            d.stroke(img, p, st.col["white"] if rng.random() < 0.5 else st.col["black"], rng.uniform(0.02, 0.05))


def _school_speed_limit(img: np.ndarray, st: _Style) -> None:
    x0, y0, x1, y1 = _RECT_SCHOOL
    top = 0.25
    if st.rng is None or st.rng.random() < 0.65:
        d.fill(img, d.rounded_rect(x0, y0, x1, top, 0.04), st.col["yg"])
    _framed_rect(img, st, _RECT_SCHOOL)
    d.stroke(img, [(x0 + 0.02, top), (x1 - 0.02, top)], st.col["black"], 0.015 * st.border)
    th = max(3, st.thick - 1)
    d.text(img, "SCHOOL", (x0 + 0.07, 0.08 + st.jit(0.008), x1 - 0.07, 0.18), st.col["black"], st.font, th)
    y = _speed_legend(img, st, 0.31, x0 + 0.08, x1 - 0.08) - 0.04
    _number(img, st, "25", (0.5 - 0.2, y + 0.03, 0.5 + 0.2, 0.9))


def _keep_right(img: np.ndarray, st: _Style) -> None:
    _framed_rect(img, st, _RECT_TALL)
    k = st.col["black"]
    ox, oy = 0.37 + st.jit(), 0.72 + st.jit()
    d.ellipse(img, (ox, oy), (0.105, 0.085), 0.0, k)  # the obstacle (island)
    path = np.vstack([d.bezier((0.30 + st.jit(), 0.16), (0.34, 0.42), (0.60, 0.50), 10),
                      d.bezier((0.60, 0.50), (0.66, 0.53), (0.66, 0.86), 10)[1:]])
    d.arrow(img, path, 0.075 * st.stroke, k, 0.2, 0.14)


def _right_lane_must_turn(img: np.ndarray, st: _Style) -> None:
    _framed_rect(img, st, _RECT_SQUARE)
    th = max(3, st.thick - 1)
    k = st.col["black"]
    d.text(img, "RIGHT LANE", (0.12, 0.13 + st.jit(0.01), 0.88, 0.30), k, st.font, th)
    d.text(img, "MUST", (0.30, 0.41 + st.jit(0.01), 0.70, 0.59), k, st.font, th)
    d.text(img, "TURN RIGHT", (0.12, 0.70 + st.jit(0.01), 0.88, 0.87), k, st.font, th)


# --- warning signs (yellow diamonds) and the school pentagon ----------------------------------------------------


def _diamond_base(img: np.ndarray, st: _Style) -> None:
    k = 0.925 - 0.01 * (st.border - 1.0)
    d.stroke(img, d.scale_about(_DIAMOND, (0.5, 0.5), k), st.col["black"], 0.028 * st.border, closed=True)


def _figure(img: np.ndarray, st: _Style, cx: float, feet: float, h: float, lean: float = 0.0) -> None:
    """Walking person (pedestrian crossing) or child (school): head, torso, arms, striding legs."""
    k = st.col["black"]
    w = 0.13 * h * st.stroke
    hip = (cx - 0.02 * h + lean * 0.2, feet - 0.42 * h)
    sh = (cx + 0.02 * h + lean, feet - 0.76 * h)
    d.disc(img, (sh[0] + 0.03 * h, feet - 0.92 * h), 0.085 * h, k)
    d.stroke(img, [sh, hip], k, w * 1.25)
    d.stroke(img, [hip, (cx - 0.2 * h, feet - 0.03 * h)], k, w)
    d.stroke(img, [hip, (cx + 0.13 * h, feet - 0.2 * h), (cx + 0.2 * h, feet - 0.02 * h)], k, w)
    d.stroke(img, [sh, (cx - 0.15 * h, feet - 0.58 * h), (cx - 0.2 * h, feet - 0.45 * h)], k, w * 0.85)
    d.stroke(img, [sh, (cx + 0.16 * h, feet - 0.6 * h), (cx + 0.24 * h, feet - 0.5 * h)], k, w * 0.85)


def _added_lane(img: np.ndarray, st: _Style) -> None:
    k, w = st.col["black"], 0.07 * st.stroke
    j = st.jit()
    d.arrow(img, [(0.40 + j, 0.80), (0.40 + j, 0.22)], w, k, 0.17, 0.12)
    path = np.vstack([d.bezier((0.74, 0.78), (0.60 + j, 0.64), (0.60 + j, 0.46), 10), [(0.60 + j, 0.22)]])
    d.arrow(img, path, w, k, 0.17, 0.12)


def _merge(img: np.ndarray, st: _Style) -> None:
    k, w = st.col["black"], 0.07 * st.stroke
    j = st.jit()
    d.arrow(img, [(0.43 + j, 0.82), (0.43 + j, 0.20)], w * 1.1, k, 0.19, 0.13)
    d.stroke(img, d.bezier((0.70, 0.80), (0.70 + j, 0.58), (0.45 + j, 0.42), 14), k, w * 0.9)


def _lane_ends(img: np.ndarray, st: _Style) -> None:
    k, w = st.col["black"], 0.075 * st.stroke
    j = st.jit()
    d.stroke(img, [(0.40 + j, 0.82), (0.40 + j, 0.20)], k, w)
    d.stroke(img, [(0.61 + j, 0.82), (0.61 + j, 0.58), (0.45 + j, 0.36), (0.45 + j, 0.22)], k, w)


def _pedestrian(img: np.ndarray, st: _Style) -> None:
    _figure(img, st, 0.49 + st.jit(), 0.80 + st.jit(0.01), 0.58, 0.02)


def _signal_ahead(img: np.ndarray, st: _Style) -> None:
    j = st.jit()
    d.fill(img, d.rounded_rect(0.39 + j, 0.18, 0.61 + j, 0.82, 0.04), st.col["black"])
    for y, c in ((0.305, "red"), (0.5, "amber"), (0.695, "green")):
        d.disc(img, (0.5 + j, y), 0.068, st.col[c])


def _stop_ahead(img: np.ndarray, st: _Style) -> None:
    c = (0.5 + st.jit(0.01), 0.36)
    d.fill(img, d.octagon(c, 0.165), st.col["white"])
    d.fill(img, d.octagon(c, 0.148), st.col["red"])
    d.text(img, "STOP", (c[0] - 0.11, c[1] - 0.045, c[0] + 0.11, c[1] + 0.045), st.col["white"], st.font, 4)
    d.arrow(img, [(0.5, 0.86), (0.5, 0.56)], 0.07 * st.stroke, st.col["black"], 0.17, 0.11)


def _turn_right(img: np.ndarray, st: _Style) -> None:
    j = st.jit()
    path = [(0.42 + j, 0.80), (0.42 + j, 0.42), (0.76, 0.42)]
    d.arrow(img, path, 0.09 * st.stroke, st.col["black"], 0.24, 0.15)


def _school(img: np.ndarray, st: _Style) -> None:
    d.stroke(img, d.scale_about(_PENTAGON, (0.5, 0.6), 0.93), st.col["black"], 0.026 * st.border, closed=True)
    _figure(img, st, 0.37 + st.jit(), 0.86, 0.52, 0.02)
    _figure(img, st, 0.64 + st.jit(), 0.86, 0.42, 0.02)


_DIAMOND_SYMBOLS: Dict[str, Callable[[np.ndarray, _Style], None]] = {
    "addedLane": _added_lane,
    "laneEnds": _lane_ends,
    "merge": _merge,
    "pedestrianCrossing": _pedestrian,
    "signalAhead": _signal_ahead,
    "stopAhead": _stop_ahead,
    "turnRight": _turn_right,
}
_OTHER: Dict[str, Tuple[str, Callable[[np.ndarray, _Style], None]]] = {
    "stop": ("red", _stop),
    "yield": ("white", _yield),
    "school": ("yg", _school),
    "schoolSpeedLimit25": ("white", _school_speed_limit),
    "speedLimit25": ("white", _speed_limit(25)),
    "speedLimit30": ("white", _speed_limit(30)),
    "speedLimit35": ("white", _speed_limit(35)),
    "speedLimit45": ("white", _speed_limit(45)),
    "speedLimitUrdbl": ("white", _speed_unreadable),
    "keepRight": ("white", _keep_right),
    "rightLaneMustTurn": ("white", _right_lane_must_turn),
}


def _name(class_id: int) -> str:
    if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or not (
        0 <= int(class_id) < len(LISA_CLASSES)
    ):
        raise SignguardError("class_id: expected an integer in [0, %d), got %r" % (len(LISA_CLASSES), class_id))
    return LISA_CLASSES[int(class_id)]


def _draw_face(class_id: int, rng: Optional[np.random.Generator]) -> Tuple[np.ndarray, np.ndarray]:
    name = _name(class_id)
    st = _style(rng)
    s = TEMPLATE_SIZE
    mask = np.zeros((s, s), np.uint8)
    d.fill_mask(mask, sign_shape(class_id))
    outer, draw = ("yellow", _DIAMOND_SYMBOLS[name]) if name in _DIAMOND_SYMBOLS else _OTHER[name]
    face = np.empty((s, s, 3), np.uint8)
    face[:] = np.round(st.col[outer])
    if name in _DIAMOND_SYMBOLS:
        _diamond_base(face, st)
    draw(face, st)
    face.setflags(write=False)
    mask.setflags(write=False)
    return face, mask


@lru_cache(maxsize=None)
def _variant(class_id: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Face variant ``k`` (-1 = canonical), drawn once per process from a fixed seed.

    Drawing a face costs ~1 ms, a third of the per-sample budget, so each
    class has ``N_VARIANTS`` drawn layouts (4x that for ``speedLimitUrdbl``,
    whose number and damage vary) (fonts, strokes, borders, paint,
    legend jitter) that are cached, and each sample adds a continuous colour
    jitter on top.  Seeds depend on (class, k) only, so the cache is the same
    in every worker process.
    """
    return _draw_face(class_id, None if k < 0 else np.random.default_rng([0x5167, class_id, k]))


N_VARIANTS = 24
_LUMA = np.array([0.114, 0.587, 0.299])  # BGR


def sign_template(class_id: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(face BGR uint8 (S, S, 3), mask uint8 (S, S) in {0, 255}) of a sign in template coordinates.

    ``rng=None`` gives the canonical face; with an ``rng`` one of
    ``N_VARIANTS`` drawn variants is picked and its paint jittered in gain
    and saturation.  Face pixels outside the mask hold the sign's outer paint
    colour, so that bilinear warping does not bleed a dark fringe into the
    sign edge.  The arrays are fresh copies the caller may modify.
    """
    _name(class_id)
    if rng is None:
        face, mask = _variant(int(class_id), -1)
        return face.copy(), mask.copy()
    n = N_VARIANTS * 4 if LISA_CLASSES[int(class_id)] == "speedLimitUrdbl" else N_VARIANTS
    face, mask = _variant(int(class_id), int(rng.integers(n)))
    gains = rng.uniform(0.9, 1.06) * (1.0 + rng.normal(0.0, 0.025, 3))
    sat = rng.uniform(0.8, 1.12)
    m = np.diag(gains) @ (sat * np.eye(3) + (1.0 - sat) * np.outer(np.ones(3), _LUMA))
    return cv2.transform(face, m), mask.copy()
