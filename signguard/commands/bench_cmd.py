"""``signguard bench --bundle B``: size, accuracy, transferred-PGD success and latency per format and precision."""

from __future__ import annotations

import argparse
from pathlib import Path

from .bundle_args import add_bundle_arguments, attack_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_bundle_arguments(p, attack_n=300)
    p.add_argument("--batch", type=int, default=32, help="the larger batch size timed")
    p.add_argument("--repeats", type=int, default=50, help="timed runs at batch 1 (a fifth of that at --batch)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads for PyTorch and onnxruntime alike (default 1; see train/eval/bench.py)")
    p.add_argument("--out", help="report path stem (default: bench_<bundle name>); writes .json and .md")


def run(args: argparse.Namespace) -> int:
    from edge.fileio import atomic_write_json, atomic_write_text
    from train.eval.artifact import heldout_for_bundle, pgd_transfer
    from train.eval.bench import bench_bundle, to_markdown

    bundle = Path(args.bundle)
    model, x, y = heldout_for_bundle(bundle, args.checkpoint, args.n, args.seed)
    pgd = attack_options(args)
    adv = (pgd_transfer(model, x[: args.attack_n], y[: args.attack_n], seed=args.seed, **pgd)
           if pgd.get("eps") != 0 else None)
    res = bench_bundle(bundle, model, x, y, None if adv is None else adv.x_adv, None if adv is None else adv.labels,
                       batch=args.batch, repeats=args.repeats, threads=args.threads)
    md = to_markdown(res, attack=adv.name if adv else "")
    print(md)
    out = Path(args.out or f"bench_{bundle.name}")
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), md)
    print(f"-> {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    return 0
