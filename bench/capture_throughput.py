"""Does the device loop keep up with the decoder?  Loop throughput vs raw OpenCV decode, per-stage latency.

    OMP_NUM_THREADS=1 python bench/capture_throughput.py --out reports/deploy/capture_throughput

Takes the demo's drive-by (`signguard demo`: stop sign, 90 frames, seed 7, 640x360 mp4v), loops it to
3,000 frames (re-encoded as one mp4v file, with its ROI CSV) and the baseline bundle (exported from
``runs/sweep/synthetic/baseline`` unless ``--bundle`` names one), then times, in interleaved trials:

- ``raw decode``: ``cv2.VideoCapture.read()`` over the file and nothing else -- the ceiling;
- ``loop, pipelined``: ``run_loop`` as ``signguard run`` runs it (decode thread, queue of 8 frames, CSV
  ROI, preprocess, onnxruntime CPU, frame log written and flushed per frame);
- ``loop, inline``: the same loop with ``queue_size=0`` (decode, preprocess, infer one after another, as
  before issue 14).

The machine is shared and its load changes from second to second, so each trial runs the three one
after another (in alternating order) and the throughput ratio is taken *within* a trial; the report
gives the median and the range over trials.  Per-stage p50/p99 come from the frame logs of the
pipelined runs (exact order statistics over every frame), and the preprocess+infer p99 is the per-frame
sum.  Two more sections: paired runs with onnxruntime's default (spinning) session options against the
shipped ones, and a simulated camera (a live source delivering the same frames at twice the loop's rate)
that shows the bounded queue at work: frames are dropped and counted, and the queue wait stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import cv2
import numpy as np

from edge.bundle import load_bundle
from edge.fileio import atomic_write_json, atomic_write_text
from edge.loop import run_loop
from edge.rois import CsvRoi
from edge.sources import FrameSource, open_source

REPO = Path(__file__).resolve().parents[1]


def demo_driveby(work: Path) -> Tuple[Path, Path]:
    """The demo's drive-by (signguard/demo.py step 4): stop sign, 90 frames, seed 7."""
    from train.data.classes import STOP
    from train.data.driveby import render_driveby

    d = render_driveby(work / "video", class_id=STOP, n_frames=90, seed=7, name="stop_driveby")
    return Path(d.video_path), Path(d.boxes_csv)


def looped(video: Path, boxes: Path, n: int, work: Path) -> Tuple[Path, Path]:
    """``video`` repeated to ``n`` frames (mp4v, same size and fps) and its CSV with frame numbers continued."""
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    out, csv = work / ("%s_x%d.mp4" % (video.stem, n)), work / ("%s_x%d.csv" % (video.stem, n))
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        writer.write(frames[i % len(frames)])
    writer.release()
    lines = boxes.read_text().splitlines()
    rows = {int(r.split(",", 1)[0]): r.split(",", 1)[1] for r in lines[1:] if r.strip()}
    csv.write_text(lines[0] + "\n" + "".join("%d,%s\n" % (i, rows[i % len(frames)]) for i in range(n)
                                              if i % len(frames) in rows))
    return out, csv


def export_baseline(work: Path) -> Path:
    out = work / "bundle_baseline"
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "signguard", "export", "--checkpoint",
                        str(REPO / "runs/sweep/synthetic/baseline"), "--out", str(out), "--quiet"], check=True)
    return out


def raw_decode(video: Path) -> Dict[str, float]:
    cap = cv2.VideoCapture(str(video))
    t, c, n = time.perf_counter(), time.process_time(), 0
    while cap.read()[0]:
        n += 1
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    cap.release()
    return {"frames": n, "fps": n / wall, "cpu_ms_per_frame": 1000 * cpu / n}


def loop_run(bundle: Any, video: Path, boxes: Path, queue: int, log: Path, max_frames: Any = None) -> Dict[str, Any]:
    if log.exists():
        log.unlink()
    c = time.process_time()
    with open_source(str(video)) as src:
        s = run_loop(bundle, src, CsvRoi(boxes), log_path=str(log), queue_size=queue, max_frames=max_frames)
    cpu = time.process_time() - c
    return {"frames": s.frames, "fps": s.fps, "cpu_ms_per_frame": 1000 * cpu / max(s.frames, 1),
            "accuracy": s.accuracy, "dropped": s.dropped}


def log_stages(logs: List[Path]) -> Dict[str, Dict[str, float]]:
    """Exact p50/p99/max per stage over every frame record of ``logs``, plus preprocess+infer per frame."""
    stages: Dict[str, List[float]] = {}
    for p in logs:
        for line in p.read_text().splitlines():
            r = json.loads(line)
            if "event" in r or not r["topk"]:
                continue
            lat = r["latency_ms"]
            for k, v in lat.items():
                stages.setdefault(k, []).append(v)
            stages.setdefault("preprocess+infer", []).append(lat["preprocess"] + lat["infer"])
    return {k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "max": float(np.max(v)),
                "n": len(v)} for k, v in stages.items()}


class PacedCamera(FrameSource):
    """A simulated live camera: ``frames`` delivered at ``fps`` in real time (the clock does not wait for
    the reader), like a V4L2 device; ``live = True`` so the loop drops the oldest frame when behind."""

    live = True

    def __init__(self, frames: List[np.ndarray], fps: float, n: int) -> None:
        self.frames, self.fps, self.n, self.uri = frames, fps, n, "paced-camera"
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[Tuple[int, np.ndarray]]:
        t0 = time.perf_counter()
        for i in range(self.n):
            delay = t0 + i / self.fps - time.perf_counter()
            if delay > 0 and self._stop.wait(delay):
                return
            yield i, self.frames[i % len(self.frames)].copy()

    def interrupt(self) -> None:
        self._stop.set()


def spinning_bundle(bundle_dir: Path) -> Any:
    """The bundle with onnxruntime's default session options (threads spin after each run), as before issue 14."""
    import onnxruntime as ort

    b = load_bundle(bundle_dir)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    b.backend.session = ort.InferenceSession(str(b.model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    return b


def spinning_section(bundle: Any, bundle_dir: Path, video: Path, boxes: Path, logs: Path, pairs: int,
                     frames: int) -> List[Dict[str, float]]:
    """Paired runs of the pipelined loop with the shipped session options and with spinning threads."""
    spin = spinning_bundle(bundle_dir)
    out = []
    for i in range(pairs):
        a = loop_run(bundle, video, boxes, 8, logs / ("nospin_%d.jsonl" % i), frames)
        b = loop_run(spin, video, boxes, 8, logs / ("spin_%d.jsonl" % i), frames)
        out.append({"no_spin_fps": a["fps"], "spin_fps": b["fps"], "no_spin_cpu_ms": a["cpu_ms_per_frame"],
                    "spin_cpu_ms": b["cpu_ms_per_frame"]})
        print("spinning pair %d: %.0f FPS without, %.0f FPS with" % (i + 1, a["fps"], b["fps"]), flush=True)
    return out


def overhead_section(bundle_dir: Path, video: Path, boxes: Path, n: int) -> Dict[str, Any]:
    """Preprocess + inference of one frame at a time (a live camera at steady state), ``n`` frames.

    Wall time includes whatever the OS does to the process meanwhile; the calling thread's CPU time
    (onnxruntime with one intra-op thread, so all its work is in that thread) is the work itself.
    """
    from edge.backends import OrtBackend
    from edge.loop import _infer
    from edge.preprocess import preprocess

    b = load_bundle(bundle_dir)
    b.backend = OrtBackend(b.model_path, input_name=b.backend.input_name, output_name=b.backend.output_name,
                           threads=1)
    cfg = b.preprocess_cfg.with_color_order("BGR")
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    rois = CsvRoi(boxes)
    wall, cpu = [], []
    for i in range(n):
        frame = frames[i % len(frames)]
        t, c = time.perf_counter(), time.thread_time()
        x = preprocess(frame, rois.get(i % len(frames), frame).box, cfg)[None]
        _infer(b, x, b.classes, 3)
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - t) * 1e3)
    return {"frames": n, "wall_p50": float(np.percentile(wall, 50)), "wall_p99": float(np.percentile(wall, 99)),
            "cpu_p50": float(np.percentile(cpu, 50)), "cpu_p99": float(np.percentile(cpu, 99))}


def live_section(bundle: Any, video: Path, boxes: Path, fps: float, n: int, log: Path) -> Dict[str, Any]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < 90:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    if log.exists():
        log.unlink()
    s = run_loop(bundle, PacedCamera(frames, fps, n), CsvRoi(boxes), log_path=str(log))
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    waits = [r["latency_ms"]["queue"] for r in recs if "event" not in r]
    tenth = max(1, len(waits) // 10)
    backlog = max(0.0, n - s.fps * n / fps)  # frames an unbounded queue would hold when the camera stops
    return {"camera_fps": fps, "camera_frames": n, "processed": s.frames, "dropped": s.dropped,
            "unbounded_backlog_frames": backlog, "unbounded_wait_ms": 1000.0 * backlog / max(s.fps, 1e-9),
            "dropped_in_log": sum(r.get("dropped", 0) for r in recs if "event" not in r),
            "loop_fps": s.fps, "queue_ms_first_tenth_p50": float(np.median(waits[:tenth])),
            "queue_ms_last_tenth_p50": float(np.median(waits[-tenth:])),
            "queue_ms_p99": float(np.percentile(waits, 99)), "total_ms_p99": s.timings_ms["total"]["p99"]}


def machine() -> Dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "opencv": cv2.__version__, "onnxruntime": ort.__version__, "load_avg_1min_at_start": os.getloadavg()[0]}


def to_markdown(res: Dict[str, Any]) -> str:
    t = res["trials"]
    ratio, inline = [x["ratio_pipelined"] for x in t], [x["ratio_inline"] for x in t]
    m = res["machine"]
    cpu = tuple(float(np.median([x[k]["cpu_ms_per_frame"] for x in t])) for k in ("raw", "pipelined", "inline"))
    lines = [
        "# Capture throughput: the device loop vs raw OpenCV decode (issue 14)",
        "",
        "Regenerate: `OMP_NUM_THREADS=1 python bench/capture_throughput.py --out reports/deploy/capture_throughput`",
        "",
        "Input: the demo's drive-by (stop sign, 640x360, seed 7) looped to %d frames (`%s`, mp4v), its ROI CSV, "
        "bundle `%s` (fp32 ONNX, onnxruntime CPU).  Machine: %s, %d cores, %s; OpenCV %s, onnxruntime %s; load "
        "average %.1f at the start (shared with other jobs)." % (
            res["frames"], Path(res["video"]).name, res["bundle"], m["cpu"], m["cores"], m["platform"], m["opencv"],
            m["onnxruntime"], m["load_avg_1min_at_start"]),
        "",
        "| trial | raw decode FPS | loop pipelined FPS | ratio | loop inline FPS | ratio | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, x in enumerate(t):
        lines.append("| %d | %.0f | %.0f | %.2f | %.0f | %.2f | %.1f |" % (
            i + 1, x["raw"]["fps"], x["pipelined"]["fps"], x["ratio_pipelined"], x["inline"]["fps"],
            x["ratio_inline"], x["load"]))
    lines += [
        "",
        "**Pipelined loop / raw decode: median %.2fx** (range %.2f-%.2f over %d trials; target >= 0.8x).  "
        "Inline (decode, preprocess, infer one after another): median %.2fx." % (
            np.median(ratio), min(ratio), max(ratio), len(t), np.median(inline)),
        "",
        "CPU time per frame (all threads, median over trials): raw decode %.2f ms, pipelined loop %.2f ms, "
        "inline loop %.2f ms." % cpu,
        "",
        "How to read the ratio on a shared machine: with more runnable threads than cores the scheduler shares "
        "CPU time per *thread*, so the loop's decode and inference threads together get more of it than the "
        "single-threaded raw decode, and the ratio can exceed 1.  The CPU times are the load-independent "
        "measure: with %d cores to itself the pipelined loop could reach at most %d x %.2f / %.2f = **%.2fx** "
        "raw decode (all cores busy, none idle), a bound an idle machine would approach from below." % (
            m["cores"], m["cores"], cpu[0], cpu[1], m["cores"] * cpu[0] / cpu[1]),
        "",
        "## Per-stage latency of the pipelined loop (every frame of every trial)",
        "",
        "| stage | p50 ms | p99 ms | max ms | frames |",
        "|---|---|---|---|---|",
    ]
    for k, v in res["stages"].items():
        lines.append("| %s | %.3f | %.3f | %.2f | %d |" % (k, v["p50"], v["p99"], v["max"], v["n"]))
    pi = res["stages"]["preprocess+infer"]
    lines += [
        "",
        "capture = the decoder's read (in the decode thread); queue = wait between capture and processing; "
        "total = start of the read to the logged record (includes the queue, which a file source keeps full).  "
        "Preprocess + inference (per frame's share of its batch) in these runs: p50 %.3f ms, p99 %.3f ms." % (
            pi["p50"], pi["p99"]),
        "",
        "## Preprocess + inference per frame, one frame at a time",
        "",
    ]
    ov = res["overhead"]
    lines.append(
        "%d frames of the drive-by, each cropped (CSV ROI), preprocessed and classified alone (batch 1, "
        "onnxruntime with 1 intra-op thread, top-3 of the softmax), as a live camera at steady state: wall "
        "p50 %.3f ms, **p99 %.3f ms**; CPU time of the thread p50 %.3f ms, **p99 %.3f ms**.  Target p99 <= 2 ms: "
        "%s on CPU time, %s on wall time." % (
            ov["frames"], ov["wall_p50"], ov["wall_p99"], ov["cpu_p50"], ov["cpu_p99"],
            "met" if ov["cpu_p99"] <= 2.0 else "missed by %.2f ms" % (ov["cpu_p99"] - 2.0),
            "met" if ov["wall_p99"] <= 2.0 else "missed by %.2f ms" % (ov["wall_p99"] - 2.0)))
    sp = res["spinning"]
    lines += [
        "",
        "## onnxruntime thread spinning",
        "",
        "The edge backend now creates its sessions with `session.intra_op.allow_spinning = 0`.  Paired runs of the "
        "pipelined loop over the first %d frames, with these options and with onnxruntime's defaults (pool "
        "threads busy-wait after each run, taking the core the decode thread needs):" % res["spinning_frames"],
        "",
        "| pair | no spinning FPS | spinning FPS | no spinning CPU ms/frame | spinning CPU ms/frame |",
        "|---|---|---|---|---|",
    ]
    for i, x in enumerate(sp):
        lines.append("| %d | %.0f | %.0f | %.2f | %.2f |" % (i + 1, x["no_spin_fps"], x["spin_fps"],
                                                          x["no_spin_cpu_ms"], x["spin_cpu_ms"]))
    lines += ["", "## A live source faster than the loop", ""]
    lv = res["live"]
    lines.append(
        "A simulated camera delivered %d frames at %.0f FPS (about twice the loop's median rate above) into the "
        "loop with its default queue of 8 frames: %d processed at %.0f FPS, **%d dropped** (the summary's "
        "`dropped`; the frame log's per-record `dropped` adds up to %d).  Queue wait: median %.2f ms over the "
        "first tenth of the frames, %.2f ms over the last tenth, p99 %.2f ms over all.  An unbounded queue "
        "would have held about %.0f frames when the camera stopped, i.e. %.0f ms of wait for the last frame." % (
            lv["camera_frames"], lv["camera_fps"], lv["processed"], lv["loop_fps"], lv["dropped"],
            lv["dropped_in_log"], lv["queue_ms_first_tenth_p50"], lv["queue_ms_last_tenth_p50"],
            lv["queue_ms_p99"], lv["unbounded_backlog_frames"], lv["unbounded_wait_ms"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="bundle folder (default: export runs/sweep/synthetic/baseline)")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--work", default="runs/capture_bench", help="scratch folder (video, bundle, logs)")
    ap.add_argument("--out", default="reports/deploy/capture_throughput", help="report path stem (.json, .md)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    video, boxes = demo_driveby(work)
    long_video, long_boxes = looped(video, boxes, args.frames, work)
    bundle_dir = Path(args.bundle) if args.bundle else export_baseline(work)
    bundle = load_bundle(bundle_dir)
    logs = Path(tempfile.mkdtemp(dir=str(work), prefix="logs_"))
    res: Dict[str, Any] = {"video": str(long_video), "frames": args.frames, "bundle": str(bundle_dir),
                           "machine": machine(), "trials": []}
    raw_decode(long_video)  # warm the page cache and the decoder's libraries
    for i in range(args.trials):
        trial: Dict[str, Any] = {"load": os.getloadavg()[0]}
        order = ["raw", "pipelined", "inline"] if i % 2 == 0 else ["inline", "pipelined", "raw"]
        for what in order:
            if what == "raw":
                trial["raw"] = raw_decode(long_video)
            else:
                q = 8 if what == "pipelined" else 0
                trial[what] = loop_run(bundle, long_video, long_boxes, q, logs / ("%s_%d.jsonl" % (what, i)))
        trial["ratio_pipelined"] = trial["pipelined"]["fps"] / trial["raw"]["fps"]
        trial["ratio_inline"] = trial["inline"]["fps"] / trial["raw"]["fps"]
        res["trials"].append(trial)
        print("trial %d: raw %.0f  pipelined %.0f (%.2fx)  inline %.0f (%.2fx)  load %.1f" % (
            i + 1, trial["raw"]["fps"], trial["pipelined"]["fps"], trial["ratio_pipelined"], trial["inline"]["fps"],
            trial["ratio_inline"], trial["load"]), flush=True)
    res["stages"] = log_stages(sorted(logs.glob("pipelined_*.jsonl")))
    loop_fps = float(np.median([x["pipelined"]["fps"] for x in res["trials"]]))
    res["overhead"] = overhead_section(bundle_dir, video, boxes, args.frames)
    res["spinning_frames"] = 1000
    res["spinning"] = spinning_section(bundle, bundle_dir, long_video, long_boxes, logs, 3, 1000)
    res["live"] = live_section(bundle, video, long_boxes, 2 * loop_fps, 1500, logs / "live.jsonl")
    md = to_markdown(res)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print("-> %s, %s" % (out.with_suffix(".md"), out.with_suffix(".json")))


if __name__ == "__main__":
    main()
