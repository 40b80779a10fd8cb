"""The procedural sign renderer: determinism, exact masks/homographies, local stickers, config errors.

Why these: the synthetic dataset is cached by seed (so the same seed must
give the same bytes), sticker attacks trust the mask and homography to place
perturbations on the sign (so they must be exact), and an attack re-renders
fixed poses with different stickers (so a sticker must change nothing
outside itself).
"""

from __future__ import annotations

import dataclasses
import time

import cv2
import numpy as np
import pytest

from edge.errors import ConfigError, SignguardError
from edge.preprocess import PreprocessConfig, crop_rect, preprocess
from train.data.classes import LISA_CLASSES, LISA_INDEX, STOP
from train.data.contact_sheet import write_contact_sheet
from train.data.render import Pose, RenderConfig, RenderedSign, render_pose, render_sign, sample_pose
from train.data.signs import TEMPLATE_SIZE, sign_shape, sign_template

S = TEMPLATE_SIZE
N_CLASSES = len(LISA_CLASSES)


def _rng(*seed: int) -> np.random.Generator:
    return np.random.default_rng(list(seed))


def _same(a: RenderedSign, b: RenderedSign) -> bool:
    return (a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
            and np.array_equal(a.homography, b.homography) and a.box == b.box and a.label == b.label)


def _boundary(mask: np.ndarray, r: int = 1) -> np.ndarray:
    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return cv2.dilate(mask, k) != cv2.erode(mask, k)


@pytest.mark.parametrize("class_id", range(N_CLASSES))
def test_templates_are_binary_masks_and_vary_only_in_paint(class_id: int) -> None:
    face, mask = sign_template(class_id)
    assert face.shape == (S, S, 3) and face.dtype == np.uint8
    assert mask.shape == (S, S) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    assert 0.35 < np.count_nonzero(mask) / mask.size < 0.99
    f2, m2 = sign_template(class_id)
    assert np.array_equal(face, f2) and np.array_equal(mask, m2)  # canonical face is deterministic
    faces = [sign_template(class_id, _rng(class_id, i)) for i in range(6)]
    assert all(np.array_equal(m, mask) for _, m in faces)  # the shape never changes
    assert any(not np.array_equal(f, face) for f, _ in faces)  # the paint does


def test_template_colours_follow_mutcd() -> None:
    """BGR contract: stop is red, warning diamonds yellow, speed limits white (tested, not assumed)."""
    def mean_bgr(name: str) -> np.ndarray:
        face, mask = sign_template(LISA_INDEX[name])
        return face[mask > 0].astype(float).mean(0)

    b, g, r = mean_bgr("stop")
    assert r > g + 80 and r > b + 80
    b, g, r = mean_bgr("merge")
    assert r > 150 and g > 110 and b < 90
    b, g, r = mean_bgr("speedLimit30")
    assert min(b, g, r) > 150


@pytest.mark.parametrize("class_id", range(N_CLASSES))
def test_every_class_renders(class_id: int) -> None:
    cfg = RenderConfig()
    for i in range(3):
        s = render_sign(class_id, _rng(5, class_id, i), cfg)
        h, w = s.image.shape[:2]
        assert s.image.dtype == np.uint8 and s.image.shape == (h, w, 3) and h == w
        assert cfg.min_side <= h <= cfg.max_side
        assert s.label == class_id
        assert s.mask.shape == (h, w) and s.mask.dtype == np.uint8 and set(np.unique(s.mask)) <= {0, 255}
        assert s.homography.shape == (3, 3) and s.homography.dtype == np.float64
        x, y, bw, bh = s.box
        assert all(isinstance(v, float) for v in s.box)
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bw > 3 and bh > 3
        x_in = preprocess(s.image, s.box, PreprocessConfig(color_order="BGR"))
        assert x_in.shape == (3, 32, 32) and x_in.dtype == np.float32


def test_same_seed_same_bytes_different_seed_different() -> None:
    for c in (STOP, LISA_INDEX["speedLimitUrdbl"], LISA_INDEX["pedestrianCrossing"]):
        a, b = render_sign(c, _rng(1, c)), render_sign(c, _rng(1, c))
        assert _same(a, b)
        others = [render_sign(c, _rng(2, c, i)) for i in range(3)]
        assert all(o.image.shape != a.image.shape or o.image.tobytes() != a.image.tobytes() for o in others)


def test_no_global_random_state() -> None:
    np.random.seed(0)
    a = render_sign(STOP, _rng(9))
    np.random.seed(123)
    np.random.rand(10)
    assert _same(a, render_sign(STOP, _rng(9)))


def test_pose_reproduces_the_sample() -> None:
    cfg = RenderConfig()
    for c in range(0, N_CLASSES, 4):
        s = render_sign(c, _rng(3, c), cfg)
        assert s.pose == sample_pose(_rng(3, c), cfg)
        assert _same(s, render_pose(c, None, s.pose, cfg))


def test_mask_is_the_template_mask_warped_by_the_homography() -> None:
    for c in range(N_CLASSES):
        for i in range(4):
            s = render_sign(c, _rng(11, c, i))
            h, w = s.mask.shape
            _, tmask = sign_template(c)
            warped = cv2.warpPerspective(tmask, s.homography, (w, h), flags=cv2.INTER_NEAREST)
            diff = (warped > 127) != (s.mask > 127)
            assert not (diff & ~_boundary(s.mask)).any()  # only boundary pixels may differ
            ys, xs = np.nonzero(s.mask)
            assert s.box == (float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1))


def test_homography_places_the_sign_outline() -> None:
    for c in (STOP, LISA_INDEX["yield"], LISA_INDEX["keepRight"]):
        s = render_sign(c, _rng(12, c))
        pts = sign_shape(c) * S
        q = np.c_[pts, np.ones(len(pts))] @ s.homography.T
        q = q[:, :2] / q[:, 2:]
        x, y, w, h = s.box
        # Box edges are pixel edges; outline vertices are pixel centres of the boundary (+- half a pixel).
        assert abs(q[:, 0].min() - x) < 1.5 and abs(q[:, 0].max() - (x + w - 1)) < 1.5
        assert abs(q[:, 1].min() - y) < 1.5 and abs(q[:, 1].max() - (y + h - 1)) < 1.5


def test_sign_looks_like_its_template_on_a_clean_render() -> None:
    """Frontal, evenly lit stop sign: BGR order kept and the face's red is where the mask says."""
    s = render_pose(STOP, None, Pose(side=96), RenderConfig.clean())
    inner = cv2.erode(s.mask, np.ones((5, 5), np.uint8)) > 0
    b, g, r = s.image[inner].astype(float).mean(0)
    assert r > g + 60 and r > b + 60
    x = preprocess(s.image, s.box, PreprocessConfig(color_order="BGR"))  # -> RGB
    assert x[0].mean() > x[1].mean() + 0.15


def test_scene_crop_contains_the_preprocessing_crop() -> None:
    cfg = PreprocessConfig()
    inside = []
    for i in range(150):
        s = render_sign(i % N_CLASSES, _rng(13, i))
        x0, y0, x1, y1 = crop_rect(s.box, cfg)
        h, w = s.mask.shape
        inter = max(0, min(x1, w) - max(x0, 0)) * max(0, min(y1, h) - max(y0, 0))
        inside.append(inter / float((x1 - x0) * (y1 - y0)))
    assert np.mean(inside) > 0.97 and min(inside) > 0.75


def _sticker() -> tuple[np.ndarray, np.ndarray]:
    bgr = np.zeros((S, S, 3), np.uint8)
    bgr[:] = (40, 220, 40)
    alpha = np.zeros((S, S), np.float32)
    alpha[52:76, 40:88] = 1.0  # a bar across the middle of every sign shape
    return bgr, alpha


def _changed_only_near_sticker(class_id: int, pose: Pose, cfg: RenderConfig, radius: int, visible: bool = True) -> None:
    sticker = _sticker()
    plain = render_pose(class_id, None, pose, cfg)
    stuck = render_pose(class_id, None, pose, cfg, sticker=sticker)
    assert np.array_equal(plain.mask, stuck.mask) and np.array_equal(plain.homography, stuck.homography)
    h, w = plain.mask.shape
    region = cv2.warpPerspective((sticker[1] * 255).astype(np.uint8), plain.homography, (w, h),
                                 flags=cv2.INTER_LINEAR) > 0
    near = cv2.dilate(region.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0
    diff = np.abs(plain.image.astype(int) - stuck.image.astype(int)).max(axis=2)
    assert diff[~near].max(initial=0) == 0, "sticker changed pixels outside its region"
    if not visible:
        return
    core = cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    if core.sum() < 4:  # a far-away sign: the sticker is only a few pixels
        core = region
    assert core.sum() >= 4

    def green(img: np.ndarray) -> float:
        return float(img[core][:, 1].astype(float).mean() - img[core][:, 2].astype(float).mean())

    assert diff[core].mean() > 15 and green(stuck.image) > green(plain.image) + 10


def test_sticker_changes_only_its_region_clean() -> None:
    cfg = RenderConfig.clean()
    for c in (STOP, LISA_INDEX["yield"], LISA_INDEX["speedLimit45"]):
        for pose in (Pose(side=80), Pose(side=64, yaw=35, pitch=-20, roll=8, cx=0.45), Pose(side=30, yaw=-30)):
            _changed_only_near_sticker(c, pose, cfg, radius=2)


def test_sticker_changes_only_its_region_under_nuisances() -> None:
    """Lighting, shadow, glare, noise and occluders are identical with and without the sticker."""
    cfg = RenderConfig()
    for i in range(12):
        pose = sample_pose(_rng(14, i), cfg)
        pose = dataclasses.replace(pose, motion_blur=0.0, defocus=0.0, jpeg_quality=0)
        _changed_only_near_sticker(i % N_CLASSES, pose, cfg, radius=2)
    # With blur and JPEG the change spreads, but only by a blur radius and a JPEG block.
    for i in range(6):
        pose = dataclasses.replace(sample_pose(_rng(15, i), cfg), motion_blur=0.05, defocus=0.02, jpeg_quality=70)
        _changed_only_near_sticker(STOP, pose, cfg, radius=24, visible=False)


def test_sticker_is_validated() -> None:
    bgr, alpha = _sticker()
    with pytest.raises(SignguardError, match="sticker bgr"):
        render_sign(STOP, _rng(0), sticker=(bgr[:10], alpha))
    with pytest.raises(SignguardError, match="sticker alpha"):
        render_sign(STOP, _rng(0), sticker=(bgr, alpha * 2))
    with pytest.raises(SignguardError, match="sticker alpha"):
        render_sign(STOP, _rng(0), sticker=(bgr, (alpha > 0).astype(np.uint8)))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"min_side": 4}, "min_side"),
        ({"min_side": 50, "max_side": 40}, "max_side"),
        ({"max_side": 64.5}, "max_side"),
        ({"sign_fraction": (0.8, 0.5)}, "sign_fraction"),
        ({"brightness": (0.0, 1.0)}, "brightness"),
        ({"jpeg_quality": (10, 101)}, "jpeg_quality"),
        ({"p_post": 1.5}, "p_post"),
        ({"p_jpeg": True}, "p_jpeg"),
        ({"max_yaw": -1.0}, "max_yaw"),
        ({"max_noise": float("nan")}, "max_noise"),
        ({"appearance_jitter": "yes"}, "appearance_jitter"),
    ],
)
def test_render_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    """Direct construction: the message starts with the bare field name (from_dict prefixes the path)."""
    with pytest.raises(ConfigError, match="^%s: expected " % field):
        RenderConfig(**kwargs)


def test_render_config_round_trips_and_rejects_unknown_fields() -> None:
    cfg = RenderConfig(min_side=24, brightness=(0.5, 1.0))
    assert RenderConfig.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()}) == cfg
    with pytest.raises(ConfigError, match=r"^render: unknown field\(s\) \['min_sid'\]"):
        RenderConfig.from_dict({"min_sid": 20})
    with pytest.raises(ConfigError, match=r"^data\.render: unknown field"):
        RenderConfig.from_dict({"min_sid": 20}, where="data.render")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"min_side": 4}, r"^render\.min_side: expected an integer in \[8, 4096\], got 4$"),
        ({"min_side": "20"}, r"^render\.min_side: expected an integer, got '20'$"),
        ({"jpeg_quality": [10.5, 90]}, r"^render\.jpeg_quality\[0\]: expected an integer, got 10\.5$"),
        ({"brightness": [0.5]}, r"^render\.brightness: expected 2 items, got 1$"),
        ({"p_jpeg": True}, r"^render\.p_jpeg: expected a number, got True$"),
        ({"appearance_jitter": "yes"}, r"^render\.appearance_jitter: expected true or false, got 'yes'$"),
    ],
)
def test_render_config_from_dict_names_the_dotted_path(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RenderConfig.from_dict(data)


def test_render_config_from_dict_coerces_yaml_values() -> None:
    cfg = RenderConfig.from_dict({"max_yaw": 30, "brightness": ["0.5", 1], "jpeg_quality": [40, 90]})
    assert cfg.max_yaw == 30.0 and isinstance(cfg.max_yaw, float)
    assert cfg.brightness == (0.5, 1.0) and cfg.jpeg_quality == (40, 90)


def test_bad_class_rng_and_pose_are_refused() -> None:
    with pytest.raises(SignguardError, match="class_id"):
        render_sign(N_CLASSES, _rng(0))
    with pytest.raises(SignguardError, match="rng"):
        render_sign(STOP, 0)  # type: ignore[arg-type]
    with pytest.raises(SignguardError, match="pose.scale"):
        render_pose(STOP, None, Pose(scale=1.5))


def test_contact_sheet(tmp_path) -> None:
    path = write_contact_sheet(tmp_path / "sheet.png", n_per_class=2, seed=1)
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] == N_CLASSES * 64 and img.shape[1] > 2 * 64


def test_speed_is_reported() -> None:
    """Prints ms/sample (budget: ~3 ms on one core); timing is not asserted."""
    rng = _rng(99)
    for i in range(50):
        render_sign(i % N_CLASSES, rng)
    n, t = 300, time.perf_counter()
    for i in range(n):
        render_sign(i % N_CLASSES, rng)
    print("\nrender_sign: %.2f ms/sample" % ((time.perf_counter() - t) / n * 1e3))


def test_jitter_box_moves_and_scales_within_its_amount() -> None:
    """The localizer-like crop boxes of configs/baseline_roi.yaml: off by at most ``amount`` of each side,
    really off (not a no-op), and reproducible from the sample's generator."""
    from train.data.datasets import jitter_box

    box = (40.0, 30.0, 20.0, 24.0)
    out = np.array([jitter_box(box, np.random.default_rng(i), 0.15) for i in range(400)])
    cx, cy = out[:, 0] + out[:, 2] / 2, out[:, 1] + out[:, 3] / 2
    assert np.all(np.abs(cx - 50.0) <= 0.15 * 20 + 1e-9) and np.all(np.abs(cy - 42.0) <= 0.15 * 24 + 1e-9)
    assert np.all((out[:, 2] >= 17.0 - 1e-9) & (out[:, 2] <= 23.0 + 1e-9))
    assert np.all((out[:, 3] >= 20.4 - 1e-9) & (out[:, 3] <= 27.6 + 1e-9))
    assert np.abs(cy - 42.0).max() > 0.1 * 24 and np.abs(out[:, 3] / 24 - 1).max() > 0.1
    assert jitter_box(box, np.random.default_rng(3), 0.15) == jitter_box(box, np.random.default_rng(3), 0.15)


def test_roi_jitter_changes_only_the_training_crops(tmp_path) -> None:
    """``data.roi_jitter`` reaches the rendered training split (other crops, its own cache file), while the
    validation and test splits keep the tight boxes the accuracy is reported on."""
    from edge.preprocess import PreprocessConfig
    from train.config import DataConfig
    from train.data.datasets import load_data

    def splits(jitter):
        return load_data(DataConfig(train_per_class=2, test_per_class=1, roi_jitter=jitter), PreprocessConfig(),
                         progress=False, cache_dir=tmp_path)

    tight, moved = splits(0.0), splits(0.15)
    assert np.array_equal(tight.train.y, moved.train.y) and not np.array_equal(tight.train.x, moved.train.x)
    assert np.array_equal(tight.test.x, moved.test.x) and np.array_equal(tight.val.x, moved.val.x)
    assert len(list(tmp_path.glob("synthetic-train-*.npz"))) == 2
