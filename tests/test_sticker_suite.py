"""bench/sticker_suite.py: the one command behind both datasets' sticker tables, and the strongest-sticker merge
that scores a gated model against both of its surrogates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import sticker_robustness as sr
from bench import sticker_suite as suite

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "suite.yaml"
    f.write_text(text)
    return f


def test_the_repositorys_suite_names_existing_recipes_and_builds_runs_before_their_users():
    """A typo in bench/sticker_suite.yaml would surface only after hours of training; check it now."""
    import yaml

    attack, out, tables = suite.load_suite(ROOT / suite.SUITE)
    assert {t.name for t in tables} == {"synthetic", "gtsrb32"} and attack["steps"] == 300
    for t in tables:
        runs_so_far: set[str] = set()
        for m in t.models:
            cfg = ROOT / m.config
            assert cfg.is_file(), f"{m.label}: {m.config} missing"
            init = yaml.safe_load(cfg.read_text())["model"].get("init")
            init = next((s.split("=", 1)[1] for s in m.set if s.startswith("model.init=")), init)
            assert init is None or init in runs_so_far, f"{m.label} starts from {init}, not built before it"
            runs_so_far.add(m.run)


@pytest.mark.parametrize("text, match", [
    ("tables: []", "tables: expected a non-empty list"),
    ("attack: {steps: fast}\ntables: [{name: a, models: [{label: m, run: r, config: c}]}]", r"attack\.steps"),
    ("attack: {stpes: 3}\ntables: [{name: a, models: [{label: m, run: r, config: c}]}]", "unknown field"),
    ("tables: [{name: a, models: [{label: m, run: r}]}]", r"models\[0\]\.config"),
    ("tables: [{name: a, models: [{label: m, run: r, config: c, bundel: b}]}]", r"unknown field\(s\) \['bundel'\]"),
    ("tables: [{name: a, models: [{label: m, run: r, config: c}, {label: m, run: s, config: c}]}]",
     "'m' is used twice"),
    ("tables: [{name: a, models: [{label: m, run: r, config: c, set: [epochs]}]}]", "KEY=VALUE"),
    ("tables: [{name: a, models: [{label: m, run: r, config: c}]}, {name: a, models: [{label: n, run: r, config: c}]}]",
     "table name 'a' is used twice"),
])
def test_a_bad_suite_names_its_file_and_field(tmp_path, text, match):
    f = _write(tmp_path, text)
    with pytest.raises(SystemExit, match=match) as e:
        suite.load_suite(f)
    assert str(f) in str(e.value)


def test_only_missing_runs_are_trained_and_missing_bundles_exported(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "model.json").write_text("{}")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    f = _write(tmp_path, f"""
tables:
  - name: a
    models:
      - {{label: trained, run: {done}, config: c.yaml, bundle: {bundle}}}
      - {{label: new, run: {tmp_path / 'new'}, config: n.yaml, set: [optim.epochs=2], bundle: {tmp_path / 'nb'}}}
  - name: b
    models:
      - {{label: again, run: {tmp_path / 'new'}, config: n.yaml}}
""")
    _, _, tables = suite.load_suite(f)
    assert suite.build_steps(tables) == [
        ["train", "--config", "n.yaml", "--run-dir", str(tmp_path / "new"), "--resume", "--quiet",
         "--set", "optim.epochs=2"],
        ["export", "--checkpoint", str(tmp_path / "new"), "--out", str(tmp_path / "nb"), "--precision", "fp32",
         "int8", "--quiet"],
    ]  # the trained run and its bundle are left alone; a run two tables share is trained once


def _evaluation(successes: list[float]) -> dict:
    return {"n_views": 40, "clean_accuracy": 1.0,
            "per_target": [{"target": t, "targeted_success": s, "untargeted_success": s} for t, s in
                           enumerate(successes)]}


def test_the_strongest_sticker_is_kept_per_target_and_the_same_sticker_scores_the_deployed_graph():
    soft, bpda = _evaluation([0.1, 0.5, 0.0]), _evaluation([0.3, 0.2, 0.0])
    picks = sr.strongest([soft, bpda])
    assert picks == [1, 0, 0]  # ties keep the first attack
    assert [p["targeted_success"] for p in sr.merged([soft, bpda], picks)["per_target"]] == [0.3, 0.5, 0.0]
    # the INT8 graph is scored with the stickers chosen on PyTorch, even where another would do better there
    int8_soft, int8_bpda = _evaluation([0.9, 0.4, 0.0]), _evaluation([0.2, 0.8, 0.0])
    assert [p["targeted_success"] for p in sr.merged([int8_soft, int8_bpda], picks)["per_target"]] == [0.2, 0.4, 0.0]
    # untargeted stickers are picked by the share of poses they change, not by a target they do not have
    a, b = _evaluation([0.0, 0.0]), _evaluation([0.0, 0.0])
    a["per_target"][0]["untargeted_success"], b["per_target"][0]["untargeted_success"] = 0.2, 0.6
    assert sr.strongest([a, b], "untargeted_success") == [1, 0] and sr.strongest([a, b]) == [0, 0]


def test_a_gated_models_row_records_both_surrogates_and_an_older_row_is_measured_again(tmp_path, monkeypatch):
    import argparse
    import json

    import torch

    from train.checkpoint import save_checkpoint

    meta = {"architecture": {"name": "lisa_cnn_tiny", "options": {}}, "classes": ["a"], "defense": {"kind": "prn"}}
    save_checkpoint(tmp_path / "run" / "model", torch.nn.Linear(2, 2), meta)
    measured = []
    monkeypatch.setattr(sr, "evaluate", lambda label, path, args, tv, ho, bundle: measured.append(1) or
                        {"m": 1, "rp2_untargeted": {}})
    args = argparse.Namespace(sign="stop", views=20, heldout=40, steps=300, seed=0)
    rows = tmp_path / "rows"
    sr.cached_row("gate", str(tmp_path / "run"), args, None, None, rows)
    saved = json.loads((rows / "gate.json").read_text())
    assert saved["key"]["surrogates"] == ["soft select", "bpda"]
    del saved["key"]["surrogates"]  # a row from before BPDA joined the attack
    (rows / "gate.json").write_text(json.dumps(saved))
    sr.cached_row("gate", str(tmp_path / "run"), args, None, None, rows)
    assert measured == [1, 1]


def test_a_gated_model_is_attacked_through_the_soft_select_and_through_bpda_a_plain_one_directly():
    import torch

    from tests.test_prn import _gated
    from train.attacks.gate_surrogate import SoftGate
    from train.models import create_model

    soft, bpda = sr.attack_views(_gated(0.0))
    assert isinstance(soft, SoftGate) and isinstance(bpda, SoftGate) and not soft.bpda and bpda.bpda
    plain = create_model("lisa_cnn_tiny", num_classes=4)
    assert sr.attack_views(plain) == [plain]
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(soft(x), bpda(x))  # two different surrogates of the one hard gate


def test_a_cached_row_from_before_the_untargeted_attack_gains_only_those_cells(tmp_path, monkeypatch):
    """Rows cost minutes to hours: one measured before untargeted RP2 existed keeps its cells and gets the new
    ones added (and saved), instead of being measured again from scratch."""
    import argparse
    import json

    import torch

    from train.checkpoint import save_checkpoint

    meta = {"architecture": {"name": "lisa_cnn_tiny", "options": {}}, "classes": ["a"]}
    save_checkpoint(tmp_path / "run" / "model", torch.nn.Linear(2, 2), meta)
    monkeypatch.setattr(sr, "evaluate", lambda *a, **k: pytest.fail("a cached row was measured again"))
    added = []

    def add(row, path, args, tv, ho, bundle, loaded=None):
        added.append(path)
        return {**row, "rp2_untargeted": {"whitebox": 0.5, "lowfreq": 1.0}}

    monkeypatch.setattr(sr, "add_untargeted", add)
    args = argparse.Namespace(sign="stop", views=20, heldout=40, steps=300, seed=0)
    rows = tmp_path / "rows"
    rows.mkdir()
    key = {"weights_sha256": json.loads((tmp_path / "run" / "model.json").read_text())["weights_sha256"],
           "sign": "stop", "views": 20, "heldout": 40, "steps": 300, "seed": 0}
    (rows / "old.json").write_text(json.dumps({"key": key, "row": {"model": "old", "rp2_whitebox": {"x": 1}}}))
    row = sr.cached_row("old", str(tmp_path / "run"), args, None, None, rows)
    assert row == {"model": "old", "rp2_whitebox": {"x": 1}, "rp2_untargeted": {"whitebox": 0.5, "lowfreq": 1.0}}
    assert json.loads((rows / "old.json").read_text())["row"] == row  # saved with the new cells
    sr.cached_row("old", str(tmp_path / "run"), args, None, None, rows)
    assert len(added) == 1  # the second call finds them
