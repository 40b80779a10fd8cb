"""Deep Defense: the unrolled DeepFool, the regulariser's sign convention, fine-tuning through the trainer, export."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge.errors import ConfigError, SignguardError
from tests.colour_data import colour_data
from train.attacks.deepfool import DeepFool
from train.attacks.deepfool_unrolled import unrolled_deepfool
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.data.datasets import DataBundle, Split
from train.defenses import DefenseStack, defense_from_dict
from train.defenses.deep_defense import deep_defense_terms, perturbation_ratio
from train.eval.metrics import rho_2
from train.models import create_model
from train.trainer import train


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy():
    """``lisa_cnn_tiny`` fitted on the colour data for 2 epochs: 100% accurate, and still curved enough that
    DeepFool needs up to 3 iterations on a quarter of the samples (after 6 epochs it needs one)."""
    x, y = colour_data(300, seed=0)
    torch.manual_seed(0)
    model = create_model("lisa_cnn_tiny", num_classes=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    xt, yt = colour_data(60, seed=1)
    return model.eval(), xt, yt


def _ratio(model, x, target=None, max_iter=50):
    delta, _ = unrolled_deepfool(model, x, max_iter=max_iter, num_candidates=3, target=target, create_graph=False)
    return perturbation_ratio(delta, x)


# ---------------------------------------------------------------------------- the unrolled DeepFool


@pytest.mark.parametrize("max_iter,k", [(1, 3), (3, 3), (50, 3), (50, 2)])
def test_unrolled_deepfool_equals_the_projects_deepfool(toy, max_iter, k):
    model, x, y = toy
    ref = DeepFool(model, max_iter=max_iter, num_candidates=k)(x, y)
    delta, iterations = unrolled_deepfool(model, x, max_iter=max_iter, num_candidates=k)
    assert delta.requires_grad  # a function of the weights, not a detached perturbation
    assert torch.allclose(x + delta.detach(), ref.x_adv, atol=1e-5)
    assert np.array_equal(iterations.numpy(), ref.info["iterations"])
    assert np.allclose(delta.detach().flatten(1).norm(dim=1).numpy(), ref.info["r_norm"], rtol=1e-4, atol=1e-6)
    if max_iter > 1:
        assert int(iterations.max()) >= 2  # the comparison covers more than the first linearisation


def test_gradient_flows_through_every_iteration_and_matches_finite_differences(toy):
    """d(sum rho)/dW from the unrolled graph equals the central difference of the attack rerun with perturbed
    weights (float64): the gradient is non-zero and is the derivative of the whole multi-step attack."""
    model, x, _ = toy
    model = copy.deepcopy(model).double()
    x = x[:24].double()
    params = list(model.parameters())
    delta, iterations = unrolled_deepfool(model, x, max_iter=4, num_candidates=3)
    assert int(iterations.max()) >= 2
    grads = torch.autograd.grad(perturbation_ratio(delta, x).sum(), params)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    analytic = sum(float((gr * vv).sum()) for gr, vv in zip(grads, v))

    def shifted(h):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p, vv in zip(m.parameters(), v):
                p.add_(h * vv)
        return float(_ratio(m, x, max_iter=4).sum())

    # h this small because a ReLU that switches between +h and -h makes the attack's step jump (measured: the
    # central difference is off by 50% at h = 1e-6 and within 1e-7 of the analytic value at 1e-8 and 1e-9)
    h = 1e-9
    numeric = (shifted(h) - shifted(-h)) / (2 * h)
    assert abs(analytic) > 1e-3
    assert numeric == pytest.approx(analytic, rel=1e-5)


def test_targeted_unrolled_deepfool_reaches_the_target(toy):
    model, x, y = toy
    target = (y + 1) % 3
    delta, iterations = unrolled_deepfool(model, x, max_iter=50, target=target, create_graph=False)
    with torch.no_grad():
        assert bool((model(x + delta).argmax(1) == target).all())
    assert int(iterations.min()) >= 1


def test_unrolled_deepfool_rejects_bad_settings(toy):
    model, x, _ = toy
    with pytest.raises(SignguardError, match="max_iter"):
        unrolled_deepfool(model, x, max_iter=0)
    with pytest.raises(SignguardError, match="num_candidates"):
        unrolled_deepfool(model, x, num_candidates=1)


# ---------------------------------------------------------------------------- the regulariser (Eq. 6)


def test_eq6_terms_decrease_in_correct_ratios_and_increase_in_wrong_ones():
    rho = torch.tensor([0.01, 0.02], requires_grad=True)
    (g_correct,) = torch.autograd.grad(deep_defense_terms(rho, rho[:0], 25.0, 5.0), rho)
    (g_wrong,) = torch.autograd.grad(deep_defense_terms(rho[:0], rho, 25.0, 5.0), rho)
    assert bool((g_correct < 0).all()) and bool((g_wrong > 0).all())
    with torch.no_grad():
        assert float(deep_defense_terms(rho, rho, 25.0, 5.0)) == pytest.approx(
            float(torch.exp(-25 * rho).sum() + torch.exp(5 * rho).sum()))


def _one_step_on_regulariser(model, x, y, correct, lr):
    """One SGD step (of length ``lr`` in parameter space) on Eq. 6 alone."""
    m = copy.deepcopy(model)
    dd = defense_from_dict({"kind": "deep_defense", "max_iter": 5, "num_candidates": 3})
    params = list(m.parameters())
    grads = torch.autograd.grad(dd.regularizer(m, x, y, correct), params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    with torch.no_grad():
        for p, gr in zip(params, grads):
            p.sub_(lr * gr / norm)
    return m


def test_a_step_on_the_regulariser_pushes_correct_samples_boundaries_away(toy):
    model, x, y = toy
    correct = model(x).argmax(1) == y
    assert bool(correct.all())
    before = _ratio(model, x)
    after = _ratio(_one_step_on_regulariser(model, x, y, correct, lr=0.05), x)
    # measured: mean rho 0.0207 -> 0.0227 (+9.5%); the step trades boundaries between the 3 classes, so single
    # samples move both ways (58% up), while Eq. 6's sum of exp(-c rho) falls 36.4 -> 34.7
    assert float(after.mean()) > 1.05 * float(before.mean())
    assert float(torch.exp(-25 * after).sum()) < float(torch.exp(-25 * before).sum())


def test_a_step_on_the_regulariser_pulls_misclassified_samples_toward_their_label(toy):
    """Relabel the samples so the model misclassifies all of them: the regulariser's exp(d rho) term then
    shrinks the perturbation that fools the model into the (new) label."""
    model, x, y = toy
    wrong_label = (y + 1) % 3
    correct = model(x).argmax(1) == wrong_label
    assert not bool(correct.any())
    before = _ratio(model, x, target=wrong_label)
    after = _ratio(_one_step_on_regulariser(model, x, wrong_label, correct, lr=0.05), x, target=wrong_label)
    # measured: mean rho 0.0329 -> 0.0272
    assert float(after.mean()) < 0.9 * float(before.mean())


def test_near_black_images_are_left_out_of_the_regulariser(toy):
    """Photometric jitter can turn a dark photograph into an all-black image: rho = ||Delta|| / ||x|| would be
    ~1e9 there and exp(d rho) inf (seen in GTSRB-32 training).  Such images keep their cross-entropy only."""
    model, x, y = toy
    xb = torch.cat([x[:6], torch.zeros(1, 3, 32, 32), torch.full((1, 3, 32, 32), 0.01)])
    yb = torch.cat([y[:6], (y[:2] + 1) % 3])
    dd = defense_from_dict({"kind": "deep_defense", "num_candidates": 3})
    m = copy.deepcopy(model)
    logits = m(xb)
    loss = dd.loss(m, xb, yb, logits, {})
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters())
    correct = logits[:6].argmax(1) == yb[:6]
    expected = 15 * dd.regularizer(m, xb[:6], yb[:6], correct).detach() / 8  # the 8 still count in the mean
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_config_errors_name_the_field():
    for bad, field in (({"c": 0}, "c"), ({"lam": -1}, "lam"), ({"max_iter": 0}, "max_iter"),
                       ({"num_candidates": 1}, "num_candidates"), ({"reg_samples": -2}, "reg_samples"),
                       ({"min_rms": 2}, "min_rms"), ({"select_max_drop": -0.1}, "select_max_drop"),
                       ({"select_images": 0}, "select_images"),
                       ({"lambda": 15}, "lambda")):
        with pytest.raises(ConfigError, match=field):
            defense_from_dict({"kind": "deep_defense", **bad})
    stack = DefenseStack.from_config({"kind": "deep_defense"})
    assert stack.describe() == "lambda=15, c=25, d=5, DeepFool unrolled 3 it., top-4"


def test_selection_keeps_the_most_robust_epoch_within_the_accuracy_budget(toy, tmp_path):
    """select_max_drop: validation rho_2 for an epoch within the budget of the starting model's accuracy, and a
    score below all of those (accuracy - 1) for one outside it; unset, the trainer's validation accuracy."""
    model, xt, yt = toy
    val = Split(xt.numpy(), yt.numpy())
    data = DataBundle(val, val, val, ["r", "g", "b"], "h")
    assert defense_from_dict({"kind": "deep_defense"}).validate(model, val, torch.device("cpu")) is None
    dd = defense_from_dict({"kind": "deep_defense", "select_max_drop": 0.05, "select_images": 40})
    dd.prepare(model, data, tmp_path, torch.device("cpu"))
    assert dd.start_acc == 1.0 and dd.validation_key() == "rho_2:0.05:40:1.0"
    sub = val.sample(40, 0)
    expected = rho_2(sub.x, DeepFool(model)(torch.from_numpy(sub.x), torch.from_numpy(sub.y).long()).info["r_norm"])
    assert dd.validate(model, val, torch.device("cpu")) == pytest.approx(expected) and expected > 0
    broken = copy.deepcopy(model)  # always answers class 0: accuracy 1/3, far outside the budget
    head = [m for m in broken.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    acc = float((yt == 0).float().mean())
    assert acc < 0.5 and dd.validate(broken, val, torch.device("cpu")) == pytest.approx(acc - 1.0)


# ---------------------------------------------------------------------------- fine-tuning, export


def _colour_bundle():
    """Colour classes with a 0.15 lift: the baseline's DeepFool margin (rho_2 ~ 0.09) leaves Eq. 6 a gradient."""
    xs = [colour_data(n, seed=s, lift=0.15) for n, s in ((400, 0), (90, 1), (90, 2))]
    return DataBundle(*(Split(x.numpy(), y.numpy()) for x, y in xs), ["r", "g", "b"], "colourhash")


def _recipe(defense, epochs, init=None, lr=3e-3):
    return Recipe(name="toy", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny", init=init),
                  defense=defense, optim=OptimConfig(epochs=epochs, batch_size=50, lr=lr, seed=0))


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dd")
    data = _colour_bundle()
    train(_recipe({"kind": "none"}, epochs=4), tmp / "base", progress=False, data=data)
    dd = {"kind": "deep_defense", "lam": 15, "c": 25, "d": 5, "max_iter": 3, "num_candidates": 3}
    for name, defense in (("dd", dd), ("clean", {"kind": "none"})):  # "clean": the paper's control fine-tune
        train(_recipe(defense, epochs=2, init=str(tmp / "base")), tmp / name, progress=False, data=data)
    return tmp, data


@pytest.mark.slow
def test_fine_tuning_raises_rho2_at_no_accuracy_cost(fine_tuned):
    """The defense's job, measured: rho_2 (Eq. 7, DeepFool to convergence) on held-out data rises, clean
    accuracy stays, and the training log records the regulariser; the same fine-tuning without it does not
    (the paper's "Clean" curve)."""
    tmp, data = fine_tuned
    x, y = torch.from_numpy(data.test.x), torch.from_numpy(data.test.y)
    rho, acc = {}, {}
    for name in ("base", "clean", "dd"):
        model, meta = load_checkpoint(tmp / name)
        r = DeepFool(model)(x, y)
        rho[name], acc[name] = rho_2(x.numpy(), r.info["r_norm"]), float((r.info["pred_clean"] == y.numpy()).mean())
    log = [json.loads(line) for line in (tmp / "dd" / "log.jsonl").read_text().splitlines()]
    assert all(rec["train_reg"] > 0 for rec in log)
    assert meta["defense"]["kind"] == "deep_defense" and meta["recipe"]["model"]["init"] == str(tmp / "base")
    # measured: rho_2 0.0868 (baseline), 0.0868 (clean fine-tune), 0.136 (Deep Defense); accuracy 100% for all
    assert acc["dd"] >= acc["base"] - 0.02, acc
    assert rho["dd"] >= 1.4 * rho["base"] and rho["clean"] <= 1.1 * rho["base"], rho


@pytest.mark.slow
def test_deep_defense_model_exports_with_onnx_parity(fine_tuned, tmp_path):
    """What ships is the plain classifier: the bundle's ONNX graph and the edge runtime give its logits."""
    from edge.bundle import load_bundle
    from edge.preprocess import PreprocessConfig
    from export.bundle import export_bundle

    tmp, data = fine_tuned
    model, meta = load_checkpoint(tmp / "dd")
    with torch.no_grad():
        ref = model(torch.from_numpy(data.test.x)).numpy()
    # Deep Defense inflates the logits (measured max |z| 279 here, 93 for the baseline), and float32 rounding
    # alone then puts onnxruntime 1.8e-4 from torch (both ~1e-4 from a float64 forward): the export's default
    # parity bound is relative to the logit scale (measured 6.6e-7 of it)
    tol = 2e-6 * float(np.abs(ref).max())
    export_bundle(model, tmp_path / "b", meta["classes"], PreprocessConfig(), data.test.x, name="dd",
                  source={"checkpoint": str(tmp / "dd")})
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["models"][0]
    assert entry["parity"]["n"] == len(data.test) and entry["parity"]["max_abs_diff"] <= tol
    x = data.test.x[:17]
    assert np.abs(load_bundle(tmp_path / "b").classify(x) - ref[:17]).max() <= tol
