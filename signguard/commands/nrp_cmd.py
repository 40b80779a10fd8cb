"""``signguard nrp train|attach``: NRP's purifier, trained label-free, then put in front of any classifier.

* ``train --config configs/nrp.yaml [--set loss.lam=0] [--run-dir DIR]``: Algorithm 2 (purifier vs critic on
  SSP examples of a fixed feature extractor) -> ``purifier.safetensors/.json``, ``critic.*``, ``log.jsonl``.
  Its own command because the loop has no labels, no classifier and two optimizers (see
  :mod:`train.nrp_train`); ``signguard train`` refuses the ``purifier`` defense kind.
* ``attach --purifier DIR --classifier CKPT --out DIR``: one checkpoint of purifier + classifier (defense kind
  ``purifier``) that ``eval``, ``export`` (``--graphs one|separate``), ``verify`` and ``bench`` take like any
  other; its ``test_acc`` is re-measured through the purifier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser("train", help="train a purifier from a recipe YAML (label-free)")
    t.add_argument("--config", required=True, help="purifier recipe YAML (see configs/nrp.yaml)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set loss.lam=0 (ablation)")
    t.add_argument("--run-dir", help="output folder (default runs/<recipe name>)")
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    a = sub.add_parser("attach", help="put a trained purifier in front of a trained classifier")
    a.add_argument("--purifier", required=True, help="purifier run folder (signguard nrp train)")
    a.add_argument("--classifier", required=True, help="classifier run folder or checkpoint .json")
    a.add_argument("--out", required=True, help="folder of the combined checkpoint")


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        from train.config import parse_overrides
        from train.nrp_train import load_nrp_recipe, train_purifier

        recipe = load_nrp_recipe(args.config, parse_overrides(args.overrides))
        run_dir = Path(args.run_dir or Path("runs") / recipe.name)
        rec = train_purifier(recipe, run_dir, progress=not args.quiet)
        print(json.dumps({"run_dir": str(run_dir), **rec}, indent=2))
        return 0
    from train.defenses.nrp import attach

    metrics = attach(args.purifier, args.classifier, args.out)
    print(json.dumps({"checkpoint": str(Path(args.out) / "model.json"), **metrics}, indent=2))
    return 0
