"""Full camera frames with 0-N signs and exact boxes: what a sign localizer learns from and is scored on.

Why: the device must find the sign in a 640x360 frame before it can classify
it.  A frame here holds 0-4 signs of any of the 18 LISA classes, 10-250 px
wide, warped in 3-D with the same template geometry, paint, wear, shadow and
glare as :mod:`train.data.render`, on street views (sky, buildings, trees,
road) with distractors that share a sign's colours or shapes, occluders, night,
sun glare, motion blur, sensor noise and JPEG.  A scene is a pure function of
``(seed, index, config)``; :func:`write_scenes` stores a set as image files
plus a COCO-style JSON (one category, ``sign``; the LISA class of every box
kept as ``sign_class``) so that any COCO tool can read it.
numpy + OpenCV only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edge.config import check_range, from_dict, to_dict
from edge.errors import ConfigError
from edge.fileio import PathLike, atomic_write_bytes, atomic_write_text

from . import scene, scene_parts
from .classes import LISA_CLASSES
from .compose import face_rgba, lighting_lut, mip, motion_kernel, over, project, shade, sign_homography
from .signs import TEMPLATE_SIZE, sign_shape, sign_template

COCO_CATEGORY = {"id": 1, "name": "sign", "supercategory": "traffic_sign"}
IMAGE_FORMATS = ("jpg", "png")


@dataclass(frozen=True)
class SceneConfig:
    """What :func:`render_scene` draws (validated on construction; ``from_dict`` for YAML).

    ``max_signs``: signs per frame are 0 with probability ``p_empty``, else
    uniform in 1..max_signs; widths are log-uniform in ``sign_px`` (frame
    pixels).  ``distractors``: count range of non-sign objects
    (:data:`train.data.scene_parts.DISTRACTORS`).  Probabilities of night,
    sun glare, per-sign occluder (covering at most ``max_occlusion`` of the
    sign), motion blur (up to ``max_motion_blur`` px), defocus and JPEG
    (``jpeg_quality`` range); ``max_noise`` is a sensor-noise sigma (0..255).
    """

    width: int = 640
    height: int = 360
    max_signs: int = 4
    p_empty: float = 0.15
    sign_px: Tuple[float, float] = (10.0, 250.0)
    distractors: Tuple[int, int] = (1, 6)
    max_yaw: float = 50.0
    max_pitch: float = 20.0
    max_roll: float = 10.0
    p_post: float = 0.7
    p_occlusion: float = 0.2
    max_occlusion: float = 0.3
    p_shadow: float = 0.2
    p_specular: float = 0.12
    p_night: float = 0.12
    p_glare: float = 0.1
    p_motion_blur: float = 0.2
    max_motion_blur: float = 8.0
    p_defocus: float = 0.15
    max_noise: float = 8.0
    p_jpeg: float = 0.5
    jpeg_quality: Tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name, lo, hi in (("width", 64, 4096), ("height", 64, 4096), ("max_signs", 0, 32)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError("%s: expected an integer in [%d, %d], got %r" % (name, lo, hi, v))
        for name in ("p_empty", "p_post", "p_occlusion", "p_shadow", "p_specular", "p_night", "p_glare",
                     "p_motion_blur", "p_defocus", "p_jpeg"):
            check_range(getattr(self, name), name, 0.0, 1.0)
        for name, hi in (("max_yaw", 75.0), ("max_pitch", 60.0), ("max_roll", 45.0), ("max_occlusion", 0.9),
                         ("max_motion_blur", 64.0), ("max_noise", 64.0)):
            check_range(getattr(self, name), name, 0.0, hi)
        lo, hi = self.sign_px
        if not 4.0 <= lo <= hi <= min(self.width, self.height) * 0.9:
            raise ConfigError("sign_px: expected 4 <= low <= high <= 0.9 * min(width, height), got %r"
                              % (self.sign_px,))
        if not 0 <= self.distractors[0] <= self.distractors[1] <= 64:
            raise ConfigError("distractors: expected 0 <= low <= high <= 64, got %r" % (self.distractors,))
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ConfigError("jpeg_quality: expected 1 <= low <= high <= 100, got %r" % (self.jpeg_quality,))

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "scenes") -> SceneConfig:
        return from_dict(cls, data, where)


@dataclass
class Scene:
    """One frame: ``image`` (H, W, 3) uint8 BGR; per sign a tight ``boxes`` row (x, y, w, h), LISA ``labels``,
    the ``occluded`` fraction; ``tags`` says which nuisances were drawn (night, glare, ...)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    occluded: np.ndarray
    tags: Dict[str, Any] = field(default_factory=dict)


def _place(rng: np.random.Generator, cfg: SceneConfig, placed: List[Tuple[float, float, float, float]]
           ) -> Optional[Tuple[float, float, float]]:
    """(centre x, centre y, width) of a new sign that does not overlap the ones placed; None after 12 tries."""
    lo, hi = cfg.sign_px
    for _ in range(12):
        wpx = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        cx = rng.uniform(0.6 * wpx, cfg.width - 0.6 * wpx)
        cy = rng.uniform(max(0.6 * wpx, 0.05 * cfg.height), cfg.height - 0.6 * wpx)
        box = (cx - 0.6 * wpx, cy - 0.6 * wpx, cx + 0.6 * wpx, cy + 0.6 * wpx)
        if all(box[2] <= p[0] or box[0] >= p[2] or box[3] <= p[1] or box[1] >= p[3] for p in placed):
            placed.append(box)
            return cx, cy, wpx
    return None


def _paste_sign(img: np.ndarray, rng: np.random.Generator, cfg: SceneConfig, class_id: int, cx: float, cy: float,
                wpx: float) -> Optional[Tuple[np.ndarray, Tuple[int, int]]]:
    """Warp one sign into ``img`` (in place); returns its coverage mask in its region and the region origin."""
    fh, fw = img.shape[:2]
    face, tmask = sign_template(class_id, rng)
    rgba = face_rgba(face, tmask, float(rng.uniform(0, 0.3) ** 2))
    yaw = float(np.clip(rng.normal(0, cfg.max_yaw / 2.5), -cfg.max_yaw, cfg.max_yaw))
    pitch = float(np.clip(rng.normal(0, cfg.max_pitch / 2.5), -cfg.max_pitch, cfg.max_pitch))
    roll = float(rng.uniform(-cfg.max_roll, cfg.max_roll))
    hom = sign_homography(yaw, pitch, roll, wpx, (cx, cy), float(rng.uniform(4.0, 14.0)))
    span = project(hom, sign_shape(class_id) * TEMPLATE_SIZE)
    shift = np.maximum(1.0 - span.min(0), 0.0) - np.maximum(span.max(0) - (np.array([fw, fh]) - 2.0), 0.0)
    hom = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1.0]]) @ hom
    span = span + shift
    x0, y0 = max(int(math.floor(span[:, 0].min())) - 2, 0), max(int(math.floor(span[:, 1].min())) - 2, 0)
    x1, y1 = min(int(math.ceil(span[:, 0].max())) + 3, fw), min(int(math.ceil(span[:, 1].max())) + 3, fh)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    width = float(np.ptp(span[:, 0]) + np.ptp(span[:, 1])) / 2.0
    rgba, hw = mip(rgba, hom, width)
    m = rgba.shape[0]
    wear = 1.0 + (scene.value_noise(rng, m, m, 6) - 0.5) * np.float32(rng.uniform(0.0, 0.25))
    shadow = rng.uniform(0.25, 0.6) if rng.random() < cfg.p_shadow else 0.0
    specular = rng.uniform(0.2, 0.6) if rng.random() < cfg.p_specular else 0.0
    col, alpha = shade(rgba, float(rng.uniform(0.85, 1.1)), wear, shadow, rng.uniform(0, 360), rng.uniform(-0.3, 0.3),
                       specular, tuple(rng.uniform(0.2, 0.8, 2)), rng.uniform(0.1, 0.35))
    roi_h = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ hw
    col = cv2.warpPerspective(col, roi_h, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(alpha, roi_h, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    img[y0:y1, x0:x1] = over(img[y0:y1, x0:x1], col, alpha)
    return alpha, (x0, y0)


def _occlude(img: np.ndarray, rng: np.random.Generator, alpha: np.ndarray, origin: Tuple[int, int],
             max_fraction: float) -> float:
    """Draw an occluder over one sign, working in a square crop around it (what :func:`scene.occlude` expects)."""
    fh, fw = img.shape[:2]
    ah, aw = alpha.shape
    side = int(max(ah, aw) * 2)
    cx, cy = origin[0] + aw // 2, origin[1] + ah // 2
    x0, y0 = max(cx - side // 2, 0), max(cy - side // 2, 0)
    x1, y1 = min(x0 + side, fw), min(y0 + side, fh)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    ox, oy = origin[0] - x0, origin[1] - y0
    mask[oy:oy + ah, ox:ox + aw] = alpha > 0.5
    return scene.occlude(img[y0:y1, x0:x1], rng, mask, max_fraction)


def _camera(img: np.ndarray, rng: np.random.Generator, cfg: SceneConfig, night: bool, tags: Dict[str, Any]
            ) -> np.ndarray:
    """Global lighting, blur, noise and compression of the whole frame."""
    bright = math.exp(rng.uniform(math.log(0.55), math.log(1.3)))
    gains = tuple(1.0 + rng.uniform(-0.07, 0.07, 3))
    img = cv2.LUT(img, lighting_lut(bright, rng.uniform(0.75, 1.3), math.exp(rng.uniform(-0.35, 0.35)), gains))
    if rng.random() < cfg.p_motion_blur:
        length = float(rng.uniform(1.5, max(cfg.max_motion_blur, 1.5)))
        img = cv2.filter2D(img, -1, motion_kernel(length, rng.uniform(0, 180)), borderType=cv2.BORDER_REFLECT)
        tags["motion_blur"] = round(length, 2)
    if rng.random() < cfg.p_defocus:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5)), borderType=cv2.BORDER_REFLECT)
        tags["defocus"] = True
    sigma = rng.uniform(0.0, cfg.max_noise) * (1.5 if night else 1.0)
    if sigma > 0:
        img = cv2.add(img, rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma), dtype=cv2.CV_8U)
    if rng.random() < cfg.p_jpeg:
        q0, q1 = cfg.jpeg_quality
        q = int(rng.integers(q0, q1 + 1))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            tags["jpeg"] = q
    return img


def scene_rngs(seed: int, index: int) -> Tuple[np.random.Generator, ...]:
    """Independent generators of scene ``index`` of set ``seed``: background, signs, camera.

    Separate streams so that the background and the camera of a scene do
    not depend on how many signs it holds (a sign-free twin of a scene has
    the same street and lighting).
    """
    ss = np.random.SeedSequence([int(seed), int(index), 0x5CE4E])
    return tuple(np.random.default_rng(s) for s in ss.spawn(3))


def render_scene(seed: int, index: int = 0, cfg: SceneConfig = SceneConfig()) -> Scene:
    """Render scene ``index`` of the set seeded ``seed``; the same arguments give the same bytes."""
    rng, sign_rng, cam_rng = scene_rngs(seed, index)
    w, h = cfg.width, cfg.height
    img, horizon = scene_parts.background(rng, w, h)
    night = cam_rng.random() < cfg.p_night
    tags: Dict[str, Any] = {"night": bool(night)}
    lo_d, hi_d = cfg.distractors
    for _ in range(int(rng.integers(lo_d, hi_d + 1))):
        scene_parts.draw_distractor(img, rng, max(6.0, cfg.sign_px[0]), min(cfg.sign_px[1] * 1.3, 0.9 * h))
    if night:
        img = cv2.convertScaleAbs(img, alpha=float(cam_rng.uniform(0.15, 0.4)))
    rng = sign_rng
    n = 0 if rng.random() < cfg.p_empty or cfg.max_signs == 0 else int(rng.integers(1, cfg.max_signs + 1))
    placed: List[Tuple[float, float, float, float]] = []
    boxes, labels, occluded = [], [], []
    for _ in range(n):
        where = _place(rng, cfg, placed)
        if where is None:
            break
        cx, cy, wpx = where
        class_id = int(rng.integers(len(LISA_CLASSES)))
        if rng.random() < cfg.p_post:
            scene.draw_post(img, rng, cx, cy + 0.3 * wpx, max(1.5, wpx * rng.uniform(0.05, 0.09)))
        pasted = _paste_sign(img, rng, cfg, class_id, cx, cy, wpx)
        if pasted is None:
            continue
        alpha, (x0, y0) = pasted
        ys, xs = np.nonzero(alpha >= 0.5)
        if len(xs) == 0:
            continue
        frac = _occlude(img, rng, alpha, (x0, y0), cfg.max_occlusion) if rng.random() < cfg.p_occlusion else 0.0
        boxes.append((x0 + xs.min(), y0 + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
        labels.append(class_id)
        occluded.append(frac)
    if night:
        scene_parts.night_lights(img, cam_rng, horizon)
    if cam_rng.random() < cfg.p_glare:
        scene_parts.glare(img, cam_rng)
        tags["glare"] = True
    img = _camera(img, cam_rng, cfg, night, tags)
    return Scene(img, np.array(boxes, np.float64).reshape(-1, 4), np.array(labels, np.int64),
                 np.array(occluded, np.float64), tags)


def write_scenes(out_dir: PathLike, n: int, seed: int = 0, cfg: SceneConfig = SceneConfig(),
                 image_format: str = "jpg", jpeg_quality: int = 95, progress: bool = False) -> Path:
    """Render scenes ``0..n-1`` of set ``seed`` into ``out_dir/images/`` plus ``out_dir/annotations.json`` (COCO).

    COCO fields: ``images`` (id, file_name, width, height, and the scene's
    tags), ``annotations`` (id, image_id, category_id 1, bbox [x, y, w, h],
    area, iscrowd 0, plus ``sign_class``/``sign_class_id``/``occluded``),
    ``categories`` ([sign]), ``info`` (the config and seed that regenerate
    the set).  Images are written with the shared atomic writer; returns the
    JSON path.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("scenes.n: expected a positive integer, got %r" % (n,))
    if image_format not in IMAGE_FORMATS:
        raise ConfigError("scenes.image_format: expected one of %s, got %r" % (IMAGE_FORMATS, image_format))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if image_format == "jpg" else []
    from train.progress import progress as bar

    for i in bar(range(n), desc="scenes", enabled=progress, leave=False):
        s = render_scene(seed, i, cfg)
        name = "images/%06d.%s" % (i, image_format)
        ok, buf = cv2.imencode("." + image_format, s.image, params)
        if not ok:
            raise ConfigError("scenes: OpenCV cannot encode %s" % image_format)
        atomic_write_bytes(out / name, buf.tobytes())
        images.append({"id": i + 1, "file_name": name, "width": cfg.width, "height": cfg.height, **s.tags})
        for box, label, occ in zip(s.boxes, s.labels, s.occluded):
            x, y, bw, bh = (round(float(v), 2) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, bw, bh],
                         "area": round(bw * bh, 2), "iscrowd": 0, "sign_class": LISA_CLASSES[int(label)],
                         "sign_class_id": int(label), "occluded": round(float(occ), 4)})
    coco = {"info": {"description": "signguard rendered scenes", "seed": int(seed), "n": int(n),
                     "config": cfg.to_dict()},
            "images": images, "annotations": anns, "categories": [COCO_CATEGORY]}
    path = out / "annotations.json"
    atomic_write_text(path, json.dumps(coco, separators=(",", ":")))
    return path
