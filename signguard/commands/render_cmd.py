"""``signguard render contact-sheet --out sheet.png`` / ``signguard render driveby --out videos/``"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from train.data.classes import LISA_CLASSES

    sub = p.add_subparsers(dest="what", required=True)
    cs = sub.add_parser("contact-sheet", help="PNG grid of rendered model inputs, one row per class")
    cs.add_argument("--out", default="contact_sheet.png")
    cs.add_argument("--per-class", type=int, default=8)
    cs.add_argument("--seed", type=int, default=0)
    dv = sub.add_parser("driveby", help="drive-by video of a sign with ground-truth boxes (CSV)")
    dv.add_argument("--out", default="driveby", help="output folder")
    dv.add_argument("--sign", default="stop", choices=LISA_CLASSES)
    dv.add_argument("--frames", type=int, default=90)
    dv.add_argument("--fps", type=float, default=15.0)
    dv.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from train.data.classes import LISA_INDEX

    if args.what == "contact-sheet":
        from train.data.contact_sheet import write_contact_sheet

        path = write_contact_sheet(Path(args.out), n_per_class=args.per_class, seed=args.seed)
        print(f"contact sheet: {path}")
    else:
        from train.data.driveby import render_driveby

        d = render_driveby(Path(args.out), class_id=LISA_INDEX[args.sign], n_frames=args.frames, fps=args.fps,
                           seed=args.seed)
        print(f"video: {d.video_path}\nboxes: {d.boxes_csv}")
    return 0
