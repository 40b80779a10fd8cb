"""Sticker robustness of defended models on the synthetic stop sign: RP2 (white-box and low-frequency, targeted
on every other class and untargeted), ROA, and certified accuracy for the certified wrappers ->
reports/sticker_robustness/.

    python bench/sticker_robustness.py --model baseline=runs/sweep/synthetic/baseline \\
        --model doa=runs/doa --model smoothing=runs/column_smoothing

Each defense is attacked as an attacker who knows it would: plain models directly; the smoothed classifier
through its expectation over all 32 ablations (:class:`train.defenses.smoothing.SoftVote`, EOT), each attack
then scored on the real vote; PatchCleanser through its one-mask copies; the PRN gate through its soft select and
through BPDA (:func:`attack_views`).  RP2 optimises on ``--views`` poses and is scored by re-rendering
``--heldout`` other poses with the sticker painted on the sign; ROA runs on the clean held-out views.

Each model's row is kept in ``<out>/rows/<label>.json`` with the weights' hash and the attack settings, and
reused while both match: a model's 300-step row costs minutes, so rows can be computed by parallel runs (one
``--model`` each) and the table assembled by a last run naming them all.  A cached row from before the untargeted
attack gains only its cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from edge.fileio import atomic_write_json, atomic_write_text, sha256_file
from edge.manifest import MANIFEST_NAME
from train.attacks.adaptive_view import attacker_view
from train.attacks.roa import ROA
from train.attacks.rp2 import RP2, evaluate_stickers
from train.attacks.views import render_views
from train.checkpoint import load_checkpoint, read_sidecar
from train.data.classes import LISA_CLASSES, LISA_INDEX
from train.data.datasets import load_checkpoint_data
from train.defenses import DefenseStack
from train.defenses.patchcleanser import PatchCleanser
from train.defenses.patchcleanser import certified as certified_double_masking
from train.defenses.smoothing import SmoothedClassifier, certified
from train.eval import metrics
from train.eval.artifact import BundleClassifier
from train.eval.sweep_runner import rp2_row
from train.trainer import predict, test_accuracy

OUT = "reports/sticker_robustness"
ATTACK_ARGS = ("sign", "views", "heldout", "steps", "seed")  # the settings a cached row was measured with


RP2_KEYS = ("clean_view_acc", "avg_asr", "worst_asr", "worst_target", "avg_untargeted_asr")


def strongest(evaluations: list[dict], key: str = "targeted_success") -> list[int]:
    """Per target, which of several attacks' :func:`evaluate_stickers` results reached the higher ``key``
    success (the first on a tie): an attacker with more than one surrogate keeps the better sticker per target."""
    per = [e["per_target"] for e in evaluations]
    return [int(np.argmax([p[i][key] for p in per])) for i in range(len(per[0]))]


def merged(evaluations: list[dict], picks: list[int]) -> dict:
    """One :func:`evaluate_stickers` result holding, for target ``i``, attack ``picks[i]``'s entry."""
    return {**evaluations[0], "per_target": [evaluations[a]["per_target"][i] for i, a in enumerate(picks)]}


def sticker_attack(model, attack_models, train_views, heldout, label, targets, steps, dct_dim, seed, deployed=None,
                   untargeted=False) -> tuple[dict, dict | None]:
    """RP2 stickers made on each of ``attack_models`` for ``targets`` (untargeted: away from ``label``), scored
    on ``model``, per target the stronger attack's sticker; and the same stickers, their colours rounded to the
    printed PNG's 8 bits, on the ``deployed`` graph."""
    ours, theirs = [], []
    for attack_model in attack_models:
        res = RP2(attack_model, steps=steps, lr=0.03, lam=0.002, views_per_step=10, dct_dim=dct_dim,
                  untargeted=untargeted)(train_views, [label] if untargeted else targets, seed=seed)
        ours.append(evaluate_stickers(model, heldout, res, label=label))
        if deployed is not None:
            printed = dataclasses.replace(res, stickers=np.round(res.stickers * 255.0) / 255.0)
            theirs.append(evaluate_stickers(deployed, heldout, printed, label=label))
    # chosen on the PyTorch model; the INT8 graph gets the same stickers
    picks = strongest(ours, "untargeted_success" if untargeted else "targeted_success")
    return merged(ours, picks), (merged(theirs, picks) if deployed is not None else None)


def rp2_cell(model, attack_models, train_views, heldout, label, targets, steps, dct_dim, seed, meta,
             deployed=None) -> tuple[dict, dict | None]:
    """The sweep's RP2 row for every target (:func:`sticker_attack`), on ``model`` and on the ``deployed`` graph."""
    ours, theirs = sticker_attack(model, attack_models, train_views, heldout, label, targets, steps, dct_dim, seed,
                                  deployed)

    def cells(evaluation: dict) -> dict:
        row = rp2_row(evaluation, meta)
        return {k: row[k] for k in RP2_KEYS}

    return cells(ours), (None if theirs is None else cells(theirs))


def attack_views(model) -> list:
    """The surrogates an adaptive attacker differentiates: :func:`attacker_view`, and for the PRN gate also BPDA
    (hard forward, soft backward): two surrogates of one hard gate, and an attacker who knows it tries both."""
    views = [attacker_view(model)]
    if getattr(model, "detector", None) is not None:
        views.append(attacker_view(model, bpda=True))
    return views


def data_name(data: dict) -> str:
    """``synthetic``, or the dataset file's name for a real dataset (``gtsrb32`` for .../gtsrb32.npz)."""
    return Path(data["path"]).stem if data.get("path") else data["kind"]


def untargeted_cells(model, views, train_views, heldout, label, steps, seed, deployed=None
                     ) -> tuple[dict, dict | None]:
    """Untargeted RP2 (the CW margin away from the sign's label; DOA's threat model), white-box and
    low-frequency, through each surrogate: per variant the share of held-out poses whose prediction the
    stronger sticker changes, on ``model`` and with the same sticker on the ``deployed`` graph."""
    ours, theirs = {}, {}
    for key, dct_dim in (("whitebox", 0), ("lowfreq", 16)):
        on_model, on_graph = sticker_attack(model, views, train_views, heldout, label, [], steps, dct_dim, seed,
                                            deployed, untargeted=True)
        ours[key] = on_model["per_target"][0]["untargeted_success"]
        if on_graph is not None:
            theirs[key] = on_graph["per_target"][0]["untargeted_success"]
    return ours, (theirs if deployed is not None else None)


def _load(path: str, args: argparse.Namespace, bundle: str | None):
    """(model, meta, its classes, the sign's index in them, the INT8 graph or None)."""
    model, meta = load_checkpoint(path)
    classes = list(meta.get("classes") or LISA_CLASSES)
    if args.sign not in classes:
        raise SystemExit(f"{path}: the model has no class {args.sign!r} to attack (its classes: {classes})")
    # the rendered LISA-18 sign, in the model's label space (GTSRB-32: 14)
    return (model, meta, classes, classes.index(args.sign),
            None if bundle is None else BundleClassifier(bundle, "int8"))


def add_untargeted(row: dict, path: str, args: argparse.Namespace, train_views, heldout, bundle: str | None,
                   loaded=None) -> dict:
    """``row`` with its untargeted-RP2 cells (also for a cached row measured before they existed)."""
    model, _, _, stop, deployed = loaded or _load(path, args, bundle)
    t0 = time.time()
    row["rp2_untargeted"], on_int8 = untargeted_cells(model, attack_views(model), train_views, heldout, stop,
                                                      args.steps, args.seed, deployed)
    if on_int8 is not None:
        row["int8"]["rp2_untargeted"] = on_int8
    row["seconds"] = round(row.get("seconds", 0.0) + time.time() - t0, 1)
    return row


def evaluate(label: str, path: str, args: argparse.Namespace, train_views, heldout, bundle: str | None = None
             ) -> dict:
    loaded = model, meta, classes, stop, deployed = _load(path, args, bundle)
    views = attack_views(model)
    targets = [c for c in range(len(classes)) if c != stop]
    row = {"model": label, "defense": meta["defense"], "test_acc": test_accuracy(model, meta),
           "data": data_name(meta["recipe"]["data"]), "n_classes": len(classes)}
    if deployed is not None:
        test = load_checkpoint_data(meta, progress=False).test
        row["int8"] = {"bundle": bundle, "test_acc": float(np.mean(predict(deployed, test.x) == np.asarray(test.y)))}
    t0 = time.time()
    for key, dct_dim in (("rp2_whitebox", 0), ("rp2_lowfreq", 16)):
        row[key], on_int8 = rp2_cell(model, views, train_views, heldout, stop, targets, args.steps, dct_dim,
                                     args.seed, meta, deployed)
        if on_int8 is not None:
            row["int8"][key] = on_int8
    y = torch.full((len(heldout),), stop, dtype=torch.long)
    x_roa = [ROA(v, height=7, width=7, stride=2, search="gradient", steps=30).generate(heldout.x, y) for v in views]
    for part, m in (((row, model),) + (((row["int8"], deployed),) if deployed is not None else ())):
        clean = predict(m, heldout.x)
        # a pose counts as fooled when any surrogate's ROA image changes the prediction
        changed = np.any([predict(m, x) != clean for x in x_roa], axis=0)
        part["roa_7x7"] = {"clean_view_acc": metrics.accuracy(clean, y.numpy()),
                           "untargeted_asr": float(changed.mean())}
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
    add_untargeted(row, path, args, train_views, heldout, bundle, loaded)
    print(json.dumps(row), flush=True)
    return row


def cached_row(label: str, path: str, args: argparse.Namespace, train_views, heldout, rows_dir: Path,
               bundle: str | None = None) -> dict:
    """The model's row from ``rows_dir`` when it was measured on these weights with these settings, else
    measured now and written there (atomically, so an interrupted table keeps the rows it finished)."""
    sidecar = read_sidecar(path)[1]
    key = {"weights_sha256": sidecar.get("weights_sha256"), **{a: getattr(args, a) for a in ATTACK_ARGS}}
    if "prn" in DefenseStack.from_config(sidecar.get("defense", {"kind": "none"})).kind.split("+"):
        key["surrogates"] = ["soft select", "bpda"]  # gated rows made before BPDA joined are measured again
    if bundle is not None:  # the deployed graph it was scored on
        key["bundle_manifest_sha256"] = sha256_file(Path(bundle) / MANIFEST_NAME)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
        raise SystemExit(f"--model {label}={path}: the label names a file; use letters, digits, '_', '.', '-'")
    file = rows_dir / f"{label}.json"
    if file.is_file():
        saved = json.loads(file.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            print(f"{label}: reusing {file} (same weights and attack settings)", flush=True)
            if "rp2_untargeted" in saved["row"]:
                return saved["row"]
            print(f"{label}: adding the untargeted RP2 cells", flush=True)
            row = add_untargeted(saved["row"], path, args, train_views, heldout, bundle)
            atomic_write_json(file, {"key": key, "row": row})
            return row
    row = evaluate(label, path, args, train_views, heldout, bundle)
    atomic_write_json(file, {"key": key, "row": row})
    return row


def settings_text(args: argparse.Namespace) -> str:
    """The attack settings every row of a table shares, in words."""
    return (f"Sign: {args.sign}; RP2 optimised on {args.views} poses (seed 1), scored on {args.heldout} held-out "
            f"poses (seed 2), every other class of the model as a target (17 for LISA-18, 42 for GTSRB-32), "
            f"{args.steps} Adam steps, two-bar mask, lambda 0.002; low-frequency = DCT k=16 (BlurNet Eq. 8).  "
            f"ROA: 7x7, gradient search (top 5, stride 2), 30 steps of 4/255, untargeted, on the clean held-out "
            f"views.  \"Changed (BlurNet)\": BlurNet's untargeted success (Sec. II-A), the share of poses whose "
            f"prediction a targeted sticker changes, averaged over the targets; \"untargeted RP2\": one sticker "
            f"optimised away from the sign's label (CW margin clipped at -5), the share of poses it changes.  "
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")


def table_lines(rows: list[dict]) -> list[str]:
    """The Markdown table of ``rows`` (one line per model, one more for its INT8 graph where it was measured)."""
    out = ["| model | data | defense | test acc | RP2 avg / worst targeted | RP2 changed (BlurNet) "
           "| low-freq RP2 avg / worst | low-freq changed (BlurNet) | untargeted RP2: white-box / low-freq "
           "| ROA 7x7 untargeted | certified (held-out views) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return f"{100 * v:.1f}%"

    def untargeted(part):
        u = part.get("rp2_untargeted")
        return "-" if u is None else f"{pct(u['whitebox'])} / {pct(u['lowfreq'])}"

    for r in rows:
        cert = f"{pct(r['certified_view_acc'])} ({r['certified_patch']}-px patch)" if "certified_view_acc" in r else "-"
        kind = DefenseStack.from_config(r["defense"]).kind
        for name, part in ((r["model"], r),) + (((f"{r['model']} INT8", r["int8"]),) if "int8" in r else ()):
            w, lf = part["rp2_whitebox"], part["rp2_lowfreq"]
            out.append(f"| {name} | {r['data']} | {kind} | {pct(part['test_acc'])} "
                       f"| {pct(w['avg_asr'])} / {pct(w['worst_asr'])} | {pct(w['avg_untargeted_asr'])} "
                       f"| {pct(lf['avg_asr'])} / {pct(lf['worst_asr'])} "
                       f"| {pct(lf['avg_untargeted_asr'])} | {untargeted(part)} "
                       f"| {pct(part['roa_7x7']['untargeted_asr'])} "
                       f"| {cert if part is r else '-'} |")  # the certificate is computed in PyTorch
    return out


def attacker_note(rows: list[dict]) -> str:
    """How the wrapped defenses were attacked, and which graph each INT8 row is."""
    deployed = [f"`{r['model']}`: `{r['int8']['bundle']}`" for r in rows if "int8" in r]
    return ("Each model is attacked through its attacker view (`train.attacks.adaptive_view`): plain classifiers "
            "white-box; the column-smoothing model through the mean softmax over its 32 ablations (EOT), scored on "
            "the vote the device runs; PatchCleanser through the mean softmax over its one-mask copies (EOT), scored "
            "on double masking; the PRN gate through BPDA and a soft select between the rectified and the raw "
            "image, scored on the hard gate.  "
            + ("Rows marked INT8 score the same stickers, their colours rounded to the printed PNG's 8 bits, and "
               "the same ROA images on the INT8 graph of the model's bundle (onnxruntime; test accuracy on the whole "
               "test split): " + ", ".join(deployed) + "." if deployed else
               "These are PyTorch numbers; the INT8 bundles are not measured here (`--bundle`)."))


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    times = ", ".join(f"{r['model']} {r['seconds']:.0f} s" for r in rows)
    regenerate = (f"python bench/sticker_robustness.py {' '.join('--model ' + m for m in args.model)} "
                  f"{''.join('--bundle ' + b + ' ' for b in args.bundle)}"
                  f"--steps {args.steps} --views {args.views} --heldout {args.heldout}"
                  f"{'' if args.out == OUT else ' --out ' + args.out}")
    return "\n".join([f"# Sticker robustness on the synthetic {args.sign} sign", "",
                      f"Regenerate: `{regenerate}`.  {settings_text(args)}; attack time per model (one thread, when "
                      f"its row was measured): {times}.", "", *table_lines(rows), "", attacker_note(rows), ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=CHECKPOINT")
    p.add_argument("--bundle", action="append", default=[], metavar="LABEL=BUNDLE",
                   help="also score that model's stickers and ROA on the INT8 graph of this bundle "
                        "(signguard export --precision fp32 int8)")
    p.add_argument("--sign", default="stop")
    p.add_argument("--views", type=int, default=20)
    p.add_argument("--heldout", type=int, default=40)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    cls = LISA_INDEX[args.sign]
    train_views, heldout = render_views(cls, args.views, 1), render_views(cls, args.heldout, 2)
    out = Path(args.out)
    models = dict(m.split("=", 1) for m in args.model)
    bundles = dict(b.split("=", 1) for b in args.bundle)
    if set(bundles) - set(models):
        raise SystemExit(f"--bundle {sorted(set(bundles) - set(models))}: no --model has that label")
    rows = [cached_row(label, path, args, train_views, heldout, out / "rows", bundles.get(label))
            for label, path in models.items()]
    atomic_write_json(out / "results.json", {"rows": rows, "args": vars(args)})
    atomic_write_text(out / "report.md", to_markdown(rows, args))


if __name__ == "__main__":
    main()
