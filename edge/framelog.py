"""JSON Lines frame log: one record per frame, flushed as it is written.

Why per-record flushing: a field test on a device can lose power or be
killed at any time; the log must then hold every frame but the one in hand.
``fsync=True`` also forces the bytes to storage (slower; for power loss
rather than a crash of the process).

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
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .fileio import PathLike

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
    """Append-only JSONL writer; use as a context manager or call :meth:`close`."""

    def __init__(self, path: PathLike, fsync: bool = False, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.count = 0
        self._f = open(str(self.path), "a" if append else "w", encoding="utf-8")

    def write(self, record: Dict[str, Any]) -> None:
        """Write one record as one line and push it out of Python's buffer (and to disk with ``fsync``)."""
        self._f.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        self.count += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> FrameLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_log(path: PathLike) -> List[Dict[str, Any]]:
    """All complete records of a frame log (a torn last line from a crash is ignored)."""
    out = []
    with open(str(path), encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            out.append(json.loads(line))
    return out
