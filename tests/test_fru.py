"""FRU (Borkar et al. 2020): the unit, the selective regeneration, the L1 ranking, training on a frozen classifier
that restores accuracy under held-out universal perturbations, and export to one plain ONNX graph."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from edge.errors import ConfigError, SignguardError
from tests.toy_data import toy_data
from train.attacks.uap import SPGDUniversal, apply_universal, load_perturbation_set, save_perturbation
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.defenses import defense_from_dict
from train.defenses.base import Step
from train.defenses.fru import (
    FeatureRegenerationUnit,
    RegeneratedClassifier,
    SelectiveRegeneration,
    lisa_forward,
    rank_filters,
)
from train.eval.fru_ranking import masking_study, ranking_study, spearman
from train.eval.fru_restoration import restoration_row, summarize
from train.models import create_model
from train.trainer import train

XI = 0.5  # the toy's colour classes need a large budget before a universal perturbation fools half of them


def _recipe(defense, epochs, init=None, lr=3e-3):
    return Recipe(name="toy", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny", init=init),
                  defense=defense, optim=OptimConfig(epochs=epochs, batch_size=32, lr=lr, seed=0))


def _randomize_units(model: nn.Module, seed: int = 0) -> None:
    """Give every unit's zero-initialised last conv random weights, so the unit is no longer the identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FeatureRegenerationUnit):
            last = m.body[-1]
            with torch.no_grad():
                last.weight.copy_(0.3 * torch.randn(last.weight.shape, generator=gen))
                last.bias.copy_(0.1 * torch.randn(last.bias.shape, generator=gen))


# ---------------------------------------------------------------------------- structure


@pytest.mark.parametrize("width, hidden", [(1.0, 6), (2.0, 12), (0.5, 3)])
def test_unit_keeps_shape_and_starts_as_the_identity(width, hidden):
    unit = FeatureRegenerationUnit(6, width)
    kinds = [type(m).__name__ for m in unit.body]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 3 + ["Conv2d"]
    convs = [m for m in unit.body if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size for m in convs] == [(1, 1), (3, 3), (3, 3), (1, 1)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(6, hidden), (hidden, hidden), (hidden, hidden),
                                                                (hidden, 6)]  # the width is the inner convs'
    for mode in (True, False):  # batch statistics or running ones: the zero last conv makes both the identity
        unit.train(mode)
        for hw in (2, 7, 16):  # LisaCNN's conv3 maps are 2x2
            x = torch.randn(3, 6, hw, hw)
            assert torch.equal(unit(x), x)
    _randomize_units(unit)
    x = torch.randn(3, 6, 5, 5)
    assert unit(x).shape == x.shape and not torch.allclose(unit(x), x)


def test_untrained_fru_model_computes_exactly_the_base_classifier():
    torch.manual_seed(0)
    base = create_model("lisa_cnn_tiny", num_classes=5, blur_kernel=3).eval()
    x = torch.rand(8, 3, 32, 32)
    assert torch.equal(lisa_forward(base, x), base(x))  # the staged forward is LisaCNN's own
    fru = RegeneratedClassifier(base, ratio=0.5, layers=3).eval()
    assert torch.equal(fru(x), base(x))
    assert list(fru.regen) == ["conv1", "conv2", "conv3"]
    assert [r.count for r in fru.regen.values()] == [8, 16, 16]  # half of 16, 32, 32 channels
    assert list(RegeneratedClassifier(base, ratio=0.25, layers=1).regen) == ["conv1"]


def test_untouched_channels_are_bit_identical_and_order_is_restored():
    gen = torch.Generator().manual_seed(1)
    order = torch.randperm(10, generator=gen)
    sel = SelectiveRegeneration(order, count=4)
    _randomize_units(sel)
    f = torch.randn(5, 10, 6, 6, generator=gen)
    out = sel(f)
    untouched = order[4:]
    assert torch.equal(out[:, untouched], f[:, untouched])
    assert torch.allclose(out[:, order[:4]], sel.unit(f[:, order[:4]]))
    assert not torch.allclose(out[:, order[:4]], f[:, order[:4]])
    assert torch.equal(sel.regenerated, order[:4])
    with pytest.raises(SignguardError, match="permutation"):
        SelectiveRegeneration(torch.tensor([0, 0, 1]), 1)


def test_ranking_picks_the_largest_l1_filters_of_a_hand_made_layer():
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = 0.1  # L1 = 18 * 0.1 = 1.8
        conv.weight[1, 0, 1, 1] = -0.5  # L1 0.5, but the largest single weight
        conv.weight[2] = -0.2  # L1 3.6: negative weights count by magnitude
        conv.weight[3].view(-1)[:10] = 0.3  # L1 3.0
    assert rank_filters(conv.weight).tolist() == [2, 3, 0, 1]

    base = create_model("lisa_cnn_tiny", num_classes=3)
    with torch.no_grad():
        scale = torch.arange(16, dtype=torch.float32).roll(5)  # channel c has L1 proportional to scale[c]
        base.conv1.weight.copy_(torch.sign(torch.randn_like(base.conv1.weight)) * scale.view(-1, 1, 1, 1))
    fru = RegeneratedClassifier(base, ratio=0.25, layers=1)
    assert set(fru.regen["conv1"].regenerated.tolist()) == set(torch.argsort(scale, descending=True)[:4].tolist())


def test_config_errors_name_the_field():
    for bad, field in (({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"layers": 4}, "layers"),
                       ({"layers": 0}, "layers"), ({"adv_fraction": 0.0}, "adv_fraction"),
                       ({"n_synthetic": -1}, "n_synthetic"), ({"max_scale": 0.9}, "max_scale"),
                       ({"width": 0.0}, "width"), ({"width": 5.0}, "width")):
        with pytest.raises(ConfigError, match=f"defense.{field}"):
            defense_from_dict({"kind": "fru", "perturbations": "p", **bad})
    with pytest.raises(ConfigError, match="perturbations: required"):
        defense_from_dict({"kind": "fru"})


def test_description_names_every_setting_that_departs_from_the_default():
    def describe(**kw):
        return defense_from_dict({"kind": "fru", "perturbations": "p", **kw}).describe()

    assert describe() == "q=50%, 3 layer(s), 2000 synthetic UAPs"
    assert describe(ratio=1.0, width=2.0, max_scale=1.25) == \
        "q=100%, 3 layer(s), units 2x wide, 2000 synthetic UAPs scaled by U[1, 1.25]"
    assert describe(secondary="s", units="u").endswith("UAPs, a further round on UAPs made against the units")


def test_max_scale_draws_budgets_between_the_pools_and_max_scale_times_it():
    """The added perturbation is the pool's, scaled by a factor in [1, max_scale]: never below the pool's own
    budget, never above max_scale times it, and spread over the interval rather than fixed."""
    fru = defense_from_dict({"kind": "fru", "perturbations": "p", "adv_fraction": 1.0, "max_scale": 1.5})
    fru.pool = torch.full((4, 3, 8, 8), 0.1)
    x = torch.full((256, 3, 8, 8), 0.5)
    xb, _ = fru.transform(None, x, torch.zeros(256, dtype=torch.long), Step(0, 0, 0, torch.Generator(), None))
    factor = (xb - x)[:, 0, 0, 0] / 0.1
    assert torch.allclose((xb - x) / 0.1, factor.view(-1, 1, 1, 1).expand_as(xb), atol=1e-5)  # one factor per image
    assert factor.min() >= 1 - 1e-5 and factor.max() <= 1.5 + 1e-5
    assert factor.max() - factor.min() > 0.4  # 256 uniform draws cover most of [1, 1.5]


def test_missing_perturbation_folder_is_a_one_line_error(tmp_path):
    fru = defense_from_dict({"kind": "fru", "perturbations": str(tmp_path / "nope")})
    model = fru.wrap(create_model("lisa_cnn_tiny", num_classes=3))
    with pytest.raises(SignguardError, match="nope: perturbation folder not found"):
        fru.setup(model, torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignguardError, match="no universal perturbation"):
        load_perturbation_set(tmp_path / "empty")


# ---------------------------------------------------------------------------- the L1 ranking (Sec. 4.1)


def test_spearman_matches_hand_computed_values():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # ranks with ties: a = [1, 2.5, 2.5, 4] vs b = [1, 2, 3, 4] -> Pearson of ranks = 0.9487
    assert spearman(np.array([1, 5, 5, 9]), np.array([1, 2, 3, 4])) == pytest.approx(3 / np.sqrt(10), abs=1e-4)
    assert np.isnan(spearman(np.ones(4), np.arange(4)))


def test_observed_channel_noise_respects_the_eq2_bound():
    torch.manual_seed(0)
    net = create_model("lisa_cnn_tiny", num_classes=3, input_norm="fixed").eval()
    x = torch.rand(12, 3, 32, 32) * 0.8 + 0.1
    v = (torch.rand(2, 3, 32, 32) - 0.5) * 0.2
    res = ranking_study(net, x, v.numpy())
    for layer in ("conv1", "conv2", "conv3"):
        r = res[layer]
        assert r["bound_ok"] == 1.0
        assert r["noise"].shape == r["l1"].shape and (r["noise"] > 0).any()
        assert -1.0 <= r["spearman"] <= 1.0 and 0.0 < r["top_half_share"] < 1.0
    # no clipping (x in [0.1, 0.9], |v| <= 0.1) and "fixed" normalisation: conv1's noise is the bias-free
    # convolution of v / 0.25, the same for every image
    w = net.conv1
    e = nn.functional.conv2d(v / 0.25, w.weight, None, w.stride, w.padding).abs().flatten(2).amax(2).mean(0)
    assert np.allclose(res["conv1"]["noise"], e.detach().double().numpy(), rtol=1e-4, atol=1e-6)

# ---------------------------------------------------------------------------- training on a frozen classifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy base, universal perturbations made on it (sPGD: seeds 0-2 for training, 10-11 held out) and an
    FRU trained on the training ones with the base frozen."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("fru")
    data = toy_data()
    train(_recipe({"kind": "none"}, epochs=2), tmp / "base", progress=False, data=data)
    base, _ = load_checkpoint(tmp / "base")
    x_fit, x_test, y_test = (torch.from_numpy(a) for a in (data.train.x, data.test.x, data.test.y))
    for split, seeds in (("train", (0, 1, 2)), ("test", (10, 11))):
        for s in seeds:
            v = SPGDUniversal(base, xi=XI, steps=30, batch_size=32).fit(x_fit, seed=s)
            fr = float(apply_universal(base, x_test, y_test, v).info["fooling_ratio"])
            save_perturbation(tmp / split / f"spgd_s{s}" / "uap.npy", v.numpy(),
                              {"norm": "linf", "xi": XI, "fooling_ratio": fr, "model_hash": "toy"})
    fru_def = {"kind": "fru", "ratio": 0.5, "layers": 3, "perturbations": str(tmp / "train"), "n_synthetic": 100}
    train(_recipe(fru_def, epochs=4, init=str(tmp / "base"), lr=1e-2), tmp / "fru", progress=False, data=data)
    fru, meta = load_checkpoint(tmp / "fru")
    return base, fru, meta, data, tmp


def test_training_restores_accuracy_under_heldout_universal_perturbations(trained):
    base, fru, _, data, tmp = trained
    held, _ = load_perturbation_set(tmp / "test")
    rows = [restoration_row(base, fru, torch.from_numpy(data.test.x), data.test.y, v) for v in held]
    s = summarize(rows)
    assert s["fooling_base"] >= 0.3, "the held-out perturbations must fool the toy base for the test to mean much"
    assert s["restoration_def"] >= s["restoration_base"] + 0.1
    assert s["fooling_def"] < s["fooling_base"] / 2
    assert s["acc_def_clean"] >= s["acc_base_clean"] - 1 / 60  # at most one of the 60 clean test images lost


def test_base_stays_frozen_and_the_checkpoint_keeps_its_ranking(trained):
    base, fru, meta, _, _ = trained
    assert isinstance(fru, RegeneratedClassifier) and meta["defense"]["kind"] == "fru"
    for (k, w0), w1 in zip(base.state_dict().items(), fru.base.state_dict().values()):
        assert torch.equal(w0, w1), f"frozen classifier weight {k} changed"
    for name, sel in fru.regen.items():  # the ranking of the trained base, not of the random init it was built on
        assert torch.equal(sel.order, rank_filters(getattr(base, name).weight))
    trained_any = any(float(u.unit.body[-1].weight.detach().abs().sum()) > 0 for u in fru.regen.values())
    assert trained_any, "units did not train"
    fresh = RegeneratedClassifier(create_model("lisa_cnn_tiny", num_classes=3))
    assert sum(p.numel() for p in fru.regen.parameters()) == sum(p.numel() for p in fresh.regen.parameters())


def test_unit_width_is_recorded_and_rebuilt_from_the_checkpoint(trained):
    """A wider unit (defense.width) trains, and load_checkpoint rebuilds it at that width from the sidecar alone."""
    _, _, _, data, tmp = trained
    fru_def = {"kind": "fru", "ratio": 0.5, "layers": 2, "perturbations": str(tmp / "train"), "n_synthetic": 10,
               "width": 2.0}
    train(_recipe(fru_def, epochs=1, init=str(tmp / "base")), tmp / "fru_w2", progress=False, data=data)
    wide, meta = load_checkpoint(tmp / "fru_w2")
    assert meta["defense"]["width"] == 2.0
    for sel in wide.regen.values():
        assert sel.unit.body[0].out_channels == 2 * sel.count and sel.unit.body[-1].out_channels == sel.count


def test_masking_replaces_the_chosen_channels_noise_with_the_clean_maps(trained):
    base, _, _, data, tmp = trained
    held, _ = load_perturbation_set(tmp / "test")
    res = masking_study(base, torch.from_numpy(data.test.x), torch.from_numpy(data.test.y), held[0])
    assert res["clean"] > res["perturbed"]
    for layer in ("conv1", "conv2", "conv3"):
        assert set(res[layer]) == {"top", "bottom", "random"}
    # masking every channel of a layer gives back the clean prediction exactly
    full = masking_study(base, torch.from_numpy(data.test.x), torch.from_numpy(data.test.y), held[0], ratio=1.0)
    assert all(full[n]["top"] == pytest.approx(full["clean"]) for n in ("conv1", "conv2", "conv3"))


def test_fru_exports_to_plain_gather_slice_concat_and_int8_keeps_accuracy(trained, tmp_path):
    import onnx

    from edge.bundle import load_bundle
    from edge.preprocess import PreprocessConfig
    from export.bundle import export_bundle

    _, fru, meta, data, _ = trained
    export_bundle(fru, tmp_path, meta["classes"], PreprocessConfig(), data.test.x, name="fru", source={},
                  precisions=["fp32", "int8"], calib_x=data.train.x[:128])
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["models"][0]["parity"]["max_abs_diff"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert {"Gather", "Slice", "Concat", "Conv"} <= ops
    assert not ops & {"Loop", "If", "ScatterND", "ScatterElements"}  # nothing beyond plain data movement
    with torch.no_grad():
        ref = fru(torch.from_numpy(data.test.x)).argmax(1).numpy()
    acc = {p: float(np.mean(load_bundle(tmp_path, precision=p).classify(data.test.x).argmax(1) == data.test.y))
           for p in ("fp32", "int8")}
    assert float(np.mean(ref == data.test.y)) == acc["fp32"]
    assert acc["int8"] >= acc["fp32"] - 0.01
    # the units stay FP32 at INT8 (their robustness does not survive quantization); the frozen convs are quantized
    int8 = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    dq_outputs = {o for n in int8.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = {n.name for n in int8.node if n.op_type == "Conv" and n.input[1] in dq_outputs}
    convs = {n.name for n in int8.node if n.op_type == "Conv"}
    units = {c for c in convs if "/unit/" in c}
    assert len(units) == 4 * len(fru.regen) and not units & quantized
    assert convs - units == quantized


def test_a_stale_int8_fp32_prefix_is_an_error(trained, tmp_path):
    from edge.errors import SignguardError
    from export.bundle import flagged_nodes
    from export.onnx_export import torch_to_onnx

    _, fru, *_ = trained
    path = torch_to_onnx(fru, tmp_path / "m.onnx", input_size=32)
    assert flagged_nodes(fru, path) and all("/unit/" in n for n in flagged_nodes(fru, path))

    class Renamed(nn.Module):
        int8_fp32_prefixes = ("/no_such_module/",)

    with pytest.raises(SignguardError, match="no_such_module"):
        flagged_nodes(Renamed(), path)


def test_a_further_round_starts_from_the_units_and_learns_the_perturbations_made_against_them(trained):
    """Sec. 5.1's iterative training: universal perturbations made against the trained FRU join V, the units
    start from that FRU's, and the new round is fooled less by them."""
    _, fru, _, data, tmp = trained
    x_fit, x_test, y_test = (torch.from_numpy(a) for a in (data.train.x, data.test.x, data.test.y))
    for s in (20, 21, 22):
        v = SPGDUniversal(fru, xi=XI, steps=30, batch_size=32).fit(x_fit, seed=s)
        fr = float(apply_universal(fru, x_test, y_test, v).info["fooling_ratio"])
        save_perturbation(tmp / "secondary" / f"spgd_s{s}" / "uap.npy", v.numpy(),
                          {"norm": "linf", "xi": XI, "fooling_ratio": fr, "model_hash": "toy-fru"})
    again = {"kind": "fru", "ratio": 0.5, "layers": 3, "perturbations": str(tmp / "train"), "n_synthetic": 100,
             "units": str(tmp / "fru"), "secondary": str(tmp / "secondary")}

    d = defense_from_dict(again)
    model = d.wrap(create_model("lisa_cnn_tiny", num_classes=3))
    model.base.load_state_dict(fru.base.state_dict())
    d.setup(model, torch.device("cpu"))
    assert len(d.pool) == 3 + 3 + 100
    for k, w in fru.regen.state_dict().items():
        assert torch.equal(model.regen.state_dict()[k], w), f"unit weight {k} not started from the FRU run"

    train(_recipe(again, epochs=3, init=str(tmp / "base"), lr=3e-3), tmp / "fru_again", progress=False, data=data)
    round2, meta = load_checkpoint(tmp / "fru_again")
    assert meta["defense"]["units"] == str(tmp / "fru")
    made_on_round1, _ = load_perturbation_set(tmp / "secondary")

    def fooling(model, vs):
        return np.mean([apply_universal(model, x_test, y_test, torch.from_numpy(v)).info["fooling_ratio"]
                        for v in vs])

    assert fooling(round2, made_on_round1) < fooling(fru, made_on_round1) - 0.1


def test_units_of_another_shape_or_base_are_refused(trained):
    _, _, _, _, tmp = trained
    fru = str(tmp / "fru")
    for change, why in (({"width": 2.0}, "ratio, layers and width must match"), ({}, "another base")):
        d = defense_from_dict({"kind": "fru", "perturbations": str(tmp / "train"), "n_synthetic": 0, "units": fru,
                               **change})
        base = create_model("lisa_cnn_tiny", num_classes=3)  # a random base unless the width differs
        if change:
            base.load_state_dict(load_checkpoint(fru)[0].base.state_dict())
        model = d.wrap(base)
        with pytest.raises(ConfigError, match=why):
            d.setup(model, torch.device("cpu"))
