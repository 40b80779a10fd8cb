"""Detection metrics of the localizer: AP@0.5 and recall by sign size, false positives per frame.

Pure numpy.  Definitions (COCO's, Lin et al. 2014, at one IoU threshold):

- detections are matched to ground truth greedily in order of decreasing
  score; a detection is a true positive when its best still-unmatched box
  has IoU >= ``iou`` (0.5), else a false positive;
- **by size bin** (sign width in frame pixels), boxes outside the bin are
  *ignored*: a detection matched to one counts neither way, and an
  unmatched detection whose own width is outside the bin is ignored too --
  COCO's area-range rule, with width instead of area because the issue's
  target is stated in widths;
- **AP** is the area under the precision envelope sampled at 101 recall
  points (COCO); **recall** and **precision** at an operating score
  threshold are reported beside it; **FP per frame** counts unmatched
  detections at the threshold over all frames (on sign-free frames every
  detection is one).

Empty sets give NaN, never an exception (as :mod:`train.eval.metrics`).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from edge.localizer import box_iou

SIZE_BINS: Dict[str, Tuple[float, float]] = {
    "10-16": (0.0, 16.0), "16-24": (16.0, 24.0), "24-48": (24.0, 48.0), "48-96": (48.0, 96.0),
    "96+": (96.0, float("inf")), ">=24": (24.0, float("inf")), "all": (0.0, float("inf")),
}

Dets = Tuple[np.ndarray, np.ndarray]  # boxes (k, 4) xywh, scores (k,)


def match_image(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, gt_ignore: np.ndarray,
                iou: float = 0.5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy COCO matching of one image: per detection (tp, matched-an-ignored-box), per gt whether matched.

    Non-ignored boxes are preferred; a detection overlapping only ignored
    boxes is flagged so the caller can drop it.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    gt_ignore = np.asarray(gt_ignore, bool).reshape(-1)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.zeros(len(boxes), bool)
    on_ignored = np.zeros(len(boxes), bool)
    taken = np.zeros(len(gt), bool)
    if len(gt) == 0 or len(boxes) == 0:
        return tp, on_ignored, taken
    ious = box_iou(boxes, gt)
    for d in order:
        for want_ignored in (False, True):  # real boxes before ignored ones
            cand = np.where(~taken & (gt_ignore == want_ignored) & (ious[d] >= iou))[0]
            if len(cand):
                j = cand[np.argmax(ious[d, cand])]
                taken[j] = True
                tp[d], on_ignored[d] = not want_ignored, want_ignored
                break
    return tp, on_ignored, taken


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """COCO 101-point interpolated AP of scored detections (``tp`` flags) against ``n_gt`` boxes."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = np.asarray(tp, bool)[order]
    ctp, cfp = np.cumsum(hits), np.cumsum(~hits)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    out = 0.0
    for r in np.linspace(0, 1, 101):
        k = np.searchsorted(recall, r, side="left")
        out += envelope[k] if k < len(envelope) else 0.0
    return float(out / 101)


def evaluate(dets: Sequence[Dets], gts: Sequence[np.ndarray], threshold: float, iou: float = 0.5,
             bins: Dict[str, Tuple[float, float]] = SIZE_BINS) -> Dict[str, object]:
    """AP / recall / precision by size bin and FP per frame for detections (scored down to any threshold).

    ``dets[i]`` = (boxes, scores) of image i (keep low-score detections:
    AP needs them); ``gts[i]`` = its true boxes; ``threshold`` is the
    operating point for recall, precision and FP per frame.
    """
    if len(dets) != len(gts):
        raise ValueError("evaluate: %d detection lists for %d images" % (len(dets), len(gts)))
    out: Dict[str, object] = {"n_frames": len(gts), "threshold": float(threshold), "iou": float(iou)}
    per_bin: Dict[str, Dict[str, float]] = {}
    for name, (lo, hi) in bins.items():
        scores: List[np.ndarray] = []
        flags: List[np.ndarray] = []
        n_gt = hit_at_thr = 0
        for (boxes, sc), gt in zip(dets, gts):
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
            sc = np.asarray(sc, np.float64).reshape(-1)
            gt = np.asarray(gt, np.float64).reshape(-1, 4)
            ignore = (gt[:, 2] < lo) | (gt[:, 2] >= hi)
            tp, on_ign, _ = match_image(boxes, sc, gt, ignore, iou)
            out_of_bin = (boxes[:, 2] < lo) | (boxes[:, 2] >= hi)
            keep = ~on_ign & ~(~tp & out_of_bin)
            scores.append(sc[keep])
            flags.append(tp[keep])
            n_gt += int((~ignore).sum())
            keep_thr = sc >= threshold
            tp_t, _, taken_t = match_image(boxes[keep_thr], sc[keep_thr], gt, ignore, iou)
            hit_at_thr += int((taken_t & ~ignore).sum())
        s = np.concatenate(scores) if scores else np.zeros(0)
        f = np.concatenate(flags) if flags else np.zeros(0, bool)
        at = s >= threshold
        n_det = int(at.sum())
        per_bin[name] = {
            "n_gt": n_gt,
            "ap50": average_precision(s, f, n_gt),
            "recall": hit_at_thr / n_gt if n_gt else float("nan"),
            "precision": float(f[at].sum()) / n_det if n_det else float("nan"),
        }
    out["bins"] = per_bin
    fps = 0
    for (boxes, sc), gt in zip(dets, gts):
        keep = np.asarray(sc) >= threshold
        tp, _, _ = match_image(np.asarray(boxes)[keep], np.asarray(sc)[keep], gt, np.zeros(len(gt), bool), iou)
        fps += int((~tp).sum())
    out["fp_per_frame"] = fps / len(gts) if len(gts) else float("nan")
    return out


def sweep_thresholds(dets: Sequence[Dets], gts: Sequence[np.ndarray], thresholds: Sequence[float],
                     min_width: float = 24.0, iou: float = 0.5) -> List[Dict[str, float]]:
    """Recall of signs >= ``min_width`` px and FP per frame at each threshold (to choose an operating point)."""
    rows = []
    for t in thresholds:
        hits = n = fps = 0
        for (boxes, sc), gt in zip(dets, gts):
            keep = np.asarray(sc) >= t
            b, s = np.asarray(boxes).reshape(-1, 4)[keep], np.asarray(sc)[keep]
            gt = np.asarray(gt, np.float64).reshape(-1, 4)
            tp, _, taken = match_image(b, s, gt, np.zeros(len(gt), bool), iou)
            big = gt[:, 2] >= min_width
            hits += int((taken & big).sum())
            n += int(big.sum())
            fps += int((~tp).sum())
        rows.append({"threshold": float(t), "recall": hits / n if n else float("nan"),
                     "fp_per_frame": fps / len(gts) if len(gts) else float("nan")})
    return rows
