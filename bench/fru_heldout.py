"""The held-out perturbation sets of bench/fru_report.py: that none of them is a training one, how they are
named in the report, and what of them a cached measurement depends on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def held_out_files(perturbations: Path, folders: str = "test*") -> list[str]:
    """The held-out perturbations under ``perturbations`` (its ``folders``), by folder, name and hash: part of
    every cache key that reads them, so a held-out set that grew (CHECK_SET) is measured again rather than read
    from the cache; a key names only the folders its measurement reads, so the others leave it valid."""
    found = perturbations.glob(f"{folders}/*/uap.npy.json")
    return sorted(f"{p.parent.parent.name}/{p.parent.name}:{json.loads(p.read_text(encoding='utf-8'))['sha256']}"
                  for p in found)


def max_inner_products(a, b=None) -> float:
    """Largest |<u, v>| / (||u|| ||v||) between perturbations of ``a`` (pairs of distinct ones) or of ``a`` x
    ``b``: the paper keeps its test perturbations below 0.15 of each other."""
    fa = a.reshape(len(a), -1) / np.linalg.norm(a.reshape(len(a), -1), axis=1, keepdims=True)
    fb = fa if b is None else b.reshape(len(b), -1) / np.linalg.norm(b.reshape(len(b), -1), axis=1, keepdims=True)
    g = np.abs(fa @ fb.T)
    if b is None:
        np.fill_diagonal(g, 0)
    return float(g.max())


def seed_ranges(metas: list[dict]) -> str:
    """'sPGD seeds 1-20, UAP seeds 1-6': the training perturbations by method, for the report's text."""
    by: dict[str, list[int]] = {}
    for m in metas:
        by.setdefault(m.get("method", "uap"), []).append(int(m["seed"]))
    parts = []
    for method, seeds in sorted(by.items(), key=lambda kv: kv[0] != "spgd"):  # sPGD first, as made
        lo, hi = min(seeds), max(seeds)
        span = f"{lo}-{hi}" if len(set(seeds)) == hi - lo + 1 else ", ".join(map(str, sorted(seeds)))
        parts.append(f"{'sPGD' if method == 'spgd' else method.upper()} seeds {span}")
    return ", ".join(parts)


def held_out_overlap(test_real: np.ndarray, train_v: np.ndarray, where: Path) -> float:
    """Largest normalised inner product between a held-out and a training perturbation; an error where one is
    both (the same seed and method give the same perturbation: it would be scored as held out)."""
    overlap = max_inner_products(test_real, train_v)
    if overlap > 0.999:
        raise SystemExit(f"{where}: a held-out perturbation is also in train/ (normalised inner product "
                         f"{overlap:.4f}); held-out seeds must not be training seeds")
    return overlap
