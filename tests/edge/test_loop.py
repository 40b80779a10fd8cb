"""The device loop end to end: colour order, per-frame JSONL, accuracy, SIGINT, annotated video."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pytest

from edge.bundle import load_bundle
from edge.framelog import RECORD_KEYS, read_log
from edge.loop import run_loop
from edge.preprocess import PreprocessConfig, preprocess
from edge.rois import CsvRoi, StaticRoi
from edge.sources import open_source

from .helpers import COLOUR_CLASSES, colour_frame, colour_weights, write_bundle, write_video

# frame -> (colour drawn, CSV row or None); frame 5 has no row, frame 6 is labelled wrongly on purpose,
# frame 7 carries only class_id (2 = blue).
SCRIPT = [
    ("red", "red"), ("green", "green"), ("blue", "blue"), ("red", "red"),
    ("green", "green"), ("blue", None), ("red", "green"), ("blue", 2),
]


def _frames(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in records if "event" not in r]


def _box(i: int) -> Tuple[int, int, int, int]:
    return (8 + 6 * i, 12 + 2 * i, 24, 24)


@pytest.fixture()
def drive(tmp_path: Path) -> Tuple[Path, Path]:
    """A generated video with one coloured 'sign' per frame and its per-frame box CSV."""
    frames = [colour_frame(colour, _box(i)) for i, (colour, _) in enumerate(SCRIPT)]
    video = write_video(tmp_path / "drive.avi", frames)
    lines = ["frame,x,y,w,h,class_id,class_name"]
    for i, (_, label) in enumerate(SCRIPT):
        if label is None:
            continue
        cid, name = (str(label), "") if isinstance(label, int) else (str(COLOUR_CLASSES.index(label)), label)
        lines.append("%d,%d,%d,%d,%d,%s,%s" % ((i,) + _box(i) + (cid, name)))
    csv = tmp_path / "boxes.csv"
    csv.write_text("\n".join(lines) + "\n")
    return video, csv


def test_preprocess_colour_order_bgr_frames_give_rgb_inputs(colour_bundle: Path) -> None:
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[:, :16] = (255, 0, 0)  # pure blue in OpenCV's BGR
    x = preprocess(frame, None, PreprocessConfig(color_order="BGR"))
    assert x.shape == (3, 32, 32)
    assert np.all(x[2, :, :16] == 1.0) and np.all(x[0] == 0.0) and np.all(x[1] == 0.0)
    b = load_bundle(colour_bundle)
    assert COLOUR_CLASSES[int(np.argmax(b.classify(x[None])[0]))] == "blue"
    swapped = preprocess(frame, None, PreprocessConfig(color_order="RGB"))  # the bug this contract prevents
    assert COLOUR_CLASSES[int(np.argmax(b.classify(swapped[None])[0]))] == "red"


def test_loop_logs_every_frame_and_scores_against_gt(colour_bundle: Path, drive: Tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    video, csv = drive
    log_path = tmp_path / "run" / "frames.jsonl"
    out_path = tmp_path / "annotated.avi"
    seen: List[int] = []

    def progress(count: int, record: Dict[str, Any]) -> None:
        # flushed per frame: the file already holds every record so far while the loop runs
        seen.append(len(_frames(read_log(log_path))))
        assert seen[-1] == count

    with open_source(str(video)) as src:
        s = run_loop(load_bundle(colour_bundle), src, CsvRoi(csv), log_path=str(log_path), out_video=str(out_path),
                     topk=2, progress=progress)
    assert seen == list(range(1, 9))
    assert (s.frames, s.classified, s.labelled, s.correct) == (8, 7, 7, 6)
    assert s.accuracy == pytest.approx(6 / 7)
    assert s.predictions == {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 6: 0, 7: 2}
    assert set(s.latency_ms) == {"capture", "queue", "preprocess", "infer", "total"} and s.fps > 0
    assert s.timings_ms["gate"] is None and s.timings_ms["infer"]["n"] == 7 and s.timings_ms["total"]["n"] == 8
    assert all(s.timings_ms[k]["p50"] <= s.timings_ms[k]["p99"] for k in ("capture", "preprocess", "infer", "total"))
    assert not s.interrupted and s.stop_reason == "eof" and s.dropped == 0 and s.roi_missing == 0
    assert json.loads(json.dumps(s.to_dict()))["predictions"]["7"] == 2

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    start, records, end = lines[0], lines[1:-1], lines[-1]
    assert start["event"] == "start" and start["classes"] == COLOUR_CLASSES and start["bundle"] == "tiny-test"
    assert end["event"] == "end" and end["reason"] == "eof" and end["frames"] == 8
    assert len(records) == 8 and [r["frame"] for r in records] == list(range(8))
    # the frame record's keys, in order, unchanged; "batch" (frames classified together) is the only addition here
    assert all(tuple(r)[:len(RECORD_KEYS)] == RECORD_KEYS and set(r) - set(RECORD_KEYS) <= {"batch"}
               for r in records)
    r0, r5, r6, r7 = records[0], records[5], records[6], records[7]
    assert r0["roi"] == list(_box(0)) and r0["pred"] == "red" and r0["gt"] == "red" and r0["gate"] is None
    assert len(r0["topk"]) == 2 and r0["topk"][0]["index"] == 0 and 0.33 < r0["topk"][0]["score"] <= 1.0
    assert set(r0["latency_ms"]) == {"capture", "queue", "preprocess", "infer", "total"}
    assert r5["roi"] is None and r5["pred"] is None and r5["topk"] == [] and r5["gt"] is None
    assert (r6["pred"], r6["gt"]) == ("red", "green")
    assert (r7["pred"], r7["gt"]) == ("blue", "blue")

    cap = cv2.VideoCapture(str(out_path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    assert len(frames) == 8 and frames[0].shape == (64, 96, 3)
    x, y, w, h = _box(0)
    edge_px = frames[0][y - 1, x + 4:x + w - 4].astype(float).mean(axis=0)  # grey background before drawing
    assert edge_px[1] - max(edge_px[0], edge_px[2]) > 40, edge_px  # green tight box (pred == gt); grey gives ~0


def test_manifest_rgb_colour_order_is_converted_for_bgr_frames(tmp_path: Path) -> None:
    """color_order names the incoming array; a bundle recorded with RGB arrays still gets BGR frames right."""
    cfg = PreprocessConfig(color_order="RGB").to_dict()
    bundle = write_bundle(tmp_path / "b", [("model.onnx", "fp32", colour_weights())], COLOUR_CLASSES, preprocess=cfg)
    frames = [(0, colour_frame("blue", (30, 10, 30, 30)))]
    s = run_loop(load_bundle(bundle), frames, StaticRoi("30,10,30,30"))
    assert s.predictions == {0: 2}


def _interrupting(frames: List[np.ndarray], at: int) -> Iterator[Tuple[int, Optional[np.ndarray]]]:
    for i, f in enumerate(frames):
        if i == at:
            os.kill(os.getpid(), signal.SIGINT)
        yield i, f


def test_sigint_stops_cleanly_with_a_partial_summary(colour_bundle: Path, tmp_path: Path) -> None:
    frames = [colour_frame("green", (10, 10, 20, 20)) for _ in range(20)]
    before = signal.getsignal(signal.SIGINT)
    log_path = tmp_path / "f.jsonl"
    s = run_loop(load_bundle(colour_bundle), _interrupting(frames, 4), StaticRoi("10,10,20,20"),
                 log_path=str(log_path))
    assert s.interrupted and s.frames == 5 and s.classified == 5 and s.accuracy is None
    assert len(_frames(read_log(log_path))) == 5
    assert signal.getsignal(signal.SIGINT) is before


def test_dropped_frames_are_skipped_and_max_frames_stops(colour_bundle: Path) -> None:
    f = colour_frame("red", (10, 10, 20, 20))
    src = [(0, f), (1, None), (2, f), (3, f), (4, f)]
    s = run_loop(load_bundle(colour_bundle), src, StaticRoi("10,10,20,20"), max_frames=3)
    assert s.frames == 3 and sorted(s.predictions) == [0, 2, 3]


def test_box_outside_the_frame_is_logged_not_fatal(colour_bundle: Path) -> None:
    f = colour_frame("red", (10, 10, 20, 20))
    s = run_loop(load_bundle(colour_bundle), [(0, f)], StaticRoi("500,500,20,20"))
    assert s.frames == 1 and s.classified == 0
