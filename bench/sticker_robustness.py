"""Sticker robustness of defended models on the synthetic stop sign: RP2 (white-box and low-frequency, all 17
targets), ROA, and certified accuracy for the column-smoothing wrapper -> reports/sticker_robustness/.

    python bench/sticker_robustness.py --model baseline=runs/sweep/synthetic/baseline \\
        --model doa=runs/doa --model smoothing=runs/column_smoothing

Each defense is attacked as an attacker who knows it would: plain models directly; the smoothed classifier
through its expectation over all 32 ablations (:class:`train.defenses.smoothing.SoftVote`, EOT), each attack
then scored on the real vote.  RP2 optimises on ``--views`` poses and is scored by re-rendering
``--heldout`` other poses with the sticker painted on the sign; ROA runs on the clean held-out views.

Each model's row is kept in ``<out>/rows/<label>.json`` with the weights' hash and the attack settings, and
reused while both match: a model's 300-step row costs minutes, so rows can be computed by parallel runs (one
``--model`` each) and the table assembled by a last run naming them all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import torch

from edge.fileio import atomic_write_json, atomic_write_text
from train.attacks.adaptive_view import attacker_view
from train.attacks.roa import ROA
from train.attacks.rp2 import RP2, evaluate_stickers
from train.attacks.views import render_views
from train.checkpoint import load_checkpoint, read_sidecar
from train.data.classes import LISA_CLASSES, LISA_INDEX
from train.defenses import DefenseStack
from train.defenses.patchcleanser import PatchCleanser
from train.defenses.patchcleanser import certified as certified_double_masking
from train.defenses.smoothing import SmoothedClassifier, certified
from train.eval import metrics
from train.eval.sweep_runner import rp2_row
from train.trainer import predict, test_accuracy

OUT = "reports/sticker_robustness"
ATTACK_ARGS = ("sign", "views", "heldout", "steps", "seed")  # the settings a cached row was measured with


def rp2_cell(model, attack_model, train_views, heldout, label, targets, steps, dct_dim, seed, meta) -> dict:
    """RP2 stickers made on ``attack_model`` for every target, scored on ``model`` (the sweep's RP2 row)."""
    res = RP2(attack_model, steps=steps, lr=0.03, lam=0.002, views_per_step=10, dct_dim=dct_dim)(
        train_views, targets, seed=seed)
    row = rp2_row(evaluate_stickers(model, heldout, res, label=label), meta)
    return {k: row[k] for k in ("clean_view_acc", "avg_asr", "worst_asr", "worst_target", "avg_untargeted_asr")}


def evaluate(label: str, path: str, args: argparse.Namespace, train_views, heldout) -> dict:
    model, meta = load_checkpoint(path)
    attack_model = attacker_view(model)
    classes = list(meta.get("classes") or LISA_CLASSES)
    if args.sign not in classes:
        raise SystemExit(f"{path}: the model has no class {args.sign!r} to attack (its classes: {classes})")
    stop = classes.index(args.sign)  # the rendered LISA-18 sign, in the model's label space (GTSRB-32: 14)
    targets = [c for c in range(len(classes)) if c != stop]
    row = {"model": label, "defense": meta["defense"], "test_acc": test_accuracy(model, meta),
           "data": meta["recipe"]["data"]["kind"], "n_classes": len(classes)}
    t0 = time.time()
    for key, dct_dim in (("rp2_whitebox", 0), ("rp2_lowfreq", 16)):
        row[key] = rp2_cell(model, attack_model, train_views, heldout, stop, targets, args.steps, dct_dim, args.seed,
                            meta)
    y = torch.full((len(heldout),), stop, dtype=torch.long)
    x_roa = ROA(attack_model, height=7, width=7, stride=2, search="gradient", steps=30).generate(heldout.x, y)
    clean = predict(model, heldout.x)
    row["roa_7x7"] = {"clean_view_acc": metrics.accuracy(clean, y.numpy()),
                      "untargeted_asr": metrics.attack_success_rate(clean, predict(model, x_roa))}
    if isinstance(model, SmoothedClassifier):
        d = meta["defense"]
        delta = d["patch"] + d["band"] - 1
        with torch.no_grad():
            row["certified_view_acc"] = float(certified(model(heldout.x), y, delta).float().mean())
        row["certified_patch"] = d["patch"]
    if isinstance(model, PatchCleanser):
        with torch.no_grad():
            pred_map = model.prediction_map(heldout.x)
        row["certified_view_acc"] = float(certified_double_masking(pred_map, y).float().mean())
        row["certified_patch"] = f"{model.patch}x{model.patch}"
    row["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(row), flush=True)
    return row


def cached_row(label: str, path: str, args: argparse.Namespace, train_views, heldout, rows_dir: Path) -> dict:
    """The model's row from ``rows_dir`` when it was measured on these weights with these settings, else
    measured now and written there (atomically, so an interrupted table keeps the rows it finished)."""
    key = {"weights_sha256": read_sidecar(path)[1].get("weights_sha256"), **{a: getattr(args, a) for a in ATTACK_ARGS}}
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
        raise SystemExit(f"--model {label}={path}: the label names a file; use letters, digits, '_', '.', '-'")
    file = rows_dir / f"{label}.json"
    if file.is_file():
        saved = json.loads(file.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            print(f"{label}: reusing {file} (same weights and attack settings)", flush=True)
            return saved["row"]
    row = evaluate(label, path, args, train_views, heldout)
    atomic_write_json(file, {"key": key, "row": row})
    return row


def to_markdown(rows: list[dict], args: argparse.Namespace, wall: float) -> str:
    out = [f"# Sticker robustness on the synthetic {args.sign} sign", "",
           f"Regenerate: `python bench/sticker_robustness.py {' '.join('--model ' + m for m in args.model)} "
           f"--steps {args.steps} --views {args.views} --heldout {args.heldout}"
           f"{'' if args.out == OUT else ' --out ' + args.out}`.  Sign: {args.sign}; RP2 optimised "
           f"on {args.views} poses (seed 1), scored on {args.heldout} held-out poses (seed 2), every other class "
           f"of the model as a target (17 for LISA-18, 42 for GTSRB-32), "
           f"{args.steps} Adam steps, two-bar mask, lambda 0.002; low-frequency = DCT k=16 (BlurNet Eq. 8).  ROA: 7x7, "
           f"gradient search (top 5, stride 2), 30 steps of 4/255, untargeted, on the clean held-out views.  "
           f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; wall {wall:.0f} s.",
           "", "| model | data | defense | test acc | RP2 avg / worst targeted | RP2 untargeted "
           "| low-freq RP2 avg / worst | low-freq untargeted | ROA 7x7 untargeted | certified (held-out views) |",
           "|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return f"{100 * v:.1f}%"

    for r in rows:
        w, lf = r["rp2_whitebox"], r["rp2_lowfreq"]
        cert = f"{pct(r['certified_view_acc'])} ({r['certified_patch']}-px patch)" if "certified_view_acc" in r else "-"
        kind = DefenseStack.from_config(r["defense"]).kind
        out.append(f"| {r['model']} | {r['data']} | {kind} | {pct(r['test_acc'])} "
                   f"| {pct(w['avg_asr'])} / {pct(w['worst_asr'])} | {pct(w['avg_untargeted_asr'])} "
                   f"| {pct(lf['avg_asr'])} / {pct(lf['worst_asr'])} "
                   f"| {pct(lf['avg_untargeted_asr'])} | {pct(r['roa_7x7']['untargeted_asr'])} | {cert} |")
    out += ["", "Attacks on the column-smoothing model optimise the mean softmax over its 32 ablations (EOT) and are "
            "scored on the vote the device runs; attacks on PatchCleanser optimise the mean softmax over its one-mask "
            "copies (EOT) and are scored on double masking.  These are PyTorch numbers; the INT8 bundles are not yet "
            "measured here.", ""]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=CHECKPOINT")
    p.add_argument("--sign", default="stop")
    p.add_argument("--views", type=int, default=20)
    p.add_argument("--heldout", type=int, default=40)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    t0 = time.time()
    cls = LISA_INDEX[args.sign]
    train_views, heldout = render_views(cls, args.views, 1), render_views(cls, args.heldout, 2)
    out = Path(args.out)
    rows = [cached_row(*m.split("=", 1), args, train_views, heldout, out / "rows") for m in args.model]
    atomic_write_json(out / "results.json", {"rows": rows, "args": vars(args)})
    atomic_write_text(out / "report.md", to_markdown(rows, args, time.time() - t0))


if __name__ == "__main__":
    main()
