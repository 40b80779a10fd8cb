"""The container every real-data loader returns, and the leak-free train/val split.

Why one type: training, calibration and evaluation should not care whether
signs came from an npz of crops, the GTSRB folders or LISA frames with boxes.
:class:`LabeledImages` holds either decoded frames (small sets such as the
32x32 GTSRB npz) or file paths read lazily (full-size LISA frames would not
fit in memory), and turns both into model inputs through THE shared
:func:`edge.preprocess.preprocess`, so the crop, resize and colour order seen
in training are exactly those of the device.

Torch-free on purpose (numpy + OpenCV): calibration and tools that run beside
the edge runtime use these loaders too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ConfigError, SignguardError
from edge.preprocess import COLOR_ORDERS, PreprocessConfig, preprocess

DEFAULT_PREPROCESS = PreprocessConfig()  # frozen, so one shared default instance is safe


@dataclass(repr=False)
class LabeledImages:
    """Labelled sign images; frames held in memory (uint8 array) or loaded lazily from paths.

    ``boxes`` are TIGHT sign boxes ``(x, y, w, h)`` in image pixels (the
    preprocessing adds the GTSRB-like border); ``None`` means each image is
    already a sign crop.  ``groups`` identify samples that must stay on the
    same side of a split (a GTSRB track's 30 frames of one physical sign).
    """

    class_names: list[str]
    labels: np.ndarray
    color_order: str
    images: np.ndarray | None = None
    paths: list[Path] | None = None
    boxes: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        self.labels = np.asarray(self.labels).astype(np.int64, copy=False).reshape(-1)
        n = len(self.labels)
        if self.color_order not in COLOR_ORDERS:
            raise SignguardError(
                "LabeledImages.color_order: expected one of %s, got %r" % (COLOR_ORDERS, self.color_order)
            )
        if (self.images is None) == (self.paths is None):
            raise SignguardError("LabeledImages: give exactly one of images (array) or paths (files)")
        if self.images is not None:
            self.images = np.asarray(self.images)
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
                raise SignguardError(
                    "LabeledImages.images: expected (N, H, W, 3) uint8, got %s %s"
                    % (self.images.shape, self.images.dtype)
                )
            if len(self.images) != n:
                raise SignguardError("LabeledImages.images: %d images but %d labels" % (len(self.images), n))
        else:
            self.paths = [Path(p) for p in self.paths]
            if len(self.paths) != n:
                raise SignguardError("LabeledImages.paths: %d paths but %d labels" % (len(self.paths), n))
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float64)
            if self.boxes.shape != (n, 4):
                raise SignguardError("LabeledImages.boxes: expected shape (%d, 4), got %s" % (n, self.boxes.shape))
        if self.groups is not None:
            self.groups = np.asarray(self.groups).astype(np.int64, copy=False).reshape(-1)
            if len(self.groups) != n:
                raise SignguardError("LabeledImages.groups: %d groups but %d labels" % (len(self.groups), n))
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            bad = int(self.labels[(self.labels < 0) | (self.labels >= len(self.class_names))][0])
            raise SignguardError(
                "LabeledImages.labels: class id %d out of range for %d class names" % (bad, len(self.class_names))
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        store = "images%s" % (self.images.shape[1:],) if self.images is not None else "paths"
        return "LabeledImages(n=%d, classes=%d, %s, color_order=%s, boxes=%s, groups=%s)" % (
            len(self), len(self.class_names), store, self.color_order,
            self.boxes is not None, self.groups is not None,
        )  # fmt: skip

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as HWC uint8 in ``self.color_order`` (read from disk when path-backed)."""
        if self.images is not None:
            return self.images[i]
        path = self.paths[i]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SignguardError("%s: cannot read image (missing, unreadable or not an image)" % path)
        return img

    def box(self, i: int) -> tuple | None:
        """Tight sign box ``(x, y, w, h)`` of sample ``i``, or ``None`` when the image is the crop."""
        if self.boxes is None:
            return None
        return tuple(float(v) for v in self.boxes[i])

    def subset(self, idx: np.ndarray) -> LabeledImages:
        """The samples at ``idx`` (integer indices or a boolean mask), every field sliced alike."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise SignguardError("subset: boolean mask of shape %s for %d samples" % (idx.shape, len(self)))
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        return LabeledImages(
            class_names=list(self.class_names),
            labels=self.labels[idx],
            color_order=self.color_order,
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[int(i)] for i in idx],
            boxes=None if self.boxes is None else self.boxes[idx],
            groups=None if self.groups is None else self.groups[idx],
        )

    def to_inputs(self, cfg: PreprocessConfig = DEFAULT_PREPROCESS, progress: bool = False) -> np.ndarray:
        """All samples as model inputs (N, 3, S, S) float32 RGB in [0, 1].

        Every image goes through THE shared ``edge.preprocess.preprocess`` with
        the colour order of this container (``cfg.color_order`` is overridden:
        it describes the *incoming* array, which only the loader knows).
        """
        cfg = cfg.with_color_order(self.color_order)
        out = np.empty((len(self), 3, cfg.input_size, cfg.input_size), dtype=np.float32)
        indices = range(len(self))
        if progress:
            try:
                from tqdm import tqdm  # optional (train extra): without it, no bar rather than a failure
            except ImportError:
                pass
            else:
                indices = tqdm(indices, desc="preprocess", unit="img", disable=None)  # None: no bar off a terminal
        last_path, last_img = None, None  # LISA frames with several signs repeat a path back to back
        for i in indices:
            if self.paths is not None and self.paths[i] == last_path:
                img = last_img
            else:
                img = self.image(i)
                if self.paths is not None:
                    last_path, last_img = self.paths[i], img
            try:
                out[i] = preprocess(img, self.box(i), cfg)
            except SignguardError as exc:
                where = self.paths[i] if self.paths is not None else "sample %d" % i
                raise SignguardError("%s: %s" % (where, exc)) from exc
        return out


def split_by_group(data: LabeledImages, val_fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """Split into (train, val) so that no group has samples on both sides.

    Why by group: a GTSRB track is 30 near-identical frames of one sign; a
    frame-level split puts copies of the same sign in train and val and the
    validation accuracy measures memory, not generalisation.  Groups are
    assigned to classes (their majority label) and, class by class, shuffled
    groups go to val until the class's val share is nearest ``val_fraction``
    of its samples -- so val is stratified where the group sizes allow.  A
    class with two or more groups gets at least one val group (with
    ``val_fraction > 0``) and keeps at least one train group; a class with a
    single group keeps it in train.  Deterministic under ``seed``.
    Without groups every sample is its own group.
    """
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError("val_fraction: expected a number in [0, 1), got %r" % (val_fraction,))
    n = len(data)
    if n == 0:
        return data.subset(np.zeros(0, np.int64)), data.subset(np.zeros(0, np.int64))
    groups = data.groups if data.groups is not None else np.arange(n, dtype=np.int64)
    uniq, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=len(uniq))
    # Majority label of each group (ties -> smallest label): a pairwise count table, sorted by (group, -count, label).
    pair, pair_count = np.unique(np.stack([inverse, data.labels]), axis=1, return_counts=True)
    order = np.lexsort((pair[1], -pair_count, pair[0]))
    first = np.unique(pair[0][order], return_index=True)[1]
    group_label = pair[1][order][first]

    rng = np.random.default_rng(seed)
    val_group = np.zeros(len(uniq), dtype=bool)
    for c in np.unique(group_label):
        members = np.flatnonzero(group_label == c)  # sorted, so the shuffle alone decides
        if len(members) < 2 or val_fraction == 0:
            continue
        members = members[rng.permutation(len(members))]
        target = val_fraction * sizes[members].sum()
        taken = 0
        for g in members[:-1]:  # the last group always stays in train
            # the first group always goes (val covers every class that has >= 2 groups), later ones
            # only while they bring the class's val share nearer to its target than stopping would
            if taken > 0 and taken + sizes[g] / 2.0 > target:
                break
            val_group[g] = True
            taken += sizes[g]
    is_val = val_group[inverse]
    return data.subset(np.flatnonzero(~is_val)), data.subset(np.flatnonzero(is_val))
