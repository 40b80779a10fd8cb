"""Deep Defense's evaluation (Yan, Guo & Zhang, NeurIPS 2018, Table 1, Fig. 3, supp. Table 2 / Fig. 5) on the
synthetic LISA-18 signs and GTSRB-32 -> reports/deep_defense/.

    python bench/deep_defense_report.py \\
        --model synthetic:baseline=runs/sweep/synthetic/baseline \\
        --model synthetic:c25=runs/deep_defense/synthetic_c25 \\
        --model gtsrb32:baseline=runs/gtsrb32/baseline --model gtsrb32:c25=runs/deep_defense/gtsrb32_c25

Per dataset, the model labelled ``baseline`` is the reference the others were fine-tuned from.  Metrics, each
model on its own test split:

* clean accuracy on the whole test split;
* rho_2 (Eq. 7) = mean ||Delta_x||_2 / ||x||_2 of the project's DeepFool (l2, overshoot 0.02, top-10 classes, up to
  50 iterations) over the ``--n`` test images -- all of them, as the paper averages over the test set D with the
  perturbation taken from each image's predicted class (the reference code's test loop); rho_2 over the correctly
  classified images only and the unnormalised l2 (supp. Eq. 1) beside it;
* FGSM: eps_ref is "the smallest eps such that 50% of the perturbed images are misclassified" by the selected Deep
  Defense model (bisection); every model's accuracy at 0.2, 0.5 and 1.0 eps_ref (Table 1), and FGSM success
  (misclassification) against eps (supp. Fig. 5);
* PGD accuracy (supp. Table 2): L-inf, 10 steps of eps/4, at 2, 4 and 8/255.

Selection, done on the validation split so the test numbers stay unbiased: among the fine-tuned models whose
validation accuracy is within ``--max-drop`` of the baseline's, the one with the highest validation rho_2 (on
``--n-val`` images).  Per-model numbers are cached under ``runs/deep_defense/report_cache`` by weights hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from edge.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from train.attacks.deepfool import DeepFool
from train.attacks.fgsm import FGSM
from train.attacks.pgd import PGD
from train.checkpoint import load_checkpoint, read_sidecar
from train.data.datasets import load_checkpoint_data
from train.defenses import DefenseStack
from train.eval import metrics
from train.trainer import predict

PGD_EPS = (2, 4, 8)  # /255
FGSM_GRID = (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8)  # /255
REF_MULTIPLES = (0.2, 0.5, 1.0)
CACHE_VERSION = 1


def deepfool_metrics(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """rho_2 over all images (Eq. 7), over the correctly classified ones, unnormalised l2, flip rate, iterations."""
    r = DeepFool(model)(x, y, seed=seed)
    xs = x.numpy()
    ok = r.info["pred_clean"] == y.numpy()
    it = r.info["iterations"]
    return {"rho_2": metrics.rho_2(xs, r.info["r_norm"]),
            "rho_2_correct": metrics.rho_2(xs[ok], r.info["r_norm"][ok]),
            "l2": float(np.mean(r.info["r_norm"])),
            "flipped": float(np.mean(r.info["pred_adv"] != r.info["pred_clean"])),
            "iterations_hist": np.bincount(np.minimum(it, 5), minlength=6)[1:].tolist(),  # 1, 2, 3, 4, >= 5
            "iterations_mean": float(np.mean(it))}


def fgsm_acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    return metrics.accuracy(FGSM(model, eps=eps)(x, y).info["pred_adv"], y.numpy())


def eps_ref(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tol: float = 1e-4) -> float:
    """Smallest eps at which FGSM leaves <= 50% accuracy: doubling from 1/255, then bisection to ``tol``."""
    lo, hi = 0.0, 1 / 255
    while fgsm_acc(model, x, y, hi) > 0.5:
        lo, hi = hi, 2 * hi
        if hi > 1:
            return float("nan")
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fgsm_acc(model, x, y, mid) > 0.5 else (lo, mid)
    return hi


def model_row(label: str, path: str, args: argparse.Namespace, data_cache: dict) -> dict:
    """Everything about one model that does not depend on eps_ref (cached by weights hash and settings)."""
    _, meta = read_sidecar(path)
    key = hashlib.sha256(json.dumps([CACHE_VERSION, meta["weights_sha256"], args.n, args.n_val, args.seed],
                                    sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(args.cache) / f"{key}.json"
    if cache.is_file():
        return {**json.loads(cache.read_text(encoding="utf-8")), "label": label, "path": path}
    model, meta = load_checkpoint(path)
    tx, ty, vx, vy, data = split_of(meta, args, data_cache)
    t0 = time.time()
    row = {"defense": meta["defense"], "describe": DefenseStack.from_config(meta["defense"]).describe(),
           "test_acc": float((predict(model, data.test.x) == data.test.y).mean()), "n_test_full": len(data.test),
           "val_acc": float((predict(model, data.val.x) == data.val.y).mean()),
           "val_rho_2": deepfool_metrics(model, vx, vy, args.seed)["rho_2"],
           "deepfool": deepfool_metrics(model, tx, ty, args.seed),
           "pgd": {str(e): metrics.accuracy(PGD(model, eps=e / 255, alpha=e / 255 / 4, steps=10)(tx, ty, seed=args.seed)
                                            .info["pred_adv"], ty.numpy()) for e in PGD_EPS},
           "fgsm_grid": {str(e): 1 - fgsm_acc(model, tx, ty, e / 255) for e in FGSM_GRID},
           "n": len(tx), "n_val": len(vx)}
    row["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(cache, row)
    print(f"{label}: {json.dumps({k: row[k] for k in ('test_acc', 'val_acc', 'val_rho_2', 'seconds')})}", flush=True)
    return {**row, "label": label, "path": path}


def split_of(meta: dict, args: argparse.Namespace, data_cache: dict):
    """The seeded test and validation draws of a checkpoint's own data (x, y tensors), and its whole bundle."""
    key = json.dumps(meta["recipe"]["data"], sort_keys=True)
    if key not in data_cache:
        data_cache[key] = load_checkpoint_data(meta, progress=False)
    d = data_cache[key]
    t, v = d.test.sample(args.n, args.seed), d.val.sample(args.n_val, args.seed)
    return (torch.from_numpy(t.x), torch.from_numpy(t.y).long(), torch.from_numpy(v.x), torch.from_numpy(v.y).long(),
            d)


def select(rows: list[dict], max_drop: float) -> tuple[dict, str]:
    """The fine-tuned model with the highest validation rho_2 within ``max_drop`` of the baseline's validation
    accuracy; without one, the most accurate fine-tuned model (and the reason)."""
    base, tuned = rows[0], rows[1:]
    ok = [r for r in tuned if r["val_acc"] >= base["val_acc"] - max_drop]
    if ok:
        return max(ok, key=lambda r: r["val_rho_2"]), f"highest validation rho_2 within {100 * max_drop:g} point(s)"
    return max(tuned, key=lambda r: r["val_acc"]), f"no model within {100 * max_drop:g} point(s): the most accurate"


def add_fgsm_ref(rows: list[dict], chosen: dict, args: argparse.Namespace, data_cache: dict) -> float:
    model, meta = load_checkpoint(chosen["path"])
    tx, ty, *_ = split_of(meta, args, data_cache)
    ref = eps_ref(model, tx, ty)
    for r in rows:
        m, _ = load_checkpoint(r["path"])
        r["fgsm_ref"] = {str(k): fgsm_acc(m, tx, ty, k * ref) for k in REF_MULTIPLES}
    return ref


def to_csv(groups: dict) -> str:
    """One line per model: the table's numbers, unrounded."""
    import csv
    import io

    cols = ["dataset", "model", "selected", "test_acc", "val_acc", "val_rho_2", "rho_2", "rho_2_correct", "l2",
            "eps_ref"] + [f"fgsm_acc_{k}eps_ref" for k in REF_MULTIPLES] + [f"pgd_acc_{e}" for e in PGD_EPS] + [
            f"fgsm_misclassified_{e}" for e in FGSM_GRID]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for name, g in groups.items():
        for r in g["rows"]:
            d = r["deepfool"]
            w.writerow([name, r["label"], r is g["chosen"], r["test_acc"], r["val_acc"], r["val_rho_2"], d["rho_2"],
                        d["rho_2_correct"], d["l2"], g["eps_ref"]] + [r["fgsm_ref"][str(k)] for k in REF_MULTIPLES]
                       + [r["pgd"][str(e)] for e in PGD_EPS] + [r["fgsm_grid"][str(e)] for e in FGSM_GRID])
    return buf.getvalue()


def pct(v: float) -> str:
    return "nan" if v != v else f"{100 * v:.1f}%"


def to_markdown(groups: dict, args: argparse.Namespace, wall: float) -> str:
    out = ["# Deep Defense on the synthetic LISA-18 signs and GTSRB-32", "",
           f"Regenerate: `python bench/deep_defense_report.py {' '.join('--model ' + m for m in args.model)} "
           f"--n {args.n} --n-val {args.n_val}`.  Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
           f"torch {torch.__version__}; wall {wall:.0f} s (cached models excluded).", "",
           "Deep Defense (Yan et al. 2018) fine-tunes the baseline with Eq. 6 on the DeepFool perturbation, unrolled "
           "through autograd (`train/defenses/deep_defense.py`).  rho_2 (Eq. 7): mean ||Delta_x||_2 / ||x||_2 of "
           "DeepFool (l2, overshoot 0.02, top-10 classes, <= 50 iterations) over all test images drawn, from each "
           "image's predicted class; higher is more robust.  eps_ref: the smallest FGSM eps at which the selected "
           "Deep Defense model misclassifies 50% (Sec. 4.1); PGD: L-inf, 10 steps of eps/4.  Attacks on "
           f"{args.n} test images per dataset (seed {args.seed}); clean accuracy on the whole test split.", ""]
    for name, g in groups.items():
        rows, chosen, base = g["rows"], g["chosen"], g["rows"][0]
        ratio = chosen["deepfool"]["rho_2"] / base["deepfool"]["rho_2"]
        drop = base["test_acc"] - chosen["test_acc"]
        verdict = "met" if ratio >= 1.5 and drop <= 0.01 else "missed"
        out += [f"## {name}", "",
                f"Selected: **{chosen['label']}** ({g['why']}).  rho_2 {ratio:.2f}x the baseline's at "
                f"{100 * drop:+.2f} points of clean accuracy lost -- target (>= 1.5x at <= 1 point): **{verdict}**.  "
                f"eps_ref = {g['eps_ref']:.5f} (= {255 * g['eps_ref']:.2f}/255).", "",
                "| model | settings | test acc | val acc | val rho_2 | rho_2 | rho_2 (correct only) | l2 | "
                + " | ".join(f"FGSM acc @{k}eps_ref" for k in REF_MULTIPLES) + " | "
                + " | ".join(f"PGD acc {e}/255" for e in PGD_EPS) + " |",
                "|" + "---|" * (8 + len(REF_MULTIPLES) + len(PGD_EPS))]
        for r in rows:
            d = r["deepfool"]
            mark = " (selected)" if r is chosen else ""
            out.append(f"| {r['label']}{mark} | {r['describe']} | {pct(r['test_acc'])} | {pct(r['val_acc'])} | "
                       f"{r['val_rho_2']:.4f} | {d['rho_2']:.4f} | {d['rho_2_correct']:.4f} | {d['l2']:.3f} | "
                       + " | ".join(pct(r["fgsm_ref"][str(k)]) for k in REF_MULTIPLES) + " | "
                       + " | ".join(pct(r["pgd"][str(e)]) for e in PGD_EPS) + " |")
        out += ["", "DeepFool iterations (1 / 2 / 3 / 4 / >= 5; the unroll depth's justification) and the "
                "share flipped within 50: " + "; ".join(
                    f"{r['label']} {' / '.join(map(str, r['deepfool']['iterations_hist']))}, "
                    f"{pct(r['deepfool']['flipped'])}" for r in rows), ""]
    out += ["Plots: `rho2_vs_acc.png` (rho_2 against clean accuracy across c, as the paper's Fig. 3), "
            "`fgsm_vs_eps.png` (FGSM success rate against eps, supp. Fig. 5).", ""]
    return "\n".join(out)


def plot(groups: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (name, g) in zip(axes[0], groups.items()):
        for r in g["rows"]:
            ax.scatter(100 * r["test_acc"], r["deepfool"]["rho_2"], marker="s" if r is g["rows"][0] else "o")
            ax.annotate(r["label"], (100 * r["test_acc"], r["deepfool"]["rho_2"]), fontsize=8)
        ax.set(xlabel="clean test accuracy (%)", ylabel="rho_2 (DeepFool)", title=name)
    fig.tight_layout()
    _save(fig, out / "rho2_vs_acc.png")
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (name, g) in zip(axes[0], groups.items()):
        for r in g["rows"]:
            ax.plot(FGSM_GRID, [100 * r["fgsm_grid"][str(e)] for e in FGSM_GRID], marker=".", label=r["label"])
        ax.set(xlabel="FGSM eps (/255)", ylabel="misclassified (%)", title=name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "fgsm_vs_eps.png")


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="DATASET:LABEL=CHECKPOINT")
    p.add_argument("--n", type=int, default=1000, help="test images attacked per dataset")
    p.add_argument("--n-val", type=int, default=300, help="validation images for the selection's rho_2")
    p.add_argument("--max-drop", type=float, default=0.01, help="validation accuracy the selected model may lose")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reports/deep_defense")
    p.add_argument("--cache", default="runs/deep_defense/report_cache")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    specs: dict[str, list[tuple[str, str]]] = {}
    for m in args.model:
        head, _, path = m.partition("=")
        dataset, _, label = head.partition(":")
        if not (dataset and label and path):
            p.error(f"--model {m!r}: expected DATASET:LABEL=CHECKPOINT")
        specs.setdefault(dataset, []).append((label, path))
    groups, data_cache = {}, {}
    for dataset, models in specs.items():
        if models[0][0] != "baseline" or len(models) < 2:
            p.error(f"--model {dataset}: the first model must be labelled 'baseline', followed by fine-tuned ones")
        rows = [model_row(label, path, args, data_cache) for label, path in models]
        chosen, why = select(rows, args.max_drop)
        ref = add_fgsm_ref(rows, chosen, args, data_cache)
        groups[dataset] = {"rows": rows, "chosen": chosen, "why": why, "eps_ref": ref}
    out = Path(args.out)
    plot(groups, out)
    res = {name: {**g, "chosen": g["chosen"]["label"]} for name, g in groups.items()}
    atomic_write_json(out / "results.json", {"groups": res, "args": vars(args)})
    atomic_write_text(out / "results.csv", to_csv(groups))
    atomic_write_text(out / "report.md", to_markdown(groups, args, time.time() - t0))
    print(f"-> {out / 'report.md'}")


if __name__ == "__main__":
    main()
