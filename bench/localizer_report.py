"""The sign localizer's evidence -> reports/localizer/: AP/recall by size, FP per frame, latency, drive-by.

    python bench/localizer_report.py --bundle bundles/localizer --classifier runs/sweep/synthetic/baseline

Held-out rendered scenes (seeds never used in training): ``--n-test`` mixed
scenes and ``--n-empty`` sign-free ones.  Measured for the exported FP32 and
INT8 graphs (through :class:`edge.localizer.Localizer`, as the device runs
them) and for the classical colour/shape proposals
(:mod:`train.localizer.classical`).  Latency: THE preprocessing + graph +
numpy decode/NMS per 640x360 frame, onnxruntime CPU with 1 and with 2
intra-op threads, medians and p99 of one run on a shared machine (load
average recorded).  Drive-by: the demo's stop-sign video (seed 7) through
the edge loop with CSV ROIs and with ``--roi detect`` at every N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from localizer_driveby import ROI_ERRORS, driveby, roi_sensitivity  # bench/ is the script's own folder on sys.path

from edge.fileio import atomic_write_json, atomic_write_text
from edge.localizer import Localizer, decode
from edge.preprocess import preprocess
from train.data.detection import DetectionSet, load_coco
from train.data.scenes import SceneConfig, write_scenes
from train.localizer.classical import classical_proposals
from train.localizer.metrics import evaluate, sweep_thresholds

BIN_ORDER = ["10-16", "16-24", "24-48", "48-96", "96+", ">=24", "all"]


def scene_set(folder: Path, n: int, seed: int, cfg: SceneConfig):
    if not (folder / "annotations.json").is_file():
        write_scenes(folder, n, seed, cfg)
    return load_coco(folder / "annotations.json")


def run_detector(fn, ds) -> List:
    return [fn(ds.image(i)) for i in range(len(ds))]


def localizer_fn(loc: Localizer, thr: float):
    def f(frame):
        return decode(loc.raw(frame), loc.decode_cfg, loc.input_size, (frame.shape[1], frame.shape[0]), thr)
    return f


def latency(bundle: Path, precision: str, frames: List[np.ndarray], threads: int, runs: int) -> Dict[str, float]:
    """p50/p99 ms of preprocess + graph + decode per frame, onnxruntime CPU with ``threads`` intra-op threads,
    in the session the device runs (:class:`edge.localizer.Localizer`: no spin-waiting between runs)."""
    loc = Localizer(bundle, precision=precision, threads=threads)

    def once(frame):
        decode(loc.raw(frame), loc.decode_cfg, loc.input_size, (frame.shape[1], frame.shape[0]))

    for f in frames[:10]:
        once(f)
    total, graph, cpu = [], [], []
    for i in range(runs):
        f = frames[i % len(frames)]
        c0, t0 = time.process_time(), time.perf_counter()
        x = preprocess(f, None, loc.preprocess_cfg)[None]
        t1 = time.perf_counter()
        out = loc.backend.run(x)[0]
        t2 = time.perf_counter()
        decode(out, loc.decode_cfg, loc.input_size, (f.shape[1], f.shape[0]))
        total.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        graph.append((t2 - t1) * 1e3)
    return {"p50_ms": float(np.median(total)), "p99_ms": float(np.percentile(total, 99)),
            "graph_p50_ms": float(np.median(graph)), "cpu_p50_ms": float(np.median(cpu)), "runs": runs}


def classical_latency(frames: List[np.ndarray], runs: int) -> Dict[str, float]:
    t = []
    for i in range(runs):
        t0 = time.perf_counter()
        classical_proposals(frames[i % len(frames)])
        t.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="bundles/localizer", type=Path)
    p.add_argument("--classifier", nargs="+", default=["runs/sweep/synthetic/baseline_roi",
                                                       "runs/sweep/synthetic/baseline"],
                   help="classifier checkpoints for the drive-by; the first is the one the targets are judged with")
    p.add_argument("--out", default="reports/localizer", type=Path)
    p.add_argument("--work", default="runs/localizer_report", type=Path)
    p.add_argument("--n-test", type=int, default=400, help="mixed scenes per test seed")
    p.add_argument("--test-seeds", type=int, nargs="+", default=[1000, 3000])
    p.add_argument("--n-empty", type=int, default=300)
    p.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 5])
    p.add_argument("--latency-runs", type=int, default=300)
    p.add_argument("--markdown-only", action="store_true", help="re-render README.md and plots from results.json")
    args = p.parse_args()
    if args.markdown_only:
        results = json.loads((args.out / "results.json").read_text())
        plots(results, args.out)
        atomic_write_text(args.out / "README.md", markdown(results, args))
        return
    t0 = time.time()
    parts = [scene_set(args.work / ("test" if seed == 1000 else "test_%d" % seed), args.n_test, seed, SceneConfig())
             for seed in args.test_seeds]
    test = parts[0]
    for more in parts[1:]:
        test = DetectionSet(test.paths + more.paths, test.boxes + more.boxes, test.labels + more.labels,
                            "%s + %s" % (test.source, more.source))
    empty = scene_set(args.work / "empty", args.n_empty, 2000, SceneConfig(p_empty=1.0))
    results: Dict[str, Any] = {"n_test": len(test), "n_test_signs": test.n_boxes, "n_empty": len(empty),
                               "detectors": {}}
    # latency first, before the evaluation: measured after it in the same process, INT8 p50 read 10.2 ms where a
    # fresh process read 6.3 ms (cause not isolated)
    frames = [test.image(i) for i in range(min(50, len(test)))]
    results["load_before_latency"] = os.getloadavg()
    results["latency"] = {"%s_%dthread" % (prec, th): latency(args.bundle, prec, frames, th, args.latency_runs)
                          for prec in ("fp32", "int8") for th in (1, 2)}
    results["latency"]["classical"] = classical_latency(frames, args.latency_runs // 3)
    results["load_after_latency"] = os.getloadavg()
    grid = np.round(np.arange(0.3, 0.76, 0.05), 2)
    for precision in ("fp32", "int8"):
        loc = Localizer(args.bundle, precision=precision)
        thr = loc.decode_cfg.score_threshold
        f = localizer_fn(loc, 0.05)
        dets, dets_empty = run_detector(f, test), run_detector(f, empty)
        r = evaluate(dets, test.boxes, thr)
        r["by_seed"] = {}
        for k, seed in enumerate(args.test_seeds):  # each seed's set alone: how much the pooled numbers move
            part = slice(k * args.n_test, (k + 1) * args.n_test)
            v = evaluate(dets[part], test.boxes[part], thr)
            r["by_seed"][str(seed)] = {"recall_ge24": v["bins"][">=24"]["recall"], "n_ge24": v["bins"][">=24"]["n_gt"],
                                       "fp_per_frame": v["fp_per_frame"]}
        r["empty_fp_per_frame"] = evaluate(dets_empty, empty.boxes, thr)["fp_per_frame"]
        r["sweep"] = [dict(a, empty_fp_per_frame=b["fp_per_frame"]) for a, b in zip(
            sweep_thresholds(dets, test.boxes, grid), sweep_thresholds(dets_empty, empty.boxes, grid))]
        results["detectors"]["localizer_" + precision] = r
    r = evaluate(run_detector(classical_proposals, test), test.boxes, 0.0)
    r["empty_fp_per_frame"] = evaluate(run_detector(classical_proposals, empty), empty.boxes, 0.0)["fp_per_frame"]
    results["detectors"]["classical"] = r
    results["driveby"] = [driveby(args, args.work, c) for c in args.classifier]
    results["roi_sensitivity"] = {c: roi_sensitivity(c) for c in args.classifier}
    results["machine"] = "%s, %d CPUs, %s" % (platform.processor() or platform.machine(), os.cpu_count() or 0,
                                             platform.platform())
    results["manifest"] = json.loads((args.bundle / "manifest.json").read_text())["extra"]
    results["time_s"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "size_bins.csv", bins_csv(results))
    plots(results, args.out)
    atomic_write_text(args.out / "README.md", markdown(results, args))
    print(markdown(results, args))


def bins_csv(results: Dict[str, Any]) -> str:
    rows = ["detector,bin,n_gt,ap50,recall,precision"]
    for name, r in results["detectors"].items():
        for b in BIN_ORDER:
            v = r["bins"][b]
            rows.append("%s,%s,%d,%.4f,%.4f,%.4f" % (name, b, v["n_gt"], v["ap50"], v["recall"], v["precision"]))
    return "\n".join(rows) + "\n"


def plots(results: Dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = BIN_ORDER[:5]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, metric in enumerate(("recall", "ap50")):
        for i, (name, r) in enumerate(results["detectors"].items()):
            axes[k].bar(np.arange(len(bins)) + (i - 1) * 0.27, [r["bins"][b][metric] for b in bins], 0.27, label=name)
        axes[k].set_xticks(range(len(bins)), [b + " px" for b in bins])
        axes[k].set_ylim(0, 1.02)
        axes[k].set_title(("recall at the operating threshold" if metric == "recall" else "AP@0.5") + " by sign width")
    axes[0].axhline(0.95, color="k", lw=0.8, ls="--")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "size_bins.png", dpi=110)
    plt.close(fig)
    rows = [r for r in results["driveby"][0]["detect"] if r["precision"] == "int8"]
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ev = [r["every"] for r in rows]
        ax.plot(ev, [100 * r["end_to_end_accuracy"] for r in rows], "o-", label="accuracy over sign frames (%)")
        ax.axhline(100 * results["driveby"][0]["csv_accuracy"], color="k", ls="--", lw=0.8, label="CSV ROIs")
        ax.set_xlabel("localizer every N frames")
        ax2 = ax.twinx()
        ax2.plot(ev, [r["localize_ms_mean"] for r in rows], "s-", color="tab:red", label="localize ms / frame")
        ax2.set_ylabel("localize ms / frame (mean)")
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(out / "every_n.png", dpi=110)
        plt.close(fig)


def _f(v: Any, pct: bool = False, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return ("%.1f%%" % (100 * v)) if pct else ("%.*f" % (nd, v))


def markdown(results: Dict[str, Any], args: argparse.Namespace) -> str:
    d = results["detectors"]
    lines = ["Regenerate: `python bench/localizer_report.py --bundle %s --classifier %s` (%.0f s; %s)."
             % (args.bundle, " ".join(args.classifier), results["time_s"], results["machine"]), "",
             "Held-out rendered scenes: %d mixed frames (%d signs; %d per seed, seeds %s) and %d sign-free frames "
             "(seed 2000). "
             "IoU 0.5; a sign's size is its box width in 640x360 frame pixels; recall, precision and FP/frame at each "
             "detector's operating threshold (localizer: %.2f, chosen on validation scenes; classical: every "
             "proposal)." % (results["n_test"], results["n_test_signs"], args.n_test,
                             ", ".join(str(v) for v in args.test_seeds), results["n_empty"],
                             d["localizer_fp32"]["threshold"]), "",
             "| detector | " + " | ".join("AP@0.5 %s" % b for b in BIN_ORDER) + " |",
             "|---|" + "---|" * len(BIN_ORDER)]
    for name, r in d.items():
        lines.append("| %s | " % name + " | ".join(_f(r["bins"][b]["ap50"]) for b in BIN_ORDER) + " |")
    lines += ["", "| detector | " + " | ".join("recall %s" % b for b in BIN_ORDER)
              + " | FP/frame (mixed) | FP/frame (sign-free) |", "|---|" + "---|" * (len(BIN_ORDER) + 2)]
    for name, r in d.items():
        lines.append("| %s | " % name + " | ".join(_f(r["bins"][b]["recall"], True) for b in BIN_ORDER)
                     + " | %s | %s |" % (_f(r["fp_per_frame"], nd=3), _f(r["empty_fp_per_frame"], nd=3)))
    lines += ["", "Each test seed's set alone, at the operating threshold:", "",
              "| detector | " + " | ".join("seed %s: recall >= 24 px (signs), FP/frame" % k
                                          for k in d["localizer_int8"]["by_seed"]) + " |",
              "|---|" + "---|" * len(d["localizer_int8"]["by_seed"])]
    for name in ("localizer_fp32", "localizer_int8"):
        lines.append("| %s | " % name + " | ".join("%s (%d), %.3f" % (_f(v["recall_ge24"], True), v["n_ge24"],
                                                                      v["fp_per_frame"])
                                                 for v in d[name]["by_seed"].values()) + " |")
    lines += ["", "Operating points of the INT8 localizer on the same test frames (recall of signs >= 24 px wide):", "",
              "| threshold | " + " | ".join("%.2f" % r["threshold"] for r in d["localizer_int8"]["sweep"]) + " |",
              "|---|" + "---|" * len(d["localizer_int8"]["sweep"])]
    for key, label in (("recall", "recall >= 24 px"), ("fp_per_frame", "FP/frame (mixed)"),
                       ("empty_fp_per_frame", "FP/frame (sign-free)")):
        lines.append("| %s | " % label + " | ".join(_f(r[key], key == "recall", 3)
                                                    for r in d["localizer_int8"]["sweep"]) + " |")
    lat = results["latency"]
    lines += ["", "Latency per 640x360 frame (THE preprocessing + graph + numpy decode/NMS), onnxruntime CPU, one run "
              "on the shared 2-core machine (load average %.1f before, %.1f after):" % (
                  results["load_before_latency"][0], results["load_after_latency"][0]), "",
              "| graph | threads | p50 ms (wall) | p99 ms (wall) | graph-only p50 ms (wall) | p50 CPU ms (process) |",
              "|---|---|---|---|---|---|"]
    for key in ("fp32_1thread", "fp32_2thread", "int8_1thread", "int8_2thread"):
        v = lat[key]
        lines.append("| %s | %s | %.2f | %.2f | %.2f | %.2f |" % (key.split("_")[0], key.split("_")[1][0],
                                                                v["p50_ms"], v["p99_ms"], v["graph_p50_ms"],
                                                                v["cpu_p50_ms"]))
    lines.append("| classical (OpenCV) | 1 | %.2f | %.2f | - | - |" % (lat["classical"]["p50_ms"],
                                                                      lat["classical"]["p99_ms"]))
    for dv in results["driveby"]:
        lines += ["", "Drive-by (the demo's stop-sign video, seed 7, 90 frames, %d with the sign; it is 24 px wide "
                  "from frame %d): classifier `%s` through the edge loop. CSV ROIs: accuracy %s. `--roi detect`:"
                  % (dv["gt_frames"], dv["first_frame_24px"], dv["classifier"], _f(dv["csv_accuracy"], True)), "",
                  "| localizer | every N | accuracy over sign frames | accuracy on tracked signs | sign frames "
                  "with a box (found by the localizer) | first detection - frame of 24 px | mean IoU | sign tracks "
                  "| false detections | localize ms/frame | loop FPS |", "|---" * 11 + "|"]
        for r in dv["detect"]:
            lines.append("| %s | %d | %s | %s | %d (%d) | %s | %s | %d | %d | %s | %.1f |" % (
                r["precision"], r["every"], _f(r["end_to_end_accuracy"], True), _f(r["accuracy_on_detections"], True),
                r["frames_with_sign_detected"], r["frames_found_by_localizer"], r["frames_after_24px"],
                _f(r["mean_iou"]), r["sign_tracks"], r["false_detections"], _f(r["localize_ms_mean"]), r["fps"]))
    sens = results["roi_sensitivity"]
    lines += ["", "Classifier accuracy on 900 held-out rendered signs (seed 20261130) cropped from the tight box and "
              "from boxes off the way a localizer's are:", "",
              "| classifier | " + " | ".join(name for name, _ in ROI_ERRORS) + " |", "|---|" + "---|" * len(ROI_ERRORS)]
    for c, v in sens.items():
        lines.append("| `%s` | " % c + " | ".join(_f(v[name], True) for name, _ in ROI_ERRORS) + " |")
    lines += ["", "![size bins](size_bins.png) ![every N](every_n.png)", ""]
    return "\n".join(targets(results) + DESIGN + lines)


DESIGN = [
    "## What runs", "",
    "- **Detector**: CenterNet-style (Zhou et al. 2019) heatmap + centre offset + log size at stride 8, TTFNet's "
    "Gaussian-weighted regression targets; a branch-free conv backbone (16-32-48 channels, dilated 3x3 convs at "
    "stride 8 for a receptive field that covers a 250 px sign), 133 k parameters, trained from scratch in four "
    "stages, each starting from the previous one (the commands are in `configs/localizer.yaml`): 10 epochs on 2000 "
    "rendered scenes; 4 epochs on those plus every 3rd frame of 24 rendered drive-by videos (seeds 100-123; the "
    "demo's seed 7 is never trained on); 10 epochs on 6000 scenes plus the drive-bys; 12 epochs on 6000 other "
    "scenes (seed 5) plus the drive-bys. The first two stages alone reached 82% recall for signs >= 24 px: the "
    "detector was under-trained (1,930 steps), not too small -- most missed signs had a peak just under the "
    "threshold. The operating threshold is the lowest whose false positives per validation frame stay <= 0.1. "
    "Input: the 640x360 frame squashed to 256x256 (a reduced resolution, for the latency budget) by THE device "
    "preprocessing (`edge.preprocess.preprocess(frame, None, cfg)`), so a 24 px wide sign is ~10 px wide in the "
    "input. The FPN variant first prototyped left half of its convs unfused in onnxruntime INT8 (a tensor with two "
    "consumers) and was slower in INT8 than in FP32, hence one path.",
    "- **Classical baseline** (`train/localizer/classical.py`): HSV thresholds for the sign paints, blobs, "
    "convex-hull shape tests, a legend test for white panels. It is measured on the same frames below: it finds "
    "well under half the signs and fires on red cars, barrels and billboards, so the learned localizer is the one "
    "the device runs.",
    "- **NMS** runs in numpy on the host (`edge/localizer.py`: 3x3 peak picking, threshold, top-k, greedy box NMS), "
    "not as ONNX NonMaxSuppression: the graph is Conv/ReLU/Sigmoid/Slice/Concat (+ Q/DQ), which onnxruntime and "
    "TensorRT 8.5-10 all run, so the same decode follows either backend. The ONNX graph is what TensorRT builds "
    "(`signguard engine --bundle bundles/localizer`, the INT8 Q/DQ passes `calib.qdq.check_qdq`); no TensorRT "
    "engine was built here (no GPU on this machine).",
    "- **INT8**: onnxruntime `quantize_static`, symmetric Q/DQ, per-channel **7-bit** weights (`reduce_range`): "
    "with 8-bit weights the fused INT8 convs of onnxruntime on this AVX2 CPU (no VNNI) saturated their int16 pair "
    "sums on whole frames and lost half of the FP32 boxes, while the same Q/DQ graph run unfused was right; "
    "calibrated (entropy) on 512 training frames through the device preprocessing. The output head (the last 1x1 "
    "conv, its slices, the sigmoid and the concat: 0.1% of the multiply-adds) stays float "
    "(`export.localizer.head_nodes`): quantized, it shared one scale between heat logits and box regression and "
    "the heat reached the threshold in steps of ~0.05, so no INT8 threshold kept both >= 95% recall and <= 0.1 "
    "FP per frame (96.5% at 0.113 FP, then 94.9% at 0.075) while FP32 did.",
    "- **Tracker** (`edge/tracker.py`): greedy IoU / centroid matching against constant-velocity predictions "
    "(centre and log size); between localizer runs (every N frames) the boxes are the predictions, and a confirmed "
    "track (matched at least twice) that the localizer misses keeps its predicted box for up to 2 runs, logged "
    "with `detected: false` (the drive-by table counts the frames the localizer itself found in brackets).",
    "- **A classifier for detected ROIs**: a classifier trained on tight rendered crops is fragile to box error: "
    "the synthetic baseline reads 97% of held-out signs from the tight box, 44% when the box is a tenth of its "
    "height lower (table at the end). A localizer's boxes are off by that much on small signs (median IoU "
    "about 0.7 with the true box at 10-24 px). `configs/baseline_roi.yaml` is the baseline recipe with "
    "`data.roi_jitter: 0.15`: each training sign is cropped from a box moved by up to 15% of its side and "
    "scaled by 0.85-1.15 per axis "
    "(`train.data.datasets.jitter_box`). It costs 0.4 points on tight crops and holds 91-97% under every box "
    "error measured; the drive-by target is judged with it. The tight-box baseline's rows are shown beside it: "
    "with this localizer's boxes it also reads every frame right when the localizer runs on every frame, and "
    "loses up to 3.3 points when the tracker carries the boxes between runs (every 2-5 frames). With the "
    "two-stage localizer of the previous version (boxes 2-3 px low on the drive-by) it read 77.8%.",
    "",
    "## Measurements", "",
]


def targets(results: Dict[str, Any]) -> List[str]:
    """The issue's "done when" items with the measured values (PASS / MISS)."""
    d, lat, dv = results["detectors"]["localizer_int8"], results["latency"], results["driveby"][0]
    rec = d["bins"][">=24"]["recall"]
    one = [r for r in dv["detect"] if r["precision"] == "int8" and r["every"] == 1][0]
    gap = 100 * (dv["csv_accuracy"] - one["end_to_end_accuracy"])
    rows = [("recall >= 95% for signs >= 24 px (INT8, held-out scenes)", rec >= 0.95, "%.1f%% (%d signs; %s)" % (
                100 * rec, d["bins"][">=24"]["n_gt"], ", ".join("seed %s: %.1f%%" % (k, 100 * v["recall_ge24"])
                                                                 for k, v in d["by_seed"].items()))),
            ("<= 0.1 FP per frame, sign-free scenes", d["empty_fp_per_frame"] <= 0.1,
             "%.3f" % d["empty_fp_per_frame"]),
            ("<= 0.1 FP per frame, mixed scenes", d["fp_per_frame"] <= 0.1, "%.3f" % d["fp_per_frame"]),
            ("INT8 p50 <= 10 ms per frame, 1 thread, wall clock", lat["int8_1thread"]["p50_ms"] <= 10,
             "%.2f ms at load average %.1f on 2 shared cores (process CPU time %.2f ms)"
             % (lat["int8_1thread"]["p50_ms"], results["load_before_latency"][0], lat["int8_1thread"]["cpu_p50_ms"])),
            ("drive-by accuracy with --roi detect within 2 points of CSV ROIs (INT8, every frame, `%s`)"
             % dv["classifier"], gap <= 2,
             "%.1f%% vs %.1f%%" % (100 * one["end_to_end_accuracy"], 100 * dv["csv_accuracy"])),
            ("first detection <= 5 frames after the sign is 24 px wide", one["frames_after_24px"] is not None
             and one["frames_after_24px"] <= 5, "first detected at frame %s; 24 px wide from frame %d"
             % (one["first_detection_frame"], dv["first_frame_24px"]))]
    out = ["# Sign localizer (issue 16)", "", "| target | measured | holds |", "|---|---|---|"]
    out += ["| %s | %s | %s |" % (name, value, "yes" if ok else "**no**") for name, ok, value in rows]
    return out + [""]


if __name__ == "__main__":
    main()
