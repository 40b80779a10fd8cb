"""Drawing primitives for sign templates, in normalised template coordinates.

Why a separate module: the sign faces in :mod:`train.data.signs` are described
as geometry in ``[0, 1]`` units of the template side (so a legend reads like
the MUTCD drawing it imitates), and these helpers turn that geometry into
anti-aliased OpenCV drawing calls with sub-pixel precision (``shift`` bits).
Masks are drawn without anti-aliasing so that they stay exactly {0, 255}.
numpy + OpenCV only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence, Tuple

import cv2
import numpy as np

TEMPLATE_SIZE = 128
SHIFT = 4  # sub-pixel bits for cv2 drawing calls
_ONE = 1 << SHIFT

Color = Tuple[float, float, float]
UV = Sequence[Tuple[float, float]]


def to_px(coords: UV | np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Normalised (u, v) points -> int32 fixed-point pixel coordinates for ``shift=SHIFT`` calls."""
    return np.round(np.asarray(coords, dtype=np.float64) * size * _ONE).astype(np.int32).reshape(-1, 2)


def fill(img: np.ndarray, coords: UV | np.ndarray, color: Color) -> None:
    """Anti-aliased filled polygon."""
    cv2.fillPoly(img, [to_px(coords, img.shape[0])], color, cv2.LINE_AA, SHIFT)


def fill_mask(mask: np.ndarray, coords: UV | np.ndarray) -> None:
    """Hard-edged filled polygon (value 255) so a mask stays binary."""
    cv2.fillPoly(mask, [to_px(coords, mask.shape[0])], 255, cv2.LINE_8, SHIFT)


def stroke(img: np.ndarray, coords: UV | np.ndarray, color: Color, width: float, closed: bool = False) -> None:
    """Anti-aliased polyline of ``width`` (template units), with round caps and joins."""
    size = img.shape[0]
    thick = max(1, int(round(width * size)))
    cv2.polylines(img, [to_px(coords, size)], closed, color, thick, cv2.LINE_AA, SHIFT)


def disc(img: np.ndarray, centre: Tuple[float, float], radius: float, color: Color) -> None:
    size = img.shape[0]
    c = to_px([centre], size)[0]
    cv2.circle(img, (int(c[0]), int(c[1])), int(round(radius * size * _ONE)), color, -1, cv2.LINE_AA, SHIFT)


def ellipse(img: np.ndarray, centre: Tuple[float, float], axes: Tuple[float, float], angle: float,
            color: Color) -> None:
    size = img.shape[0]
    c = to_px([centre], size)[0]
    ax = (int(round(axes[0] * size * _ONE)), int(round(axes[1] * size * _ONE)))
    cv2.ellipse(img, (int(c[0]), int(c[1])), ax, angle, 0, 360, color, -1, cv2.LINE_AA, SHIFT)


def regular_polygon(n: int, centre: Tuple[float, float], radius: float, phase_deg: float) -> np.ndarray:
    """Vertices of a regular n-gon with circumradius ``radius``; first vertex at ``phase_deg`` (0 = +x, clockwise)."""
    a = np.deg2rad(phase_deg + 360.0 * np.arange(n) / n)
    return np.stack([centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a)], axis=1)


def octagon(centre: Tuple[float, float], apothem: float) -> np.ndarray:
    """Stop-sign octagon with flat top/bottom/sides and the given centre-to-side distance."""
    return regular_polygon(8, centre, apothem / np.cos(np.pi / 8), 22.5)


def scale_about(coords: np.ndarray, centre: Tuple[float, float], k: float) -> np.ndarray:
    """Scale points about a centre; for a regular polygon this is a uniform inset."""
    c = np.asarray(centre, dtype=np.float64)
    return (np.asarray(coords, dtype=np.float64) - c) * k + c


def rounded_rect(x0: float, y0: float, x1: float, y1: float, r: float, n: int = 5) -> np.ndarray:
    """Rectangle with corner radius ``r`` as a polygon (``n`` points per corner)."""
    if r <= 0:
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    t = np.linspace(0.0, np.pi / 2, n)
    corners = [
        (x1 - r, y0 + r, -np.pi / 2),
        (x1 - r, y1 - r, 0.0),
        (x0 + r, y1 - r, np.pi / 2),
        (x0 + r, y0 + r, np.pi),
    ]
    pts = [np.stack([cx + r * np.cos(a0 + t), cy + r * np.sin(a0 + t)], axis=1) for cx, cy, a0 in corners]
    return np.concatenate(pts, axis=0)


def bezier(p0: Tuple[float, float], p1: Tuple[float, float], p2: Tuple[float, float], n: int = 16) -> np.ndarray:
    """Quadratic Bezier curve points (arrows that curve, merging lanes)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    a, b, c = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c


def arrow(img: np.ndarray, path: UV | np.ndarray, width: float, color: Color, head_w: float, head_l: float) -> None:
    """Thick arrow along ``path`` with a triangular head at the last point.

    The shaft stops inside the head so round caps do not poke out of its tip.
    """
    p = np.asarray(path, dtype=np.float64)
    tip = p[-1]
    d = tip - p[-2]
    d /= max(float(np.hypot(*d)), 1e-9)
    base = tip - d * head_l
    # Cut the path where it enters the head.
    dist = np.cumsum(np.r_[0.0, np.hypot(*np.diff(p, axis=0).T)])
    keep = dist < dist[-1] - head_l * 0.6
    shaft = np.vstack([p[keep], tip - d * head_l * 0.6])
    stroke(img, shaft, color, width)
    n = np.array([-d[1], d[0]])
    fill(img, [tip, base + n * head_w / 2, base - n * head_w / 2], color)


@lru_cache(maxsize=256)
def _glyphs(text: str, font: int, thickness: int) -> np.ndarray:
    """Tightly cropped anti-aliased text raster (uint8), cached: legends repeat across samples."""
    scale = 2.0
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    pad = thickness + 2
    canvas = np.zeros((h + base + 2 * pad, w + 2 * pad), np.uint8)
    cv2.putText(canvas, text, (pad, pad + h), font, scale, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    out = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()
    out.setflags(write=False)
    return out


def text(
    img: np.ndarray,
    legend: str,
    box: Tuple[float, float, float, float],
    color: Color,
    font: int = cv2.FONT_HERSHEY_SIMPLEX,
    thickness: int = 4,
) -> None:
    """Draw ``legend`` stretched to fill ``box`` = (x0, y0, x1, y1) in template units.

    Stretching (not just scaling) gives the tall condensed letters of highway
    fonts from OpenCV's Hershey fonts.
    """
    size = img.shape[0]
    x0, y0 = int(round(box[0] * size)), int(round(box[1] * size))
    x1, y1 = int(round(box[2] * size)), int(round(box[3] * size))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    g = _glyphs(legend, font, thickness)
    shrink = g.shape[1] > x1 - x0 or g.shape[0] > y1 - y0
    a = cv2.resize(g, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    a = a.astype(np.float32)[:, :, None] * np.float32(1.0 / 255.0)
    roi = img[y0:y1, x0:x1].astype(np.float32)
    col = np.asarray(color, np.float32)
    img[y0:y1, x0:x1] = (roi + (col - roi) * a + 0.5).astype(np.uint8)
