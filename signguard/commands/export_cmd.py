"""``signguard export --checkpoint runs/baseline --out bundles/baseline [--precision fp32 fp16 int8]``

INT8 is calibrated on ``--calib-n`` (default 512) images stratified by class
from the recipe's training split, or from ``--calib`` (a class-per-folder
image tree, a video, or a ``.npz`` saved by :mod:`calib.dataset`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint .json")
    p.add_argument("--out", help="bundle folder (default bundles/<run name>)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"],
                   help="precisions to write (fp32 is always written)")
    p.add_argument("--calib", help="INT8 calibration source: image folder, video, or calibration .npz "
                                   "(default: the recipe's training split)")
    p.add_argument("--calib-boxes", help="ROI boxes CSV for a calibration video (as written by the drive-by renderer)")
    p.add_argument("--calib-n", type=int, default=512, help="calibration images (fewer than 512 warns)")
    p.add_argument("--calib-method", default="entropy", choices=["entropy", "percentile", "minmax"])
    p.add_argument("--quantizer", default="onnxruntime", choices=["onnxruntime", "modelopt"],
                   help="INT8 Q/DQ tool (modelopt: NVIDIA Model Optimizer, when installed)")
    p.add_argument("--exclude-node", action="append", default=[], help="ONNX node name kept in FP32 (repeatable)")
    p.add_argument("--sensitivity", type=int, default=0, metavar="N",
                   help="also write sensitivity.md: INT8 accuracy on N test images with each layer alone kept FP32")
    p.add_argument("--parity-samples", type=int, default=256, help="held-out images for the ONNX parity check")
    p.add_argument("--graphs", default="one", choices=["one", "separate"],
                   help="a defended model's parts (purifier/rectifier, classifier) as one graph or one per part")
    p.add_argument("--quiet", action="store_true")


def calibration_set(args: argparse.Namespace, train_split, pp):
    from calib import dataset

    src = args.calib
    if src is None:
        return dataset.from_arrays(train_split.x, train_split.y, n=args.calib_n)
    path = Path(src)
    if path.suffix == ".npz":
        return dataset.load_calibration_set(path)
    if path.is_dir():
        return dataset.from_image_folder(path, pp, n=args.calib_n)
    return dataset.from_video(path, pp, n=args.calib_n, boxes_csv=args.calib_boxes)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from export.bundle import export_bundle
    from train.checkpoint import load_checkpoint, read_sidecar
    from train.config import Recipe
    from train.data.datasets import load_data

    sidecar, _ = read_sidecar(args.checkpoint)
    model, meta = load_checkpoint(sidecar)
    recipe = Recipe.from_sidecar(meta["recipe"], where=f"{sidecar}: recipe")
    pp = recipe.preprocess_cfg()
    data = load_data(recipe.data, pp, progress=not args.quiet)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(data.test), size=min(args.parity_samples, len(data.test)), replace=False)
    out = Path(args.out or Path("bundles") / sidecar.parent.name)
    source = {
        "checkpoint": str(sidecar),
        "weights_sha256": meta["weights_sha256"],
        "architecture": meta["architecture"],
        "defense": meta["defense"],
        "metrics": meta.get("metrics", {}),
        "data_hash": meta.get("data_hash"),
    }
    calib_x = calibration_set(args, data.train, pp).x if "int8" in args.precision else None
    export_bundle(model, out, meta["classes"], pp, data.test.x[idx], name=recipe.name, source=source,
                  precisions=args.precision, calib_x=calib_x, calib_method=args.calib_method,
                  exclude_nodes=args.exclude_node, quantizer=args.quantizer, graphs=args.graphs)
    m = json.loads((out / "manifest.json").read_text())
    if args.sensitivity and calib_x is not None:
        from calib.sensitivity import sensitivity, sensitivity_markdown
        from edge.fileio import atomic_write_text

        rows = sensitivity(out / "model.onnx", calib_x, data.test.x[: args.sensitivity],
                           data.test.y[: args.sensitivity], method=args.calib_method)
        atomic_write_text(out / "sensitivity.md", sensitivity_markdown(rows))
        print(sensitivity_markdown(rows))
    print(f"bundle: {out}")
    for e in m["models"]:
        par = e["parity"]
        print(f"  {e['file']:18s} {e['precision']}: vs PyTorch on {par['n']} held-out images max |logit diff| "
              f"{par['max_abs_diff']:.2e}, argmax agreement {100 * par['argmax_agreement']:.2f}%")
    return 0
