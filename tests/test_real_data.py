"""Real-data loaders on tiny fixtures written in each published layout (and on the real npz when present)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ConfigError, SignguardError
from edge.preprocess import PreprocessConfig
from train.data.classes import LISA_CLASSES
from train.data.real import (
    GTSRB_CLASSES,
    LabeledImages,
    load_dataset,
    load_gtsrb_dir,
    load_image_folder,
    load_lisa,
    load_npz,
    split_by_group,
)

REAL_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gtsrb32" / "gtsrb32.npz"

RED_BGR = (0, 0, 255)
GREEN_BGR = (0, 255, 0)
BLUE_BGR = (255, 0, 0)


def sign_image(w: int, h: int, box: tuple[int, int, int, int], fg=RED_BGR, bg=BLUE_BGR) -> np.ndarray:
    """BGR image of colour ``bg`` with a filled ``fg`` rectangle at the tight box (x, y, w, h)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    x, y, bw, bh = box
    img[y : y + bh, x : x + bw] = fg
    return img


def write_csv(path: Path, header: str, rows: list[str], newline: str = "\r\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join([header, *rows]) + newline).encode())


GTSRB_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


@pytest.fixture
def gtsrb_root(tmp_path: Path) -> Path:
    """GTSRB training (classes 13 and 14, two tracks each) and test folders with GT files."""
    root = tmp_path / "GTSRB"
    for cid, colour in ((13, GREEN_BGR), (14, RED_BGR)):
        d = root / "Final_Training" / "Images" / ("%05d" % cid)
        d.mkdir(parents=True)
        rows = []
        for track in range(2):
            for frame in range(3):
                name = "%05d_%05d.ppm" % (track, frame)
                # 40x36 image, sign at X1=5..X2=30 (inclusive), Y1=4..Y2=29: w=26, h=26
                cv2.imwrite(str(d / name), sign_image(40, 36, (5, 4, 26, 26), fg=colour))
                rows.append("%s;40;36;5;4;30;29;%d" % (name, cid))
        write_csv(d / ("GT-%05d.csv" % cid), GTSRB_HEADER, rows)
    test = root / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = []
    for i, cid in enumerate((14, 13, 14)):
        name = "%05d.ppm" % i
        cv2.imwrite(str(test / name), sign_image(30, 30, (3, 3, 24, 24)))
        rows.append("%s;30;30;3;3;26;26;%d" % (name, cid))
    write_csv(root / "GT-final_test.csv", GTSRB_HEADER, rows)
    return root


LISA_HEADER = (
    "Filename;Annotation tag;Upper left corner X;Upper left corner Y;Lower right corner X;Lower right corner Y;"
    "Occluded,On another road;Origin file;Origin frame number;Origin track;Origin track frame number"
)


@pytest.fixture
def lisa_root(tmp_path: Path) -> Path:
    """LISA layout: two frames of one stop track, one frame with a stop and a yield, one untracked, one ignored tag."""
    root = tmp_path / "signDatabasePublicFramesOnly"
    ann = "aiua120214-0/frameAnnotations-DataLog02142012_external_camera.avi_annotations"
    (root / ann).mkdir(parents=True)
    names = ["stop_1330545910.avi_image0.png", "stop_1330545910.avi_image1.png", "yield_1.png", "single.png"]
    for n in names:
        cv2.imwrite(str(root / ann / n), sign_image(64, 48, (10, 8, 20, 20)))
    origin = "aiua120214-0/DataLog02142012_external_camera.avi"
    rows = [
        "%s/%s;stop;10;8;30;28;0,0;%s;2667;stop_1330545910.avi;0" % (ann, names[0], origin),
        "%s/%s;stop;11;9;31;29;0,0;%s;2668;stop_1330545910.avi;1" % (ann, names[1], origin),
        "%s/%s;yield;40;10;60;30;0,0;%s;2700;yield_1.avi;0" % (ann, names[2], origin),
        "%s/%s;stop;10;8;30;28;1,0;%s;2700;stop_2.avi;0" % (ann, names[2], origin),
        "%s/%s;noRightTurn;1;1;9;9;0,0;%s;10;nrt.avi;0" % (ann, names[3], origin),
        "%s/%s;stop;10;8;30;28;0,0;%s;11;;" % (ann, names[3], origin),
    ]
    write_csv(root / "allAnnotations.csv", LISA_HEADER, rows, newline="\n")
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    for cls, ext, n in (("stop", ".png", 2), ("yield", ".jpg", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / cls / ("%d%s" % (i, ext))), sign_image(20, 20, (0, 0, 20, 20)))
    (root / "stop" / "notes.txt").write_text("not an image")
    return root


def red_rgb_npz(tmp_path: Path) -> Path:
    x = np.zeros((4, 32, 32, 3), np.uint8)
    x[..., 0] = 255  # pure red in RGB
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x, y_train=np.array([0, 1, 1, 0], np.int16), track_train=np.array([0, 0, 1000, 1000]),
             x_test=x[:2], y_test=np.array([1, 0], np.int16), class_names=np.array(["a", "b"]))  # fmt: skip
    return path


# ----------------------------------------------------------------------------- npz


def test_npz_loads_rgb_with_tracks_and_test_groups(tmp_path: Path) -> None:
    path = red_rgb_npz(tmp_path)
    train = load_npz(path, "train")
    assert len(train) == 4 and train.color_order == "RGB" and train.class_names == ["a", "b"]
    assert train.labels.dtype == np.int64 and train.groups.tolist() == [0, 0, 1000, 1000]
    assert train.boxes is None and train.box(0) is None
    test = load_npz(path, split="test")
    assert test.labels.tolist() == [1, 0] and test.groups.tolist() == [0, 1]
    x = train.to_inputs()
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    assert np.all(x[:, 0] == 1.0) and np.all(x[:, 1:] == 0.0)


def test_npz_errors_name_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(SignguardError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((1, 8, 8, 3), np.uint8), y_train=np.zeros(1, np.int16))
    with pytest.raises(SignguardError, match=r"bad\.npz.*class_names"):
        load_npz(bad)
    with pytest.raises(SignguardError, match="split"):
        load_npz(red_rgb_npz(tmp_path), "val")
    out_of_range = tmp_path / "range.npz"
    np.savez(out_of_range, x_train=np.zeros((1, 8, 8, 3), np.uint8), y_train=np.array([5]),
             track_train=np.zeros(1), class_names=np.array(["a"]))  # fmt: skip
    with pytest.raises(SignguardError, match=r"range\.npz.*y_train.*5"):
        load_npz(out_of_range)


# ----------------------------------------------------------------------------- colour order and crop


def test_red_is_channel0_from_rgb_array_and_from_bgr_png(tmp_path: Path) -> None:
    from_npz = load_npz(red_rgb_npz(tmp_path)).to_inputs()
    root = tmp_path / "red"
    (root / "r").mkdir(parents=True)
    cv2.imwrite(str(root / "r" / "0.png"), sign_image(32, 32, (0, 0, 32, 32), fg=RED_BGR))
    from_png = load_image_folder(root)
    assert from_png.color_order == "BGR"
    x = from_png.to_inputs(PreprocessConfig(color_order="RGB"))  # the container's order wins over cfg's
    for arr in (from_npz[0], x[0]):
        assert np.all(arr[0] == 1.0) and np.all(arr[1:] == 0.0)


def test_gtsrb_training_layout(gtsrb_root: Path) -> None:
    d = load_gtsrb_dir(gtsrb_root, "train")
    assert d.class_names == GTSRB_CLASSES and len(GTSRB_CLASSES) == 43
    assert GTSRB_CLASSES[14] == "Stop" and GTSRB_CLASSES[13] == "Yield"
    assert len(d) == 12 and d.color_order == "BGR" and d.images is None
    assert d.labels.tolist() == [13] * 6 + [14] * 6
    assert d.groups.tolist() == [13000] * 3 + [13001] * 3 + [14000] * 3 + [14001] * 3
    assert d.box(0) == (5.0, 4.0, 26.0, 26.0)  # Roi.X2/Y2 inclusive
    assert d.paths[7].name == "00000_00001.ppm" and d.paths[7].parent.name == "00014"


def test_box_crop_is_mostly_the_sign(gtsrb_root: Path) -> None:
    d = load_gtsrb_dir(gtsrb_root, "train")
    x = d.to_inputs(PreprocessConfig(input_size=16))
    assert x.shape == (12, 3, 16, 16) and x.min() >= 0.0 and x.max() <= 1.0
    red = (x[6:, 0] > 0.9) & (x[6:, 2] < 0.1)  # class 14 signs are red on blue
    assert red.mean() > 0.6
    green = (x[:6, 1] > 0.9) & (x[:6, 0] < 0.1)
    assert green.mean() > 0.6
    whole = LabeledImages(d.class_names, d.labels, d.color_order, paths=d.paths).to_inputs()
    assert ((whole[6:, 0] > 0.9) & (whole[6:, 2] < 0.1)).mean() < red.mean()  # without the box: more background


def test_gtsrb_test_layout_and_gt_location(gtsrb_root: Path) -> None:
    d = load_gtsrb_dir(gtsrb_root, "test")
    assert d.labels.tolist() == [14, 13, 14] and d.groups.tolist() == [0, 1, 2]
    assert d.box(1) == (3.0, 3.0, 24.0, 24.0)
    gt = gtsrb_root / "GT-final_test.csv"
    gt.rename(gtsrb_root / "Final_Test" / "Images" / gt.name)
    assert load_gtsrb_dir(gtsrb_root, "test").labels.tolist() == [14, 13, 14]
    (gtsrb_root / "Final_Test" / "Images" / gt.name).unlink()
    with pytest.raises(SignguardError, match="GT-final_test.csv"):
        load_gtsrb_dir(gtsrb_root, "test")


def test_gtsrb_errors_name_file_and_field(gtsrb_root: Path, tmp_path: Path) -> None:
    csv_path = gtsrb_root / "Final_Training" / "Images" / "00014" / "GT-00014.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("ClassId", "Class"))
    with pytest.raises(SignguardError, match=r"GT-00014\.csv.*ClassId"):
        load_gtsrb_dir(gtsrb_root)
    csv_path.write_text(text.replace(";14", ";43", 1))
    with pytest.raises(SignguardError, match=r"GT-00014\.csv:2: ClassId: 43"):
        load_gtsrb_dir(gtsrb_root)
    csv_path.write_text(text.replace("00000_00000.ppm", "missing.ppm"))
    with pytest.raises(SignguardError, match=r"GT-00014\.csv:2: Filename.*missing\.ppm"):
        load_gtsrb_dir(gtsrb_root)
    with pytest.raises(SignguardError, match="Final_Training"):
        load_gtsrb_dir(tmp_path / "empty")


# ----------------------------------------------------------------------------- LISA


def test_lisa_layout(lisa_root: Path) -> None:
    d = load_lisa(lisa_root)
    assert d.class_names == LISA_CLASSES
    stop, yld = LISA_CLASSES.index("stop"), LISA_CLASSES.index("yield")
    assert d.labels.tolist() == [stop, stop, yld, stop, stop]  # the noRightTurn row is dropped
    assert d.box(0) == (10.0, 8.0, 20.0, 20.0) and d.box(2) == (40.0, 10.0, 20.0, 20.0)
    assert d.paths[2] == d.paths[3] and d.box(2) != d.box(3)  # two signs in one frame
    g = d.groups
    assert g[0] == g[1] and len({g[0], g[2], g[3], g[4]}) == 4
    x = d.to_inputs(progress=True)
    assert x.shape == (5, 3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
    two = load_lisa(lisa_root, classes=["yield", "stop"])
    assert two.class_names == ["yield", "stop"] and two.labels.tolist() == [1, 1, 0, 1, 1]


def test_lisa_errors(lisa_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SignguardError, match="allAnnotations.csv"):
        load_lisa(tmp_path)
    with pytest.raises(SignguardError, match=r"allAnnotations\.csv.*Annotation tag"):
        load_lisa(lisa_root, classes=["speedLimit65"])
    csv_path = lisa_root / "allAnnotations.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("Upper left corner X", "Upper left X"))
    with pytest.raises(SignguardError, match=r"allAnnotations\.csv.*Upper left corner X"):
        load_lisa(lisa_root)
    csv_path.write_text(text.replace(";stop;10;8;30", ";stop;ten;8;30", 1))
    with pytest.raises(SignguardError, match=r"allAnnotations\.csv:2: Upper left corner X.*'ten'"):
        load_lisa(lisa_root)


# ----------------------------------------------------------------------------- folders


def test_image_folder(folder_root: Path) -> None:
    d = load_image_folder(folder_root)
    assert d.class_names == ["stop", "yield"] and d.labels.tolist() == [0, 0, 1]
    assert d.boxes is None and d.groups is None and [p.suffix for p in d.paths] == [".png", ".png", ".jpg"]
    ordered = load_image_folder(folder_root, classes=["yield", "other", "stop"])
    assert ordered.class_names == ["yield", "other", "stop"] and ordered.labels.tolist() == [0, 2, 2]
    with pytest.raises(SignguardError, match="'yield'"):
        load_image_folder(folder_root, classes=["stop"])
    (folder_root / "empty").mkdir()
    with pytest.raises(SignguardError, match="empty"):
        load_image_folder(folder_root)


def test_unreadable_image_names_path(folder_root: Path) -> None:
    (folder_root / "stop" / "0.png").write_bytes(b"not a png")
    d = load_image_folder(folder_root)
    with pytest.raises(SignguardError, match=r"0\.png"):
        d.image(0)
    with pytest.raises(SignguardError, match=r"0\.png"):
        d.to_inputs()


# ----------------------------------------------------------------------------- container and split


def grouped(n_groups: int = 40, per_group: int = 5, n_classes: int = 4) -> LabeledImages:
    groups = np.repeat(np.arange(n_groups) * 7 + 3, per_group)
    labels = np.repeat(np.arange(n_groups) % n_classes, per_group)
    images = np.zeros((len(labels), 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    return LabeledImages([str(c) for c in range(n_classes)], labels, "RGB", images=images, groups=groups)


def test_split_by_group_is_leak_free_stratified_and_deterministic() -> None:
    data = grouped()
    train, val = split_by_group(data, 0.25, seed=1)
    assert len(train) + len(val) == len(data)
    assert not set(train.groups.tolist()) & set(val.groups.tolist())
    assert sorted(np.bincount(val.labels).tolist()) == [15, 15, 15, 15]  # 25% of each class's 10 groups, rounded up
    again_train, again_val = split_by_group(data, 0.25, seed=1)
    assert np.array_equal(val.groups, again_val.groups) and np.array_equal(train.images, again_train.images)
    other = split_by_group(data, 0.25, seed=2)[1]
    assert not np.array_equal(other.groups, val.groups)
    single = LabeledImages(["a"], np.zeros(3), "RGB", images=np.zeros((3, 2, 2, 3), np.uint8), groups=np.ones(3))
    assert len(split_by_group(single, 0.5, 0)[1]) == 0  # one group: it stays in train
    assert len(split_by_group(data, 0.0, 0)[1]) == 0
    tiny = split_by_group(data, 0.01, 0)[1]  # a tiny fraction still gives every class one val group
    assert np.bincount(tiny.labels).tolist() == [5] * 4


def test_split_without_groups_splits_samples() -> None:
    data = grouped()
    data.groups = None
    train, val = split_by_group(data, 0.2, seed=0)
    assert len(val) == 40 and len(train) == 160 and np.bincount(val.labels).tolist() == [10] * 4
    with pytest.raises(ConfigError, match="val_fraction"):
        split_by_group(data, 1.5, seed=0)


def test_subset_and_validation() -> None:
    data = grouped()
    sub = data.subset(np.array([3, 0]))
    assert sub.labels.tolist() == [0, 0] and sub.images[0, 0, 0, 0] == 3 and sub.groups.tolist() == [3, 3]
    assert len(data.subset(data.labels == 1)) == 50
    with pytest.raises(SignguardError, match="out of range"):
        LabeledImages(["a"], np.array([1]), "RGB", images=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(SignguardError, match="color_order"):
        LabeledImages(["a"], np.array([0]), "rgb", images=np.zeros((1, 2, 2, 3), np.uint8))


# ----------------------------------------------------------------------------- config dispatch


def test_load_dataset_dispatch(tmp_path: Path, folder_root: Path) -> None:
    red_rgb_npz(tmp_path)
    assert len(load_dataset({"kind": "npz", "path": "tiny.npz", "split": "test"}, base_dir=tmp_path)) == 2
    assert load_dataset({"kind": "folder", "path": str(folder_root)}).class_names == ["stop", "yield"]
    with pytest.raises(ConfigError, match=r"data\.kind.*'coco'"):
        load_dataset({"kind": "coco", "path": "x"})
    with pytest.raises(ConfigError, match=r"data\.path"):
        load_dataset({"kind": "npz"})
    with pytest.raises(ConfigError, match=r"data\.split"):
        load_dataset({"kind": "gtsrb", "path": "x", "split": "val"})
    with pytest.raises(ConfigError, match="split"):
        load_dataset({"kind": "folder", "path": str(folder_root), "split": "train"})


# ----------------------------------------------------------------------------- the real GTSRB npz


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_NPZ.is_file(), reason="real data not present: %s" % REAL_NPZ)
def test_real_gtsrb32_npz() -> None:
    train, test = load_npz(REAL_NPZ, "train"), load_npz(REAL_NPZ, "test")
    assert len(train) == 13070 and len(test) == 12630
    assert train.images.shape[1:] == (32, 32, 3) and len(train.class_names) == 43
    assert "stop" in train.class_names[14].lower() and "yield" in train.class_names[13].lower()
    fit, val = split_by_group(train, 0.1, seed=0)
    assert not set(np.unique(fit.groups)) & set(np.unique(val.groups))
    assert 0.07 < len(val) / len(train) < 0.13 and set(np.unique(val.labels)) == set(range(43))
    x = test.subset(np.arange(64)).to_inputs()
    assert x.shape == (64, 3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
