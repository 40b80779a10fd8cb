"""The README's main job, end to end (slow: a few minutes on 2 shared cores)."""

import json

import pytest

from signguard.demo import run_demo


def _sign_records(path):
    recs = [json.loads(line) for line in open(path, encoding="utf-8")]
    return [r for r in recs if "event" not in r and r.get("pred")]


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    report = run_demo(tmp_path, quick=True, progress=False)
    assert list(report["models"]) == ["baseline", "blurnet_tv", "prn", "rp2_at"]
    for r in report["models"].values():
        assert r["onnx_max_abs_diff"] <= 1e-4
        assert r["edge_torch_agreement"] >= 0.99
        assert r["edge_classified"] > 0
    assert (tmp_path / "report.md").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["field"] == report["field"]

    field = report["field"]
    assert field["precision"] == "int8" and field["target"] == "yield"
    rows = {(r["video"], r["bundle"]): r for r in field["rows"]}
    assert set(rows) == {(v, b) for v in ("clean", "sticker") for b in report["models"]}
    for (_, bundle), row in rows.items():
        recs = _sign_records(row["log"])
        assert recs and all(r["gt"] == "stop" for r in recs)
        # the report's counts are the frame log's: read as stop, read as the target, over classified frames
        assert row["stop"]["n"] == row["targeted_success"]["n"] == len(recs)
        assert row["stop"]["k"] == sum(r["pred"] == "stop" for r in recs)
        assert row["targeted_success"]["k"] == sum(r["pred"] == "yield" for r in recs)
        lo, hi = row["stop"]["ci"]
        assert lo <= row["stop"]["rate"] <= hi
        if bundle == "prn":  # the fused gate graph decides on every crop, and the report counts its decisions
            assert all(isinstance(r["gate"]["fired"], bool) for r in recs)
            assert all(isinstance(r["gate"]["score"], (int, float)) for r in recs)
            assert row["gate_fired"]["n"] == len(recs)
            assert row["gate_fired"]["k"] == sum(r["gate"]["fired"] for r in recs)
        else:
            assert all(r["gate"] is None for r in recs) and row["gate_fired"] is None
    # same frames in both drives (only the sticker differs), and the sticker made on the baseline fools it
    assert rows["clean", "baseline"]["stop"]["n"] == rows["sticker", "baseline"]["stop"]["n"]
    assert rows["sticker", "baseline"]["stop"]["k"] < rows["clean", "baseline"]["stop"]["k"]
    for p in field["paired"]:
        a, b = rows[p["video"], p["a"]]["stop"]["k"], rows[p["video"], p["b"]]["stop"]["k"]
        assert p["frames"] == rows[p["video"], p["a"]]["stop"]["n"]
        assert (p["both"] + p["only_a"], p["both"] + p["only_b"]) == (a, b)
    # the sticker-trained model resists the baseline's sticker (quick demo trial: stop on 60 of 60 frames, baseline 0)
    assert rows["sticker", "rp2_at"]["stop"]["k"] >= 0.9 * rows["sticker", "rp2_at"]["stop"]["n"]
    assert field["best_defended"] == "rp2_at"
    assert "frames read as stop" in (tmp_path / "report.md").read_text()


def _write_log(path, preds, fired=None):
    """A frame log as the edge loop writes it: a start event naming the classes, one sign record per frame."""
    from train.data.classes import LISA_CLASSES

    lines = [json.dumps({"event": "start", "frame": 0, "classes": list(LISA_CLASSES)})]
    for i, pred in enumerate(preds):
        gate = None if fired is None else {"score": 1.0 if i in fired else -1.0, "fired": i in fired}
        lines.append(json.dumps({"frame": i, "roi": [10.0, 10.0, 20.0, 20.0], "pred": pred,
                                 "topk": [{"class": pred, "index": 0, "score": 0.9}], "gate": gate}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_stop_reads_count_frames_pair_them_and_pick_the_best_defense(tmp_path):
    from signguard.demo_field import field_markdown, stop_reads

    n = 10
    csv = tmp_path / "gt.csv"
    csv.write_text("frame,x,y,w,h,class_id,class_name\n"
                   + "".join(f"{i},10,10,20,20,13,stop\n" for i in range(n)))
    sticker = {0: "stop", 1: "stop"}  # undefended: stop on frames 0-1, yield elsewhere
    tv = {0: "stop", 1: "stop", 2: "stop"}
    prn = {0: "stop", 2: "stop", 3: "stop", 4: "stop", 5: "speedLimit45", 6: "stop"}
    logs = {}
    for name, reads, fired in (("baseline", sticker, None), ("blurnet_tv", tv, None), ("prn", prn, {2, 3, 4, 5, 6})):
        logs["sticker", name] = _write_log(tmp_path / f"s_{name}.jsonl",
                                           [reads.get(i, "yield") for i in range(n)], fired)
        logs["clean", name] = _write_log(tmp_path / f"c_{name}.jsonl", ["stop"] * n,
                                         None if fired is None else {7})
    field = stop_reads(logs, csv, "baseline", ["blurnet_tv", "prn"], "int8")
    rows = {(r["video"], r["bundle"]): r for r in field["rows"]}
    assert [(r["video"], r["bundle"]) for r in field["rows"]] == [
        (v, b) for v in ("clean", "sticker") for b in ("baseline", "blurnet_tv", "prn")]
    got = {k: (r["stop"]["k"], r["targeted_success"]["k"], r["gate_fired"] and r["gate_fired"]["k"])
           for k, r in rows.items()}
    assert got == {("clean", "baseline"): (10, 0, None), ("clean", "blurnet_tv"): (10, 0, None),
                   ("clean", "prn"): (10, 0, 1), ("sticker", "baseline"): (2, 8, None),
                   ("sticker", "blurnet_tv"): (3, 7, None), ("sticker", "prn"): (5, 4, 5)}
    assert all(r["stop"]["n"] == n for r in field["rows"])
    assert field["best_defended"] == "prn"
    pair = next(p for p in field["paired"] if (p["video"], p["b"]) == ("sticker", "prn"))
    # paired on stop reads: frame 0 both, frame 1 only the undefended, frames 2, 3, 4, 6 only the gate
    assert (pair["frames"], pair["both"], pair["only_a"], pair["only_b"], pair["neither"]) == (10, 1, 1, 4, 4)
    md = field_markdown(field, stop_reads(logs, csv, "baseline", ["blurnet_tv", "prn"], "fp32"),
                        {"made_against": "baseline", "attack": {"steps": 150}, "heldout_targeted_success": 0.9,
                         "heldout_views": 40})
    assert "best defended `prn` on 50.0% [23.7, 76.3] (5/10)" in md
    assert "| sticker | prn | 50.0% [23.7, 76.3] (5/10) | 40.0% [16.8, 68.7] (4/10) | 50.0%" in md
