"""bench/fru_report.py: re-measuring one dataset keeps the other dataset's section of the report, and the rows
of runs that are not on this machine."""

from __future__ import annotations

import json

from bench import fru_report, fru_tables
from bench.fru_heldout import held_out_files, held_out_overlap


def test_report_for_one_dataset_keeps_the_others_numbers():
    assert fru_report.kept_sections({}, ["gtsrb32"]) == {}  # no earlier report: nothing to keep
    old = {"lisa18": {"restoration": {"summary": {"restoration_def": 0.957}}},
           "gtsrb32": {"restoration": {"summary": {"restoration_def": 0.839}}}, "machine": "x86_64"}
    assert fru_report.kept_sections(old, ["gtsrb32"]) == {"lisa18": old["lisa18"]}
    assert fru_report.kept_sections(old, ["lisa18", "gtsrb32"]) == {}


def _row(run: str, score: float, **extra) -> dict:
    return {"run": run, "restoration_def": score, **extra}


def test_earlier_rows_are_kept_labelled_by_their_base_and_superseded_on_the_same_base():
    earlier = {"base": {"test_acc": 0.9352},
               "ablations": [_row("fru", 0.919), _row("ablation_q25", 0.711)],
               "recipe_steps": [_row("fru_e30", 0.796), _row("fru", 0.919)]}
    now = {"base": {"test_acc": 0.9355},
           "ablations": [_row("fru", 0.93, base_acc=0.9355)],
           "recipe_steps": [_row("fru", 0.93, base_acc=0.9355)]}
    res = fru_tables.carry_earlier(now, earlier)
    # runs not on disk survive with the base they were measured on; a name re-used on the new base is renamed
    assert [(r["run"], r["base_acc"], r["restoration_def"]) for r in res["recipe_steps"]] == [
        ("fru_e30", 0.9352, 0.796), ("fru (earlier base)", 0.9352, 0.919), ("fru", 0.9355, 0.93)]
    assert [r["run"] for r in res["ablations"]] == ["fru (earlier base)", "ablation_q25", "fru"]
    # the next report on the same base replaces its own earlier rows and keeps the rest once
    again = fru_tables.carry_earlier({"base": {"test_acc": 0.9355}, "ablations": [_row("fru", 0.94, base_acc=0.9355)],
                                      "recipe_steps": [_row("fru", 0.94, base_acc=0.9355)]}, res)
    assert [(r["run"], r["restoration_def"]) for r in again["recipe_steps"]] == [
        ("fru_e30", 0.796), ("fru (earlier base)", 0.919), ("fru", 0.94)]
    assert fru_tables.carry_earlier(dict(now), None) == now  # no earlier report: nothing changes


def test_held_out_seeds_are_never_training_seeds():
    # one (method, seed) makes one perturbation on a given base: a shared pair would be scored as "held out"
    # while the units trained on it (GTSRB-32's sPGD 1-109 once held the test seeds 101-103)
    test = {(m, s) for m, s, _ in fru_report.CHECK_SET}
    assert test >= {(m, s) for m, s, _ in fru_report.TEST_SET}
    for ds, items in fru_report.TRAIN_SETS.items():
        assert not test & {(m, s) for m, s, _ in items}, ds


def test_a_held_out_perturbation_found_in_training_stops_the_report(tmp_path):
    import numpy as np
    import pytest

    rng = np.random.default_rng(0)
    train = rng.uniform(-0.1, 0.1, (4, 3, 8, 8)).astype(np.float32)
    test = rng.uniform(-0.1, 0.1, (2, 3, 8, 8)).astype(np.float32)
    assert held_out_overlap(test, train, tmp_path) < 0.5  # independent noise: far from 1
    with pytest.raises(SystemExit, match="also in train/"):
        held_out_overlap(np.stack([test[0], train[2]]), train, tmp_path)


def test_larger_budget_sentence_says_how_the_units_were_trained():
    """The check budget's numbers read differently when the units saw scaled-up training perturbations."""
    from bench.fru_tables import check_sentence

    check = {"xi": 36 / 255, "summary": {"fooling_base": 0.819, "restoration_def": 0.951, "restoration_base": 0.594,
                                         "min_restoration_def": 0.93, "fooling_def": 0.1}}
    plain, scaled = check_sentence(check), check_sentence(check, 1.25)
    assert "36/255" in plain and "0.951" in plain and "scaled" not in plain and "meets the target" in plain
    assert "short of the 0.95 target" in check_sentence({**check, "summary": {**check["summary"],
                                                                              "restoration_def": 0.945}})
    assert "uniform in [1, 1.25]" in scaled
    check["seeds"] = "sPGD seeds 101-113, UAP seeds 101-107"
    check["rows"] = [{"name": "spgd_s101"}, {"name": "akhtar_0"}, {"name": "akhtar_1"}]
    named = check_sentence(check, further_round=True)
    assert "sPGD seeds 101-113, UAP seeds 101-107 and 2 Akhtar" in named and "further round" in named
    assert check_sentence(None) == ""


def test_unit_width_is_named_only_where_it_is_not_the_default():
    from bench.fru_tables import widened

    assert widened(1.0) == ""
    assert "2x as wide" in widened(2.0) and "1.5x" in widened(1.5)


def test_a_further_round_is_named_with_its_starting_units_and_count():
    from bench.fru_tables import further

    assert further({"secondary": ""}, None, "12 epochs") == "trained 12 epochs on "
    text = further({"units": "runs/fru/gtsrb32/fru_round1", "secondary": "p/secondary"}, 40, "30 epochs")
    assert "`runs/fru/gtsrb32/fru_round1`" in text and "40 universal perturbations" in text
    assert "the second, 30 epochs," in text  # the schedule is the further round's, not the whole training


def test_secondary_items_are_made_against_the_first_round_at_their_own_budget(tmp_path, monkeypatch):
    """An item's "xi" is the budget it is made at; the others take the dataset's.  The secondary seeds stay apart
    from the held-out ones and from the report's white-box spgd_s201."""
    import train.eval.attack_artifacts as artifacts

    made = []

    class _Made:  # what perturbations() reads of an attack artifact
        metrics = {"fooling_ratio": 0.9, "heldout_fooling_ratio": 0.9}

    def record(model, out, *, method, seed, xi, **params):
        made.append((model.name, out.parent.name, method, seed, round(xi * 255)))
        return _Made()

    monkeypatch.setattr(artifacts, "universal_perturbation", record)
    monkeypatch.setattr(fru_report, "run_root", lambda ds: tmp_path / ds)
    fru_report.perturbations("gtsrb32", ["secondary"])
    against, items = fru_report.SECONDARY["gtsrb32"]
    assert len(made) == len(items) and {m[0] for m in made} == {against}
    assert {m[1] for m in made} == {"secondary"}
    budgets = {seed: xi for _, _, _, seed, xi in made}
    assert budgets[301] == 32 and budgets[321] == 36
    seeds = {s for _, s, _ in items}
    assert not seeds & {s for _, s, _ in fru_report.CHECK_SET} and 201 not in seeds


def test_a_grown_held_out_set_changes_the_cache_key(tmp_path):
    """The restoration cache must not serve numbers measured on fewer held-out perturbations than are on disk."""
    def add(folder: str, name: str, sha: str) -> None:
        d = tmp_path / folder / name
        d.mkdir(parents=True)
        (d / "uap.npy.json").write_text(json.dumps({"sha256": sha}), encoding="utf-8")

    add("test", "spgd_s101", "aa")
    add("train", "spgd_s1", "bb")  # training perturbations are not held out
    before = held_out_files(tmp_path)
    assert before == ["test/spgd_s101:aa"]
    add("test_xi36", "spgd_s104", "cc")
    assert held_out_files(tmp_path) == ["test/spgd_s101:aa", "test_xi36/spgd_s104:cc"]
    assert held_out_files(tmp_path, "test") == before  # the ablations' key: they read test/ alone
