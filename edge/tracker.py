"""One track per physical sign: greedy IoU / centroid matching with a constant-velocity box model.

Why this light tracker (SORT without the Kalman covariance): signs seen from
a moving car move smoothly and grow steadily, so a box predicted from its
last two observations (centre velocity and log-size growth per frame) lands
on the next detection; that lets the localizer run only every N frames with
the boxes carried in between, and gives the frame log and field report one
id per sign instead of one per frame.  Matching is greedy on IoU with the
predicted box; a detection with no IoU overlap still joins a track whose
predicted centre is within ``centroid_gate`` box sizes per frame since the
track was last matched (small or fast signs, detector runs N frames apart).
A track not seen by ``max_misses`` consecutive detector runs ends.
Torch-free, Python 3.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError
from .localizer import box_iou

Box = Tuple[float, float, float, float]


@dataclass
class Track:
    """A sign being followed: ``box`` is its current (observed or predicted) box; ``misses`` counts the detector
    runs since it was last matched (0: matched at the last run); ``hits`` counts its matches."""

    id: int
    box: Box
    score: float
    first_frame: int
    last_frame: int
    hits: int = 1
    misses: int = 0
    velocity: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # dcx, dcy, dlogw, dlogh / frame


def _state(box: Sequence[float]) -> np.ndarray:
    x, y, w, h = (float(v) for v in box)
    return np.array([x + w / 2, y + h / 2, math.log(max(w, 1e-3)), math.log(max(h, 1e-3))])


def _box(state: np.ndarray) -> Box:
    w, h = math.exp(state[2]), math.exp(state[3])
    return (float(state[0] - w / 2), float(state[1] - h / 2), float(w), float(h))


class Tracker:
    """Call :meth:`step` once per frame, with the frame's detections on frames where the localizer ran.

    ``iou_threshold``: least IoU between a predicted track box and a
    detection to match; ``centroid_gate``: else the largest centre distance
    in units of the track's box size; ``max_misses``: detector runs a track
    may go unmatched before it ends; ``smoothing``: weight of the newest
    velocity measurement (0..1).
    """

    def __init__(self, iou_threshold: float = 0.2, centroid_gate: float = 0.7, max_misses: int = 2,
                 smoothing: float = 0.6) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ConfigError("tracker.iou_threshold: expected a number in (0, 1], got %r" % (iou_threshold,))
        if centroid_gate < 0:
            raise ConfigError("tracker.centroid_gate: expected a number >= 0, got %r" % (centroid_gate,))
        if isinstance(max_misses, bool) or not isinstance(max_misses, int) or max_misses < 0:
            raise ConfigError("tracker.max_misses: expected an integer >= 0, got %r" % (max_misses,))
        if not 0.0 < smoothing <= 1.0:
            raise ConfigError("tracker.smoothing: expected a number in (0, 1], got %r" % (smoothing,))
        self.iou_threshold = float(iou_threshold)
        self.centroid_gate = float(centroid_gate)
        self.max_misses = int(max_misses)
        self.smoothing = float(smoothing)
        self.tracks: List[Track] = []
        self._next_id = 1
        self._frame: Optional[int] = None

    def _predict(self, frame: int) -> None:
        """Move every track from the previous frame to ``frame`` along its velocity."""
        if self._frame is None or frame == self._frame:
            return
        for t in self.tracks:
            t.box = _box(_state(t.box) + np.asarray(t.velocity) * (frame - self._frame))

    def _match(self, boxes: np.ndarray, frame: int) -> List[Tuple[int, int]]:
        """Greedy pairs (track index, detection index): best IoU first, then nearest centroid."""
        if not self.tracks or not len(boxes):
            return []
        tb = np.array([t.box for t in self.tracks], np.float64)
        iou = box_iou(tb, boxes)
        pairs: List[Tuple[int, int]] = []
        used_t, used_d = set(), set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            i, j = divmod(int(flat), iou.shape[1])
            if iou[i, j] < self.iou_threshold:
                break
            if i not in used_t and j not in used_d:
                pairs.append((i, j))
                used_t.add(i)
                used_d.add(j)
        tc = tb[:, :2] + tb[:, 2:] / 2
        dc = boxes[:, :2] + boxes[:, 2:] / 2
        # centre distance in box sizes, per frame since the track was last seen (a sign moves further in a gap)
        elapsed = np.array([max(frame - t.last_frame, 1) for t in self.tracks], np.float64)
        dist = np.linalg.norm(tc[:, None] - dc[None], axis=2) / (np.maximum(tb[:, 2:].max(1), 1.0) * elapsed)[:, None]
        for flat in np.argsort(dist, axis=None, kind="stable"):
            i, j = divmod(int(flat), dist.shape[1])
            if dist[i, j] > self.centroid_gate:
                break
            if i not in used_t and j not in used_d:
                pairs.append((i, j))
                used_t.add(i)
                used_d.add(j)
        return pairs

    def step(self, frame: int, boxes: Optional[np.ndarray] = None, scores: Optional[np.ndarray] = None
             ) -> List[Track]:
        """Advance to ``frame``; with ``boxes`` (k, 4) (and ``scores``) from the localizer, match and update.

        Returns the live tracks (matched at the last detector run or still
        within ``max_misses``), oldest first.
        """
        if self._frame is not None and frame < self._frame:
            raise ConfigError("tracker.step: frame %d is before the previous frame %d" % (frame, self._frame))
        self._predict(frame)
        self._frame = frame
        if boxes is None:
            return list(self.tracks)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, np.float64).reshape(-1)
        matched_t, matched_d = set(), set()
        for i, j in self._match(boxes, frame):
            t = self.tracks[i]
            new, old = _state(boxes[j]), _state(t.box)
            dt = max(frame - t.last_frame, 1)
            # the predicted box already moved by velocity * dt: the residual corrects the velocity
            v = np.asarray(t.velocity) + (new - old) / dt
            t.velocity = list(self.smoothing * v + (1 - self.smoothing) * np.asarray(t.velocity))
            t.box = _box(new)
            t.score, t.last_frame, t.hits, t.misses = float(scores[j]), frame, t.hits + 1, 0
            matched_t.add(i)
            matched_d.add(j)
        for i, t in enumerate(self.tracks):
            if i not in matched_t:
                t.misses += 1
        self.tracks = [t for t in self.tracks if t.misses <= self.max_misses]
        for j in range(len(boxes)):
            if j not in matched_d:
                b = boxes[j]
                self.tracks.append(Track(self._next_id, (float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                                         float(scores[j]), frame, frame))
                self._next_id += 1
        return list(self.tracks)
