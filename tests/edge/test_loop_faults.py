"""Issue 14's faults in the device loop: outputs over inputs (1), damaged videos (8), SIGTERM (10), ROI CSVs
that miss the video (11), exit codes of Ctrl-C and SIGTERM (17)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import cv2
import numpy as np
import pytest

from edge import cli
from edge.bundle import load_bundle
from edge.errors import SignguardError
from edge.loop import run_loop
from edge.rois import CsvRoi, StaticRoi
from edge.sources import FrameSource, open_source

from .helpers import COLOUR_CLASSES, colour_frame, write_video
from .mjpeg_server import serve_in_thread, stop

REPO = Path(__file__).resolve().parents[2]
COLOURS = ("red", "green", "blue")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="signguard run")
    cli.add_arguments(p)
    return p


def _drive(tmp_path: Path, n: int = 12) -> Tuple[Path, Path]:
    """An MJPG video whose frame i shows colour i % 3 in a box, and its full ROI CSV."""
    frames = [colour_frame(COLOURS[i % 3], (10 + i, 10, 30, 30)) for i in range(n)]
    video = write_video(tmp_path / "drive.avi", frames)
    csv = tmp_path / "boxes.csv"
    csv.write_text("frame,x,y,w,h,class_name\n" + "".join(
        "%d,%d,10,30,30,%s\n" % (i, 10 + i, COLOURS[i % 3]) for i in range(n)))
    return video, csv


def _records(log: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


# -- fault 1: an output that is an input -------------------------------------------------------------------------

def test_outputs_that_resolve_to_inputs_are_refused_and_inputs_stay_intact(colour_bundle: Path,
                                                                          tmp_path: Path) -> None:
    video, csv = _drive(tmp_path)
    before = {p: p.read_bytes() for p in (video, csv)}
    (tmp_path / "sub").mkdir()
    os.symlink(str(video), str(tmp_path / "link.avi"))
    os.link(str(video), str(tmp_path / "hard.avi"))
    base = ["--bundle", str(colour_bundle), "--source", str(video), "--roi", str(csv)]
    cases = [
        (["--output", str(video)], "--output .* is the --source input"),
        (["--output", str(tmp_path / "sub" / ".." / "drive.avi")], "is the --source input"),
        (["--output", str(tmp_path / "link.avi")], "is the --source input"),
        (["--output", str(tmp_path / "hard.avi")], "is the --source input"),
        (["--log", str(csv)], "--log .* is the --roi input"),
        (["--log", str(colour_bundle / "frames.jsonl")], "is inside the --bundle folder"),
        (["--log", str(tmp_path / "a.mp4"), "--output", str(tmp_path / "a.mp4")], "are the same path"),
    ]
    for extra, pattern in cases:
        with pytest.raises(SignguardError, match=pattern):
            cli.run(_parser().parse_args(base + extra))
    assert all(p.read_bytes() == b for p, b in before.items())
    assert not (colour_bundle / "frames.jsonl").exists()


# -- fault 8: a damaged video that still opens -------------------------------------------------------------------

def test_frames_that_fail_to_decode_are_reported_and_later_frames_stay_aligned(
        colour_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video, csv = _drive(tmp_path)
    data = bytearray(video.read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG starts
    assert len(soi) == 12
    data[soi[4] + 2:soi[5] - 30] = bytes(soi[5] - 32 - soi[4])  # frame 4's JPEG payload overwritten
    video.write_bytes(bytes(data))
    log = tmp_path / "f.jsonl"
    with caplog.at_level(logging.WARNING), open_source(str(video)) as src:
        s = run_loop(load_bundle(colour_bundle), src, CsvRoi(csv), log_path=str(log))
    events = [r for r in _records(log) if r.get("event") == "decode_error"]
    assert len(events) == 1 and events[0]["frame"] == 4 and events[0]["lost"] == 1
    assert sorted(s.predictions) == [0, 1, 2, 3] + list(range(5, 12))
    assert all(COLOUR_CLASSES[p] == COLOURS[i % 3] for i, p in s.predictions.items())  # indices still aligned
    assert s.accuracy == 1.0 and s.roi_missing == 1 and s.events == {"decode_error": 1}
    assert any("could not be decoded" in w for w in s.warnings)
    assert any("never arrived from the source: 4" in w for w in s.warnings)
    assert "frame 4 could not be decoded" in caplog.text


def test_a_video_cut_short_reports_where_decoding_stopped(colour_bundle: Path, tmp_path: Path) -> None:
    video, csv = _drive(tmp_path)
    data = video.read_bytes()
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    video.write_bytes(data[:soi[7] + 50])  # the AVI cut in the middle of frame 7
    log = tmp_path / "f.jsonl"
    with open_source(str(video)) as src:
        s = run_loop(load_bundle(colour_bundle), src, CsvRoi(csv), log_path=str(log))
    ended = [r for r in _records(log) if r.get("event") == "ended_early"]
    assert len(ended) == 1 and ended[0]["frame"] == 7 and ended[0]["declared"] == 12
    assert s.frames == 7 and s.roi_missing == 5 and s.accuracy == 1.0
    assert any("decoding stopped after 7 of the 12 frames" in w for w in s.warnings)
    assert any("5 frame(s) that never arrived from the source: 7..11" in w for w in s.warnings)


def test_the_second_half_of_an_mp4_is_counted_against_the_roi_csv(colour_bundle: Path, tmp_path: Path) -> None:
    rng = np.random.RandomState(1)
    frames = [np.clip(colour_frame(COLOURS[i % 3], (20, 10, 30, 30)).astype(int)
                      + rng.randint(-30, 31, (64, 96, 3)), 0, 255).astype(np.uint8) for i in range(40)]
    mp4 = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    data = mp4.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[len(data) // 2:])
    csv = tmp_path / "boxes.csv"
    csv.write_text("frame,x,y,w,h\n" + "".join("%d,20,10,30,30\n" % i for i in range(40)))
    try:
        src = open_source(str(half))
    except SignguardError:
        pytest.skip("this OpenCV/FFmpeg refuses the half file outright (also a correct outcome)")
    with src:
        s = run_loop(load_bundle(colour_bundle), src, CsvRoi(csv))
    assert s.frames < 40 and s.roi_missing == 40 - s.frames
    assert any("never arrived" in w for w in s.warnings)


# -- fault 11: an ROI CSV for another video ------------------------------------------------------------------------

def test_roi_csv_that_covers_none_of_the_frames_is_a_warning(colour_bundle: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    video, _ = _drive(tmp_path)
    csv = tmp_path / "other.csv"
    csv.write_text("frame,x,y,w,h,class_name\n" + "".join("%d,10,10,30,30,red\n" % i for i in range(100, 106)))
    with caplog.at_level(logging.WARNING), open_source(str(video)) as src:
        s = run_loop(load_bundle(colour_bundle), src, CsvRoi(csv))
    assert s.frames == 12 and s.classified == 0 and s.accuracy is None and s.roi_missing == 6
    assert any("covers none of the 12 frames read" in w and "100..105" in w for w in s.warnings)
    assert "none of its frames is among the 12 frames" in caplog.text  # said at the start, too


# -- fault 10: SIGTERM is handled like SIGINT ----------------------------------------------------------------------

class Camera(FrameSource):
    """An endless source read in the decode thread; at frame ``at`` it waits until the loop has logged a
    frame (``seen``, set by the test's progress callback) and then sends ``sig`` to this process."""

    live = False
    uri = "camera://test"
    fps = 10.0

    def __init__(self, sig: int, at: int) -> None:
        self.sig, self.at = sig, at
        self.seen = threading.Event()

    def __iter__(self) -> Iterator[Tuple[int, np.ndarray]]:
        i = 0
        while True:
            if i == self.at:
                assert self.seen.wait(120)
                os.kill(os.getpid(), self.sig)
            yield i, colour_frame(COLOURS[i % 3], (20, 10, 30, 30))
            i += 1


def test_sigterm_stops_cleanly_with_a_playable_video_and_a_complete_log(colour_bundle: Path, tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    log, out = tmp_path / "f.jsonl", tmp_path / "annotated.mp4"
    camera = Camera(signal.SIGTERM, 5)
    s = run_loop(load_bundle(colour_bundle), camera, StaticRoi("20,10,30,30"), log_path=str(log),
                 out_video=str(out), progress=lambda n, r: camera.seen.set())
    assert s.interrupted and s.stop_reason == "SIGTERM" and s.stop_signal == signal.SIGTERM and s.frames >= 1
    records = _records(log)
    assert records[-1]["event"] == "end" and records[-1]["reason"] == "SIGTERM"
    assert records[-1]["frames"] == s.frames == len([r for r in records if "event" not in r])
    assert _video_frames(out) == s.frames  # the mp4 was finalised (moov atom written): it plays
    assert signal.getsignal(signal.SIGTERM) is before


# -- fault 17 (and 10 as systemd does it): exit codes of `signguard run` -----------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signguard_run_exits_128_plus_signal_with_summary_video_and_log(colour_bundle: Path, tmp_path: Path,
                                                                       sig: int, code: int) -> None:
    jpeg = cv2.imencode(".jpg", colour_frame("green", (0, 0, 96, 64)))[1].tobytes()
    server, url = serve_in_thread(jpeg, interval_s=0.02)
    log, out = tmp_path / "f.jsonl", tmp_path / "annotated.mp4"
    cmd = [sys.executable, "-m", "signguard", "run", "--bundle", str(colour_bundle), "--source", url,
           "--roi", "20,10,30,30", "--log", str(log), "--output", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2400):  # wait (at most ~2 min on a loaded machine) until frames are being logged
            if log.exists() and log.read_text().count('"topk"') >= 3 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(server)
    assert proc.returncode == code, stderr
    assert "interrupted" in stdout and "Traceback" not in stderr
    records = _records(log)
    frames = [r for r in records if "event" not in r]
    assert records[-1]["event"] == "end" and records[-1]["reason"] == signal.Signals(sig).name
    assert len(frames) >= 3 and _video_frames(out) == len(frames)
    assert {r["pred"] for r in frames} == {"green"}
