"""``--roi detect``: the regions of interest come from the localizer, one per tracked sign.

Why a provider: the loop already asks "where is the sign in this frame?";
with a localizer the answer is a list (0..N signs), found by the detector
every ``every`` frames and carried by the tracker in between, each with a
track id so the frame log and the field report count physical signs, not
frames.  A ground-truth CSV (a rendered or annotated drive-by) may ride
along: a tracked box overlapping the frame's true box by IoU >= ``gt_iou``
inherits its class, so the loop's accuracy is comparable with CSV ROIs.
Torch-free, Python 3.8.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from .errors import SignguardError
from .localizer import Localizer, box_iou
from .rois import Roi, RoiProvider
from .tracker import Tracker

USAGE = """  detect                  signs from --localizer BUNDLE (every --detect-every N frames, tracked between)"""


class TrackedRoi(NamedTuple):
    """One sign in one frame: its ROI (with the ground-truth class when a CSV matched it), the track id,
    the localizer's score, and whether the localizer found it on this frame (else the box is the tracker's
    prediction: between detector runs, or a confirmed track the localizer just missed)."""

    roi: Roi
    track: int
    score: float
    detected: bool


class DetectRoi(RoiProvider):
    """ROIs from a :class:`edge.localizer.Localizer` + :class:`edge.tracker.Tracker`.

    ``every``: run the localizer on every N-th frame (1 = every frame) and
    predict the boxes in between; ``gt``: an optional ground-truth provider
    (:class:`edge.rois.CsvRoi`) used only to label the detections;
    ``confirm``: matches after which a track the localizer misses keeps
    its predicted box until the tracker ends it.
    """

    multi = True

    def __init__(self, localizer: Localizer, every: int = 1, tracker: Optional[Tracker] = None,
                 gt: Optional[RoiProvider] = None, gt_iou: float = 0.3, confirm: int = 2) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise SignguardError("--detect-every: expected an integer >= 1, got %r" % (every,))
        self.confirm = int(confirm)
        self.localizer = localizer
        self.every = every
        self.tracker = tracker or Tracker()
        self.gt = gt
        self.gt_iou = float(gt_iou)
        self.has_labels = bool(gt is not None and gt.has_labels)
        self.runs = 0
        self._first: Optional[int] = None

    def get_all(self, index: int, frame: np.ndarray) -> List[TrackedRoi]:
        """The tracked signs of frame ``index`` (the localizer runs when ``index`` is on the N-frame grid)."""
        if self._first is None:
            self._first = index
        detect = (index - self._first) % self.every == 0
        if detect:
            dets = self.localizer.detect(frame)
            self.runs += 1
            boxes = np.array([d.box for d in dets], np.float64).reshape(-1, 4)
            tracks = self.tracker.step(index, boxes, np.array([d.score for d in dets]))
        else:
            tracks = self.tracker.step(index)
        # a track matched at the last detector run, or a confirmed one the localizer just lost (coasting on its
        # predicted box for up to the tracker's max_misses runs, as between runs); a one-hit track that missed
        # is more likely a false detection than a sign, so it is not shown
        tracks = [t for t in tracks if t.misses == 0 or t.hits >= self.confirm]
        truth = self.gt.get(index, frame) if self.gt is not None else None
        out = []
        for t in tracks:
            roi = Roi(t.box)
            if truth is not None and box_iou(np.array([t.box]), np.array([truth.box]))[0, 0] >= self.gt_iou:
                roi = Roi(t.box, truth.class_id, truth.class_name)
            out.append(TrackedRoi(roi, t.id, round(float(t.score), 4), detect and t.misses == 0))
        return out

    def get(self, index: int, frame: np.ndarray) -> Optional[Roi]:
        """The best-scoring tracked sign (for callers that take one ROI per frame)."""
        found = self.get_all(index, frame)
        return max(found, key=lambda r: r.score).roi if found else None

    def __repr__(self) -> str:
        return "DetectRoi(%s, every=%d)" % (self.localizer, self.every)


def frame_rois(rois: RoiProvider, index: int, frame: np.ndarray) -> List[Tuple[Optional[Roi], Dict[str, Any]]]:
    """``(roi, record extras)`` per sign of a frame, for the loop: a multi-sign provider (``--roi detect``)
    gives one per tracked sign with its ``track_id``, localizer ``det_score`` and whether the localizer found
    it on this frame (``detected``); the others one ROI or None.  A frame without a sign is one
    ``(None, {})``, so it is logged."""
    if getattr(rois, "multi", False):
        found = [(t.roi, {"track_id": t.track, "det_score": t.score, "detected": t.detected})
                 for t in rois.get_all(index, frame)]  # type: ignore[attr-defined]
        return found or [(None, {})]
    return [(rois.get(index, frame), {})]
