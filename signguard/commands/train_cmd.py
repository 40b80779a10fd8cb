"""``signguard train --config configs/blurnet_tv.yaml [--set optim.epochs=5] [--resume | --overwrite]``

Under ``torchrun --nproc_per_node N -m signguard train ...`` the same command trains with
DistributedDataParallel (see :mod:`train.distributed`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set data.kind=npz --set data.path=gtsrb32.npz")
    p.add_argument("--run-dir", help="output folder (default runs/<recipe name>)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the last completed epoch in --run-dir")
    again.add_argument("--overwrite", action="store_true",
                       help="delete the run already in --run-dir and train from scratch (without --resume or "
                            "--overwrite, a folder holding a run is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from train.config import load_recipe, parse_overrides
    from train.trainer import train

    recipe = load_recipe(args.config, parse_overrides(args.overrides))
    run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    metrics = train(recipe, run_dir, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one report
        print(json.dumps({"run_dir": str(run_dir), **metrics}, indent=2))
    return 0
