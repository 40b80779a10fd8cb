"""Train every recipe in configs/ on the synthetic signs and on GTSRB-32; write an accuracy table.

    python bench/train_sweep.py --data synthetic gtsrb32 --out reports/accuracy

Each (recipe, dataset) trains into ``runs/sweep/<dataset>/<recipe>`` with
``--resume`` semantics, so an interrupted sweep continues where it stopped.
Writes ``<out>.json`` and ``<out>.md`` (test accuracy, seed, training time,
machine).  GTSRB-32 is ``../shared/data/gtsrb32/gtsrb32.npz`` by default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from edge.fileio import atomic_write_json, atomic_write_text
from train.config import load_recipe
from train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
GTSRB32 = ROOT.parent / "shared" / "data" / "gtsrb32" / "gtsrb32.npz"
# GTSRB-32 has 43 classes and real photographs: longer schedule, real-data augmentation
DATASETS = {
    "synthetic": {},
    "gtsrb32": {"data.kind": "npz", "data.path": str(GTSRB32), "optim.epochs": 15, "optim.batch_size": 64,
                "optim.label_smoothing": 0.1},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--recipes", nargs="*", help="recipe names (default: every configs/*.yaml)")
    p.add_argument("--epochs", type=int, help="override epochs for every run")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch default)")
    p.add_argument("--runs", default="runs/sweep")
    p.add_argument("--out", default="reports/accuracy")
    args = p.parse_args()
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    if args.recipes:
        paths = [q for q in paths if q.stem in args.recipes]
    out = Path(args.out)
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    for ds in args.data:
        for path in paths:
            over = dict(DATASETS[ds])
            if args.epochs:
                over["optim.epochs"] = args.epochs
            if args.threads:
                over["optim.num_threads"] = args.threads
            init = load_recipe(path).model.init
            if init:  # a fine-tuning recipe starts from the sweep's own run of the recipe it names
                over["model.init"] = str(Path(args.runs) / ds / Path(init).name)
            recipe = load_recipe(path, over)
            stack = recipe.defenses()
            t0 = time.time()
            m = train(recipe, Path(args.runs) / ds / recipe.name, resume=True, progress=False)
            results.setdefault(ds, {})[recipe.name] = {
                **m, "defense": stack.kind, "setting": stack.describe(), "seed": recipe.optim.seed,
                "epochs": recipe.optim.epochs, "wall_s": round(time.time() - t0, 1),
            }
            print(f"{ds:10s} {recipe.name:22s} test acc {100 * m['test_acc']:.2f}%  ({m['train_time_s']:.0f} s)",
                  flush=True)
            results["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                                  "cpus": os.cpu_count()}
            atomic_write_json(out.with_suffix(".json"), results)
            atomic_write_text(out.with_suffix(".md"), to_markdown(results))


def to_markdown(results: dict) -> str:
    lines = ["| recipe | defense | setting | " + " | ".join(f"{d} test acc | {d} time (s)" for d in DATASETS) + " |",
             "|---|---|---|" + "---|---|" * len(DATASETS)]
    names = sorted({n for d in DATASETS for n in results.get(d, {})})
    for n in names:
        row = next(results[d][n] for d in DATASETS if n in results.get(d, {}))
        cells = []
        for d in DATASETS:
            r = results.get(d, {}).get(n)
            cells += [f"{100 * r['test_acc']:.2f}%" if r else "-", f"{r['train_time_s']:.0f}" if r else "-"]
        lines.append(f"| {n} | {row['defense']} | {row['setting']} | " + " | ".join(cells) + " |")
    m = results.get("machine", {})
    return ("Test accuracy per recipe (seed 0; synthetic: held-out rendered test split, 18 classes; "
            f"gtsrb32: official GTSRB test set, 43 classes). Machine: {m}.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
