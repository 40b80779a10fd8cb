"""The loop's output stage: an annotated copy of each frame, written to a video file and/or shown in a window.

Drawn on a copy, so the frame the loop logged and recorded is never changed:
the expanded crop the model saw (grey), the tight sign box (green, red when
the prediction disagrees with the ground truth), the label and the FPS.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np

from .rois import Roi

log = logging.getLogger(__name__)


def emit(img: np.ndarray, sink: Any, window: bool) -> bool:
    """Write an annotated frame to the sink and/or a window; returns False once a window cannot be shown."""
    if sink is not None:
        sink.write(img)
    if window:
        try:
            cv2.imshow("signguard", img)
            cv2.waitKey(1)
        except cv2.error as e:
            log.warning("cannot show a window (%s); continuing without", str(e).strip()[:120])
            return False
    return window


def render(frame: np.ndarray, signs: List[Tuple[Optional[Roi], Optional[Tuple[int, int, int, int]],
                                                 List[Dict[str, Any]], Optional[str], Dict[str, Any]]],
            fps: float) -> np.ndarray:
    """Annotated copy: per sign the expanded crop (grey), the tight box (green, or red when it disagrees with
    gt) and its label (with the track id under ``--roi detect``, and "perturbation detected -> rectified" where
    a gate fired); the FPS."""
    out = frame.copy()
    for roi, crop, top, gt, extra in signs:
        if roi is None or crop is None:
            continue
        x, y, w, h = crop
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (160, 160, 160), 1)
        bx, by, bw, bh = (int(round(v)) for v in roi.box)
        ok = gt is None or (bool(top) and top[0]["class"] == gt)
        color = (0, 200, 0) if ok else (0, 0, 255)
        cv2.rectangle(out, (bx, by), (bx + bw - 1, by + bh - 1), color, 2)
        if top:
            track = "#%d " % extra["track_id"] if "track_id" in extra else ""
            label = "%s%s %.2f" % (track, top[0]["class"], top[0]["score"] or 0.0)
            ty = y - 5 if y - 5 >= 30 else y + h + 14  # below the box when above would hit the FPS text
            cv2.putText(out, label, (max(0, x), ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
            if (extra.get("gate") or {}).get("fired"):  # the DCT-SVM gate classified the rectified crop
                gy = ty + 14 if ty + 14 < out.shape[0] else ty - 14
                cv2.putText(out, "perturbation detected -> rectified", (max(0, x), gy), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4, (0, 165, 255), 1, cv2.LINE_AA)
    cv2.putText(out, "%.1f FPS" % fps, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out
