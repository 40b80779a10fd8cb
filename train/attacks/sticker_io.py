"""Printable outputs of the RP2 sticker attack, and a preview grid of attacked views.

Why: RP2 (Eykholt et al., "Robust Physical-World Attacks on Deep Learning
Visual Classification", CVPR 2018) optimises the sticker in sign-template
coordinates; the physical test only means something if the print has the
optimised colours at the optimised place and size.  So the sticker is
upsampled nearest-neighbour (no colour that was not optimised is invented),
written at the sign's physical size -- a PNG whose pixel count and DPI
metadata give that size, and a PDF whose page *is* that size -- beside its cut
mask and a JSON sidecar with the physical numbers and the files' SHA-256.
Every file is written atomically (:mod:`edge.fileio`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge.errors import SignguardError, require
from edge.fileio import PathLike, atomic_write_bytes, atomic_write_json

MM_PER_INCH = 25.4
# Size of one preview cell: image plus a line of title.
PREVIEW_CELL_INCHES = (1.6, 1.8)


def _need(module: str) -> Any:
    """Import an optional plotting dependency, naming the install command when it is missing."""
    return require(module, f"{module} is needed for sticker/preview output: pip install 'signguard[train]'")


def _check_unit_floats(a: object, name: str, fn: str) -> np.ndarray:
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all() or arr.size and (
            arr.min() < 0.0 or arr.max() > 1.0):
        rng = f"[{arr.min():.3g}, {arr.max():.3g}]" if arr.size and np.issubdtype(arr.dtype, np.number) else "n/a"
        raise SignguardError(f"{fn}: {name} must be finite numbers in [0, 1], got dtype {arr.dtype} range {rng}")
    return arr.astype(np.float64)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255.0).astype(np.uint8)


def _png_bytes(pixels: np.ndarray, dpi: int) -> bytes:
    """PNG with a pHYs chunk, so print dialogs pick the physical size (OpenCV cannot write one)."""
    image = _need("PIL.Image")
    buf = io.BytesIO()
    image.fromarray(pixels).save(buf, format="PNG", dpi=(dpi, dpi))
    return buf.getvalue()


def _pdf_bytes(rgba: np.ndarray, width_in: float, dpi: int) -> bytes:
    """One page exactly ``width_in`` square, the image filling it (no margins, nearest-neighbour)."""
    figure = _need("matplotlib.figure")
    fig = figure.Figure(figsize=(width_in, width_in), facecolor="none")
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.imshow(rgba, interpolation="nearest", extent=(0.0, 1.0, 0.0, 1.0), aspect="auto")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", dpi=dpi, facecolor="none", metadata={"CreationDate": None})  # reproducible
    return buf.getvalue()


def save_sticker(out_dir: PathLike, sticker_rgb: np.ndarray, mask: np.ndarray, sign_width_mm: float, dpi: int,
                 meta: Dict[str, Any]) -> Dict[str, Path]:
    """Write ``sticker.png``, ``sticker.pdf``, ``mask.png`` and ``sticker.json`` to ``out_dir``.

    Args:
        out_dir: folder (created if missing).
        sticker_rgb: (S, S, 3) RGB in [0, 1] in sign-template coordinates
            (the whole template; only ``mask`` is printed).
        mask: (S, S) bool, True where the sticker is.
        sign_width_mm: physical width of the sign the S-pixel template spans.
        dpi: print resolution; the PNGs are ``round(sign_width_mm / 25.4 * dpi)``
            pixels across, which must be at least S (fewer would drop
            optimised pixels).
        meta: JSON-serialisable attack description (target, model, seed, ...),
            stored under ``"meta"`` in the sidecar.

    ``sticker.png`` is RGBA (alpha 255 inside the mask, 0 and white RGB
    outside) with DPI metadata; ``mask.png`` is the same-size 0/255 grey cut
    mask; ``sticker.pdf`` is one page of exactly ``sign_width_mm`` square.

    Returns:
        ``{"sticker_png", "sticker_pdf", "mask_png", "json"}`` -> paths.
    """
    fn = "save_sticker"
    rgb = _check_unit_floats(sticker_rgb, "sticker_rgb", fn)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] != rgb.shape[1] or rgb.shape[0] < 1:
        raise SignguardError(f"{fn}: sticker_rgb must be a square (S, S, 3) RGB array, got shape {rgb.shape}")
    size = rgb.shape[0]
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (size, size):
        raise SignguardError(f"{fn}: mask must be a bool array of shape ({size}, {size}) like sticker_rgb, "
                             f"got dtype {mask.dtype} shape {mask.shape}")
    if isinstance(sign_width_mm, bool) or not isinstance(sign_width_mm, (int, float, np.number)) or not (
            math.isfinite(float(sign_width_mm)) and float(sign_width_mm) > 0):
        raise SignguardError(f"{fn}: sign_width_mm must be a finite number > 0, got {sign_width_mm!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or dpi < 1:
        raise SignguardError(f"{fn}: dpi must be a positive integer, got {dpi!r}")
    width_mm, dpi = float(sign_width_mm), int(dpi)
    pixels = int(round(width_mm / MM_PER_INCH * dpi))
    if pixels < size:
        raise SignguardError(f"{fn}: dpi = {dpi} gives {pixels} pixels across {width_mm:g} mm, fewer than the "
                             f"{size}-pixel sticker; use dpi >= {math.ceil(size * MM_PER_INCH / width_mm)}")
    if not isinstance(meta, dict):
        raise SignguardError(f"{fn}: meta must be a dict, got {type(meta).__name__}")
    try:
        json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise SignguardError(f"{fn}: meta must be JSON-serialisable: {e}") from e

    # Nearest neighbour by pixel centres: print pixel j samples template pixel floor((j + 0.5) * S / pixels).
    src = np.minimum(((np.arange(pixels) + 0.5) * size / pixels).astype(np.int64), size - 1)
    big_mask = mask[np.ix_(src, src)]
    rgba = np.full((pixels, pixels, 4), 255, np.uint8)
    rgba[big_mask, :3] = _to_uint8(rgb)[np.ix_(src, src)][big_mask]
    rgba[..., 3] = np.where(big_mask, 255, 0).astype(np.uint8)

    out = Path(out_dir)
    blobs = {
        "sticker.png": _png_bytes(rgba, dpi),
        "sticker.pdf": _pdf_bytes(rgba, width_mm / MM_PER_INCH, dpi),
        "mask.png": _png_bytes(rgba[..., 3].copy(), dpi),
    }
    for name, data in blobs.items():
        atomic_write_bytes(out / name, data)
    atomic_write_json(out / "sticker.json", {
        "meta": meta,
        "sign_width_mm": width_mm,
        "dpi": dpi,
        "template_pixels": size,
        "print_pixels": pixels,
        "png_width_mm": pixels / dpi * MM_PER_INCH,  # differs from sign_width_mm by < half a print pixel
        "pdf_width_pt": width_mm / MM_PER_INCH * 72.0,
        "mask_fraction": float(mask.mean()),
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()},
    })
    return {"sticker_png": out / "sticker.png", "sticker_pdf": out / "sticker.pdf", "mask_png": out / "mask.png",
            "json": out / "sticker.json"}


def preview_grid(path: PathLike, images: np.ndarray, titles: List[str], ncols: int = 8, dpi: int = 100) -> Path:
    """Write a PNG grid of attacked views, ``ncols`` per row, each titled (e.g. ``"pred: speedLimit45"``).

    Args:
        path: PNG to write (atomically).
        images: (N, 3, H, W) RGB in [0, 1], N >= 1.
        titles: N strings.
        ncols: cells per row (fewer when N < ncols).
        dpi: the grid is ``cols * 1.6`` by ``rows * 1.8`` inches at this DPI
            (:data:`PREVIEW_CELL_INCHES`).
    """
    fn = "preview_grid"
    imgs = _check_unit_floats(images, "images", fn)
    if imgs.ndim != 4 or imgs.shape[1] != 3 or imgs.shape[0] < 1:
        raise SignguardError(f"{fn}: images must be a (N, 3, H, W) array with N >= 1, got shape {imgs.shape}")
    if not isinstance(titles, (list, tuple)) or len(titles) != len(imgs) or not all(
            isinstance(t, str) for t in titles):
        raise SignguardError(f"{fn}: titles must be a list of {len(imgs)} strings, got {titles!r}")
    for name, value in (("ncols", ncols), ("dpi", dpi)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SignguardError(f"{fn}: {name} must be a positive integer, got {value!r}")
    cols = min(int(ncols), len(imgs))
    rows = -(-len(imgs) // cols)
    figure = _need("matplotlib.figure")
    fig = figure.Figure(figsize=(cols * PREVIEW_CELL_INCHES[0], rows * PREVIEW_CELL_INCHES[1]), facecolor="white")
    for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
        ax.set_axis_off()
        if i < len(imgs):
            ax.imshow(imgs[i].transpose(1, 2, 0), interpolation="nearest", vmin=0.0, vmax=1.0)
            ax.set_title(titles[i], fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=int(dpi))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_sticker(sticker_dir: PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a sticker written by :func:`save_sticker` back at template resolution, after checking hashes.

    Returns ``(rgb (3, S, S) in [0, 1], region (S, S) bool, sticker.json)``.  Why from the PNG and not a
    saved array: the PNG is what gets printed, so re-rendering it is what a verification should test.
    """
    import cv2

    d = Path(sticker_dir)
    meta_path = d / "sticker.json"
    if not meta_path.is_file():
        raise SignguardError(f"{meta_path}: no sticker.json (expected a folder written by `signguard attack rp2`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        digest, size = meta["sha256"]["sticker.png"], int(meta["template_pixels"])
    except (ValueError, KeyError, TypeError) as e:
        raise SignguardError(f"{meta_path}: not a sticker sidecar ({e})") from None
    data = (d / "sticker.png").read_bytes() if (d / "sticker.png").is_file() else b""
    if hashlib.sha256(data).hexdigest() != digest:
        raise SignguardError(f"{d / 'sticker.png'}: missing or SHA-256 mismatch with sticker.json")
    rgba = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    # back to template pixels: sample each template pixel's centre in the print raster
    pixels = rgba.shape[0]
    src = np.minimum(((np.arange(size) + 0.5) * pixels / size).astype(np.int64), pixels - 1)
    small = rgba[np.ix_(src, src)]
    rgb = small[..., 2::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
    return rgb, small[..., 3] > 127, meta


def load_template_sticker(sticker_dir: PathLike) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """A printed sticker as the renderers paste it (:func:`train.data.compose.check_sticker`): ``((bgr uint8
    (T, T, 3), alpha float32 (T, T)), sticker.json)`` at the sign template's size, upsampled nearest-neighbour as
    the print is -- the one conversion the drive-by renderer, the demo and the field test share."""
    import cv2

    from ..data.signs import TEMPLATE_SIZE

    rgb, region, meta = load_sticker(sticker_dir)
    t = TEMPLATE_SIZE
    bgr = cv2.resize(np.ascontiguousarray(rgb[::-1].transpose(1, 2, 0)), (t, t), interpolation=cv2.INTER_NEAREST)
    alpha = cv2.resize(region.astype(np.float32), (t, t), interpolation=cv2.INTER_NEAREST)
    return (np.clip(np.rint(bgr * 255.0), 0, 255).astype(np.uint8), alpha), meta
