"""The device loop: capture -> (None? continue) -> ROI -> preprocess -> (gate) -> infer -> log/render -> status.

Like jetson-inference's examples it is one short loop over a source; unlike
them it measures every stage (p50/p99 in the summary), logs every frame
(flushed) and every source event (:mod:`edge.events`), reads the source in a
decode thread with a bounded queue (:mod:`edge.capture`), stops cleanly on
SIGINT *and* SIGTERM with a summary, a complete log and a playable video, and
uses THE shared :func:`edge.preprocess.preprocess` with the bundle's recorded
parameters, so the device sees exactly what the model was trained and
calibrated on.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import cv2
import numpy as np

from .capture import Captured, open_capture
from .detect_roi import frame_rois
from .errors import SignguardError
from .events import SourceEvent, make_event
from .framelog import FrameLog, make_record
from .overlay import emit as _emit
from .overlay import render as _render
from .preprocess import expand_box, preprocess
from .rois import Roi, RoiCoverage, RoiProvider
from .sources import open_sink
from .timings import StageTimes

log = logging.getLogger(__name__)

Progress = Callable[[int, Dict[str, Any]], None]
EventHook = Callable[[Dict[str, Any]], None]

STOP_SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
MAX_BATCH = 8  # frames classified in one inference call when the loop has fallen behind the source
_WARN_EVENTS = ("disconnect", "reconnect_failed", "gave_up", "decode_error", "ended_early")


@dataclass
class Summary:
    """What a run did: counts, throughput, accuracy against the ROI CSV, per-stage latency, source health.

    ``latency_ms`` is the median per stage; ``timings_ms`` has ``{"p50", "p99", "n"}`` per stage of
    :data:`edge.timings.STAGES` (``None`` for a stage that never ran, e.g. ``gate`` without a gate).
    ``stop_reason`` is eof, max_frames, SIGINT, SIGTERM or source_lost; ``roi_missing`` counts the frames the
    ROI CSV has boxes for that never arrived from the source.
    """

    frames: int = 0
    classified: int = 0
    fps: float = 0.0
    accuracy: Optional[float] = None
    labelled: int = 0
    correct: int = 0
    latency_ms: Dict[str, float] = field(default_factory=dict)
    timings_ms: Dict[str, Optional[Dict[str, float]]] = field(default_factory=dict)
    predictions: Dict[int, int] = field(default_factory=dict)
    interrupted: bool = False
    stop_reason: str = "eof"
    stop_signal: Optional[int] = None
    dropped: int = 0
    events: Dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    source_lost: bool = False
    roi_missing: int = 0
    warnings: List[str] = field(default_factory=list)
    recorded: Optional[int] = None
    gated: int = 0  # crops that went through a perturbation gate
    gate_fired: int = 0  # ... and that it flagged as perturbed (the rectified crop was classified)
    wall_s: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["predictions"] = {str(k): v for k, v in self.predictions.items()}
        return d


class _StopFlag:
    """SIGINT and SIGTERM (what systemd sends) set a flag the loop checks between frames.

    The previous handlers are restored afterwards.  A second SIGINT raises
    KeyboardInterrupt and a second SIGTERM exits 143 at once: the user (or
    the service manager) means it.
    """

    def __init__(self) -> None:
        self.stop = False
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():  # signal() only works there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            if signum == signal.SIGTERM:
                raise SystemExit(128 + signum)
            raise KeyboardInterrupt
        log.warning("%s: stopping after this frame (again to abort)", STOP_SIGNALS.get(signum, signum))
        self.stop, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


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


def _infer(bundle: Any, x: np.ndarray, classes: List[str], k: int
           ) -> Tuple[List[List[Dict[str, Any]]], List[Optional[Dict[str, Any]]]]:
    """Top-k ``{"class", "index", "score"}`` per row of a model-input batch, best first (ties: lower index
    first; non-finite scores become null), and the gate's ``{"score", "fired"}`` per row (None without a gate:
    one run of a fused graph gives both).  Vectorised over the batch: this runs for every frame."""
    gated = getattr(bundle, "gate", None)
    logits, score, fired = bundle.classify_gated(x) if gated else (bundle.classify(x), None, None)
    probs = np.asarray(bundle.probabilities(logits), dtype=np.float64)
    k = max(1, min(int(k), probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    values = probs[np.arange(len(probs))[:, None], order]
    tops = [[{"class": classes[i], "index": i, "score": round(v, 6) if math.isfinite(v) else None}
             for i, v in zip(irow, vrow)] for irow, vrow in zip(order.tolist(), values.tolist())]
    gates: List[Optional[Dict[str, Any]]] = [None] * len(tops) if score is None else [
        {"score": round(float(s), 4), "fired": bool(f)} for s, f in zip(score, fired)]
    return tops, gates


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


def _source_event(event: SourceEvent, uri: str, summary: Summary, flog: Optional[FrameLog],
                  on_event: Optional[EventHook]) -> None:
    """Log, count and pass on one source event; a ``gave_up`` marks the source as lost."""
    record = event.record(uri)
    summary.events[event.kind] = summary.events.get(event.kind, 0) + 1
    if event.kind == "reconnect":
        summary.reconnects += 1
        log.info("%s: %s", uri, event.detail)
    elif event.kind in _WARN_EVENTS:
        log.warning("%s: %s", uri, event.detail)
        if event.kind in ("decode_error", "ended_early", "gave_up"):
            summary.warnings.append("%s: %s" % (uri, event.detail))
    if event.kind == "gave_up":
        summary.source_lost = True
    if flog is not None:
        flog.write(record)
    if on_event is not None:
        on_event(record)


def _warn_uncovered(coverage: RoiCoverage, source: Any) -> None:
    """Say at once when a CSV's frames all lie beyond the frame count a video file declares."""
    declared = getattr(source, "declared", None)
    if coverage.expected and declared and min(coverage.expected) >= declared:
        log.warning("%s: none of its frames is among the %d frames %s declares; is it the CSV of another video?",
                    coverage.name, declared, getattr(source, "uri", "the source"))


def _with_gate(extra: Dict[str, Any], gate: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A sign's record extras with the gate's decision (it replaces the record's ``gate: null``)."""
    return extra if gate is None else {**extra, "gate": gate}


class _Run:
    """The state of one run of the loop and the per-batch work: ROI, preprocess, (gate), infer, log, render."""

    def __init__(self, bundle: Any, rois: RoiProvider, uri: str, topk: int, flog: Optional[FrameLog],
                 progress: Optional[Progress], show: bool) -> None:
        cfg = bundle.preprocess_cfg
        if cfg.color_order != "BGR":
            # color_order names the order of the *incoming* array; OpenCV frames are always BGR.
            log.debug("bundle preprocess.color_order=%s; device frames are BGR, converting", cfg.color_order)
            cfg = cfg.with_color_order("BGR")
        self.bundle, self.cfg, self.rois, self.uri, self.topk = bundle, cfg, rois, uri, topk
        self.multi = bool(getattr(rois, "multi", False))  # --roi detect: 0..N signs per frame, each with a track
        self.classes: List[str] = list(bundle.classes)
        self.flog, self.progress, self.windows = flog, progress, bool(show)
        self.summary, self.times, self.coverage = Summary(), StageTimes(), RoiCoverage(rois)
        self.sink: Any = None
        self.recorder: Any = None
        self.fps_ema, self.prev_t, self.dropped_logged = 0.0, None, 0
        self.unknown_gt: set = set()

    def batch(self, frames: List[Captured], dropped: int) -> None:
        """Classify a batch of captured frames with one inference call, then log and render each in order."""
        t0 = time.perf_counter()
        rois, inputs, pre_ms, loc_ms = [], [], [], []
        for c in frames:
            tp = time.perf_counter()
            if self.recorder is not None:
                self.recorder.add(c.index, c.ts, c.frame)
            self.coverage.see(c.index)
            found = frame_rois(self.rois, c.index, c.frame)  # one (roi, record extras) per sign
            tl = time.perf_counter()
            rois.append(found)
            inputs.append([_crop_input(c.frame, roi, self.cfg, c.index) for roi, _ in found])  # preprocess
            loc_ms.append((tl - tp) * 1000.0)
            pre_ms.append((time.perf_counter() - tl) * 1000.0)
        xs = [x for xl in inputs for x in xl if x is not None]
        t1 = time.perf_counter()
        # infer; a gated bundle's fused graph also decides per crop whether to classify the rectified crop (its
        # time is part of "infer": the gate is inside the same graph)
        tops_l, gates_l = _infer(self.bundle, np.concatenate(xs), self.classes, self.topk) if xs else ([], [])
        tops, gates = iter(tops_l), iter(gates_l)
        infer_ms = (time.perf_counter() - t1) * 1000.0 / max(len(xs), 1)  # one crop's share of the batch
        for c, found, xl, pms, lms in zip(frames, rois, inputs, pre_ms, loc_ms):
            signs = [(roi, _with_gate(extra, next(gates)), next(tops)) if x is not None else (roi, extra, [])
                     for (roi, extra), x in zip(found, xl)]
            n = sum(1 for s in signs if s[2])
            lat = {"capture": c.capture_ms, "queue": (t0 - c.t_start) * 1000.0 - c.capture_ms, "preprocess": pms,
                   "infer": infer_ms * n}
            if self.multi:
                lat["localize"] = lms
            self._finish_frame(c, signs, lat, len(frames), dropped)

    def _finish_frame(self, c: Captured, signs: List[Tuple[Optional[Roi], Dict[str, Any], List[Dict[str, Any]]]],
                      lat: Dict[str, float], batch: int, dropped: int) -> None:
        """Tally, render, log (one record per sign) and time one frame."""
        summary = self.summary
        gts = [_gt_name(roi, self.classes) for roi, _, _ in signs]
        for (_, extra, top), gt in zip(signs, gts):
            _tally(summary, c.index, top, gt, self.classes, self.unknown_gt)
            if "gate" in extra:
                summary.gated += 1
                summary.gate_fired += int(extra["gate"]["fired"])
        if self.sink is not None or self.windows:  # render
            drawn = [(roi, expand_box(roi.box, self.cfg) if top and roi is not None else None, top, gt, extra)
                     for (roi, extra, top), gt in zip(signs, gts)]
            self.windows = _emit(_render(c.frame, drawn, self.fps_ema), self.sink, self.windows)
        now = time.perf_counter()
        if self.prev_t is not None:
            rate = 1.0 / max(now - self.prev_t, 1e-6)
            self.fps_ema = rate if self.fps_ema == 0.0 else 0.9 * self.fps_ema + 0.1 * rate
        self.prev_t = now
        lat["total"] = (now - c.t_start) * 1000.0
        records = []
        for (roi, extra, top), gt in zip(signs, gts):
            record = make_record(c.index, None if roi is None else roi.box, top, top[0]["class"] if top else None,
                                 gt, lat, gate=None, ts=c.ts)
            record["latency_ms"].update({k: round(lat[k], 3) for k in ("queue", "localize") if k in lat})
            record.update(extra)
            if batch > 1:
                record["batch"] = batch
            records.append(record)
        if dropped > self.dropped_logged:
            records[0]["dropped"], self.dropped_logged = dropped - self.dropped_logged, dropped
        if self.flog is not None:  # log
            for record in records:
                self.flog.write(record)
        summary.frames += 1
        # an unclassified frame's preprocess/infer times measure "no ROI", not the stages
        unclassified = ("capture", "queue", "localize", "total")
        self.times.add(lat if any(s[2] for s in signs) else {k: v for k, v in lat.items() if k in unclassified})
        if self.progress is not None:  # status
            self.progress(summary.frames, records[0])


def run_loop(
    bundle: Any,
    source: Iterable[Any],
    rois: RoiProvider,
    log_path: Union[None, str, FrameLog] = None,
    out_video: Optional[str] = None,
    topk: int = 3,
    max_frames: Optional[int] = None,
    show: bool = False,
    progress: Optional[Progress] = None,
    fsync: bool = False,
    on_event: Optional[EventHook] = None,
    record_dir: Optional[str] = None,
    queue_size: Optional[int] = None,
    log_append: bool = False,
    max_batch: int = MAX_BATCH,
) -> Summary:
    """Classify the ROI of every frame of ``source`` with ``bundle``; log, render, record and summarise.

    ``bundle`` is an :class:`edge.bundle.Bundle` (anything with ``classes``,
    ``preprocess_cfg``, ``classify`` and ``probabilities``); ``source`` yields
    ``(index, BGR frame or None)`` and :class:`SourceEvent` objects.  A
    :class:`edge.sources.FrameSource` is read in a decode thread with a
    queue of ``queue_size`` frames (0: inline; plain iterables are read
    inline); the frames already queued when the loop is ready, up to
    ``max_batch``, are classified in one inference call.  ``log_path`` is a
    path or an open :class:`FrameLog` (left open).  ``progress(frame_count,
    record)`` is called after each frame, ``on_event(record)`` after each
    source event; ``record_dir`` saves the raw frames (:mod:`edge.record`).
    Returns a :class:`Summary`, partial when stopped by a signal,
    ``max_frames`` or a lost source.
    """
    uri = str(getattr(source, "uri", "") or type(source).__name__)
    own_log = not isinstance(log_path, FrameLog)
    flog = (FrameLog(log_path, fsync=fsync, append=log_append) if log_path else None) if own_log else log_path
    run = _Run(bundle, rois, uri, topk, flog, progress, show)
    summary, capture = run.summary, None
    _warn_uncovered(run.coverage, source)
    start = time.perf_counter()
    try:
        run.sink = open_sink(out_video, getattr(source, "fps", None) or 30.0)
        if record_dir:
            from .record import Recorder

            run.recorder = Recorder(record_dir, uri, getattr(source, "fps", None))
        if flog is not None:
            flog.write(make_event("start", 0, "run started", source=uri, bundle=str(getattr(bundle, "name", "")),
                                  precision=getattr(bundle, "precision", None), classes=run.classes, roi=repr(rois)))
        with _StopFlag() as flag:
            capture = open_capture(source, queue_size)
            while max_frames is None or summary.frames < max_frames:
                limit = max_batch if max_frames is None else min(max_batch, max_frames - summary.frames)
                items = capture.take(limit, lambda: flag.stop)
                if items is None:
                    break
                if isinstance(items[0], SourceEvent):
                    _source_event(items[0], uri, summary, flog, on_event)
                    continue
                bad = [i for i in items if not isinstance(i, Captured)]
                if bad:
                    raise SignguardError("source %s yielded %r; expected (index, frame)" % (uri, type(bad[0]).__name__))
                # frame None: an unreadable image, or a frame a live source lost
                run.batch([c for c in items if c.frame is not None], capture.dropped)
            if flag.stop:
                summary.interrupted, summary.stop_signal = True, flag.signum
                summary.stop_reason = STOP_SIGNALS.get(flag.signum, "signal")  # type: ignore[arg-type]
            elif summary.source_lost:
                summary.stop_reason = "source_lost"
            elif max_frames is not None and summary.frames >= max_frames:
                summary.stop_reason = "max_frames"
    except BaseException:
        summary.stop_reason = "error"
        raise
    finally:
        if capture is not None:
            capture.close()  # joins the decode thread before anyone releases the source
            summary.dropped = capture.dropped
        _close_outputs(run, flog if own_log else None)
    _finish(summary, run.times, run.coverage, start)
    return summary


def _close_outputs(run: _Run, own_log: Optional[FrameLog]) -> None:
    """Close the recording, the video (so it is playable) and the frame log (ending it with an ``end`` event)."""
    summary = run.summary
    try:
        if run.recorder is not None:
            try:
                run.recorder.close()
            finally:
                summary.recorded = run.recorder.meta["frames"]
    finally:
        if run.sink is not None:
            run.sink.close()
        try:
            if run.flog is not None:
                run.flog.write(make_event("end", max(run.coverage.last, 0), "run ended: %s" % summary.stop_reason,
                                          source=run.uri, reason=summary.stop_reason, frames=summary.frames,
                                          dropped_total=summary.dropped))
        except SignguardError:
            if summary.stop_reason != "error":  # else the log's own write error is already on its way up
                raise
        finally:
            if own_log is not None:
                own_log.close()
        if run.windows:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass


def _finish(summary: Summary, times: StageTimes, coverage: RoiCoverage, start: float) -> None:
    """Throughput, accuracy, latency quantiles and the ROI-coverage warning."""
    summary.wall_s = time.perf_counter() - start
    summary.fps = summary.frames / summary.wall_s if summary.wall_s > 0 else 0.0
    summary.latency_ms = times.medians()
    summary.timings_ms = times.summary()
    if summary.labelled:
        summary.accuracy = summary.correct / summary.labelled
    stopped_early = summary.stop_reason not in ("eof",)
    summary.roi_missing = len(coverage.missing(coverage.last if stopped_early else None))
    warning = coverage.report(stopped_early)
    if warning:
        log.warning("%s", warning)
        summary.warnings.append(warning)
    if summary.dropped:
        log.warning("%d frame(s) dropped: the loop fell behind the live source", summary.dropped)
    log.info("%d frames, %d classified, %.1f FPS, accuracy %s", summary.frames, summary.classified, summary.fps,
             "n/a" if summary.accuracy is None else "%.3f" % summary.accuracy)
