"""``signguard field-report LOG.jsonl [--roi gt.csv] [--target CLASS] [--compare OTHER.jsonl] [--out DIR]``

A thin wrapper over :func:`edge.field_report.field_report` (torch-free;
matplotlib for the plots): parse -> report -> print the headline rates.
"""

from __future__ import annotations

import argparse
import shlex


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", metavar="LOG.jsonl", help="frame log of a drive-by (signguard run --log)")
    p.add_argument("--roi", default=None, metavar="gt.csv",
                   help="ROI CSV with class_id/class_name: the ground truth (default: the log's own gt fields)")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="the attack's target class: report targeted and untargeted attack success")
    p.add_argument("--compare", default=None, metavar="OTHER.jsonl",
                   help="a second log of the same drive (e.g. the defended model), side by side")
    p.add_argument("--out", default="field_report", metavar="DIR",
                   help="output folder for report.md, summary.json and the PNG plots (default: field_report)")
    p.add_argument("--bins", default=None, metavar="W1,W2,...",
                   help="ROI width bin edges in pixels for the size breakdown (default: 24,32,48,64,96,128)")
    p.add_argument("--names", default=None, metavar="A[,B]", help="labels of the log(s) (default: file names)")


def run(args: argparse.Namespace) -> int:
    from edge.field_report import field_report, headline
    from edge.field_stats import DEFAULT_BINS, parse_bins

    bins = parse_bins(args.bins) if args.bins is not None else DEFAULT_BINS
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    summary = field_report(args.log, args.out, roi=args.roi, target=args.target, compare=args.compare, bins=bins,
                           names=names, command=_command(args))
    for name, metric, text in headline(summary):
        print("%-14s %-32s %s" % (name, metric, text))
    if "paired" in summary:
        print("paired         %d frames, exact McNemar p = %.3g" % (summary["paired"]["frames"],
                                                                    summary["paired"]["mcnemar_p"]))
    print("report         %s" % (args.out.rstrip("/") + "/report.md"))
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line that regenerates the report, rebuilt from the parsed options."""
    parts = ["signguard", "field-report", args.log]
    for flag in ("roi", "target", "compare", "out", "bins", "names"):
        value = getattr(args, flag)
        if value is not None:
            parts += ["--" + flag, value]
    return " ".join(shlex.quote(p) for p in parts)
