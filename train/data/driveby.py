"""Drive-by videos: a car-mounted camera approaching a roadside sign, with ground-truth boxes.

Why: the device's field-test mode turns a drive-by of a (stickered) sign into
an attack-success-rate report; this renders such a drive-by without a car,
with the exact sign box of every frame.  The sign is warped with the same
template geometry and sticker compositing as :mod:`train.data.render`, so a
sticker optimised on rendered samples is the same physical sticker here.

Scene: sky with clouds, a tree line at the horizon, a two-lane road with a
moving dashed line and roadside texture; the sign on a post to the right,
approached at constant speed (its width grows as 1/distance from ~20 px to
~150 px at 640 px frame width); the camera shakes mildly and drifts, the
light changes slowly, later frames get motion blur, every frame sensor noise.
numpy + OpenCV only; everything comes from ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from edge.errors import ConfigError, SignguardError
from edge.fileio import atomic_write_text

from . import scene
from .classes import LISA_CLASSES, STOP
from .compose import face_rgba, lighting_lut, mip, motion_kernel, over, plane_homography, project, rotation, shade
from .signs import TEMPLATE_SIZE, sign_shape, sign_template

CSV_HEADER = "frame,x,y,w,h,class_id,class_name"
_CAM_H = 1.3  # camera height above the road (m)
_SIGN_W = 0.75  # sign width (m); a 30" stop sign
_PAD = 24  # background margin for shake and drift (px)


@dataclass
class DriveBy:
    """What :func:`render_driveby` wrote; ``size`` is (width, height) in pixels."""

    video_path: Path
    boxes_csv: Path
    n_frames: int
    fps: float
    size: Tuple[int, int]
    class_id: int


def _check(class_id: int, n_frames: int, fps: float, size: Sequence[int], name: str) -> Tuple[int, int]:
    if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or not 0 <= class_id < len(
        LISA_CLASSES
    ):
        raise ConfigError("driveby.class_id: expected an integer in [0, %d), got %r" % (len(LISA_CLASSES), class_id))
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 2:
        raise ConfigError("driveby.n_frames: expected an integer >= 2, got %r" % (n_frames,))
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 240:
        raise ConfigError("driveby.fps: expected a number in (0, 240], got %r" % (fps,))
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 64 <= v <= 4096 for v in size)):
        raise ConfigError("driveby.size: expected (width, height) integers in [64, 4096], got %r" % (size,))
    if not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ConfigError("driveby.name: expected a plain file stem, got %r" % (name,))
    return int(size[0]), int(size[1])


def _open_writer(out_dir: Path, name: str, fps: float, size: Tuple[int, int]) -> Tuple[cv2.VideoWriter, Path]:
    """mp4v ``.mp4``, else MJPG ``.avi`` (OpenCV builds without an MPEG-4 encoder exist)."""
    for suffix, code in ((".mp4", "mp4v"), (".avi", "MJPG")):
        path = out_dir / (name + suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), float(fps), size)
        if writer.isOpened():
            return writer, path
        writer.release()
        if path.exists() and path.stat().st_size == 0:
            path.unlink()
    raise SignguardError("cannot open a video writer for %s.mp4 (mp4v) or %s.avi (MJPG): this OpenCV build has no "
                         "usable encoder" % (out_dir / name, out_dir / name))


def _ground_x(xg: float, y: np.ndarray, vp: Tuple[float, float]) -> np.ndarray:
    """Image x of the road line at lateral offset ``xg`` (m) on image rows ``y`` below the horizon."""
    return vp[0] + xg * (y - vp[1]) / _CAM_H


def _background(rng: np.random.Generator, w: int, h: int, vp: Tuple[float, float], road: Tuple[float, float]
                ) -> np.ndarray:
    """Static road scene in padded coordinates (origin at (-_PAD, -_PAD) of the frame)."""
    bw, bh = w + 2 * _PAD, h + 2 * _PAD
    hz = int(round(vp[1])) + _PAD
    t = np.linspace(0, 1, hz, dtype=np.float32)[:, None, None]
    top = np.array([rng.uniform(150, 230), rng.uniform(110, 180), rng.uniform(60, 140)], np.float32)
    sky = top + (np.float32([225, 220, 215]) - top) * t
    clouds = np.clip((scene.fbm(rng, hz, bw, 6, 3) - rng.uniform(0.4, 0.65)) * 2.5, 0, 1)[:, :, None]
    img = np.empty((bh, bw, 3), np.float32)
    img[:hz] = sky + (np.float32(rng.uniform(200, 245)) - sky) * clouds
    g0 = np.array([rng.uniform(20, 60), rng.uniform(70, 120), rng.uniform(50, 100)], np.float32)
    img[hz:] = g0 * (0.7 + 0.6 * scene.fbm(rng, bh - hz, bw, 24, 3))[:, :, None]
    # Tree line along the horizon.
    edge = hz - (4 + 34 * scene.fbm(rng, 1, bw, 12, 4)[0] ** 1.5) * (h / 360.0)
    rows = np.arange(bh, dtype=np.float32)[:, None]
    trees = (rows > edge[None, :]) & (rows <= hz)
    tex = (0.5 + scene.fbm(rng, bh, bw, 40, 2))[:, :, None] * np.float32([25, 60, 40])
    img[trees] = tex[trees]
    # Road surface between its two edges, with a solid right edge line.
    ys = np.arange(hz, bh, dtype=np.float32) - _PAD
    xl, xr = _ground_x(road[0], ys, vp) + _PAD, _ground_x(road[1], ys, vp) + _PAD
    cols = np.arange(bw, dtype=np.float32)[None, :]
    on_road = (cols >= xl[:, None]) & (cols <= xr[:, None])
    asphalt = rng.uniform(70, 120) * (0.85 + 0.3 * scene.fbm(rng, bh - hz, bw, 60, 2))
    band = img[hz:]
    band[on_road] = np.repeat(asphalt[on_road][:, None], 3, axis=1)
    for xg, width in ((road[1] - 0.25, 0.15), (road[0] + 0.25, 0.15)):
        pts = _strip(xg, width, np.array([vp[1] + 1.0, h + _PAD]), vp) + _PAD
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], (215, 220, 220), cv2.LINE_AA, 4)
    return np.clip(img, 0, 255).astype(np.uint8)


def _strip(xg: float, width: float, y: np.ndarray, vp: Tuple[float, float]) -> np.ndarray:
    """Polygon of a road marking ``width`` m wide at lateral ``xg`` between image rows ``y[0]`` and ``y[1]``."""
    a, b = _ground_x(xg - width / 2, y, vp), _ground_x(xg + width / 2, y, vp)
    return np.array([[a[0], y[0]], [b[0], y[0]], [b[1], y[1]], [a[1], y[1]]])


def render_driveby(out_dir: Path, class_id: int = STOP, n_frames: int = 90, fps: float = 15.0,
                   size: Tuple[int, int] = (640, 360), seed: int = 0,
                   sticker: Optional[Tuple[np.ndarray, np.ndarray]] = None, name: str = "driveby") -> DriveBy:
    """Write ``<name>.mp4`` (or ``.avi``) and ``<name>.csv`` (tight sign box per frame) into ``out_dir``.

    ``size`` is (width, height); ``sticker`` = (bgr uint8 (S,S,3), alpha
    float (S,S) in [0,1]) in template coordinates, as for ``render_sign``.
    """
    w, h = _check(class_id, n_frames, fps, size, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = w / 640.0
    f = 0.8 * w
    vp = (w * rng.uniform(0.4, 0.5), h * rng.uniform(0.4, 0.47))
    poly = sign_shape(class_id) * TEMPLATE_SIZE
    aspect = float(np.ptp(poly[:, 1]) / np.ptp(poly[:, 0]))
    w0, w1 = max(12.0, 20.0 * k), 150.0 * k
    z0, z1 = f * _SIGN_W / w0, f * _SIGN_W / w1
    # Place the sign so that at its largest it is still inside the frame, right of the road centre.
    x_m = (w - 0.65 * w1 - 10 - vp[0]) * z1 / f * rng.uniform(0.85, 1.0)
    y_m = (vp[1] - 0.6 * w1 * aspect - 8) * z1 / f * rng.uniform(0.75, 1.0)
    road = (x_m - 0.3 - 7.0, x_m - 0.3)
    base = _background(rng, w, h, vp, road)
    dash_phase = rng.uniform(0, 12.0)

    face, tmask = sign_template(class_id, rng)
    rgba0 = face_rgba(face, tmask, float(rng.uniform(0, 0.15)), sticker)
    yaw0 = rng.uniform(-5, 20)  # sign turned toward the road; the car's heading changes a little
    yaw1 = yaw0 + rng.uniform(-8, 8)
    pitch, roll = rng.normal(0, 3), rng.normal(0, 2)
    gain = rng.uniform(0.9, 1.1)
    post_col = (rng.uniform(120, 170) * np.array([1.0, 1.0, 0.95])).tolist()
    bright0, gains = rng.uniform(0.75, 1.15), 1.0 + rng.uniform(-0.05, 0.05, 3)
    contrast, gamma = rng.uniform(0.85, 1.1), rng.uniform(0.85, 1.2)
    blur_max = rng.uniform(4, 9) * k
    sigma = rng.uniform(2, 6)
    noise = [np.round(rng.normal(0, sigma, (h + 16, w + 16, 3))).astype(np.int16) for _ in range(2)]
    shake = np.zeros(3)
    drift = rng.uniform(-12, 12, 2) * np.array([k, k * 0.3])

    writer, video_path = _open_writer(out_dir, name, fps, (w, h))
    rows = [CSV_HEADER]
    try:
        for i in range(n_frames):
            t = i / (n_frames - 1)
            z = z0 + (z1 - z0) * t
            # Camera motion: smooth random shake (dx, dy px, roll deg) plus a slow drift.
            shake = 0.7 * shake + rng.normal(0, [1.2 * k, 0.8 * k, 0.25])
            a = cv2.getRotationMatrix2D((w / 2, h / 2), float(shake[2]), 1.0)
            a[:, 2] += shake[:2] + drift * t
            frame_base = base.copy()
            travelled = (z0 - z) + dash_phase
            for s0 in np.arange(-(travelled % 12.0), 120.0, 12.0):
                za, zb = max(s0 + 1.0, 0.5), s0 + 4.0
                if zb <= za:
                    continue
                ys = vp[1] + f * _CAM_H / np.array([za, zb])
                pts = _strip(road[0] + 3.5, 0.15, ys, vp) + _PAD
                cv2.fillPoly(frame_base, [np.round(pts * 16).astype(np.int32)], (220, 225, 225), cv2.LINE_AA, 4)
            m = a @ np.array([[1, 0, -_PAD], [0, 1, -_PAD], [0, 0, 1.0]])
            frame = cv2.warpAffine(frame_base, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            a3 = np.vstack([a, [0, 0, 1.0]])

            hom = a3 @ plane_homography(rotation(yaw0 + (yaw1 - yaw0) * t, pitch, roll), (x_m, -y_m, z), f, vp,
                                        _SIGN_W)
            span = project(hom, poly)
            # Post: from under the sign down to the ground.
            ground = project(a3, np.array([[vp[0] + f * x_m / z, vp[1] + f * _CAM_H / z]]))[0]
            top = np.array([span[:, 0].mean(), span[:, 1].max() - 2])
            pw = max(1.5, f * 0.06 / z)
            pts = np.array([[top[0] - pw / 2, top[1]], [top[0] + pw / 2, top[1]],
                            [ground[0] + pw / 2, ground[1]], [ground[0] - pw / 2, ground[1]]])
            cv2.fillPoly(frame, [np.round(pts * 16).astype(np.int32)], post_col, cv2.LINE_AA, 4)

            box = _draw_sign(frame, rgba0, hom, span, gain)
            frame = cv2.LUT(frame, lighting_lut(bright0 * (1 + 0.06 * math.sin(6.0 * t + seed)), contrast, gamma,
                                                gains))
            blur = blur_max * max(0.0, (t - 0.5) / 0.5) ** 2
            if blur >= 1.0:
                c = span.mean(0)
                ang = math.degrees(math.atan2(c[1] - vp[1], c[0] - vp[0]))
                frame = cv2.filter2D(frame, -1, motion_kernel(blur, ang), borderType=cv2.BORDER_REFLECT)
            ox, oy = rng.integers(0, 16, 2)
            frame = cv2.add(frame, noise[i % 2][oy:oy + h, ox:ox + w], dtype=cv2.CV_8U)
            writer.write(frame)
            if box is not None:
                x, y, bw, bh = box
                rows.append("%d,%.2f,%.2f,%.2f,%.2f,%d,%s" % (i, x, y, bw, bh, class_id, LISA_CLASSES[class_id]))
    finally:
        writer.release()
    csv_path = out_dir / (name + ".csv")
    atomic_write_text(csv_path, "\n".join(rows) + "\n")
    return DriveBy(video_path, csv_path, int(n_frames), float(fps), (w, h), int(class_id))


def _draw_sign(frame: np.ndarray, rgba0: np.ndarray, hom: np.ndarray, span: np.ndarray, gain: float
               ) -> Optional[Tuple[float, float, float, float]]:
    """Warp the sign into its region of the frame (in place); returns its tight box, or None if off-frame."""
    fh, fw = frame.shape[:2]
    x0, y0 = max(int(math.floor(span[:, 0].min())) - 2, 0), max(int(math.floor(span[:, 1].min())) - 2, 0)
    x1, y1 = min(int(math.ceil(span[:, 0].max())) + 3, fw), min(int(math.ceil(span[:, 1].max())) + 3, fh)
    if x1 <= x0 or y1 <= y0:
        return None
    width = float(np.ptp(span[:, 0]) + np.ptp(span[:, 1])) / 2.0
    rgba, hw = mip(rgba0, hom, width)
    col, alpha = shade(rgba, gain)
    roi_h = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ hw
    size = (x1 - x0, y1 - y0)
    col = cv2.warpPerspective(col, roi_h, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(alpha, roi_h, size, flags=cv2.INTER_LINEAR)
    frame[y0:y1, x0:x1] = over(frame[y0:y1, x0:x1], col, alpha)
    ys, xs = np.nonzero(alpha >= 0.5)
    if len(xs) == 0:
        return None
    return (float(x0 + xs.min()), float(y0 + ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
