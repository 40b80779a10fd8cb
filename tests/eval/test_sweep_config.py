"""The sweep YAML: attack entries are checked against the attack class's own parameters, defaults come from
the class, and the quick profile is validated like the entries it overrides."""

import inspect

import pytest
import yaml

from edge.errors import ConfigError
from train.attacks.pgd import PGD
from train.attacks.uap import UAP
from train.eval.sweep_config import load_sweep
from train.eval.sweep_report import budget_of, config_line


def _write(tmp_path, attacks, **extra):
    p = tmp_path / "x.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "models": {"a": "runs/a", "b": "runs/b"}, "attacks": attacks, **extra}))
    return p


def _fails(tmp_path, match, attacks, **extra):
    path = _write(tmp_path, attacks, **extra)
    with pytest.raises(ConfigError, match=match) as e:
        load_sweep(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    return str(e.value)


PGD_OK = {"name": "p", "kind": "pgd", "eps": 0.03}


@pytest.mark.parametrize("entry,match", [
    ({"name": "q", "kind": "pgd", "stepz": 10}, r"attacks\[1\]\.stepz: unknown parameter of PGD \(known: \[.*'steps'"),
    ({"name": "q", "kind": "rp2", "images": "test"}, r"attacks\[1\]\.images: unknown parameter of RP2"),
    ({"name": "q", "kind": "pgd", "adaptive": "regularizer"}, r"attacks\[1\]\.adaptive: unknown parameter of PGD"),
    ({"name": "q", "kind": "rp2", "feature_penalty": "tv"}, r"attacks\[1\]\.feature_penalty: unknown parameter"),
    ({"name": "q", "kind": "uap", "steps": 3}, r"attacks\[1\]\.steps: unknown parameter of UAP"),
    ({"name": "q", "kind": "pgd", "steps": 2.5}, r"attacks\[1\]\.steps: expected an integer"),
    ({"name": "q", "kind": "pgd", "eps": "lots"}, r"attacks\[1\]\.eps: expected a number"),
    ({"name": "q", "kind": "rp2", "snap": "yes"}, r"attacks\[1\]\.snap: expected true or false"),
    ({"name": "q", "kind": "rp2", "mask": 3}, r"attacks\[1\]\.mask: expected a string"),
    ({"name": "q", "kind": "pgd", "steps": 0}, r"attacks\[1\]: pgd: steps must be an integer >= 1"),
    ({"name": "q", "kind": "pgd", "images": "train"}, r"attacks\[1\]\.images: expected one of"),
    ({"name": "q", "kind": "pgd", "models": ["c"]}, r"attacks\[1\]\.models: unknown model label 'c'"),
    ({"name": "q", "kind": "rp2_transfer", "source": "c"}, r"attacks\[1\]\.source: unknown model label"),
    ({"name": "q", "kind": "rp2_transfer", "input_blur": [4]}, r"attacks\[1\]\.input_blur: expected odd"),
    ({"name": "p", "kind": "fgsm"}, r"attacks\[1\]\.name: 'p' used twice"),
])
def test_attack_entries_are_checked_against_the_attack_class(tmp_path, entry, match):
    _fails(tmp_path, match, [PGD_OK, entry])


def test_sweep_sections_fail_with_their_path(tmp_path):
    _fails(tmp_path, r"x.yaml: views\.train: expected an integer", [PGD_OK], views={"train": "many"})
    _fails(tmp_path, r"x.yaml: unknown field\(s\) \['atacks'\]", [PGD_OK], atacks=[])
    _fails(tmp_path, r"x.yaml: sign: unknown class 'stopp'", [PGD_OK], sign="stopp")
    _fails(tmp_path, r"x.yaml: attacks: expected a non-empty list", [])
    # the quick block is checked without --quick: a typo in it must not wait for the run that uses it
    _fails(tmp_path, r"quick\.attack_overrides\.pgd\.stepz: unknown parameter of PGD", [PGD_OK],
           quick={"attack_overrides": {"pgd": {"stepz": 3}}})
    _fails(tmp_path, r"quick\.attack_overrides\.pgd\.steps: expected an integer", [PGD_OK],
           quick={"attack_overrides": {"pgd": {"steps": "3"}}})
    _fails(tmp_path, r"quick\.drop_attacks: unknown name 'pgd'", [PGD_OK], quick={"drop_attacks": ["pgd"]})
    _fails(tmp_path, r"quick\.models: unknown name 'c'", [PGD_OK], quick={"models": ["c"]})
    _fails(tmp_path, r"quick\.views: unknown field", [PGD_OK], quick={"views": {"trian": 3}})


def _defaults(cls):
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty and k != "progress"}


def test_parameters_not_given_take_the_class_defaults(tmp_path):
    path = _write(tmp_path, [{"name": "u", "kind": "uap"}, {"name": "p", "kind": "pgd", "eps": 0.0313725, "steps": 3},
                             {"name": "w", "kind": "pgd", "images": "test"}])
    cfg = load_sweep(path, root=tmp_path)
    u, p, w = cfg.attacks
    assert u.params == {} and u.config == _defaults(UAP)  # max_passes 10, batch_size 1: the class's, not a copy
    assert p.params == {"eps": 0.0313725, "steps": 3}
    assert p.config == {**_defaults(PGD), "eps": 0.0313725, "steps": 3}
    assert w.n == 500 and w.images == "test" and cfg.models["a"] == str(tmp_path / "runs/a")
    # reports print what the attack runs with, defaults included
    assert budget_of(p) == f"linf eps=0.0314 (= 8.0/255), 3 steps of {2 / 255:g}, ce loss"
    assert f"alpha={2 / 255}" in config_line(p) and "random_start=True" in config_line(p)


def test_quick_profile_overrides_models_views_and_parameters(tmp_path):
    path = _write(tmp_path, [{"name": "r", "kind": "rp2", "steps": 150, "models": ["b"]}, PGD_OK],
                  quick={"models": ["a"], "views": {"train": 3}, "attack_overrides": {"rp2": {"steps": 6}},
                         "drop_attacks": ["p"]})
    full, quick = load_sweep(path), load_sweep(path, quick=True)
    assert [a.name for a in full.attacks] == ["r", "p"] and full.attacks[0].config["steps"] == 150
    assert [a.name for a in quick.attacks] == ["r"] and quick.attacks[0].config["steps"] == 6
    assert list(quick.models) == ["a"] and quick.views.train == 3 and quick.views.heldout == 40
    assert quick.attacks[0].models == []  # its only model is dropped: it runs on none, not on all


def test_blurnet_sweep_runs_the_attacks_its_reports_were_made_with():
    """configs/eval/blurnet.yaml's quick profile: the exact attacks (all parameters, defaults included) that
    produced reports/blurnet_quick; a changed class default must show up here, not silently in the numbers."""
    cfg = load_sweep("configs/eval/blurnet.yaml", quick=True)
    rp2 = {"mask": "bars", "res": 32, "steps": 60, "lr": 0.03, "lam": 0.002, "nps_weight": 1.0, "palette": "default",
           "snap": True, "noise": 0.02, "views_per_step": 10, "dct_dim": 0, "untargeted": False, "kappa": 5.0,
           "feature_penalty": None}
    assert {a.name: a.config for a in cfg.attacks} == {
        "rp2_whitebox": rp2, "rp2_lowfreq": {**rp2, "dct_dim": 16}, "rp2_regularizer": rp2,
        "pgd_8": {"eps": 0.0313725, "alpha": 0.01, "steps": 10, "norm": "linf", "random_start": True, "loss": "ce",
                  "restarts": 1, "batch_size": 256}}
    assert [a.adaptive for a in cfg.attacks] == [None, None, "regularizer", None]
    assert cfg.attacks[2].models == ["tv_1e-4", "tik_hf"] and list(cfg.models) == ["baseline", "tv_1e-4", "tik_hf"]
    assert (cfg.views.train, cfg.views.heldout, cfg.views.train_seed, cfg.views.heldout_seed, cfg.seed) == (
        20, 40, 1, 2, 0)
    full = load_sweep("configs/eval/blurnet.yaml")
    assert len(full.attacks) == 10 and full.attacks[-1].config["steps"] == 150
