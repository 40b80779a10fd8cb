"""``signguard run``: classify the signs in a camera/video/folder with a deployment bundle.

A thin wrapper over the Python API (parse -> :func:`load_bundle` /
:func:`open_source` / :func:`run_loop` -> exit code).  The CLI registry calls
:func:`add_arguments` and :func:`run`; a :class:`SignguardError` raised here
becomes a one-line message and exit code 1 there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from . import rois as _rois
from . import sources as _sources
from .backends import BACKENDS

DESCRIPTION = "Run a deployment bundle over a camera, video, stream or image folder; log every frame."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` options; the help epilog is assembled from the source, sink and ROI usage texts."""
    parser.description = parser.description or DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "\n\n".join([_sources.USAGE, _sources.SINK_USAGE, _rois.USAGE])
    parser.add_argument("--bundle", required=True, help="deployment bundle folder (with manifest.json)")
    parser.add_argument("--source", required=True, help="source URI (see below)")
    parser.add_argument("--roi", default="center", help="ROI spec (see below; default: center)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="model precision to run (default: fp32 when the bundle has it, else the first)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="inference runtime")
    parser.add_argument("--providers", default=None,
                        help="onnxruntime execution providers, comma-separated: cpu, cuda, tensorrt (default cpu)")
    parser.add_argument("--log", default=None, metavar="OUT.jsonl", help="write one JSON line per frame")
    parser.add_argument("--fsync", action="store_true", help="fsync the frame log after every record")
    parser.add_argument("--output", default=None, metavar="URI", help="annotated video (out.mp4) or display://0")
    parser.add_argument("--topk", type=int, default=3, help="classes kept per frame (default 3)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--quiet", action="store_true", help="no per-frame status line")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


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
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    bundle = load_bundle(args.bundle, precision=args.precision, backend=args.backend, providers=providers)
    roi = _rois.parse_roi(args.roi)
    with _sources.open_source(args.source) as source:
        summary = run_loop(bundle, source, roi, log_path=args.log, out_video=args.output, topk=args.topk,
                           max_frames=args.max_frames, show=False,
                           progress=None if args.quiet else _status, fsync=args.fsync)
    if not args.quiet and sys.stdout.isatty():
        print()
    if getattr(args, "json", False):
        d = summary.to_dict()
        d.pop("predictions")
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0
    print("bundle    %s (%s, %s)" % (bundle.name, bundle.model["file"], bundle.precision))
    print("frames    %d (%d classified)%s" % (summary.frames, summary.classified,
                                              ", interrupted" if summary.interrupted else ""))
    print("fps       %.1f" % summary.fps)
    if summary.accuracy is not None:
        print("accuracy  %.3f (%d/%d labelled frames)" % (summary.accuracy, summary.correct, summary.labelled))
    if summary.latency_ms:
        print("latency   " + "  ".join("%s %.2f ms" % kv for kv in summary.latency_ms.items()))
    if args.log:
        print("log       %s" % args.log)
    if args.output:
        print("video     %s" % args.output)
    return 0
