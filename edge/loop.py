"""The device loop: capture -> (None? continue) -> ROI -> preprocess -> (gate) -> infer -> log/render -> status.

Like jetson-inference's examples it is one short loop over a source; unlike
them it measures every stage, logs every frame (flushed), stops cleanly on
SIGINT with a partial summary, and uses THE shared :func:`edge.preprocess.preprocess`
with the bundle's recorded parameters, so the device sees exactly what the
model was trained and calibrated on.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import cv2
import numpy as np

from .backends import topk as _topk
from .errors import SignguardError
from .framelog import LATENCY_KEYS, FrameLog, make_record
from .preprocess import expand_box, preprocess
from .rois import Roi, RoiProvider
from .sources import open_sink

log = logging.getLogger(__name__)

Progress = Callable[[int, Dict[str, Any]], None]


@dataclass
class Summary:
    """What a run did: counts, throughput, accuracy against the ROI CSV, per-stage median latency."""

    frames: int = 0
    classified: int = 0
    fps: float = 0.0
    accuracy: Optional[float] = None
    labelled: int = 0
    correct: int = 0
    latency_ms: Dict[str, float] = field(default_factory=dict)
    predictions: Dict[int, int] = field(default_factory=dict)
    interrupted: bool = False
    wall_s: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["predictions"] = {str(k): v for k, v in self.predictions.items()}
        return d


class _StopFlag:
    """SIGINT sets a flag the loop checks between frames; the previous handler is restored afterwards."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():  # signal() only works there
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:  # second Ctrl-C: the user means it
            raise KeyboardInterrupt
        log.warning("SIGINT: stopping after this frame (Ctrl-C again to abort)")
        self.stop = True

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def _timed(it: Iterator[Tuple[int, Optional[np.ndarray]]]) -> Iterable[Tuple[float, int, Optional[np.ndarray]]]:
    """Wrap a source iterator to measure how long each capture took."""
    while True:
        t0 = time.perf_counter()
        try:
            index, frame = next(it)
        except StopIteration:
            return
        yield (time.perf_counter() - t0) * 1000.0, index, frame


def _gt_name(roi: Optional[Roi], classes: List[str]) -> Optional[str]:
    if roi is None:
        return None
    if roi.class_name:
        return roi.class_name
    if roi.class_id is not None and 0 <= roi.class_id < len(classes):
        return classes[roi.class_id]
    return None


def _crop_input(frame: np.ndarray, roi: Optional[Roi], cfg: Any, index: int) -> Optional[np.ndarray]:
    """Model input (1, 3, S, S) for the frame's ROI, or None (no ROI, or a box outside the frame: logged)."""
    if roi is None:
        return None
    try:
        return preprocess(frame, roi.box, cfg)[None]
    except SignguardError as e:
        log.warning("frame %d: ROI %s not usable (%s); not classified", index, list(roi.box), e)
        return None


def _infer(bundle: Any, x: np.ndarray, classes: List[str], k: int) -> List[Dict[str, Any]]:
    """Top-k ``{"class", "index", "score"}`` for one model input; non-finite scores become null."""
    probs = bundle.probabilities(bundle.classify(x))[0]
    idx, val = _topk(probs, k)
    scores = [round(float(v), 6) if math.isfinite(float(v)) else None for v in val]
    return [{"class": classes[int(i)], "index": int(i), "score": p} for i, p in zip(idx, scores)]


def _tally(summary: Summary, index: int, top: List[Dict[str, Any]], gt: Optional[str], classes: List[str],
           unknown: set) -> None:
    """Count a classified frame and, with a ground truth, whether it was right."""
    if not top:
        return
    summary.classified += 1
    summary.predictions[index] = top[0]["index"]
    if gt is not None:
        if gt not in classes and gt not in unknown:
            unknown.add(gt)
            log.warning("ground-truth class %r (frame %d) is not one of the bundle's classes", gt, index)
        summary.labelled += 1
        summary.correct += int(top[0]["class"] == gt)


def _emit(img: np.ndarray, sink: Any, window: bool) -> bool:
    """Write an annotated frame to the sink and/or a window; returns False once a window cannot be shown."""
    if sink is not None:
        sink.write(img)
    if window:
        try:
            cv2.imshow("signguard", img)
            cv2.waitKey(1)
        except cv2.error as e:
            log.warning("cannot show a window (%s); continuing without", str(e).strip()[:120])
            return False
    return window


def _render(frame: np.ndarray, roi: Optional[Roi], crop: Optional[Tuple[int, int, int, int]],
            top: List[Dict[str, Any]], gt: Optional[str], fps: float) -> np.ndarray:
    """Annotated copy: expanded crop (grey), tight box (green, or red when it disagrees with gt), label, FPS."""
    out = frame.copy()
    if roi is not None and crop is not None:
        x, y, w, h = crop
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (160, 160, 160), 1)
        bx, by, bw, bh = (int(round(v)) for v in roi.box)
        ok = gt is None or (bool(top) and top[0]["class"] == gt)
        color = (0, 200, 0) if ok else (0, 0, 255)
        cv2.rectangle(out, (bx, by), (bx + bw - 1, by + bh - 1), color, 2)
        if top:
            label = "%s %.2f" % (top[0]["class"], top[0]["score"] or 0.0)
            ty = y - 5 if y - 5 >= 30 else y + h + 14  # below the box when above would hit the FPS text
            cv2.putText(out, label, (max(0, x), ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    cv2.putText(out, "%.1f FPS" % fps, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def run_loop(
    bundle: Any,
    source: Iterable[Tuple[int, Optional[np.ndarray]]],
    rois: RoiProvider,
    log_path: Optional[str] = None,
    out_video: Optional[str] = None,
    topk: int = 3,
    max_frames: Optional[int] = None,
    show: bool = False,
    progress: Optional[Progress] = None,
    fsync: bool = False,
) -> Summary:
    """Classify the ROI of every frame of ``source`` with ``bundle``; log, render and summarise.

    ``bundle`` is an :class:`edge.bundle.Bundle` (anything with ``classes``,
    ``preprocess_cfg``, ``classify`` and ``probabilities``); ``source`` yields
    ``(index, BGR frame or None)``; ``progress(frame_count, record)`` is
    called after each processed frame.  Returns a :class:`Summary`, partial
    when stopped by SIGINT or ``max_frames``.
    """
    cfg = bundle.preprocess_cfg
    if cfg.color_order != "BGR":
        # color_order names the order of the *incoming* array; OpenCV frames are always BGR.
        log.debug("bundle preprocess.color_order=%s; device frames are BGR, converting", cfg.color_order)
        cfg = cfg.with_color_order("BGR")
    classes: List[str] = list(bundle.classes)
    summary = Summary()
    stages: Dict[str, List[float]] = {k: [] for k in LATENCY_KEYS}
    sink = open_sink(out_video, getattr(source, "fps", None) or 30.0)
    windows = bool(show)
    flog = FrameLog(log_path, fsync=fsync) if log_path else None
    fps_ema = 0.0
    unknown_gt: set = set()
    start = time.perf_counter()
    try:
        with _StopFlag() as flag:
            for cap_ms, index, frame in _timed(iter(source)):  # capture
                if frame is None:  # a live source dropped a frame
                    if flag.stop:
                        summary.interrupted = True
                        break
                    continue
                t0 = time.perf_counter()
                roi = rois.get(index, frame)
                x = _crop_input(frame, roi, cfg, index)  # preprocess
                t1 = time.perf_counter()
                gate = None  # hook: a DCT-SVM gate decides here whether to trust/rectify the crop
                top = _infer(bundle, x, classes, topk) if x is not None else []  # infer
                t2 = time.perf_counter()
                gt = _gt_name(roi, classes)
                _tally(summary, index, top, gt, classes, unknown_gt)
                if sink is not None or windows:  # render
                    crop = expand_box(roi.box, cfg) if top and roi is not None else None
                    windows = _emit(_render(frame, roi, crop, top, gt, fps_ema), sink, windows)
                total_ms = cap_ms + (time.perf_counter() - t0) * 1000.0
                fps_ema = 1000.0 / total_ms if fps_ema == 0.0 else 0.9 * fps_ema + 0.1 * 1000.0 / max(total_ms, 1e-3)
                lat = {"capture": cap_ms, "preprocess": (t1 - t0) * 1000.0, "infer": (t2 - t1) * 1000.0,
                       "total": total_ms}
                record = make_record(index, None if roi is None else roi.box, top,
                                     top[0]["class"] if top else None, gt, lat, gate=gate)
                if flog is not None:  # log
                    flog.write(record)
                summary.frames += 1
                for k in LATENCY_KEYS:
                    if top or k in ("capture", "total"):
                        stages[k].append(lat[k])
                if progress is not None:  # status
                    progress(summary.frames, record)
                if flag.stop:
                    summary.interrupted = True
                    break
                if max_frames is not None and summary.frames >= max_frames:
                    break
    finally:
        if flog is not None:
            flog.close()
        if sink is not None:
            sink.close()
        if windows:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
    summary.wall_s = time.perf_counter() - start
    summary.fps = summary.frames / summary.wall_s if summary.wall_s > 0 else 0.0
    summary.latency_ms = {k: float(np.median(v)) for k, v in stages.items() if v}
    if summary.labelled:
        summary.accuracy = summary.correct / summary.labelled
    log.info("%d frames, %d classified, %.1f FPS, accuracy %s", summary.frames, summary.classified, summary.fps,
             "n/a" if summary.accuracy is None else "%.3f" % summary.accuracy)
    return summary
