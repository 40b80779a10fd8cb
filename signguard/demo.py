"""``signguard demo``: the whole chain on the embedded synthetic signs, in a few minutes on a laptop CPU.

render data -> train the baseline LISA-CNN and BlurNet-TV -> export both to
ONNX bundles (parity-checked) -> render a drive-by video of a stop sign ->
run the torch-free edge loop on it with each bundle -> one report comparing
clean accuracy, accuracy on the video, edge-vs-PyTorch agreement and FPS.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.fileio import atomic_write_json, atomic_write_text

STEPS = 6


def _step(i: int, text: str) -> None:
    print(f"[{i}/{STEPS}] {text}", flush=True)


def demo_recipes(quick: bool):
    """Baseline and BlurNet-TV (alpha 1e-4, Table II) at demo size."""
    from train.config import DataConfig, ModelConfig, OptimConfig, Recipe

    data = DataConfig(kind="synthetic", train_per_class=120 if quick else 400, test_per_class=30 if quick else 60,
                      seed=0)
    optim = OptimConfig(epochs=3 if quick else 10, batch_size=64, lr=1e-3, seed=0)
    return [
        Recipe(name="baseline", data=data, model=ModelConfig("lisa_cnn", "image"), defense={"kind": "none"},
               optim=optim),
        Recipe(name="blurnet_tv", data=data, model=ModelConfig("lisa_cnn", "image"),
               defense={"kind": "tv", "alpha": 1e-4}, optim=optim),
    ]


def _torch_predictions_on_video(model, video: Path, boxes_csv: Path, cfg) -> dict[int, int]:
    """PyTorch predictions on the same crops the edge loop sees (same frames, boxes, preprocessing)."""
    import cv2
    import torch

    from edge.preprocess import preprocess
    from edge.rois import CsvRoi

    rois = CsvRoi(boxes_csv)
    cap = cv2.VideoCapture(str(video))
    out: dict[int, int] = {}
    i = 0
    with torch.no_grad():
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            roi = rois.get(i, frame)
            if roi is not None:
                x = preprocess(frame, roi.box, cfg.with_color_order("BGR"))
                out[i] = int(model(torch.from_numpy(x[None])).argmax(1))
            i += 1
    cap.release()
    return out


def run_demo(out_dir: Path, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    from edge.bundle import load_bundle
    from edge.loop import run_loop
    from edge.rois import CsvRoi
    from edge.sources import open_source
    from export.bundle import export_bundle
    from train.checkpoint import load_checkpoint
    from train.data.classes import STOP
    from train.data.datasets import load_data
    from train.data.driveby import render_driveby
    from train.trainer import train

    t0 = time.time()
    out_dir = Path(out_dir)
    recipes = demo_recipes(quick)
    pp = recipes[0].preprocess_cfg()
    _step(1, "rendering synthetic LISA-18 signs (train / val / test)")
    data = load_data(recipes[0].data, pp, progress=progress, cache_dir=out_dir / "cache")
    print(f"      {len(data.train)} train, {len(data.val)} val, {len(data.test)} test images")

    results: dict[str, dict[str, Any]] = {}
    for r in recipes:
        _step(2, f"training {r.name} ({r.optim.epochs} epochs)")
        metrics = train(r, out_dir / "runs" / r.name, progress=progress, data=data, overwrite=True)
        stack = r.defenses()
        results[r.name] = {"defense": stack.kind, "setting": stack.describe(), **metrics}

    _step(3, "exporting ONNX bundles (parity on 256 held-out images)")
    idx = np.random.default_rng(0).choice(len(data.test), size=min(256, len(data.test)), replace=False)
    models = {}
    for r in recipes:
        model, meta = load_checkpoint(out_dir / "runs" / r.name)
        models[r.name] = model
        bundle_dir = export_bundle(model, out_dir / "bundles" / r.name, data.classes, pp, data.test.x[idx], name=r.name,
                                   source={"checkpoint": str(out_dir / "runs" / r.name / "model.json"),
                                           "defense": meta["defense"], "metrics": meta["metrics"]})
        m = json.loads((bundle_dir / "manifest.json").read_text())
        results[r.name]["onnx_max_abs_diff"] = m["models"][0]["parity"]["max_abs_diff"]

    _step(4, "rendering a drive-by video of a stop sign")
    drive = render_driveby(out_dir / "video", class_id=STOP, n_frames=60 if quick else 90, seed=7, name="stop_driveby")

    _step(5, "running the edge loop (onnxruntime, no torch) on the video with each bundle")
    for r in recipes:
        bundle = load_bundle(out_dir / "bundles" / r.name)
        frame_log = out_dir / f"frames_{r.name}.jsonl"
        frame_log.unlink(missing_ok=True)  # a rerun of the demo replaces its own log (the loop refuses to)
        with open_source(str(drive.video_path)) as src:
            s = run_loop(bundle, src, CsvRoi(drive.boxes_csv), log_path=str(frame_log),
                         out_video=str(out_dir / f"annotated_{r.name}.mp4"))
        ref = _torch_predictions_on_video(models[r.name], drive.video_path, drive.boxes_csv, pp)
        common = [k for k in ref if k in s.predictions]
        agree = float(np.mean([ref[k] == s.predictions[k] for k in common])) if common else float("nan")
        results[r.name].update(edge_video_acc=s.accuracy, edge_frames=s.frames, edge_classified=s.classified,
                               edge_fps=s.fps, edge_latency_ms=s.latency_ms, edge_torch_agreement=agree)

    _step(6, "report")
    report = {"total_time_s": round(time.time() - t0, 1), "quick": quick, "video": str(drive.video_path),
              "n_test": len(data.test), "models": results}
    md = render_report(report)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", md)
    print(md)
    return report


def render_report(report: dict[str, Any]) -> str:
    rows = [
        "| model | defense (setting) | clean test acc | edge acc on video | edge = PyTorch | ONNX max abs diff "
        "| edge FPS | infer ms (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["models"].items():
        acc = "n/a" if r["edge_video_acc"] is None else f"{100 * r['edge_video_acc']:.1f}%"
        rows.append(
            f"| {name} | {r['defense']} ({r['setting']}) | {100 * r['test_acc']:.1f}% | {acc} "
            f"({r['edge_classified']} frames) | {100 * r['edge_torch_agreement']:.1f}% | {r['onnx_max_abs_diff']:.1e} "
            f"| {r['edge_fps']:.0f} | {r['edge_latency_ms'].get('infer', float('nan')):.2f} |"
        )
    head = (f"signguard demo report ({'quick' if report['quick'] else 'full'}): synthetic LISA-18, "
            f"{report['n_test']} held-out test images, drive-by video {report['video']}, "
            f"total {report['total_time_s']:.0f} s")
    return head + "\n\n" + "\n".join(rows) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (runs, bundles, video, logs, report)")
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (about a minute)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), quick=args.quick, progress=not args.quiet)
    return 0
