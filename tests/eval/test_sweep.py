"""signguard eval: a tiny sweep writes its report, caches cells, and rejects bad YAML by field; signguard attack
writes its artifacts through the train API."""

import json

import numpy as np
import pytest
import torch
import yaml

from edge.errors import ConfigError
from signguard.cli import main
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.data.classes import LISA_CLASSES
from train.data.datasets import DataBundle, Split
from train.eval.sweep_config import load_sweep
from train.eval.sweep_runner import run_sweep
from train.trainer import train


def _data(n=240, seed=0):
    rng = np.random.default_rng(seed)

    def split(m):
        y = rng.integers(0, 3, m)
        x = rng.uniform(0, 0.3, (m, 3, 32, 32)).astype(np.float32)
        for i, c in enumerate(y):
            x[i, c] += 0.6
        return Split(x.clip(0, 1), y.astype(np.int64))

    return DataBundle(split(n), split(60), split(60), list(LISA_CLASSES), "toy")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, defense in (("base", {"kind": "none"}), ("tv", {"kind": "tv", "alpha": 1e-3})):
        r = Recipe(name=name, data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny"), defense=defense,
                   optim=OptimConfig(epochs=2, batch_size=32, lr=3e-3))
        train(r, root / name, progress=False, data=_data())
    return root


def _sweep(tmp_path, runs, **extra):
    cfg = {"name": "tiny", "views": {"train": 4, "heldout": 4},
           "models": {"base": str(runs / "base"), "tv": str(runs / "tv")},
           "attacks": [{"name": "rp2", "kind": "rp2", "steps": 2, "views_per_step": 2},
                       {"name": "rp2_reg", "kind": "rp2", "steps": 2, "views_per_step": 2,
                        "adaptive": "regularizer"},
                       {"name": "pgd", "kind": "pgd", "eps": 0.0313725, "steps": 2}], **extra}
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_sweep_writes_report_and_reuses_cells(tmp_path, runs, monkeypatch):
    path = _sweep(tmp_path, runs)
    out = tmp_path / "out"
    res = run_sweep(load_sweep(path), out, progress=False)
    assert {r["model"] for r in res["attacks"]["rp2"]} == {"base", "tv"}
    assert [r["model"] for r in res["attacks"]["rp2_reg"]] == ["tv"]  # only a model with a regulariser
    row = res["attacks"]["rp2"][0]
    assert len(row["per_target"]) == 17 and 0 <= row["avg_asr"] <= row["worst_asr"] <= 1
    assert row["worst_asr"] == max(row["per_target"].values())  # the attacker's best target (Table II)
    assert row["avg_asr"] == pytest.approx(np.mean(list(row["per_target"].values())))
    md = (out / "report.md").read_text()
    assert "Threat model" in md and "Budget" in md and "Seed: 0" in md and "| base |" in md
    # the effective configuration, class defaults included, in the report and in every row
    assert "Budget: linf eps=0.0314 (= 8.0/255), 2 steps of 0.00784314, ce loss" in md
    assert res["attacks"]["pgd"][0]["attack_config"]["alpha"] == 2 / 255
    assert res["attacks"]["rp2"][0]["attack_config"]["lam"] == 0.002 and "mask=bars" in md
    assert res["attacks"]["rp2_reg"][0]["attack_config"]["feature_penalty"]  # the regulariser was in the loss
    assert (out / "results.csv").read_text().startswith("attack,model,variant,metric,value")
    assert (out / "stickers" / "rp2__base" / "sticker.pdf").is_file()
    assert (out / "rp2_per_target.png").is_file()
    # cached: an unchanged sweep re-uses every cell with identical numbers, computing none
    from train.eval import sweep_runner

    def no_compute(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr(sweep_runner.Runner, "_compute", no_compute)
    again = run_sweep(load_sweep(path), out, progress=False)
    assert json.dumps(again["attacks"], sort_keys=True) == json.dumps(res["attacks"], sort_keys=True)


def test_sweep_crafts_through_the_surrogate_of_a_defense_without_gradient(tmp_path, runs):
    """Column smoothing's vote has no useful gradient: the sweep's PGD differentiates its soft vote (the adaptive
    view), scores the deployed vote, names the surrogate in the row and the report, and keys the cell by it."""
    from train.checkpoint import load_checkpoint
    from train.eval.sweep_runner import cell_key

    smooth = tmp_path / "smooth"
    r = Recipe(name="smooth", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny"),
               defense={"kind": "column_smoothing", "band": 4, "patch": 5},
               optim=OptimConfig(epochs=2, batch_size=32, lr=3e-3))
    train(r, smooth, progress=False, data=_data())
    cfg = {"name": "smooth", "views": {"train": 2, "heldout": 2}, "models": {"smooth": str(smooth)},
           "attacks": [{"name": "pgd", "kind": "pgd", "eps": 0.25, "steps": 5, "n": 40}]}
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    row = run_sweep(load_sweep(p), out, progress=False)["attacks"]["pgd"][0]
    assert "SoftVote" in row["attacker_view"] and "scored on the vote" in row["attacker_view"]
    assert row["asr"] > 0.3  # the soft vote's gradient moved the deployed vote (the vote's own gradient is zero)
    model, _ = load_checkpoint(smooth)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    assert not model(x).requires_grad  # what a plain white-box attack would have had to differentiate
    sweep = load_sweep(p)
    assert "Crafted through a surrogate, scored on the deployed model: `smooth`: EOT over all ablations" in (
        out / "report.md").read_text()
    a = sweep.attacks[0]
    assert cell_key(a, str(smooth), sweep, row["attacker_view"]) != cell_key(a, str(smooth), sweep)


def test_sweep_cli_and_bad_fields(tmp_path, runs, capsys):
    path = _sweep(tmp_path, runs, quick={"models": ["base"], "drop_attacks": ["rp2_reg", "rp2"]})
    assert main(["eval", str(path), "--quick", "--quiet", "--out", str(tmp_path / "q")]) == 0
    res = json.loads((tmp_path / "q" / "results.json").read_text())
    assert list(res["attacks"]) == ["pgd"] and res["quick"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "models": {"a": "b"}, "attacks": [], "atacks": 1}))
    with pytest.raises(ConfigError, match="unknown field.*atacks"):
        load_sweep(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "models": {"a": "b"}, "attacks": [{"name": "p", "kind": "pgdd"}]}))
    with pytest.raises(ConfigError, match=r"attacks\[0\].kind"):
        load_sweep(bad)
    assert main(["eval", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err


def test_attack_cli_writes_printable_sticker(tmp_path, runs):
    out = tmp_path / "st"
    assert main(["attack", "rp2", str(runs / "base"), "--out", str(out), "--steps", "2", "--views", "4",
                 "--target", "yield"]) == 0
    meta = json.loads((out / "sticker.json").read_text())
    assert meta["meta"]["target"] == "yield" and 0 <= meta["meta"]["heldout_targeted_success"] <= 1
    assert (out / "sticker.png").is_file() and (out / "sticker.pdf").is_file() and (out / "preview.png").is_file()
    assert main(["attack", "pgd", str(runs / "base"), "--out", str(tmp_path / "p"), "--views", "4"]) == 0
    summary = json.loads((tmp_path / "p" / "pgd.json").read_text())
    rate = summary["success_rate"]
    assert summary["alpha"] == 2 / 255 and summary["steps"] == 10  # PGD's defaults: the CLI passed neither
    arrays = np.load(tmp_path / "p" / "pgd.npz")
    assert np.abs(arrays["x_adv"] - arrays["x"]).max() <= 8 / 255 + 1e-6  # budget respected
    assert rate == pytest.approx(np.mean(arrays["pred_adv"] != arrays["y"]))  # the report matches the artifact


def test_attack_cli_universal_perturbation_is_scored_on_heldout_images(tmp_path):
    """`signguard attack uap`: fitted on training images, scored on test images, budget and sidecar honest."""
    r = Recipe(name="tiny", data=DataConfig(train_per_class=6, test_per_class=3), model=ModelConfig("lisa_cnn_tiny"),
               optim=OptimConfig(epochs=1, batch_size=32))
    train(r, tmp_path / "run", progress=False)
    out = tmp_path / "u"
    xi = 0.03
    assert main(["attack", "uap", str(tmp_path / "run"), "--out", str(out), "--method", "spgd", "--xi", str(xi),
                 "--n", "60", "--n-test", "40"]) == 0
    v = np.load(out / "uap.npy")
    meta = json.loads((out / "uap.npy.json").read_text())
    assert v.shape == (3, 32, 32) and np.abs(v).max() <= xi + 1e-6
    assert meta["method"] == "spgd" and meta["n_images"] == 60 and meta["heldout_images"] == 40
    # a budget that fools some held-out images but not all: a different draw would (almost surely) score differently
    assert meta["fooling_ratio"] > 0 and 0 < meta["heldout_fooling_ratio"] < 1
    # the held-out number is the saved perturbation scored on test images (the workflow's seeded draw), not the
    # fit set: the API, called as the CLI calls it, draws the same images and writes the same perturbation
    from train.attacks.uap import apply_universal
    from train.checkpoint import load_checkpoint
    from train.data.datasets import load_checkpoint_data
    from train.eval.attack_artifacts import universal_draw, universal_perturbation

    art = universal_perturbation(tmp_path / "run", tmp_path / "u2", method="spgd", n=60, n_test=40, xi=xi)
    assert np.array_equal(art.extra["v"], v) and art.metrics["heldout_fooling_ratio"] == meta["heldout_fooling_ratio"]
    model, ck = load_checkpoint(tmp_path / "run")
    data = load_checkpoint_data(ck, progress=False)
    fit_idx, idx = universal_draw(len(data.train), len(data.test), 60, 40, seed=0)
    assert np.array_equal(idx, art.extra["heldout_index"]) and np.array_equal(fit_idx, art.extra["fit_index"])
    again = apply_universal(model, torch.from_numpy(data.test.x[idx]), torch.from_numpy(data.test.y[idx]).long(), v)
    assert meta["heldout_fooling_ratio"] == pytest.approx(again.info["fooling_ratio"])
    assert meta["config"] == art.config and art.config["steps"] == 200  # SPGDUniversal's default: not passed


def test_pgd_adversarial_training_is_more_robust_than_plain_training(tmp_path):
    """PGD-AT (BlurNet's Adv-train baseline) learns, and resists PGD far better than plain training."""
    import torch

    from train.attacks.pgd import PGD
    from train.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)

    def split(m):  # classes differ by a small colour offset: PGD at eps 0.06 breaks a plain model
        y = rng.integers(0, 3, m)
        x = rng.uniform(0.3, 0.6, (m, 3, 32, 32)).astype(np.float32)
        for i, c in enumerate(y):
            x[i, c] += 0.15
        return Split(x.clip(0, 1), y.astype(np.int64))

    data = DataBundle(split(300), split(60), split(60), ["a", "b", "c"], "toy")
    robust = {}
    for name, d in (("plain", {"kind": "none"}),
                    ("at", {"kind": "pgd_at", "eps": 0.06, "step_size": 0.02, "attack_steps": 3})):
        r = Recipe(name=name, model=ModelConfig(name="lisa_cnn_tiny"), defense=d,
                   optim=OptimConfig(epochs=4, batch_size=32, lr=3e-3))
        assert train(r, tmp_path / name, progress=False, data=data)["test_acc"] > 0.9
        model, _ = load_checkpoint(tmp_path / name)
        adv = PGD(model, eps=0.06, alpha=0.02, steps=5)(torch.from_numpy(data.test.x), torch.from_numpy(data.test.y))
        robust[name] = float((adv.info["pred_adv"] == data.test.y).mean())
    assert robust["at"] > robust["plain"] + 0.25, robust


def test_legit_accuracy_is_measured_when_the_checkpoint_has_none_or_recorded_it_on_other_data(tmp_path):
    """A run's last.json records no test accuracy, and a run trained on a copy of the dataset recorded the
    copy's: the sweep measures those on the model's own test split; a matching record is used as is."""
    import shutil

    from train.checkpoint import load_checkpoint
    from train.data.datasets import load_checkpoint_data

    r = Recipe(name="tiny", data=DataConfig(train_per_class=4, test_per_class=3),
               model=ModelConfig(name="lisa_cnn_tiny"), optim=OptimConfig(epochs=2, batch_size=32, lr=3e-3))
    train(r, tmp_path / "run", progress=False)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    sidecar = tmp_path / "copy" / "model.json"
    meta = json.loads(sidecar.read_text())
    meta["metrics"]["test_acc"], meta["data_hash"] = 0.123, "another copy of the data"
    sidecar.write_text(json.dumps(meta))
    cfg = {"name": "legit", "views": {"train": 2, "heldout": 2},
           "models": {"run": str(tmp_path / "run"), "last": str(tmp_path / "run" / "last.json"),
                      "copy": str(tmp_path / "copy")},
           "attacks": [{"name": "fgsm_test", "kind": "fgsm", "eps": 0.01, "images": "test", "n": 8,
                        "models": ["run", "copy"]},
                       {"name": "fgsm_views", "kind": "fgsm", "eps": 0.01}]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    res = run_sweep(load_sweep(tmp_path / "sweep.yaml"), tmp_path / "out", progress=False)
    legit = {(a, row["model"]): row["legit_acc"] for a, rows in res["attacks"].items() for row in rows}

    def measured(path):
        model, meta = load_checkpoint(path)
        test = load_checkpoint_data(meta, progress=False).test
        return float((model(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).mean())

    recorded = json.loads((tmp_path / "run" / "model.json").read_text())["metrics"]["test_acc"]
    assert legit[("fgsm_test", "run")] == legit[("fgsm_views", "run")] == recorded
    assert legit[("fgsm_views", "last")] == pytest.approx(measured(tmp_path / "run" / "last.json"))
    assert legit[("fgsm_test", "copy")] == legit[("fgsm_views", "copy")] == pytest.approx(measured(tmp_path / "copy"))
    assert legit[("fgsm_views", "copy")] != 0.123
