"""The field report's PNG plots: a per-frame timeline and the headline metric by apparent sign size.

matplotlib is imported here, when a plot is drawn, so the rest of ``edge``
(the device loop) never needs it; without it the report says what to
install.  Figures are built with :class:`matplotlib.figure.Figure` (no
pyplot, no GUI backend) and saved without a timestamp, so the same logs give
the same PNG bytes on the same matplotlib.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .errors import require
from .field_log import FieldLog
from .field_stats import METRIC_LABELS, Scoring
from .fileio import PathLike, atomic_write_bytes

HINT = "signguard field-report draws its plots with matplotlib: pip install 'signguard[report]'"
MARKERS = ("o", "s")
LINE_STYLES = ("-", "--")
# outcome colour per record: right, read as the attacker's target, other wrong class, no ground truth
COLOURS = {"correct": "#2a9d3f", "target": "#d62728", "wrong": "#ff9f1c", "unlabelled": "#8c8c8c"}
KIND_LABELS = {"correct": "correct", "target": "read as target", "wrong": "wrong (other class)",
               "unlabelled": "no ground truth"}
EVENT_COLOURS = ("#7f3fbf", "#1f77b4", "#17becf", "#bcbd22")


def _figure(**kw: Any) -> Any:
    return require("matplotlib.figure", HINT).Figure(**kw)


def _save(fig: Any, path: PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _kind(r: Any, scoring: Scoring) -> str:
    if scoring.target is not None and r.pred == scoring.target and r.gt != scoring.target:
        return "target"
    if r.gt is None:
        return "unlabelled"
    return "correct" if r.pred == r.gt else "wrong"


def _class_order(logs: Sequence[Tuple[str, FieldLog]], scoring: Scoring) -> List[str]:
    """True classes first, then the target, then the other predictions by how often they occur."""
    counts: Dict[str, int] = {}
    truths: List[str] = []
    for _, lg in logs:
        for r in lg.records:
            if r.gt and r.gt not in truths:
                truths.append(r.gt)
            if r.pred:
                counts[r.pred] = counts.get(r.pred, 0) + 1
    order = list(truths)
    if scoring.target and scoring.target not in order:
        order.append(scoring.target)
    order += [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c not in order]
    return order


def timeline_png(path: PathLike, logs: Sequence[Tuple[str, FieldLog]], scoring: Scoring) -> Path:
    """Per frame: predicted class (colour = outcome), top-1 confidence, gate score when a gate ran, ROI width."""
    order = _class_order(logs, scoring)
    ypos = {c: i for i, c in enumerate(order)}
    has_gate = any(r.gate_score is not None or r.gate_fired is not None for _, lg in logs for r in lg.records)
    rows = 4 if has_gate else 3
    fig = _figure(figsize=(10, 1.6 + 0.28 * len(order) + 1.7 * (rows - 1)), facecolor="white")
    axes = fig.subplots(rows, 1, sharex=True, gridspec_kw={"height_ratios": [max(2, len(order) * 0.28)] +
                                                                           [1.7] * (rows - 1)})
    ax_cls, ax_conf = axes[0], axes[1]
    ax_gate, ax_w = (axes[2], axes[3]) if has_gate else (None, axes[2])
    offsets = (-0.15, 0.15) if len(logs) > 1 else (0.0,)
    for i, (name, lg) in enumerate(logs):
        recs = sorted((r for r in lg.records if r.pred is not None), key=lambda r: r.frame)
        frames = np.array([r.frame for r in recs])
        for kind, colour in COLOURS.items():
            sel = [j for j, r in enumerate(recs) if _kind(r, scoring) == kind]
            if sel:
                ax_cls.scatter(frames[sel], [ypos[recs[j].pred] + offsets[i] for j in sel], s=14, c=colour,
                               marker=MARKERS[i], label="%s: %s" % (name, KIND_LABELS[kind]) if len(logs) > 1
                               else KIND_LABELS[kind], linewidths=0)
        conf = [np.nan if r.conf is None else r.conf for r in recs]
        ax_conf.plot(frames, conf, LINE_STYLES[i], lw=1.0, label=name)
        widths = [np.nan if r.width is None else r.width for r in recs]
        ax_w.plot(frames, widths, LINE_STYLES[i], lw=1.0, label=name)
        g = [r for r in recs if r.gate_score is not None]
        fired = [r for r in recs if r.gate_fired]
        if ax_gate is not None and g:
            ax_gate.plot([r.frame for r in g], [r.gate_score for r in g], LINE_STYLES[i], lw=1.0, label=name)
        if ax_gate is not None and fired:
            ax_gate.scatter([r.frame for r in fired], [0.0 if r.gate_score is None else r.gate_score for r in fired],
                            marker="x", c=COLOURS["target"], s=16, label="%s: gate fired" % name)
    truths = sorted({(r.frame, r.gt) for _, lg in logs for r in lg.records if r.gt})
    if truths:
        ax_cls.plot([f for f, _ in truths], [ypos[c] for _, c in truths], "|", c="black", ms=4, alpha=0.35,
                    label="true class")
    _events(axes, logs)
    ax_cls.set_yticks(range(len(order)))
    ax_cls.set_yticklabels(order, fontsize=7)
    ax_cls.set_ylim(-0.6, len(order) - 0.4)
    ax_cls.set_ylabel("predicted")
    ax_cls.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax_conf.set_ylim(-0.02, 1.02)
    ax_conf.set_ylabel("top-1 score")
    if ax_gate is not None:
        ax_gate.set_ylabel("gate score")
        ax_gate.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax_w.set_ylabel("ROI width (px)")
    ax_w.set_xlabel("frame")
    for ax in (ax_conf, ax_w):
        if len(logs) > 1:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in axes:
        ax.grid(alpha=0.25)
    fig.suptitle("per-frame timeline" + (": read as %s?" % scoring.target if scoring.target else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _events(axes: Sequence[Any], logs: Sequence[Tuple[str, FieldLog]]) -> None:
    """A vertical line at every stream incident (disconnect, reconnect, decode error, ...) with a frame index."""
    kinds: Dict[str, str] = {}
    for _, lg in logs:
        for e in lg.events:
            f = e.get("frame")
            if isinstance(f, int) and not isinstance(f, bool) and e.get("event") not in ("start", "end"):
                kind = str(e.get("event"))
                colour = kinds.setdefault(kind, EVENT_COLOURS[len(kinds) % len(EVENT_COLOURS)])
                for ax in axes:
                    ax.axvline(f, color=colour, lw=0.8, alpha=0.6)
    for kind, colour in kinds.items():  # one legend entry per event kind
        axes[-1].plot([], [], color=colour, lw=0.8, label="event: %s" % kind)
    if kinds:
        axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def by_size_png(path: PathLike, names: Sequence[str], summaries: Sequence[Dict[str, Any]], scoring: Scoring,
                edges: Sequence[float]) -> Path:
    """The headline metric (and the gate's firing rate when a gate ran) per ROI-width bin, Wilson 95% bars."""
    metrics = [scoring.headline()] + (["gate_fired"] if any("gate_fired" in s["metrics"] for s in summaries) else [])
    bins = sorted({b["bin"] for s in summaries for b in s["by_size"]})
    labels = {b["bin"]: b["label"] for s in summaries for b in s["by_size"]}
    fig = _figure(figsize=(max(5.0, 1.1 * len(bins) + 2), 3.2 * len(metrics)), facecolor="white")
    axes = np.atleast_1d(fig.subplots(len(metrics), 1, squeeze=False)[:, 0])
    width = 0.8 / len(summaries)
    for ax, metric in zip(axes, metrics):
        for i, (name, s) in enumerate(zip(names, summaries)):
            cells = {b["bin"]: b[metric] for b in s["by_size"] if metric in b and b[metric]["n"]}
            xs = [bins.index(b) + (i - (len(summaries) - 1) / 2) * width for b in cells]
            ys = np.array([c["rate"] for c in cells.values()])
            lo = np.array([c["ci"][0] for c in cells.values()])
            hi = np.array([c["ci"][1] for c in cells.values()])
            ax.bar(xs, ys, width * 0.9, yerr=np.vstack([ys - lo, hi - ys]) if len(ys) else None, capsize=3,
                   label=name, alpha=0.85)
            for x, c in zip(xs, cells.values()):
                ax.text(x, 1.02, "n=%d" % c["n"], ha="center", fontsize=6)
        ax.set_xticks(range(len(bins)))
        ax.set_xticklabels([labels[b] for b in bins], fontsize=7)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(axis="y", alpha=0.25)
        if len(summaries) > 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xlabel("apparent sign size: ROI width in px (far -> near)")
    fig.suptitle("by apparent sign size (Wilson 95% intervals)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
