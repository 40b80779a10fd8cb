"""The frame log under hostile use: concurrent runs, unwritable targets, an existing log, a torn last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import cv2
import pytest

from edge.errors import SignguardError
from edge.framelog import FrameLog, make_record, read_log
from signguard.cli import main

from .helpers import colour_frame

REPO = Path(__file__).resolve().parents[2]
N_FRAMES = 6


def _record(i: int) -> dict:
    return make_record(i, (1, 2, 3, 4), [], None, None, {"total": 1.0}, ts=100.0 + i)


@pytest.fixture()
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(N_FRAMES):
        cv2.imwrite(str(folder / ("%03d.png" % i)), colour_frame(("red", "green", "blue")[i % 3], (24, 8, 48, 48)))
    return folder


def _run(bundle: Path, source: Path, log: object, *extra: str) -> List[str]:
    return ["run", "--bundle", str(bundle), "--source", str(source), "--log", str(log), "--quiet", *extra]


def _frame_records(path: Path) -> list:
    return [r for r in read_log(path) if "frame" in r and "event" not in r]


def _one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_a_log_held_by_another_writer_is_refused(colour_bundle: Path, frames: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Fault 4: while one run holds the log, a second one (even with --append) is refused, not interleaved."""
    log = tmp_path / "f.jsonl"
    with FrameLog(log) as held:
        held.write(_record(0))
        assert main(_run(colour_bundle, frames, log, "--append")) == 1
        _one_line_error(capsys, str(log), "another process is writing")
        with pytest.raises(SignguardError, match="locked"):
            FrameLog(log, append=True)
        held.write(_record(1))
    assert [r["frame"] for r in read_log(log)] == [0, 1]
    assert main(_run(colour_bundle, frames, log, "--append")) == 0  # released on close
    assert [r["frame"] for r in _frame_records(log)] == [0, 1] + list(range(N_FRAMES))


def test_concurrent_runs_never_splice_the_log(colour_bundle: Path, frames: Path, tmp_path: Path) -> None:
    """Fault 4, as filed: three processes given one --log.  Whatever the timing, exactly one writes it (the
    others are refused: locked, or it already exists) and every line parses."""
    log = tmp_path / "f.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "signguard", *_run(colour_bundle, frames, log)], cwd=str(REPO),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 1, 1], results
    for code, err in results:
        if code:
            assert len(err.strip().splitlines()) == 1 and str(log) in err, err
            assert "another process is writing" in err or "already exists" in err, err
    assert [r["frame"] for r in _frame_records(log)] == list(range(N_FRAMES))


def _can_create_in(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        os.close(os.open(str(probe), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.mark.parametrize("kind", ["folder", "/dev/full", "read-only folder"])
def test_an_unwritable_log_is_one_line(kind: str, colour_bundle: Path, frames: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    """Fault 5: a folder, a full device, a folder we may not write into: one line naming the path, exit 1."""
    if kind == "folder":
        target, needle = tmp_path / "logs", "is a folder"
        target.mkdir()
    elif kind == "/dev/full":
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        target, needle = Path("/dev/full"), "No space left on device"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        if _can_create_in(ro):  # root ignores mode bits: use a folder the kernel refuses even to root
            ro = Path("/sys")
            if not ro.is_dir() or _can_create_in(ro):
                pytest.skip("no folder here that this user cannot write into")
        target, needle = ro / "f.jsonl", "Permission denied"
    assert main(_run(colour_bundle, frames, target)) == 1
    _one_line_error(capsys, str(target), needle)


def test_an_existing_log_is_refused_unless_appending(colour_bundle: Path, frames: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Fault 18: an earlier drive-by's log is not truncated; --append adds to it."""
    log = tmp_path / "f.jsonl"
    assert main(_run(colour_bundle, frames, log)) == 0
    before = log.read_bytes()
    assert main(_run(colour_bundle, frames, log)) == 1
    _one_line_error(capsys, str(log), "already exists", "--append")
    assert log.read_bytes() == before
    assert main(_run(colour_bundle, frames, log, "--append")) == 0
    assert log.read_bytes().startswith(before)
    assert [r["frame"] for r in _frame_records(log)] == list(range(N_FRAMES)) * 2
    args = ["run", "--bundle", str(colour_bundle), "--source", str(frames), "--append"]
    assert main(args) == 1
    _one_line_error(capsys, "--append", "--log")


def test_append_after_a_torn_line_starts_a_new_line(tmp_path: Path) -> None:
    """A run killed mid-record leaves a line without its newline; appending must not glue onto it."""
    log = tmp_path / "f.jsonl"
    with FrameLog(log) as f:
        f.write(_record(0))
    with open(str(log), "a") as raw:
        raw.write(json.dumps(_record(1))[:25])
    with FrameLog(log, append=True) as f:
        f.write(_record(2))
    assert [r["frame"] for r in read_log(log)] == [0, 2]
    assert log.read_text().count("\n") == 2


def test_empty_existing_file_is_used_and_a_corrupt_line_is_one_error(tmp_path: Path) -> None:
    log = tmp_path / "f.jsonl"
    log.write_bytes(b"")  # e.g. made by mktemp: nothing to lose
    with FrameLog(log) as f:
        f.write(_record(0))
    assert f.closed and f.count == 1
    log.write_text(log.read_text() + '{"frame": 1, "ts"\n')
    with pytest.raises(SignguardError, match=r"f\.jsonl:2: not a JSON record"):
        read_log(log)
