"""Regions of interest: where in each frame the sign is.

The device loop classifies one sign crop per frame; this module says where.
A provider returns the TIGHT sign box ``(x, y, w, h)`` for a frame (or
``None``: no sign, the loop logs the frame without classifying it);
:func:`edge.preprocess.preprocess` adds the margin.  :class:`CsvRoi` also
carries the ground-truth class, which turns a recorded drive-by into an
accuracy / attack-success report.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Set, Tuple, Union

import numpy as np

from .errors import SignguardError
from .fileio import PathLike

Box = Tuple[float, float, float, float]

CSV_COLUMNS = ("frame", "x", "y", "w", "h")
CSV_OPTIONAL = ("class_id", "class_name")

USAGE = """ROI specs:
  center | center:0.6     a centred square, side = fraction of the shorter frame side (default 0.5)
  x,y,w,h                 a fixed tight sign box in pixels
  boxes.csv               per-frame boxes, header frame,x,y,w,h[,class_id,class_name]"""


class Roi(NamedTuple):
    """The tight sign box of one frame and, when known, its true class."""

    box: Box
    class_id: Optional[int] = None
    class_name: Optional[str] = None


class RoiProvider:
    """Maps ``(frame index, frame)`` to a :class:`Roi` or ``None``."""

    has_labels = False

    def get(self, index: int, frame: np.ndarray) -> Optional[Roi]:
        raise NotImplementedError

    def expected_frames(self) -> Optional[FrozenSet[int]]:
        """The frame indices this provider has a box for, when that is a fixed list (a CSV); else None."""
        return None


def _parse_box(text: str, where: str) -> Box:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise SignguardError("%s: expected a box x,y,w,h (4 numbers), got %r" % (where, text))
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise SignguardError("%s: box x,y,w,h must be numbers, got %r" % (where, text)) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise SignguardError("%s: box %r needs finite numbers and positive w, h" % (where, text))
    return (x, y, w, h)


class StaticRoi(RoiProvider):
    """The same box in every frame (a fixed camera looking at one sign)."""

    def __init__(self, box: Union[str, Box]) -> None:
        text = box if isinstance(box, str) else ",".join(repr(float(v)) for v in box)
        self.box: Box = _parse_box(text, "roi")

    def get(self, index: int, frame: np.ndarray) -> Optional[Roi]:
        return Roi(self.box)

    def __repr__(self) -> str:
        return "StaticRoi(%s)" % (",".join("%g" % v for v in self.box))


class CentreRoi(RoiProvider):
    """A centred square whose side is ``fraction`` of the shorter frame side (aim-the-camera mode)."""

    def __init__(self, fraction: float = 0.5) -> None:
        if not 0.0 < float(fraction) <= 1.0:
            raise SignguardError("roi center: fraction must be in (0, 1], got %r" % (fraction,))
        self.fraction = float(fraction)

    def get(self, index: int, frame: np.ndarray) -> Optional[Roi]:
        h, w = frame.shape[:2]
        side = max(1.0, round(self.fraction * min(h, w)))
        return Roi(((w - side) / 2.0, (h - side) / 2.0, side, side))

    def __repr__(self) -> str:
        return "CentreRoi(%g)" % self.fraction


class CsvRoi(RoiProvider):
    """Per-frame boxes from a CSV (``frame,x,y,w,h[,class_id,class_name]``), as the drive-by renderer writes.

    One box per frame; frames without a row have no ROI.  The whole file is
    validated on load, and an error names the file, the line and the field.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.rows: Dict[int, Roi] = {}
        if not self.path.is_file():
            raise SignguardError("%s: ROI CSV not found" % self.path)
        with open(str(self.path), newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise SignguardError(
                    "%s: line 1: header lacks column(s) %s (expected %s)"
                    % (self.path, missing, ",".join(CSV_COLUMNS + CSV_OPTIONAL))
                )
            reader.fieldnames = header
            lines: Dict[int, int] = {}
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue  # blank line
                roi, frame = self._parse_row(row, line)
                if frame in self.rows:
                    raise SignguardError("%s: line %d: frame %d already has a box (line %d); one box per frame"
                                         % (self.path, line, frame, lines[frame]))
                self.rows[frame], lines[frame] = roi, line
        self.has_labels = any(r.class_name or r.class_id is not None for r in self.rows.values())

    def _field(self, row: Dict[str, str], name: str, line: int, kind: type) -> float:
        text = (row.get(name) or "").strip()
        try:
            value = kind(text)
        except ValueError:
            raise SignguardError("%s: line %d: field %r must be %s, got %r"
                                 % (self.path, line, name, "an integer" if kind is int else "a number", text)) from None
        if kind is float and not math.isfinite(value):
            raise SignguardError("%s: line %d: field %r must be finite, got %r" % (self.path, line, name, text))
        return value

    def _parse_row(self, row: Dict[str, str], line: int) -> Tuple[Roi, int]:
        frame = int(self._field(row, "frame", line, int))
        x, y, w, h = (self._field(row, k, line, float) for k in ("x", "y", "w", "h"))
        if w <= 0 or h <= 0:
            raise SignguardError(
                "%s: line %d: fields 'w' and 'h' must be positive, got %g, %g" % (self.path, line, w, h)
            )
        cid_text = (row.get("class_id") or "").strip()
        cid = int(self._field(row, "class_id", line, int)) if cid_text else None
        name = (row.get("class_name") or "").strip() or None
        return Roi((x, y, w, h), cid, name), frame

    def get(self, index: int, frame: np.ndarray) -> Optional[Roi]:
        return self.rows.get(index)

    def expected_frames(self) -> FrozenSet[int]:
        return frozenset(self.rows)

    def __repr__(self) -> str:
        return "CsvRoi(%s, %d frames)" % (self.path, len(self.rows))


def _spans(frames: Iterable[int]) -> str:
    """``0..4, 9, 12..13``: sorted indices as ranges, at most five of them."""
    out: List[str] = []
    run: List[int] = []
    for f in sorted(frames):
        if run and f == run[-1] + 1:
            run.append(f)
            continue
        if run:
            out.append("%d..%d" % (run[0], run[-1]) if len(run) > 1 else str(run[0]))
        run = [f]
    if run:
        out.append("%d..%d" % (run[0], run[-1]) if len(run) > 1 else str(run[0]))
    return ", ".join(out[:5]) + (", ..." if len(out) > 5 else "")


class RoiCoverage:
    """Which of the frames an ROI provider expects actually arrived from the source.

    Why: a damaged video or a CSV made for another video used to produce an
    accuracy over whatever frames happened to match, with no warning.  The
    loop feeds every frame index in; :meth:`report` names the expected
    frames that never came (and says so loudly when none of them did).
    """

    def __init__(self, provider: RoiProvider) -> None:
        self.name = repr(provider)
        self.expected = provider.expected_frames()
        self.seen: Set[int] = set()
        self.last = -1

    def see(self, index: int) -> None:
        if self.expected is not None and index in self.expected:
            self.seen.add(index)
        self.last = max(self.last, index)

    def missing(self, up_to: Optional[int] = None) -> List[int]:
        """Expected frames that never arrived (only those <= ``up_to`` when the run stopped early)."""
        if self.expected is None:
            return []
        return sorted(f for f in self.expected - self.seen if up_to is None or f <= up_to)

    def report(self, stopped_early: bool) -> Optional[str]:
        """One warning sentence, or None when every expected frame arrived (or nothing is expected)."""
        if not self.expected:
            return None
        missing = self.missing(self.last if stopped_early else None)
        if not missing:
            return None
        if not self.seen:
            return ("%s covers none of the %d frames read (frames 0..%d); its boxes are for frames %s -- "
                    "is it the CSV of another video?" % (self.name, self.last + 1, self.last, _spans(self.expected)))
        return ("%s expected %d frame(s) that never arrived from the source: %s"
                % (self.name, len(missing), _spans(missing)))


def parse_roi(spec: str) -> RoiProvider:
    """The CLI's one ROI parser: ``center``, ``center:0.6``, ``x,y,w,h`` or a path to a ``.csv``."""
    s = (spec or "").strip()
    low = s.lower()
    if low in ("center", "centre"):
        return CentreRoi()
    if low.startswith(("center:", "centre:")):
        frac = s.split(":", 1)[1]
        try:
            return CentreRoi(float(frac))
        except ValueError:
            raise SignguardError("roi %r: the fraction after 'center:' must be a number" % spec) from None
    if low.endswith(".csv") or Path(s).is_file():
        return CsvRoi(s)
    if s.count(",") == 3:
        return StaticRoi(s)
    raise SignguardError("roi %r is not understood; expected center, center:F, x,y,w,h or a .csv file" % (spec,))
