"""Contact sheet: a PNG grid of rendered samples as the model sees them, one row per class.

Why: the only honest check of a procedural renderer is to look at what the
network gets -- the 32x32 crop produced by THE shared preprocessing -- and
compare it with real photographs.  Each cell is ``edge.preprocess`` of a
``render_sign`` sample, upscaled (nearest neighbour, so no detail is
invented) to ``cell`` pixels.  OpenCV only, no matplotlib.

    python -m train.data.contact_sheet /tmp/sheet.png --per-class 12
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np

from edge.errors import SignguardError
from edge.preprocess import PreprocessConfig, preprocess

from .classes import LISA_CLASSES
from .render import RenderConfig, render_sign

_LABEL_W = 190
_RENDER = RenderConfig()
_PREPROCESS = PreprocessConfig(color_order="BGR")


def sample_inputs(class_id: int, n: int, seed: int = 0, cfg: RenderConfig = _RENDER,
                  pp: PreprocessConfig = _PREPROCESS) -> np.ndarray:
    """(n, S, S, 3) uint8 BGR model inputs of one class (sample i uses ``default_rng([seed, class_id, i])``)."""
    pp = pp.with_color_order("BGR")
    out = []
    for i in range(n):
        s = render_sign(class_id, np.random.default_rng([seed, class_id, i]), cfg)
        x = preprocess(s.image, s.box, pp)  # (3, S, S) RGB in [0, 1]
        out.append(np.round(x.transpose(1, 2, 0)[:, :, ::-1] * 255.0).astype(np.uint8))
    return np.stack(out)


def write_contact_sheet(path: Path, n_per_class: int = 8, seed: int = 0, cfg: RenderConfig = _RENDER,
                        cell: int = 64) -> Path:
    """Write the grid PNG to ``path`` and return it."""
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise SignguardError("contact sheet: n_per_class must be a positive integer, got %r" % (n_per_class,))
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 8:
        raise SignguardError("contact sheet: cell must be an integer >= 8 pixels, got %r" % (cell,))
    rows: List[np.ndarray] = []
    for c, name in enumerate(LISA_CLASSES):
        label = np.full((cell, _LABEL_W, 3), 255, np.uint8)
        cv2.putText(label, "%d %s" % (c, name), (4, cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
        cells = [cv2.resize(x, (cell, cell), interpolation=cv2.INTER_NEAREST) for x in sample_inputs(c, n_per_class,
                                                                                                    seed, cfg)]
        rows.append(np.concatenate([label] + cells, axis=1))
    sheet = np.concatenate(rows, axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise SignguardError("contact sheet: could not write %s (is the suffix .png?)" % path)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(write_contact_sheet(args.path, args.per_class, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
