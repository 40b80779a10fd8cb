"""``signguard field-report``: a drive-by's frame log(s) -> report.md + summary.json + PNG plots.

Why: a physical-sticker field test ends with a frame log per drive (from
``signguard run --log``).  This turns it into the numbers the attack papers
report -- accuracy, or targeted and untargeted attack success -- with Wilson
95% intervals, broken down by apparent sign size (distance), with a
per-frame timeline, the gate's detections when a gate ran and per-track
votes when a tracker ran; ``compare`` puts a second log of the same drive
(e.g. undefended vs defended) beside it, with a paired test on the frames
both scored.  Torch-free; matplotlib only for the plots.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import field_plots
from .errors import SignguardError, require
from .field_log import FieldLog, apply_ground_truth, ground_truth_from_csv, read_field_log
from .field_stats import DEFAULT_BINS, METRIC_LABELS, Scoring, paired, summarise
from .fileio import PathLike, atomic_write_json, atomic_write_text, sha256_file

OUTPUTS = ("report.md", "summary.json", "timeline.png", "by_size.png")
METRIC_ORDER = ("accuracy", "targeted_success", "untargeted_success", "gate_fired", "undetected_targeted_success")


def _names(paths: Sequence[Path], names: Optional[Sequence[str]]) -> List[str]:
    """Labels for the logs: ``names``, else file stems, else folder/stem (two runs' ``frames.jsonl``)."""
    if names:
        if len(names) != len(paths) or len(set(names)) != len(names):
            raise SignguardError("--names: expected %d distinct names (one per log), got %r" % (len(paths), names))
        return list(names)
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    qualified = ["%s/%s" % (p.parent.name, p.stem) for p in paths]
    return qualified if len(set(qualified)) == len(qualified) else ["log%d" % (i + 1) for i in range(len(paths))]


def _check_target(target: Optional[str], logs: Sequence[FieldLog]) -> None:
    if target is None:
        return
    known = set().union(*(lg.classes for lg in logs))
    if target not in known:
        close = difflib.get_close_matches(target, sorted(known), n=3)
        raise SignguardError("--target %r: not a class in %s (classes the log names: %s)%s"
                             % (target, ", ".join(str(lg.path) for lg in logs), ", ".join(sorted(known)),
                                "; did you mean %s?" % " or ".join(close) if close else ""))


def _check_out(out: Path, inputs: Sequence[Optional[PathLike]]) -> None:
    """Refuse an --out that is a file, or one whose outputs would overwrite an input (the log, the CSV)."""
    if out.exists() and not out.is_dir():
        raise SignguardError("--out %s: is a file; expected a folder for %s" % (out, ", ".join(OUTPUTS)))
    ins = {Path(p).resolve() for p in inputs if p is not None}
    for name in OUTPUTS:
        if (out / name).resolve() in ins:
            raise SignguardError("--out %s: writing %s would overwrite the input %s" % (out, name, out / name))


def _clean(obj: Any) -> Any:
    """NaN -> null, recursively (summary.json is strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def fmt_rate(cell: Optional[Dict[str, Any]]) -> str:
    """``"92.2% [84.8, 96.2] (83/90)"``; ``"n/a (0 frames)"`` when nothing counted."""
    if cell is None:
        return "-"
    if not cell["n"]:
        return "n/a (0 frames)"
    lo, hi = cell["ci"]
    return "%.1f%% [%.1f, %.1f] (%d/%d)" % (100 * cell["rate"], 100 * lo, 100 * hi, cell["k"], cell["n"])


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def render_markdown(summary: Dict[str, Any]) -> str:
    """The report: inputs, headline rates, by size, paired comparison, tracks, stream health, plots."""
    logs, names = summary["logs"], [lg["name"] for lg in summary["logs"]]
    target = summary["target"]
    md = ["# Field report" + (": attack toward `%s`" % target if target else ""), ""]
    md += ["Regenerate: `%s`" % summary["command"], ""] if summary.get("command") else []
    md += ["Ground truth: %s.  Intervals are Wilson 95%% score intervals; `k/n` counts classified sign records."
           % summary["ground_truth"], ""]
    md += _table(["log", "file", "sha256", "frame records", "sign records", "classified", "labelled",
                  "frames", "missing from the log", "gt frames not classified"],
                 [[lg["name"], "`%s`" % lg["path"], lg["sha256"][:12], lg["frame_records"], lg["sign_records"],
                   lg["classified"], lg["labelled"], "%d-%d" % tuple(lg["frames"]), lg["frame_gaps"],
                   lg["missed_gt_frames"]] for lg in logs])
    md += ["", "## Results", ""]
    rows = [[METRIC_LABELS[m] + (" (-> %s)" % target if m == "targeted_success" else "")]
            + [fmt_rate(lg["metrics"].get(m)) for lg in logs]
            for m in METRIC_ORDER if any(m in lg["metrics"] for lg in logs)]
    md += _table(["metric"] + names, rows)
    if "paired" in summary:
        p = summary["paired"]
        md += ["", "Paired on the %d frames both logs scored (%s): both %d, only %s %d, only %s %d, neither %d; "
               "exact McNemar p = %.3g." % (p["frames"], METRIC_LABELS[p["metric"]], p["both"], names[0], p["only_a"],
                                            names[1], p["only_b"], p["neither"], p["mcnemar_p"])]
    md += ["", _definitions(target), ""]
    md += ["## By apparent sign size", "", "Sign size is the tight ROI width in pixels; it grows as the camera "
           "nears the sign (width ~ 1/distance).", ""]
    metric = "targeted_success" if target else "accuracy"
    bins = sorted({b["bin"]: b["label"] for lg in logs for b in lg["by_size"]}.items())
    gate = any("gate_fired" in lg["metrics"] for lg in logs)
    head = ["ROI width (px)"] + ["%s: %s" % (n, METRIC_LABELS[metric]) for n in names] + (
        ["%s: gate fired" % n for n in names] if gate else [])
    cells = [{b["bin"]: b for b in lg["by_size"]} for lg in logs]
    md += _table(head, [[label] + [fmt_rate(c.get(i, {}).get(metric)) for c in cells]
                        + ([fmt_rate(c.get(i, {}).get("gate_fired")) for c in cells] if gate else [])
                        for i, label in bins]) if bins else ["No record has a ROI, so there is no size breakdown."]
    md += ["", "![by size](by_size.png)", "", "## Timeline", "", "![timeline](timeline.png)", ""]
    for lg in logs:
        md += _tracks(lg, metric)
    md += _health(logs)
    return "\n".join(md) + "\n"


def _definitions(target: Optional[str]) -> str:
    text = ("Frames of one drive are not independent (neighbouring frames see the sign in nearly the same pose), "
            "so per-frame intervals are narrower than the evidence; per-track votes, or more drives, are the "
            "independent unit.")
    if target:
        text = ("Targeted success: share of classified frames read as `%s` among frames whose true class is not "
                "`%s`; untargeted success: share read as any wrong class.  " % (target, target)) + text
    return text


def _tracks(lg: Dict[str, Any], metric: str, limit: int = 40) -> List[str]:
    if "tracks" not in lg:
        return []
    t = lg["tracks"]
    md = ["## Tracks: %s" % lg["name"], ""]
    md += ["%s: %s." % (METRIC_LABELS[k], fmt_rate(t[k])) for k in ("vote_accuracy", "vote_targeted_success")
           if k in t]
    rows = [[r["track"], "%d-%d" % (r["first_frame"], r["last_frame"]), r["records"],
             "-" if r["width_min"] is None else "%.0f-%.0f" % (r["width_min"], r["width_max"]), r["truth"] or "-",
             r["vote"] or "-", fmt_rate(r.get(metric))] for r in t["tracks"][:limit]]
    md += [""] + _table(["track", "frames", "records", "width px", "truth", "majority vote", METRIC_LABELS[metric]],
                        rows)
    if len(t["tracks"]) > limit:
        md.append("... %d more tracks in summary.json" % (len(t["tracks"]) - limit))
    return md + [""]


def _health(logs: Sequence[Dict[str, Any]], limit: int = 12) -> List[str]:
    md = ["## Stream and timing", ""]
    for lg in logs:
        ev = ", ".join("%s x%d" % kv for kv in lg["events"].items()) or "none"
        extra = [("run ended: %s" % ", ".join(lg["end_reasons"])) if lg["end_reasons"] else "no end event",
                 "%d runs appended in one log" % lg["runs"] if lg["runs"] > 1 else "",
                 "%d frames lost to decode errors" % lg["decode_lost"] if lg["decode_lost"] else "",
                 "last line incomplete (crash mid-write), ignored" if lg["torn_last_line"] else ""]
        md.append("- %s: events %s; live frames dropped %d; frame indices missing from the log %d; %s." % (
            lg["name"], ev, lg["dropped"], lg["frame_gaps"], "; ".join(e for e in extra if e)))
        for e in lg["incidents"][:limit]:
            md.append("  - frame %s: %s%s" % (e["frame"], e["event"], ": %s" % e["detail"] if e["detail"] else ""))
        if len(lg["incidents"]) > limit:
            md.append("  - ... %d more in summary.json" % (len(lg["incidents"]) - limit))
    stages = list(dict.fromkeys(s for lg in logs for s in lg["latency_ms"]))  # pipeline order, as summarised
    if stages:
        md += ["", "Per-stage latency (ms, p50 / p99 over frame records):", ""]
        md += _table(["stage"] + [lg["name"] for lg in logs],
                     [[s] + ["%.3f / %.3f" % (lg["latency_ms"][s]["p50"], lg["latency_ms"][s]["p99"])
                             if s in lg["latency_ms"] else "-" for lg in logs] for s in stages])
    return md


@dataclass
class FieldReport:
    """The scored logs: ``summary`` (what summary.json holds), the parsed logs by name, and how they were scored."""

    summary: Dict[str, Any]
    logs: List[Tuple[str, FieldLog]]
    scoring: Scoring


def build_report(log: PathLike, roi: Optional[PathLike] = None, target: Optional[str] = None,
                 compare: Optional[PathLike] = None, bins: Sequence[float] = DEFAULT_BINS,
                 names: Optional[Sequence[str]] = None, command: Optional[str] = None) -> FieldReport:
    """Read, check and score the log(s); nothing is written.

    Ground truth comes from ``roi`` (an ROI CSV with class columns) when
    given, else from the logs' own ``gt`` fields; with neither, only
    ``target`` can be scored (every classified frame is then taken to show
    the attacked sign).
    """
    paths = [Path(log)] + ([Path(compare)] if compare is not None else [])
    logs = [read_field_log(p) for p in paths]
    if roi is not None:
        gt = ground_truth_from_csv(roi, logs)
        for lg in logs:
            apply_ground_truth(lg, gt)
        source = "ROI CSV `%s` (%d labelled frames)" % (roi, len(gt))
    else:
        for lg in logs:
            lg.gt_frames = {r.frame for r in lg.records if r.gt is not None}
        source = "the logs' own `gt` fields"
    has_gt = any(r.gt is not None for lg in logs for r in lg.records)
    if not has_gt:
        if target is None:
            raise SignguardError("%s: no ground truth (no record has a gt class, and no --roi CSV was given), so "
                                 "there is nothing to score: pass --roi gt.csv, or --target CLASS for attack success"
                                 % ", ".join(str(p) for p in paths))
        source = "none: every classified frame is taken to show the attacked sign"
    _check_target(target, logs)
    scoring = Scoring(target, has_gt)
    labels = _names(paths, names)
    summaries = [summarise(lg, scoring, bins) for lg in logs]
    for name, s, p in zip(labels, summaries, paths):
        s.update(name=name, sha256=sha256_file(p))
    summary: Dict[str, Any] = {"command": command, "target": target, "ground_truth": source,
                               "bins_px": list(bins), "logs": summaries}
    if len(logs) == 2:
        summary["paired"] = paired(logs[0], logs[1], scoring)
    return FieldReport(_clean(summary), list(zip(labels, logs)), scoring)


def field_report(log: PathLike, out_dir: PathLike, roi: Optional[PathLike] = None, target: Optional[str] = None,
                 compare: Optional[PathLike] = None, bins: Sequence[float] = DEFAULT_BINS,
                 names: Optional[Sequence[str]] = None, command: Optional[str] = None) -> Dict[str, Any]:
    """:func:`build_report`, then write ``report.md``, ``summary.json``, ``timeline.png`` and ``by_size.png``
    into ``out_dir``; returns the summary.  Every check (logs, CSV, target, output folder, matplotlib) runs
    before anything is written."""
    rep = build_report(log, roi, target, compare, bins, names, command)
    out = Path(out_dir)
    _check_out(out, [log, compare, roi])
    require("matplotlib.figure", field_plots.HINT)
    out.mkdir(parents=True, exist_ok=True)
    field_plots.timeline_png(out / "timeline.png", rep.logs, rep.scoring)
    field_plots.by_size_png(out / "by_size.png", [n for n, _ in rep.logs], rep.summary["logs"], rep.scoring, bins)
    atomic_write_json(out / "summary.json", rep.summary)
    atomic_write_text(out / "report.md", render_markdown(rep.summary))
    return rep.summary


def headline(summary: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """``(log, metric, formatted rate)`` lines for the CLI to print."""
    return [(lg["name"], METRIC_LABELS[m], fmt_rate(lg["metrics"][m]))
            for lg in summary["logs"] for m in METRIC_ORDER if m in lg["metrics"]]
