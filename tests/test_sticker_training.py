"""RP2-in-the-loop training (train.defenses.sticker_training): the batches it builds and what it buys."""

import numpy as np
import pytest
import torch

from edge.errors import ConfigError, SignguardError
from train.attacks.rp2 import RP2, evaluate_stickers
from train.attacks.views import render_views
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.data.classes import LISA_INDEX
from train.data.datasets import DataBundle, Split
from train.defenses import Step, defense_from_dict
from train.models import create_model
from train.trainer import train

SIGNS = ["stop", "yield", "merge"]  # the data's order differs from LISA-18's, so labels must be mapped


def _signs_data(n: int, seed: int) -> Split:
    per = [render_views(LISA_INDEX[s], n, seed + i) for i, s in enumerate(SIGNS)]
    x = torch.cat([v.x for v in per]).numpy()
    y = np.repeat(np.arange(len(SIGNS)), n)
    return Split(x, y.astype(np.int64))


@pytest.fixture(scope="module")
def data():
    return DataBundle(_signs_data(80, 100), _signs_data(20, 200), _signs_data(20, 300), SIGNS, "signs")


def _defense(**over):
    cfg = {"kind": "rp2_at", "groups": 2, "targets": 2, "views": 3, "pool": 6, "steps": 3, **over}
    return defense_from_dict(cfg)


def _ready(d, data, run_dir=None):
    torch.manual_seed(0)
    model = create_model("lisa_cnn_tiny", num_classes=3)
    cpu = torch.device("cpu")
    d.setup(model, cpu)
    d.prepare(model, data, run_dir, cpu)
    return model


def test_batches_gain_rendered_stickered_views_labelled_in_the_data_order(data):
    d = _defense(lowfreq_share=0.0, signs=["stop"], persistent=False)
    model = _ready(d, data)
    x, y = torch.from_numpy(data.train.x[:16]), torch.from_numpy(data.train.y[:16])
    step = Step(1, 32, 0, torch.Generator(), torch.device("cpu"))
    xb, yb = d.transform(model, x, y, step)
    assert xb.shape == (16 + 2 * 2 * 3, 3, 32, 32)
    assert torch.equal(xb[:16], x) and torch.equal(yb[:16], y)  # the clean batch is kept
    assert (yb[16:] == SIGNS.index("stop")).all()
    # every stickered image is one of the pool's stop poses re-rendered with two bars on the sign
    pool = d.pool[LISA_INDEX["stop"]].x
    adv = xb[16:]
    nearest = torch.stack([(pool - a).abs().flatten(1).sum(1).argmin() for a in adv])
    diff = (adv - pool[nearest]).abs().amax(1)
    assert diff.amax() > 0.2  # a sticker, not noise
    assert (diff > 0.05).float().mean() < 0.35  # two bars, not the whole crop
    xb2, _ = d.transform(model, x, y, step)
    assert torch.equal(xb, xb2)  # seeded by (seed, epoch, batch): a rerun makes the same stickers


def test_persistent_stickers_continue_and_survive_a_resume(tmp_path, data):
    """Each (sign, target, variant) continues from its banked sticker; the bank saved when an epoch begins lets
    a resumed run (a new process: a new defense) make exactly the stickers the uninterrupted run makes."""
    x, y = torch.from_numpy(data.train.x[:8]), torch.from_numpy(data.train.y[:8])
    cfg = dict(signs=["stop"], groups=1, targets=2, lowfreq_share=0.0)  # 2 wrong targets: every batch, same keys
    d = _defense(**cfg)
    model = _ready(d, data, tmp_path)
    cpu = torch.device("cpu")
    d.transform(model, x, y, Step(0, 0, 0, torch.Generator(), cpu))
    first = {k: v.clone() for k, v in d.bank.items()}
    assert len(first) == 2
    second, _ = d.transform(model, x, y, Step(0, 8, 0, torch.Generator(), cpu))
    assert all(not torch.equal(first[k], d.bank[k]) for k in first)  # optimised further
    plain = _defense(**cfg, persistent=False)  # the same batch, seeds and weights, started afresh
    fresh, _ = plain.transform(_ready(plain, data), x, y, Step(0, 8, 0, torch.Generator(), cpu))
    assert not torch.equal(second, fresh)  # so the banked stickers were the starting point
    with pytest.raises(SignguardError, match=r"rp2: init must have shape \(1, 3, 32, 32\)"):
        d.attacks[False](d.pool[LISA_INDEX["stop"]], [1], init=torch.zeros(1, 3, 8, 8))
    entering = {k: v.clone() for k, v in d.bank.items()}
    straight, _ = d.transform(model, x, y, Step(1, 0, 0, torch.Generator(), cpu))  # saves the bank entering epoch 1
    resumed = _defense(**cfg)
    _ready(resumed, data, tmp_path)
    again, _ = resumed.transform(model, x, y, Step(1, 0, 0, torch.Generator(), cpu))
    assert all(torch.equal(entering[k], v) for k, v in entering.items())
    assert torch.equal(straight, again)


def test_signs_must_be_lisa_signs_the_data_has(data):
    d = _defense(signs=["speedLimit25"])
    with pytest.raises(ConfigError, match="speedLimit25"):
        d.prepare(None, data, None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="views"):
        _defense(views=10, pool=6)


def test_rp2_training_stops_the_bars_sticker_on_held_out_poses(tmp_path, data):
    """The defense's job, measured: a white-box RP2 two-bar sticker (30 steps, EOT over 8 poses), made
    against each model and scored on 12 held-out stop poses, flips the baseline and not the fine-tuned one."""
    def recipe(defense, epochs, init=None, lr=3e-3):
        return Recipe(name="signs", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny", init=init),
                      defense=defense, optim=OptimConfig(epochs=epochs, batch_size=32, lr=lr, seed=0))

    train(recipe({"kind": "none"}, 4), tmp_path / "base", progress=False, data=data)
    rp2_at = {"kind": "rp2_at", "groups": 1, "targets": 2, "views": 6, "pool": 24, "steps": 8, "lr": 0.1,
              "lowfreq_share": 0.0, "signs": ["stop"]}
    train(recipe(rp2_at, 3, init=str(tmp_path / "base"), lr=1e-3), tmp_path / "rp2_at", progress=False, data=data)
    fit, held = render_views(LISA_INDEX["stop"], 8, 1), render_views(LISA_INDEX["stop"], 12, 2)
    success = {}
    for name in ("base", "rp2_at"):
        model, _ = load_checkpoint(tmp_path / name)
        result = RP2(model, steps=30, lr=0.1, nps_weight=0.0, views_per_step=8)(fit, [1, 2], seed=0)
        ev = evaluate_stickers(model, held, result, label=0)
        assert ev["clean_accuracy"] >= 0.9, name
        success[name] = max(t["untargeted_success"] for t in ev["per_target"])
    assert success["base"] >= 0.5 and success["rp2_at"] <= 1 / 3, success


def test_distill_anchors_the_clean_images_to_the_starting_model(data):
    """With ``distill`` the loss is KL(starting model || model) on the batch's clean images only: zero while
    the model is unchanged, positive once it moves, blind to the appended stickered views."""
    d = _defense(distill=2.0)
    model = _ready(d, data)
    x, y = torch.as_tensor(data.train.x[:8]), torch.as_tensor(data.train.y[:8])
    xb, yb = d.transform(model, x, y, Step(0, 0, 0, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert len(xb) > len(x) and d.n_clean == len(x)
    assert float(d.loss(model, xb, yb, model(xb), {})) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = model(xb)
    reg = d.loss(model, xb, yb, moved, {})
    assert float(reg) > 0
    only_stickers_changed = moved.clone()
    only_stickers_changed[len(x):] += 100.0
    assert float(d.loss(model, xb, yb, only_stickers_changed, {})) == pytest.approx(float(reg))
    assert _defense().loss(model, xb, yb, moved, {}) is None  # off by default
    with pytest.raises(ConfigError, match="distill"):
        _defense(distill=-1.0)
