"""Stickers for the INT8 field test (``bench/field_test.py``): each model's own strongest RP2 sticker, made the
way an attacker who knows the defense would make it, and the rule that picks the strongest of the candidates.

* Attacker's view of a model (:func:`train.attacks.adaptive_view.attacker_view`): a plain classifier directly
  (white-box); the certified wrappers through EOT over their ablations or one-mask copies; the PRN gate through
  BPDA for the white-box sticker and its soft select for the low-frequency one -- the two strongest sticker
  attacks in ``reports/prn/synthetic``.  Every sticker is then scored on the real model (vote, double masking,
  hard gate).
* Target (:func:`worst_target`): one per sticker, the model's worst target for that attack in the PyTorch reports
  (``reports/sticker_robustness/results.json``, ``reports/prn/synthetic/results.json``), else ``yield``.
* Strongest (:func:`strongest`): the candidate with the highest targeted success on the model's own INT8 bundle
  (``signguard verify``, 40 fresh poses the attack never saw), ties broken by the success measured when the sticker
  was made, then by candidate order.  Chosen on those poses, never on the drive-by it is then tested on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

#: attack kind -> (dct_dim, key in reports/sticker_robustness rows, key in reports/prn stickers)
KINDS = {"whitebox": (0, "rp2_whitebox", "bpda"), "lowfreq": (16, "rp2_lowfreq", "lowfreq")}
FALLBACK_TARGET = "yield"


@dataclass(frozen=True)
class StickerSpec:
    """One candidate sticker: made on ``model`` (checkpoint ``checkpoint``) with ``kind`` for ``target``."""

    model: str
    checkpoint: str
    kind: str
    target: str
    steps: int
    target_source: str  # where the target choice comes from (a report, or the fallback)

    @property
    def folder(self) -> str:
        return "%s__%s" % (self.model, self.kind)


def worst_target(model: str, kind: str, robustness: Optional[Mapping[str, Any]],
                 prn: Optional[Mapping[str, Any]]) -> tuple:
    """``(target, source)``: the worst target of ``kind`` for ``model`` in the PyTorch reports (the sticker
    robustness rows by model label; the PRN report for ``prn_gate``), else :data:`FALLBACK_TARGET`."""
    _, row_key, prn_key = KINDS[kind]
    if model == "prn_gate" and prn:
        cell = prn.get("stickers", {}).get(prn_key)
        if cell and cell.get("worst_target"):
            return cell["worst_target"], "reports/prn/synthetic (%s, worst %.1f%%)" % (prn_key,
                                                                                      100 * cell["worst_asr"])
    for row in (robustness or {}).get("rows", []):
        cell = row.get(row_key) if row.get("model") == model else None
        if cell and cell.get("worst_target"):
            return cell["worst_target"], "reports/sticker_robustness (%s, worst %.1f%%)" % (row_key,
                                                                                           100 * cell["worst_asr"])
    return FALLBACK_TARGET, "no report row; fallback"


def strongest(candidates: Sequence[str], int8_success: Mapping[str, float],
              made_success: Mapping[str, float]) -> str:
    """The candidate (sticker folder name) with the highest INT8 targeted success, then the highest success
    when made, then the first listed."""
    if not candidates:
        raise ValueError("strongest: no candidates")
    order = {c: i for i, c in enumerate(candidates)}
    return max(candidates, key=lambda c: (int8_success[c], made_success[c], -order[c]))


def _cached(folder: Path, spec: StickerSpec, weights_sha256: str) -> Optional[Dict[str, Any]]:
    """The sidecar of an earlier sticker made for exactly this spec and these weights, if any."""
    side = folder / "sticker.json"
    if not side.is_file():
        return None
    meta = json.loads(side.read_text())["meta"]
    same = (meta.get("model_sha256") == weights_sha256 and meta.get("target") == spec.target
            and meta.get("attack") == spec.kind and meta.get("config", {}).get("steps") == spec.steps)
    return meta if same else None


def make_sticker(spec: StickerSpec, root: Path, seed: int = 0, views: int = 40) -> Dict[str, Any]:
    """Make (or reuse) ``spec``'s sticker in ``root/spec.folder``: RP2 on ``views`` poses through the
    attacker's view, scored on ``views`` held-out poses on the real model, saved printable
    (:func:`~train.attacks.rp2.save_rp2_sticker`, the writer ``signguard attack rp2`` uses; same pose seeds)."""
    import time

    import torch

    from train.attacks.adaptive_view import attacker_view, view_name
    from train.attacks.rp2 import RP2, evaluate_stickers, save_rp2_sticker
    from train.attacks.views import render_views
    from train.checkpoint import load_checkpoint
    from train.data.classes import LISA_INDEX
    from train.eval.attack_artifacts import view_seeds
    from train.eval.sweep_config import StickerConfig

    folder = root / spec.folder
    model, meta = load_checkpoint(spec.checkpoint)
    hit = _cached(folder, spec, meta["weights_sha256"])
    if hit is not None:
        return hit
    torch.manual_seed(seed)
    stop = LISA_INDEX["stop"]
    fit_seed, held_seed = view_seeds(seed)
    fit, held = render_views(stop, views, fit_seed), render_views(stop, views, held_seed)
    t0 = time.time()
    bpda = spec.kind == "whitebox"  # BPDA through a gate for the white-box sticker, its soft select for lowfreq
    res = RP2(attacker_view(model, bpda), steps=spec.steps, dct_dim=KINDS[spec.kind][0])(
        fit, [LISA_INDEX[spec.target]], seed=seed)
    ev = evaluate_stickers(model, held, res)
    save_rp2_sticker(folder, model, held, res, ev, 0, StickerConfig.sign_width_mm, StickerConfig.dpi,
                     {"attack": spec.kind, "model": spec.model, "checkpoint": spec.checkpoint,
                      "model_sha256": meta["weights_sha256"], "attacker_view": view_name(model, bpda),
                      "target_source": spec.target_source, "seed": seed, "seconds": round(time.time() - t0, 1)})
    return json.loads((folder / "sticker.json").read_text())["meta"]


def candidates(models: Mapping[str, str], kinds: Mapping[str, Sequence[str]], steps: Mapping[str, int],
               robustness: Optional[Mapping[str, Any]], prn: Optional[Mapping[str, Any]]) -> List[StickerSpec]:
    """One :class:`StickerSpec` per (model, kind) in ``kinds``, its target from :func:`worst_target`."""
    out = []
    for model, ks in kinds.items():
        for kind in ks:
            target, source = worst_target(model, kind, robustness, prn)
            out.append(StickerSpec(model, models[model], kind, target, steps[model], source))
    return out
