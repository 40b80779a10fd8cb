"""The sign localizer on the demo's drive-by (CSV ROIs vs ``--roi detect`` at every N), and how much box error
a classifier tolerates -- the drive-by part of bench/localizer_report.py.

The drive-by is the demo's stop-sign video (seed 7), run through the edge loop exactly as ``signguard run``
does, with the classifier exported to a bundle; the ROI-error table crops held-out rendered signs from the
tight box and from boxes off the way a localizer's are.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge.localizer import Localizer
from edge.preprocess import preprocess

# Crop boxes a localizer produces instead of the tight one: (name, box -> box), offsets in fractions of the side.
ROI_ERRORS = [
    ("tight", lambda x, y, w, h: (x, y, w, h)),
    ("down 0.1 h", lambda x, y, w, h: (x, y + 0.1 * h, w, h)),
    ("right 0.1 w", lambda x, y, w, h: (x + 0.1 * w, y, w, h)),
    ("taller 1.15 (bottom edge down)", lambda x, y, w, h: (x, y, w, 1.15 * h)),
    ("larger 1.1", lambda x, y, w, h: (x - 0.05 * w, y - 0.05 * h, 1.1 * w, 1.1 * h)),
    ("smaller 0.9", lambda x, y, w, h: (x + 0.05 * w, y + 0.05 * h, 0.9 * w, 0.9 * h)),
]


def roi_sensitivity(classifier: str, n: int = 900) -> Dict[str, float]:
    """Accuracy of ``classifier`` on ``n`` rendered signs (seeded, never trained on) cropped from the tight box
    and from boxes off the way a localizer's are: how much box error the classifier tolerates."""
    import torch

    from edge.preprocess import PreprocessConfig
    from train.checkpoint import load_checkpoint
    from train.data.render import render_sign

    model, meta = load_checkpoint(classifier)
    pp = PreprocessConfig.from_dict(meta["preprocess"]).with_color_order("BGR")
    rng = np.random.default_rng(20261130)
    signs = [render_sign(int(c), rng) for c in rng.integers(0, len(meta["classes"]), n)]
    y = np.array([s.label for s in signs])
    out = {}
    with torch.no_grad():
        for name, move in ROI_ERRORS:
            x = np.stack([preprocess(s.image, move(*s.box), pp) for s in signs])
            out[name] = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    return out


def driveby(args: argparse.Namespace, work: Path, classifier: str) -> Dict[str, Any]:
    """The demo's drive-by through the edge loop with ``classifier``: CSV ROIs vs --roi detect at every N."""
    from edge.bundle import load_bundle
    from edge.detect_roi import DetectRoi
    from edge.framelog import read_log
    from edge.loop import run_loop
    from edge.preprocess import PreprocessConfig
    from edge.rois import CsvRoi
    from edge.sources import open_source
    from export.bundle import export_bundle
    from train.checkpoint import load_checkpoint
    from train.data.classes import STOP
    from train.data.driveby import render_driveby
    from train.data.render import RenderConfig, render_sign

    drive = render_driveby(work / "video", class_id=STOP, n_frames=90, seed=7, name="stop_driveby")
    cdir = work / ("classifier_" + Path(classifier).name)
    if not (cdir / "manifest.json").is_file():
        model, meta = load_checkpoint(classifier)
        pp = PreprocessConfig.from_dict(meta["preprocess"])
        rng = np.random.default_rng(0)
        x = np.stack([preprocess(s.image, s.box, pp) for s in (render_sign(int(c), rng, RenderConfig())
                                                                for c in rng.integers(0, 18, 64))])
        export_bundle(model, cdir, meta["classes"], pp, x, name="classifier")
    clf = load_bundle(cdir)
    gt = CsvRoi(drive.boxes_csv)
    first24 = min(f for f, r in gt.rows.items() if r.box[2] >= 24)
    logs = work / ("logs_" + Path(classifier).name)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    with open_source(str(drive.video_path)) as src:
        s_csv = run_loop(clf, src, gt, log_path=str(logs / "csv.jsonl"))
    out: Dict[str, Any] = {"classifier": classifier, "video": str(drive.video_path), "gt_frames": len(gt.rows),
                           "first_frame_24px": first24,
                           "csv_accuracy": s_csv.accuracy, "csv_classified": s_csv.classified, "detect": []}
    for every in args.every:
        for precision in ("fp32", "int8"):
            roi = DetectRoi(Localizer(args.bundle, precision=precision), every=every, gt=gt)
            path = logs / ("detect_%s_every%d.jsonl" % (precision, every))
            t0 = time.perf_counter()
            with open_source(str(drive.video_path)) as src:
                s = run_loop(clf, src, roi, log_path=str(path), out_video=str(logs / ("annotated_%s_every%d.mp4" % (
                    precision, every))) if every == 1 else None)
            wall = time.perf_counter() - t0
            out["detect"].append(drive_row(read_log(path), gt, first24, every, precision, s, wall))
    return out


def drive_row(records: List[dict], gt, first24: int, every: int, precision: str, summary, wall: float) -> dict:
    """Per-run drive-by numbers from a frame log with one record per detection."""
    from edge.localizer import box_iou

    dets = [r for r in records if r.get("frame") is not None and r.get("roi") is not None and "track_id" in r]
    right = {r["frame"] for r in dets if r["gt"] is not None and r["pred"] == r["gt"]}
    matched = [r for r in dets if r["gt"] is not None]
    first = min((r["frame"] for r in matched), default=None)
    ious = [float(box_iou(np.array([r["roi"]]), np.array([gt.rows[r["frame"]].box]))[0, 0]) for r in matched]
    tracks = sorted({r["track_id"] for r in matched})
    loc_ms = [r["latency_ms"].get("localize", 0.0) for r in records if "latency_ms" in r and r.get("frame") is not None]
    return {"precision": precision, "every": every, "end_to_end_accuracy": len(right) / len(gt.rows),
            "accuracy_on_detections": summary.accuracy, "frames_with_sign_detected": len({r["frame"] for r in matched}),
            "frames_found_by_localizer": len({r["frame"] for r in matched if r.get("detected")}),
            "first_detection_frame": first, "frames_after_24px": None if first is None else first - first24,
            "mean_iou": float(np.mean(ious)) if ious else None, "sign_tracks": len(tracks),
            "false_detections": len(dets) - len(matched),
            "localize_ms_mean": float(np.mean(loc_ms)) if loc_ms else None, "fps": summary.frames / wall}
