"""Live sources against a real local MJPEG-over-HTTP server: timeouts, reconnection with backoff, events.

The server (tests/edge/mjpeg_server.py, standard library only) runs as its own process so that it can
be killed (SIGKILL: no goodbye on the socket) and started again on the same port mid-run.  Nothing here
reads a clock: the assertions are on event counts, frame indices and which server's frames (red or
blue) were logged where.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import pytest

from edge import cli
from edge.bundle import load_bundle
from edge.errors import ConfigError, SourceError
from edge.live import LiveConfig, LiveSource, live_config_from_options
from edge.loop import run_loop
from edge.rois import StaticRoi
from edge.sources import open_source

from .helpers import colour_frame

SERVER = Path(__file__).with_name("mjpeg_server.py")
ROI = "4,4,24,24"  # near the top of the frame: even a frame cut short by a kill decodes there


def _jpeg(tmp_path: Path, colour: str) -> Path:
    p = tmp_path / ("%s.jpg" % colour)
    frame = colour_frame(colour, (0, 0, 96, 64))  # the whole frame is the colour
    assert cv2.imwrite(str(p), frame)
    return p


class Server:
    """One server process; ``start`` blocks until it listens (it prints ``ready <port>``)."""

    def __init__(self, jpeg: Path, port: int = 0, stall_after: Optional[int] = None) -> None:
        cmd = [sys.executable, str(SERVER), "--port", str(port), "--jpeg", str(jpeg)]
        if stall_after is not None:
            cmd += ["--stall-after", str(stall_after)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.startswith("ready "), "MJPEG server did not start: %r" % line
        self.port = int(line.split()[1])
        self.url = "http://127.0.0.1:%d/video.mjpg" % self.port

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture()
def servers() -> Any:
    started: List[Server] = []

    def start(*args: Any, **kwargs: Any) -> Server:
        started.append(Server(*args, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def _split(log: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


FAST = dict(open_timeout_s=5.0, read_timeout_s=5.0, backoff_s=0.02, backoff_max_s=0.2)


def test_backoff_doubles_up_to_its_cap_and_options_are_checked() -> None:
    cfg = LiveConfig()
    assert cfg.open_timeout_s <= 10 and cfg.read_timeout_s <= 10  # never OpenCV's 30 s default
    assert [cfg.backoff(k) for k in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(ConfigError, match="--read-timeout: expected a number in"):
        live_config_from_options(5.0, 0.0, 3)
    with pytest.raises(ConfigError, match="--max-reconnects: expected an integer >= 0, got -1"):
        live_config_from_options(5.0, 5.0, -1)
    with pytest.raises(ConfigError, match="backoff_max_s"):
        LiveConfig(backoff_s=2.0, backoff_max_s=1.0)


def test_server_that_accepts_but_never_answers_fails_within_the_open_timeout() -> None:
    """Fault 12: a listening socket that never answers used to hold the run for OpenCV's 30 s default."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)  # the kernel completes the handshake; nobody ever reads or answers
    url = "http://127.0.0.1:%d/video.mjpg" % sock.getsockname()[1]
    try:
        with pytest.raises(SourceError) as e:
            open_source(url, live=LiveConfig(open_timeout_s=0.5, read_timeout_s=0.5))
    finally:
        sock.close()
    assert url in str(e.value) and "0.5 s open timeout" in str(e.value)


def test_killed_and_restarted_server_reconnects_and_logs_no_frame_during_the_outage(
        colour_bundle: Path, tmp_path: Path, servers: Any) -> None:
    red, blue = _jpeg(tmp_path, "red"), _jpeg(tmp_path, "blue")
    first = servers(red)
    events: List[str] = []
    state: Dict[str, Any] = {"killed_at": None, "second": None}

    def progress(count: int, record: Dict[str, Any]) -> None:
        if count == 10 and state["killed_at"] is None:
            first.kill()  # SIGKILL mid-run
            state["killed_at"] = record["frame"]

    def on_event(record: Dict[str, Any]) -> None:
        events.append(record["event"])
        if record["event"] == "reconnect_failed" and state["second"] is None:
            state["second"] = servers(blue, port=first.port)  # back, on the same port, with other frames

    log = tmp_path / "live.jsonl"
    with open_source(first.url, live=LiveConfig(max_reconnects=1000, **FAST)) as src:
        assert isinstance(src, LiveSource) and src.live
        s = run_loop(load_bundle(colour_bundle), src, StaticRoi(ROI), log_path=str(log), max_frames=30,
                     progress=progress, on_event=on_event)
    lines = _split(log)
    kinds = [r.get("event", "frame") for r in lines]
    assert kinds[0] == "start" and kinds[-1] == "end" and lines[-1]["reason"] == "max_frames"
    assert kinds.count("disconnect") == 1 and kinds.count("reconnect") == 1 and kinds.count("reconnect_failed") >= 1
    down, up = kinds.index("disconnect"), kinds.index("reconnect")
    assert set(kinds[down + 1:up]) == {"reconnect_failed"}  # no frame logged during the outage
    before = [r for r in lines[:down] if "event" not in r]
    after = [r for r in lines[up:] if "event" not in r]
    assert len(before) >= 10 and len(before) + len(after) == 30 == s.frames
    assert {r["pred"] for r in before} == {"red"} and {r["pred"] for r in after} == {"blue"}
    frames = [r["frame"] for r in before + after]
    assert frames == sorted(set(frames))  # indices never repeat across the outage
    assert lines[down]["frame"] == before[-1]["frame"]
    assert lines[up]["attempt"] == kinds[down + 1:up].count("reconnect_failed") + 1
    assert s.reconnects == 1 and not s.source_lost and s.events["disconnect"] == 1
    assert events == [k for k in kinds if k not in ("frame", "start", "end")]


def test_stalled_stream_ends_the_run_with_an_error_after_max_reconnects(colour_bundle: Path, tmp_path: Path,
                                                                       servers: Any) -> None:
    """Fault 12: a stream that stalls mid-run used to wait 30 s and then exit 0."""
    server = servers(_jpeg(tmp_path, "green"), stall_after=5)
    log = tmp_path / "stall.jsonl"
    p = cli_parser()
    args = p.parse_args(["--bundle", str(colour_bundle), "--source", server.url, "--roi", ROI, "--log", str(log),
                         "--read-timeout", "0.5", "--open-timeout", "2", "--max-reconnects", "0", "--quiet"])
    with pytest.raises(SourceError, match="the source was lost"):
        cli.run(args)
    lines = _split(log)
    kinds = [r.get("event", "frame") for r in lines]
    assert kinds.count("frame") == 5  # the frames it sent before hanging
    assert kinds[-3:] == ["disconnect", "gave_up", "end"] and lines[-1]["reason"] == "source_lost"


def test_server_that_never_returns_gives_up_after_max_reconnects(colour_bundle: Path, tmp_path: Path,
                                                                servers: Any) -> None:
    server = servers(_jpeg(tmp_path, "red"))

    def progress(count: int, record: Dict[str, Any]) -> None:
        if count == 3:
            server.kill()

    log = tmp_path / "gone.jsonl"
    with open_source(server.url, live=LiveConfig(max_reconnects=3, **FAST)) as src:
        s = run_loop(load_bundle(colour_bundle), src, StaticRoi(ROI), log_path=str(log), progress=progress)
    kinds = [r.get("event", "frame") for r in _split(log)]
    tail = kinds[kinds.index("disconnect"):]
    assert tail == ["disconnect", "reconnect_failed", "reconnect_failed", "reconnect_failed", "gave_up", "end"]
    assert s.source_lost and s.stop_reason == "source_lost" and s.events["reconnect_failed"] == 3
    assert s.frames == kinds.count("frame") >= 3


def cli_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(prog="signguard run")
    cli.add_arguments(p)
    return p
