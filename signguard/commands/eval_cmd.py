"""``signguard eval SWEEP.yaml [--quick] [--out DIR]``: models x attacks -> report.md, results.csv/json, plots."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep YAML (see configs/eval/blurnet.yaml)")
    p.add_argument("--out", help="output folder (default reports/<sweep name>[_quick])")
    p.add_argument("--quick", action="store_true", help="the sweep's reduced profile (its quick: block)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from train.eval.sweep_config import load_sweep
    from train.eval.sweep_runner import run_sweep

    cfg = load_sweep(args.sweep, quick=args.quick)
    out = Path(args.out or f"reports/{cfg.name}{'_quick' if args.quick else ''}")
    res = run_sweep(cfg, out, quick=args.quick, progress=not args.quiet)
    print(f"{cfg.name}: {sum(len(v) for v in res['attacks'].values())} cells in {res['wall_s']} s -> "
          f"{out / 'report.md'}")
    return 0
