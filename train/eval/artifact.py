"""Verify a deployed artifact: does each precision of a bundle keep the FP32 model's accuracy *and* robustness?

Why robustness too: quantisation moves decision boundaries, and a sticker
that the FP32 model resists can fool its INT8 copy even when clean accuracy
is unchanged.  Attacks are crafted once on the PyTorch model (white-box
there) and *transferred* to every artifact -- the deployment threat: the
attacker has the trained weights, the device runs the converted graph.  The
verdict compares each precision with the bundle's FP32 graph, with margins
in percentage points (defaults: 1 pt accuracy, 2 pt attack success).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edge.bundle import load_bundle
from edge.errors import SignguardError
from edge.manifest import read_manifest, whole_model_entries


@dataclass
class TransferAttack:
    """Adversarial inputs crafted on the PyTorch model; scored on each artifact.

    ``kind``: ``untargeted`` (success = prediction != ``labels``), ``targeted`` (success = prediction ==
    ``labels``, the targets) or ``fooling`` (success = prediction differs from the artifact's own
    prediction on ``clean``; the UAP fooling ratio).
    """

    name: str
    x_adv: np.ndarray
    labels: np.ndarray
    kind: str = "untargeted"
    clean: np.ndarray | None = None
    budget: str = ""

    def rate(self, predict) -> float:
        pred = predict(self.x_adv)
        if self.kind == "targeted":
            return float(np.mean(pred == self.labels))
        if self.kind == "fooling":
            return float(np.mean(pred != predict(self.clean)))
        return float(np.mean(pred != self.labels))


@dataclass(frozen=True)
class Margins:
    max_acc_drop: float = 1.0  # points of clean accuracy a precision may lose vs FP32
    max_asr_rise: float = 2.0  # points of attack success a precision may gain vs FP32


@dataclass
class VerifyReport:
    rows: list[dict[str, Any]]
    failures: list[str] = field(default_factory=list)
    n_images: int = 0
    attacks: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": self.failures, "n_images": self.n_images,
                "attacks": self.attacks, "rows": self.rows}


def heldout_for_bundle(bundle_dir: str | Path, checkpoint: str | Path | None, n: int,
                       seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """The bundle's PyTorch model (``checkpoint`` or the manifest's ``source.checkpoint``) and ``n`` held-out
    test images of its recipe, drawn with ``seed``: what ``verify`` and ``bench`` score every artifact on."""
    from ..checkpoint import load_checkpoint
    from ..data.datasets import load_checkpoint_data

    # only the source path is read here; verify_bundle / bench_bundle check the hashes once
    ckpt = checkpoint or read_manifest(bundle_dir, verify_hashes=False).get("source", {}).get("checkpoint")
    if not ckpt:
        raise SignguardError(f"{Path(bundle_dir) / 'manifest.json'}: no source.checkpoint; pass --checkpoint")
    model, meta = load_checkpoint(ckpt)
    test = load_checkpoint_data(meta).test.sample(n, seed)
    return model, test.x, test.y


def pgd_transfer(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int = 0, **params: Any) -> TransferAttack:
    """PGD crafted on the PyTorch model with ``params`` (:class:`~train.attacks.pgd.PGD` hyper-parameters; the
    class's defaults for the rest); the budget names the attack's effective configuration."""
    from ..attacks.pgd import PGD

    atk = PGD(model, **params)
    res = atk(torch.from_numpy(x), torch.from_numpy(y).long(), seed=seed)
    c = atk.config()
    norm = {"linf": "L-inf", "l2": "L2"}[c["norm"]]
    eps = f"{c['eps'] * 255:.1f}/255" if c["norm"] == "linf" else f"{c['eps']:g}"
    budget = (f"{norm} eps {eps}, {c['steps']} steps of {c['alpha']:.4g}, {c['loss']} loss"
              + (f", {c['restarts']} restarts" if c["restarts"] > 1 else "")
              + ("" if c["random_start"] else ", no random start"))
    return TransferAttack(f"pgd_{c['eps'] * 255:.0f}", res.x_adv.numpy(), y, "untargeted", budget=budget)


def sticker_names(sticker_dirs: Sequence[str | Path]) -> list[str]:
    """Report names of RP2 stickers: ``rp2_<sign>_to_<target>``, or ``rp2_<sign>_to_<target>@<folder name>``
    for stickers that share a sign and target (a report keyed by attack name would otherwise keep only one)."""
    from ..attacks.sticker_io import load_sticker

    base = []
    for d in sticker_dirs:
        meta = load_sticker(d)[2]["meta"]
        base.append(f"rp2_{meta.get('sign', 'stop')}_to_{meta['target']}")
    names = [f"{b}@{Path(d).name}" if base.count(b) > 1 else b for b, d in zip(base, sticker_dirs)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SignguardError(f"stickers {[str(d) for d in sticker_dirs]}: two have the same sign, target and "
                             f"folder name ({dup}); rename a folder")
    return names


def sticker_transfer(sticker_dir: str | Path, n_views: int = 40, seed: int = 1_000,
                     name: str | None = None) -> TransferAttack:
    """An RP2 sticker (``signguard attack rp2`` output) on ``n_views`` fresh poses of its sign, reported as
    ``name`` (default ``rp2_<sign>_to_<target>``; see :func:`sticker_names` for several stickers)."""
    from ..attacks.sticker_io import load_sticker
    from ..attacks.views import render_views, render_with_sticker
    from ..data.classes import LISA_INDEX

    rgb, region, meta = load_sticker(sticker_dir)
    sign, target = meta["meta"].get("sign", "stop"), meta["meta"]["target"]
    views = render_views(LISA_INDEX[sign], n_views, seed)
    x = np.asarray(render_with_sticker(views, rgb, region), dtype=np.float32)
    return TransferAttack(name or f"rp2_{sign}_to_{target}", x, np.full(len(x), LISA_INDEX[target]), "targeted",
                          budget=f"sticker {Path(sticker_dir).name}, {n_views} held-out poses")


def uap_transfer(path: str | Path, x: np.ndarray) -> TransferAttack:
    from ..attacks.uap import load_perturbation

    v, meta = load_perturbation(path)
    return TransferAttack("uap", np.clip(x + v[None], 0, 1).astype(np.float32), np.zeros(len(x), np.int64),
                          "fooling", clean=x,
                          budget=f"{meta.get('method', 'uap')} {meta.get('norm', '?')} xi {meta.get('xi', '?')}, "
                                 f"made on the model with weights {str(meta.get('model_hash', '?'))[:12]}, "
                                 "scored as fooling ratio")


class BundleClassifier(nn.Module):
    """One precision of a bundle's ONNX graph as a module returning its raw outputs, so the PyTorch evaluation
    code (``predict``, :func:`~train.attacks.rp2.evaluate_stickers`) scores the deployed artifact unchanged.
    Inference only: it has no gradient, attacks are made on the PyTorch model and transferred."""

    def __init__(self, bundle_dir: str | Path, precision: str = "int8"):
        super().__init__()
        self.bundle = load_bundle(bundle_dir, precision=precision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.bundle.classify(x.detach().cpu().numpy().astype(np.float32)))


def verify_bundle(bundle_dir: str | Path, model: nn.Module, x: np.ndarray, y: np.ndarray,
                  attacks: Sequence[TransferAttack], margins: Margins = Margins()) -> VerifyReport:
    """Clean accuracy and transferred-attack success of PyTorch and of every ONNX precision in the bundle."""
    from ..trainer import predict

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)  # every hash checked once, here
    precisions = list(dict.fromkeys(e["precision"] for e in whole_model_entries(manifest, "onnx")))
    if "fp32" not in precisions:
        raise SignguardError(f"{bundle_dir}: verify compares against the FP32 graph, and the bundle has none")
    model.eval()
    runners: list[tuple[str, str, Any, Any]] = [
        ("pytorch", "fp32", lambda a: predict(model, a), None)]
    for prec in precisions:
        b = load_bundle(bundle_dir, precision=prec, verify_hashes=False)
        runners.append(("onnxruntime", prec, lambda a, b=b: b.classify(a).argmax(1), b if b.gate else None))
    rows = []
    for backend, prec, run, gated in runners:
        row = {"backend": backend, "precision": prec, "accuracy": float(np.mean(np.asarray(run(x)) == y))}
        row.update({a.name: a.rate(lambda z, run=run: np.asarray(run(z))) for a in attacks})
        if gated is not None:  # how often the gate fires: on clean images, and on each attack's images
            row["gate_fired"] = {"clean": float(np.mean(gated.classify_gated(x)[2])),
                                 **{a.name: float(np.mean(gated.classify_gated(a.x_adv)[2])) for a in attacks}}
        rows.append(row)
    ref = next(r for r in rows if r["backend"] == "onnxruntime" and r["precision"] == "fp32")
    failures = []
    for r in rows:
        if r["backend"] != "onnxruntime" or r["precision"] == "fp32":
            continue
        # rounded: rates are k/n, and 100 * (0.91 - 0.90) is 1.0000000000000009, not 1 pt
        drop = round(100 * (ref["accuracy"] - r["accuracy"]), 9)
        if drop > margins.max_acc_drop:
            failures.append(f"{r['precision']}: clean accuracy {100 * r['accuracy']:.2f}% is {drop:.2f} pt below "
                            f"FP32 ({100 * ref['accuracy']:.2f}%; margin {margins.max_acc_drop:g} pt)")
        for a in attacks:
            rise = round(100 * (r[a.name] - ref[a.name]), 9)
            if rise > margins.max_asr_rise:
                failures.append(f"{r['precision']}: {a.name} success {100 * r[a.name]:.1f}% is {rise:.1f} pt above "
                                f"FP32 ({100 * ref[a.name]:.1f}%; margin {margins.max_asr_rise:g} pt)")
    return VerifyReport(rows, failures, int(len(x)), {a.name: a.budget for a in attacks})


def to_markdown(report: VerifyReport) -> str:
    names = list(report.attacks)
    lines = ["| backend | precision | clean acc | " + " | ".join(f"{n} success" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for r in report.rows:
        cells = [f"{100 * r[n]:.1f}%" for n in names]
        lines.append(f"| {r['backend']} | {r['precision']} | {100 * r['accuracy']:.2f}% | " + " | ".join(cells) + " |")
    gated = [r for r in report.rows if "gate_fired" in r]
    if gated:
        cols = list(gated[0]["gate_fired"])
        lines += ["", "| gate fires on (onnxruntime) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {r['precision']} | " + " | ".join(f"{100 * r['gate_fired'][c]:.1f}%" for c in cols) + " |"
                  for r in gated]
    notes = [f"- {n}: {b}" for n, b in report.attacks.items()]
    verdict = "PASSED" if report.passed else "FAILED:\n" + "\n".join(f"- {f}" for f in report.failures)
    return (f"Clean accuracy on {report.n_images} held-out images; attacks crafted on the PyTorch model "
            "(white-box) and transferred to each artifact.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes)
            + f"\n\nverdict: {verdict}\n")
