"""Real-data loaders: GTSRB (npz and official folders), LISA, and class-per-folder trees.

Each loader reads one published on-disk layout into a :class:`LabeledImages`
and refuses a layout it does not recognise with a one-line
:class:`~edge.errors.SignguardError` naming the file, the field and the value
-- a silently mis-parsed dataset trains a model that looks fine and is not.
Nothing is downloaded: users point the loaders at copies they already have.

Torch-free (numpy + OpenCV) so that calibration tools can use them too.
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from edge.errors import ConfigError, SignguardError

from .classes import LISA_CLASSES
from .real_images import LabeledImages, split_by_group

__all__ = [
    "GTSRB_CLASSES",
    "IMAGE_EXTENSIONS",
    "LabeledImages",
    "load_dataset",
    "load_gtsrb_dir",
    "load_image_folder",
    "load_lisa",
    "load_npz",
    "split_by_group",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The 43 GTSRB classes in class-id order (the benchmark's ``signnames``); 13 = Yield, 14 = Stop.
GTSRB_CLASSES: list[str] = [
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")

_SPLITS = ("train", "test")
_GTSRB_COLUMNS = ("Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
_GTSRB_TRACK_FRAME = re.compile(r"^(\d+)_(\d+)\.[A-Za-z]+$")
_LISA_CSV = "allAnnotations.csv"
_LISA_COLUMNS = (
    "Filename",
    "Annotation tag",
    "Upper left corner X",
    "Upper left corner Y",
    "Lower right corner X",
    "Lower right corner Y",
)


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise SignguardError("split: expected one of %s, got %r" % (_SPLITS, split))


# ----------------------------------------------------------------------------- npz


def load_npz(path: PathLike, split: str = "train") -> LabeledImages:
    """The 32x32 GTSRB npz (RGB crops): ``x_<split>``, ``y_<split>``, ``track_train``, ``class_names``.

    Groups are the training tracks (split by track, never by frame); each
    test image is its own group.  ``allow_pickle=False``: an npz is data, not code.
    """
    _check_split(split)
    path = Path(path)
    if not path.is_file():
        raise SignguardError("%s: npz file not found" % path)
    keys = ["x_" + split, "y_" + split, "class_names"] + (["track_train"] if split == "train" else [])
    try:
        with np.load(str(path), allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise SignguardError("%s: missing key(s) %s (has %s)" % (path, missing, sorted(z.files)))
            arrays = {k: z[k] for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SignguardError("%s: cannot read as an npz archive (%s)" % (path, exc)) from exc
    x, y, names = arrays["x_" + split], arrays["y_" + split], arrays["class_names"]
    if x.ndim != 4 or x.shape[3] != 3 or x.dtype != np.uint8:
        raise SignguardError("%s: x_%s: expected (N, H, W, 3) uint8, got %s %s" % (path, split, x.shape, x.dtype))
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise SignguardError("%s: y_%s: expected (%d,) integers, got %s %s" % (path, split, len(x), y.shape, y.dtype))
    if names.ndim != 1 or not len(names):
        raise SignguardError("%s: class_names: expected a non-empty 1-D array, got shape %s" % (path, names.shape))
    bad = y[(y < 0) | (y >= len(names))]
    if len(bad):
        raise SignguardError("%s: y_%s: class id %d out of range 0..%d" % (path, split, int(bad[0]), len(names) - 1))
    if split == "train":
        groups = arrays["track_train"]
        if groups.shape != (len(x),):
            raise SignguardError("%s: track_train: expected shape (%d,), got %s" % (path, len(x), groups.shape))
    else:
        groups = np.arange(len(x), dtype=np.int64)
    return LabeledImages([str(n) for n in names], y, "RGB", images=x, groups=groups)


# ----------------------------------------------------------------------------- CSV helpers


def _read_csv(path: Path, required: Sequence[str], delimiter: str = ";") -> list[dict[str, str]]:
    """Rows of a header-first CSV as dicts; a missing column is an error naming the file and column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise SignguardError("%s: missing column(s) %s (header: %s)" % (path, missing, header))
            reader.fieldnames = header
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except OSError as exc:
        raise SignguardError("%s: cannot read CSV (%s)" % (path, exc)) from exc
    except UnicodeDecodeError as exc:
        raise SignguardError("%s: not a UTF-8 text CSV (%s)" % (path, exc)) from exc


def _num(row: dict[str, str], column: str, path: Path, line: int, kind: type = float) -> Any:
    try:
        return kind(row[column])
    except (TypeError, ValueError):
        raise SignguardError("%s:%d: %s: expected a number, got %r" % (path, line, column, row.get(column))) from None


def _existing(path: Path, csv_path: Path, line: int) -> Path:
    if not path.is_file():
        raise SignguardError("%s:%d: Filename: image %s does not exist" % (csv_path, line, path))
    return path


# ----------------------------------------------------------------------------- GTSRB folders


def _gtsrb_rows(csv_path: Path, image_dir: Path, n_classes: int) -> tuple[list, list, list, list]:
    """(paths, class ids, tight boxes, filenames) of one GTSRB GT-*.csv whose images sit in ``image_dir``."""
    rows = _read_csv(csv_path, _GTSRB_COLUMNS)
    paths, labels, boxes, names = [], [], [], []
    for line, row in enumerate(rows, start=2):
        cid = _num(row, "ClassId", csv_path, line, int)
        if not 0 <= cid < n_classes:
            raise SignguardError("%s:%d: ClassId: %d out of range 0..%d" % (csv_path, line, cid, n_classes - 1))
        x1, y1, x2, y2 = (_num(row, c, csv_path, line) for c in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
        if x2 < x1 or y2 < y1:
            raise SignguardError("%s:%d: Roi: X2/Y2 (%g, %g) before X1/Y1 (%g, %g)" % (csv_path, line, x2, y2, x1, y1))
        paths.append(_existing(image_dir / row["Filename"], csv_path, line))
        labels.append(cid)
        boxes.append((x1, y1, x2 - x1 + 1.0, y2 - y1 + 1.0))  # Roi.X2/Y2 are inclusive pixel coordinates
        names.append(row["Filename"])
    return paths, labels, boxes, names


def load_gtsrb_dir(root: PathLike, split: str = "train") -> LabeledImages:
    """The official GTSRB layout (``Final_Training/Images/000NN/GT-000NN.csv``, ``Final_Test/Images``).

    Boxes come from ``Roi.*`` (the sign inside the ~10% border), so the shared
    preprocessing re-crops with its own margin like it does on the device.
    Training groups are ``class*1000 + track`` from ``TTTTT_FFFFF.ppm``
    (the npz's ``track_train`` convention); test images are their own groups.
    """
    _check_split(split)
    root = Path(root)
    n = len(GTSRB_CLASSES)
    paths: list[Path] = []
    labels: list[int] = []
    boxes: list[tuple] = []
    groups: list[int] = []
    if split == "train":
        image_root = root / "Final_Training" / "Images"
        if not image_root.is_dir():
            raise SignguardError("%s: GTSRB training folder not found (expected Final_Training/Images)" % image_root)
        class_dirs = sorted(d for d in image_root.iterdir() if d.is_dir() and d.name.isdigit())
        if not class_dirs:
            raise SignguardError("%s: no class folders 00000..00042" % image_root)
        for d in class_dirs:
            csv_path = d / ("GT-%s.csv" % d.name)
            if not csv_path.is_file():
                raise SignguardError("%s: GTSRB annotation file not found" % csv_path)
            p, lab, b, names = _gtsrb_rows(csv_path, d, n)
            for name, cid in zip(names, lab):
                m = _GTSRB_TRACK_FRAME.match(name)
                if m is None:
                    raise SignguardError("%s: Filename: %r is not TTTTT_FFFFF.<ext> (track_frame)" % (csv_path, name))
                groups.append(cid * 1000 + int(m.group(1)))
            paths += p
            labels += lab
            boxes += b
    else:
        image_dir = root / "Final_Test" / "Images"
        if not image_dir.is_dir():
            raise SignguardError("%s: GTSRB test folder not found (expected Final_Test/Images)" % image_dir)
        candidates = [root / "GT-final_test.csv", image_dir / "GT-final_test.csv"]
        csv_path = next((c for c in candidates if c.is_file()), None)
        if csv_path is None:
            raise SignguardError(
                "%s: GTSRB test labels not found (also looked in %s); GT-final_test.test.csv has no ClassId, "
                "the labelled file comes with the separate test ground-truth download" % (candidates[0], image_dir)
            )
        paths, labels, boxes, _ = _gtsrb_rows(csv_path, image_dir, n)
        groups = list(range(len(paths)))
    if not paths:
        raise SignguardError("%s: GTSRB %s split has no images" % (root, split))
    return LabeledImages(list(GTSRB_CLASSES), np.array(labels), "BGR", paths=paths, boxes=np.array(boxes),
                         groups=np.array(groups, dtype=np.int64))  # fmt: skip


# ----------------------------------------------------------------------------- LISA


def load_lisa(root: PathLike, classes: Sequence[str] = LISA_CLASSES) -> LabeledImages:
    """LISA traffic signs: ``root/allAnnotations.csv``, one sample per annotation.

    Only tags in ``classes`` are kept (label = position in ``classes``), so the
    label space is the model's, not LISA's 47 tags.  A frame with several signs
    gives several samples with the same path and different boxes.  Groups are
    the ``Origin track`` (frames of one drive-by of one sign) or, without one,
    the image file, so a split never shows the same physical sign on both sides.
    Corners are taken as pixel edges: ``w = X_lower_right - X_upper_left``.
    """
    root = Path(root)
    csv_path = root / _LISA_CSV
    if not csv_path.is_file():
        raise SignguardError("%s: LISA annotation file not found" % csv_path)
    classes = [str(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise SignguardError("load_lisa: classes must be a non-empty list without duplicates, got %r" % (classes,))
    index = {c: i for i, c in enumerate(classes)}
    rows = _read_csv(csv_path, _LISA_COLUMNS)
    paths, labels, boxes, keys = [], [], [], []
    for line, row in enumerate(rows, start=2):
        tag = row["Annotation tag"]
        if tag not in index:
            continue
        x1, y1, x2, y2 = (_num(row, c, csv_path, line) for c in _LISA_COLUMNS[2:])
        if x2 <= x1 or y2 <= y1:
            raise SignguardError(
                "%s:%d: lower right corner (%g, %g) not below/right of upper left (%g, %g)"
                % (csv_path, line, x2, y2, x1, y1)
            )
        if not row["Filename"]:
            raise SignguardError("%s:%d: Filename: empty" % (csv_path, line))
        paths.append(_existing(root / row["Filename"], csv_path, line))
        labels.append(index[tag])
        boxes.append((x1, y1, x2 - x1, y2 - y1))
        track = row.get("Origin track", "")
        keys.append("track:" + track if track else "file:" + row["Filename"])
    if not paths:
        raise SignguardError("%s: Annotation tag: no annotation with a tag in %s" % (csv_path, classes))
    groups = np.unique(np.array(keys), return_inverse=True)[1].reshape(-1).astype(np.int64)
    return LabeledImages(classes, np.array(labels), "BGR", paths=paths, boxes=np.array(boxes), groups=groups)


# ----------------------------------------------------------------------------- class-per-folder


def load_image_folder(root: PathLike, classes: Sequence[str] | None = None) -> LabeledImages:
    """An ImageFolder-style tree ``root/<class>/*.{png,jpg,jpeg,ppm,bmp}``; each image is the sign crop.

    Class order is the given list (so labels match a trained model's) or the
    sorted folder names.  A folder whose name is not in the given list is an
    error rather than silently dropped: it usually means a misspelt class.
    """
    root = Path(root)
    if not root.is_dir():
        raise SignguardError("%s: image folder not found" % root)
    dirs = {d.name: d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if classes is None:
        names = sorted(dirs)
    else:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise SignguardError("load_image_folder: classes has duplicates: %r" % (names,))
        unknown = sorted(set(dirs) - set(names))
        if unknown:
            raise SignguardError("%s: folder(s) %s are not in classes %s" % (root, unknown, names))
    if not names:
        raise SignguardError("%s: no class folders (expected root/<class_name>/<images>)" % root)
    paths: list[Path] = []
    labels: list[int] = []
    for i, name in enumerate(names):
        if name not in dirs:
            continue  # a class of the model with no images in this set
        files = sorted(p for p in dirs[name].iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SignguardError("%s: class folder has no images (%s)" % (dirs[name], "/".join(IMAGE_EXTENSIONS)))
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise SignguardError("%s: no images in any class folder" % root)
    return LabeledImages(names, np.array(labels), "BGR", paths=paths)


# ----------------------------------------------------------------------------- config dispatch

_LOADERS = {"npz": ("split",), "gtsrb": ("split",), "lisa": ("classes",), "folder": ("classes",)}


def load_dataset(spec: Mapping[str, Any], base_dir: PathLike | None = None, where: str = "data") -> LabeledImages:
    """Load the dataset a config describes: ``{"kind": "npz"|"gtsrb"|"lisa"|"folder", "path": ..., ...}``.

    Optional fields: ``split`` ("train"/"test", npz and gtsrb) and ``classes``
    (lisa and folder).  A relative ``path`` is resolved against ``base_dir``
    (the config file's folder) when given.  Errors are ConfigErrors naming
    ``<where>.<field>``.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError("%s: expected a mapping, got %s" % (where, type(spec).__name__))
    kind = spec.get("kind")
    if kind not in _LOADERS:
        raise ConfigError("%s.kind: expected one of %s, got %r" % (where, sorted(_LOADERS), kind))
    allowed = {"kind", "path", *_LOADERS[kind]}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError("%s: unknown field(s) %s for kind %r (allowed: %s)" % (where, unknown, kind, sorted(allowed)))
    raw = spec.get("path")
    if not isinstance(raw, (str, os.PathLike)) or not str(raw):
        raise ConfigError("%s.path: expected a file or folder path, got %r" % (where, raw))
    path = Path(raw).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if kind in ("npz", "gtsrb"):
        split = spec.get("split", "train")
        if split not in _SPLITS:
            raise ConfigError("%s.split: expected one of %s, got %r" % (where, _SPLITS, split))
        return load_npz(path, split) if kind == "npz" else load_gtsrb_dir(path, split)
    classes = spec.get("classes")
    if classes is not None and (
        isinstance(classes, str) or not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes)
    ):
        raise ConfigError("%s.classes: expected a list of class names, got %r" % (where, classes))
    if kind == "lisa":
        return load_lisa(path, LISA_CLASSES if classes is None else classes)
    return load_image_folder(path, classes)
