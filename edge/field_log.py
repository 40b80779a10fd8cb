"""Reading a drive-by's frame log (and its ground truth) for the field-test report.

Why a reader of its own rather than :func:`edge.framelog.read_log`: a field
report is run on logs that crossed a device, a USB stick and an e-mail, so
every record is checked and an error names the file and the line; and the
log format grows (per-stage timings, ``dropped`` counts, event records such
as disconnect/reconnect, a gate's ``gate_score``/``gate_fired``, per-detection
``track_id``), so known fields are read when present and anything unknown is
ignored.

A *sign record* is a frame record with a ROI or a prediction: one sign seen
(a frame may hold several, one per track).  Event records (an ``"event"``
key) are kept apart and never counted as frames.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from .errors import SignguardError
from .fileio import PathLike
from .rois import CsvRoi

log = logging.getLogger(__name__)

Box = Tuple[float, float, float, float]


@dataclass
class SignRecord:
    """One sign seen in one frame, normalised from a log line (``line`` is 1-based)."""

    line: int
    frame: int
    roi: Optional[Box]
    pred: Optional[str]
    conf: Optional[float]
    gt: Optional[str]
    track: Optional[str] = None
    gate_score: Optional[float] = None
    gate_fired: Optional[bool] = None
    run: int = 0  # which run of an appended log (``signguard run --append``): a new ``start`` event starts one

    @property
    def key(self) -> Tuple[int, int]:
        """(run, frame): the same frame index in two appended runs is two observations."""
        return (self.run, self.frame)

    @property
    def width(self) -> Optional[float]:
        """Apparent sign size: the tight box width in pixels (falls with distance as 1/d)."""
        return None if self.roi is None else self.roi[2]


@dataclass
class FieldLog:
    """A parsed frame log: sign records, every frame index seen, events, drops and stage timings."""

    path: Path
    records: List[SignRecord]
    frames: Set[int]
    frame_records: int
    events: List[Dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    latency_ms: Dict[str, List[float]] = field(default_factory=dict)
    classes: Set[str] = field(default_factory=set)
    index_names: Dict[int, str] = field(default_factory=dict)
    torn_last_line: bool = False
    runs: int = 1
    gt_frames: Set[int] = field(default_factory=set)  # frames the ground truth says show the sign


def _bad(path: Path, line: int, what: str) -> SignguardError:
    return SignguardError("%s: line %d: %s" % (path, line, what))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _opt_str(rec: Dict[str, Any], key: str, path: Path, line: int) -> Optional[str]:
    v = rec.get(key)
    if v is not None and not isinstance(v, str):
        raise _bad(path, line, "field %r must be a class name or null, got %r" % (key, v))
    return v or None


def _roi(rec: Dict[str, Any], path: Path, line: int) -> Optional[Box]:
    v = rec.get("roi")
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 4 or not all(_number(x) for x in v) or v[2] <= 0 or v[3] <= 0:
        raise _bad(path, line, "field 'roi' must be null or [x, y, w, h] with w, h > 0, got %r" % (v,))
    return (float(v[0]), float(v[1]), float(v[2]), float(v[3]))


def _topk(rec: Dict[str, Any], path: Path, line: int, flog: FieldLog) -> List[Dict[str, Any]]:
    v = rec.get("topk", [])
    if not isinstance(v, list):
        raise _bad(path, line, "field 'topk' must be a list of {class, index, score}, got %r" % (v,))
    for e in v:
        if not isinstance(e, dict) or not isinstance(e.get("class"), str) or not (
                e.get("score") is None or _number(e.get("score"))):
            raise _bad(path, line, "field 'topk' entry must be {class: name, score: number or null}, got %r" % (e,))
        flog.classes.add(e["class"])
        if isinstance(e.get("index"), int) and not isinstance(e.get("index"), bool):
            flog.index_names.setdefault(e["index"], e["class"])
    return v


def _gate(rec: Dict[str, Any], path: Path, line: int) -> Tuple[Optional[float], Optional[bool]]:
    """Gate score and whether it fired (flagged the crop as attacked): flat ``gate_score``/``gate_fired``
    or the frame log's ``gate: {"score", "accepted"}`` (fired = not accepted) / ``{"score", "fired"}``."""
    g = rec.get("gate")
    if g is not None and not isinstance(g, dict):
        raise _bad(path, line, "field 'gate' must be null or an object, got %r" % (g,))
    g = g or {}
    score = rec.get("gate_score", g.get("score"))
    if "gate_fired" in rec:
        fired = rec["gate_fired"]
    elif "fired" in g:
        fired = g["fired"]
    elif "accepted" in g:
        accepted = g["accepted"]
        if accepted is not None and not isinstance(accepted, bool):
            raise _bad(path, line, "gate 'accepted' must be true/false or null, got %r" % (accepted,))
        fired = None if accepted is None else not accepted
    else:
        fired = None
    if score is not None and not _number(score):
        raise _bad(path, line, "gate score must be a finite number or null, got %r" % (score,))
    if fired is not None and not isinstance(fired, bool):
        raise _bad(path, line, "gate decision must be true/false or null, got %r" % (fired,))
    return (None if score is None else float(score)), fired


def _frame_record(rec: Dict[str, Any], path: Path, line: int, flog: FieldLog) -> None:
    frame = rec.get("frame")
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise _bad(path, line, "field 'frame' must be an integer >= 0, got %r" % (frame,))
    flog.frames.add(frame)
    flog.frame_records += 1
    roi = _roi(rec, path, line)
    top = _topk(rec, path, line, flog)
    pred = _opt_str(rec, "pred", path, line) if "pred" in rec else (top[0]["class"] if top else None)
    gt = _opt_str(rec, "gt", path, line)
    for name in (pred, gt):
        if name:
            flog.classes.add(name)
    conf = top[0]["score"] if top and top[0]["class"] == pred else None
    track = rec.get("track_id")
    if track is not None and (isinstance(track, bool) or not isinstance(track, (int, str))):
        raise _bad(path, line, "field 'track_id' must be an integer, a string or null, got %r" % (track,))
    gate_score, gate_fired = _gate(rec, path, line)
    lat = rec.get("latency_ms")
    if isinstance(lat, dict):
        for k, v in lat.items():
            if _number(v):
                flog.latency_ms.setdefault(str(k), []).append(float(v))
    dropped = rec.get("dropped")
    if _number(dropped) and dropped > 0:
        flog.dropped += int(dropped)
    if roi is not None or pred is not None:
        flog.records.append(SignRecord(line, frame, roi, pred, None if conf is None else float(conf), gt,
                                       _track_id(track, flog.runs), gate_score, gate_fired,
                                       flog.runs - 1))


def _track_id(track: Any, runs: int) -> Optional[str]:
    """Track ids restart with each run of an appended log; later runs' ids are prefixed to stay distinct."""
    if track is None:
        return None
    return str(track) if runs == 1 else "run%d:%s" % (runs, track)


def read_field_log(path: PathLike) -> FieldLog:
    """Parse and check a frame log; raises :class:`SignguardError` naming the file and line at fault.

    A last line without its newline is what a crash mid-write leaves: it is
    skipped (and flagged in the report), as :func:`edge.framelog.read_log` does.
    ``dropped`` counts on records are frames the capture dropped since the
    previous record, so they add up.
    """
    p = Path(path)
    if not p.exists():
        raise SignguardError("%s: frame log not found" % p)
    if not p.is_file():
        raise SignguardError("%s: is not a file (expected a JSON Lines frame log from `signguard run --log`)" % p)
    flog = FieldLog(p, [], set(), 0)
    with open(str(p), encoding="utf-8", errors="strict") as f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError as e:
            raise SignguardError("%s: not a text frame log (%s)" % (p, e)) from None
    for n, text in enumerate(lines, 1):
        if not text.endswith("\n"):
            flog.torn_last_line = True
            log.warning("%s: line %d is incomplete (a crash mid-write?); ignored", p, n)
            break
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except ValueError as e:
            raise _bad(p, n, "not valid JSON (%s)" % e) from None
        if not isinstance(rec, dict):
            raise _bad(p, n, "expected a JSON object per line, got %s" % type(rec).__name__)
        if "event" in rec:
            if rec["event"] == "start" and flog.frame_records:
                flog.runs += 1  # another run appended to the same log
            flog.events.append(dict(rec, _line=n))
            if _number(rec.get("dropped")) and rec["dropped"] > 0:
                flog.dropped += int(rec["dropped"])
            if isinstance(rec.get("classes"), list):
                flog.classes.update(c for c in rec["classes"] if isinstance(c, str))
            continue
        if "frame" not in rec:
            raise _bad(p, n, "record has neither 'frame' nor 'event' (not a signguard frame log?)")
        _frame_record(rec, p, n, flog)
    if not flog.frame_records:
        raise SignguardError("%s: no frame records (%s)" % (
            p, "empty file" if not any(t.strip() for t in lines) else "%d event record(s) only" % len(flog.events)))
    if not flog.records:
        raise SignguardError("%s: none of its %d frame records holds a sign (every roi and pred is null)"
                             % (p, flog.frame_records))
    return flog


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def ground_truth_from_csv(path: PathLike, logs: List[FieldLog]) -> Dict[int, Tuple[Box, str]]:
    """``frame -> (tight box, true class name)`` from an ROI CSV (the drive-by renderer's ``boxes.csv``).

    A row with only ``class_id`` is named through the logs' own ``topk``
    ``index -> class`` pairs.  Errors: a CSV without class columns, a class id
    no log names, a CSV that covers none of a log's frames.
    """
    csv = CsvRoi(path)
    if not csv.has_labels:
        raise SignguardError("%s: no class_id/class_name values, so it gives no ground truth" % csv.path)
    names: Dict[int, str] = {}
    for lg in logs:
        for k, v in lg.index_names.items():
            names.setdefault(k, v)
    out: Dict[int, Tuple[Box, str]] = {}
    for frame, roi in sorted(csv.rows.items()):
        name = roi.class_name
        if name is None and roi.class_id is not None:
            name = names.get(roi.class_id)
            if name is None:
                raise SignguardError("%s: frame %d has class_id %d and no class_name, and no log names class index "
                                     "%d in its top-k; add a class_name column" % (csv.path, frame, roi.class_id,
                                                                                  roi.class_id))
        if name is not None:
            out[frame] = (roi.box, name)
    for lg in logs:
        if not set(out) & lg.frames:
            raise SignguardError("%s: its labelled frames %d..%d cover none of the %d frames of %s (%d..%d); "
                                 "wrong CSV for this drive?" % (csv.path, min(out), max(out), len(lg.frames), lg.path,
                                                                min(lg.frames), max(lg.frames)))
    return out


def apply_ground_truth(flog: FieldLog, gt: Dict[int, Tuple[Box, str]]) -> None:
    """Replace each sign record's ``gt`` with the CSV's class for its frame.

    With one sign record in a frame it gets the frame's class; with several
    (a tracker with more than one sign in view) only the one whose ROI
    overlaps the CSV box most does, the others become unlabelled.  Each run
    of an appended log is matched on its own.
    """
    by_frame: Dict[Tuple[int, int], List[SignRecord]] = {}
    for r in flog.records:
        r.gt = None
        by_frame.setdefault(r.key, []).append(r)
    for (_, frame), recs in by_frame.items():
        if frame not in gt:
            continue
        box, name = gt[frame]
        if len(recs) == 1:
            recs[0].gt = name
            continue
        best = max(recs, key=lambda r: -1.0 if r.roi is None else _iou(r.roi, box))
        if best.roi is not None and _iou(best.roi, box) > 0:
            best.gt = name
    flog.classes.update(name for _, name in gt.values())
    flog.gt_frames = set(gt)
