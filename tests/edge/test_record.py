"""Field-test recordings: `run --record DIR` saves the raw frames losslessly; `--source DIR` replays them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest

from edge import cli
from edge.bundle import load_bundle
from edge.errors import SignguardError
from edge.loop import run_loop
from edge.record import RecordingSource
from edge.rois import CsvRoi, StaticRoi
from edge.sources import open_source, parse_source

from .helpers import colour_frame, write_video

REPO = Path(__file__).resolve().parents[2]


def _noisy_video(tmp_path: Path, n: int = 12) -> Path:
    """Frames with texture (so a lossy copy would show) and a coloured square that moves."""
    rng = np.random.RandomState(0)
    frames = []
    for i in range(n):
        f = colour_frame(("red", "green", "blue")[i % 3], (8 + 3 * i, 10, 28, 28))
        f = np.clip(f.astype(int) + rng.randint(-20, 21, f.shape), 0, 255).astype(np.uint8)
        frames.append(f)
    return write_video(tmp_path / "drive.avi", frames)


def _decoded(video: Path) -> List[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def _frames(log: Path) -> List[Dict[str, Any]]:
    return [r for r in (json.loads(line) for line in log.read_text().splitlines()) if "event" not in r]


def test_record_then_replay_with_another_bundle_is_pixel_exact(colour_bundle: Path, tiny_bundle: Path,
                                                              tmp_path: Path) -> None:
    video = _noisy_video(tmp_path)
    rec = tmp_path / "rec"
    with open_source(str(video)) as src:
        s = run_loop(load_bundle(colour_bundle), src, StaticRoi("20,10,28,28"), record_dir=str(rec))
    assert s.recorded == 12
    meta = json.loads((rec / "recording.json").read_text())
    assert meta["complete"] and meta["frames"] == 12 and meta["fps"] == pytest.approx(10.0)
    assert parse_source(str(rec)).kind == "recording"
    with open_source(str(rec)) as replay:
        assert isinstance(replay, RecordingSource) and replay.fps == pytest.approx(10.0)
        got = list(replay)
        assert sorted(replay.timestamps) == list(range(12))
    original = _decoded(video)
    assert [i for i, _ in got] == list(range(12))
    assert all(np.array_equal(f, o) for (_, f), o in zip(got, original))  # lossless: the same pixels
    # any bundle: the replay and the original give the same per-frame outputs
    logs = []
    for name, source in (("orig", str(video)), ("replay", str(rec))):
        log = tmp_path / ("%s.jsonl" % name)
        with open_source(source) as src:
            run_loop(load_bundle(tiny_bundle), src, StaticRoi("20,10,28,28"), log_path=str(log))
        logs.append([(r["frame"], r["topk"]) for r in _frames(log)])
    assert logs[0] == logs[1] and len(logs[0]) == 12


def test_replay_keeps_the_source_indices_of_a_live_run_with_gaps(colour_bundle: Path, tmp_path: Path) -> None:
    frames = [(0, colour_frame("red", (0, 0, 30, 30))), (3, colour_frame("green", (0, 0, 30, 30))),
              (7, colour_frame("blue", (0, 0, 30, 30)))]  # what a live source delivers after dropping some
    rec = tmp_path / "gaps"
    run_loop(load_bundle(colour_bundle), frames, StaticRoi("0,0,30,30"), record_dir=str(rec))
    csv = tmp_path / "gt.csv"
    csv.write_text("frame,x,y,w,h,class_name\n0,0,0,30,30,red\n3,0,0,30,30,green\n7,0,0,30,30,blue\n")
    with open_source(str(rec)) as replay:
        s = run_loop(load_bundle(colour_bundle), replay, CsvRoi(csv))
    assert s.predictions == {0: 0, 3: 1, 7: 2} and s.accuracy == 1.0 and s.roi_missing == 0


def test_record_refuses_a_folder_that_is_not_empty(colour_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("an earlier drive")
    with pytest.raises(SignguardError, match="folder is not empty"):
        run_loop(load_bundle(colour_bundle), [(0, colour_frame("red", (0, 0, 9, 9)))], StaticRoi("0,0,9,9"),
                 record_dir=str(tmp_path / "old"))
    assert (tmp_path / "old" / "keep.txt").read_text() == "an earlier drive"


KILLED = r"""
import os, sys, time
import numpy as np
from edge.record import Recorder
r = Recorder(sys.argv[1], "camera", 10.0)
for i in range(8):
    r.add(i, 1000.0 + i, np.full((48, 64, 3), 30 * i, np.uint8))
r._queue.put(None)
r._thread.join()  # the writer has written every frame ...
os._exit(0)       # ... and the process dies without closing the recording
"""


def test_a_killed_recording_still_replays_every_frame_it_listed(tmp_path: Path) -> None:
    rec = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", KILLED, str(rec)], check=True, env=env, cwd=str(REPO), timeout=120)
    assert json.loads((rec / "recording.json").read_text())["complete"] is False
    with open(str(rec / "frames.csv"), "a") as f:
        f.write("8,1008.0,000")  # a row torn by the kill
    with open_source(str(rec)) as replay:
        got = list(replay)
    assert [i for i, _ in got] == list(range(8)) and [int(f[0, 0, 0]) for _, f in got] == [30 * i for i in range(8)]


def test_cli_record_and_replay(colour_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video = _noisy_video(tmp_path)
    p = __import__("argparse").ArgumentParser()
    cli.add_arguments(p)
    rec = tmp_path / "drive_rec"
    assert cli.run(p.parse_args(["--bundle", str(colour_bundle), "--source", str(video), "--record", str(rec),
                                 "--quiet"])) == 0
    assert "recording %s (12 frames)" % rec in capsys.readouterr().out
    log = tmp_path / "replay.jsonl"
    assert cli.run(p.parse_args(["--bundle", str(colour_bundle), "--source", str(rec), "--log", str(log),
                                 "--quiet"])) == 0
    assert [r["frame"] for r in _frames(log)] == list(range(12))
    with pytest.raises(SignguardError, match="--record .* contains the --source input"):
        cli.run(p.parse_args(["--bundle", str(colour_bundle), "--source", str(video), "--record", str(tmp_path)]))
