"""reports/fru/: the Markdown, CSV, JSON and plots of :mod:`bench.fru_report`'s measurements."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from edge.fileio import atomic_write_json, atomic_write_text

COMMANDS = {
    "lisa18": ["python bench/fru_report.py perturbations --dataset lisa18",
               "signguard train --config configs/fru.yaml --run-dir runs/fru/lisa18/fru",
               "python bench/fru_report.py ablations --dataset lisa18 --epochs 6"],
    "gtsrb32": ["signguard train --config configs/baseline.yaml --set data.kind=npz --set data.path="
                "../shared/data/gtsrb32/gtsrb32.npz --set name=gtsrb32_baseline --run-dir runs/gtsrb32/baseline",
                "python bench/fru_report.py perturbations --dataset gtsrb32",
                "signguard train --config configs/fru_gtsrb32.yaml --run-dir runs/fru/gtsrb32/fru_round1",
                "python bench/fru_report.py perturbations --dataset gtsrb32 --split secondary",
                "signguard train --config configs/fru_gtsrb32_round2.yaml --run-dir runs/fru/gtsrb32/fru",
                "python bench/fru_report.py ablations --dataset gtsrb32 --epochs 8"],
}
DEPLOY_FILES = ("deploy_{ds}.md", "verify_{ds}.md", "bench_{ds}.md", "edge_{ds}.md")


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def restoration_table(r: dict) -> list[str]:
    lines = ["| perturbation | method | base acc (pert.) | base fooling | FRU acc (clean) | FRU acc (pert.) | "
             "FRU fooling | restoration base | **restoration FRU** |", "|---|---|---|---|---|---|---|---|---|"]
    for row in [*r["rows"], r["secondary"]]:
        lines.append(f"| {row['name']} | {row['method']} | {pct(row['acc_base_adv'])} | {row['fooling_base']:.3f} | "
                     f"{pct(row['acc_def_clean'])} | {pct(row['acc_def_adv'])} | {row['fooling_def']:.3f} | "
                     f"{row['restoration_base']:.3f} | **{row['restoration_def']:.3f}** |")
    s = r["summary"]
    lines.insert(2 + len(r["rows"]), f"| **mean of the {len(r['rows'])} held-out** | | {pct(s['acc_base_adv'])} | "
                 f"{s['fooling_base']:.3f} | {pct(s['acc_def_clean'])} | {pct(s['acc_def_adv'])} | "
                 f"{s['fooling_def']:.3f} | {s['restoration_base']:.3f} | **{s['restoration_def']:.3f}** |")
    return lines


def ranking_section(ds: str, rk: dict) -> list[str]:
    m = rk["masking"]
    lines = [f"Per conv layer of the base: Spearman's rank correlation between a filter's weight L1 norm and the "
             f"noise its output suffers (mean over {rk['n_images']} test images and the held-out real perturbations "
             f"{', '.join(rk['perturbations'])} of max |phi_m(x+v) - phi_m(x)|), the share of (image, perturbation, "
             "channel) triples within the Eq. 2 bound, and the share of the total noise carried by the top-50% "
             f"channels.  Plot: `ranking_{ds}.png`.", "",
             "| layer | channels | Spearman rho (L1 vs noise) | within Eq. 2 bound | noise share of top 50% by L1 |",
             "|---|---|---|---|---|"]
    for n, r in rk["layers"].items():
        lines.append(f"| {n} | {len(r['l1'])} | {r['spearman']:.3f} | {pct(r['bound_ok'])} | "
                     f"{pct(r['top_half_share'])} |")
    lines += ["", f"Masking experiment (the paper's Fig. 3): accuracy on perturbed images when the noise of 50% of one "
              f"layer's channels is removed (outputs replaced by the clean ones); clean {pct(m['clean'])}, perturbed "
              f"with nothing masked {pct(m['perturbed'])} (mean over the same perturbations).", "",
              "| layer | top 50% by L1 masked | random 50% masked | bottom 50% masked |", "|---|---|---|---|"]
    for n in rk["layers"]:
        lines.append(f"| {n} | {pct(m[n]['top'])} | {pct(m[n]['random'])} | {pct(m[n]['bottom'])} |")
    return lines


def base_cell(r: dict) -> str:
    """The clean accuracy of the base a row was measured on (rows of earlier base runs are kept in the tables)."""
    return f"{100 * r['base_acc']:.2f}%" if "base_acc" in r else "?"  # two decimals: retrained bases differ by 0.03


def ablation_section(rows: list[dict]) -> list[str]:
    lines = ["| run | base clean acc | q (ratio) | layers | epochs | unit params | clean test acc | mean restoration | "
             "worst restoration | mean FRU fooling |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r.get("base_acc", 0), r["layers"], r["ratio"])):
        lines.append(f"| {r['run']} | {base_cell(r)} | {r['ratio']:g} | {r['layers']} | {r['epochs']} | "
                     f"{r['params']:,} | "
                     f"{pct(r['test_acc'])} | {r['restoration_def']:.3f} | {r['min_restoration_def']:.3f} | "
                     f"{r['fooling_def']:.3f} |")
    return lines


def sticker_section(st: dict) -> list[str]:
    s = st["settings"]
    lines = [f"RP2 on the synthetic stop sign (label `{s.get('sign', 'stop')}`), all {s['targets']} targets, "
             f"{s['steps']} Adam steps on {s['views']} poses, scored on {s['heldout']} held-out poses "
             "(bench/sticker_robustness.py's settings; rows from `train.eval.sweep_runner.rp2_row`).  "
             "*Non-adaptive*: the stickers made against the base, printed and shown to the FRU model; *white-box*: "
             "RP2 differentiating through the FRU units.", "",
             "| attack | model | threat model | avg targeted success | worst target (success) | untargeted success |",
             "|---|---|---|---|---|---|"]
    names = {"base": ("baseline", "white-box"), "fru_nonadaptive": ("FRU", "non-adaptive (made on the base)"),
             "fru_whitebox": ("FRU", "white-box on the FRU model")}
    for attack in ("rp2_whitebox", "rp2_lowfreq"):
        for key, (model, threat) in names.items():
            r = st[attack][key]
            label = "RP2" if attack == "rp2_whitebox" else "low-frequency RP2 (DCT k=16)"
            lines.append(f"| {label} | {model} | {threat} | {pct(r['avg_asr'])} | {r['worst_target']} "
                         f"({pct(r['worst_asr'])}) | {pct(r['avg_untargeted_asr'])} |")
    return lines


def scaled(max_scale: float) -> str:
    """How the training perturbations were scaled (``defense.max_scale``); empty when they were not."""
    return f", each scaled by a factor uniform in [1, {max_scale:g}]" if max_scale > 1 else ""


def widened(width: float) -> str:
    """The units' inner width (``defense.width``) where it is not the default, as wide as the channels regenerated."""
    return f" (units {width:g}x as wide inside as the channels they regenerate)" if width != 1 else ""


def further(d: dict, n_secondary: int | None, schedule: str) -> str:
    """How the units were trained: ``schedule`` ("30 epochs (checkpoint of epoch 27 by ...)") is the last round's,
    which for the paper's further round (``defense.units`` / ``secondary``, Sec. 5.1) follows a first round."""
    if not d.get("secondary"):
        return f"trained {schedule} on "
    return (f"trained in two rounds (Sec. 5.1): the first is `{d['units']}`, the second, {schedule}, starts from "
            f"its units and adds to V {n_secondary} universal perturbations made against that defended model; both on ")


def check_sentence(check: dict | None, max_scale: float = 1.0, further_round: bool = False) -> str:
    """The held-out set at the larger budget (``xi_check``), where the base's fooling ratio reaches 0.8."""
    if not check:
        return ""
    c = check["summary"]
    trained = "training perturbations made at the smaller budget" + scaled(max_scale)
    if further_round:
        trained += ", the further round's against the defended model at both budgets"
    n_akhtar = sum(r["name"].startswith("akhtar") for r in check.get("rows", []))
    held = check.get("seeds", "the same held-out seeds and methods") + (
        f" and {n_akhtar} Akhtar synthetic grown from them" if n_akhtar else "")
    return (f"  At xi = {check['xi'] * 255:.0f}/255 (held out: {held}; FRU trained on {trained})"
            f" the base's mean fooling ratio is {c['fooling_base']:.3f}, and FRU restores **"
            f"{c['restoration_def']:.3f}** (worst {c['min_restoration_def']:.3f}; base {c['restoration_base']:.3f}, "
            f"fooling {c['fooling_base']:.3f} -> {c['fooling_def']:.3f})"
            + ("" if c["fooling_base"] < 0.8 else ": meets the target." if c["restoration_def"] >= 0.95 else
               ": short of the 0.95 target.  This is the budget the target names."))


def dataset_section(res: dict, out: Path) -> list[str]:
    ds, r = res["dataset"], res["restoration"]
    s = r["summary"]
    base_acc, fru_acc = res["base"]["test_acc"], res["fru"]["test_acc"]
    d = res["fru"]["defense"]
    lines = [f"## {res['title']}", "", "Regenerate (in order): " + "; ".join(f"`{c}`" for c in COMMANDS[ds]) +
             f"; `python bench/fru_report.py report --dataset {ds}` (keeps the other dataset's section).", "",
             f"Base: `{res['base']['path']}` ({res['base']['params']:,} parameters, frozen), clean test accuracy "
             f"**{pct(base_acc)}**.  FRU: `{res['fru']['path']}`, q = {d['ratio']:g}, {d['layers']} conv layers"
             f"{widened(d.get('width', 1.0))}, "
             f"{res['fru']['params']:,} unit parameters ({pct(res['fru']['params'] / res['base']['params'])} of the "
             f"base), " + further(d, res["fru"].get("n_secondary"),
                                  f"{res['fru']['epochs']} epochs (checkpoint of epoch {res['fru']['best_epoch']} "
                                  f"by {res['fru']['selected_by']})") +
             f"{r['n_train_real']} real + {d['n_synthetic']} synthetic training perturbations"
             f"{scaled(d.get('max_scale', 1.0))}; "
             f"clean test accuracy **{pct(fru_acc)}** ({100 * (fru_acc - base_acc):+.2f} points).", "",
             "### Restoration accuracy against held-out universal perturbations "
             f"(L-inf xi = {res['xi'] * 255:.0f}/255)",
             "", f"On {res['n_eval']} test images, each seen clean and perturbed: restoration = (acc_def(clean) + "
             "acc_def(perturbed)) / (2 acc_base(clean)); fooling ratio = share of predictions the perturbation "
             "changes.  None of these perturbations was used in training: UAP and sPGD with seeds 101+ (training "
             f"used {res['train_seeds']}), and Akhtar et al.'s synthetic perturbations (an algorithm "
             "FRU never trained on) grown from "
             f"the held-out ones.  Largest normalised inner product between two held-out real perturbations: "
             f"{r['max_ip_test']:.3f}, between a held-out and a training one: {r['max_ip_test_train']:.3f} (the "
             "paper keeps its test set below 0.15).  The last row is a secondary, white-box sPGD made against the "
             "FRU model itself (its \"base fooling\" is its transfer to the base).", "", *restoration_table(r), "",
             f"Target: restoration >= 0.95 at the budget where the base's fooling ratio is >= 0.8: mean "
             f"**{s['restoration_def']:.3f}** (worst {s['min_restoration_def']:.3f}; base without FRU "
             f"{s['restoration_base']:.3f}, mean fooling ratio {s['fooling_base']:.3f} -> {s['fooling_def']:.3f})."
             + ("" if s["fooling_base"] >= 0.8 else
                f"  At this budget the held-out set fools the base on {s['fooling_base']:.3f} of the images, under "
                "the 0.8 the target names: the target's budget is larger, and harder for FRU.")
             + check_sentence(r.get("check"), d.get("max_scale", 1.0), bool(d.get("secondary"))), "",
             "### Filter ranking (Sec. 4.1)", "", *ranking_section(ds, res["ranking"]), ""]
    if res["ablations"]:
        lines += ["### Ablations: q and the number of regenerated layers", "",
                  "Same held-out set and images; mean / worst restoration over it. Plot: "
                  f"`ablations_{ds}.png`.", "", *ablation_section(res["ablations"]), ""]
        if res["ablation_note"]:
            lines += [res["ablation_note"], ""]
    if res.get("recipe_steps"):
        lines += ["### How the recipe was found", "", "Each run one change further than the one above it, scored on "
                  "the held-out set and images of the base it was trained on (the base column: rows of an earlier "
                  "base run, with its own held-out perturbations, are kept from the report that measured them; "
                  "their runs are not on this machine).", "", "| run | change | base clean acc | clean test acc | "
                  "mean restoration | worst restoration | mean FRU fooling |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['change']} | {base_cell(r)} | {pct(r['test_acc'])} | "
                  f"{r['restoration_def']:.3f} | {r['min_restoration_def']:.3f} | {r['fooling_def']:.3f} |"
                  for r in res["recipe_steps"]]
        lines.append("")
    if "stickers" in res:
        lines += ["### Stickers", "", *sticker_section(res["stickers"]), ""]
    else:
        lines += ["### Stickers", "", "Not measured: the label space has no stop sign for the rendered views.", ""]
    deploy = [f for f in (p.format(ds=ds) for p in DEPLOY_FILES) if (out / f).is_file()]
    if deploy:
        lines += ["### Deployment", "", "ONNX export, INT8, `signguard verify` / `bench` and the edge loop: " +
                  ", ".join(f"[`{f}`]({f})" for f in deploy) + ".", ""]
    return lines


def plot_ranking(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = res["ranking"]["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6))
    for ax, (n, r) in zip(axes, layers.items()):
        l1, noise = np.asarray(r["l1"]), np.asarray(r["noise"])
        top = np.argsort(-l1, kind="stable")[: len(l1) // 2]
        mask = np.zeros(len(l1), bool)
        mask[top] = True
        ax.scatter(l1[~mask], noise[~mask], s=10, c="tab:blue", label="kept (bottom 50%)")
        ax.scatter(l1[mask], noise[mask], s=10, c="tab:red", label="regenerated (top 50%)")
        ax.set_title(f"{n}: Spearman rho = {r['spearman']:.2f}")
        ax.set_xlabel("filter weight L1 norm ||W_m||_1")
        ax.set_ylabel("mean max |phi_m(x+v) - phi_m(x)|")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{res['title']}: UAP noise per channel vs filter L1 norm (base classifier)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ablations(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipe = res["fru"]["defense"]
    # each panel varies one setting with the other at the recipe's value, at the ablations' epoch count, on the
    # base run with the most ablation rows (the report may keep rows of an earlier base)
    bases = [r.get("base_acc") for r in res["ablations"]]
    rows = [r for r in res["ablations"] if r.get("base_acc") == max(set(bases), key=bases.count)]
    epochs = min(r["epochs"] for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for ax, key, fixed, label in ((axes[0], "ratio", "layers", "q (share of channels regenerated)"),
                                  (axes[1], "layers", "ratio", "conv layers regenerated")):
        pts = sorted((r[key], r["restoration_def"], r["min_restoration_def"]) for r in rows
                     if r[fixed] == recipe[fixed] and r["epochs"] == epochs)
        if pts:
            xs, mean, worst = zip(*pts)
            ax.plot(xs, mean, "o-", label="mean")
            ax.plot(xs, worst, "s--", label="worst")
        ax.axhline(0.95, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(label)
        ax.set_ylabel("restoration accuracy")
        ax.legend(fontsize=8)
    fig.suptitle(f"{res['title']}: FRU ablations (held-out perturbations)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "perturbation", "method", "acc_base_clean", "acc_base_adv", "fooling_base",
                "acc_def_clean", "acc_def_adv", "fooling_def", "restoration_base", "restoration_def", "n"])
    for ds, res in results.items():
        if not isinstance(res, dict):
            continue
        r = res["restoration"]
        for row in [*r["rows"], r["secondary"]]:
            w.writerow([ds, row["name"], row["method"], *(f"{row[k]:.4f}" for k in (
                "acc_base_clean", "acc_base_adv", "fooling_base", "acc_def_clean", "acc_def_adv", "fooling_def",
                "restoration_base", "restoration_def")), row["n"]])
    return buf.getvalue()


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# FRU: selective feature regeneration on LISA-CNN", "",
             "Borkar, Heide & Karam, \"Defending against universal attacks through selective feature regeneration\", "
             "CVPR 2020.  Units regenerate the share q of each conv layer's filter outputs with the largest weight L1 "
             "norm (each section names its q; the paper's is 50%); the base classifier is frozen.  Everything below is "
             "measured in PyTorch on "
             f"{results['machine']}; `results.json` holds every number, `restoration.csv` the main table.", ""]
    for ds, res in results.items():
        if not isinstance(res, dict):
            continue
        lines += dataset_section(res, out)
        plot_ranking(res, out / f"ranking_{ds}.png")
        if res["ablations"]:
            plot_ablations(res, out / f"ablations_{ds}.png")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "restoration.csv", to_csv(results))
    atomic_write_json(out / "results.json", results)


def carry_earlier(res: dict, earlier: dict | None) -> dict:
    """Keep an earlier report's ablation and recipe-step rows whose runs are not on this machine (runs/ is not
    in git: a fresh checkout retrains the base and the recipe, not every experiment that led to it).

    Every row names the base accuracy it was measured against (``base_acc``), so a table mixing rows of two
    base runs says so.  An earlier row is dropped where this report re-measured its run on the same base, and
    renamed ``<run> (earlier base)`` where the name now holds a run on another base."""
    if not earlier:
        return res
    now_acc = res["base"]["test_acc"]

    def merge(now_rows: list[dict], old_rows: list[dict]) -> list[dict]:
        names = {r["run"] for r in now_rows}
        kept = []
        for r in old_rows:
            r = {**r, "base_acc": r.get("base_acc", earlier["base"]["test_acc"])}
            if r["run"] in names and r["base_acc"] == now_acc:
                continue
            if r["run"] in names:
                r["run"] = f"{r['run']} (earlier base)"
            kept.append(r)
        return kept + now_rows

    res["ablations"] = merge(res["ablations"], earlier.get("ablations", []))
    res["recipe_steps"] = merge(res.get("recipe_steps", []), earlier.get("recipe_steps", []))
    return res
