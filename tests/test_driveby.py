"""Drive-by video rendering: a readable video, per-frame boxes that grow and stay in frame, stickers applied.

Why: the device's field-test mode scores attack success on such a video
against its CSV boxes, so the two must agree frame by frame.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ConfigError, SignguardError
from train.data import driveby
from train.data.classes import LISA_CLASSES, LISA_INDEX, STOP
from train.data.driveby import CSV_HEADER, render_driveby
from train.data.signs import TEMPLATE_SIZE

S = TEMPLATE_SIZE


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_default_driveby_video_and_boxes(tmp_path: Path) -> None:
    d = render_driveby(tmp_path)
    assert d.video_path.exists() and d.video_path.stem == "driveby"
    assert d.n_frames == 90 and d.fps == 15.0 and d.size == (640, 360) and d.class_id == STOP
    frames = _frames(d.video_path)
    assert len(frames) == 90
    assert all(f.shape == (360, 640, 3) and f.dtype == np.uint8 for f in frames)
    assert d.boxes_csv.read_text().splitlines()[0] == CSV_HEADER
    rows = _rows(d.boxes_csv)
    assert len(rows) == 90
    frame_ids = [int(r["frame"]) for r in rows]
    assert frame_ids == sorted(frame_ids) and frame_ids[0] == 0
    w = np.array([float(r["w"]) for r in rows])
    assert 14 <= w[0] <= 30 and 120 <= w[-1] <= 180  # ~20 px -> ~150 px
    assert np.all(np.diff(w) >= -2.0)  # grows (up to shake/rounding)
    for r in rows:
        x, y, bw, bh = (float(r[k]) for k in ("x", "y", "w", "h"))
        assert 0 <= x and 0 <= y and x + bw <= 640 and y + bh <= 360
        assert r["class_id"] == str(STOP) and r["class_name"] == "stop"
        assert all(len(r[k].split(".")[1]) == 2 for k in ("x", "y", "w", "h"))  # 2 decimals
    # The box is on the sign: the last frame's box is red (BGR), the frame overall is not.
    x, y, bw, bh = (int(float(rows[-1][k])) for k in ("x", "y", "w", "h"))
    inner = frames[-1][y + bh // 4: y + 3 * bh // 4, x + bw // 4: x + 3 * bw // 4].reshape(-1, 3).astype(float)
    assert (inner[:, 2] > inner[:, 1] + 40).mean() > 0.4


def test_small_driveby_is_deterministic_per_seed(tmp_path: Path) -> None:
    kw = dict(class_id=LISA_INDEX["yield"], n_frames=12, fps=10.0, size=(320, 180))
    a = render_driveby(tmp_path / "a", seed=3, **kw)
    b = render_driveby(tmp_path / "b", seed=3, **kw)
    c = render_driveby(tmp_path / "c", seed=4, **kw)
    assert a.boxes_csv.read_text() == b.boxes_csv.read_text() != c.boxes_csv.read_text()
    fa, fb = _frames(a.video_path), _frames(b.video_path)
    assert len(fa) == 12 and fa[0].shape == (180, 320, 3)
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    rows = _rows(a.boxes_csv)
    assert rows[0]["class_name"] == "yield" and float(rows[-1]["w"]) > 3 * float(rows[0]["w"])


def test_sticker_shows_on_the_sign(tmp_path: Path) -> None:
    bgr = np.zeros((S, S, 3), np.uint8)
    bgr[:] = (30, 200, 30)
    alpha = np.zeros((S, S), np.float32)
    alpha[16:112, 16:112] = 1.0
    kw = dict(n_frames=10, size=(320, 180), seed=1)
    plain = render_driveby(tmp_path, name="plain", **kw)
    stuck = render_driveby(tmp_path, name="stuck", sticker=(bgr, alpha), **kw)
    assert plain.boxes_csv.read_text() == stuck.boxes_csv.read_text()  # same scene, same boxes
    r = _rows(stuck.boxes_csv)[-1]
    x, y, bw, bh = (int(float(r[k])) for k in ("x", "y", "w", "h"))

    def centre(path: Path) -> np.ndarray:
        f = _frames(path)[-1]
        return f[y + bh // 3: y + 2 * bh // 3, x + bw // 3: x + 2 * bw // 3].reshape(-1, 3).mean(0)

    b0, g0, r0 = centre(plain.video_path)
    b1, g1, r1 = centre(stuck.video_path)
    assert r0 > g0 + 30 and g1 > r1 + 30


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_frames": 1}, "driveby.n_frames"),
        ({"fps": 0}, "driveby.fps"),
        ({"size": (32, 32)}, "driveby.size"),
        ({"size": (640.0, 360)}, "driveby.size"),
        ({"class_id": len(LISA_CLASSES)}, "driveby.class_id"),
        ({"name": "a/b"}, "driveby.name"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        render_driveby(tmp_path, **kwargs)


class _Writer:
    """A cv2.VideoWriter stand-in that opens only for the allowed codecs."""

    allowed: tuple = ()

    def __init__(self, path: str, fourcc: int, fps: float, size: tuple) -> None:
        self.ok = fourcc in [cv2.VideoWriter_fourcc(*c) for c in self.allowed]
        self.path = path
        self.frames = 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.ok

    def write(self, frame: np.ndarray) -> None:
        self.frames += 1

    def release(self) -> None:
        if self.ok:
            Path(self.path).write_bytes(b"video")


def test_writer_falls_back_to_mjpg_then_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class OnlyMjpg(_Writer):
        allowed = ("MJPG",)

    monkeypatch.setattr(driveby.cv2, "VideoWriter", OnlyMjpg)
    d = render_driveby(tmp_path, n_frames=3, size=(128, 72))
    assert d.video_path == tmp_path / "driveby.avi" and d.video_path.exists()
    assert not (tmp_path / "driveby.mp4").exists()

    class Nothing(_Writer):
        allowed = ()

    monkeypatch.setattr(driveby.cv2, "VideoWriter", Nothing)
    with pytest.raises(SignguardError, match="video writer"):
        render_driveby(tmp_path / "none", n_frames=3, size=(128, 72))
