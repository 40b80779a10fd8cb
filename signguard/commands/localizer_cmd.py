"""``signguard localizer scenes|train|export``: rendered scenes, the sign localizer, its deployment bundle.

    signguard localizer scenes --out scenes/test --n 500 --seed 100     # images/ + annotations.json (COCO)
    signguard localizer train --config configs/localizer.yaml           # -> runs/localizer/model.{safetensors,json}
    signguard localizer export --checkpoint runs/localizer --out bundles/localizer --precision fp16 int8
    signguard localizer eval --bundle bundles/localizer --data scenes/test/annotations.json   # or --kind lisa

INT8 is calibrated on ``--calib-n`` whole frames (default 512) of ``--calib``
(a folder of frames such as ``scenes/.../images``, or a video), through the
same :func:`edge.preprocess.preprocess` call the device makes; by default
on the recipe's training scenes (parity is checked on validation scenes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sc = sub.add_parser("scenes", help="render full 640x360 scenes with sign boxes (images + COCO JSON)")
    sc.add_argument("--out", required=True, help="output folder")
    sc.add_argument("--n", type=int, default=200, help="number of scenes")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--config", help="a localizer recipe whose 'scenes' section sets the ranges (default: defaults)")
    sc.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a scene field, e.g. --set p_empty=1.0 (sign-free scenes)")
    sc.add_argument("--format", default="jpg", choices=["jpg", "png"])
    tr = sub.add_parser("train", help="train the localizer from a recipe")
    tr.add_argument("--config", required=True, help="localizer recipe YAML (configs/localizer.yaml)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tr.add_argument("--run-dir", help="output folder (default runs/<recipe name>)")
    again = tr.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the last completed epoch in --run-dir")
    again.add_argument("--overwrite", action="store_true",
                       help="delete the run already in --run-dir and train from scratch")
    tr.add_argument("--quiet", action="store_true")
    ex = sub.add_parser("export", help="localizer checkpoint -> bundle (ONNX FP32/FP16/INT8 + manifest)")
    ex.add_argument("--checkpoint", required=True, help="run folder or model.json of a localizer")
    ex.add_argument("--out", help="bundle folder (default bundles/<run name>)")
    ex.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"])
    ex.add_argument("--calib", help="calibration frames: an image folder or a video (default: training scenes)")
    ex.add_argument("--calib-n", type=int, default=512)
    ex.add_argument("--calib-method", default="entropy", choices=["entropy", "percentile", "minmax"])
    ex.add_argument("--parity-samples", type=int, default=128, help="held-out frames for the parity checks")
    ex.add_argument("--target-fp", type=float, default=None, metavar="F",
                    help="re-choose the operating threshold: the lowest whose false positives per validation frame "
                         "are <= F (default: the threshold training chose for the recipe's target_fp_per_frame)")
    ev = sub.add_parser("eval", help="AP@0.5 / recall by sign width and FP per frame of a localizer bundle")
    ev.add_argument("--bundle", required=True, help="localizer bundle folder")
    ev.add_argument("--data", required=True, help="COCO JSON (e.g. rendered scenes) or, with --kind lisa, LISA root")
    ev.add_argument("--kind", default="coco", choices=["coco", "lisa"])
    ev.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None)
    ev.add_argument("--max-frames", type=int, default=None, help="evaluate the first N frames only")


def _scenes(args: argparse.Namespace) -> int:
    from train.config import parse_overrides
    from train.data.scenes import SceneConfig, write_scenes

    base = {}
    if args.config:
        from train.localizer.config import load_localizer_recipe

        base = load_localizer_recipe(args.config).scenes.to_dict()
    cfg = SceneConfig.from_dict({**base, **parse_overrides(args.overrides)})
    path = write_scenes(Path(args.out), args.n, args.seed, cfg, image_format=args.format)
    print(f"scenes: {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from train.config import parse_overrides
    from train.localizer.config import load_localizer_recipe
    from train.localizer.train import train_localizer

    recipe = load_localizer_recipe(args.config, parse_overrides(args.overrides))
    run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    metrics = train_localizer(recipe, run_dir, progress=not args.quiet, resume=args.resume,
                              overwrite=args.overwrite)
    val = metrics["val"]
    print(json.dumps({"run_dir": str(run_dir), "threshold": val["threshold"], "fp_per_frame": val["fp_per_frame"],
                      "bins": val["bins"]}, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    import numpy as np

    from calib import dataset
    from edge.localizer import DecodeConfig
    from edge.preprocess import PreprocessConfig
    from export.localizer import export_localizer
    from train.localizer.config import LocalizerRecipe
    from train.localizer.data import frame_input
    from train.localizer.train import load_localizer, prepare_data

    model, meta = load_localizer(args.checkpoint)
    recipe = LocalizerRecipe.from_dict(meta["recipe"], where="%s: recipe" % args.checkpoint)
    s = recipe.model.input_size
    pp = PreprocessConfig(input_size=s, color_order="BGR")
    train, val = prepare_data(recipe)
    idx = np.random.default_rng(0).permutation(len(val))[: args.parity_samples]
    parity = np.stack([frame_input(val.image(int(i)), s) for i in idx])
    calib = None
    if "int8" in args.precision:
        if args.calib is None:  # a seeded sample of the training frames, through the device's preprocessing
            pick = np.random.default_rng(0).permutation(len(train))[: args.calib_n]
            calib = dataset.from_arrays(np.stack([frame_input(train.image(int(i)), s) for i in pick]),
                                        n=args.calib_n)
            calib.meta.update(source="training frames of %s" % train.source, kind="frames")
        elif Path(args.calib).is_dir():
            calib = dataset.from_image_folder(args.calib, pp, n=args.calib_n)
        else:
            calib = dataset.from_video(args.calib, pp, n=args.calib_n, centre=None)
    ckpt = Path(args.checkpoint)
    out = Path(args.out or Path("bundles") / (ckpt.name if ckpt.is_dir() else ckpt.parent.name))
    decode_cfg = DecodeConfig.from_dict(meta["decode"])
    if args.target_fp is not None:
        decode_cfg = _rethreshold(model, recipe, val, decode_cfg, args.target_fp)
    export_localizer(model, out, s, decode_cfg, parity, args.precision,
                     calib_x=None if calib is None else calib.x, calib_method=args.calib_method,
                     calib_meta=None if calib is None else {"source": calib.meta["source"], "kind": calib.meta["kind"]},
                     name=recipe.name, source={"checkpoint": str(args.checkpoint), "data_hash": meta["data_hash"],
                                               "val_metrics": meta["metrics"]["val"]})
    m = json.loads((out / "manifest.json").read_text())
    print(f"bundle: {out}")
    for e in m["models"]:
        par = e["parity"]
        print(f"  {e['file']:22s} {e['precision']}: on {par['n']} held-out frames max |map diff| "
              f"{par['max_abs_diff']:.2e}, PyTorch boxes kept {100 * par['box_recall']:.1f}%, "
              f"extra boxes/frame {par['extra_boxes_per_frame']:.3f}")
    return 0


def _rethreshold(model, recipe, val, cfg, target_fp: float):
    """``cfg`` with the lowest threshold whose FP per validation frame is <= ``target_fp`` (as training chose)."""
    import dataclasses

    from train.localizer.data import load_inputs
    from train.localizer.train import choose_threshold, detections, predict_maps

    vx = load_inputs(val, recipe.model.input_size)
    dets = detections(predict_maps(model, vx.x), vx, cfg, recipe.model.input_size)
    threshold, _ = choose_threshold(dets, vx.frame_boxes, target_fp)
    print(f"operating threshold {threshold:.2f} (FP per validation frame <= {target_fp:g})")
    return dataclasses.replace(cfg, score_threshold=threshold)


def _eval(args: argparse.Namespace) -> int:
    from edge.localizer import Localizer, decode
    from train.data.detection import load_detection_set
    from train.localizer.metrics import evaluate

    loc = Localizer(args.bundle, precision=args.precision)
    ds = load_detection_set(args.kind, args.data)
    n = len(ds) if args.max_frames is None else min(args.max_frames, len(ds))
    dets = []
    for i in range(n):
        frame = ds.image(i)
        dets.append(decode(loc.raw(frame), loc.decode_cfg, loc.input_size, (frame.shape[1], frame.shape[0]), 0.05))
    r = evaluate(dets, ds.boxes[:n], loc.decode_cfg.score_threshold)
    print(f"{loc}: {n} frames, {sum(len(b) for b in ds.boxes[:n])} signs, threshold {r['threshold']:.2f}, "
          f"FP/frame {r['fp_per_frame']:.3f}")
    print("bin (px wide)   n_gt   AP@0.5   recall   precision")
    for name, b in r["bins"].items():
        print(f"{name:14s} {b['n_gt']:5d}   {b['ap50']:.3f}    {b['recall']:.3f}    {b['precision']:.3f}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"scenes": _scenes, "train": _train, "export": _export, "eval": _eval}[args.action](args)
