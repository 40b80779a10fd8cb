"""`signguard field-report`: Wilson intervals, size bins, attack-success rates, gate/tracks, compare, bad input.

Torch-free (runs in the edge venvs); the tests that draw plots skip without matplotlib.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest

from edge.errors import SignguardError
from edge.field_log import read_field_log
from edge.field_report import build_report, field_report, render_markdown
from edge.field_stats import bin_label, mcnemar_exact, parse_bins, size_bin, wilson
from edge.framelog import FrameLog, make_record

REPO = Path(__file__).resolve().parents[2]


def rec(frame: int, pred: Optional[str], gt: Optional[str] = None, width: float = 40.0, score: float = 0.9,
        **extra: Any) -> Dict[str, Any]:
    """A frame record as the loop writes it (edge.framelog.make_record), plus any extra fields."""
    roi = None if pred is None else (10.0, 10.0, width, width)
    top = [] if pred is None else [{"class": pred, "index": 0, "score": score}]
    r = make_record(frame, roi, top, pred, gt, {"capture": 1.0, "preprocess": 0.2, "infer": 0.5, "total": 2.0},
                    ts=1000.0 + frame)
    r.update(extra)
    return r


def write_log(path: Path, records: Sequence[Dict[str, Any]]) -> Path:
    with FrameLog(path) as f:
        for r in records:
            f.write(r)
    return path


def write_csv(path: Path, rows: Sequence[tuple]) -> Path:
    lines = ["frame,x,y,w,h,class_id,class_name"] + ["%d,10,10,%g,%g,%s,%s" % (f, w, w, cid, name)
                                                       for f, w, cid, name in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- statistics


def _wilson_reference(k: int, n: int) -> tuple:
    """Wilson's interval as the two roots of (n + z^2) p^2 - (2k + z^2) p + k^2 / n = 0, i.e. the p for which
    the score test |k/n - p| / sqrt(p (1 - p) / n) = z, with z from the stdlib's normal quantile."""
    z = statistics.NormalDist().inv_cdf(0.975)
    roots = np.roots([n + z * z, -(2 * k + z * z), k * k / n])
    return tuple(sorted(float(np.real(r)) for r in roots))


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (10, 10), (3, 7), (1, 100), (99, 100), (0, 1), (41, 90)])
def test_wilson_matches_the_score_test_inversion(k: int, n: int) -> None:
    lo, hi = wilson(k, n)
    ref_lo, ref_hi = _wilson_reference(k, n)
    assert lo == pytest.approx(max(0.0, ref_lo), abs=1e-12) and hi == pytest.approx(min(1.0, ref_hi), abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_published_values_and_edge_cases() -> None:
    # Brown, Cai & DasGupta (2001) / any table: 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634], 10/10 -> [0.7225, 1]
    assert [round(v, 4) for v in wilson(0, 10)] == [0.0, 0.2775]
    assert [round(v, 4) for v in wilson(5, 10)] == [0.2366, 0.7634]
    assert [round(v, 4) for v in wilson(10, 10)] == [0.7225, 1.0]
    assert all(math.isnan(v) for v in wilson(0, 0))
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_mcnemar_exact_p_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 2 * P(X <= 0), X ~ Bin(6, 1/2)
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(5, 5) == 1.0
    assert 0 < mcnemar_exact(0, 3000) < 1e-300 or mcnemar_exact(0, 3000) == 0.0  # no float overflow


def test_size_bins_are_half_open_and_labelled() -> None:
    edges = (24.0, 32.0, 48.0)
    got = [size_bin(w, edges) for w in (10, 23.99, 24, 31.9, 32, 47.999, 48, 1000)]
    assert got == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [bin_label(i, edges) for i in range(4)] == ["< 24", "24-32", "32-48", ">= 48"]
    assert parse_bins("16, 32,64") == (16.0, 32.0, 64.0)
    for bad in ("32,16", "a,b", "0,10", "", "10,10"):
        with pytest.raises(SignguardError, match="--bins"):
            parse_bins(bad)


# ---------------------------------------------------------------- scoring a hand-made drive


def attacked_drive(gt_in_log: bool = True) -> List[Dict[str, Any]]:
    """Frames 0-9 show a stop sign (6 read as yield, 2 as stop, 2 as speedLimit45), frame 10 has no sign,
    frame 11 shows a real yield sign read as yield, plus an event record and a record with unknown fields."""
    preds = ["yield"] * 6 + ["stop"] * 2 + ["speedLimit45"] * 2
    widths = [20, 22, 30, 30, 40, 40, 60, 60, 100, 130]  # far -> near
    out = [rec(i, p, "stop" if gt_in_log else None, width=w) for i, (p, w) in enumerate(zip(preds, widths))]
    out.insert(3, {"event": "disconnect", "ts": 1.0, "frame": 3, "reason": "timeout"})
    out.append(rec(10, None))
    out.append(rec(11, "yield", "yield" if gt_in_log else None, width=50, future_field={"x": 1}))
    return out


def test_targeted_and_untargeted_rates_from_the_log_ground_truth(tmp_path: Path) -> None:
    log = write_log(tmp_path / "atk.jsonl", attacked_drive())
    s = build_report(log, target="yield", bins=(24, 32, 48, 64, 96, 128)).summary["logs"][0]
    m = s["metrics"]
    assert (m["targeted_success"]["k"], m["targeted_success"]["n"]) == (6, 10)  # frame 11's truth is the target
    assert (m["untargeted_success"]["k"], m["untargeted_success"]["n"]) == (8, 11)
    assert (m["accuracy"]["k"], m["accuracy"]["n"]) == (3, 11)
    assert m["targeted_success"]["ci"] == pytest.approx(list(wilson(6, 10)))
    assert "gate_fired" not in m
    assert (s["frame_records"], s["sign_records"], s["classified"], s["events"]) == (12, 11, 11, {"disconnect": 1})
    # width bins: <24: f0,f1 (yield, yield); 24-32: f2,f3 (yield, yield); 32-48: f4,f5 (yield, yield);
    # 48-64: f6,f7 (stop, stop) + f11 (not attacked); 96-128: f8 (sl45); >=128: f9 (sl45)
    rows = {b["label"]: (b["targeted_success"]["k"], b["targeted_success"]["n"]) for b in s["by_size"]}
    assert rows == {"< 24": (2, 2), "24-32": (2, 2), "32-48": (2, 2), "48-64": (0, 2), "96-128": (0, 1),
                    ">= 128": (0, 1)}
    assert s["latency_ms"]["infer"] == {"p50": 0.5, "p99": 0.5, "n": 12}


def test_ground_truth_from_the_roi_csv_and_without_any(tmp_path: Path) -> None:
    log = write_log(tmp_path / "atk.jsonl", attacked_drive(gt_in_log=False))
    # the CSV's truth replaces the log's (null) gt; frame 12 is expected by the CSV but never logged
    csv = write_csv(tmp_path / "gt.csv", [(i, 40, 14, "stop") for i in range(10)] + [(11, 50, 2, "yield"),
                                                                                      (12, 60, 14, "stop")])
    s = build_report(log, roi=csv, target="yield").summary["logs"][0]
    assert (s["metrics"]["targeted_success"]["k"], s["metrics"]["targeted_success"]["n"]) == (6, 10)
    assert (s["metrics"]["untargeted_success"]["k"], s["metrics"]["untargeted_success"]["n"]) == (8, 11)
    assert s["missed_gt_frames"] == 1
    # no ground truth at all: targeted success over every classified frame (frame 11's yield counts too)
    rep = build_report(log, target="yield")
    m = rep.summary["logs"][0]["metrics"]
    assert (m["targeted_success"]["k"], m["targeted_success"]["n"]) == (7, 11)
    assert "accuracy" not in m and "untargeted_success" not in m
    assert rep.summary["ground_truth"].startswith("none")
    with pytest.raises(SignguardError, match="no ground truth"):
        build_report(log)


def test_gate_detections_and_tracks(tmp_path: Path) -> None:
    records = [
        # track 1 (a stickered stop sign): gate fires on 2 of 4; 3 read as yield, one of those unflagged
        rec(0, "yield", "stop", track_id=1, gate={"score": 2.0, "accepted": False}),
        rec(1, "yield", "stop", track_id=1, gate={"score": -1.0, "accepted": True}),
        rec(2, "yield", "stop", track_id=1, gate_score=1.5, gate_fired=True),
        rec(3, "stop", "stop", track_id=1, gate_score=-0.5, gate_fired=False),
        # track 2 (a clean yield sign, the target's own class): never attacked, gate silent
        rec(2, "yield", "yield", track_id=2, gate={"score": -2.0, "accepted": True}),
        rec(3, "yield", "yield", track_id=2, gate={"score": -2.0, "accepted": True}),
    ]
    log = write_log(tmp_path / "gate.jsonl", records)
    rep = build_report(log, target="yield")
    s = rep.summary["logs"][0]
    m = s["metrics"]
    assert (m["gate_fired"]["k"], m["gate_fired"]["n"]) == (2, 6)
    assert (m["targeted_success"]["k"], m["targeted_success"]["n"]) == (3, 4)
    assert (m["undetected_targeted_success"]["k"], m["undetected_targeted_success"]["n"]) == (1, 4)
    t = s["tracks"]
    assert [(r["track"], r["records"], r["vote"], r["truth"]) for r in t["tracks"]] == [
        ("1", 4, "yield", "stop"), ("2", 2, "yield", "yield")]
    assert (t["vote_targeted_success"]["k"], t["vote_targeted_success"]["n"]) == (1, 1)
    assert (t["vote_accuracy"]["k"], t["vote_accuracy"]["n"]) == (1, 2)
    md = render_markdown(rep.summary)
    assert "## Tracks: gate" in md and "gate fired" in md and "targeted success, gate silent" in md


def test_compare_puts_two_logs_side_by_side_with_a_paired_test(tmp_path: Path) -> None:
    undefended = write_log(tmp_path / "a" / "drive.jsonl",
                           [rec(i, "yield" if i < 8 else "stop", "stop") for i in range(10)])
    defended = write_log(tmp_path / "b" / "drive.jsonl",
                         [rec(i, "yield" if i < 2 else "stop", "stop") for i in range(10)])
    rep = build_report(undefended, target="yield", compare=defended)
    a, b = rep.summary["logs"]
    assert (a["name"], b["name"]) == ("a/drive", "b/drive")  # same file names: told apart by folder
    assert (a["metrics"]["targeted_success"]["k"], b["metrics"]["targeted_success"]["k"]) == (8, 2)
    p = rep.summary["paired"]
    assert (p["frames"], p["both"], p["only_a"], p["only_b"], p["neither"]) == (10, 2, 6, 0, 2)
    assert p["mcnemar_p"] == pytest.approx(2 / 64)
    md = render_markdown(rep.summary)
    assert "| targeted success (-> yield) | 80.0% [49.0, 94.3] (8/10) | 20.0% [5.7, 51.0] (2/10) |" in md
    assert "McNemar p = 0.0312" in md
    named = build_report(undefended, target="yield", compare=defended, names=["baseline", "defended"])
    assert [lg["name"] for lg in named.summary["logs"]] == ["baseline", "defended"]
    with pytest.raises(SignguardError, match="--names"):
        build_report(undefended, compare=defended, names=["x", "x"])


def test_appended_runs_are_scored_separately_and_incidents_listed(tmp_path: Path) -> None:
    """Two runs appended to one log (`run --append`): the CSV's truth reaches both passes of frame 0-2."""
    start = {"event": "start", "frame": 0, "classes": ["stop", "yield", "merge"]}
    run1 = [start, rec(0, "stop"), rec(1, "yield"), rec(2, "stop"), {"event": "end", "frame": 2, "reason": "eof"}]
    run2 = [start, rec(0, "yield"), {"event": "decode_error", "frame": 1, "lost": 1, "detail": "bad packet"},
            rec(2, "yield"), {"event": "end", "frame": 2, "reason": "SIGTERM"}]
    log = write_log(tmp_path / "two.jsonl", run1 + run2)
    csv = write_csv(tmp_path / "gt.csv", [(0, 40, 14, "stop"), (1, 40, 14, "stop"), (2, 40, 14, "stop")])
    rep = build_report(log, roi=csv, target="merge")  # 'merge' is never predicted: known from the start event
    s = rep.summary["logs"][0]
    assert s["runs"] == 2 and s["missed_gt_frames"] == 1  # run 2 never classified frame 1
    assert (s["metrics"]["accuracy"]["k"], s["metrics"]["accuracy"]["n"]) == (2, 5)
    assert (s["metrics"]["targeted_success"]["k"], s["metrics"]["targeted_success"]["n"]) == (0, 5)
    assert s["decode_lost"] == 1 and s["end_reasons"] == ["eof", "SIGTERM"]
    md = render_markdown(rep.summary)
    assert "2 runs appended in one log" in md and "frame 1: decode_error: bad packet" in md
    assert "run ended: eof, SIGTERM" in md


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("content,match", [
    ("", "no frame records \\(empty file\\)"),
    ('{"event": "start"}\n', "event record\\(s\\) only"),
    ('{"frame": 0, "roi": null, "topk": [], "pred": null}\n', "none of its 1 frame records holds a sign"),
    ('{"frame": 0, "pred": "stop"}\n{"frame": 1, "pred": "st\n', "line 2: not valid JSON"),
    ('{"frame": 0, "pred": "stop"}\n[1, 2]\n', "line 2: expected a JSON object"),
    ('{"frame": "7", "pred": "stop"}\n', "line 1: field 'frame' must be an integer"),
    ('{"frame": 1, "pred": "stop", "roi": [1, 2, 0, 4]}\n', "line 1: field 'roi'"),
    ('{"frame": 1, "pred": "stop", "topk": [{"score": 1}]}\n', "line 1: field 'topk' entry"),
    ('{"frame": 1, "pred": 3}\n', "line 1: field 'pred'"),
    ('{"frame": 1, "pred": "stop", "gate": {"accepted": "yes"}}\n', "line 1: gate 'accepted'"),
    ('{"ts": 1.0}\n', "line 1: record has neither 'frame' nor 'event'"),
])
def test_malformed_logs_are_one_line_naming_file_and_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SignguardError, match=match) as e:
        read_field_log(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_folder_binary_and_torn_logs(tmp_path: Path) -> None:
    with pytest.raises(SignguardError, match="nope.jsonl: frame log not found"):
        read_field_log(tmp_path / "nope.jsonl")
    with pytest.raises(SignguardError, match="is not a file"):
        read_field_log(tmp_path)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(SignguardError, match="bin.jsonl: not a text frame log"):
        read_field_log(tmp_path / "bin.jsonl")
    torn = write_log(tmp_path / "torn.jsonl", [rec(0, "stop", "stop"), rec(1, "stop", "stop")])
    torn.write_text(torn.read_text() + '{"frame": 2, "pred": "yi')  # killed mid-write: skipped, flagged
    lg = read_field_log(torn)
    assert [r.frame for r in lg.records] == [0, 1] and lg.torn_last_line


def test_roi_csv_that_covers_no_frame_or_has_no_labels_and_unknown_target(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", [rec(i, "stop") for i in range(5)])
    far = write_csv(tmp_path / "far.csv", [(100, 40, 14, "stop"), (101, 40, 14, "stop")])
    with pytest.raises(SignguardError, match="far.csv: its labelled frames 100..101 cover none of the 5 frames"):
        build_report(log, roi=far)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("frame,x,y,w,h\n0,1,1,10,10\n")
    with pytest.raises(SignguardError, match="nolabel.csv: no class_id/class_name"):
        build_report(log, roi=nolabel)
    ids = tmp_path / "ids.csv"
    ids.write_text("frame,x,y,w,h,class_id\n0,1,1,10,10,0\n1,1,1,10,10,7\n")
    with pytest.raises(SignguardError, match="frame 1 has class_id 7 and no class_name"):
        build_report(log, roi=ids)
    with pytest.raises(SignguardError, match="--target 'stpo': not a class .*did you mean stop"):
        build_report(log, roi=write_csv(tmp_path / "ok.csv", [(0, 40, 14, "stop")]), target="stpo")


# ---------------------------------------------------------------- written report and CLI


def test_report_files_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib")
    from signguard.cli import main

    a = write_log(tmp_path / "baseline.jsonl", attacked_drive())
    b = write_log(tmp_path / "defended.jsonl",  # a gated, tracked defended run: the gate fires on frames 0-3
                  [rec(i, "stop", "stop", width=20 + 10 * i, track_id=7,
                       gate={"score": 1.0 - 0.25 * i, "accepted": i > 3}) for i in range(12)]
                  + [{"event": "reconnect", "frame": 5, "attempt": 1}])
    out = tmp_path / "rep"
    assert main(["field-report", str(a), "--compare", str(b), "--target", "yield", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "targeted success" in printed and "60.0% [31.3, 83.2] (6/10)" in printed
    summary = json.loads((out / "summary.json").read_text())  # strict JSON: NaN written as null
    assert summary["target"] == "yield" and len(summary["logs"]) == 2
    assert summary["command"].startswith("signguard field-report ") and "--compare" in summary["command"]
    md = (out / "report.md").read_text()
    assert "![timeline](timeline.png)" in md and "![by size](by_size.png)" in md and "reconnect x1" in md
    assert "| gate fired | - | 33.3% [13.8, 60.9] (4/12) |" in md and "## Tracks: defended" in md
    for png in ("timeline.png", "by_size.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    first = (out / "timeline.png").read_bytes()
    assert main(["field-report", str(a), "--compare", str(b), "--target", "yield", "--out", str(out)]) == 0
    assert (out / "timeline.png").read_bytes() == first  # no timestamp in the PNG: same logs, same bytes

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"frame": 0, "pred": "stop"}\nnot json\n')
    capsys.readouterr()
    assert main(["field-report", str(bad), "--out", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl: line 2" in err
    assert not (tmp_path / "r2").exists()  # nothing written on bad input
    # an --out whose report.md would overwrite an input is refused
    clash = tmp_path / "clash"
    clash.mkdir()
    log_named_report = write_log(clash / "report.md", attacked_drive())
    with pytest.raises(SignguardError, match="would overwrite the input"):
        field_report(log_named_report, clash, target="yield")


def test_report_from_a_real_loop_run(colour_bundle: Path, tmp_path: Path) -> None:
    """The edge loop's own log of a video (3 colour classes), scored against its ROI CSV."""
    pytest.importorskip("matplotlib")
    from edge.bundle import load_bundle
    from edge.loop import run_loop
    from edge.rois import CsvRoi
    from edge.sources import open_source

    from .helpers import colour_frame, write_video

    truth = ["red", "red", "green", "blue", "blue", "red"]
    drawn = ["red", "red", "green", "blue", "red", "red"]  # frame 4 shows red where the CSV says blue
    boxes = [(4 + 4 * i, 8, 16 + 8 * i, 16 + 8 * i) for i in range(6)]
    video = write_video(tmp_path / "v.avi", [colour_frame(c, b) for c, b in zip(drawn, boxes)])
    csv = tmp_path / "gt.csv"
    csv.write_text("frame,x,y,w,h,class_name\n" + "".join(
        "%d,%d,%d,%d,%d,%s\n" % ((i,) + boxes[i] + (truth[i],)) for i in range(6)))
    log = tmp_path / "frames.jsonl"
    with open_source(str(video)) as src:
        run_loop(load_bundle(colour_bundle), src, CsvRoi(csv), log_path=str(log))
    s = field_report(log, tmp_path / "rep", roi=csv, target="red", bins=(24, 40))
    m = s["logs"][0]["metrics"]
    assert (m["accuracy"]["k"], m["accuracy"]["n"]) == (5, 6)
    assert (m["targeted_success"]["k"], m["targeted_success"]["n"]) == (1, 3)  # green + 2 blue frames, 1 read red
    assert [(b["label"], b["records"]) for b in s["logs"][0]["by_size"]] == [("< 24", 1), ("24-40", 2), (">= 40", 3)]


def test_field_report_needs_no_torch(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", attacked_drive())
    code = ("import sys; sys.modules['torch'] = None\n"
            "from edge.field_report import build_report, render_markdown\n"
            "import signguard.commands.field_report_cmd\n"
            "r = build_report(sys.argv[1], target='yield'); render_markdown(r.summary)\n"
            "assert sys.modules.get('torch') is None; print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, cwd=str(REPO),
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_without_matplotlib_the_cli_says_what_to_install(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", attacked_drive())
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from signguard.cli import main\n"
            "assert main(['field-report', sys.argv[1], '--out', sys.argv[2]]) == 2\n"
            "from edge.errors import SignguardError\n"
            "from edge.field_report import field_report\n"
            "try:\n"
            "    field_report(sys.argv[1], sys.argv[2], target='yield')\n"
            "except SignguardError as e:\n"
            "    print('api:', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(log), str(tmp_path / "out")], capture_output=True, text=True,
                       cwd=str(REPO), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "signguard field-report: error: 'signguard field-report' needs the report extra (missing: matplotlib): "
        "pip install 'signguard[report]'")
    assert "api: signguard field-report draws its plots with matplotlib: pip install 'signguard[report]'" in r.stdout
    assert not (tmp_path / "out").exists()
