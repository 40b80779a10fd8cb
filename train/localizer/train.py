"""Train the sign localizer from scratch on rendered scenes (or a COCO set / LISA frames) on a CPU.

One recipe -> one run folder: ``model.safetensors`` + ``model.json`` (the
architecture, the recipe, THE preprocessing, the decode config with the
operating threshold chosen on validation frames, the data hash, metrics)
and ``log.jsonl`` (one flushed line per epoch).  Deterministic under the
recipe's seed: scenes come from their seeds, shuffles and flips from a
generator seeded by (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from safetensors.torch import load as st_load

from edge.errors import SignguardError
from edge.fileio import atomic_write_text
from edge.localizer import DecodeConfig, decode
from edge.preprocess import PreprocessConfig
from train.checkpoint import (
    _read_tensors,
    load_train_state,
    read_sidecar,
    save_checkpoint,
    save_train_state,
)
from train.data.detection import DetectionSet, load_coco, load_detection_set
from train.data.scenes import write_scenes
from train.trainer import check_run_dir, clear_run_dir, finished_metrics, trim_log

from .config import LocalizerRecipe
from .data import InputSet, batches, load_inputs
from .loss import localizer_loss
from .metrics import evaluate, sweep_thresholds
from .model import LocalizerNet, build_localizer

log = logging.getLogger(__name__)

KIND = "localizer"
AP_THRESHOLD = 0.05  # lowest score kept when measuring AP (the curve needs the low-score detections)


def _scene_set(recipe: LocalizerRecipe, split: str, n: int, seed: int, progress: bool) -> DetectionSet:
    """Rendered scenes of one split, written once under ``data.cache`` (keyed by config, seed and count)."""
    key = hashlib.sha256(json.dumps([recipe.scenes.to_dict(), seed, n], sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(recipe.data.cache) / ("%s_%s" % (split, key))
    ann = folder / "annotations.json"
    if not ann.is_file():
        log.info("rendering %d %s scenes (seed %d) into %s", n, split, seed, folder)
        write_scenes(folder, n, seed, recipe.scenes, progress=progress)
    return load_coco(ann)


def _driveby_set(recipe: LocalizerRecipe) -> DetectionSet:
    """Every ``driveby_every``-th frame of ``driveby`` rendered drive-bys, decoded from their video files."""
    import cv2

    from train.data.classes import LISA_CLASSES
    from train.data.driveby import render_driveby

    d = recipe.data
    folder = Path(d.cache) / ("driveby_%d_%d" % (d.driveby, d.driveby_every))
    ann = folder / "annotations.json"
    if not ann.is_file():
        images, anns = [], []
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for k in range(d.driveby):
            drive = render_driveby(folder / "videos", class_id=k % len(LISA_CLASSES), seed=100 + k, name="d%03d" % k)
            rows = {int(r[0]): [float(v) for v in r[1:5]] for r in
                    (line.split(",") for line in drive.boxes_csv.read_text().splitlines()[1:] if line)}
            cap = cv2.VideoCapture(str(drive.video_path))
            i = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if i % d.driveby_every == 0:
                    name = "images/d%03d_%03d.jpg" % (k, i)
                    cv2.imwrite(str(folder / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    images.append({"id": len(images) + 1, "file_name": name, "width": frame.shape[1],
                                   "height": frame.shape[0]})
                    if i in rows:
                        anns.append({"id": len(anns) + 1, "image_id": len(images), "category_id": 1,
                                     "bbox": rows[i], "iscrowd": 0, "sign_class": LISA_CLASSES[k % len(LISA_CLASSES)]})
                i += 1
            cap.release()
        atomic_write_text(ann, json.dumps({"images": images, "annotations": anns,
                                           "categories": [{"id": 1, "name": "sign"}]}))
    return load_coco(ann)


def _concat(a: DetectionSet, b: DetectionSet) -> DetectionSet:
    return DetectionSet(a.paths + b.paths, a.boxes + b.boxes, a.labels + b.labels, "%s + %s" % (a.source, b.source))


def prepare_data(recipe: LocalizerRecipe, progress: bool = False) -> Tuple[DetectionSet, DetectionSet]:
    """(train, val) detection sets of the recipe."""
    d = recipe.data
    if d.kind == "scenes":
        train = _scene_set(recipe, "train", d.train, d.seed, progress)
        if d.driveby:
            train = _concat(train, _driveby_set(recipe))
        return train, _scene_set(recipe, "val", d.val, d.seed + 1, progress)
    full = load_detection_set(d.kind, d.path)
    if len(full) < d.val + 1:
        raise SignguardError("data.val: %d validation frames asked, but %s has only %d" % (d.val, d.path, len(full)))
    order = np.random.default_rng(d.seed).permutation(len(full))
    return full.subset(order[d.val:][: d.train]), full.subset(order[: d.val])


def _data_hash(*sets: DetectionSet) -> str:
    h = hashlib.sha256()
    for ds in sets:
        for p, b in zip(ds.paths, ds.boxes):
            h.update(str(p.name).encode())
            h.update(np.round(b, 2).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def predict_maps(model: torch.nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Deployable output maps (N, 5, G, G) for uint8 or [0, 1] float inputs (N, 3, S, S)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))
        xb = xb.float() / 255.0 if xb.dtype == torch.uint8 else xb.float()
        out.append(model(xb).numpy())
    return np.concatenate(out) if out else np.zeros((0, 5, 1, 1), np.float32)


def detections(maps: np.ndarray, data: InputSet, cfg: DecodeConfig, input_size: int,
               threshold: float = AP_THRESHOLD) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Frame-pixel (boxes, scores) per image from output maps, down to ``threshold``."""
    return [decode(m, cfg, input_size, size, threshold) for m, size in zip(maps, data.frame_sizes)]


def choose_threshold(dets: List[Tuple[np.ndarray, np.ndarray]], gts: List[np.ndarray], target_fp: float
                     ) -> Tuple[float, List[Dict[str, float]]]:
    """The lowest score threshold (0.05 steps) whose FP per frame is <= ``target_fp``; the sweep too."""
    rows = sweep_thresholds(dets, gts, np.round(np.arange(0.1, 0.951, 0.05), 2))
    ok = [r for r in rows if r["fp_per_frame"] <= target_fp]
    return (ok[0]["threshold"] if ok else rows[-1]["threshold"]), rows


def _lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def train_localizer(recipe: LocalizerRecipe, run_dir: Path, progress: bool = True, resume: bool = False,
                    overwrite: bool = False) -> Dict[str, Any]:
    """Train, choose the operating threshold on validation frames, write the checkpoint; returns metrics.

    The training state is saved after every epoch, so ``resume`` continues an interrupted run from its last
    completed epoch (the same batches as an uninterrupted run: they come from (seed, epoch)); a folder that
    already holds a run is refused unless ``resume`` or ``overwrite``, as for ``signguard train``.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    recipe_path = run_dir / "recipe.json"
    if resume:
        done = finished_metrics(run_dir, recipe.optim.epochs, final_key="val")
        if done is not None:
            log.info("%s: already finished; returning its recorded metrics", run_dir)
            return done
        if recipe_path.is_file() and json.loads(recipe_path.read_text(encoding="utf-8")) != recipe.to_dict():
            raise SignguardError("%s: the run was started with another recipe; resume it with that one "
                                 "(--config %s)" % (run_dir, recipe_path))
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_run_dir(run_dir)
    torch.manual_seed(recipe.optim.seed)
    train_ds, val_ds = prepare_data(recipe, progress)
    s = recipe.model.input_size
    train_x, val_x = load_inputs(train_ds, s, progress), load_inputs(val_ds, s, progress)
    model = build_localizer(recipe.model.name, **recipe.model.options())
    if recipe.model.init:
        init, meta = load_localizer(recipe.model.init)
        if meta["architecture"] != {"name": recipe.model.name, "options": recipe.model.options()}:
            raise SignguardError("model.init: %s is a %s, the recipe asks for %s/%s"
                                 % (recipe.model.init, meta["architecture"], recipe.model.name, recipe.model.options()))
        model.load_state_dict(init.state_dict())
    o = recipe.optim
    bs = min(o.batch_size, len(train_x))
    steps_per_epoch = len(train_x) // bs
    total = steps_per_epoch * o.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    start, step, prior_s = 0, 0, 0.0
    log_path = run_dir / "log.jsonl"
    if resume and (run_dir / "train_state.json").is_file():
        st, weights = load_train_state(run_dir, opt)
        if weights is None:
            raise SignguardError("%s: the training state holds no weights; start again with --overwrite" % run_dir)
        model.load_state_dict(weights)
        start, step, prior_s = st["epoch"] + 1, int(st["step"]), float(st["train_time_s"])
        trim_log(log_path, start)  # this log counts epochs from 1
        log.info("resuming %s at epoch %d", run_dir, start + 1)
    else:
        if resume:
            log.warning("--resume: no training state in %s, starting from scratch", run_dir)
        atomic_write_text(log_path, "")
    atomic_write_text(recipe_path, json.dumps(recipe.to_dict(), indent=2))
    t0 = time.time() - prior_s
    for epoch in range(start, o.epochs):
        model.train()
        rng = np.random.default_rng([o.seed, epoch])
        sums: Dict[str, float] = {"loss": 0.0, "heat": 0.0, "reg": 0.0}
        for x, heat, reg, weight in batches(train_x, bs, LocalizerNet.stride, rng, o.crop):
            for g in opt.param_groups:
                g["lr"] = _lr(step, total, o.warmup_steps, o.lr)
            loss, parts = localizer_loss(model.heads(x), heat, reg, weight, o.reg_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sums["loss"] += float(loss.detach())
            sums["heat"] += parts["heat"]
            sums["reg"] += parts["reg"]
        maps = predict_maps(model, val_x.x)
        val = evaluate(detections(maps, val_x, recipe.decode, s), val_x.frame_boxes, recipe.decode.score_threshold)
        row = {"epoch": epoch + 1, "time_s": round(time.time() - t0, 1),
               **{k: round(v / max(steps_per_epoch, 1), 5) for k, v in sums.items()},
               "val_ap50": round(val["bins"]["all"]["ap50"], 4), "val_ap50_ge24": round(val["bins"][">=24"]["ap50"], 4),
               "val_fp_per_frame": round(val["fp_per_frame"], 4)}
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        save_train_state(run_dir, model, opt, epoch, {"step": step, "train_time_s": round(time.time() - t0, 1)})
        if progress:
            print(json.dumps(row), flush=True)

    maps = predict_maps(model, val_x.x)
    dets = detections(maps, val_x, recipe.decode, s)
    threshold, sweep = choose_threshold(dets, val_x.frame_boxes, recipe.target_fp_per_frame)
    decode_cfg = dataclasses.replace(recipe.decode, score_threshold=threshold)
    val = evaluate(dets, val_x.frame_boxes, threshold)
    metrics = {"val": val, "threshold_sweep": sweep, "train_frames": len(train_x), "val_frames": len(val_x),
               "train_time_s": round(time.time() - t0, 1), "steps": step}
    meta = {"kind": KIND, "architecture": {"name": recipe.model.name, "options": recipe.model.options()},
            "classes": ["sign"], "stride": LocalizerNet.stride, "recipe": recipe.to_dict(),
            "preprocess": PreprocessConfig(input_size=s, color_order="BGR").to_dict(),
            "decode": dataclasses.asdict(decode_cfg), "data_hash": _data_hash(train_ds, val_ds),
            "data": {"train": train_ds.source, "val": val_ds.source}, "metrics": metrics}
    save_checkpoint(run_dir / "model", model, meta)
    return metrics


def load_localizer(path: str | Path) -> Tuple[LocalizerNet, Dict[str, Any]]:
    """A localizer checkpoint (run folder or ``model.json``): the model in eval mode and its sidecar."""
    sidecar, meta = read_sidecar(path)
    if meta.get("kind") != KIND:
        raise SignguardError("%s: not a localizer checkpoint (kind %r)" % (sidecar, meta.get("kind")))
    arch = meta["architecture"]
    model = build_localizer(arch["name"], **arch["options"])
    model.load_state_dict(st_load(_read_tensors(sidecar, meta, "weights")))
    return model.eval(), meta
