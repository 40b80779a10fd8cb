"""Does the synthetic renderer matter?  A model trained only on rendered signs, tested on real photos.

    python bench/synthetic_to_real.py --checkpoint runs/sweep/synthetic/baseline --out reports/synthetic_to_real

Takes the GTSRB-32 official test images of the signs that exist in both label
spaces (14 stop -> LISA stop, 13 yield -> LISA yield) and reports the rate at
which the synthetic-only model predicts the matching LISA class, plus what it
predicts instead.  No real image is ever seen in training.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from edge.fileio import atomic_write_json, atomic_write_text
from train.checkpoint import load_checkpoint
from train.data.classes import GTSRB_TO_LISA, LISA_CLASSES
from train.data.real import load_npz
from train.trainer import predict

GTSRB32 = Path(__file__).resolve().parents[2] / "shared" / "data" / "gtsrb32" / "gtsrb32.npz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--npz", default=str(GTSRB32))
    p.add_argument("--out", default="reports/synthetic_to_real")
    args = p.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    if meta["classes"] != LISA_CLASSES:
        raise SystemExit(f"{args.checkpoint}: expected a LISA-18 (synthetic) model")
    test = load_npz(args.npz, "test")
    from edge.preprocess import PreprocessConfig

    cfg = PreprocessConfig.from_dict(meta["preprocess"])
    result = {"checkpoint": str(args.checkpoint), "weights_sha256": meta["weights_sha256"], "classes": {}}
    for gtsrb_id, lisa_id in GTSRB_TO_LISA.items():
        sub = test.subset(np.flatnonzero(test.labels == gtsrb_id))
        pred = predict(model, sub.to_inputs(cfg))
        counts = collections.Counter(LISA_CLASSES[i] for i in pred)
        rate = float((pred == lisa_id).mean())
        result["classes"][LISA_CLASSES[lisa_id]] = {"gtsrb_class": gtsrb_id, "n": len(sub), "rate": rate,
                                                    "predicted": dict(counts.most_common(5))}
        print(f"GTSRB class {gtsrb_id} ({len(sub)} real test images) -> LISA '{LISA_CLASSES[lisa_id]}': "
              f"{100 * rate:.1f}%   top predictions {counts.most_common(3)}")
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = ["| real GTSRB-32 test class | n | predicted as the same LISA sign | most common predictions |",
             "|---|---|---|---|"]
    for name, r in result["classes"].items():
        lines.append(f"| {r['gtsrb_class']} -> {name} | {r['n']} | {100 * r['rate']:.1f}% | {r['predicted']} |")
    atomic_write_text(out.with_suffix(".md"), f"Synthetic-only model {args.checkpoint} on real signs.\n\n"
                      + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
