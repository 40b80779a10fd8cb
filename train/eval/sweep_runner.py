"""``signguard eval``: run a sweep's models x attacks cells, cache them, write the reports.

Why one runner: every robustness number in a report must say under which
threat model, norm, budget, sample count and seed it was measured, and the
same cells (model, attack) must be re-runnable after an interruption.  Each
cell is computed once and cached as ``cells/<attack>__<model>.json`` (keyed
by a hash of the attack's effective configuration, the model's weights, the
views, seed and sign), so a long sweep resumes where it stopped and an edited
attack re-runs only its own cells.  The YAML and its attack kinds:
:mod:`train.eval.sweep_config`; the tables and plots: :mod:`train.eval.sweep_report`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.config import to_dict
from edge.errors import SignguardError
from edge.fileio import atomic_write_json, atomic_write_text

from ..checkpoint import load_checkpoint, read_sidecar
from ..data.classes import LISA_CLASSES, LISA_INDEX
from ..data.datasets import DataBundle, load_checkpoint_data
from . import metrics
from .sweep_config import AttackEntry, SweepConfig, load_sweep
from .sweep_report import plot, to_csv, to_markdown

# ``from train.eval.sweep_runner import load_sweep, run_sweep``: the whole sweep API from one place
__all__ = ["Runner", "cell_key", "cells_of", "crafting_model", "feature_blur", "input_blur", "load_sweep",
           "regularizer_of", "rp2_row", "run_sweep"]

# --------------------------------------------------------------------------- model variants


def input_blur(model: nn.Module, k: int) -> nn.Module:
    """A fixed k x k box blur on the input in front of a classifier (Table I's "input filter"): the registry's
    ``input_blur`` purifier around the trained model, without retraining."""
    from ..defenses import defense_from_dict

    return defense_from_dict({"kind": "input_blur", "kernel_size": k}).wrap(model).eval()


def feature_blur(model: nn.Module, meta: dict[str, Any], k: int) -> nn.Module:
    """The same trained LISA-CNN with a fixed k x k box blur inserted after conv1 (Table I's "filter on L1 maps")."""
    from ..models import create_model

    opts = {**meta["architecture"]["options"], "blur_kernel": k, "blur_learnable": False}
    m = create_model(meta["architecture"]["name"], **opts)
    missing, unexpected = m.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not n.startswith("blur.") for n in missing):
        raise SignguardError(f"feature_blur: model {meta['architecture']['name']} already has a blur layer")
    return m.eval()


def crafting_model(model: nn.Module, craft_on: str) -> nn.Module:
    """The model an attack differentiates (``craft_on``, see :mod:`train.eval.sweep_config`): the scored model
    end to end -- through its adaptive surrogate when its deployed decision has no useful gradient (the PRN
    gate, column smoothing, PatchCleanser: :mod:`train.attacks.adaptive_view`) --, the classifier inside it, or
    the model with its front parts (purifier) made identity on the backward pass (BPDA).  A model without front
    parts is its own classifier: every choice is the same."""
    from ..attacks.adaptive_view import attacker_view
    from ..attacks.bpda import BPDA
    from ..defenses import classifier_of

    if craft_on == "model":
        return attacker_view(model)
    if not hasattr(model, "front_of"):
        return model
    if craft_on == "classifier":
        return classifier_of(model)
    return nn.Sequential(BPDA(model.front_of), classifier_of(model)).eval()


def regularizer_of(meta: dict[str, Any]):
    """The first-layer training regulariser of a checkpoint's defense (Eq. 9-11), or None."""
    from ..defenses import attack_regularizer

    return attack_regularizer(meta.get("defense", {}))


# --------------------------------------------------------------------------- cells


def cell_key(a: AttackEntry, model_path: str, cfg: SweepConfig, surrogate: str | None = None) -> str:
    """Hash of everything a cell's numbers depend on: the attack's effective configuration (class defaults
    included, so a changed default re-runs it) and sweep-level settings, the model's weights, views, seed, and
    the surrogate the attack differentiates when it is not the model itself."""
    _, meta = read_sidecar(model_path)
    # which models an attack runs on is not a property of one (attack, model) cell
    attack = {k: v for k, v in to_dict(a).items() if k not in ("models", "params")}
    if attack.get("craft_on") == "model":  # the default: keys of sweeps written before the option stay valid
        del attack["craft_on"]
    if surrogate is not None:
        attack["attacker_view"] = surrogate
    blob = json.dumps({"attack": attack, "model": meta["weights_sha256"], "views": to_dict(cfg.views),
                       "seed": cfg.seed, "sign": cfg.sign}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rp2_row(ev: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """One model's RP2 row from :func:`~train.attacks.rp2.evaluate_stickers`: average and worst-target targeted
    success, average untargeted success, L2 dissimilarity, per-target success (BlurNet Table II).  Targets are
    named in the model's label space (``meta["classes"]``; LISA-18 when it has none)."""
    per = {p["target"]: p["targeted_success"] for p in ev["per_target"]}
    s = metrics.targeted_summary(per)
    names = meta.get("classes") or LISA_CLASSES
    return {
        "legit_acc": meta.get("metrics", {}).get("test_acc", float("nan")),
        "clean_view_acc": ev["clean_accuracy"],
        "avg_asr": s["average"], "worst_asr": s["worst"], "worst_target": names[s["worst_target"]],
        "avg_untargeted_asr": float(np.mean([p["untargeted_success"] for p in ev["per_target"]])),
        "l2_dissimilarity": float(np.mean([p["l2_dissimilarity"] for p in ev["per_target"]])),
        "per_target": {names[t]: v for t, v in per.items()},
        "n_views": ev["n_views"],
    }


class Runner:
    """Holds the rendered views and loaded models of one sweep; computes and caches cells."""

    def __init__(self, cfg: SweepConfig, out_dir: Path, progress: bool = True):
        from ..attacks.views import render_views

        self.cfg, self.out, self.progress = cfg, out_dir, progress
        cls = LISA_INDEX[cfg.sign]
        v = cfg.views
        self.train_views = render_views(cls, v.train, v.train_seed)
        self.heldout = render_views(cls, v.heldout, v.heldout_seed)
        self.class_id = cls
        self._models: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
        self._data: dict[str, DataBundle] = {}  # per (data, preprocess) recipe; each test-image attack draws its n
        self._legit: dict[str, float] = {}
        # models scored on their own test split: their recorded accuracy is checked against the data loaded here
        self._on_test = {m for a, m in cells_of(cfg) if a.images == "test"}
        self._rp2: dict[str, tuple[Any, dict[str, Any]]] = {}  # (RP2Result, held-out evaluation) per setting

    def model(self, label: str) -> tuple[nn.Module, dict[str, Any]]:
        if label not in self._models:
            self._models[label] = load_checkpoint(self.cfg.models[label])
        return self._models[label]

    def images(self, a: AttackEntry, meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if a.images == "views":
            return self.heldout.x, torch.full((len(self.heldout),), self.class_id, dtype=torch.long)
        s = self.data(meta).test.sample(a.n, self.cfg.seed)  # each model on its own test split
        return torch.from_numpy(s.x), torch.from_numpy(s.y).long()

    def data(self, meta: dict[str, Any]) -> DataBundle:
        key = json.dumps([meta["recipe"]["data"], meta["preprocess"]], sort_keys=True)
        if key not in self._data:
            self._data[key] = load_checkpoint_data(meta, progress=self.progress)
        return self._data[key]

    def legit_acc(self, label: str) -> float:
        """The model's clean accuracy on its whole test split: the one its checkpoint recorded, or measured here
        when it recorded none (a run's ``last.json``) or -- for a model this sweep scores on its test split --
        recorded it on other data (``data_hash``: a run trained on a copy of the dataset).  The same for every
        cell of the model, whatever the order the cells run or load in."""
        if label not in self._legit:
            from ..trainer import test_accuracy

            model, meta = self.model(label)
            self._legit[label] = test_accuracy(model, meta, self.data(meta) if label in self._on_test else None)
        return self._legit[label]

    def surrogate(self, a: AttackEntry, label: str) -> str | None:
        """What the attack differentiates instead of the model, when it does (see :func:`crafting_model`)."""
        from ..attacks.adaptive_view import surrogate_name

        return surrogate_name(self.model(label)[0]) if a.craft_on == "model" else None

    def cell(self, a: AttackEntry, label: str) -> dict[str, Any] | None:
        surrogate = self.surrogate(a, label)
        key = cell_key(a, self.cfg.models[label], self.cfg, surrogate)
        path = self.out / "cells" / f"{a.name}__{label}.json"
        if path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                return self._with_legit(cached["row"], label)
        t0 = time.time()
        row = self._compute(a, label)
        if row is not None:
            row.update({"model": label, "attack": a.name, "seconds": round(time.time() - t0, 1)})
            if surrogate is not None:
                row["attacker_view"] = surrogate
        atomic_write_json(path, {"key": key, "row": row})  # "not applicable to this model" (None) is cached too
        return self._with_legit(row, label)

    def _with_legit(self, row: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
        if row is not None and "legit_acc" in row:
            row["legit_acc"] = self.legit_acc(label)
        return row

    def _compute(self, a: AttackEntry, label: str) -> dict[str, Any] | None:
        from ..attacks.rp2 import evaluate_stickers

        model, meta = self.model(label)
        if a.kind == "rp2":
            penalty = None
            if a.adaptive == "regularizer":
                penalty = regularizer_of(meta)
                if penalty is None:
                    return None
            atk, res, ev = self._rp2_stickers(label, model, a, penalty)
            row = {**rp2_row(ev, meta), "attack_config": atk.config()}
            self._save_sticker(a, label, model, res, ev, meta)
            return row
        if a.kind == "rp2_transfer":
            atk, res, ev = self._rp2_stickers(label, model, a)
            rows = {"source": rp2_row(ev, meta)}
            for k in a.input_blur:
                blurred = input_blur(model, k)
                rows[f"input blur {k}x{k}"] = rp2_row(evaluate_stickers(blurred, self.heldout, res), meta)
            for k in a.feature_blur:
                rows[f"{k}x{k} blur on L1 maps"] = rp2_row(
                    evaluate_stickers(feature_blur(model, meta, k), self.heldout, res), meta)
            return {"variants": rows, "n_views": len(self.heldout), "attack_config": atk.config()}
        x, y = self.images(a, meta)
        crafter = crafting_model(model, a.craft_on)
        atk = a.make(crafter)
        r = atk(x, y, seed=self.cfg.seed)
        info = r.info
        if crafter is not model:  # crafted on another model or a surrogate: the scored model's predictions
            from ..attacks.base import batched_predict

            info = {**info, "pred_clean": batched_predict(model, x).numpy(),
                    "pred_adv": batched_predict(model, r.x_adv).numpy()}
            info["fooling_ratio"] = metrics.fooling_ratio(info["pred_clean"], info["pred_adv"])
        row = {
            "legit_acc": meta.get("metrics", {}).get("test_acc", float("nan")),
            "clean_acc": metrics.accuracy(info["pred_clean"], y.numpy()),
            "adv_acc": metrics.accuracy(info["pred_adv"], y.numpy()),
            "asr": metrics.attack_success_rate(info["pred_clean"], info["pred_adv"]),
            "l2_dissimilarity": float(np.mean(info["l2_dissimilarity"])),
            "n": len(x),
        }
        if a.kind == "deepfool":
            row["rho_2"] = metrics.rho_2(x.numpy(), info["r_norm"])
        if a.kind == "uap":
            row["fooling_ratio"] = float(info["fooling_ratio"])
        row["attack_config"] = atk.config()
        return row

    def _rp2_stickers(self, label: str, model: nn.Module, a: AttackEntry, penalty=None):
        """The RP2 attack, its stickers for every target on ``label`` and their held-out evaluation, computed
        once per RP2 setting: a transfer attack with the white-box attack's settings reuses its stickers."""
        from ..attacks.rp2 import evaluate_stickers

        atk = a.make(crafting_model(model, a.craft_on), feature_penalty=penalty)
        key = json.dumps([label, a.craft_on, atk.config()], sort_keys=True)
        if key not in self._rp2:
            targets = [c for c in range(len(LISA_CLASSES)) if c != self.class_id]
            res = atk(self.train_views, targets, seed=self.cfg.seed)
            self._rp2[key] = res, evaluate_stickers(model, self.heldout, res)
        return (atk, *self._rp2[key])

    def _save_sticker(self, a: AttackEntry, label: str, model: nn.Module, res, ev: dict[str, Any],
                      meta: dict[str, Any]) -> None:
        """The attacker's best target: printable sticker (PNG + PDF at the physical size) and a preview grid."""
        from ..attacks.rp2 import save_rp2_sticker

        best = int(np.argmax([p["targeted_success"] for p in ev["per_target"]]))
        save_rp2_sticker(self.out / "stickers" / f"{a.name}__{label}", model, self.heldout, res, ev, best,
                         self.cfg.sticker.sign_width_mm, self.cfg.sticker.dpi,
                         {"model": label, "attack": a.name, "model_sha256": meta.get("weights_sha256")})


def cells_of(cfg: SweepConfig) -> list[tuple[AttackEntry, str]]:
    """The (attack, model label) cells of a sweep, in run order: each attack on its ``models``, else on its
    ``source`` (rp2_transfer), else on every model; a label the (quick) profile dropped is skipped."""
    cells = []
    for a in cfg.attacks:
        labels = a.models if a.models is not None else [a.source] if a.source else list(cfg.models)
        cells += [(a, m) for m in labels if m in cfg.models]
    return cells


def run_sweep(cfg: SweepConfig, out_dir: str | Path, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compute (or reuse) every (attack, model) cell and write ``report.md``, ``results.csv/json``, plots."""
    import os
    import platform

    from ..progress import progress as bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runner = Runner(cfg, out, progress)
    results: dict[str, Any] = {"name": cfg.name, "quick": quick, "attacks": {},
                               "views": to_dict(cfg.views), "seed": cfg.seed, "sign": cfg.sign,
                               "quick_note": cfg.quick.note}
    for a, m in bar(cells_of(cfg), f"eval {cfg.name}", progress):
        row = runner.cell(a, m)
        if row is not None:
            results["attacks"].setdefault(a.name, []).append(row)
    results["wall_s"] = round(time.time() - t0, 1)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    results["plots"] = [str(p.name) for p in plot(cfg, results, out)]
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.csv", to_csv(results))
    atomic_write_text(out / "report.md", to_markdown(cfg, results))
    return results
