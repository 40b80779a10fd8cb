"""One attack artifact from a checkpoint, scored on inputs the attack never saw (``signguard attack``).

* :func:`rp2_sticker` -- a printable RP2 sticker for one target, optimised on
  rendered poses of the sign and scored on other (held-out) poses.
* :func:`universal_perturbation` -- a UAP / sPGD universal perturbation fitted
  on training images of the checkpoint's recipe and scored (fooling ratio) on
  held-out test images (:func:`universal_draw` is the seeded draw of both).
* :func:`pgd_examples` -- PGD adversarial copies of held-out sign views.

Each takes the attack's hyper-parameters as keywords and passes on only those
given, so the attack class's defaults apply to the rest; each records the
attack's effective configuration (``config()``) beside the artifact.  Poses:
optimisation views are rendered with seed ``2 * seed + 1``, held-out views
with ``2 * seed + 2`` (:func:`view_seeds`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import SignguardError
from edge.fileio import PathLike, atomic_write_bytes, atomic_write_json

from ..attacks.base import hyperparameters
from ..attacks.uap import UAP, SPGDUniversal
from .sweep_config import StickerConfig

#: ``method`` -> universal attack class
UNIVERSAL = {"uap": UAP, "spgd": SPGDUniversal}


@dataclass
class Artifact:
    """What an attack workflow wrote (``paths``), its held-out scores (``metrics``) and the attack's
    effective configuration (``config``)."""

    paths: dict[str, Path]
    metrics: dict[str, Any]
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def view_seeds(seed: int) -> tuple[int, int]:
    """Render seeds of the optimisation and the held-out poses for an attack seed: disjoint for every seed."""
    return 2 * seed + 1, 2 * seed + 2


def _class_id(name: str, what: str) -> int:
    from ..data.classes import LISA_INDEX

    if name not in LISA_INDEX:
        raise SignguardError(f"{what}: unknown sign class {name!r}")
    return LISA_INDEX[name]


def rp2_sticker(checkpoint: PathLike, out: PathLike, *, sign: str = "stop", target: str = "speedLimit45",
                views: int = 40, seed: int = 0, sign_width_mm: float = StickerConfig.sign_width_mm,
                dpi: int = StickerConfig.dpi, progress: bool = False, **params: Any) -> Artifact:
    """An RP2 sticker turning ``sign`` into ``target``: optimised on ``views`` poses, scored on ``views``
    held-out poses, saved as PNG + PDF at ``sign_width_mm`` / ``dpi`` with mask, sidecar and preview.
    ``params``: :class:`~train.attacks.rp2.RP2` hyper-parameters."""
    from ..attacks.adaptive_view import attacker_view, view_name
    from ..attacks.rp2 import RP2, evaluate_stickers, save_rp2_sticker
    from ..attacks.views import render_views
    from ..checkpoint import load_checkpoint

    cls, tgt = _class_id(sign, "sign"), _class_id(target, "target")
    model, meta = load_checkpoint(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fit_seed, held_seed = view_seeds(seed)
    train_v = render_views(cls, views, fit_seed)
    held = render_views(cls, views, held_seed)
    atk = RP2(attacker_view(model), progress=progress, **params)  # scored on the real model below
    res = atk(train_v, [tgt], seed=seed)
    ev = evaluate_stickers(model, held, res)
    paths = save_rp2_sticker(out, model, held, res, ev, 0, sign_width_mm, dpi,
                             {"model_sha256": meta["weights_sha256"], "attacker_view": view_name(model)})
    return Artifact(paths, {"sign": sign, "target": target,
                            "targeted_success": ev["per_target"][0]["targeted_success"],
                            "clean_accuracy": ev["clean_accuracy"], "heldout_views": len(held)}, atk.config())


def universal_draw(n_train: int, n_test: int, n: int, n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` training images (of ``n_train``) a universal perturbation is fitted on and of the
    ``n_heldout`` test images (of ``n_test``) it is scored on: two permutations, in this order, from one
    generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n_train)[:n], rng.permutation(n_test)[:n_heldout]


def universal_perturbation(checkpoint: PathLike, out: PathLike, *, method: str = "uap", n: int = 500,
                           n_test: int = 1000, seed: int = 0, progress: bool = False, **params: Any) -> Artifact:
    """A universal perturbation (``method`` uap: :class:`~train.attacks.uap.UAP`, spgd:
    :class:`~train.attacks.uap.SPGDUniversal`, with ``params``) fitted on ``n`` training images of the
    checkpoint's recipe and scored on ``n_test`` held-out test images; written as ``out/uap.npy`` + sidecar.

    ``metrics``: fooling ratio on the fit set and on the held-out set, held-out accuracy under the
    perturbation, ``||v||``; ``extra``: ``v`` and the drawn ``fit_index`` / ``heldout_index``.
    """
    from ..attacks.adaptive_view import attacker_view, view_name
    from ..attacks.base import eval_mode
    from ..attacks.uap import apply_universal, default_xi, save_perturbation
    from ..checkpoint import load_checkpoint
    from ..data.datasets import load_checkpoint_data
    from .metrics import accuracy

    if method not in UNIVERSAL:
        raise SignguardError(f"universal perturbation: method must be one of {sorted(UNIVERSAL)}, got {method!r}")
    known = hyperparameters(UNIVERSAL[method])
    bad = sorted(set(params) - set(known))
    if bad:
        raise SignguardError(f"{method}: {bad} not parameters of {UNIVERSAL[method].__name__} (known: {list(known)})")
    model, meta = load_checkpoint(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_checkpoint_data(meta, progress=progress)
    fit_idx, test_idx = universal_draw(len(data.train), len(data.test), n, n_test, seed)
    x_fit = torch.from_numpy(data.train.x[fit_idx])
    x_test, y_test = torch.from_numpy(data.test.x[test_idx]), torch.from_numpy(data.test.y[test_idx]).long()
    attack = UNIVERSAL[method](attacker_view(model), progress=progress, **params)  # scored on the real model
    with eval_mode(model):
        v = attack.fit(x_fit, seed=seed)
    fit_res = apply_universal(model, x_fit, torch.from_numpy(data.train.y[fit_idx]).long(), v)
    test_res = apply_universal(model, x_test, y_test, v)
    v = v.cpu().numpy()
    cfg = attack.config()
    norm = cfg["norm"]
    fr, fr_test = float(fit_res.info["fooling_ratio"]), float(test_res.info["fooling_ratio"])
    side = {"method": method, "norm": norm,
            "xi": default_xi(norm, v.size) if cfg["xi"] is None else cfg["xi"],  # the budget; ||v|| may be below
            "fooling_ratio": fr, "n_images": len(x_fit), "heldout_fooling_ratio": fr_test,
            "heldout_images": len(x_test), "heldout_accuracy": accuracy(test_res.info["pred_adv"], y_test.numpy()),
            "model_hash": meta["weights_sha256"], "seed": seed, "config": cfg, "attacker_view": view_name(model)}
    save_perturbation(out / "uap.npy", v, side)
    v_norm = float(np.abs(v).max() if norm == "linf" else np.linalg.norm(v))
    return Artifact({"perturbation": out / "uap.npy"},
                    {"method": method, "fooling_ratio": fr, "heldout_fooling_ratio": fr_test,
                     "heldout_accuracy": side["heldout_accuracy"], "n_images": len(x_fit),
                     "heldout_images": len(x_test), "norm": norm, "v_norm": v_norm},
                    cfg, {"v": v, "fit_index": fit_idx, "heldout_index": test_idx})


def pgd_examples(checkpoint: PathLike, out: PathLike, *, sign: str = "stop", views: int = 40, seed: int = 0,
                 progress: bool = False, **params: Any) -> Artifact:
    """PGD (:class:`~train.attacks.pgd.PGD` with ``params``) on ``views`` held-out poses of ``sign``:
    ``out/pgd.npz`` (clean and adversarial images, labels, predictions) and ``out/pgd.json`` (the attack's
    effective configuration and the success rate)."""
    from ..attacks.adaptive_view import attacker_view, view_name
    from ..attacks.pgd import PGD
    from ..attacks.views import render_views
    from ..checkpoint import load_checkpoint
    from ..trainer import predict

    cls = _class_id(sign, "sign")
    model, meta = load_checkpoint(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    held = render_views(cls, views, view_seeds(seed)[1])
    y = torch.full((len(held),), cls, dtype=torch.long)
    atk = PGD(attacker_view(model), progress=progress, **params)
    r = atk(held.x, y, seed=seed)
    pred_adv = predict(model, r.x_adv)  # the real model's reading, not the attacker's surrogate's
    buf = io.BytesIO()
    np.savez_compressed(buf, x=held.x.numpy(), x_adv=r.x_adv.numpy(), y=y.numpy(), pred_adv=pred_adv)
    atomic_write_bytes(out / "pgd.npz", buf.getvalue())
    rate = float(np.mean(pred_adv != y.numpy()))
    atomic_write_json(out / "pgd.json", {**atk.config(), "success_rate": rate, "n_views": len(y), "sign": sign,
                                         "seed": seed, "model_sha256": meta["weights_sha256"],
                                         "attacker_view": view_name(model)})
    return Artifact({"examples": out / "pgd.npz", "summary": out / "pgd.json"},
                    {"success_rate": rate, "n_views": len(y)}, atk.config())
