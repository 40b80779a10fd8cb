"""Why did `signguard bench` report PyTorch eager slower per image at batch 32 than at batch 1?  (issue 14)

    python bench/torch_threads.py --out reports/deploy/torch_threads

Times the synthetic baseline LISA-CNN (``runs/sweep/synthetic/baseline``) in PyTorch eager at batch 1 and
batch 32, the way ``train/eval/bench.py`` does (``time_interleaved``: 3 warm-up calls, then timed calls), under three
thread settings, each in a fresh process (OpenMP reads its environment once, at start-up):

- 2 threads, ``OMP_WAIT_POLICY`` unset (what the issue's run used: torch's default on 2 cores);
- 2 threads, ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep at barriers instead of spinning);
- 1 thread.

Besides wall-clock ms per image it records CPU time per image (all threads): spinning shows as CPU
spent without work.  It also times the first batch-32 calls separately, to see whether warm-up matters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge.fileio import atomic_write_json, atomic_write_text

CHILD = r"""
import json, sys, time
import numpy as np, torch
from train.checkpoint import load_checkpoint
from train.eval.bench import time_interleaved
torch.set_num_threads(int(sys.argv[2]))
model, _ = load_checkpoint(sys.argv[1])
model.eval()
x = np.random.RandomState(0).rand(32, 3, 32, 32).astype(np.float32)
def fn(a):
    with torch.no_grad():
        return model(torch.from_numpy(a)).numpy()
out = {"threads": torch.get_num_threads()}
first = []
for _ in range(3):  # the first calls at batch 32: is there a warm-up cost?
    t = time.perf_counter()
    fn(x)
    first.append((time.perf_counter() - t) * 1e3 / 32)
out["b32_first_calls_ms_per_img"] = first
for b, reps in ((1, 200), (32, 40)):
    xb = np.ascontiguousarray(x[:b])
    c = time.process_time()
    t = time_interleaved([fn], xb, reps)[0]
    out["b%d" % b] = {"wall_p50_ms_per_img": float(np.median(t)) * 1e3 / b,
                      "cpu_ms_per_img": (time.process_time() - c) * 1e3 / ((reps + 3) * b)}
print(json.dumps(out))
"""

SETTINGS = (("2 threads, OpenMP default (active wait)", 2, None), ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, "PASSIVE"),
            ("1 thread", 1, None))


def measure(checkpoint: str, threads: int, policy: str | None) -> Dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    r = subprocess.run([sys.executable, "-c", CHILD, checkpoint, str(threads)], env=env, capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/sweep/synthetic/baseline")
    ap.add_argument("--rounds", type=int, default=5, help="each setting is measured this many times, interleaved")
    ap.add_argument("--out", default="reports/deploy/torch_threads")
    args = ap.parse_args()
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name, _, _ in SETTINGS}
    for i in range(args.rounds):
        for name, threads, policy in SETTINGS:
            runs[name].append(measure(args.checkpoint, threads, policy))
            print(i, name, json.dumps(runs[name][-1]), flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"%s_%s" % (b, k): float(np.median([r[b][k] for r in rs])) for b in ("b1", "b32")
                         for k in ("wall_p50_ms_per_img", "cpu_ms_per_img")}
        summary[name]["b32_first_call_ms_per_img"] = float(np.median([r["b32_first_calls_ms_per_img"][0] for r in rs]))
    res = {"checkpoint": args.checkpoint, "rounds": args.rounds, "cores": os.cpu_count(),
           "load_avg_1min": os.getloadavg()[0], "summary": summary, "runs": runs}
    lines = ["# PyTorch eager: batch 32 vs batch 1 per image, by thread setting (issue 14, item 5)", "",
             "Regenerate: `python bench/torch_threads.py --out reports/deploy/torch_threads` (medians of %d "
             "interleaved fresh-process runs; %d cores, load average %.1f at the end: a shared machine)."
             % (args.rounds, res["cores"], res["load_avg_1min"]), "",
             "| setting | b1 ms/img (wall p50) | b32 ms/img (wall p50) | b1 CPU ms/img | b32 CPU ms/img | "
             "b32 first call ms/img |", "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append("| %s | %.3f | %.3f | %.3f | %.3f | %.3f |" % (
            name, s["b1_wall_p50_ms_per_img"], s["b32_wall_p50_ms_per_img"], s["b1_cpu_ms_per_img"],
            s["b32_cpu_ms_per_img"], s["b32_first_call_ms_per_img"]))
    md = "\n".join(lines) + "\n"
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
