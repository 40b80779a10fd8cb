"""The classical baseline: colour-threshold + shape proposals with OpenCV (no learning).

Why it is here: before a learned localizer earns its place on the device it
must beat what a traffic-sign pipeline did for years -- threshold the sign
paints in HSV (red, yellow / yellow-green, white), take the connected blobs,
and keep those whose outline looks like a sign (size, aspect ratio, a convex
hull that fills at least ~half its box with 3-10 corners, paint covering most
of the hull; a white blob must hold dark legend pixels).  ``reports/localizer`` measures both on
the same held-out scenes.  The score of a proposal is its shape fit
(solidity x hull fill), so AP can be computed like the detector's.
numpy + OpenCV only.
"""

from __future__ import annotations

from typing import List, Tuple

import cv2
import numpy as np

from edge.localizer import nms

# HSV ranges (OpenCV: H in 0..179): the sign paints of train/data/signs.py under the renderer's lighting.
_RANGES = {
    "red": [((0, 90, 50), (10, 255, 255)), ((165, 90, 50), (179, 255, 255))],
    "yellow": [((14, 100, 90), (45, 255, 255))],
    "white": [((0, 0, 150), (179, 45, 255))],
}


def _masks(frame: np.ndarray) -> List[Tuple[str, np.ndarray]]:
    hsv = cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)
    out = []
    kernel = np.ones((3, 3), np.uint8)
    for name, ranges in _RANGES.items():
        m = np.zeros(frame.shape[:2], np.uint8)
        for lo, hi in ranges:
            m |= cv2.inRange(hsv, np.array(lo, np.uint8), np.array(hi, np.uint8))
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
        out.append((name, m))
    return out


def classical_proposals(frame: np.ndarray, min_px: float = 8.0, max_px: float = 300.0, nms_iou: float = 0.45
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Sign proposals of one BGR frame: boxes (k, 4) ``(x, y, w, h)`` and scores (k,) in [0, 1]."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    boxes, scores = [], []
    for name, mask in _masks(frame):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            if not (min_px <= w <= max_px and min_px <= h <= max_px) or not 0.5 <= w / h <= 2.0:
                continue
            hull_pts = cv2.convexHull(c)
            hull = cv2.contourArea(hull_pts)
            if hull <= 0:
                continue
            # the outline is judged by its convex hull (a legend cut into the paint must not reject the sign):
            # the hull of a sign fills >= half its box (diamond, triangle), and the paint most of the hull
            fill, solidity = hull / float(w * h), cv2.contourArea(c) / hull
            corners = len(cv2.approxPolyDP(hull_pts, 0.04 * cv2.arcLength(hull_pts, True), True))
            if fill < 0.42 or solidity < 0.55 or not 3 <= corners <= 10:
                continue
            if name == "white":  # a white panel is a sign only with a dark legend inside
                inner = gray[y + h // 5:y + h - h // 5, x + w // 5:x + w - w // 5]
                dark = float((inner < 0.5 * float(np.median(gray[y:y + h, x:x + w]))).mean()) if inner.size else 0.0
                if not 0.05 <= dark <= 0.6:
                    continue
            boxes.append((float(x), float(y), float(w), float(h)))
            scores.append(float(np.clip(solidity * fill, 0.0, 1.0)))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0)
    b, s = np.array(boxes), np.array(scores)
    keep = nms(b, s, nms_iou)
    return b[keep], s[keep]
