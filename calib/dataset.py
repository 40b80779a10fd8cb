"""Calibration sets: the images whose activation ranges become the INT8 scales.

Why this module exists: INT8 scales are measured, not computed, so the
images they are measured on must be what the device will see.  Every image
here goes through THE shared preprocessing :func:`edge.preprocess.preprocess`
(same crop, resize, colour order and [0, 1] scaling as the camera loop), and
class-labelled sources are sampled *stratified* so one frequent class cannot
set the ranges alone.

A calibration set is ``(x, meta)``: ``x`` (N, 3, S, S) float32 RGB in
[0, 1], ``meta`` a JSON-able dict saying where the images came from.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from edge.errors import SignguardError
from edge.fileio import PathLike, atomic_write_bytes
from edge.preprocess import PreprocessConfig, preprocess
from edge.rois import CentreRoi, CsvRoi, RoiProvider
from edge.sources import IMAGE_EXTS

log = logging.getLogger(__name__)

MIN_RECOMMENDED = 512
FORMAT = "signguard-calibration-set/1"


class CalibrationSet(NamedTuple):
    """Preprocessed calibration images and where they came from (unpacks as ``x, meta``)."""

    x: np.ndarray
    meta: Dict[str, Any]


def warn_if_small(n: int, where: str) -> None:
    """Log a WARNING when fewer than :data:`MIN_RECOMMENDED` images are used.

    Why loudly: a tiny calibration set is the first cause of broken INT8
    models in the field -- ranges measured on a few images clip the
    activations of every image that is brighter, more contrasted or of
    another class, and nothing fails until the device misclassifies.
    """
    if n < MIN_RECOMMENDED:
        log.warning(
            "%s: only %d calibration image(s), fewer than the recommended %d. Tiny calibration sets are the first "
            "cause of broken INT8 models in the field: activation ranges measured on few images clip everything "
            "else. Use more images, from every class and lighting condition the device will see.",
            where, n, MIN_RECOMMENDED,
        )


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise SignguardError("n: expected a positive number of calibration images, got %r" % (n,))
    return int(n)


def stratified_indices(labels: Sequence[Any], n: int, seed: int = 0) -> np.ndarray:
    """Pick ``n`` indices balanced across classes, reproducibly.

    Classes are visited round-robin in a seeded shuffled order, each yielding
    its next index from a seeded shuffle of its members; a class that runs
    out is skipped and the others fill in.  Why round-robin: any prefix of
    the result is as balanced as it can be, so a rare class still gets its
    share of the activation statistics.  Returns all indices (shuffled, never
    more) when ``n >= len(labels)``.
    """
    n = _check_n(n)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise SignguardError("labels: expected a non-empty 1-D sequence, got shape %s" % (labels.shape,))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in rng.permutation(classes)]
    out: List[int] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in pools):
        for p in pools:
            if depth < len(p) and len(out) < n:
                out.append(int(p[depth]))
        depth += 1
    return np.asarray(out, dtype=np.int64)


def check_images(x: np.ndarray, where: str) -> np.ndarray:
    """``x`` as float32 (N, 3, S, S) in [0, 1], or a SignguardError naming ``where``.

    Why the range check: calibrating on 0..255 pixels (a missed
    preprocessing step) gives scales 255x too large and an INT8 model that
    silently outputs noise.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        raise SignguardError("%s: expected preprocessed images (N>0, 3, S, S), got shape %s" % (where, x.shape))
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise SignguardError("%s: expected finite pixels in [0, 1] (the output of edge.preprocess), got range "
                             "[%g, %g]" % (where, float(np.nanmin(x)), float(np.nanmax(x))))
    return x


def _class_counts(labels: Sequence[Any]) -> Dict[str, int]:
    names, counts = np.unique(np.asarray([str(v) for v in labels]), return_counts=True)
    return {str(k): int(v) for k, v in zip(names, counts)}


def from_arrays(x: np.ndarray, y: Optional[Sequence[Any]] = None, n: int = MIN_RECOMMENDED,
                seed: int = 0) -> CalibrationSet:
    """Stratified subset of already-preprocessed images ``x`` (N, 3, S, S) float32 in [0, 1].

    Why: a training/validation split is often already in memory in the
    device format; ``y`` (class labels) makes the subset class-balanced,
    without ``y`` it is a seeded random subset.
    """
    n = _check_n(n)
    x = check_images(x, "x")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (len(x),):
            raise SignguardError("y: expected %d labels (one per image), got shape %s" % (len(x), y.shape))
        idx = stratified_indices(y, n, seed)
    else:
        idx = np.random.default_rng(seed).permutation(len(x))[:n]
    meta: Dict[str, Any] = {"source": "arrays", "n": int(len(idx)), "seed": int(seed)}
    if y is not None:
        meta["class_counts"] = _class_counts(y[idx])
    warn_if_small(len(idx), "calibration set from arrays")
    return CalibrationSet(np.ascontiguousarray(x[idx]), meta)


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def from_image_folder(root: PathLike, cfg: PreprocessConfig = PreprocessConfig(), n: int = MIN_RECOMMENDED,
                      seed: int = 0) -> CalibrationSet:
    """Calibration set from a class-per-folder tree (subfolder name = class) or a flat folder of images.

    Each image is taken whole as the region of interest (it is already a
    sign crop, like GTSRB) and goes through :func:`edge.preprocess.preprocess`
    with ``cfg``'s size and margin.  Files are decoded by OpenCV, i.e. BGR, so
    the colour order is forced to BGR whatever ``cfg.color_order`` says --
    the output is RGB either way.  With class folders the subset is stratified.
    """
    n = _check_n(n)
    root = Path(root)
    if not root.is_dir():
        raise SignguardError("%s: calibration image folder not found" % root)
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _images_in(d)]
    if class_dirs:
        files, labels = [], []
        for d in class_dirs:
            for f in _images_in(d):
                files.append(f)
                labels.append(d.name)
        loose = _images_in(root)
        if loose:
            log.warning("%s: %d image(s) beside the class folders are ignored", root, len(loose))
        idx = stratified_indices(labels, n, seed)
    else:
        files, labels = _images_in(root), []
        if not files:
            raise SignguardError("%s: no images (expected %s files or class subfolders of them)"
                                 % (root, ", ".join(IMAGE_EXTS)))
        idx = np.random.default_rng(seed).permutation(len(files))[:n]
    bgr = cfg.with_color_order("BGR")
    x = np.empty((len(idx), 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    for k, i in enumerate(idx):
        frame = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if frame is None:
            raise SignguardError("%s: cannot decode image" % files[i])
        x[k] = preprocess(frame, None, bgr)
    meta: Dict[str, Any] = {
        "source": str(root), "kind": "image_folder", "n": int(len(idx)), "seed": int(seed),
        "preprocess": bgr.to_dict(), "files": [str(files[i].relative_to(root)) for i in idx],
    }
    if labels:
        meta["class_counts"] = _class_counts([labels[i] for i in idx])
    warn_if_small(len(idx), str(root))
    return CalibrationSet(x, meta)


def _evenly_spaced(candidates: Sequence[int], n: int) -> List[int]:
    if len(candidates) <= n:
        return list(candidates)
    pos = np.unique(np.round(np.linspace(0, len(candidates) - 1, n)).astype(np.int64))
    return [candidates[int(p)] for p in pos]


def from_video(path: PathLike, cfg: PreprocessConfig = PreprocessConfig(), n: int = MIN_RECOMMENDED, seed: int = 0,
               boxes_csv: Optional[PathLike] = None, centre: Optional[float] = 0.5) -> CalibrationSet:
    """Calibration set from a recorded video: the frames the device will actually see.

    Frames are read with ``cv2.VideoCapture`` (BGR) and cropped exactly as
    the camera loop crops them: with ``boxes_csv`` (``frame,x,y,w,h[,class_id,
    class_name]``, read by :class:`edge.rois.CsvRoi`) only frames that have a
    box are candidates; without it every frame is, cropped to the device's
    default ``--roi center`` square (``centre`` = its fraction of the shorter
    side; ``None`` = the whole frame).  ``n`` frames are sampled evenly spaced
    in time -- so a long stretch of one sign does not dominate -- except when
    the CSV carries class ids, then they are stratified by class (``seed``).
    """
    n = _check_n(n)
    path = Path(path)
    if not path.is_file():
        raise SignguardError("%s: calibration video not found" % path)
    rois: Optional[RoiProvider] = CsvRoi(boxes_csv) if boxes_csv is not None else None
    if rois is None and centre is not None:
        rois = CentreRoi(centre)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise SignguardError("%s: OpenCV cannot open this video" % path)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if isinstance(rois, CsvRoi):
            candidates = sorted(f for f in rois.rows if f >= 0 and (count <= 0 or f < count))
            if not candidates:
                raise SignguardError("%s: no box in %s falls on one of the video's %d frames"
                                     % (path, boxes_csv, count))
            ids = [rois.rows[f].class_id if rois.rows[f].class_id is not None else rois.rows[f].class_name
                   for f in candidates]
            if rois.has_labels and all(v is not None for v in ids):
                wanted = sorted(candidates[i] for i in stratified_indices([str(v) for v in ids], n, seed))
            else:
                wanted = _evenly_spaced(candidates, n)
        else:
            if count <= 0:
                raise SignguardError("%s: the video reports no frame count; cannot space %d samples" % (path, n))
            wanted = _evenly_spaced(list(range(count)), n)
        bgr = cfg.with_color_order("BGR")
        crops, used = _read_crops(cap, wanted, rois, bgr, path)
    finally:
        cap.release()
    if not crops:
        raise SignguardError("%s: no frame could be decoded" % path)
    if len(crops) < len(wanted):
        log.warning("%s: decoded %d of %d sampled frames (the container's frame count is off)",
                    path, len(crops), len(wanted))
    meta = {"source": str(path), "kind": "video", "n": len(crops), "seed": int(seed), "frames": used,
            "boxes_csv": None if boxes_csv is None else str(boxes_csv), "roi": repr(rois), "preprocess": bgr.to_dict()}
    warn_if_small(len(crops), str(path))
    return CalibrationSet(np.stack(crops), meta)


def _read_crops(cap: Any, wanted: Sequence[int], rois: Optional[RoiProvider], cfg: PreprocessConfig,
                path: Path) -> Tuple[List[np.ndarray], List[int]]:
    """Preprocess the wanted frames as they are decoded (512 full HD frames would not fit in memory)."""
    todo = set(wanted)
    last = max(wanted)
    crops: List[np.ndarray] = []
    used: List[int] = []
    index = 0
    while index <= last and cap.grab():
        if index in todo:
            ok, frame = cap.retrieve()
            if ok and frame is not None:
                roi = rois.get(index, frame) if rois is not None else None
                try:
                    crops.append(preprocess(frame, roi.box if roi is not None else None, cfg))
                except SignguardError as e:
                    raise SignguardError("%s: frame %d: %s" % (path, index, e)) from None
                used.append(index)
        index += 1
    return crops, used


def save_calibration_set(path: PathLike, x: np.ndarray, meta: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``x`` and ``meta`` to one ``.npz`` atomically, so an INT8 build can be reproduced later.

    Pixels that are exact multiples of 1/255 (everything :func:`edge.preprocess.preprocess`
    produces) are stored as uint8, 4x smaller and bit-exact on reload;
    anything else is stored as float32.  ``meta`` is stored as JSON text
    (no pickles: loading never executes code).
    """
    x = check_images(x, "x")
    q = np.round(x * 255.0)
    exact = bool(np.array_equal(q.astype(np.uint8).astype(np.float32) * np.float32(1.0 / 255.0), x))
    data = q.astype(np.uint8) if exact else x
    meta_text = json.dumps({"format": FORMAT, "meta": meta or {}}, sort_keys=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=data, meta=np.array(meta_text))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_calibration_set(path: PathLike) -> CalibrationSet:
    """Read a set written by :func:`save_calibration_set`; values are identical to what was saved."""
    path = Path(path)
    if not path.is_file():
        raise SignguardError("%s: calibration set not found" % path)
    try:
        with np.load(str(path), allow_pickle=False) as z:
            if "x" not in z.files or "meta" not in z.files:
                raise SignguardError("%s: not a calibration set (keys %s, expected x and meta)" % (path, z.files))
            data, meta_text = z["x"], str(z["meta"])
    except (OSError, ValueError) as e:
        raise SignguardError("%s: cannot read calibration set (%s)" % (path, e)) from None
    try:
        doc = json.loads(meta_text)
    except ValueError:
        raise SignguardError("%s: field 'meta' is not valid JSON" % path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SignguardError("%s: field 'meta.format' is %r, expected %r"
                             % (path, doc.get("format") if isinstance(doc, dict) else None, FORMAT))
    x = data.astype(np.float32) * np.float32(1.0 / 255.0) if data.dtype == np.uint8 else data.astype(np.float32)
    return CalibrationSet(check_images(x, str(path)), doc.get("meta", {}))
