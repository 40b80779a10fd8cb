"""Printable RP2 sticker files and the preview grid: physical size, exact colours, sidecar, errors.

Why these: a sticker printed at the wrong size or with resampled (blended)
colours is not the sticker that was optimised, and a sidecar whose hashes do
not match its files cannot vouch for a field test.  Nearest-neighbour
expectations come from Pillow's own NEAREST resize, an independent
implementation of the same pixel-centre rule.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edge.errors import SignguardError
from train.attacks.sticker_io import PREVIEW_CELL_INCHES, load_sticker, preview_grid, save_sticker

S = 16
META = {"attack": "rp2", "target": "speedLimit45", "seed": 3}


def sticker(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.random((S, S, 3))
    rgb[0, 0] = (0.0, 1.0, 0.5)  # exact ends of the range are legal
    mask = np.zeros((S, S), bool)
    mask[3:12, 2:14] = True
    mask[5, 0] = True
    return rgb, mask


def nearest(a: np.ndarray, pixels: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((pixels, pixels), Image.NEAREST))


def print_pixels(width_mm: float, dpi: int) -> int:
    return round(width_mm / 25.4 * dpi)


@pytest.mark.parametrize("width_mm, dpi", [(100.0, 150), (50.8, 96), (600.0, 30)])
def test_png_has_the_physical_size_at_the_dpi(tmp_path: Path, width_mm: float, dpi: int) -> None:
    rgb, mask = sticker()
    paths = save_sticker(tmp_path, rgb, mask, width_mm, dpi, META)
    pixels = print_pixels(width_mm, dpi)
    for key, mode in (("sticker_png", "RGBA"), ("mask_png", "L")):
        with Image.open(paths[key]) as im:
            assert im.size == (pixels, pixels) and im.mode == mode
            assert tuple(round(v) for v in im.info["dpi"]) == (dpi, dpi)  # pHYs chunk


def test_alpha_is_the_upsampled_mask_and_colours_are_exact(tmp_path: Path) -> None:
    rgb, mask = sticker()
    pixels = print_pixels(100.0, 150)  # 591: not a multiple of S
    paths = save_sticker(tmp_path, rgb, mask, 100.0, 150, META)
    rgba = np.asarray(Image.open(paths["sticker_png"]))
    alpha = nearest(mask.astype(np.uint8) * 255, pixels)
    assert np.array_equal(rgba[..., 3], alpha)
    inside = alpha == 255
    expected = nearest(np.round(rgb * 255).astype(np.uint8), pixels)
    assert np.array_equal(rgba[inside, :3], expected[inside])
    assert (rgba[~inside, :3] == 255).all()  # white (and transparent) outside the sticker
    palette = {tuple(c) for c in np.round(rgb[mask] * 255).astype(np.uint8)}
    assert {tuple(c) for c in rgba[inside, :3]} == palette  # every optimised colour, none invented
    assert np.array_equal(np.asarray(Image.open(paths["mask_png"])), alpha)


@pytest.mark.parametrize("width_mm, dpi", [(100.0, 150), (304.8, 50)])
def test_pdf_page_is_the_physical_size(tmp_path: Path, width_mm: float, dpi: int) -> None:
    rgb, mask = sticker()
    data = save_sticker(tmp_path, rgb, mask, width_mm, dpi, META)["sticker_pdf"].read_bytes()
    assert data.startswith(b"%PDF")
    boxes = re.findall(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\]", data)
    assert len(boxes) == 1
    x0, y0, x1, y1 = (float(v) for v in boxes[0])
    points = width_mm / 25.4 * 72
    assert abs((x1 - x0) - points) < 0.5 and abs((y1 - y0) - points) < 0.5


def test_json_sidecar_matches_the_files(tmp_path: Path) -> None:
    rgb, mask = sticker()
    paths = save_sticker(tmp_path / "out", rgb, mask, 100.0, 150, META)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["sticker.png", "sticker.pdf", "mask.png", "sticker.json"])  # no temp files left behind
    side = json.loads(paths["json"].read_text())
    assert side["meta"] == META
    assert (side["sign_width_mm"], side["dpi"], side["template_pixels"]) == (100.0, 150, S)
    assert side["print_pixels"] == print_pixels(100.0, 150)
    assert side["pdf_width_pt"] == pytest.approx(100.0 / 25.4 * 72)
    assert side["mask_fraction"] == pytest.approx(mask.mean())
    assert set(side["sha256"]) == {"sticker.png", "sticker.pdf", "mask.png"}
    for name, digest in side["sha256"].items():
        assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == digest


def test_same_sticker_gives_the_same_bytes(tmp_path: Path) -> None:
    rgb, mask = sticker()
    a = save_sticker(tmp_path / "a", rgb, mask, 100.0, 150, META)["json"]
    b = save_sticker(tmp_path / "b", rgb, mask, 100.0, 150, META)["json"]
    assert json.loads(a.read_text())["sha256"] == json.loads(b.read_text())["sha256"]


@pytest.mark.parametrize("n, ncols, rows, cols", [(5, 3, 2, 3), (3, 8, 1, 3), (2, 1, 2, 1)])
def test_preview_grid_is_a_png_of_the_expected_layout(tmp_path: Path, n: int, ncols: int, rows: int,
                                                      cols: int) -> None:
    images = np.random.default_rng(0).random((n, 3, 24, 24))
    path = preview_grid(tmp_path / "grid.png", images, [f"pred: speedLimit{45 + i}" for i in range(n)], ncols=ncols)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    img = cv2.imread(str(path))
    assert img is not None
    assert img.shape == (round(rows * PREVIEW_CELL_INCHES[1] * 100), round(cols * PREVIEW_CELL_INCHES[0] * 100), 3)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


@pytest.mark.parametrize("change, name", [
    (dict(mask=np.ones((S, S - 1), bool)), "mask"),
    (dict(mask=np.ones((S, S), np.uint8)), "mask"),
    (dict(sticker_rgb=np.full((S, S, 3), 1.01)), "sticker_rgb"),
    (dict(sticker_rgb=np.full((S, S, 3), -0.01)), "sticker_rgb"),
    (dict(sticker_rgb=np.full((S, S, 3), np.nan)), "sticker_rgb"),
    (dict(sticker_rgb=np.full((S, S, 3), 200, np.uint8)), "sticker_rgb"),
    (dict(sticker_rgb=np.zeros((S, S + 2, 3))), "sticker_rgb"),
    (dict(sticker_rgb=np.zeros((S, S))), "sticker_rgb"),
    (dict(sign_width_mm=0.0), "sign_width_mm"),
    (dict(sign_width_mm=-100.0), "sign_width_mm"),
    (dict(sign_width_mm=float("inf")), "sign_width_mm"),
    (dict(dpi=0), "dpi"),
    (dict(dpi=-72), "dpi"),
    (dict(dpi=150.5), "dpi"),
    (dict(dpi=2), "dpi"),  # 100 mm at 2 dpi = 8 pixels < S
    (dict(meta={"x": object()}), "meta"),
])
def test_save_sticker_bad_inputs_name_the_argument(tmp_path: Path, change: dict, name: str) -> None:
    rgb, mask = sticker()
    args = dict(sticker_rgb=rgb, mask=mask, sign_width_mm=100.0, dpi=150, meta=META)
    args.update(change)
    with pytest.raises(SignguardError, match=rf"\b{name}\b"):
        save_sticker(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("change, name", [
    (dict(images=np.full((2, 3, 8, 8), 1.5)), "images"),
    (dict(images=np.zeros((2, 8, 8, 3))), "images"),
    (dict(images=np.zeros((0, 3, 8, 8)), titles=[]), "images"),
    (dict(titles=["only one"]), "titles"),
    (dict(ncols=0), "ncols"),
])
def test_preview_grid_bad_inputs_name_the_argument(tmp_path: Path, change: dict, name: str) -> None:
    args = dict(images=np.zeros((2, 3, 8, 8)), titles=["a", "b"], ncols=8)
    args.update(change)
    with pytest.raises(SignguardError, match=rf"\b{name}\b"):
        preview_grid(tmp_path / "grid.png", **args)
    assert not (tmp_path / "grid.png").exists()


def test_load_sticker_reads_back_the_printed_pixels_and_checks_the_hash(tmp_path):
    rgb, mask = sticker()
    save_sticker(tmp_path, rgb, mask, 750.0, 150, META)
    got, region, meta = load_sticker(tmp_path)
    assert np.array_equal(region, mask) and meta["meta"] == META
    # inside the mask: the 8-bit colours that were printed (rgb is (S, S, 3), got is (3, S, S))
    assert np.array_equal(np.round(got.transpose(1, 2, 0)[mask] * 255), np.round(rgb[mask] * 255))
    png = tmp_path / "sticker.png"
    png.write_bytes(png.read_bytes()[:-8] + b"tampered")
    with pytest.raises(SignguardError, match="sticker.png"):
        load_sticker(tmp_path)
    with pytest.raises(SignguardError, match="sticker.json"):
        load_sticker(tmp_path / "nowhere")
