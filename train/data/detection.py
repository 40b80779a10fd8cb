"""Full frames with sign boxes: COCO-style JSON (the rendered scenes, or any COCO set) and LISA frames.

Why one type: the localizer trains and is scored the same way on rendered
scenes and on real LISA frames; :class:`DetectionSet` holds image paths and,
per image, the tight sign boxes ``(x, y, w, h)`` and their LISA class (-1
when unknown).  Bad annotations fail with one line naming the file and the
field.  Torch-free (numpy + OpenCV), like the other loaders.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np

from edge.errors import SignguardError
from edge.fileio import PathLike

from .classes import LISA_CLASSES, LISA_INDEX
from .real import load_lisa


@dataclass
class DetectionSet:
    """Images (paths) with per-image ``boxes`` (k, 4) float (x, y, w, h) and ``labels`` (k,) int (-1 = unknown)."""

    paths: List[Path]
    boxes: List[np.ndarray]
    labels: List[np.ndarray]
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        """Frame ``i`` as decoded by OpenCV (BGR uint8)."""
        img = cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise SignguardError("%s: cannot decode image" % self.paths[i])
        return img

    def subset(self, idx: Sequence[int]) -> DetectionSet:
        idx = [int(i) for i in idx]
        return DetectionSet([self.paths[i] for i in idx], [self.boxes[i] for i in idx],
                            [self.labels[i] for i in idx], self.source)

    @property
    def n_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes))


def _get(obj: Dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise SignguardError("%s: missing field %r" % (where, key))
    return obj[key]


def load_coco(json_path: PathLike, category: Optional[str] = None) -> DetectionSet:
    """A COCO detection JSON: ``images`` (id, file_name), ``annotations`` (image_id, bbox [x, y, w, h])...

    File names are relative to the JSON's folder.  ``category`` keeps only
    annotations of that category name (default: all); ``iscrowd`` boxes are
    dropped.  A box's LISA class comes from ``sign_class`` when present.
    """
    path = Path(json_path)
    if not path.is_file():
        raise SignguardError("%s: COCO annotation file not found" % path)
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SignguardError("%s: not valid JSON (%s)" % (path, e)) from None
    images = _get(coco, "images", str(path))
    anns = _get(coco, "annotations", str(path))
    if not isinstance(images, list) or not isinstance(anns, list):
        raise SignguardError("%s: 'images' and 'annotations' must be lists" % path)
    keep_cat = None
    if category is not None:
        cats = {c.get("name"): c.get("id") for c in coco.get("categories", []) if isinstance(c, dict)}
        if category not in cats:
            raise SignguardError("%s: categories: no category named %r (have %s)" % (path, category, sorted(cats)))
        keep_cat = cats[category]
    order: Dict[Any, int] = {}
    paths: List[Path] = []
    for k, im in enumerate(images):
        where = "%s: images[%d]" % (path, k)
        iid, name = _get(im, "id", where), _get(im, "file_name", where)
        if iid in order:
            raise SignguardError("%s.id: duplicate image id %r" % (where, iid))
        order[iid] = len(paths)
        paths.append(path.parent / str(name))
    boxes: List[List[List[float]]] = [[] for _ in paths]
    labels: List[List[int]] = [[] for _ in paths]
    for k, a in enumerate(anns):
        where = "%s: annotations[%d]" % (path, k)
        iid = _get(a, "image_id", where)
        if iid not in order:
            raise SignguardError("%s.image_id: %r is not an image id" % (where, iid))
        if a.get("iscrowd", 0) or (keep_cat is not None and a.get("category_id") != keep_cat):
            continue
        bbox = _get(a, "bbox", where)
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
                or bbox[2] <= 0 or bbox[3] <= 0):
            raise SignguardError("%s.bbox: expected [x, y, w, h] with w, h > 0, got %r" % (where, bbox))
        boxes[order[iid]].append([float(v) for v in bbox])
        labels[order[iid]].append(LISA_INDEX.get(str(a.get("sign_class", "")), -1))
    return DetectionSet(paths, [np.array(b, np.float64).reshape(-1, 4) for b in boxes],
                        [np.array(lab, np.int64) for lab in labels], str(path))


def load_lisa_frames(root: PathLike, classes: Sequence[str] = LISA_CLASSES) -> DetectionSet:
    """LISA full frames (``root/allAnnotations.csv``): one entry per image file with every box of ``classes``.

    Uses :func:`train.data.real.load_lisa` (same parsing and checks), grouped
    by file, so the localizer sees the frames a camera saw, several signs
    per frame where LISA annotated several.
    """
    data = load_lisa(root, classes)
    order: Dict[str, int] = {}
    paths: List[Path] = []
    boxes: List[List[np.ndarray]] = []
    labels: List[List[int]] = []
    for p, box, y in zip(data.paths or [], data.boxes, data.labels):
        key = str(p)
        if key not in order:
            order[key] = len(paths)
            paths.append(Path(p))
            boxes.append([])
            labels.append([])
        boxes[order[key]].append(np.asarray(box, np.float64))
        labels[order[key]].append(int(y))
    return DetectionSet(paths, [np.stack(b).reshape(-1, 4) for b in boxes], [np.array(v, np.int64) for v in labels],
                        str(root))


def load_detection_set(kind: str, path: PathLike) -> DetectionSet:
    """``kind``: ``coco`` (a COCO JSON, e.g. what :func:`train.data.scenes.write_scenes` wrote) or ``lisa``."""
    if kind == "coco":
        return load_coco(path)
    if kind == "lisa":
        return load_lisa_frames(path)
    raise SignguardError("data.kind: expected 'coco' or 'lisa' for a localizer, got %r" % (kind,))
