"""Markdown for ``bench/field_test.py``: the INT8 sticker table (reports/sticker_robustness/int8/report.md) and the
field test's README (reports/field_test/README.md), plus the issue's "done when" check on the drive-by."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from edge.field_report import fmt_rate

#: issue 15: the defended bundle reads stop in >= 95% of frames where the undefended one is fooled in >= 80%
READS_STOP, FOOLED = 0.95, 0.80
KIND_LABELS = {"whitebox": "RP2", "lowfreq": "low-frequency RP2 (DCT k = 16)"}


def pct(v: Optional[float]) -> str:
    return "-" if v is None else "%.1f%%" % (100 * v)


def fooled(m: Mapping[str, Any]) -> float:
    """Share of the stop sign's classified frames not read as stop (untargeted success)."""
    return float(m["untargeted_success"]["rate"] if "untargeted_success" in m else 1 - m["accuracy"]["rate"])


def done_when(undefended: Mapping[str, Any], defended: Mapping[str, Any]) -> Dict[str, Any]:
    """The criterion on one drive, from the two bundles' field metrics: the undefended bundle fooled in >= 80% of
    frames and the defended one reading stop in >= 95%; point estimates, with the Wilson lower bound beside."""
    acc = defended["accuracy"]
    return {"undefended_fooled": fooled(undefended), "defended_reads_stop": float(acc["rate"]),
            "defended_reads_stop_ci_low": float(acc["ci"][0]),
            "holds": fooled(undefended) >= FOOLED and acc["rate"] >= READS_STOP}


def _rate(report: Mapping[str, Any], backend: str, precision: str, key: str) -> Optional[float]:
    row = next((r for r in report["rows"] if r["backend"] == backend and r["precision"] == precision), None)
    return None if row is None else row[key]


def int8_report(specs: List[Any], ver: Dict[str, Any], chosen: Mapping[str, str], root: Path, command: str,
                drive_out: str) -> str:
    names, res = ver["names"], ver["verify"]
    models = list(res)
    made = {s.folder: json.loads((root / s.folder / "sticker.json").read_text())["meta"] for s in specs}
    md = ["# Sticker robustness on the deployed bundles: FP32 vs INT8 (onnxruntime)", "",
          "Regenerate: `%s` (exports the bundles, makes or reuses the stickers, runs "
          "`signguard verify` per bundle, then the drive-by).  Each table column alone: "
          "its `signguard verify` command under [verify/](verify/)." % command, "",
          "Each sticker is read back from its printed PNG (`sticker.png`, hash-checked) and re-rendered onto 40 "
          "fresh poses of the stop sign (seed 1000) that neither the optimisation (seed 1) nor the held-out score "
          "when made (seed 2) used; clean accuracy is on %d held-out test images of the synthetic LISA-18 split.  "
          "INT8 = explicit Q/DQ ONNX calibrated by `signguard export --precision fp32 int8` (entropy, 512 training "
          "images)." % ver["verify"][models[0]]["report"]["n_images"], "",
          "## Stickers", "",
          "| sticker | made on | attack (attacker's view) | target (why) | RP2 steps | targeted success when made "
          "(PyTorch, 40 held-out poses) |", "|---|---|---|---|---|---|"]
    for s in specs:
        m = made[s.folder]
        md.append("| [`%s`](stickers/%s/) | %s | %s, %s | `%s` (%s) | %d | %s |" % (
            s.folder, s.folder, s.model, KIND_LABELS[s.kind], m["attacker_view"], s.target, s.target_source, s.steps,
            pct(m["heldout_targeted_success"])))
    head = ["sticker"] + ["%s %s" % (m, p) for m in models for p in ("fp32", "int8")]
    md += ["", "## Targeted success on each bundle (onnxruntime)", "",
           "Bold: the model's own stickers (adaptive, white-box); the others are transfers.", "",
           "| " + " | ".join(head) + " |", "|---" * len(head) + "|",
           "| clean accuracy | " + " | ".join(pct(_rate(res[m]["report"], "onnxruntime", p, "accuracy"))
                                           for m in models for p in ("fp32", "int8")) + " |"]
    for s in specs:
        cells = []
        for m in models:
            for p in ("fp32", "int8"):
                c = pct(_rate(res[m]["report"], "onnxruntime", p, names[s.folder]))
                cells.append("**%s**" % c if m == s.model else c)
        md.append("| `%s` -> %s | " % (s.folder, s.target) + " | ".join(cells) + " |")
    md += ["", "One pose is 2.5 points of success (40 poses), so `verify`'s default 2-point margin flags a single "
           "pose on which the INT8 graph is fooled and the FP32 graph is not; the verdict column lists each case.", "",
           "## PyTorch reference, gate and verdict", "",
           "| bundle | clean acc PyTorch / FP32 / INT8 | own strongest sticker (INT8) | PyTorch / FP32 / INT8 "
           "success | verify margins (1 pt acc, 2 pt success) |", "|---|---|---|---|---|"]
    for m in models:
        rep, own = res[m]["report"], chosen[m]
        acc = " / ".join(pct(_rate(rep, b, p, "accuracy")) for b, p in _BACKENDS)
        own_rates = " / ".join(pct(_rate(rep, b, p, names[own])) for b, p in _BACKENDS)
        verdict = "passed" if rep["passed"] else "failed: " + "; ".join(rep["failures"])
        md.append("| [%s](verify/%s.md) | %s | `%s` | %s | %s |" % (m, m, acc, own, own_rates, verdict))
    gated = [(m, r) for m in models for r in res[m]["report"]["rows"] if "gate_fired" in r]
    if gated:
        cols = ["clean"] + [names[s.folder] for s in specs]
        md += ["", "Gate firing rate (share of inputs the PRN detector sends through the rectifier):", "",
               "| bundle | precision | clean | " + " | ".join("`%s`" % s.folder for s in specs) + " |",
               "|---|---|" + "---|" * len(cols)]
        md += ["| %s | %s | " % (m, r["precision"]) + " | ".join(pct(r["gate_fired"][c]) for c in cols) + " |"
               for m, r in gated]
    md += ["", "## Strongest sticker per model", "",
           "Per model, the candidate with the highest INT8 targeted success on its own bundle (ties: the success "
           "when made, then white-box first); these are the stickers of the drive-by in `%s/`." % drive_out, ""]
    md += ["- %s: `%s`" % (m, f) for m, f in chosen.items()]
    return "\n".join(md) + "\n"


_BACKENDS = (("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))


def readme(summary: Dict[str, Any], rendered: Mapping[str, Any], models: Mapping[str, str],
           drive: Mapping[str, Any]) -> str:
    met = {(r["drive"], r["model"], r["precision"]): r for r in summary["metrics"]}
    undef = "baseline"
    defended = [m for m in models if m != undef]
    md = ["# Field test (simulated): the demo's stop-sign drive-by on the INT8 bundles, with each model's "
          "strongest sticker", "",
          "Regenerate everything: `%s` (exports FP32 + INT8 bundles, makes or reuses the "
          "stickers, scores them with `signguard verify` -> [the INT8 sticker table](%s), renders the drives, "
          "runs `signguard run --precision P --log` per drive, model and precision, then `signguard field-report`).  "
          "Wall time at one thread on a shared 2-core machine: this run %d s, reusing cached bundles and stickers; "
          "from scratch add ~6 min of exports and %d s of sticker optimisation (the sum over the stickers' "
          "sidecars).  Each comparison alone: its command below (the frame logs and the ground-truth CSV are "
          "committed in `logs/`)." % (summary["command"], summary["int8_report"], summary["wall_s"],
                                       summary["sticker_s"]), "",
          "Setup: models %s, each exported to an ONNX bundle with FP32 and INT8 graphs (onnxruntime CPU); "
          "drive-by = the demo's (`signguard demo`: stop sign, %d frames, 640x360, seed %d; the sign grows from "
          "~20 to ~150 px wide, motion blur in the second half); a sticker is read from its printed PNG and pasted "
          "on the sign in the renderer's template coordinates (the geometry the attack optimised it in), "
          "nearest-neighbour as printed; every drive has the same frames and boxes, only the sticker differs.  "
          "Stickers: the strongest of two candidates per model (white-box and low-frequency RP2, each made through "
          "the model's attacker view and picked by INT8 success on 40 fresh poses, never on this drive; see "
          "[the INT8 sticker table](%s))." % (
              ", ".join("`%s` (`%s`)" % kv for kv in models.items()), drive["n_frames"], drive["seed"],
              summary["int8_report"]), ""]
    md += ["## Headline: share of frames read as stop (INT8, Wilson 95% CI)", "",
           "| defended bundle | drive | undefended `baseline` reads stop | defended reads stop | gate fired "
           "| done-when (baseline fooled >= 80%, defended reads stop >= 95%) |", "|---|---|---|---|---|---|"]
    checks = {}
    for m in defended:
        for d in ("sticker_baseline", "adaptive_" + m):
            b, x = met.get((d, undef, "int8")), met.get((d, m, "int8"))
            if b is None or x is None:
                continue
            c = checks[m, d] = done_when(b, x)
            md.append("| %s | %s | %s | %s | %s | %s |" % (
                m, d, fmt_rate(b["accuracy"]), fmt_rate(x["accuracy"]), fmt_rate(x.get("gate_fired")),
                status(c)))
    summary["done_when"] = [{"model": m, "drive": d, **c} for (m, d), c in checks.items()]
    md += ["", verdict(checks)]
    md += ["", "`sticker_baseline` = the strongest sticker made on the undefended baseline (a transfer attack on "
           "the defended models); `adaptive_<model>` = the defended model's own strongest sticker (it knows the "
           "defense).  Read as stop = accuracy on the classified frames (the sign is always a stop sign)."]
    md += ["", "## All runs", "", "| drive | sticker | model | precision | reads stop (accuracy) | targeted success "
           "| untargeted success | gate fired |", "|---|---|---|---|---|---|---|---|"]
    for (d, m, p), r in met.items():
        info = rendered[d]
        what = "no sticker" if info["sticker"] is None else "`%s` -> `%s`" % (Path(info["sticker"]).name,
                                                                               info["target"])
        md.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            d, what, m, p, fmt_rate(r["accuracy"]), fmt_rate(r.get("targeted_success")),
            fmt_rate(r.get("untargeted_success")), fmt_rate(r.get("gate_fired"))))
    md += ["", "Intervals: Wilson 95%; k/n = classified frames.  The 90 frames of one drive are strongly "
           "correlated (one sign, one pass), so the intervals understate the uncertainty of a *new* drive: "
           "treat a drive as one pass through the pose sweep, and each report's size breakdown as where along "
           "the approach the sticker works.  Gate fired: share of frames where the PRN detector sent the frame "
           "through the rectifier (from the frame log's gate records).", "",
           "## Reports (INT8 undefended vs INT8 defended on the same drive)", "",
           "| report | paired on the same frames (exact McNemar) |", "|---|---|"]
    for r in summary["reports"]:
        p = r["paired"]
        md.append("| [%s](%s/report.md) | %s, %d frames: only baseline %d, only %s %d; p = %.3g |" % (
            r["name"], r["name"], p["metric"].replace("_", " "), p["frames"], p["only_a"], r["model"], p["only_b"],
            p["mcnemar_p"]))
    md += ["", "```bash"] + [r["command"] for r in summary["reports"]] + ["```", "", "Stickers:", ""]
    for d, info in rendered.items():
        meta = info["sticker_meta"]
        if meta:
            md.append("- `%s`: `%s` (%s RP2 on `%s` -> `%s`, targeted success on 40 held-out poses when made %s, "
                      "`sticker.pdf` printable at the sign's size)" % (
                          d, info["sticker"], meta.get("attack"), meta.get("model"), meta["target"],
                          pct(meta["heldout_targeted_success"])))
    return "\n".join(md) + "\n"


def status(c: Mapping[str, Any]) -> str:
    """One drive's cell: holds; does not apply (the sticker does not fool the undefended bundle, so there is
    nothing for the defense to beat, however it reads); or does not hold."""
    if c["holds"]:
        return "holds"
    if c["undefended_fooled"] < FOOLED and c["defended_reads_stop"] >= READS_STOP:
        return "does not apply: the sticker fools the baseline in %s only; defended reads stop %s" % (
            pct(c["undefended_fooled"]), pct(c["defended_reads_stop"]))
    return "does not hold (baseline fooled %s, defended reads stop %s)" % (
        pct(c["undefended_fooled"]), pct(c["defended_reads_stop"]))


def verdict(checks: Mapping[tuple, Mapping[str, Any]]) -> str:
    """One sentence: for which (model, drive) the issue's criterion holds, else the closest miss."""
    held = [k for k, c in checks.items() if c["holds"]]
    if held:
        text = "**Done-when holds** for %s (point estimates; Wilson lower bounds in the table)." % ", ".join(
            "`%s` on `%s`" % k for k in held)
        # the issue words the criterion with the undefended model's sticker; say where the defense's own
        # adaptive sticker still wins, so a pass against a transferred sticker is not read as robustness
        for m in dict.fromkeys(m for m, d in held if not d.startswith("adaptive_")):
            c = checks.get((m, "adaptive_" + m))
            if c is not None and not c["holds"] and c["defended_reads_stop"] < READS_STOP:
                text += ("  Against its own adaptive sticker `%s` reads stop in %s of frames (baseline fooled in %s): "
                         "it does not hold against an attacker who knows the defense." % (
                             m, pct(c["defended_reads_stop"]), pct(c["undefended_fooled"])))
        return text
    if not checks:
        return "No defended bundle ran on a stickered drive."
    (m, d), c = max(checks.items(), key=lambda kv: kv[1]["defended_reads_stop"])
    return ("**Done-when does not hold for any defended bundle.**  Closest: `%s` on `%s` reads stop in %s of frames "
            "(Wilson 95%% lower bound %s), %.1f points short of %s, while the baseline is fooled in %s." % (
                m, d, pct(c["defended_reads_stop"]), pct(c["defended_reads_stop_ci_low"]),
                100 * (READS_STOP - c["defended_reads_stop"]), pct(READS_STOP), pct(c["undefended_fooled"])))
