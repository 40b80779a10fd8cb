"""``signguard bench --bundle B``: size, accuracy, transferred-PGD success and latency per format and precision."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder written by `signguard export`")
    p.add_argument("--checkpoint", help="the trained model (default: the bundle manifest's source.checkpoint)")
    p.add_argument("--n", type=int, default=1000, help="held-out test images for accuracy")
    p.add_argument("--attack-n", type=int, default=300, help="images attacked with PGD on the PyTorch model")
    p.add_argument("--eps", type=float, default=8 / 255, help="PGD L-inf budget (0: no attack column)")
    p.add_argument("--batch", type=int, default=32, help="the larger batch size timed")
    p.add_argument("--repeats", type=int, default=50, help="timed runs at batch 1 (a fifth of that at --batch)")
    p.add_argument("--out", help="report path stem (default: bench_<bundle name>); writes .json and .md")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from edge.fileio import atomic_write_json, atomic_write_text

    from ..eval.artifact import heldout_for_bundle, pgd_transfer
    from ..eval.bench import bench_bundle, to_markdown

    bundle = Path(args.bundle)
    model, x, y = heldout_for_bundle(bundle, args.checkpoint, args.n, args.seed)
    adv = pgd_transfer(model, x[: args.attack_n], y[: args.attack_n], eps=args.eps) if args.eps > 0 else None
    res = bench_bundle(bundle, model, x, y, None if adv is None else adv.x_adv, None if adv is None else adv.labels,
                       batch=args.batch, repeats=args.repeats)
    md = to_markdown(res, attack=adv.name if adv else "")
    print(md)
    out = Path(args.out or f"bench_{bundle.name}")
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), md)
    print(f"-> {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    return 0
