"""Geometry and compositing shared by the sample renderer and the drive-by video.

Why one place: a sticker must land on the sign the same way in a training
sample, in an attack's re-rendering and in a drive-by frame.  Everything here
is a pure function of its arguments (no randomness), numpy + OpenCV only.

Conventions: template pixel ``(x, y)`` has its centre at integer coordinates
(OpenCV's); a homography maps template pixels to image pixels.  Faces are
composited *premultiplied* (colour * coverage) so that warping at 2x and
area-downscaling gives correct anti-aliased edges over any background.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from edge.errors import SignguardError

from .signs import TEMPLATE_SIZE

_S = TEMPLATE_SIZE
_LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # BGR


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (degrees): yaw about the vertical axis, then pitch about the horizontal, then roll in-plane."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def plane_homography(rot: np.ndarray, t: Sequence[float], focal: float, principal: Tuple[float, float],
                     width: float = 1.0, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Template pixel coords -> image coords of a sign ``width`` wide, rotated by ``rot``, centred at camera
    coordinates ``t`` (x right, y down, z forward), seen by a pinhole camera (``focal`` px, ``principal``)."""
    c = (size - 1) / 2.0
    k = width / size
    tm = np.array([[k, 0, -c * k], [0, k, -c * k], [0, 0, 1.0]])
    km = np.array([[focal, 0, principal[0]], [0, focal, principal[1]], [0, 0, 1.0]])
    return km @ np.column_stack([rot[:, 0], rot[:, 1], np.asarray(t, np.float64)]) @ tm


def sign_homography(yaw: float, pitch: float, roll: float, width_px: float, centre: Tuple[float, float],
                    distance: float = 6.0, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Template pixel coords -> image coords for a sign plane rotated in 3-D and seen by a pinhole camera.

    A frontal sign is ``width_px`` wide and centred on ``centre``; ``distance``
    (camera to sign, in sign widths) sets how strong the perspective is.
    """
    return plane_homography(rotation(yaw, pitch, roll), (0.0, 0.0, distance), width_px * distance, centre, 1.0, size)


def project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a homography to (N, 2) points."""
    q = pts @ h[:, :2].T + h[:, 2]
    return q[:, :2] / q[:, 2:3]


def scale_px(k: float) -> np.ndarray:
    """Pixel-centre-aware scaling by ``k`` (OpenCV resize convention: ``x' = (x + 0.5) k - 0.5``)."""
    return np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1.0]])


def fit_inside(h: np.ndarray, poly: np.ndarray, size: int) -> np.ndarray:
    """Shift a projection so the sign (plus a 10% margin when it fits) lies inside a ``size`` canvas."""
    p = project(h, poly)
    lo, hi = p.min(0), p.max(0)
    ext = hi - lo
    margin = np.minimum(0.1 * ext, np.maximum((size - 1 - ext) / 2.0, 0.0))
    shift = np.maximum(margin - lo, 0.0) - np.maximum(hi - (size - 1) + margin, 0.0)
    shift = np.where(ext > size - 1, (size - 1) / 2.0 - (hi + lo) / 2.0, shift)
    return np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1.0]]) @ h


def check_sticker(sticker: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Validate a (bgr uint8 (S,S,3), alpha float (S,S) in [0,1]) sticker; returns float32 arrays."""
    if not isinstance(sticker, (tuple, list)) or len(sticker) != 2:
        raise SignguardError("sticker: expected a (bgr, alpha) pair")
    bgr, alpha = (np.asarray(a) for a in sticker)
    if bgr.shape != (_S, _S, 3) or bgr.dtype != np.uint8:
        raise SignguardError("sticker bgr: expected uint8 (%d, %d, 3), got %s %s" % (_S, _S, bgr.dtype, bgr.shape))
    if alpha.shape != (_S, _S) or not np.issubdtype(alpha.dtype, np.floating):
        raise SignguardError("sticker alpha: expected float (%d, %d), got %s %s" % (_S, _S, alpha.dtype, alpha.shape))
    if not (np.isfinite(alpha).all() and alpha.min() >= 0.0 and alpha.max() <= 1.0):
        raise SignguardError("sticker alpha: values must lie in [0, 1]")
    return bgr.astype(np.float32), alpha.astype(np.float32)


def face_rgba(face: np.ndarray, tmask: np.ndarray, fade: float = 0.0,
              sticker: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Template face as uint8 (S, S, 4): BGR plus coverage (the mask).

    Paint fades toward a pale grey first; the sticker goes on after (it is
    new), clipped to the sign mask.
    """
    if fade > 0:
        m = np.eye(3, dtype=np.float32) * (1 - fade) + np.float32(fade * 0.5) * np.outer(np.ones(3), _LUMA)
        face = cv2.transform(face, np.hstack([m, np.full((3, 1), 120.0 * fade, np.float32)]))
    if sticker is not None:
        bgr, alpha = check_sticker(sticker)
        a = (alpha * (tmask > 0))[:, :, None]
        f = face.astype(np.float32)
        face = cv2.convertScaleAbs(f + (bgr - f) * a)
    return cv2.merge([face, tmask])


def mip(rgba: np.ndarray, h: np.ndarray, width_px: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pre-shrink the face (INTER_AREA) when it will be drawn much smaller than the template.

    Returns the (possibly smaller) face and the homography from its pixels;
    bilinear warping from a face of about the output size does not alias.
    """
    if width_px >= 0.7 * rgba.shape[1]:
        return rgba, h
    m = max(8, int(round(width_px * 1.4)))
    small = cv2.resize(rgba, (m, m), interpolation=cv2.INTER_AREA)
    return small, h @ scale_px(rgba.shape[1] / m)


@lru_cache(maxsize=64)
def _grid(m: int) -> Tuple[np.ndarray, np.ndarray]:
    g = np.linspace(0, 1, m, dtype=np.float32)
    u, v = np.meshgrid(g, g)
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def shade(rgba: np.ndarray, gain: float = 1.0, wear: Optional[np.ndarray] = None, shadow: float = 0.0,
          shadow_angle: float = 0.0, shadow_offset: float = 0.0, specular: float = 0.0,
          specular_xy: Tuple[float, float] = (0.5, 0.5), specular_radius: float = 0.25
          ) -> Tuple[np.ndarray, np.ndarray]:
    """Light falling on the sign, in sign coordinates; returns premultiplied colour (m, m, 3) and coverage (m, m).

    ``gain``: sign brightness relative to the scene (retro-reflection);
    ``wear``: (m, m) multiplicative dirt; ``shadow``: darkness of a soft
    shadow edge at ``shadow_angle`` (degrees), ``shadow_offset`` from the
    centre (sign widths); ``specular``: a glare spot of that strength.
    Premultiplied (colour * coverage) so that warping and area-downscaling
    average correctly; over-bright values saturate when composited.
    """
    m = rgba.shape[0]
    a = rgba[:, :, 3] * np.float32(1.0 / 255.0)
    mult = a * np.float32(gain)
    if wear is not None:
        mult *= wear
    u, v = _grid(m)
    if shadow > 0:
        th = math.radians(shadow_angle)
        dist = (u - 0.5) * math.cos(th) + (v - 0.5) * math.sin(th) - shadow_offset
        mult *= 1.0 - np.float32(shadow) * np.clip(dist * 12.0 + 0.5, 0.0, 1.0)
    col = rgba[:, :, :3] * mult[:, :, None]
    if specular > 0:
        r2 = (u - specular_xy[0]) ** 2 + (v - specular_xy[1]) ** 2
        col += (np.float32(255.0 * specular) * np.exp(-r2 / np.float32(2 * specular_radius**2)) * a)[:, :, None]
    return col, a


def over(dst: np.ndarray, col: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite premultiplied colour/coverage over a uint8 (h, w, 3) image; returns uint8."""
    out = dst * (1.0 - alpha)[:, :, None]
    out += col
    return cv2.convertScaleAbs(out)  # values are >= 0: rounds and saturates


def lighting_lut(brightness: float, contrast: float, gamma: float, gains: Sequence[float]) -> np.ndarray:
    """(256, 1, 3) uint8 LUT: gamma, then contrast about mid-grey, then brightness and white balance."""
    x = np.arange(256, dtype=np.float64) / 255.0
    y = ((x**gamma - 0.5) * contrast + 0.5) * brightness
    lut = np.stack([y * g for g in gains], axis=1) * 255.0
    return np.clip(np.round(lut), 0, 255).astype(np.uint8).reshape(256, 1, 3)


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Normalised line kernel for linear motion blur of ``length`` pixels."""
    k = int(math.ceil(length)) | 1
    ker = np.zeros((k, k), np.float32)
    c = (k - 1) / 2.0
    dx = math.cos(math.radians(angle_deg)) * length / 2
    dy = math.sin(math.radians(angle_deg)) * length / 2
    p0 = (int(round((c - dx) * 16)), int(round((c - dy) * 16)))
    p1 = (int(round((c + dx) * 16)), int(round((c + dy) * 16)))
    cv2.line(ker, p0, p1, 1.0, 1, cv2.LINE_AA, 4)
    return ker / max(float(ker.sum()), 1e-6)
