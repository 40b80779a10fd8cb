"""NRP: purifier and critic, the hybrid loss, label-free training on a toy set, attaching a purifier to a trained
classifier, the sweep's crafting models, and ONNX / INT8 parity of purifier + classifier as one graph or two."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from edge.errors import ConfigError, SignguardError
from tests.toy_data import toy_data
from train.attacks.ssp import LayerFeatures
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.defenses import DefendedModel, classifier_of, defense_from_dict
from train.defenses.nrp import Purifier, PurifierConfig, attach, load_purifier, save_part
from train.eval.sweep_runner import crafting_model
from train.nrp_train import (
    LossConfig,
    NRPOptimConfig,
    NRPRecipe,
    SSPConfig,
    relativistic_critic_loss,
    relativistic_purifier_loss,
    train_purifier,
)
from train.trainer import train


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _toy_extractor() -> LayerFeatures:
    """A two-conv feature extractor at its seeded initialisation (any image size): SSP's feature space."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    return LayerFeatures(net, "3")


def _images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth toy images (blocks of colour): structure a perturbation visibly breaks and a purifier can restore."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.1, 0.9, (n, 3, size // 4, size // 4)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)


def _recipe(alpha: float = 5e-3, epochs: int = 4) -> NRPRecipe:
    return NRPRecipe(purifier=PurifierConfig(nf=8, gc=4, blocks=1), critic_width=4, val_images=16,
                     ssp=SSPConfig(eps=16 / 255, alpha=8 / 255, steps=2), loss=LossConfig(alpha=alpha),
                     optim=NRPOptimConfig(epochs=epochs, batch_size=16, lr=3e-3, critic_lr=1e-3, seed=0))


# ---------------------------------------------------------------------------- networks and losses


def test_purifier_is_a_32x32_rrdb_without_input_skip():
    torch.manual_seed(0)
    p = Purifier()
    assert sum(q.numel() for q in p.parameters()) == 45955  # the sizing the docstring states
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = p(x)
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    nn.init.zeros_(p.conv_last.weight)
    nn.init.zeros_(p.conv_last.bias)
    # with the last conv silenced nothing of the input reaches the output: no skip connection (Sec. 3.3)
    with torch.no_grad():
        assert torch.equal(p(x), torch.zeros_like(x))


def test_relativistic_losses_have_the_papers_sign_and_value():
    zero = torch.zeros(8)
    assert math.isclose(float(relativistic_purifier_loss(zero, zero)), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(relativistic_critic_loss(zero, zero)), 2 * math.log(2), rel_tol=1e-6)
    real, fake = torch.randn(8), torch.randn(8)
    # the purifier gains when its outputs score higher relative to the average clean image (Eq. 7)
    assert float(relativistic_purifier_loss(real, fake + 1)) < float(relativistic_purifier_loss(real, fake))
    # the critic gains when it separates clean from purified further
    assert float(relativistic_critic_loss(real + 1, fake)) < float(relativistic_critic_loss(real, fake))


# ---------------------------------------------------------------------------- training (Algorithm 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("nrp")
    rec = train_purifier(_recipe(), run, progress=False, images=(_images(96, 16, 0), _images(16, 16, 1)),
                         features=_toy_extractor(), log_every=1)
    return run, rec


def test_purifier_losses_decrease_on_a_toy_set(trained):
    run, last = trained
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    init, epochs = log[0], log[1:]
    # the hybrid loss (Eq. 8) and its reconstruction terms fall from the first epoch to the last
    for term in ("total", "feat", "img"):
        assert last[f"train_{term}"] < 0.85 * epochs[0][f"train_{term}"], term
    # held-out SSP examples: the purifier starts as the identity (the attack passes untouched) and learns to
    # undo it in feature space (Eq. 5) and in pixels, epoch after epoch
    assert init["dist_purified"] == pytest.approx(init["dist_adv"], rel=1e-5)
    dist = [e["dist_purified"] for e in epochs]
    assert all(b < a for a, b in zip(dist, dist[1:])) and dist[-1] < 0.9 * last["dist_adv"], dist
    assert last["psnr_purified"] > last["psnr_adv"]
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 4 * (96 // 16) and all("critic" in s for s in steps)  # the critic trains beside it


def test_gan_ablation_trains_without_the_critic(tmp_path):
    train_purifier(_recipe(alpha=0.0, epochs=1), tmp_path, progress=False,
                   images=(_images(32, 16, 0), _images(16, 16, 1)), features=_toy_extractor())
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert steps and all("critic" not in s and s["adv"] == 0.0 for s in steps)


def test_recipe_rejects_a_loss_without_reconstruction_terms():
    with pytest.raises(ConfigError, match="gamma, lam"):
        LossConfig(gamma=0.0, lam=0.0)


def test_recipe_rejects_an_unknown_device():
    with pytest.raises(ConfigError, match="device: expected auto, cpu, cuda or cuda:N, got 'gpu0'"):
        NRPOptimConfig(device="gpu0")


@pytest.mark.gpu
def test_purifier_trains_on_a_gpu_and_loads_on_the_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    r = _recipe(epochs=1)
    r.optim.device = "cuda"
    train_purifier(r, tmp_path, progress=False, images=(_images(32, 16, 0), _images(16, 16, 1)),
                   features=_toy_extractor())
    purifier, _ = load_purifier(tmp_path)
    assert next(purifier.parameters()).device.type == "cpu"
    assert purifier(torch.as_tensor(_images(2, 16, 2))).shape == (2, 3, 16, 16)


# ---------------------------------------------------------------------------- the defense kind and attach


def _classifier(tmp_path):
    data = toy_data()
    r = Recipe(name="toy", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny"), defense={"kind": "none"},
               optim=OptimConfig(epochs=2, batch_size=32, lr=3e-3, seed=0))
    train(r, tmp_path / "clf", progress=False, data=data)
    return data, tmp_path / "clf"


def _denoiser(x: np.ndarray, steps: int = 10) -> Purifier:
    """A small purifier trained a few steps to remove Gaussian noise (pixel L2): a real trained part, moved
    off its identity initialisation, for the attach and export checks."""
    torch.manual_seed(0)
    p = Purifier(8, 4, 1)
    opt = torch.optim.Adam(p.parameters(), lr=1e-3)
    xt = torch.from_numpy(x)
    for i in range(steps):
        b = xt[i * 16:][:16]
        opt.zero_grad()
        ((p((b + 0.05 * torch.randn_like(b)).clamp(0, 1)) - b) ** 2).mean().backward()
        opt.step()
    return p.eval()


def test_signguard_train_refuses_the_purifier_kind(tmp_path):
    data = toy_data(n=64, n_eval=16)
    r = Recipe(name="toy", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny"),
               defense={"kind": "purifier", "nf": 8, "gc": 4}, optim=OptimConfig(epochs=1, batch_size=32))
    with pytest.raises(ConfigError, match="signguard nrp train"):
        train(r, tmp_path / "run", progress=False, data=data)


@pytest.fixture(scope="module")
def attached(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attach")
    data, clf = _classifier(tmp)
    purifier = _denoiser(data.train.x)
    save_part(tmp / "pur", purifier, {"nf": 8, "gc": 4, "blocks": 1}, {"note": "test"})
    metrics = attach(tmp / "pur", clf, tmp / "defended", test=data.test)
    return data, clf, tmp, metrics


def test_attach_puts_the_purifier_in_front_and_remeasures_accuracy(attached):
    data, clf, tmp, metrics = attached
    model, meta = load_checkpoint(tmp / "defended")
    base, base_meta = load_checkpoint(clf)
    purifier, _ = load_purifier(tmp / "pur")
    assert isinstance(model, DefendedModel) and list(model.parts()) == ["purifier", "classifier"]
    assert meta["defense"] == {"kind": "purifier", "nf": 8, "gc": 4, "blocks": 1}
    x = torch.from_numpy(data.test.x)
    with torch.no_grad():
        assert torch.allclose(model(x), base(purifier(x)), atol=1e-6)
        acc = float((model(x).argmax(1).numpy() == data.test.y).mean())
    assert metrics["test_acc"] == pytest.approx(acc) and meta["metrics"]["test_acc"] == pytest.approx(acc)
    assert metrics["classifier_test_acc"] == base_meta["metrics"]["test_acc"]
    assert meta["classifier"]["weights_sha256"] == base_meta["weights_sha256"]
    assert acc > 0.9  # a mild denoiser costs the toy classifier (large colour margins) nothing


def test_a_tampered_purifier_is_refused(attached, tmp_path):
    _, _, tmp, _ = attached
    (tmp_path / "purifier.json").write_text((tmp / "pur" / "purifier.json").read_text())
    w = bytearray((tmp / "pur" / "purifier.safetensors").read_bytes())
    w[-1] ^= 1
    (tmp_path / "purifier.safetensors").write_bytes(bytes(w))
    with pytest.raises(SignguardError, match="purifier.safetensors.*SHA-256"):
        load_purifier(tmp_path)
    with pytest.raises(SignguardError, match="not found"):
        load_purifier(tmp_path / "nowhere")


def test_crafting_models_for_transfer_and_bpda(attached):
    _, _, tmp, _ = attached
    model, _ = load_checkpoint(tmp / "defended")
    assert crafting_model(model, "model") is model and crafting_model(model, "classifier") is classifier_of(model)
    bpda = crafting_model(model, "bpda")
    x = torch.rand(6, 3, 32, 32, requires_grad=True)
    out = bpda(x)
    assert torch.allclose(out, model(x), atol=1e-6)  # the forward pass is the real purifier
    (g_bpda,) = torch.autograd.grad(out[:, 0].sum(), x)
    xp = model.purifier(x).detach().requires_grad_(True)
    (g_clf,) = torch.autograd.grad(classifier_of(model)(xp)[:, 0].sum(), xp)
    assert torch.allclose(g_bpda, g_clf, atol=1e-6)  # ... the backward pass treats it as the identity
    bare = defense_from_dict({"kind": "none"}).wrap(classifier_of(model))
    assert crafting_model(bare, "bpda") is bare


# ---------------------------------------------------------------------------- export


@pytest.mark.parametrize("graphs", ["one", "separate"])
def test_onnx_and_int8_parity_of_purifier_and_classifier(attached, graphs):
    from edge.backends import OrtBackend
    from edge.preprocess import PreprocessConfig
    from export.bundle import export_bundle

    data, _, tmp, _ = attached
    model, meta = load_checkpoint(tmp / "defended")
    out = tmp / f"bundle_{graphs}"
    x = data.test.x[:48]
    export_bundle(model, out, meta["classes"], PreprocessConfig(), x, source={}, graphs=graphs,
                  precisions=("fp32", "int8"), calib_x=data.train.x[:64])  # raises if FP32 parity > 1e-4
    m = json.loads((out / "manifest.json").read_text())
    parts = ["model"] if graphs == "one" else ["purifier", "classifier"]
    assert [e["part"] for e in m["models"] if e["precision"] == "fp32"] == parts
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    for prec in ("fp32", "int8"):
        y = x
        for e in (e for e in m["models"] if e["precision"] == prec):
            y = OrtBackend(out / e["file"]).run(y)
        if prec == "fp32":
            assert np.abs(y - ref).max() < 1e-4
        else:
            assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.9


# ---------------------------------------------------------------------------- the sweep


def test_sweep_runs_ssp_and_mifgsm_with_a_threat_model_per_entry(tmp_path):
    from pathlib import Path

    from train.eval.sweep_config import load_sweep
    from train.eval.sweep_report import _strongest_summary

    root = Path(__file__).resolve().parents[1]
    cfg = load_sweep(root / "configs" / "eval" / "nrp.yaml", root=root)
    by_name = {a.name: a for a in cfg.attacks}
    assert {"ssp", "mifgsm"} <= {a.kind for a in cfg.attacks}
    assert by_name["pgd16_transfer"].craft_on == "classifier" and by_name["pgd16_bpda"].craft_on == "bpda"
    assert by_name["ssp16"].config["layer"] == "features.relu3_3"  # the layer configs/nrp.yaml trains on
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: {m: runs/m}\nattacks:\n  - {name: a, kind: pgd, craft_on: purifier}\n")
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.craft_on: expected one of"):
        load_sweep(bad)
    # the summary puts each model beside its strongest bounded pixel attack
    results = {"attacks": {"pgd8_transfer": [{"model": "baseline", "adv_acc": 0.5, "legit_acc": 0.9}],
                           "pgd16_transfer": [{"model": "baseline", "adv_acc": 0.2, "legit_acc": 0.9}]}}
    table = "\n".join(_strongest_summary(cfg, results))
    assert "| baseline | 90.0% | pgd16_transfer (linf eps=0.0627" in table and "| 20.0% |" in table
