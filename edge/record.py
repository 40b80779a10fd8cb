"""Field-test recordings: ``signguard run --record DIR`` saves the raw frames, ``--source DIR`` replays them.

Why: a drive-by past a stickered sign happens once; the bundle under test
changes many times.  Recording the frames the loop saw, losslessly, with their
source indices and capture times, lets any later bundle (undefended,
defended, INT8...) be replayed on exactly the same pixels, with the same ROI
CSV, and compared frame by frame.

A recording folder holds::

    recording.json   {"format": "signguard-recording", "version": 1, "source", "fps", "started",
                      "frames", "complete"}
    frames/          one lossless PNG per frame, named by its source frame index (00000042.png)
    frames.csv       frame,ts,file -- source frame index, unix capture time, file under frames/

Why one PNG per frame rather than a lossless video: a video container is
only readable once its writer has finished it (FFmpeg buffers and writes the
index last), so a device that loses power would lose the whole drive; a PNG
is complete once written, and its ``frames.csv`` row is written (and
flushed) only after the file, so a killed run still leaves a replayable
recording of every frame it listed.  PNGs are written with zlib level 1
and, where OpenCV offers the choice, the SUB filter: about 6 ms of CPU for
a 640x360 frame (half the cost of libpng's adaptive filters), at about 75 KB.  Frames are encoded in a writer
thread (bounded queue), so the loop waits for the encoder only when the
encoder falls behind (a live source then drops frames, and says so).
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np

from .errors import SignguardError, SourceError
from .fileio import PathLike, atomic_write_json
from .sources import FrameSource

log = logging.getLogger(__name__)

FORMAT = "signguard-recording"
VERSION = 1
META = "recording.json"
INDEX = "frames.csv"
FRAMES = "frames"
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10; older builds (JetPack's) use libpng's adaptive filters
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
_QUEUE = 64


def is_recording(path: PathLike) -> bool:
    """True when ``path`` is a folder written by :class:`Recorder`."""
    return (Path(path) / META).is_file()


class Recorder:
    """Writes frames losslessly with their indices and capture times (see the module docstring).

    Refuses a folder that exists and is not empty, so a recording is never
    overwritten or mixed with another.  :meth:`add` hands a frame to the
    writer thread; :meth:`close` drains it and marks the recording complete.
    """

    def __init__(self, folder: PathLike, source: str, fps: Optional[float]) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and (not self.folder.is_dir() or any(self.folder.iterdir())):
            raise SignguardError("--record %s: %s; give a new or empty folder (recordings are never overwritten)"
                                 % (self.folder, "is a file" if not self.folder.is_dir() else "folder is not empty"))
        try:
            (self.folder / FRAMES).mkdir(parents=True, exist_ok=True)
            self._index = open(str(self.folder / INDEX), "w", newline="", encoding="utf-8")
        except OSError as e:
            raise SignguardError("--record %s: cannot create the recording (%s)" % (self.folder, e.strerror)) from None
        self._csv = csv.writer(self._index)
        self._csv.writerow(["frame", "ts", "file"])
        self._index.flush()
        self.meta: Dict[str, Any] = {"format": FORMAT, "version": VERSION, "source": source,
                                     "fps": float(fps) if fps else None, "started": time.time(), "frames": 0,
                                     "complete": False}
        atomic_write_json(self.folder / META, self.meta)
        self._queue: queue.Queue[Optional[Tuple[int, float, np.ndarray]]] = queue.Queue(_QUEUE)
        self._error: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="signguard-record", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep draining so add() never blocks; the error is raised there
            index, ts, frame = item
            name = "%08d.png" % index
            try:
                if not cv2.imwrite(str(self.folder / FRAMES / name), frame, PNG_PARAMS):
                    raise OSError("cv2.imwrite failed for %s" % name)
                self._csv.writerow([index, "%.6f" % ts, name])
                self._index.flush()
                self.meta["frames"] += 1
            except (OSError, cv2.error) as e:
                self._error = str(e)

    def add(self, index: int, ts: float, frame: np.ndarray) -> None:
        """Queue one frame (waits while the writer is ``_QUEUE`` frames behind)."""
        if self._error is not None:
            raise SignguardError("--record %s: %s" % (self.folder, self._error))
        self._queue.put((int(index), float(ts), frame))

    def close(self) -> None:
        """Write the queued frames and mark the recording complete."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if not self._index.closed:
            self._index.close()
            self.meta["complete"] = self._error is None
            atomic_write_json(self.folder / META, self.meta)
        if self._error is not None:
            raise SignguardError("--record %s: %s" % (self.folder, self._error))


def _read_index(path: Path) -> List[Tuple[int, float, str]]:
    """Rows (frame, ts, file) of ``frames.csv``; a torn last line (a killed run) is ignored."""
    rows: List[Tuple[int, float, str]] = []
    with open(str(path), newline="", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    for n, line in enumerate(lines[1:], start=2):
        if not line.endswith("\n"):
            break
        parts = line.strip().split(",")
        try:
            frame, ts, name = int(parts[0]), float(parts[1]), parts[2]
        except (ValueError, IndexError):
            raise SourceError("%s: line %d: expected frame,ts,file, got %r" % (path, n, line.strip())) from None
        if "/" in name or "\\" in name or name.startswith("."):
            raise SourceError("%s: line %d: file %r must be a plain name inside %s/" % (path, n, name, FRAMES))
        rows.append((frame, ts, name))
    return rows


class RecordingSource(FrameSource):
    """Replays a recording: yields the recorded frames with their original source indices.

    ``timestamps`` maps each frame index to its original capture time.
    """

    def __init__(self, uri: str, folder: PathLike) -> None:
        self.uri, self.folder = uri, Path(folder)
        try:
            meta = json.loads((self.folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SourceError("%s: %s is not readable JSON (%s)" % (uri, META, e)) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise SourceError("%s: %s is not a version-%d %s" % (uri, META, VERSION, FORMAT))
        self.meta = meta
        self.fps = float(meta["fps"]) if meta.get("fps") else None
        index = self.folder / INDEX
        self.rows = _read_index(index) if index.is_file() else []
        if not self.rows:
            raise SourceError("%s: the recording holds no frames" % uri)
        if not meta.get("complete"):
            log.warning("%s: the recording was not closed cleanly; replaying the %d frames it lists",
                        uri, len(self.rows))
        self.timestamps = {frame: ts for frame, ts, _ in self.rows}

    def __iter__(self) -> Iterator[Tuple[int, Optional[np.ndarray]]]:
        for frame_index, _, name in self.rows:
            image = cv2.imread(str(self.folder / FRAMES / name), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("%s: %s/%s is missing or unreadable; frame %d skipped", self.uri, FRAMES, name,
                            frame_index)
            yield frame_index, image
