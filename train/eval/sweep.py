"""``signguard eval``: models x attacks from a YAML sweep -> Markdown, CSV, JSON and plots.

Why one runner: every robustness number in a report must say under which
threat model, norm, budget, sample count and seed it was measured, and the
same cells (model, attack) must be re-runnable after an interruption.  Each
cell is computed once and cached as ``cells/<attack>__<model>.json`` (keyed
by a hash of its settings), so a long sweep resumes where it stopped and an
edited attack re-runs only its own cells.

Attack kinds (``kind:`` in the YAML):

* ``rp2`` -- white-box RP2 sticker, all targets but the true class batched
  (:mod:`train.attacks.rp2`), optimised on ``views.train`` poses and scored
  by re-rendering ``views.heldout`` poses with the sticker.  ``dct_dim``
  makes it BlurNet's low-frequency adaptive attack (Eq. 8);
  ``adaptive: regularizer`` adds the model's own training regulariser to the
  attack loss (Eq. 9-11).
* ``rp2_transfer`` -- black-box transfer (BlurNet Table I): stickers made on
  ``source`` are scored on ``source`` with a fixed k x k box blur on the
  input or on the first-layer feature maps, without retraining.
* ``pgd``, ``fgsm``, ``deepfool``, ``uap`` -- pixel-space attacks on the
  held-out views (``images: views``) or on the synthetic test split
  (``images: test``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError, SignguardError
from edge.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

from ..checkpoint import load_checkpoint, read_sidecar
from ..data.classes import LISA_CLASSES, LISA_INDEX
from ..data.datasets import Split, load_checkpoint_data
from . import metrics

KINDS = ("rp2", "rp2_transfer", "pgd", "fgsm", "deepfool", "uap")
THREAT = {
    "rp2": "white-box, sticker inside the mask on the sign (RP2 + EOT), targeted; scored on held-out poses",
    "rp2_transfer": "black-box transfer: stickers made on the source model, scored on blurred variants",
    "pgd": "white-box, pixel-space, untargeted",
    "fgsm": "white-box, pixel-space, untargeted, one step",
    "deepfool": "white-box, pixel-space, untargeted, minimal L2 perturbation",
    "uap": "white-box, one universal perturbation for all images, untargeted",
}


@dataclass
class SweepConfig:
    """A parsed sweep YAML (see ``configs/eval/blurnet.yaml``)."""

    name: str
    models: dict[str, str]
    attacks: list[dict[str, Any]]
    sign: str = "stop"
    views: dict[str, int] = field(default_factory=lambda: {"train": 40, "heldout": 40, "train_seed": 1,
                                                          "heldout_seed": 2})
    seed: int = 0
    sticker: dict[str, Any] = field(default_factory=lambda: {"sign_width_mm": 750.0, "dpi": 150})
    quick: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def load_sweep(path: str | Path, quick: bool = False, root: Path | None = None) -> SweepConfig:
    """Parse and validate a sweep YAML; with ``quick`` apply its ``quick:`` block (fewer models, steps, views)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    known = set(SweepConfig.__dataclass_fields__) - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown} (known: {sorted(known)})")
    for key in ("name", "models", "attacks"):
        if key not in raw:
            raise ConfigError(f"{path}: missing field {key!r}")
    if not isinstance(raw["models"], dict) or not raw["models"]:
        raise ConfigError(f"{path}: models must map a label to a run folder or checkpoint")
    if not isinstance(raw["attacks"], list) or not raw["attacks"]:
        raise ConfigError(f"{path}: attacks must be a non-empty list")
    cfg = SweepConfig(**{k: v for k, v in raw.items()})
    base = root or Path.cwd()
    cfg.models = {k: str(v if Path(v).is_absolute() else base / v) for k, v in cfg.models.items()}
    defaults = SweepConfig("", {}, [])
    cfg.views = {**defaults.views, **(cfg.views or {})}
    cfg.sticker = {**defaults.sticker, **(cfg.sticker or {})}
    if cfg.sign not in LISA_INDEX:
        raise ConfigError(f"{path}: sign: unknown class {cfg.sign!r}")
    names = set()
    for i, a in enumerate(cfg.attacks):
        where = f"{path}: attacks[{i}]"
        if not isinstance(a, dict) or "name" not in a or "kind" not in a:
            raise ConfigError(f"{where}: expected a mapping with name and kind")
        if a["kind"] not in KINDS:
            raise ConfigError(f"{where}.kind: expected one of {KINDS}, got {a['kind']!r}")
        if a["name"] in names:
            raise ConfigError(f"{where}.name: {a['name']!r} used twice")
        names.add(a["name"])
        for m in a.get("models", []):
            if m not in cfg.models:
                raise ConfigError(f"{where}.models: unknown model label {m!r}")
    if quick:
        q = cfg.quick or {}
        if "models" in q:
            cfg.models = {k: v for k, v in cfg.models.items() if k in q["models"]}
        cfg.views.update(q.get("views", {}))
        cfg.attacks = [{**a, **q.get("attack_overrides", {}).get(a["kind"], {})} for a in cfg.attacks
                       if a["name"] not in q.get("drop_attacks", [])]
        for a in cfg.attacks:
            if "models" in a:
                a["models"] = [m for m in a["models"] if m in cfg.models]
    cfg.source = str(path)
    return cfg


# --------------------------------------------------------------------------- model variants


class InputBlur(nn.Module):
    """A fixed k x k box blur on the input in front of a classifier (Table I's "input filter")."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k
        w = torch.full((3, 1, k, k), 1.0 / (k * k))
        self.register_buffer("weight", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.k // 2
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        return self.model(torch.nn.functional.conv2d(xp, self.weight, groups=3))


def feature_blur(model: nn.Module, meta: dict[str, Any], k: int) -> nn.Module:
    """The same trained LISA-CNN with a fixed k x k box blur inserted after conv1 (Table I's "filter on L1 maps")."""
    from ..models import create_model

    opts = {**meta["architecture"]["options"], "blur_kernel": k, "blur_learnable": False}
    m = create_model(meta["architecture"]["name"], **opts)
    missing, unexpected = m.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not n.startswith("blur.") for n in missing):
        raise SignguardError(f"feature_blur: model {meta['architecture']['name']} already has a blur layer")
    return m.eval()


def regularizer_of(meta: dict[str, Any]):
    """The first-layer training regulariser of a checkpoint's defense (Eq. 9-11), or None."""
    from ..config import DefenseConfig, from_dict
    from ..defenses.blurnet import feature_regularizer

    return feature_regularizer(from_dict(DefenseConfig, meta.get("defense", {}), "defense"))


# --------------------------------------------------------------------------- cells


def _cell_key(attack: dict[str, Any], model_path: str, cfg: SweepConfig) -> str:
    _, meta = read_sidecar(model_path)
    # which models an attack runs on is not a property of one (attack, model) cell
    attack = {k: v for k, v in attack.items() if k != "models"}
    blob = json.dumps({"attack": attack, "model": meta["weights_sha256"], "views": cfg.views, "seed": cfg.seed,
                       "sign": cfg.sign}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rp2_attack(model: nn.Module, a: dict[str, Any], penalty=None):
    from ..attacks.rp2 import RP2

    keys = ("mask", "res", "steps", "lr", "lam", "nps_weight", "palette", "snap", "noise", "views_per_step",
            "dct_dim")
    return RP2(model, feature_penalty=penalty, **{k: a[k] for k in keys if k in a})


def _rp2_row(ev: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    per = {p["target"]: p["targeted_success"] for p in ev["per_target"]}
    s = metrics.targeted_summary(per)
    return {
        "legit_acc": meta.get("metrics", {}).get("test_acc", float("nan")),
        "clean_view_acc": ev["clean_accuracy"],
        "avg_asr": s["average"], "worst_asr": s["worst"], "worst_target": LISA_CLASSES[s["worst_target"]],
        "avg_untargeted_asr": float(np.mean([p["untargeted_success"] for p in ev["per_target"]])),
        "l2_dissimilarity": float(np.mean([p["l2_dissimilarity"] for p in ev["per_target"]])),
        "per_target": {LISA_CLASSES[t]: v for t, v in per.items()},
        "n_views": ev["n_views"],
    }


class Runner:
    """Holds the rendered views and loaded models of one sweep; computes and caches cells."""

    def __init__(self, cfg: SweepConfig, out_dir: Path, progress: bool = True):
        from ..attacks.views import render_views

        self.cfg, self.out, self.progress = cfg, out_dir, progress
        cls = LISA_INDEX[cfg.sign]
        v = cfg.views
        self.train_views = render_views(cls, int(v["train"]), int(v["train_seed"]))
        self.heldout = render_views(cls, int(v["heldout"]), int(v["heldout_seed"]))
        self.class_id = cls
        self._models: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
        self._tests: dict[str, Split] = {}  # test split per (data, preprocess) recipe; each attack draws its n
        self._rp2: dict[str, tuple[Any, dict[str, Any]]] = {}  # (RP2Result, held-out evaluation) per setting

    def model(self, label: str) -> tuple[nn.Module, dict[str, Any]]:
        if label not in self._models:
            self._models[label] = load_checkpoint(self.cfg.models[label])
        return self._models[label]

    def images(self, a: dict[str, Any], meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if a.get("images", "views") == "views":
            return self.heldout.x, torch.full((len(self.heldout),), self.class_id, dtype=torch.long)
        key = json.dumps([meta["recipe"]["data"], meta["preprocess"]], sort_keys=True)
        if key not in self._tests:  # models trained on other data are scored on their own test split
            self._tests[key] = load_checkpoint_data(meta, progress=self.progress).test
        s = self._tests[key].sample(int(a.get("n", 500)), self.cfg.seed)
        return torch.from_numpy(s.x), torch.from_numpy(s.y).long()

    def cell(self, a: dict[str, Any], label: str) -> dict[str, Any] | None:
        key = _cell_key(a, self.cfg.models[label], self.cfg)
        path = self.out / "cells" / f"{a['name']}__{label}.json"
        if path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                return cached["row"]
        t0 = time.time()
        row = self._compute(a, label)
        if row is not None:
            row.update({"model": label, "attack": a["name"], "seconds": round(time.time() - t0, 1)})
        atomic_write_json(path, {"key": key, "row": row})  # "not applicable to this model" (None) is cached too
        return row

    def _compute(self, a: dict[str, Any], label: str) -> dict[str, Any] | None:
        from ..attacks.rp2 import evaluate_stickers

        model, meta = self.model(label)
        kind = a["kind"]
        if kind == "rp2":
            penalty = None
            if a.get("adaptive") == "regularizer":
                penalty = regularizer_of(meta)
                if penalty is None:
                    return None
            res, ev = self._rp2_stickers(label, model, a, penalty)
            row = _rp2_row(ev, meta)
            self._save_sticker(a, label, model, res, ev, meta)
            return row
        if kind == "rp2_transfer":
            res, ev = self._rp2_stickers(label, model, a)
            rows = {"source": _rp2_row(ev, meta)}
            for k in a.get("input_blur", []):
                blurred = InputBlur(model, k).eval()
                rows[f"input blur {k}x{k}"] = _rp2_row(evaluate_stickers(blurred, self.heldout, res), meta)
            for k in a.get("feature_blur", []):
                rows[f"{k}x{k} blur on L1 maps"] = _rp2_row(
                    evaluate_stickers(feature_blur(model, meta, k), self.heldout, res), meta)
            return {"variants": rows, "n_views": len(self.heldout)}
        x, y = self.images(a, meta)
        atk = _pixel_attack(model, a)
        r = atk(x, y, seed=self.cfg.seed)
        info = r.info
        row = {
            "legit_acc": meta.get("metrics", {}).get("test_acc", float("nan")),
            "clean_acc": metrics.accuracy(info["pred_clean"], y.numpy()),
            "adv_acc": metrics.accuracy(info["pred_adv"], y.numpy()),
            "asr": metrics.attack_success_rate(info["pred_clean"], info["pred_adv"]),
            "l2_dissimilarity": float(np.mean(info["l2_dissimilarity"])),
            "n": len(x),
        }
        if kind == "deepfool":
            row["rho_2"] = metrics.rho_2(x.numpy(), info["r_norm"])
        if kind == "uap":
            row["fooling_ratio"] = float(info["fooling_ratio"])
        return row

    def _rp2_stickers(self, label: str, model: nn.Module, a: dict[str, Any], penalty=None):
        """RP2 stickers for every target on ``label`` and their held-out evaluation, computed once per RP2
        setting: a transfer attack with the white-box attack's settings reuses its stickers."""
        from ..attacks.rp2 import evaluate_stickers

        atk = _rp2_attack(model, a, penalty)
        key = json.dumps([label, atk.config()], sort_keys=True)
        if key not in self._rp2:
            targets = [c for c in range(len(LISA_CLASSES)) if c != self.class_id]
            res = atk(self.train_views, targets, seed=self.cfg.seed)
            self._rp2[key] = res, evaluate_stickers(model, self.heldout, res)
        return self._rp2[key]

    def _save_sticker(self, a: dict[str, Any], label: str, model: nn.Module, res, ev: dict[str, Any],
                      meta: dict[str, Any]) -> None:
        """The attacker's best target: printable sticker (PNG + PDF at the physical size) and a preview grid."""
        from ..attacks.rp2 import save_rp2_sticker

        best = int(np.argmax([p["targeted_success"] for p in ev["per_target"]]))
        save_rp2_sticker(self.out / "stickers" / f"{a['name']}__{label}", model, self.heldout, res, ev, best,
                         float(self.cfg.sticker["sign_width_mm"]), int(self.cfg.sticker["dpi"]),
                         {"model": label, "attack": a["name"], "model_sha256": meta.get("weights_sha256")})


def _pixel_attack(model: nn.Module, a: dict[str, Any]):
    from ..attacks.deepfool import DeepFool
    from ..attacks.fgsm import FGSM
    from ..attacks.pgd import PGD
    from ..attacks.uap import UAP

    kind = a["kind"]
    if kind == "pgd":
        return PGD(model, eps=float(a.get("eps", 8 / 255)), alpha=float(a.get("alpha", 0.01)),
                   steps=int(a.get("steps", 10)), norm=a.get("norm", "linf"), loss=a.get("loss", "ce"),
                   restarts=int(a.get("restarts", 1)))
    if kind == "fgsm":
        return FGSM(model, eps=float(a.get("eps", 8 / 255)), norm=a.get("norm", "linf"))
    if kind == "deepfool":
        return DeepFool(model, overshoot=float(a.get("overshoot", 0.02)), max_iter=int(a.get("max_iter", 50)))
    return UAP(model, xi=a.get("xi"), norm=a.get("norm", "linf"), target_fooling=float(a.get("target_fooling", 0.8)),
               max_passes=int(a.get("max_passes", 5)), batch_size=int(a.get("batch_size", 8)))


# --------------------------------------------------------------------------- report


def budget_of(a: dict[str, Any]) -> str:
    kind = a["kind"]
    if kind in ("rp2", "rp2_transfer"):
        extra = f", DCT low-pass k={a['dct_dim']}" if a.get("dct_dim") else ""
        extra += ", + defense regulariser in the loss" if a.get("adaptive") == "regularizer" else ""
        return (f"mask {a.get('mask', 'bars')}, L2 weight lambda={a.get('lam', 0.002)}, NPS, "
                f"{a.get('steps', 300)} Adam steps{extra}")
    if kind == "deepfool":
        return f"unbounded L2, overshoot {a.get('overshoot', 0.02)}"
    if kind == "uap":
        return f"{a.get('norm', 'linf')} xi={a.get('xi', 'default')}"
    eps = float(a.get("eps", 8 / 255))
    return f"{a.get('norm', 'linf')} eps={eps:.4f} (= {eps * 255:.1f}/255)" + (
        f", {a.get('steps', 10)} steps of {a.get('alpha', 0.01)}, {a.get('loss', 'ce')} loss"
        + (f", {a['restarts']} restarts" if a.get("restarts", 1) > 1 else "") if kind == "pgd" else "")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{100 * v:.1f}%" if 0 <= v <= 1 else f"{v:.3f}"
    return str(v)


def to_markdown(cfg: SweepConfig, results: dict[str, Any]) -> str:
    v = cfg.views
    out = [f"# Robustness sweep `{cfg.name}`", "",
           f"Regenerate: `signguard eval {cfg.source}{' --quick' if results.get('quick') else ''}`.  "
           f"Sign: {cfg.sign}; optimisation views: {v['train']} (seed {v['train_seed']}); "
           f"held-out views: {v['heldout']} (seed {v['heldout_seed']}); attack seed {cfg.seed}.  "
           f"Machine: {results.get('machine')}; wall time {results.get('wall_s')} s.", ""]
    if results.get("quick"):
        out += [f"**Quick profile** -- {results.get('quick_note', '')}", ""]
    out += _rp2_summary(cfg, results)
    for a in cfg.attacks:
        rows = results["attacks"].get(a["name"], [])
        if not rows:
            continue
        out += [f"## {a['name']}", "",
                f"Threat model: {THREAT[a['kind']]}.  Budget: {budget_of(a)}.  "
                f"Samples: {rows[0].get('n_views', rows[0].get('n', ''))}.  Seed: {cfg.seed}.", ""]
        if a["kind"] in ("rp2",):
            cols = ["model", "legit_acc", "clean_view_acc", "avg_asr", "worst_asr", "worst_target",
                    "avg_untargeted_asr", "l2_dissimilarity"]
        elif a["kind"] == "rp2_transfer":
            cols = ["model", "variant", "clean_view_acc", "avg_asr", "worst_asr", "avg_untargeted_asr"]
            rows = [{"model": r["model"], "variant": k, **vv} for r in rows for k, vv in r["variants"].items()]
        else:
            cols = ["model", "legit_acc", "clean_acc", "adv_acc", "asr", "l2_dissimilarity"] + [
                c for c in ("rho_2", "fooling_ratio") if c in rows[0]]
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
        out.append("")
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
    rp2 = [a for a in cfg.attacks if a["kind"] == "rp2" and results["attacks"].get(a["name"])]
    if len(rp2) < 2:
        return []
    names = [a["name"] for a in rp2]
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


def to_csv(results: dict[str, Any]) -> str:
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
        rows = results["attacks"].get(a["name"], [])
        if a["kind"] != "rp2" or not rows:
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
        ax.set_title(f"{a['name']}: per-target ASR ({budget_of(a)})", fontsize=9)
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        p = out / f"{a['name']}_per_target.png"
        _save_fig(fig, p)
        paths.append(p)
    # the budget series: plain PGD on the held-out views (strength checks and test-split rows excluded)
    pgd = [a for a in cfg.attacks if a["kind"] == "pgd" and results["attacks"].get(a["name"])
           and a.get("images", "views") == "views" and a.get("loss", "ce") == "ce" and a.get("restarts", 1) == 1]
    if len(pgd) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label in cfg.models:
            pts = [(float(a.get("eps", 8 / 255)) * 255, r["asr"]) for a in pgd for r in results["attacks"][a["name"]]
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


def run_sweep(cfg: SweepConfig, out_dir: str | Path, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compute (or reuse) every (attack, model) cell and write ``report.md``, ``results.csv/json``, plots."""
    import os
    import platform

    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runner = Runner(cfg, out, progress)
    results: dict[str, Any] = {"name": cfg.name, "quick": quick, "attacks": {},
                               "views": cfg.views, "seed": cfg.seed, "sign": cfg.sign,
                               "quick_note": (cfg.quick or {}).get("note", "")}
    cells = [(a, m) for a in cfg.attacks for m in (a.get("models") or ([a["source"]] if "source" in a
                                                                        else list(cfg.models)))]
    for a, m in tqdm(cells, desc=f"eval {cfg.name}", disable=not progress):
        if m not in cfg.models:
            continue
        row = runner.cell(a, m)
        if row is not None:
            results["attacks"].setdefault(a["name"], []).append(row)
    results["wall_s"] = round(time.time() - t0, 1)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    results["plots"] = [str(p.name) for p in plot(cfg, results, out)]
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.csv", to_csv(results))
    atomic_write_text(out / "report.md", to_markdown(cfg, results))
    return results
