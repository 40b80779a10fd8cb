"""``signguard export --checkpoint runs/baseline --out bundles/baseline``"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint .json")
    p.add_argument("--out", help="bundle folder (default bundles/<run name>)")
    p.add_argument("--parity-samples", type=int, default=256, help="held-out images for the ONNX parity check")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from export.bundle import export_bundle

    from ..checkpoint import load_checkpoint, read_sidecar
    from ..config import Recipe, from_dict
    from ..data.datasets import load_data

    sidecar, _ = read_sidecar(args.checkpoint)
    model, meta = load_checkpoint(sidecar)
    recipe = from_dict(Recipe, meta["recipe"], where=f"{sidecar}: recipe")
    pp = recipe.preprocess_cfg()
    test = load_data(recipe.data, pp, progress=not args.quiet).test
    rng = np.random.default_rng(0)
    idx = rng.choice(len(test), size=min(args.parity_samples, len(test)), replace=False)
    out = Path(args.out or Path("bundles") / sidecar.parent.name)
    source = {
        "checkpoint": str(sidecar),
        "weights_sha256": meta["weights_sha256"],
        "architecture": meta["architecture"],
        "defense": meta["defense"],
        "metrics": meta.get("metrics", {}),
        "data_hash": meta.get("data_hash"),
    }
    export_bundle(model, out, meta["classes"], pp, test.x[idx], name=recipe.name, source=source)
    m = json.loads((out / "manifest.json").read_text())
    par = m["models"][0]["parity"]
    print(f"bundle: {out}  (ONNX parity on {par['n']} held-out images: max |logit diff| {par['max_abs_diff']:.2e})")
    return 0
