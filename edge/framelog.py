"""JSON Lines frame log: one record per frame, flushed as it is written.

Why per-record flushing: a field test on a device can lose power or be
killed at any time; the log must then hold every frame but the one in hand.
Each record is one unbuffered ``write`` to a file opened ``O_APPEND``;
``fsync=True`` also forces the bytes to storage (slower; for power loss
rather than a crash of the process).

Why a lock and no truncation: two runs given the same ``--log`` would
interleave and splice their lines, and a typo in ``--log`` would silently
destroy an earlier drive-by.  :class:`FrameLog` holds an exclusive
``flock`` for its lifetime and refuses a file another process holds, and it
refuses an existing non-empty file unless told to append (after dropping a
torn last line that a killed run left, so appended records start on a line
of their own).  Every failure to open or write is one
:class:`~edge.errors.SignguardError` naming the file.

Record keys (stable, read by the field-test report)::

    ts          unix time (float, seconds)
    frame       frame index in the source
    roi         [x, y, w, h] tight sign box, or null
    topk        [{"class": name, "index": i, "score": p}, ...] best first ([] without a ROI)
    pred        predicted class name, or null
    gt          true class name from the ROI CSV, or null
    gate        null, or {"score": float, "accepted": bool} when a gate runs
    latency_ms  {"capture", "preprocess", "infer", "total"}
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import SignguardError
from .fileio import PathLike

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RECORD_KEYS = ("ts", "frame", "roi", "topk", "pred", "gt", "gate", "latency_ms")
LATENCY_KEYS = ("capture", "preprocess", "infer", "total")


def make_record(
    frame: int,
    roi: Optional[Sequence[float]],
    topk: List[Dict[str, Any]],
    pred: Optional[str],
    gt: Optional[str],
    latency_ms: Dict[str, float],
    gate: Optional[Dict[str, Any]] = None,
    ts: Optional[float] = None,
) -> Dict[str, Any]:
    """A frame record with every key present, values rounded to keep lines short."""
    return {
        "ts": time.time() if ts is None else float(ts),
        "frame": int(frame),
        "roi": None if roi is None else [round(float(v), 2) for v in roi],
        "topk": topk,
        "pred": pred,
        "gt": gt,
        "gate": gate,
        "latency_ms": {k: round(float(latency_ms.get(k, 0.0)), 3) for k in LATENCY_KEYS},
    }


class FrameLog:
    """Append-only JSONL writer holding an exclusive lock; use as a context manager or call :meth:`close`.

    ``append=False`` (the default) refuses a non-empty existing file; ``append=True`` adds to it.
    """

    def __init__(self, path: PathLike, fsync: bool = False, append: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.count = 0
        self._fd = -1
        self._fd, self._regular = _open_locked(self.path, append)

    def write(self, record: Dict[str, Any]) -> None:
        """Write one record as one line, straight to the file (and to storage with ``fsync``)."""
        data = memoryview((json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8"))
        try:
            while data:
                data = data[os.write(self._fd, data):]
            if self.fsync and self._regular:
                os.fsync(self._fd)
        except OSError as e:
            raise SignguardError("%s: cannot write the frame log (%s)" % (self.path, e.strerror or e)) from None
        self.count += 1

    def close(self) -> None:
        """Close the file, which releases the lock."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __enter__(self) -> FrameLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open_locked(path: Path, append: bool) -> Tuple[int, bool]:
    """Open ``path`` for appending, take the lock, check it may be written; (fd, is a regular file)."""
    if path.is_dir():
        raise SignguardError("%s: is a folder; the frame log must be a file, e.g. %s" % (path, path / "frames.jsonl"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise SignguardError("%s: cannot open the frame log for writing (%s)" % (path, e.strerror or e)) from None
    try:
        _lock(fd, path)
        st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)
        if regular and st.st_size > 0:
            if not append:
                raise SignguardError("%s: already exists (%d bytes); refusing to overwrite a frame log -- pass "
                                     "--append to add to it, or choose a new file" % (path, st.st_size))
            _drop_torn_tail(fd, path, st.st_size)
    except BaseException:
        os.close(fd)
        raise
    return fd, regular


def _lock(fd: int, path: Path) -> None:
    """Exclusive, non-blocking ``flock``: a second writer is refused at once instead of splicing lines."""
    if fcntl is None:  # pragma: no cover - not POSIX
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SignguardError("%s: another process is writing this frame log (it is locked); wait for it to "
                             "finish or choose another file" % path) from None
    except OSError as e:  # a file system without flock (some network mounts)
        log.warning("%s: cannot lock the frame log (%s); concurrent runs could interleave", path, e.strerror or e)


def _drop_torn_tail(fd: int, path: Path, size: int, window: int = 1 << 16) -> None:
    """Truncate a last line without its newline (a run killed mid-write) so appended records start clean."""
    with open(str(path), "rb") as f:
        start = max(0, size - window)
        f.seek(start)
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut < 0 and start > 0:  # no newline in the window: look at the whole file
            f.seek(0)
            start, tail = 0, f.read()
            cut = tail.rfind(b"\n")
    keep = start + cut + 1
    os.ftruncate(fd, keep)
    log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", path, size - keep)


def read_log(path: PathLike) -> List[Dict[str, Any]]:
    """All complete records of a frame log (a torn last line from a crash is ignored); a complete line that
    is not JSON is a :class:`SignguardError` naming the file and line."""
    out = []
    with open(str(path), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise SignguardError("%s:%d: not a JSON record (%s)" % (path, n, e)) from None
    return out
