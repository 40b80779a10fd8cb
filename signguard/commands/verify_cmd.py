"""``signguard verify --bundle B``: accuracy and transferred-attack success for every precision of a bundle.

Exit code 1 when a precision loses more than ``--max-acc-drop`` points of
clean accuracy or gains more than ``--max-asr-rise`` points of attack
success against the bundle's FP32 graph.  ``--engine E`` (on the device)
also runs a TensorRT engine on the bundle's ``verify.npz`` inputs and
compares with the onnxruntime outputs saved at export time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .bundle_args import add_bundle_arguments, attack_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_bundle_arguments(p, attack_n=500)
    p.add_argument("--sticker", action="append", default=[], help="RP2 sticker folder (repeatable)")
    p.add_argument("--uap", help="universal perturbation .npy (signguard attack uap)")
    p.add_argument("--max-acc-drop", type=float, default=1.0, help="points of accuracy a precision may lose")
    p.add_argument("--max-asr-rise", type=float, default=2.0, help="points of attack success a precision may gain")
    p.add_argument("--engine", help="TensorRT engine to check against verify.npz (needs tensorrt + pycuda)")
    p.add_argument("--engine-precision", default="fp16", choices=["fp32", "fp16", "int8"])
    p.add_argument("--engine-tol", type=float, help="max |output diff| vs onnxruntime (default per precision: "
                   "fp32 1e-3, fp16 0.05, int8 0.25)")
    p.add_argument("--out", help="write the report as JSON (and .md beside it)")


def run(args: argparse.Namespace) -> int:
    import json

    from edge.fileio import atomic_write_json, atomic_write_text

    bundle = Path(args.bundle)
    if args.engine:
        from edge.engine_check import check_engine

        res = check_engine(bundle, args.engine, args.engine_precision, args.engine_tol)
        print(f"engine {args.engine}: {json.dumps(res)}")
        return 0

    from train.eval.artifact import (
        Margins,
        heldout_for_bundle,
        pgd_transfer,
        sticker_names,
        sticker_transfer,
        to_markdown,
        uap_transfer,
        verify_bundle,
    )

    model, x, y = heldout_for_bundle(bundle, args.checkpoint, args.n, args.seed)
    attacks = []
    pgd = attack_options(args)
    if pgd.get("eps") != 0:
        attacks.append(pgd_transfer(model, x[: args.attack_n], y[: args.attack_n], seed=args.seed, **pgd))
    attacks += [sticker_transfer(s, name=n) for s, n in zip(args.sticker, sticker_names(args.sticker))]
    if args.uap:
        attacks.append(uap_transfer(args.uap, x))
    report = verify_bundle(bundle, model, x, y, attacks, Margins(args.max_acc_drop, args.max_asr_rise))
    md = to_markdown(report)
    print(md)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out.with_suffix(".json"), report.to_dict())
        atomic_write_text(out.with_suffix(".md"), md)
    return 0 if report.passed else 1
