"""The field report's numbers: rates with Wilson intervals, size bins, per-track votes, paired comparison.

Why Wilson: a drive-by gives tens to hundreds of frames and attack success
rates near 0 or 1, where the textbook normal interval p +- z*sqrt(p(1-p)/n)
collapses to zero width or leaves [0, 1].  Wilson's score interval (Wilson,
JASA 1927) inverts the score test instead and stays inside [0, 1] with close
to nominal coverage at small n (Brown, Cai & DasGupta, Stat. Sci. 2001).

Frames of one drive are not independent draws (neighbouring frames see the
sign at nearly the same pose), so per-frame intervals are optimistic; the
per-track rows, where each track is one pass by the sign, are the honest
unit when a tracker runs.

Metric definitions (as in the attack papers, per classified sign record):
accuracy = pred == truth; untargeted success = pred != truth; targeted
success = pred == target, over records whose truth is not the target (with
no ground truth at all: over every classified record, i.e. every frame is
taken to show the attacked sign).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import SignguardError
from .field_log import FieldLog, SignRecord

Z95 = 1.959963984540054  # two-sided 95% standard normal quantile
DEFAULT_BINS = (24.0, 32.0, 48.0, 64.0, 96.0, 128.0)  # ROI width edges (px): 32 = the model's input side
METRIC_LABELS = {
    "accuracy": "accuracy",
    "targeted_success": "targeted success",
    "untargeted_success": "untargeted success",
    "gate_fired": "gate fired",
    "undetected_targeted_success": "targeted success, gate silent",
    "vote_accuracy": "track vote accuracy",
    "vote_targeted_success": "track vote targeted success",
}


def wilson(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; ``(nan, nan)`` when ``n == 0``."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError("wilson: need 0 <= k <= n, got k=%r n=%r" % (k, n))
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at k = 0 (k = n) the bound is exactly 0 (1); say so rather than carry the rounding error of centre - half
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def rate(flags: Iterable[bool]) -> Dict[str, Any]:
    """``{"k", "n", "rate", "ci"}`` of a sequence of outcomes (rate and ci NaN when empty)."""
    f = [bool(v) for v in flags]
    k, n = sum(f), len(f)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci": list(wilson(k, n))}


def parse_bins(text: str) -> Tuple[float, ...]:
    """``"24,32,48"`` -> strictly increasing positive edges (px); a one-line error otherwise."""
    try:
        edges = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SignguardError("--bins: expected comma-separated widths in pixels, got %r" % text) from None
    if not edges or any(not math.isfinite(e) or e <= 0 for e in edges) or any(
            b <= a for a, b in zip(edges, edges[1:])):
        raise SignguardError("--bins: expected strictly increasing positive widths in pixels, got %r" % text)
    return edges


def size_bin(width: float, edges: Sequence[float]) -> int:
    """Index of the half-open bin ``[edges[i-1], edges[i])`` holding ``width``: 0 below the first edge,
    ``len(edges)`` at or above the last."""
    return int(np.searchsorted(np.asarray(edges, dtype=float), float(width), side="right"))


def bin_label(i: int, edges: Sequence[float]) -> str:
    if i == 0:
        return "< %g" % edges[0]
    if i == len(edges):
        return ">= %g" % edges[-1]
    return "%g-%g" % (edges[i - 1], edges[i])


class Scoring:
    """Which records count for which metric, given the target class and whether any ground truth exists."""

    def __init__(self, target: Optional[str], has_gt: bool) -> None:
        self.target, self.has_gt = target, has_gt

    def labelled(self, recs: Sequence[SignRecord]) -> List[SignRecord]:
        return [r for r in recs if r.pred is not None and r.gt is not None]

    def attacked(self, recs: Sequence[SignRecord]) -> List[SignRecord]:
        """Records on which a targeted attack can succeed: truth known and not the target (or no truth at all)."""
        if self.has_gt:
            return [r for r in self.labelled(recs) if r.gt != self.target]
        return [r for r in recs if r.pred is not None]

    def metrics(self, recs: Sequence[SignRecord]) -> Dict[str, Dict[str, Any]]:
        out: Dict[str, Dict[str, Any]] = {}
        lab = self.labelled(recs)
        if self.has_gt:
            out["accuracy"] = rate(r.pred == r.gt for r in lab)
        if self.target is not None:
            att = self.attacked(recs)
            out["targeted_success"] = rate(r.pred == self.target for r in att)
            if self.has_gt:
                out["untargeted_success"] = rate(r.pred != r.gt for r in lab)
        gated = [r for r in recs if r.gate_fired is not None]
        if gated:
            out["gate_fired"] = rate(r.gate_fired for r in gated)
            if self.target is not None:
                att = [r for r in self.attacked(recs) if r.gate_fired is not None]
                out["undetected_targeted_success"] = rate(r.pred == self.target and not r.gate_fired for r in att)
        return out

    def headline(self) -> str:
        """The one metric a plot shows: targeted success in an attack report, else accuracy."""
        return "targeted_success" if self.target is not None else "accuracy"

    def outcome(self, r: SignRecord) -> Optional[bool]:
        """The headline outcome of one record (None: it does not count)."""
        if r.pred is None:
            return None
        if self.target is not None:
            if self.has_gt and (r.gt is None or r.gt == self.target):
                return None
            return r.pred == self.target
        return None if r.gt is None else r.pred == r.gt


def by_size(recs: Sequence[SignRecord], scoring: Scoring, edges: Sequence[float]) -> List[Dict[str, Any]]:
    """Metrics per apparent-size bin (ROI width; a near sign is wide), bins without records left out."""
    groups: Dict[int, List[SignRecord]] = {}
    for r in recs:
        if r.width is not None:
            groups.setdefault(size_bin(r.width, edges), []).append(r)
    return [{"bin": i, "label": bin_label(i, edges), "records": len(g), **scoring.metrics(g)}
            for i, g in sorted(groups.items())]


def per_track(recs: Sequence[SignRecord], scoring: Scoring) -> Dict[str, Any]:
    """Per-track rows and the share of tracks whose majority vote is right (or reads as the target)."""
    tracks: Dict[str, List[SignRecord]] = {}
    for r in recs:
        if r.track is not None:
            tracks.setdefault(r.track, []).append(r)
    rows = []
    for tid, g in tracks.items():
        preds = Counter(r.pred for r in g if r.pred is not None)
        truths = Counter(r.gt for r in g if r.gt is not None)
        widths = [r.width for r in g if r.width is not None]
        vote = preds.most_common(1)[0][0] if preds else None
        truth = truths.most_common(1)[0][0] if truths else None
        rows.append({"track": tid, "records": len(g), "first_frame": min(r.frame for r in g),
                     "last_frame": max(r.frame for r in g), "width_min": min(widths) if widths else None,
                     "width_max": max(widths) if widths else None, "vote": vote, "truth": truth,
                     **scoring.metrics(g)})
    rows.sort(key=lambda t: (t["first_frame"], t["track"]))
    out: Dict[str, Any] = {"tracks": rows}
    voted = [t for t in rows if t["vote"] is not None]
    if scoring.target is not None:
        att = [t for t in voted if not scoring.has_gt or (t["truth"] is not None and t["truth"] != scoring.target)]
        out["vote_targeted_success"] = rate(t["vote"] == scoring.target for t in att)
    if scoring.has_gt:
        out["vote_accuracy"] = rate(t["vote"] == t["truth"] for t in voted if t["truth"] is not None)
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c = discordant pairs (A only, B only), Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integers: no float overflow for long drives


def paired(a: FieldLog, b: FieldLog, scoring: Scoring) -> Dict[str, Any]:
    """Headline outcome on the frames both logs scored (one sign each): discordant counts and McNemar p."""
    def one_per_frame(lg: FieldLog) -> Dict[Tuple[int, int], bool]:
        count = Counter(r.key for r in lg.records)
        out = {}
        for r in lg.records:
            o = scoring.outcome(r)
            if o is not None and count[r.key] == 1:
                out[r.key] = o
        return out

    oa, ob = one_per_frame(a), one_per_frame(b)
    common = sorted(set(oa) & set(ob))
    both = sum(oa[f] and ob[f] for f in common)
    only_a = sum(oa[f] and not ob[f] for f in common)
    only_b = sum(ob[f] and not oa[f] for f in common)
    return {"metric": scoring.headline(), "frames": len(common), "both": both, "only_a": only_a, "only_b": only_b,
            "neither": len(common) - both - only_a - only_b, "mcnemar_p": mcnemar_exact(only_a, only_b)}


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "n": int(v.size)}


STAGES = ("capture", "queue", "preprocess", "gate", "infer", "total")  # pipeline order; others follow by name


def _stage_order(latency: Dict[str, List[float]]) -> List[str]:
    known = [k for k in STAGES if latency.get(k)]
    return known + sorted(k for k, v in latency.items() if v and k not in STAGES)


def summarise(flog: FieldLog, scoring: Scoring, edges: Sequence[float]) -> Dict[str, Any]:
    """Everything the report says about one log, JSON-ready (NaN where a rate has no frames)."""
    recs = flog.records
    classified = {r.key for r in recs if r.pred is not None}
    missed = sum(len({(run, f) for f in flog.gt_frames} - classified) for run in range(flog.runs))
    frames = sorted(flog.frames)
    events = Counter(str(e.get("event")) for e in flog.events)
    out: Dict[str, Any] = {
        "path": str(flog.path),
        "frame_records": flog.frame_records,
        "sign_records": len(recs),
        "classified": sum(r.pred is not None for r in recs),
        "labelled": len(scoring.labelled(recs)),
        "frames": [frames[0], frames[-1]],
        "frame_gaps": frames[-1] - frames[0] + 1 - len(frames),
        "missed_gt_frames": missed,
        "runs": flog.runs,
        "dropped": flog.dropped,
        "events": dict(sorted(events.items())),
        "incidents": [{k: e.get(k) for k in ("event", "frame", "detail")} for e in flog.events
                      if e.get("event") not in ("start", "end")],
        "end_reasons": [str(e.get("reason")) for e in flog.events if e.get("event") == "end"],
        "decode_lost": sum(int(e["lost"]) for e in flog.events if e.get("event") == "decode_error"
                           and isinstance(e.get("lost"), int) and not isinstance(e.get("lost"), bool)),
        "torn_last_line": flog.torn_last_line,
        "metrics": scoring.metrics(recs),
        "by_size": by_size(recs, scoring, edges),
        "latency_ms": {k: percentiles(flog.latency_ms[k]) for k in _stage_order(flog.latency_ms)},
    }
    if any(r.track is not None for r in recs):
        out["tracks"] = per_track(recs, scoring)
    return out
