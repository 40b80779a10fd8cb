"""Datasets as in-memory arrays of model inputs, built through THE shared preprocessing.

Signs are small (3x32x32), so whole splits fit in memory; holding them as
arrays makes epochs cheap, shuffling deterministic and resuming exact.
Synthetic splits are rendered in parallel with one seed per sample (so the
result does not depend on the worker count) and cached as uint8 ``.npz``:
``preprocess`` produces ``u8 * (1/255)``, so the uint8 cache reproduces the
float inputs bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.fileio import atomic_write_bytes
from edge.preprocess import PreprocessConfig, preprocess

from ..config import DataConfig
from .classes import LISA_CLASSES

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
RENDER_CACHE_VERSION = 1
_SCALE = np.float32(1.0 / 255.0)


@dataclass
class Split:
    """Model inputs (N, 3, S, S) float32 in [0, 1] and labels (N,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def sample(self, n: int, seed: int) -> Split:
        """``n`` samples (all, if fewer) drawn without replacement by ``seed``: the seeded held-out draw
        that verify, bench and eval share, so their numbers are on the same images."""
        idx = np.random.default_rng(seed).permutation(len(self))[:n]
        return Split(self.x[idx], self.y[idx])


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    data_hash: str


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIGNGUARD_CACHE", Path.home() / ".cache" / "signguard"))


def jitter_box(box: tuple[float, float, float, float], rng: np.random.Generator, amount: float
               ) -> tuple[float, float, float, float]:
    """A localizer-like box for a tight sign box: centre moved by up to ``amount`` of each side, each side
    scaled by a factor in [1 - amount, 1 + amount] (uniform, independent per axis).

    Why: a classifier trained only on tight boxes reads a sign wrongly when its box is off by a tenth of
    its side (measured on the synthetic baseline: 97% -> 44% accuracy for a downward shift of 0.1 h), and
    a localizer's boxes are off by that much on small signs (reports/localizer)."""
    x, y, w, h = box
    dx, dy, sx, sy = rng.uniform(-amount, amount, 4)
    nw, nh = w * (1.0 + sx), h * (1.0 + sy)
    cx, cy = x + w / 2.0 + dx * w, y + h / 2.0 + dy * h
    return (cx - nw / 2.0, cy - nh / 2.0, nw, nh)


def _render_one(args: tuple[int, int, int, int, dict, float]) -> np.ndarray:
    from .render import render_sign

    seed, split_code, class_id, i, pp, roi_jitter = args
    rng = np.random.default_rng([seed, split_code, class_id, i])
    s = render_sign(class_id, rng)
    box = jitter_box(s.box, rng, roi_jitter) if roi_jitter else s.box
    x = preprocess(s.image, box, PreprocessConfig(**pp).with_color_order("BGR"))
    return np.round(x * 255.0).astype(np.uint8)


def render_split(
    split: str,
    per_class: int,
    seed: int,
    cfg: PreprocessConfig = PreprocessConfig(),
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    roi_jitter: float = 0.0,
) -> Split:
    """Render ``per_class`` samples of each LISA-18 class for a split, with an on-disk cache; ``roi_jitter``
    > 0 crops each sign from a :func:`jitter_box` instead of its tight box."""
    from ..progress import progress as bar

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(repr((RENDER_CACHE_VERSION, split, per_class, seed, sorted(cfg.to_dict().items()))
                              + ((float(roi_jitter),) if roi_jitter else ())).encode())
    cache = cache_dir / f"synthetic-{split}-{key.hexdigest()[:16]}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return Split(z["x"].astype(np.float32) * _SCALE, z["y"].astype(np.int64))
    jobs = [(seed, SPLIT_CODES[split], c, i, cfg.to_dict(), float(roi_jitter))
            for c in range(len(LISA_CLASSES)) for i in range(per_class)]
    workers = workers or min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2, 8)
    desc = f"render {split} ({len(jobs)} signs)"
    if workers > 1:
        import cv2

        # spawn, not fork: forking a process whose threads (torch, OpenMP, tqdm) hold locks can deadlock
        # the children -- seen when a split is rendered after a model was trained in the same process.
        # One OpenCV thread per worker: the pool already uses every core.
        with mp.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            it = pool.imap(_render_one, jobs, chunksize=64)
            out = list(bar(it, desc, progress, total=len(jobs)))
    else:
        out = [_render_one(j) for j in bar(jobs, desc, progress)]
    xu8 = np.stack(out)
    y = np.repeat(np.arange(len(LISA_CLASSES), dtype=np.int64), per_class)

    buf = io.BytesIO()
    np.savez(buf, x=xu8, y=y)
    atomic_write_bytes(cache, buf.getvalue())
    return Split(xu8.astype(np.float32) * _SCALE, y)


def _hash_splits(*splits: Split) -> str:
    h = hashlib.sha256()
    for s in splits:
        h.update(np.ascontiguousarray(s.x).tobytes())
        h.update(np.ascontiguousarray(s.y).tobytes())
    return h.hexdigest()


def load_checkpoint_data(meta: dict, progress: bool = True) -> DataBundle:
    """The splits a checkpoint was trained and tested on, rebuilt from its sidecar (``recipe.data`` and
    ``preprocess``): attacks and checks score a model on its own held-out images, whoever calls them."""
    return load_data(DataConfig(**meta["recipe"]["data"]), PreprocessConfig(**meta["preprocess"]), progress=progress)


def load_data(data_cfg, cfg: PreprocessConfig, progress: bool = True, cache_dir: Path | None = None) -> DataBundle:
    """Train/val/test splits for a recipe's ``data`` section (see :class:`train.config.DataConfig`)."""
    if data_cfg.kind == "synthetic":
        train = render_split("train", data_cfg.train_per_class, data_cfg.seed, cfg, cache_dir, progress=progress,
                             roi_jitter=data_cfg.roi_jitter)
        n_val = max(1, int(round(data_cfg.train_per_class * data_cfg.val_fraction)))
        val = render_split("val", n_val, data_cfg.seed, cfg, cache_dir, progress=progress)
        test = render_split("test", data_cfg.test_per_class, data_cfg.seed, cfg, cache_dir, progress=progress)
        return DataBundle(train, val, test, list(LISA_CLASSES), _hash_splits(train, val, test))

    from .real import load_dataset, split_by_group

    spec = {"kind": data_cfg.kind, "path": data_cfg.path}
    if data_cfg.kind in ("npz", "gtsrb"):
        full = load_dataset({**spec, "split": "train"})
        test_set = load_dataset({**spec, "split": "test"})
        tr, va = split_by_group(full, data_cfg.val_fraction, data_cfg.seed)
    else:  # lisa / folder: one pool, split into train / val / test by group
        full = load_dataset(spec)
        rest, test_set = split_by_group(full, 0.2, data_cfg.seed)
        tr, va = split_by_group(rest, data_cfg.val_fraction, data_cfg.seed + 1)
    splits = [Split(d.to_inputs(cfg, progress=progress), d.labels.astype(np.int64)) for d in (tr, va, test_set)]
    return DataBundle(*splits, classes=list(full.class_names), data_hash=_hash_splits(*splits))
