"""Render one sign sample: a seeded scene crop with the exact sign mask and homography.

Why: the embedded default dataset (no download) and the EOT sticker attacks
both need signs seen under many nuisances -- perspective, scale, lighting,
blur, noise, occlusion, JPEG -- *and* the exact map from sign (template)
coordinates to image pixels.  :func:`render_sign` samples a :class:`Pose`
and calls :func:`render_pose`, which is deterministic given the pose, so an
attack can re-render a fixed set of poses with different stickers.

Pipeline (template -> scene -> camera): paint fading -> sticker -> wear,
shadow, glare (sign coordinates) -> warp at 2x supersampling, INTER_AREA
down to the native resolution (premultiplied, so edges are anti-aliased) ->
over a background with post and distractor -> occluder -> global lighting
(gamma, contrast, brightness, white balance) -> motion/defocus blur ->
sensor noise -> JPEG.
numpy + OpenCV only; every random draw comes from the generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from edge.config import from_dict
from edge.errors import ConfigError, SignguardError

from . import scene
from .compose import (
    face_rgba,
    fit_inside,
    lighting_lut,
    mip,
    motion_kernel,
    over,
    project,
    scale_px,
    shade,
    sign_homography,
)
from .signs import TEMPLATE_SIZE, sign_shape, sign_template

Sticker = Tuple[np.ndarray, np.ndarray]
__all__ = ["Pose", "RenderConfig", "RenderedSign", "render_pose", "render_sign", "sample_pose", "sign_homography"]

_RANGES = ("sign_fraction", "brightness", "contrast", "gamma", "jpeg_quality")
_PROBS = ("p_night", "p_shadow", "p_specular", "p_motion_blur", "p_defocus", "p_jpeg", "p_occlusion", "p_post",
          "p_distractor")


@dataclass(frozen=True)
class RenderConfig:
    """Ranges of the nuisances :func:`sample_pose` draws from (validated on construction).

    Geometry: ``min_side``/``max_side`` -- native side of the square scene
    crop in pixels, drawn log-uniformly (small = far away / low resolution);
    ``sign_fraction`` -- frontal sign width as a fraction of that side;
    ``center_jitter`` -- sign centre offset (fraction of the side);
    ``max_yaw``/``max_pitch`` (degrees, drawn from a clipped normal so most
    views are near-frontal), ``max_roll`` (degrees, uniform).
    Photometry: ``brightness``/``gamma`` (log-uniform ranges), ``contrast``
    (uniform range), ``color_cast`` (max per-channel white-balance error),
    ``p_night`` (dark scene, retro-reflective bright sign), ``p_shadow``
    (soft shadow edge across the sign), ``p_specular`` (glare spot),
    ``max_fade`` (paint fading toward pale).
    Camera: ``p_motion_blur``/``max_motion_blur`` and ``p_defocus``/
    ``max_defocus`` (blur length / sigma as a fraction of the sign width),
    ``max_noise`` (sensor noise sigma in 0..255 units), ``p_jpeg`` with
    ``jpeg_quality`` range.
    Clutter: ``p_occlusion``/``max_occlusion`` (fraction of sign pixels an
    occluder may cover), ``p_post`` (a post below the sign),
    ``p_distractor`` (a partial sign-like shape in the background).
    ``appearance_jitter``: vary the sign face (variant, paint, wear).
    """

    min_side: int = 20
    max_side: int = 100
    sign_fraction: Tuple[float, float] = (0.55, 0.75)
    center_jitter: float = 0.06
    max_yaw: float = 40.0
    max_pitch: float = 40.0
    max_roll: float = 10.0
    brightness: Tuple[float, float] = (0.4, 1.3)
    contrast: Tuple[float, float] = (0.7, 1.4)
    gamma: Tuple[float, float] = (0.65, 1.5)
    color_cast: float = 0.07
    p_night: float = 0.06
    p_shadow: float = 0.25
    p_specular: float = 0.12
    max_fade: float = 0.35
    p_motion_blur: float = 0.25
    max_motion_blur: float = 0.08
    p_defocus: float = 0.3
    max_defocus: float = 0.03
    max_noise: float = 8.0
    p_jpeg: float = 0.4
    jpeg_quality: Tuple[int, int] = (35, 95)
    p_occlusion: float = 0.2
    max_occlusion: float = 0.25
    p_post: float = 0.5
    p_distractor: float = 0.25
    appearance_jitter: bool = True

    def __post_init__(self) -> None:
        # from_dict has checked the types; these checks also cover direct construction (RenderConfig(**kw),
        # RenderConfig.clean(...)), so they still refuse non-numbers and bools where numbers are expected.
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError("%s: expected %s, got %r" % (name, expected, getattr(self, name)))

        for name in ("min_side", "max_side"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 8 <= v <= 4096:
                raise bad(name, "an integer in [8, 4096]")
        if self.max_side < self.min_side:
            raise bad("max_side", ">= min_side (%d)" % self.min_side)
        for name in _RANGES:
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(_is_num(x) for x in v) or v[0] > v[1]:
                raise bad(name, "a pair (low, high) of numbers with low <= high")
            object.__setattr__(self, name, (v[0], v[1]))
        lo_hi = {"sign_fraction": (0.05, 0.95), "brightness": (0.01, 10.0), "contrast": (0.0, 10.0),
                 "gamma": (0.05, 10.0), "jpeg_quality": (1, 100)}
        for name, (lo, hi) in lo_hi.items():
            v = getattr(self, name)
            if not (lo <= v[0] and v[1] <= hi):
                raise bad(name, "values in [%g, %g]" % (lo, hi))
        for name in _PROBS:
            if not _is_num(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "a probability in [0, 1]")
        limits = {"center_jitter": 0.4, "max_yaw": 75.0, "max_pitch": 75.0, "max_roll": 180.0, "color_cast": 0.9,
                  "max_fade": 1.0, "max_motion_blur": 1.0, "max_defocus": 0.5, "max_noise": 128.0,
                  "max_occlusion": 0.9}
        for name, hi in limits.items():
            if not _is_num(getattr(self, name)) or not 0.0 <= getattr(self, name) <= hi:
                raise bad(name, "a number in [0, %g]" % hi)
        if not isinstance(self.appearance_jitter, bool):
            raise bad("appearance_jitter", "true or false")

    @classmethod
    def clean(cls, **overrides: Any) -> RenderConfig:
        """Frontal, evenly lit, sharp, unoccluded signs on textured backgrounds (tests, attack targets)."""
        base: Dict[str, Any] = dict(
            center_jitter=0.0, max_yaw=0.0, max_pitch=0.0, max_roll=0.0, brightness=(1.0, 1.0),
            contrast=(1.0, 1.0), gamma=(1.0, 1.0), color_cast=0.0, max_fade=0.0, max_noise=0.0,
            appearance_jitter=False, **{p: 0.0 for p in _PROBS})
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "render") -> RenderConfig:
        """Build from a mapping (YAML/JSON, lists for the ranges); errors name ``where.field``."""
        return from_dict(cls, data, where)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Pose:
    """Every parameter of one rendering; ``seed`` drives the textures (background, face variant, occluder, noise).

    Angles in degrees; ``side`` is the native scene side in pixels; ``scale``
    the frontal sign width as a fraction of it; ``cx``/``cy`` the sign centre
    as fractions; ``distance`` the camera distance in sign widths (smaller =
    stronger perspective).  Blur lengths/sigmas are fractions of the sign
    width; ``noise`` is a sigma in 0..255 units; ``jpeg_quality`` 0 = none;
    ``occlusion`` the largest fraction of the sign an occluder may cover
    (0 = none); ``sign_gain`` the sign's brightness relative to its scene
    (> 1: a retro-reflective sign at night, rendered by darkening the scene).
    The default is a clean frontal sign.
    """

    side: int = 64
    scale: float = 0.65
    cx: float = 0.5
    cy: float = 0.5
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    distance: float = 6.0
    brightness: float = 1.0
    contrast: float = 1.0
    gamma: float = 1.0
    gains: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    sign_gain: float = 1.0
    shadow: float = 0.0
    shadow_angle: float = 0.0
    shadow_offset: float = 0.0
    specular: float = 0.0
    specular_xy: Tuple[float, float] = (0.5, 0.5)
    specular_radius: float = 0.25
    fade: float = 0.0
    motion_blur: float = 0.0
    motion_angle: float = 0.0
    defocus: float = 0.0
    noise: float = 0.0
    jpeg_quality: int = 0
    occlusion: float = 0.0
    post: bool = False
    distractor: bool = False
    seed: int = 0


@dataclass
class RenderedSign:
    """One rendered sample; ``mask``, ``homography`` and ``box`` refer to ``image`` pixels."""

    image: np.ndarray  # (H, W, 3) uint8 BGR scene crop
    label: int
    mask: np.ndarray  # (H, W) uint8 {0, 255}: exact sign pixels (before occluders)
    homography: np.ndarray  # (3, 3) float64: template pixel (x, y) -> image pixel (x, y)
    box: Tuple[float, float, float, float]  # tight (x, y, w, h) of the mask
    pose: Optional[Pose] = None  # what produced it: render_pose(label, None, pose, cfg) re-renders it


def sample_pose(rng: np.random.Generator, cfg: RenderConfig = RenderConfig()) -> Pose:
    """Draw a :class:`Pose` from the ranges of ``cfg`` (one vector of uniforms: rng calls are slow)."""
    u = iter(rng.random(48).tolist())
    z = rng.standard_normal(2).tolist()

    def uni(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(u)

    def logu(lo: float, hi: float) -> float:
        return float(math.exp(uni(math.log(lo), math.log(hi))))

    def maybe(p: float) -> bool:
        return next(u) < p

    night = maybe(cfg.p_night)
    cj = cfg.center_jitter
    shadow, specular = maybe(cfg.p_shadow), maybe(cfg.p_specular)
    blur, defocus = maybe(cfg.p_motion_blur), maybe(cfg.p_defocus)
    jpeg, occl = maybe(cfg.p_jpeg), maybe(cfg.p_occlusion)
    q0, q1 = cfg.jpeg_quality
    return Pose(
        side=int(round(logu(cfg.min_side, cfg.max_side))),
        scale=uni(*cfg.sign_fraction),
        cx=0.5 + uni(-cj, cj),
        cy=0.5 + uni(-cj, cj),
        yaw=float(np.clip(z[0] * cfg.max_yaw / 2.0, -cfg.max_yaw, cfg.max_yaw)),
        pitch=float(np.clip(z[1] * cfg.max_pitch / 2.5, -cfg.max_pitch, cfg.max_pitch)),
        roll=uni(-cfg.max_roll, cfg.max_roll),
        distance=uni(3.0, 12.0),
        brightness=logu(*cfg.brightness) * (0.7 if night else 1.0),
        contrast=uni(*cfg.contrast),
        gamma=logu(*cfg.gamma),
        gains=tuple(1.0 + uni(-cfg.color_cast, cfg.color_cast) for _ in range(3)),
        sign_gain=uni(1.6, 2.8) if night else uni(0.85, 1.15),
        shadow=uni(0.25, 0.6) if shadow else 0.0,
        shadow_angle=uni(0.0, 360.0),
        shadow_offset=uni(-0.3, 0.3),
        specular=uni(0.2, 0.6) if specular else 0.0,
        specular_xy=(uni(0.2, 0.8), uni(0.2, 0.8)),
        specular_radius=uni(0.1, 0.35),
        fade=cfg.max_fade * next(u) ** 2,
        motion_blur=uni(0.01, max(cfg.max_motion_blur, 0.01)) if blur else 0.0,
        motion_angle=uni(0.0, 180.0),
        defocus=uni(0.005, max(cfg.max_defocus, 0.005)) if defocus else 0.0,
        noise=uni(0.0, cfg.max_noise),
        jpeg_quality=min(q1, int(q0 + (q1 - q0 + 1) * math.sqrt(next(u)))) if jpeg else 0,  # skewed to mild
        occlusion=uni(0.03, max(cfg.max_occlusion, 0.03)) if occl else 0.0,
        post=maybe(cfg.p_post),
        distractor=maybe(cfg.p_distractor),
        seed=int(next(u) * (2**31 - 1)),
    )


def _check_pose(pose: Pose) -> None:
    if not isinstance(pose, Pose):
        raise SignguardError("pose: expected a Pose, got %s" % type(pose).__name__)
    checks = (("side", pose.side >= 8, ">= 8 pixels"), ("scale", 0.0 < pose.scale <= 1.0, "in (0, 1]"),
              ("distance", pose.distance >= 1.5, ">= 1.5 sign widths"),
              ("jpeg_quality", 0 <= pose.jpeg_quality <= 100, "in [0, 100]"))
    for name, ok, expected in checks:
        if not ok:
            raise SignguardError("pose.%s: expected %s, got %r" % (name, expected, getattr(pose, name)))


def render_pose(class_id: int, rng: np.random.Generator | None, pose: Pose, cfg: RenderConfig = RenderConfig(),
                sticker: Sticker | None = None) -> RenderedSign:
    """Render ``class_id`` under an explicit ``pose``; the same pose gives the same bytes.

    ``rng=None`` draws the textures from ``default_rng(pose.seed)`` (what
    :func:`render_sign` does, so ``RenderedSign.pose`` reproduces a sample);
    a generator draws them from that generator instead.  Either way the
    draws do not depend on ``sticker``, so two renderings that differ only in
    the sticker differ only where the sticker is (plus blur/JPEG spread).
    ``sticker`` = (bgr uint8 (S,S,3), alpha float (S,S) in [0,1]) in template
    coordinates, clipped to the sign mask.
    """
    _check_pose(pose)
    nuis = rng if rng is not None else np.random.default_rng(pose.seed)
    side = int(pose.side)
    face, tmask = sign_template(class_id, nuis if cfg.appearance_jitter else None)
    rgba = face_rgba(face, tmask, pose.fade, sticker)

    # Geometry at 2x supersampling; h_out maps template pixels to native pixels.
    hs = 2 * side
    poly = sign_shape(class_id) * TEMPLATE_SIZE
    h_hi = sign_homography(pose.yaw, pose.pitch, pose.roll, pose.scale * hs, (pose.cx * hs, pose.cy * hs),
                           pose.distance)
    h_hi = fit_inside(h_hi, poly, hs)
    h_out = scale_px(0.5) @ h_hi
    span = project(h_out, poly)
    width = float(np.ptp(span[:, 0]) + np.ptp(span[:, 1])) / 2.0  # sign size in native pixels
    rgba, h_warp = mip(rgba, h_hi, 2.0 * width)
    wear = None
    if cfg.appearance_jitter:
        m = rgba.shape[0]
        wear = 1.0 + (scene.value_noise(nuis, m, m, 6) - 0.5) * np.float32(nuis.uniform(0.0, 0.25))
    col, alpha = shade(rgba, min(pose.sign_gain, 1.0), wear, pose.shadow, pose.shadow_angle, pose.shadow_offset,
                       pose.specular, pose.specular_xy, pose.specular_radius)
    col = cv2.resize(cv2.warpPerspective(col, h_warp, (hs, hs)), (side, side), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(cv2.warpPerspective(alpha, h_warp, (hs, hs)), (side, side), interpolation=cv2.INTER_AREA)

    # Scene at native resolution: background, post, distractor, sign, occluder.
    bg = scene.background(nuis, side)
    if pose.distractor:
        scene.draw_distractor(bg, nuis)
    if pose.post:
        scene.draw_post(bg, nuis, float(span[:, 0].mean()), float(span[:, 1].max()) - 0.2 * width,
                        width * nuis.uniform(0.05, 0.1))
    if pose.sign_gain > 1.0:  # a retro-reflective sign brighter than its scene: darken the scene
        bg = cv2.convertScaleAbs(bg, alpha=1.0 / pose.sign_gain)
    img = over(bg, col, alpha)
    if pose.occlusion > 0:
        scene.occlude(img, nuis, alpha > 0.5, pose.occlusion)

    # Camera: lighting, blur, noise, compression.
    img = cv2.LUT(img, lighting_lut(pose.brightness, pose.contrast, pose.gamma, pose.gains))
    if pose.motion_blur * width >= 1.0:
        img = cv2.filter2D(img, -1, motion_kernel(pose.motion_blur * width, pose.motion_angle),
                           borderType=cv2.BORDER_REFLECT)
    if pose.defocus * width >= 0.3:
        img = cv2.GaussianBlur(img, (0, 0), pose.defocus * width, borderType=cv2.BORDER_REFLECT)
    if pose.noise > 0:
        n = nuis.standard_normal((side, side, 3), dtype=np.float32) * np.float32(pose.noise)
        img = cv2.add(img, n, dtype=cv2.CV_8U)
    if pose.jpeg_quality > 0:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(pose.jpeg_quality)])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)

    mask = cv2.warpPerspective(tmask, h_out, (side, side), flags=cv2.INTER_LINEAR)
    mask = np.where(mask >= 128, np.uint8(255), np.uint8(0))
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise SignguardError("render: sign of class %d has no pixel in a %d px scene" % (class_id, side))
    box = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
    return RenderedSign(img, int(class_id), mask, h_out, box, pose)


def render_sign(class_id: int, rng: np.random.Generator, cfg: RenderConfig = RenderConfig(),
                sticker: Sticker | None = None) -> RenderedSign:
    """Sample a pose from ``cfg`` with ``rng`` and render it (see :func:`render_pose`)."""
    if not isinstance(rng, np.random.Generator):
        raise SignguardError("render_sign: rng must be a numpy Generator (np.random.default_rng(seed))")
    return render_pose(class_id, None, sample_pose(rng, cfg), cfg, sticker)
