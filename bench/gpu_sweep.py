"""Run a sweep's training jobs side by side on one GPU machine, under one deadline, and pack their run folders.

    python bench/gpu_sweep.py bench/gpu_jobs/deep_defense.txt --deadline 420 --pack out/

Why side by side: the jobs this is for are launch-bound, not compute-bound.  A Deep Defense step runs ~5,000
small kernels (the DeepFool unrolled through autograd, then differentiated again) on a 0.7M-parameter network,
so one job leaves a large GPU mostly idle; a c-sweep's jobs share it instead of queueing.  Why a deadline: a
lent machine's time is fixed; every job checkpoints each epoch (atomically), so a job stopped at the deadline
keeps its best epoch so far, and the summary says which jobs finished.

The jobs file holds one ``signguard`` command line per line (``#`` starts a comment); each must name its
``--run-dir``.  Each job's output goes to ``<run-dir>.log``.  ``--pack DIR`` then writes the run folders -- less
the resume state (``train_state.*``, ``last.*``: bulky, and a lent machine's runs are not resumed there) -- as
tar files of at most ``--max-bytes`` each, plus ``summary.json`` (per job: exit code, seconds, last log record).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SKIP = ("train_state.", "last.")  # resume state: not needed to evaluate or ship a run


def read_jobs(path: Path) -> list[tuple[list[str], Path]]:
    """(argv after ``signguard``, run folder) per non-comment line; a line without ``--run-dir`` is an error."""
    jobs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        argv = shlex.split(line)
        if "--run-dir" not in argv or argv.index("--run-dir") + 1 >= len(argv):
            sys.exit(f"{path}:{n}: expected --run-dir <folder> in {line!r}")
        jobs.append((argv, Path(argv[argv.index("--run-dir") + 1])))
    if not jobs:
        sys.exit(f"{path}: no jobs")
    return jobs


def run_all(jobs: list[tuple[list[str], Path]], deadline_s: float, threads: int) -> list[dict]:
    """Start every job, wait for all of them or the deadline (then SIGTERM, and SIGKILL 15 s later)."""
    # NVIDIA_TF32_OVERRIDE=0: float32 convolutions as on a CPU (no TF32), so a GPU run trains the same recipe
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "NVIDIA_TF32_OVERRIDE": "0"}
    procs, t0 = [], time.time()
    for argv, run_dir in jobs:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(f"{run_dir}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        cmd = [sys.executable, "-m", "signguard", *argv]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, run_dir, argv))
        print(f"started: signguard {shlex.join(argv)}", flush=True)
    results = {}
    while len(results) < len(procs) and time.time() - t0 < deadline_s:
        for p, _log, run_dir, _ in procs:
            if run_dir not in results and p.poll() is not None:
                results[run_dir] = round(time.time() - t0, 1)
                print(f"{run_dir}: exit {p.returncode} after {results[run_dir]} s", flush=True)
        time.sleep(2)
    late = [p for p, _, run_dir, _ in procs if run_dir not in results]
    for p in late:
        p.send_signal(signal.SIGTERM)
    for p in late:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    summary = []
    for p, log, run_dir, argv in procs:
        log.close()
        log_file = run_dir / "log.jsonl"
        records = log_file.read_text(encoding="utf-8").splitlines() if log_file.is_file() else []
        summary.append({"run_dir": str(run_dir), "argv": argv, "returncode": p.returncode,
                        "finished": run_dir in results, "seconds": results.get(run_dir, round(time.time() - t0, 1)),
                        "last_record": json.loads(records[-1]) if records else None})
    return summary


def pack(run_dirs: list[Path], out: Path, max_bytes: int) -> list[str]:
    """The run folders (and their ``.log``) into ``sweep_<i>.tar`` files of at most ``max_bytes`` each."""
    members = []
    for d in run_dirs:
        files = sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith(SKIP)) if d.is_dir() else []
        log = Path(f"{d}.log")
        members.append([*files, *([log] if log.is_file() else [])])
    bins: list[list[Path]] = []
    sizes: list[int] = []
    for files in members:  # one run's files stay in one tar
        size = sum(f.stat().st_size for f in files) + 1024 * (len(files) + 1)
        if size > max_bytes:
            sys.exit(f"{files[0].parent}: {size} bytes, more than --max-bytes {max_bytes} on its own")
        i = next((i for i, s in enumerate(sizes) if s + size <= max_bytes), None)
        if i is None:
            bins.append([])
            sizes.append(0)
            i = len(bins) - 1
        bins[i] += files
        sizes[i] += size
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, files in enumerate(bins):
        name = out / f"sweep_{i}.tar"
        with tarfile.open(name, "w") as tar:
            for f in files:
                tar.add(f, arcname=str(f))
        names.append(name.name)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jobs", type=Path, help="one signguard command line per line, each with --run-dir")
    p.add_argument("--deadline", type=float, default=420, help="seconds before unfinished jobs are stopped")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per job (OMP_NUM_THREADS)")
    p.add_argument("--pack", type=Path, help="write the run folders here as tar files, with summary.json")
    p.add_argument("--max-bytes", type=int, default=15 * 2**20, help="largest tar file")
    args = p.parse_args()
    jobs = read_jobs(args.jobs)
    summary = run_all(jobs, args.deadline, args.threads)
    for s in summary:
        print(json.dumps({k: s[k] for k in ("run_dir", "returncode", "finished", "seconds")}), flush=True)
    if args.pack:
        tars = pack([d for _, d in jobs], args.pack, args.max_bytes)
        (args.pack / "summary.json").write_text(json.dumps({"jobs": summary, "tars": tars}, indent=2), encoding="utf-8")
    if not all(s["finished"] and s["returncode"] == 0 for s in summary):
        sys.exit(1)


if __name__ == "__main__":
    main()
