"""bench/field_test.py helpers: which sticker each model faces, the issue's drive-by criterion, and unique sticker
names in `signguard verify` (several stickers may share a sign and a target)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.field_stickers import FALLBACK_TARGET, strongest, worst_target
from bench.field_tables import done_when, status, verdict
from edge.errors import SignguardError
from edge.events import make_event
from edge.field_report import build_report
from edge.framelog import FrameLog, make_record
from train.attacks.sticker_io import save_sticker
from train.data.classes import LISA_CLASSES
from train.eval.artifact import sticker_names

ROBUSTNESS = {"rows": [
    {"model": "baseline", "rp2_whitebox": {"worst_target": "yield", "worst_asr": 0.925},
     "rp2_lowfreq": {"worst_target": "speedLimitUrdbl", "worst_asr": 1.0}},
    {"model": "doa", "rp2_whitebox": {"worst_target": "merge", "worst_asr": 0.8}}]}
PRN = {"stickers": {"lowfreq": {"worst_target": "keepRight", "worst_asr": 0.65},
                    "bpda": {"worst_target": "rightLaneMustTurn", "worst_asr": 0.4}}}


def test_worst_target_reads_each_models_row_and_falls_back() -> None:
    assert worst_target("baseline", "lowfreq", ROBUSTNESS, PRN)[0] == "speedLimitUrdbl"
    assert worst_target("baseline", "whitebox", ROBUSTNESS, PRN)[0] == "yield"
    assert worst_target("doa", "whitebox", ROBUSTNESS, PRN)[0] == "merge"
    # the gate's targets come from the PRN report: BPDA for white-box, the soft select for low-frequency
    assert worst_target("prn_gate", "whitebox", ROBUSTNESS, PRN)[0] == "rightLaneMustTurn"
    assert worst_target("prn_gate", "lowfreq", ROBUSTNESS, PRN)[0] == "keepRight"
    # no row for the attack (doa low-frequency), no row for the model, no reports at all
    for model, kind, rob in (("doa", "lowfreq", ROBUSTNESS), ("column_smoothing", "whitebox", ROBUSTNESS),
                             ("baseline", "whitebox", None)):
        target, source = worst_target(model, kind, rob, None)
        assert (target, source.endswith("fallback")) == (FALLBACK_TARGET, True)


def test_strongest_by_int8_success_then_success_when_made_then_order() -> None:
    c = ["m__whitebox", "m__lowfreq"]
    assert strongest(c, {"m__whitebox": 0.6, "m__lowfreq": 0.9}, {"m__whitebox": 1.0, "m__lowfreq": 0.5}) \
        == "m__lowfreq"
    assert strongest(c, {"m__whitebox": 0.9, "m__lowfreq": 0.9}, {"m__whitebox": 0.7, "m__lowfreq": 0.8}) \
        == "m__lowfreq"
    assert strongest(c, {"m__whitebox": 1.0, "m__lowfreq": 1.0}, {"m__whitebox": 1.0, "m__lowfreq": 1.0}) \
        == "m__whitebox"
    with pytest.raises(ValueError):
        strongest([], {}, {})


def _metrics(tmp_path: Path, name: str, preds: list, target: str = "yield") -> dict:
    """Field metrics of a real frame log of a stop-sign drive whose frames read ``preds``."""
    log = tmp_path / (name + ".jsonl")
    with FrameLog(log) as f:
        f.write(make_event("start", 0, "run started", source="drive.mp4", ts=999.0, classes=LISA_CLASSES))
        for i, p in enumerate(preds):
            f.write(make_record(i, (10.0, 10.0, 40.0, 40.0), [{"class": p, "index": 0, "score": 0.9}], p, "stop",
                                {"capture": 1.0, "preprocess": 0.2, "infer": 0.5, "total": 2.0}, ts=1000.0 + i))
    return build_report(log, target=target).summary["logs"][0]["metrics"]


def test_done_when_needs_both_the_fooled_baseline_and_the_defended_reading_stop(tmp_path: Path) -> None:
    fooled = _metrics(tmp_path, "base", ["yield"] * 17 + ["stop"] * 3)  # fooled 85%
    weak = _metrics(tmp_path, "weak", ["yield"] * 15 + ["stop"] * 5)  # fooled 75%
    holds = _metrics(tmp_path, "def_ok", ["stop"] * 19 + ["merge"])  # reads stop 95%
    fails = _metrics(tmp_path, "def_bad", ["stop"] * 18 + ["yield"] * 2)  # 90%
    c = done_when(fooled, holds)
    assert c["holds"] and c["undefended_fooled"] == pytest.approx(0.85)
    assert c["defended_reads_stop"] == pytest.approx(0.95) and c["defended_reads_stop_ci_low"] < 0.95
    assert not done_when(fooled, fails)["holds"]
    assert not done_when(weak, holds)["holds"]  # the attack itself is too weak for the criterion to apply
    # untargeted success counts every non-stop frame, not only the target's
    assert done_when(_metrics(tmp_path, "other", ["merge"] * 20), holds)["undefended_fooled"] == 1.0
    # the README's sentence names what holds, else the closest miss and by how much
    assert "holds** for `doa` on `d1`" in verdict({("doa", "d1"): c, ("cs", "d1"): done_when(fooled, fails)})
    miss = verdict({("doa", "d1"): done_when(weak, fails), ("cs", "d2"): done_when(fooled, fails)})
    assert "does not hold" in miss and "`doa` on `d1` reads stop in 90.0%" in miss and "5.0 points short" in miss
    # a pass against the undefended model's sticker names the defense's own adaptive sticker when that one wins
    bad = _metrics(tmp_path, "def_fooled", ["yield"] * 20)
    both = verdict({("dd", "sticker_baseline"): c, ("dd", "adaptive_dd"): done_when(fooled, bad)})
    assert "holds** for `dd` on `sticker_baseline`" in both
    assert "Against its own adaptive sticker `dd` reads stop in 0.0% of frames (baseline fooled in 85.0%)" in both
    assert "adaptive" not in verdict({("dd", "sticker_baseline"): c, ("dd", "adaptive_dd"): c}).split("table).")[1]
    # an adaptive sticker that fools neither bundle is no loss for the defense: not reported as one
    unfooled = done_when(holds, holds)
    assert "adaptive" not in verdict({("dd", "sticker_baseline"): c, ("dd", "adaptive_dd"): unfooled}).split(
        "table).")[1]
    assert status(unfooled).startswith("does not apply") and status(c) == "holds"
    assert status(done_when(fooled, fails)).startswith("does not hold")


def _sticker(folder: Path, target: str) -> Path:
    rng = np.random.default_rng(len(str(folder)))
    mask = np.zeros((8, 8), bool)
    mask[2:4, 1:7] = True
    save_sticker(folder, rng.uniform(0, 1, (8, 8, 3)), mask, 20.0, 30, {"sign": "stop", "target": target})
    return folder


def test_verify_names_stickers_that_share_a_target_apart(tmp_path: Path) -> None:
    a = _sticker(tmp_path / "a" / "base__whitebox", "yield")
    b = _sticker(tmp_path / "b" / "doa__whitebox", "yield")
    c = _sticker(tmp_path / "c" / "base__lowfreq", "merge")
    assert sticker_names([a, b, c]) == ["rp2_stop_to_yield@base__whitebox", "rp2_stop_to_yield@doa__whitebox",
                                        "rp2_stop_to_merge"]
    assert sticker_names([c]) == ["rp2_stop_to_merge"]  # the name verify always gave a single sticker
    same = _sticker(tmp_path / "d" / "base__whitebox", "yield")
    with pytest.raises(SignguardError, match="same sign, target and folder name"):
        sticker_names([a, same])


def test_sticker_robustness_reuses_a_row_only_for_the_same_weights_and_settings(tmp_path, monkeypatch):
    """A 300-step row costs minutes: bench/sticker_robustness.py keeps it per model, keyed by the weights' hash and
    the attack settings, so parallel one-model runs can be assembled into one table without recomputing."""
    import argparse

    import torch

    from bench import sticker_robustness as sr
    from train.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    meta = {"architecture": {"name": "lisa_cnn_tiny", "options": {}}, "classes": ["a"]}
    save_checkpoint(tmp_path / "run" / "model", model, meta)
    measured = []
    monkeypatch.setattr(sr, "evaluate", lambda label, path, args, tv, ho, bundle: measured.append(args.steps) or
                        {"model": label, "steps": args.steps, "rp2_untargeted": {}})
    args = argparse.Namespace(sign="stop", views=20, heldout=40, steps=300, seed=0)
    rows = tmp_path / "out" / "rows"
    first = sr.cached_row("m", str(tmp_path / "run"), args, None, None, rows)
    assert sr.cached_row("m", str(tmp_path / "run"), args, None, None, rows) == first and measured == [300]
    args.steps = 60  # other settings: measured again
    assert sr.cached_row("m", str(tmp_path / "run"), args, None, None, rows)["steps"] == 60 and measured == [300, 60]
    model.weight.data += 1  # retrained weights: measured again
    save_checkpoint(tmp_path / "run" / "model", model, meta)
    sr.cached_row("m", str(tmp_path / "run"), args, None, None, rows)
    assert measured == [300, 60, 60]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    sr.cached_row("m", str(tmp_path / "run"), args, None, None, rows, str(bundle))  # scored on a bundle too
    sr.cached_row("m", str(tmp_path / "run"), args, None, None, rows, str(bundle))
    assert measured == [300, 60, 60, 60]
    (bundle / "manifest.json").write_text('{"re-exported": 1}')  # another export: measured again
    sr.cached_row("m", str(tmp_path / "run"), args, None, None, rows, str(bundle))
    assert measured == [300, 60, 60, 60, 60]
    with pytest.raises(SystemExit, match="the label names a file"):
        sr.cached_row("../m", str(tmp_path / "run"), args, None, None, rows)
