"""Calibration sets: stratified sampling, the shared preprocessing, folders, videos, the .npz round trip."""

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from calib.dataset import (
    MIN_RECOMMENDED,
    from_arrays,
    from_image_folder,
    from_video,
    load_calibration_set,
    save_calibration_set,
    stratified_indices,
)
from edge.errors import SignguardError
from edge.preprocess import PreprocessConfig, preprocess

BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
RGB_CHANNEL = {"red": 0, "green": 1, "blue": 2}


def _small_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "recommended 512" in r.getMessage()
            and "broken INT8" in r.getMessage()]


def test_stratified_indices_round_robin_then_others_fill_in():
    labels = np.array([0] * 100 + [1] * 10 + [2] * 5)
    idx = stratified_indices(labels, 30, seed=0)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [15, 10, 5]  # class 2 runs out at 5, class 1 at 10, class 0 fills in
    assert np.bincount(labels[idx[:15]], minlength=3).tolist() == [5, 5, 5]  # any prefix is balanced
    assert np.array_equal(idx, stratified_indices(labels, 30, seed=0))
    assert not np.array_equal(idx, stratified_indices(labels, 30, seed=1))
    assert sorted(stratified_indices(labels, 500, seed=0).tolist()) == list(range(115))
    assert np.bincount(labels[stratified_indices(labels, 7, seed=3)]).max() == 3  # 7 = 3 + 2 + 2
    with pytest.raises(SignguardError, match="n: expected a positive"):
        stratified_indices(labels, 0, seed=0)


def test_from_arrays_stratifies_and_warns_loudly_under_512(caplog):
    rng = np.random.default_rng(0)
    x = rng.random((90, 3, 8, 8), dtype=np.float32)
    y = np.array([0] * 60 + [1] * 20 + [2] * 10)
    with caplog.at_level(logging.WARNING, logger="calib"):
        cs = from_arrays(x, y, n=30, seed=0)
    assert cs.x.shape == (30, 3, 8, 8) and cs.meta["class_counts"] == {"0": 10, "1": 10, "2": 10}
    assert len(_small_warnings(caplog)) == 1 and "only 30 calibration image(s)" in caplog.text
    rows = {row.tobytes() for row in x}
    assert all(row.tobytes() in rows for row in cs.x)  # a subset, not a copy with changes
    caplog.clear()
    big = np.repeat(x, 7, axis=0)
    with caplog.at_level(logging.WARNING, logger="calib"):
        cs = from_arrays(big, np.repeat(y, 7), n=MIN_RECOMMENDED)
    assert len(cs.x) == 512 and not _small_warnings(caplog)
    with pytest.raises(SignguardError, match="got range"):
        from_arrays(x * 255.0, y)
    with pytest.raises(SignguardError, match=r"y: expected 90 labels"):
        from_arrays(x, y[:5])
    with pytest.raises(SignguardError, match=r"expected preprocessed images \(N>0"):
        from_arrays(x[:0], y[:0])


def _sign(colour, h=40, w=48):
    img = np.full((h, w, 3), 128, np.uint8)
    img[4:-4, 4:-4] = BGR[colour]
    return img


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "signs"
    for colour, count in (("red", 4), ("green", 4), ("blue", 2)):
        (root / colour).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / colour / ("%d.png" % i)), _sign(colour))
    (root / "red" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_is_stratified_and_goes_through_the_shared_preprocess(tree, caplog):
    cfg = PreprocessConfig(input_size=16, color_order="RGB")  # files decode BGR whatever cfg says
    with caplog.at_level(logging.WARNING, logger="calib"):
        cs = from_image_folder(tree, cfg, n=6, seed=0)
    assert cs.x.shape == (6, 3, 16, 16) and cs.x.dtype == np.float32
    assert cs.meta["class_counts"] == {"blue": 2, "green": 2, "red": 2}
    assert len(_small_warnings(caplog)) == 1
    for f, img in zip(cs.meta["files"], cs.x):
        colour = f.split("/")[0]
        ref = preprocess(cv2.imread(str(tree / f)), None, PreprocessConfig(input_size=16, color_order="BGR"))
        assert np.array_equal(img, ref)  # exactly what the device computes
        centre = img[:, 8, 8]
        assert centre[RGB_CHANNEL[colour]] == 1.0 and centre.sum() == 1.0  # RGB out, colours not swapped


def test_flat_image_folder_and_bad_paths(tree, tmp_path):
    flat = tree / "green"
    cs = from_image_folder(flat, PreprocessConfig(), n=3)
    assert cs.x.shape == (3, 3, 32, 32) and "class_counts" not in cs.meta
    assert np.allclose(cs.x[:, 1, 16, 16], 1.0)
    with pytest.raises(SignguardError, match="nowhere: calibration image folder not found"):
        from_image_folder(tmp_path / "nowhere", PreprocessConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignguardError, match="empty: no images"):
        from_image_folder(tmp_path / "empty", PreprocessConfig())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(SignguardError, match=r"x.png: cannot decode image"):
        from_image_folder(tmp_path / "bad", PreprocessConfig())


def _write_video(path, frames, fps=10.0):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def _frames(n=30):
    """Frame i: grey level 8*i on the left half, blue on the right half."""
    frames = []
    for i in range(n):
        f = np.empty((48, 64, 3), np.uint8)
        f[:, :32] = 8 * i
        f[:, 32:] = BGR["blue"]
        frames.append(f)
    return frames


def test_video_samples_evenly_spaced_centre_crops(tmp_path, caplog):
    video = _write_video(tmp_path / "drive.avi", _frames())
    with caplog.at_level(logging.WARNING, logger="calib"):
        cs = from_video(video, PreprocessConfig(input_size=16), n=5)
    assert cs.meta["frames"] == [0, 7, 14, 22, 29] and cs.x.shape == (5, 3, 16, 16)
    assert cs.meta["roi"] == "CentreRoi(0.5)" and len(_small_warnings(caplog)) == 1
    grey_left = cs.x[:, 0, 8, 1]  # the centre crop straddles the grey/blue edge
    assert np.allclose(grey_left * 255, [0, 56, 112, 176, 232], atol=6)
    assert np.all(cs.x[:, 2, 8, -2] > 0.9) and np.all(cs.x[:, 0, 8, -2] < 0.1)  # blue stays in channel 2


def test_video_with_boxes_csv_uses_only_boxed_frames_stratified_by_class(tmp_path):
    video = _write_video(tmp_path / "drive.avi", _frames())
    csv = tmp_path / "boxes.csv"
    rows = ["frame,x,y,w,h,class_id,class_name"]
    rows += ["%d,40,16,16,16,%d,%s" % (f, f % 2, "stop" if f % 2 else "yield") for f in range(3, 23)]
    csv.write_text("\n".join(rows) + "\n")
    cs = from_video(video, PreprocessConfig(input_size=16), n=6, seed=0, boxes_csv=csv)
    assert len(cs.meta["frames"]) == 6 and all(3 <= f <= 22 for f in cs.meta["frames"])
    assert sum(f % 2 for f in cs.meta["frames"]) == 3  # 3 'stop' + 3 'yield'
    assert np.all(cs.x[:, 2] > 0.9) and np.all(cs.x[:, :2] < 0.1)  # the box lies on the blue half


def test_missing_video_or_csv_is_named(tmp_path):
    with pytest.raises(SignguardError, match="nope.mp4: calibration video not found"):
        from_video(tmp_path / "nope.mp4", PreprocessConfig())
    video = _write_video(tmp_path / "v.avi", _frames(3))
    with pytest.raises(SignguardError, match="boxes.csv: ROI CSV not found"):
        from_video(video, PreprocessConfig(), boxes_csv=tmp_path / "boxes.csv")


def test_save_load_round_trip_is_bit_exact(tree, tmp_path):
    cs = from_image_folder(tree, PreprocessConfig(input_size=16), n=10)
    path = save_calibration_set(tmp_path / "calib.npz", cs.x, cs.meta)
    with np.load(str(path), allow_pickle=False) as z:
        assert z["x"].dtype == np.uint8  # preprocess output is u8/255: stored 4x smaller
    back = load_calibration_set(path)
    assert np.array_equal(back.x, cs.x) and back.meta == cs.meta
    noise = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    save_calibration_set(tmp_path / "noise.npz", noise, {"source": "noise"})
    assert np.array_equal(load_calibration_set(tmp_path / "noise.npz").x, noise)  # not u8-exact: kept float32
    with pytest.raises(SignguardError, match="missing.npz: calibration set not found"):
        load_calibration_set(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", y=np.zeros(3))
    with pytest.raises(SignguardError, match="other.npz: not a calibration set"):
        load_calibration_set(tmp_path / "other.npz")


def test_calib_imports_neither_torch_nor_train_nor_export():
    """Dependency direction train -> export -> calib -> edge: calib must work where torch is absent."""
    code = (
        "import sys\n"
        "for name in ('torch', 'train', 'export'):\n"
        "    sys.modules[name] = None  # any import of them now raises ImportError\n"
        "import calib, calib.dataset, calib.qdq, calib.quantize, calib.sensitivity\n"
        "assert callable(calib.quantize_int8) and callable(calib.from_video)\n"
        "print('ok')\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(repo), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
