"""The plots of ``bench/nrp_report.py report``: training curves, accuracy restored, purified examples."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.fileio import atomic_write_bytes


def _save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_training(train_logs_steps: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """Eq. 8's terms per step for the purifier and its ablations (the losses that must fall)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for pur, steps in train_logs_steps.items():
        x = [s["step"] for s in steps]
        for ax, key, title in zip(axes, ("feat", "img", "critic"), ("feature MAE (Eq. 5)", "pixel L2 (Eq. 6)",
                                                                   "critic loss (RaGAN)")):
            if all(key in s for s in steps):
                ax.plot(x, [s[key] for s in steps], label=pur)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save_png(fig, out / "training.png")


def plot_restored(rows: list[dict[str, Any]], attacks: tuple[str, ...], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), sharey=True)
    for ax, r in zip(np.atleast_1d(axes), rows):
        names = [a for a in attacks if a in r]
        pos = np.arange(len(names))
        ax.bar(pos - 0.2, [100 * r[a]["bare"] for a in names], 0.4, label="bare")
        ax.bar(pos + 0.2, [100 * r[a]["nrp"] for a in names], 0.4, label="behind NRP")
        ax.axhline(80 * r["clean_bare"], color="k", ls=":", lw=1, label="80% of clean")
        ax.set_xticks(pos)
        ax.set_xticklabels([a.replace("_transfer", "") for a in names], rotation=45, fontsize=7)
        ax.set_title(r["classifier"], fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("accuracy under the attack (%)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    _save_png(fig, out / "restored.png")


def plot_examples(checkpoint: str, out: Path, n: int = 6) -> None:
    """Test images of the baseline: clean, PGD 16/255 made on the bare classifier, and each purified."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train.attacks.pgd import PGD
    from train.checkpoint import load_checkpoint
    from train.data.datasets import load_checkpoint_data

    model, meta = load_checkpoint(checkpoint)
    test = load_checkpoint_data(meta, progress=False).test.sample(n, 1)
    x, y = torch.from_numpy(test.x), torch.from_numpy(test.y).long()
    x_adv = PGD(model.classifier, eps=16 / 255, alpha=4 / 255, steps=10)(x, y).x_adv
    with torch.no_grad():
        rows = [("clean", x), ("clean, purified", model.purifier(x)), ("PGD 16/255", x_adv),
                ("PGD, purified", model.purifier(x_adv))]
        preds = [model.classifier(im).argmax(1) for _, im in rows]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.8 * len(rows)))
    for i, ((name, im), pr) in enumerate(zip(rows, preds)):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(im[j].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(meta["classes"][int(pr[j])][:14], fontsize=6, color="g" if pr[j] == y[j] else "r")
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    _save_png(fig, out / "examples.png")
