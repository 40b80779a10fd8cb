"""Views of a sign for sticker attacks: rendered poses, the sign-to-input warp, and a differentiable composite.

Why: RP2 (Eykholt et al. 2018; BlurNet Eq. 1) optimises one perturbation in
*sign* coordinates over many views of the sign -- expectation over
transformations (pose, distance, lighting).  For each view we keep the clean
model input ``x_i`` and, for every input pixel, where it lands on the sign
template (a ``grid_sample`` grid built from the renderer's exact
homography), plus a per-view colour gain fitted from the face to the view
(the lighting).  :func:`apply_perturbation` is then ``T_i(M . delta)``:
warp, light, add, clip.  Held-out evaluation does not use this
approximation: it re-renders each pose with the sticker painted on the
sign (:func:`render_with_sticker`), so blur, noise and JPEG act on the
sticker as they would on a printed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from edge.errors import SignguardError
from edge.preprocess import PreprocessConfig, input_transform, preprocess

from ..data.render import Pose, RenderConfig, render_pose, sample_pose
from ..data.signs import TEMPLATE_SIZE, sign_template

# The classic RP2 stop-sign layout: two bars, above and below the legend (template units: x0, y0, x1, y1).
_BARS = ((0.22, 0.23, 0.78, 0.34), (0.22, 0.66, 0.78, 0.77))
MASKS = ("bars", "sign")


def attack_render_config(**overrides) -> RenderConfig:
    """Poses a roadside camera sees a sign from: the default nuisances without occluders over the sticker."""
    base = dict(p_occlusion=0.0, min_side=32, max_side=96, max_yaw=35.0, max_pitch=25.0, p_night=0.0)
    base.update(overrides)
    return RenderConfig(**base)


def sticker_region(mask: str | Path, class_id: int, res: int) -> np.ndarray:
    """(res, res) float32 {0, 1} sticker region in template coordinates, clipped to the sign.

    ``bars``: RP2's two-bar layout; ``sign``: the whole face (a full overlay);
    a path: a grayscale PNG of any size, white = sticker.
    """
    _, tmask = sign_template(class_id)
    if str(mask) == "bars":
        m = np.zeros((TEMPLATE_SIZE, TEMPLATE_SIZE), np.uint8)
        for x0, y0, x1, y1 in _BARS:
            m[int(y0 * TEMPLATE_SIZE):int(y1 * TEMPLATE_SIZE), int(x0 * TEMPLATE_SIZE):int(x1 * TEMPLATE_SIZE)] = 255
    elif str(mask) == "sign":
        m = tmask.copy()
    else:
        m = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise SignguardError(f"sticker mask {mask}: not a readable image (expected {MASKS} or a PNG path)")
        m = cv2.resize(m, (TEMPLATE_SIZE, TEMPLATE_SIZE), interpolation=cv2.INTER_NEAREST)
    m = np.where((m >= 128) & (tmask > 0), 1.0, 0.0).astype(np.float32)
    out = (cv2.resize(m, (res, res), interpolation=cv2.INTER_AREA) >= 0.5).astype(np.float32)
    if out.sum() == 0:
        raise SignguardError(f"sticker mask {mask}: no pixel on the sign at {res}x{res}")
    return out


def template_face(class_id: int, res: int) -> np.ndarray:
    """Canonical face of a class as (3, res, res) float32 RGB in [0, 1] (area-averaged)."""
    face, _ = sign_template(class_id)
    small = cv2.resize(face, (res, res), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[:, :, ::-1].transpose(2, 0, 1)).astype(np.float32) / 255.0


@dataclass
class SignViews:
    """Clean model inputs of one sign under many poses, with their template sampling grids and gains."""

    class_id: int
    x: torch.Tensor  # (V, 3, S, S) clean inputs, RGB in [0, 1]
    grid: torch.Tensor  # (V, S, S, 2) template coordinates of each input pixel, grid_sample convention
    gain: torch.Tensor  # (V, 3, 1, 1) per-view, per-channel lighting gain from template colour to input
    poses: list[Pose]
    render_cfg: RenderConfig
    preprocess_cfg: PreprocessConfig

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: torch.Tensor) -> SignViews:
        """The views at ``idx`` (a 1-D index tensor), e.g. a random few of a rendered pool."""
        keep = [int(i) for i in idx]
        return SignViews(self.class_id, self.x[idx], self.grid[idx], self.gain[idx], [self.poses[i] for i in keep],
                         self.render_cfg, self.preprocess_cfg)


def _grid(h_tmpl_to_input: np.ndarray, size: int) -> np.ndarray:
    inv = np.linalg.inv(h_tmpl_to_input)
    u, v = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    pts = np.stack([u.ravel(), v.ravel(), np.ones(size * size)])
    t = inv @ pts
    t = (t[:2] / t[2]).T.reshape(size, size, 2)
    return ((t + 0.5) / TEMPLATE_SIZE * 2.0 - 1.0).astype(np.float32)  # align_corners=False convention


def render_views(class_id: int, n: int, seed: int, render_cfg: RenderConfig | None = None,
                 preprocess_cfg: PreprocessConfig | None = None) -> SignViews:
    """Render ``n`` poses of ``class_id`` drawn with ``seed`` (different seeds = held-out poses)."""
    if n < 1:
        raise SignguardError(f"views: n must be >= 1, got {n}")
    rc = render_cfg or attack_render_config()
    pp = preprocess_cfg or PreprocessConfig()
    rng = np.random.default_rng(seed)
    poses = [sample_pose(rng, rc) for _ in range(n)]
    xs, grids = [], []
    for pose in poses:
        r = render_pose(class_id, None, pose, rc)
        xs.append(preprocess(r.image, r.box, pp))
        grids.append(_grid(input_transform(r.box, r.image.shape, pp) @ r.homography, pp.input_size))
    x = torch.from_numpy(np.stack(xs))
    grid = torch.from_numpy(np.stack(grids))
    return SignViews(class_id, x, grid, _fit_gain(class_id, x, grid), poses, rc, pp)


def _fit_gain(class_id: int, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of view colour on template colour over the sign pixels, per view and channel."""
    face = torch.from_numpy(template_face(class_id, 64))[None].expand(len(x), -1, -1, -1)
    _, tmask = sign_template(class_id)
    m = torch.from_numpy(cv2.resize(tmask, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
    f = F.grid_sample(face, grid, mode="bilinear", padding_mode="border", align_corners=False)
    a = F.grid_sample(m[None, None].expand(len(x), -1, -1, -1), grid, align_corners=False) > 0.95
    w = a.float()
    cnt = w.sum(dim=(2, 3)).clamp_min(1.0)
    fm = (f * w).sum(dim=(2, 3)) / cnt
    xm = (x * w).sum(dim=(2, 3)) / cnt
    cov = ((f - fm[..., None, None]) * (x - xm[..., None, None]) * w).sum(dim=(2, 3))
    var = (((f - fm[..., None, None]) ** 2) * w).sum(dim=(2, 3)).clamp_min(1e-6)
    return (cov / var).clamp(0.2, 3.0)[..., None, None]


def apply_perturbation(views: SignViews, delta: torch.Tensor, region: torch.Tensor,
                       idx: torch.Tensor | None = None) -> torch.Tensor:
    """x_i + T_i(M . delta) for every (perturbation, view) pair, clipped to [0, 1].

    ``delta`` (K, 3, R, R) in template colour units, ``region`` (R, R) the
    mask M; returns (K, V, 3, S, S).  Bilinear warping gives soft sticker
    edges, as a camera sees them.
    """
    x, grid, gain = views.x, views.grid, views.gain
    if idx is not None:
        x, grid, gain = x[idx], grid[idx], gain[idx]
    k, v = delta.shape[0], x.shape[0]
    src = (delta * region)[:, None].expand(k, v, -1, -1, -1).reshape(k * v, 3, *delta.shape[-2:])
    g = grid[None].expand(k, -1, -1, -1, -1).reshape(k * v, *grid.shape[1:])
    d = F.grid_sample(src, g, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (x[None] + gain[None] * d.reshape(k, v, 3, *x.shape[-2:])).clamp(0.0, 1.0)


def render_with_sticker(views: SignViews, sticker_rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Re-render every pose of ``views`` with a sticker painted on the sign; returns model inputs (V, 3, S, S).

    ``sticker_rgb`` (3, R, R) in [0, 1] and ``region`` (R, R) in template
    coordinates; both are upsampled (nearest) to the renderer's template.
    """
    t = TEMPLATE_SIZE
    bgr = cv2.resize(np.ascontiguousarray(sticker_rgb[::-1].transpose(1, 2, 0)), (t, t),
                     interpolation=cv2.INTER_NEAREST)
    alpha = cv2.resize(region.astype(np.float32), (t, t), interpolation=cv2.INTER_NEAREST)
    sticker = (np.clip(np.rint(bgr * 255.0), 0, 255).astype(np.uint8), alpha)
    out = []
    for pose in views.poses:
        r = render_pose(views.class_id, None, pose, views.render_cfg, sticker)
        out.append(preprocess(r.image, r.box, views.preprocess_cfg))
    return np.stack(out)
