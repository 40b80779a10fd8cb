"""NRP Fig. 4 at our scale: which extractor layer SSP attacks -> reports/nrp/<stem>.{md,json,png}.

    python bench/nrp_report.py layers [--extractor RUN --layers a,b --stem NAME]

SSP at each layer of the feature extractor, each example scored on two *selection* classifiers that are neither
the extractor nor any classifier the purifier is later evaluated on; the layer whose examples fool them most on
average is the one the purifier trains on (``configs/nrp.yaml: layer``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nrp_report import EXTRACTOR, LAYERS, OUT, ROOT, SELECTION, _save_png, machine  # bench/ (the script folder)

from edge.fileio import atomic_write_json, atomic_write_text


def layer_study(n: int, eps: float, steps: int, seed: int, extractor: str = EXTRACTOR,
                layers: tuple[str, ...] = LAYERS) -> dict[str, Any]:
    """SSP at each of ``layers`` of ``extractor``; accuracy of each selection classifier on the examples (and on
    random-sign noise of the same budget, what a feature-blind perturbation does)."""
    from train.attacks.ssp import SSP
    from train.checkpoint import load_checkpoint
    from train.data.datasets import load_checkpoint_data
    from train.eval import metrics

    models = {s: load_checkpoint(ROOT / s) for s in SELECTION}
    test = load_checkpoint_data(models[SELECTION[0]][1], progress=False).test.sample(n, seed)  # both: seed-0 signs
    x, y = torch.from_numpy(test.x), torch.from_numpy(test.y).long()
    gen = torch.Generator().manual_seed(seed)
    noise = (x + eps * torch.randn(x.shape, generator=gen).sign()).clamp(0, 1)

    def scores(xa: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            return {s: metrics.accuracy(m(xa).argmax(1).numpy(), y.numpy()) for s, (m, _) in models.items()}

    clean, rows = scores(x), []
    for layer in layers:
        t0 = time.time()
        atk = SSP(models[SELECTION[0]][0], extractor=str(ROOT / extractor), layer=layer, eps=eps, alpha=eps / 8,
                  steps=steps)
        r = atk(x, y, seed=seed)
        acc = scores(r.x_adv)
        rows.append({"layer": layer, "adv_acc": acc, "mean_drop": float(np.mean([clean[s] - acc[s] for s in acc])),
                     "feature_distortion": float(np.mean(r.info["feature_distortion"])),
                     "seconds": round(time.time() - t0, 1)})
        print(f"  {layer}: accuracy {acc}", flush=True)
    best = max(rows, key=lambda r: r["mean_drop"])
    arch = load_checkpoint(ROOT / extractor)[1]["architecture"]["name"]
    return {"selection_models": list(SELECTION), "extractor": extractor, "architecture": arch, "n": n, "eps": eps,
            "steps": steps, "alpha": eps / 8, "seed": seed, "clean_acc": clean, "random_sign_noise_acc": scores(noise),
            "rows": rows, "chosen": best["layer"], "machine": machine()}


def write_layers(res: dict[str, Any], stem: str = "ssp_layers") -> None:
    """``<stem>.{md,json,png}``; the default stem is the recipe's extractor, whose chosen layer configs/nrp.yaml
    trains on, any other a comparison (``--extractor``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel, default = res["selection_models"], stem == "ssp_layers"
    cmd = "python bench/nrp_report.py layers" + ("" if default else (
        f" --extractor {res['extractor']} --layers {','.join(r['layer'] for r in res['rows'])} --stem {stem}"))
    pct = "% | ".join
    lines = [f"# SSP layer choice (NRP Fig. 4 at 32x32), extractor `{res['architecture']}`", "",
             f"Regenerate: `{cmd}` (needs `{res['extractor']}`, trained by `signguard train`: "
             + ("`configs/nrp_extractor.yaml`" if default else "`configs/nrp_extractor.yaml --set model.name="
                f"{res['architecture']}`") + ").", "",
             f"SSP (L-inf eps {res['eps'] * 255:.0f}/255, {res['steps']} steps of {res['alpha'] * 255:.0f}/255, "
             f"random first step) at each layer of the extractor (`{res['architecture']}`, `{res['extractor']}`), "
             f"scored on {res['n']} test images by two **selection classifiers** (" + ", ".join(f"`{s}`" for s in sel)
             + ") -- LISA-CNNs the purifier is never evaluated behind, so the choice does not peek at the "
             f"evaluation.  Seed {res['seed']}.  Machine: {res['machine']}.", "",
             "| layer | " + " | ".join(f"accuracy, {Path(s).name}" for s in sel)
             + " | mean accuracy drop | feature distortion (MAE) |", "|---|" + "---|" * (len(sel) + 2),
             "| clean | " + pct(f"{100 * res['clean_acc'][s]:.1f}" for s in sel) + "% | - | - |",
             "| random-sign noise, same budget | " + pct(f"{100 * res['random_sign_noise_acc'][s]:.1f}" for s in sel)
             + "% | - | - |"]
    for r in res["rows"]:
        mark = " **(chosen)**" if r["layer"] == res["chosen"] else ""
        lines.append(f"| SSP at {r['layer']}{mark} | " + pct(f"{100 * r['adv_acc'][s]:.1f}" for s in sel)
                     + f"% | {100 * r['mean_drop']:.1f} pts | {r['feature_distortion']:.4f} |")
    lines += ["", f"Chosen: `{res['chosen']}`, the layer whose feature-space adversaries transfer best (largest mean "
              "accuracy drop of the selection classifiers); " + ("`configs/nrp.yaml` trains the purifier on it."
                                                                 if default else "the comparison purifiers of "
                                                                 "[extractor.md](extractor.md) train on it."), ""]
    atomic_write_text(OUT / f"{stem}.md", "\n".join(lines))
    atomic_write_json(OUT / f"{stem}.json", res)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r["layer"].split(".")[-1] for r in res["rows"]], [100 * r["mean_drop"] for r in res["rows"]])
    ax.set_ylabel("mean accuracy drop of the selection models (pts)")
    ax.set_title(f"SSP at each {res['architecture']} layer, eps {res['eps'] * 255:.0f}/255", fontsize=9)
    fig.tight_layout()
    _save_png(fig, OUT / f"{stem}.png")
