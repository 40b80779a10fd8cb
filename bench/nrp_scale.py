"""Does NRP's miss come from scale?  Purifiers trained longer and larger, behind the same classifiers ->
reports/nrp/scale.{md,json}.

    python bench/nrp_scale.py --purifier cpu=runs/nrp/purifier --purifier long=runs/nrp/gpu/purifier_long \\
        --purifier large=runs/nrp/gpu/purifier_large

The CPU recipe (``configs/nrp.yaml``) trains a 46k-parameter purifier for 186 steps with a 3-step SSP; the
report's scale bullet names that as one possible reason the purifier restores little under transferred PGD.
This measures it: each purifier in front of the report's three classifiers, under PGD 16/255 made on the bare
classifier (the report's ``pgd16_transfer``: L-inf, 10 steps of 4/255, random start), on the same test images
(``--n`` per classifier, seed 0).  Per cell: accuracy behind the purifier, the share of the bare classifier's
clean accuracy it restores, and the share of the perturbation it lets through (``||P(x') - P(x)|| / ||x' - x||``).
Each purifier's size and training length come from its own run folder.

The same measurement answers the extractor question (``--stem extractor``): purifiers trained on SSP from a
LISA-CNN extractor (the evaluated classifiers' own architecture) beside the recipe's VGG-extractor purifier.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from nrp_report import CLASSIFIERS, ROOT, let_through  # bench/ (the script folder): the report's classifiers

from edge.fileio import atomic_write_json, atomic_write_text
from train.attacks.pgd import PGD
from train.checkpoint import load_checkpoint
from train.data.datasets import load_checkpoint_data
from train.defenses.nrp import load_purifier


def training_of(run: Path, pur: torch.nn.Module, meta: dict) -> dict:
    """Size and training length of a purifier run: parameters, steps, batch, SSP steps, epochs."""
    rec = meta["recipe"]
    last = json.loads((run / "log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    return {"params": sum(p.numel() for p in pur.parameters()), "architecture": meta["architecture"],
            "steps": last["steps"], "batch": rec["optim"]["batch_size"], "ssp_steps": rec["ssp"]["steps"],
            "epochs_done": last["epoch"] + 1, "epochs_planned": rec["optim"]["epochs"],
            "extractor": rec["extractor"], "layer": rec["layer"],
            "val_ssp_distortion": [last["dist_adv"], last["dist_purified"]]}


def _acc(clf: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((clf(x).argmax(1) == y).float().mean())


def measure(purifiers: dict[str, str], n: int, seed: int) -> dict:
    loaded = {k: load_purifier(ROOT / v) for k, v in purifiers.items()}
    out: dict = {"training": {k: training_of(ROOT / purifiers[k], p, m) for k, (p, m) in loaded.items()},
                 "cells": []}
    pur = {k: p for k, (p, _) in loaded.items()}
    for label, path in CLASSIFIERS.items():
        clf, meta = load_checkpoint(ROOT / path)
        t = load_checkpoint_data(meta, progress=False).test.sample(n, seed)
        x, y = torch.from_numpy(t.x), torch.from_numpy(t.y).long()
        xa = PGD(clf, eps=16 / 255, alpha=4 / 255, steps=10)(x, y, seed=seed).x_adv
        with torch.no_grad():
            clean, bare = _acc(clf, x, y), _acc(clf, xa, y)
            for name, p in pur.items():
                px, pa = p(x), p(xa)
                adv = _acc(clf, pa, y)
                out["cells"].append({"classifier": label, "purifier": name, "clean_bare": clean,
                                     "clean": _acc(clf, px, y), "pgd16_bare": bare, "pgd16": adv,
                                     "restored": adv / clean, "let_through": let_through(x, xa, px, pa), "n": n})
    return out


def markdown(res: dict, args: argparse.Namespace, wall: float) -> str:
    cmd = " ".join(f"--purifier {p}" for p in args.purifier)
    stem = "" if args.stem == "scale" else f" --stem {args.stem} --title '{args.title}'"
    lines = [f"# NRP: {args.title}", "",
             f"Regenerate: `python bench/nrp_scale.py {cmd} --n {args.n}{stem}`.  Machine: {platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__}; wall {wall:.0f} s.", "",
             "PGD 16/255 made on the bare classifier (L-inf, 10 steps of 4/255), scored through each purifier; "
             f"{args.n} test images per classifier.  Each cell: accuracy behind the purifier (share of the bare "
             "classifier's clean accuracy restored; share of the perturbation let through, 1 = untouched).", "",
             "Training: each run's own record; its last column is on the run's own held-out SSP examples, made "
             "with its own SSP steps (so runs with different SSP steps differ there before purification).", "",
             "| purifier | extractor / SSP layer | parameters | steps x batch | SSP steps | epochs "
             "| val SSP feature distortion -> purified |", "|---|---|---|---|---|---|---|"]
    for name, t in res["training"].items():
        lines.append(f"| {name} | `{t['extractor']}` / `{t['layer']}` | {t['params']:,} | "
                     f"{t['steps']} x {t['batch']} | {t['ssp_steps']} | "
                     f"{t['epochs_done']} of {t['epochs_planned']} | {t['val_ssp_distortion'][0]:.3f} -> "
                     f"{t['val_ssp_distortion'][1]:.3f} |")
    names = list(res["training"])
    lines += ["", "| classifier | clean bare | PGD 16/255 bare | " + " | ".join(
        f"{p}: clean / PGD 16/255 (restored; let through)" for p in names) + " |", "|---" * (3 + len(names)) + "|"]
    for label in CLASSIFIERS:
        cells = {c["purifier"]: c for c in res["cells"] if c["classifier"] == label}
        c0 = next(iter(cells.values()))
        lines.append(f"| {label} | {100 * c0['clean_bare']:.1f}% | {100 * c0['pgd16_bare']:.1f}% | " + " | ".join(
            f"{100 * cells[p]['clean']:.1f}% / {100 * cells[p]['pgd16']:.1f}% ({100 * cells[p]['restored']:.1f}%; "
            f"{cells[p]['let_through']:.2f})" for p in names) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--purifier", action="append", required=True, metavar="LABEL=RUN_DIR")
    p.add_argument("--n", type=int, default=300, help="test images per classifier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "nrp")
    p.add_argument("--stem", default="scale", help="output file stem under --out (scale: the scale study)")
    p.add_argument("--title", default="does a longer, larger purifier restore more?", help="the report's question")
    args = p.parse_args()
    purifiers = {}
    for spec in args.purifier:
        label, _, path = spec.partition("=")
        if not (label and path):
            p.error(f"--purifier {spec!r}: expected LABEL=RUN_DIR")
        purifiers[label] = path
    torch.set_num_threads(1)
    t0 = time.time()
    res = measure(purifiers, args.n, args.seed)
    atomic_write_json(args.out / f"{args.stem}.json", {**res, "args": {**vars(args), "out": str(args.out)}})
    atomic_write_text(args.out / f"{args.stem}.md", markdown(res, args, time.time() - t0))
    print(f"-> {args.out / args.stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
