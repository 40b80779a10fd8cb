"""The localizer on the device, torch-free: box maths, decode + NMS, a real tiny detector graph in a hashed
bundle, the IoU/centroid tracker and ``--roi detect`` (localizer every N frames, tracks in between)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.detect_roi import DetectRoi
from edge.errors import BundleError, SignguardError
from edge.localizer import DecodeConfig, Localizer, box_iou, decode, nms
from edge.manifest import model_entry, write_manifest
from edge.preprocess import PreprocessConfig
from edge.rois import CsvRoi
from edge.tracker import Tracker

from .helpers import edit_manifest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

S, STRIDE = 64, 8  # input side and output stride of the tiny detector: an 8x8 grid


def red_detector():
    """AveragePool 8x8 -> 1x1 conv: heat = sigmoid(20 (R - (G + B) / 2) - 5), centre offset 0.5 cells,
    log size log(2) strides = 16 input px; i.e. a 16 px box on every cell that is red all over."""
    w = np.zeros((5, 3, 1, 1), np.float32)
    w[0, :, 0, 0] = [20.0, -10.0, -10.0]
    b = np.array([-5.0, 0.5, 0.5, np.log(2.0), np.log(2.0)], np.float32)
    nodes = [
        helper.make_node("AveragePool", ["images"], ["p"], kernel_shape=[STRIDE, STRIDE], strides=[STRIDE, STRIDE]),
        helper.make_node("Conv", ["p", "w", "b"], ["o"], kernel_shape=[1, 1]),
        helper.make_node("Split", ["o", "split"], ["h", "r"], axis=1),
        helper.make_node("Sigmoid", ["h"], ["hs"]),
        helper.make_node("Concat", ["hs", "r"], ["detections"], axis=1),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([1, 4], np.int64), "split")]
    graph = helper.make_graph(nodes, "red",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, S, S])],
                              [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["N", 5, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture()
def red_bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "loc"
    folder.mkdir()
    (folder / "localizer.onnx").write_bytes(red_detector().SerializeToString())
    write_manifest(folder, {
        "name": "red", "classes": ["sign"],
        "input": {"name": "images", "shape": [-1, 3, S, S], "range": [0, 1], "color": "RGB"},
        "output": {"name": "detections", "semantics": "centernet", "num_classes": 1},
        "preprocess": PreprocessConfig(input_size=S).to_dict(),
        "models": [model_entry("localizer.onnx", "fp32", "onnx", "detector")],
        "tools": {}, "extra": {"localizer": {"decode": {"stride": STRIDE, "score_threshold": 0.5, "nms_iou": 0.45,
                                                        "max_detections": 8}}}})
    return folder


def frame_with_red(cells, size=(640, 360)) -> np.ndarray:
    """A grey frame with red rectangles covering the given input-grid cells (row, col) exactly."""
    f = np.full((size[1], size[0], 3), 128, np.uint8)
    kx, ky = size[0] / S, size[1] / S
    for i, j in cells:
        y0, y1 = int(i * STRIDE * ky), int((i + 1) * STRIDE * ky)
        x0, x1 = int(j * STRIDE * kx), int((j + 1) * STRIDE * kx)
        f[y0:y1, x0:x1] = (0, 0, 255)
    return f


def test_box_iou_and_nms_by_hand() -> None:
    a = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]], float)
    iou = box_iou(a, a)
    assert iou[0, 1] == pytest.approx(50 / 150) and iou[0, 2] == 0.0 and np.allclose(np.diag(iou), 1.0)
    assert nms(a, np.array([0.5, 0.9, 0.7]), 0.4).tolist() == [1, 2, 0]
    assert nms(a, np.array([0.5, 0.9, 0.7]), 0.3).tolist() == [1, 2]


def test_decode_peaks_threshold_and_frame_scaling() -> None:
    out = np.zeros((5, 8, 8), np.float32)
    out[0, 2, 3], out[0, 2, 4] = 0.9, 0.6  # two neighbours: only the 3x3 maximum is a peak
    out[0, 6, 1] = 0.4
    out[1:3, 2, 3] = 0.25
    out[3:5, 2, 3] = np.log(3.0)  # 3 strides = 24 input px
    boxes, scores = decode(out, DecodeConfig(stride=8, score_threshold=0.3), 64, (640, 360))
    assert scores.tolist() == pytest.approx([0.9, 0.4])
    cx, cy = (3 + 0.25) * 8, (2 + 0.25) * 8
    assert boxes[0] == pytest.approx([(cx - 12) * 10, (cy - 12) * 5.625, 240, 135])
    assert len(decode(out, DecodeConfig(stride=8, score_threshold=0.5), 64, (640, 360))[0]) == 1
    assert len(decode(out, DecodeConfig(stride=8, score_threshold=0.3, max_detections=1), 64, (64, 64))[0]) == 1
    with pytest.raises(SignguardError, match="output map"):
        decode(np.zeros((4, 8, 8)), DecodeConfig(), 64, (64, 64))


def test_localizer_bundle_finds_the_red_cell(red_bundle: Path) -> None:
    loc = Localizer(red_bundle)
    dets = loc.detect(frame_with_red([(3, 5), (6, 1)]))
    assert len(dets) == 2 and all(d.score > 0.99 for d in dets)
    boxes = sorted(d.box for d in dets)
    # a 16 px box centred on the cell's centre, scaled by (640/64, 360/64)
    assert boxes[1] == pytest.approx(((5.5 * 8 - 8) * 10, (3.5 * 8 - 8) * 5.625, 160, 90), abs=1e-3)
    assert boxes[0] == pytest.approx(((1.5 * 8 - 8) * 10, (6.5 * 8 - 8) * 5.625, 160, 90), abs=1e-3)
    assert loc.detect(np.full((360, 640, 3), 128, np.uint8)) == []
    assert len(Localizer(red_bundle, score_threshold=0.0).detect(frame_with_red([]))) == 8  # max_detections


def test_localizer_threads_reach_its_session(red_bundle: Path) -> None:
    """``threads`` sets the onnxruntime intra-op pool the benchmark times (the device's own session)."""
    assert Localizer(red_bundle, threads=1).backend.session.get_session_options().intra_op_num_threads == 1


def test_localizer_refuses_other_bundles(red_bundle: Path, colour_bundle: Path) -> None:
    with pytest.raises(BundleError, match="semantics"):
        Localizer(colour_bundle)
    where = edit_manifest(red_bundle, lambda m: m["extra"].pop("localizer"))
    with pytest.raises(BundleError, match="extra.localizer.decode"):
        Localizer(red_bundle)
    edit_manifest(red_bundle, lambda m: m["extra"].update(localizer={"decode": {"stride": 8}}))
    with pytest.raises(BundleError, match="int8"):
        Localizer(red_bundle, precision="int8")
    (red_bundle / "localizer.onnx").write_bytes(b"junk")
    with pytest.raises(BundleError, match="localizer.onnx"):
        Localizer(red_bundle)
    assert where.endswith("manifest.json")


def moving(t: int, x0: float = 100.0, vx: float = 6.0, w0: float = 20.0, grow: float = 1.03):
    w = w0 * grow**t
    return (x0 + vx * t - w / 2, 150.0 - w / 2, w, w)


def test_tracker_keeps_one_id_per_sign_and_predicts_between_detections() -> None:
    tr = Tracker()
    for t in range(12):  # detections every 3rd frame only; two signs
        boxes = np.array([moving(t), moving(t, x0=500, vx=-4)]) if t % 3 == 0 else None
        tracks = tr.step(t, boxes)
        assert len(tracks) == 2
        if t >= 7 and boxes is None:  # after two matches the velocity is known: predictions follow the signs
            for tk in tracks:
                truth = moving(t) if tk.id == 1 else moving(t, x0=500, vx=-4)
                assert box_iou(np.array([tk.box]), np.array([truth]))[0, 0] > 0.85
    assert sorted(tk.id for tk in tracks) == [1, 2]
    # the sign leaves: its track survives max_misses detector runs, then ends
    for k, t in enumerate(range(12, 12 + 3 * 4, 3)):
        tracks = tr.step(t, np.array([moving(t, x0=500, vx=-4)]))
        assert [tk.id for tk in tracks] == ([1, 2] if k < 2 else [2])
    with pytest.raises(Exception, match="before the previous frame"):
        tr.step(0)


def test_tracker_matches_small_fast_signs_by_centroid() -> None:
    tr = Tracker(iou_threshold=0.2, centroid_gate=0.7)
    tr.step(0, np.array([[100.0, 100.0, 8.0, 8.0]]))
    tracks = tr.step(1, np.array([[108.5, 101.0, 8.0, 8.0]]))  # no overlap, centre 1.07 sizes away: a new sign
    assert sorted(t.id for t in tracks) == [1, 2]
    tr = Tracker(iou_threshold=0.2, centroid_gate=0.7)
    tr.step(0, np.array([[100.0, 100.0, 8.0, 8.0]]))
    tracks = tr.step(1, np.array([[106.0, 101.0, 8.0, 8.0]]))  # IoU 0.12 < 0.2, centre 0.76 sizes: no
    assert sorted(t.id for t in tracks) == [1, 2]
    tr = Tracker(iou_threshold=0.2, centroid_gate=0.7)
    tr.step(0, np.array([[100.0, 100.0, 8.0, 8.0]]))
    tracks = tr.step(1, np.array([[105.0, 100.0, 8.0, 8.0]]))  # IoU 0.23: matched
    assert [t.id for t in tracks] == [1]
    tracks = tr.step(3, np.array([[112.0, 100.0, 8.0, 8.0]]))  # 2 frames on: the learnt velocity carries the box
    assert [t.id for t in tracks] == [1]
    tracks = tr.step(4, np.array([[300.0, 100.0, 8.0, 8.0]]))  # far away: a new sign
    assert sorted(t.id for t in tracks) == [1, 2]


def test_detect_roi_every_n_with_ground_truth(red_bundle: Path, tmp_path: Path) -> None:
    csv = tmp_path / "gt.csv"
    rows = ["frame,x,y,w,h,class_id,class_name"]
    frames = []
    for t in range(9):  # the red cell walks one cell right every 3 frames
        j = 1 + t // 3
        frames.append(frame_with_red([(3, j)]))
        rows.append("%d,%g,%g,%g,%g,13,stop" % (t, (j + 0.5) * 80 - 80, 3.5 * 45 - 45, 160, 90))
    csv.write_text("\n".join(rows) + "\n")
    roi = DetectRoi(Localizer(red_bundle), every=2, gt=CsvRoi(csv))
    got = [roi.get_all(t, f) for t, f in enumerate(frames)]
    assert roi.runs == 5 and all(len(g) == 1 for g in got)
    assert {g[0].track for g in got} == {1}
    assert [g[0].detected for g in got] == [t % 2 == 0 for t in range(9)]
    assert all(g[0].roi.class_name == "stop" for g in got)
    with pytest.raises(SignguardError, match="detect-every"):
        DetectRoi(Localizer(red_bundle), every=0)


def test_detect_roi_coasts_a_confirmed_track_over_a_missed_detection(red_bundle: Path) -> None:
    """The localizer misses a sign it found on the frames before: the confirmed track keeps its predicted
    box (detected False) until the tracker ends it; a track seen once and then lost is not shown."""
    blank = np.full((360, 640, 3), 128, np.uint8)
    roi = DetectRoi(Localizer(red_bundle), every=1)
    seen = [roi.get_all(t, f) for t, f in enumerate([frame_with_red([(3, 2)])] * 3 + [blank] * 4)]
    assert [len(g) for g in seen] == [1, 1, 1, 1, 1, 0, 0]  # coasted for max_misses = 2 runs, then ended
    assert [g[0].detected for g in seen[:5]] == [True, True, True, False, False]
    assert {g[0].track for g in seen[:5]} == {1}
    assert seen[3][0].roi.box == pytest.approx(seen[2][0].roi.box)  # a still sign: the prediction stays put
    once = DetectRoi(Localizer(red_bundle), every=1)
    assert [len(once.get_all(t, f)) for t, f in enumerate([frame_with_red([(3, 2)]), blank])] == [1, 0]


def test_run_roi_detect_logs_one_record_per_sign_with_its_track(red_bundle: Path, colour_bundle: Path,
                                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`signguard run --roi detect`: two red signs walking across a folder of frames, localizer every 2nd frame;
    the colour classifier reads each crop; the ground-truth CSV labels the sign that is in it."""
    import argparse
    import json

    import cv2

    from edge import cli
    from edge.framelog import read_log

    folder = tmp_path / "frames"
    folder.mkdir()
    rows = ["frame,x,y,w,h,class_id,class_name"]
    for t in range(6):
        j = 1 + t // 2
        cv2.imwrite(str(folder / ("%03d.png" % t)), frame_with_red([(2, j), (6, 6)]))
        rows.append("%d,%g,%g,%g,%g,0,red" % (t, (j + 0.5) * 80 - 80, 2.5 * 45 - 45, 160, 90))
    (tmp_path / "gt.csv").write_text("\n".join(rows) + "\n")
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    log, video = tmp_path / "f.jsonl", tmp_path / "out.avi"
    args = p.parse_args(["--bundle", str(colour_bundle), "--source", str(folder), "--roi", "detect", "--localizer",
                         str(red_bundle), "--detect-every", "2", "--gt", str(tmp_path / "gt.csv"), "--log", str(log),
                         "--output", str(video), "--quiet"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "frames    6 (12 classified)" in out and "accuracy  1.000 (6/6" in out and "localize" in out
    recs = [r for r in read_log(log) if "event" not in r]
    assert len(recs) == 12 and {r["track_id"] for r in recs} == {1, 2}
    assert all(r["pred"] == "red" for r in recs) and [r["detected"] for r in recs[::2]] == [True, False] * 3
    assert sum(r["gt"] == "red" for r in recs) == 6 and all("localize" in r["latency_ms"] for r in recs)
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    bad = p.parse_args(["--bundle", str(colour_bundle), "--source", str(folder), "--roi", "detect"])
    with pytest.raises(SignguardError, match="--localizer"):
        cli.run(bad)
    json.dumps(recs)  # every record stays plain JSON
