"""The reports of ``signguard eval``: Markdown tables, a long-format CSV and plots from a sweep's results.

Every table states the threat model, the budget and the attack's effective
configuration (:attr:`~train.eval.sweep_config.AttackEntry.config`: what the
attack object ran with, class defaults included -- not what the YAML left
implicit), the sample count and the seed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from edge.fileio import atomic_write_bytes

from ..data.classes import LISA_CLASSES
from .sweep_config import CRAFT_ON, THREAT, AttackEntry, SweepConfig

_NORM_NAMES = {"linf": "L-inf", "l2": "L2"}


def budget_of(a: AttackEntry) -> str:
    """One human-readable line: norm, budget and steps of the attack, from its effective configuration."""
    c = a.config
    if a.kind in ("rp2", "rp2_transfer"):
        extra = f", DCT low-pass k={c['dct_dim']}" if c["dct_dim"] else ""
        extra += ", + defense regulariser in the loss" if a.adaptive == "regularizer" else ""
        return f"mask {c['mask']}, L2 weight lambda={c['lam']}, NPS, {c['steps']} Adam steps{extra}"
    if a.kind == "deepfool":
        return f"unbounded {_NORM_NAMES[c['norm']]}, overshoot {c['overshoot']}"
    if a.kind == "uap":
        return f"{c['norm']} xi={'default' if c['xi'] is None else c['xi']}"
    if a.kind == "ssp":
        return (f"linf eps={c['eps']:.4f} (= {c['eps'] * 255:.1f}/255), {c['steps']} steps of {c['alpha']:g} on "
                f"{c['layer']} of {c['extractor']}")
    if a.kind == "mifgsm":
        return f"linf eps={c['eps']:.4f} (= {c['eps'] * 255:.1f}/255), {c['steps']} steps, momentum {c['decay']:g}"
    if a.kind == "roa":
        return (f"{c['height']}x{c['width']} rectangle, content unbounded in [0, 1]; {c['search']} position "
                f"search (stride {c['stride']}), {c['steps']} signed steps of {c['alpha']:.4f}")
    eps = float(c["eps"])
    return f"{c['norm']} eps={eps:.4f} (= {eps * 255:.1f}/255)" + (
        f", {c['steps']} steps of {c['alpha']:g}, {c['loss']} loss"
        + (f", {c['restarts']} restarts" if c["restarts"] > 1 else "") if a.kind == "pgd" else "")


def config_line(a: AttackEntry) -> str:
    """Every hyper-parameter the attack ran with, ``name=value``, in its constructor's order."""
    return ", ".join(f"{k}={v}" for k, v in a.config.items() if k != "feature_penalty")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{100 * v:.1f}%" if 0 <= v <= 1 else f"{v:.3f}"
    return str(v)


def to_markdown(cfg: SweepConfig, results: dict[str, Any]) -> str:
    v = cfg.views
    out = [f"# Robustness sweep `{cfg.name}`", "",
           f"Regenerate: `signguard eval {cfg.source}{' --quick' if results.get('quick') else ''}`.  "
           f"Sign: {cfg.sign}; optimisation views: {v.train} (seed {v.train_seed}); "
           f"held-out views: {v.heldout} (seed {v.heldout_seed}); attack seed {cfg.seed}.  "
           f"Machine: {results.get('machine')}; wall time {results.get('wall_s')} s.", ""]
    if results.get("quick"):
        out += [f"**Quick profile** -- {results.get('quick_note', '')}", ""]
    out += _rp2_summary(cfg, results)
    out += _strongest_summary(cfg, results)
    for a in cfg.attacks:
        rows = results["attacks"].get(a.name, [])
        if not rows:
            continue
        out += [f"## {a.name}", "",
                f"Threat model: {THREAT[a.kind]}{CRAFT_ON[a.craft_on]}.  Budget: {budget_of(a)}.  "
                f"Samples: {rows[0].get('n_views', rows[0].get('n', ''))}.  Seed: {cfg.seed}.", "",
                f"Attack parameters (effective): `{config_line(a)}`.", ""]
        if a.kind == "rp2":
            cols = ["model", "legit_acc", "clean_view_acc", "avg_asr", "worst_asr", "worst_target",
                    "avg_untargeted_asr", "l2_dissimilarity"]
        elif a.kind == "rp2_transfer":
            cols = ["model", "variant", "clean_view_acc", "avg_asr", "worst_asr", "avg_untargeted_asr"]
            rows = [{"model": r["model"], "variant": k, **vv} for r in rows for k, vv in r["variants"].items()]
        else:
            cols = ["model", "legit_acc", "clean_acc", "adv_acc", "asr", "l2_dissimilarity"] + [
                c for c in ("rho_2", "fooling_ratio") if c in rows[0]]
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
        out.append("")
        adaptive = [r for r in rows if r.get("attacker_view")]
        if adaptive:
            out += ["Crafted through a surrogate, scored on the deployed model: " + "; ".join(
                f"`{r['model']}`: {r['attacker_view']}" for r in adaptive) + ".", ""]
    out += ["ASR = attack success rate.  rp2: avg_asr is the targeted success averaged over the "
            f"{len(LISA_CLASSES) - 1} targets other than the true class, worst_asr the attacker's best target "
            "(BlurNet Table II); avg_untargeted_asr counts altered predictions (BlurNet Sec. II-A); "
            "l2_dissimilarity = ||x - x_adv||_2 / ||x||_2 on the held-out views.  Pixel attacks: asr = altered "
            "predictions; adv_acc = accuracy under attack.", ""]
    return "\n".join(out)


def _rp2_summary(cfg: SweepConfig, results: dict[str, Any]) -> list[str]:
    """White-box RP2 beside the adaptive variants per model, and the strongest of them (BlurNet Tables II-III).

    Why the strongest: a defense is as robust as its best attack shows; an adaptive attack weaker than the
    plain one (or a plain one weaker than another parametrisation) must not make a model look robust.
    """
    rp2 = [a for a in cfg.attacks if a.kind == "rp2" and results["attacks"].get(a.name)]
    if len(rp2) < 2:
        return []
    names = [a.name for a in rp2]
    lines = ["## Summary: white-box and adaptive RP2 per model", "",
             "avg / worst targeted success on held-out poses for each RP2 variant (- = not run on that model); "
             "`strongest` is the variant with the highest average.", "",
             "| model | legit_acc | " + " | ".join(names) + " | strongest |", "|" + "---|" * (len(names) + 3)]
    for label in cfg.models:
        cells, best, legit = [], None, None
        for n in names:
            r = next((r for r in results["attacks"][n] if r["model"] == label), None)
            cells.append(f"{_fmt(r['avg_asr'])} / {_fmt(r['worst_asr'])}" if r else "-")
            if r:
                legit = r["legit_acc"]
                if best is None or r["avg_asr"] > best[1]["avg_asr"]:
                    best = (n, r)
        if best:
            lines.append(f"| {label} | {_fmt(legit)} | " + " | ".join(cells)
                         + f" | {best[0]}: {_fmt(best[1]['avg_asr'])} / {_fmt(best[1]['worst_asr'])} |")
    return lines + [""]


def _strongest_summary(cfg: SweepConfig, results: dict[str, Any]) -> list[str]:
    """Per model, the pixel attack that left the lowest accuracy and the sticker attack with the highest
    average targeted success: each defense beside its strongest attack (budgets differ between attacks, so
    the attack's name and budget are given with the number)."""
    pixel = [a for a in cfg.attacks if a.kind != "deepfool"  # unbounded: always "strongest"
             and "adv_acc" in (results["attacks"].get(a.name) or [{}])[0]]
    stickers = [a for a in cfg.attacks if a.kind == "rp2" and results["attacks"].get(a.name)]
    if len(pixel) + len(stickers) < 2:
        return []
    lines = ["## Summary: strongest attack per model", "",
             "Lowest accuracy under any pixel attack, and highest average targeted success of any sticker attack, "
             "per model (- = none run on it).", "",
             "| model | legit_acc | strongest pixel attack | accuracy under it | strongest sticker attack "
             "| avg / worst targeted ASR |", "|---|---|---|---|---|---|"]
    for label in cfg.models:
        px, st = _best(results, pixel, label, "adv_acc", 1), _best(results, stickers, label, "avg_asr", -1)
        if px is None and st is None:
            continue
        legit = (px or st)[1].get("legit_acc", float("nan"))
        cells = [f"{px[0].name} ({budget_of(px[0])})", _fmt(px[1]["adv_acc"])] if px else ["-", "-"]
        cells += [st[0].name, f"{_fmt(st[1]['avg_asr'])} / {_fmt(st[1]['worst_asr'])}"] if st else ["-", "-"]
        lines.append(f"| {label} | {_fmt(legit)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _best(results: dict[str, Any], attacks: list[AttackEntry], label: str, key: str, sign: int):
    """The (attack, row) of ``label`` minimising ``sign * row[key]`` among ``attacks``, or None."""
    rows = [(a, r) for a in attacks for r in results["attacks"][a.name] if r["model"] == label]
    return min(rows, key=lambda ar: sign * ar[1][key]) if rows else None


def to_csv(results: dict[str, Any]) -> str:
    """Long format, one metric per line: ``attack, model, variant, metric, value`` (scalars only)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["attack", "model", "variant", "metric", "value"])
    for name, rows in results["attacks"].items():
        for r in rows:
            variants = r.get("variants", {"": r})
            for var, vals in variants.items():
                for k, val in vals.items():
                    if isinstance(val, (int, float, str)) and k not in ("model", "attack"):
                        w.writerow([name, r["model"], var, k, val])
    return buf.getvalue()


def plot(cfg: SweepConfig, results: dict[str, Any], out: Path) -> list[Path]:
    """Per-target ASR bars for each RP2 attack and ASR vs budget for PGD attacks sharing a model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for a in cfg.attacks:
        rows = results["attacks"].get(a.name, [])
        if a.kind != "rp2" or not rows:
            continue
        names = list(rows[0]["per_target"])
        fig, ax = plt.subplots(figsize=(12, 4))
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            ax.bar(np.arange(len(names)) + i * width, [100 * r["per_target"][n] for n in names], width,
                   label=r["model"])
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("targeted success on held-out poses (%)")
        ax.set_title(f"{a.name}: per-target ASR ({budget_of(a)})", fontsize=9)
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        p = out / f"{a.name}_per_target.png"
        _save_fig(fig, p)
        paths.append(p)
    # the budget series: plain L-inf PGD on the held-out views (strength checks and test-split rows excluded)
    pgd = [a for a in cfg.attacks if a.kind == "pgd" and results["attacks"].get(a.name) and a.images == "views"
           and a.config["norm"] == "linf" and a.config["loss"] == "ce" and a.config["restarts"] == 1]
    if len(pgd) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label in cfg.models:
            pts = [(a.config["eps"] * 255, r["asr"]) for a in pgd for r in results["attacks"][a.name]
                   if r["model"] == label]
            if pts:
                pts.sort()
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel("L-inf budget eps (x/255)")
        ax.set_ylabel("attack success rate (%)")
        ax.set_title("PGD: ASR vs budget")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / "pgd_asr_vs_eps.png"
        _save_fig(fig, p)
        paths.append(p)
    return paths


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
