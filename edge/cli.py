"""``signguard run``: classify the signs in a camera/video/folder with a deployment bundle.

A thin wrapper over the Python API (parse -> :func:`load_bundle` /
:func:`open_source` / :func:`run_loop` -> exit code).  The CLI registry calls
:func:`add_arguments` and :func:`run`; a :class:`SignguardError` raised here
becomes a one-line message and exit code 1 there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict

from . import detect_roi as _detect
from . import rois as _rois
from . import sources as _sources
from .backends import BACKENDS
from .capture import DEFAULT_QUEUE
from .live import LiveConfig, live_config_from_options
from .pathcheck import check_outputs

DESCRIPTION = "Run a deployment bundle over a camera, video, stream or image folder; log every frame."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` options; the help epilog is assembled from the source, sink and ROI usage texts."""
    parser.description = parser.description or DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "\n\n".join([_sources.USAGE, _sources.SINK_USAGE, _rois.USAGE + "\n" + _detect.USAGE])
    parser.add_argument("--bundle", required=True, help="deployment bundle folder (with manifest.json)")
    parser.add_argument("--source", required=True, help="source URI (see below)")
    parser.add_argument("--roi", default="center", help="ROI spec (see below; default: center)")
    parser.add_argument("--localizer", default=None, metavar="BUNDLE", help="--roi detect: the localizer bundle")
    parser.add_argument("--localizer-precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="--roi detect: localizer precision (default: fp32 when the bundle has it)")
    parser.add_argument("--detect-every", type=int, default=1, metavar="N",
                        help="--roi detect: run the localizer every N frames, track the signs in between (default 1)")
    parser.add_argument("--gt", default=None, metavar="BOXES.csv",
                        help="--roi detect: ground-truth boxes (the drive-by CSV) to label the detections for accuracy")
    parser.add_argument("--no-gate", action="store_true",
                        help="a gated bundle (PRN + DCT-SVM): run its bare classifier instead of the gated graph")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="model precision to run (default: fp32 when the bundle has it, else the first)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="inference runtime")
    parser.add_argument("--providers", default=None,
                        help="onnxruntime execution providers, comma-separated: cpu, cuda, tensorrt (default cpu)")
    parser.add_argument("--log", default=None, metavar="OUT.jsonl",
                        help="write one JSON line per frame (an existing non-empty file is refused, see --append; "
                             "a file another run is writing is refused)")
    parser.add_argument("--append", action="store_true", help="add to an existing --log instead of refusing it")
    parser.add_argument("--fsync", action="store_true", help="fsync the frame log after every record")
    parser.add_argument("--output", default=None, metavar="URI", help="annotated video (out.mp4) or display://0")
    parser.add_argument("--topk", type=int, default=3, help="classes kept per frame (default 3)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--quiet", action="store_true", help="no per-frame status line")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--record", default=None, metavar="DIR",
                        help="save the raw frames (lossless) and capture times in a new folder; replay: --source DIR")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE, metavar="N",
                        help="frames the decode thread reads ahead (a live source drops the oldest when the queue is "
                             "full; 0: no decode thread; default %d)" % DEFAULT_QUEUE)
    live = LiveConfig()
    parser.add_argument("--open-timeout", type=float, default=live.open_timeout_s, metavar="S",
                        help="live sources: seconds to wait for a connection (default %g)" % live.open_timeout_s)
    parser.add_argument("--read-timeout", type=float, default=live.read_timeout_s, metavar="S",
                        help="live sources: seconds without a frame before reconnecting (default %g)"
                             % live.read_timeout_s)
    parser.add_argument("--max-reconnects", type=int, default=live.max_reconnects, metavar="N",
                        help="live sources: failed reconnection attempts per outage (backoff %g s doubling to %g s) "
                             "before the run ends with exit 1; 0: end at the first disconnect (default %d)"
                             % (live.backoff_s, live.backoff_max_s, live.max_reconnects))


def _status(count: int, record: Dict[str, Any]) -> None:
    """One status line, rewritten in place on a terminal; every 100th frame as its own line in a log."""
    tty = sys.stdout.isatty()
    if not tty and count % 100:
        return
    top = record["topk"][0] if record["topk"] else None
    what = "%s %.2f" % (top["class"], top["score"] or 0.0) if top else "-"
    line = "frame %6d  %-28s %6.1f ms" % (record["frame"], what, record["latency_ms"]["total"])
    sys.stdout.write("\r" + line if tty else line + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Load the bundle, open the source, run the loop, print a summary; 0 on success."""
    from .bundle import load_bundle
    from .errors import SignguardError
    from .loop import run_loop

    if args.topk < 1:
        raise SignguardError("--topk must be >= 1, got %d" % args.topk)
    if args.max_frames is not None and args.max_frames < 1:
        raise SignguardError("--max-frames must be >= 1, got %d" % args.max_frames)
    if args.append and not args.log:
        raise SignguardError("--append adds to the frame log named by --log; pass --log too")
    if args.queue < 0:
        raise SignguardError("--queue must be >= 0, got %d" % args.queue)
    live = live_config_from_options(args.open_timeout, args.read_timeout, args.max_reconnects)
    roi_file = [("--roi", args.roi)] if os.path.exists(args.roi) else []
    detect = args.roi.strip().lower() == "detect"
    if detect and not args.localizer:
        raise SignguardError("--roi detect needs --localizer BUNDLE (a localizer bundle folder)")
    if not detect and (args.localizer or args.gt):
        raise SignguardError("--localizer and --gt apply to --roi detect only")
    roi_file += [(k, v) for k, v in (("--localizer", args.localizer), ("--gt", args.gt)) if v]
    check_outputs([("--source", args.source), ("--bundle", args.bundle)] + roi_file,
                  [("--output", args.output), ("--log", args.log), ("--record", args.record)])
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    bundle = load_bundle(args.bundle, precision=args.precision, backend=args.backend, providers=providers,
                         gate=not args.no_gate)
    if detect:
        from .localizer import Localizer

        roi = _detect.DetectRoi(Localizer(args.localizer, precision=args.localizer_precision, backend=args.backend,
                                          providers=providers), every=args.detect_every,
                                gt=_rois.CsvRoi(args.gt) if args.gt else None)
    else:
        roi = _rois.parse_roi(args.roi)
    with _sources.open_source(args.source, live=live) as source:
        summary = run_loop(bundle, source, roi, log_path=args.log, out_video=args.output, topk=args.topk,
                           max_frames=args.max_frames, show=False,
                           progress=None if args.quiet else _status, fsync=args.fsync, log_append=args.append,
                           record_dir=args.record, queue_size=args.queue)
    if not args.quiet and sys.stdout.isatty():
        print()
    if getattr(args, "json", False):
        d = summary.to_dict()
        d.pop("predictions")
        print(json.dumps(d, indent=2, sort_keys=True))
        return _exit_code(summary, args.source)
    print("bundle    %s (%s, %s)" % (bundle.name, bundle.model["file"], bundle.precision))
    print("frames    %d (%d classified)%s" % (summary.frames, summary.classified,
                                              ", interrupted" if summary.interrupted else ""))
    print("fps       %.1f" % summary.fps)
    if summary.gated:
        print("gate      perturbation detected on %d of %d crops (rectified before classifying)"
              % (summary.gate_fired, summary.gated))
    if summary.accuracy is not None:
        print("accuracy  %.3f (%d/%d labelled frames)" % (summary.accuracy, summary.correct, summary.labelled))
    if summary.timings_ms:
        print("latency   " + "  ".join("%s %.2f/%.2f" % (k, t["p50"], t["p99"])
                                       for k, t in summary.timings_ms.items() if t) + "  ms (p50/p99)")
    if summary.dropped or summary.reconnects or summary.roi_missing:
        print("source    %d dropped, %d reconnect(s), %d frame(s) of the ROI CSV never arrived"
              % (summary.dropped, summary.reconnects, summary.roi_missing))
    for warning in summary.warnings:
        print("warning   %s" % warning)
    if args.record:
        print("recording %s (%d frames)" % (args.record, summary.recorded or 0))
    if args.log:
        print("log       %s" % args.log)
    if args.output:
        print("video     %s" % args.output)
    return _exit_code(summary, args.source)


def _exit_code(summary: Any, source: str) -> int:
    """0, or 128 + the signal that stopped the run (130 SIGINT, 143 SIGTERM); a lost live source is an error."""
    from .errors import SourceError

    if summary.stop_signal:
        return 128 + int(summary.stop_signal)
    if summary.source_lost:
        raise SourceError("%s: the source was lost and did not come back (see the frame log's events)" % source)
    return 0
