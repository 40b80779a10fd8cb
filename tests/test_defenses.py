"""The defense interface: registry, composition, a frozen-classifier stage, fine-tuning, export of parts."""

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge.errors import ConfigError
from tests.bundle_helpers import export_files
from tests.toy_data import toy_data as _toy_data
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.defenses import (
    DefendedModel,
    Defense,
    DefenseStack,
    available_defenses,
    classifier_of,
    register_defense,
)
from train.defenses.input_filter import BoxBlur
from train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def _recipe(defense, epochs=2, init=None):
    return Recipe(name="toy", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny", init=init),
                  defense=defense, optim=OptimConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=0))


# ---------------------------------------------------------------------------- a defense defined in a test


class Rectifier(nn.Module):
    """A small residual image-to-image network: x + conv(relu(conv(x)))."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, x):
        return (x + self.b(torch.relu(self.a(x)))).clamp(0, 1)


@dataclass
class NoisyRectifierConfig:
    sigma: float = 0.3


@register_defense("test_rectifier")
class NoisyRectifier(Defense):
    """One module + one registration line: a rectifier trained on noisy inputs with the classifier frozen."""

    Config = NoisyRectifierConfig

    def wrap(self, model):
        return DefendedModel(model, rectifier=Rectifier())

    def trainable(self, model):
        for p in model.classifier.parameters():
            p.requires_grad_(False)
        return model.rectifier.parameters()

    def transform(self, model, x, y, step):
        return (x + self.cfg.sigma * torch.randn(x.shape, generator=step.generator)).clamp(0, 1), y


def test_registry_lists_every_shipped_defense():
    assert {"none", "blur", "tv", "tik_hf", "tik_pseudo", "gaussian", "pgd_at", "input_blur"} <= set(
        available_defenses())
    with pytest.raises(ValueError, match="registered twice"):
        register_defense("tv")(NoisyRectifier)


def test_trainer_has_no_branch_on_a_defense_name():
    """The trainer calls hooks; no string literal in it names a registered defense."""
    tree = ast.parse((ROOT / "train" / "trainer.py").read_text())
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not literals & set(available_defenses())


def test_stack_composes_a_purifier_with_a_trained_regulariser(tmp_path):
    """Input blur in front of a TV-regularised classifier: trains, reloads as a defended model, exports as
    two graphs or one, and every form gives the same logits."""
    from edge.bundle import load_bundle

    data = _toy_data()
    r = _recipe([{"kind": "input_blur", "kernel_size": 3}, {"kind": "tv", "alpha": 1e-3}])
    metrics = train(r, tmp_path / "run", progress=False, data=data)
    assert metrics["test_acc"] > 0.9
    model, meta = load_checkpoint(tmp_path / "run")
    assert isinstance(model, DefendedModel) and list(model.parts()) == ["purifier", "classifier"]
    assert meta["defense"] == [{"kind": "input_blur", "kernel_size": 3}, {"kind": "tv", "alpha": 1e-3}]
    x = torch.from_numpy(data.test.x[:16])
    with torch.no_grad():
        expected = classifier_of(model)(BoxBlur(3)(x))
        assert torch.allclose(model(x), expected)
    for graphs, files in (("separate", {"purifier.onnx", "classifier.onnx"}), ("one", {"model.onnx"})):
        assert export_files(model, meta, data, tmp_path / graphs, 32, graphs=graphs) == files
    bundle = load_bundle(tmp_path / "one")
    assert np.allclose(bundle.classify(x.numpy()), expected.numpy(), atol=1e-4)


def test_front_stage_trains_only_its_part_from_an_initial_classifier(tmp_path):
    data = _toy_data()
    train(_recipe({"kind": "none"}, epochs=2), tmp_path / "base", progress=False, data=data)
    base, _ = load_checkpoint(tmp_path / "base")
    r = _recipe({"kind": "test_rectifier", "sigma": 0.3}, epochs=2, init=str(tmp_path / "base"))
    train(r, tmp_path / "rect", progress=False, data=data)
    model, meta = load_checkpoint(tmp_path / "rect")
    assert isinstance(model, DefendedModel) and meta["recipe"]["model"]["init"] == str(tmp_path / "base")
    for (k, w0), w1 in zip(base.state_dict().items(), model.classifier.state_dict().values()):
        assert torch.equal(w0, w1), f"frozen classifier weight {k} changed"
    assert any(p.abs().sum() > 0 for p in model.rectifier.b.parameters()), "the rectifier did not train"


def test_init_must_fit_the_architecture(tmp_path):
    data = _toy_data()
    train(_recipe({"kind": "none"}, epochs=1), tmp_path / "base", progress=False, data=data)
    from edge.errors import SignguardError

    with pytest.raises(SignguardError, match="model.init: .* does not fit"):
        train(_recipe({"kind": "blur", "kernel_size": 3}, init=str(tmp_path / "base")), tmp_path / "b",
              progress=False, data=data)


def test_one_forward_owner_per_stack():
    with pytest.raises(ConfigError, match="training forward pass"):
        DefenseStack.from_config([{"kind": "tv"}, {"kind": "tik_hf"}])


def test_gaussian_and_pgd_at_transform_batches_reproducibly():
    from train.defenses import Step
    from train.models import create_model

    torch.manual_seed(0)
    model = create_model("lisa_cnn_tiny", num_classes=3)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 3, (8,))
    for spec in ({"kind": "gaussian", "sigma": 0.2}, {"kind": "pgd_at", "eps": 8 / 255, "attack_steps": 3}):
        outs = []
        for _ in range(2):
            stack = DefenseStack.from_config(spec)
            stack.setup(model, torch.device("cpu"))
            gen = torch.Generator().manual_seed(5)
            outs.append(stack.transform(model, x, y, Step(0, 0, 0, gen, torch.device("cpu")))[0])
        assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], x)
        if spec["kind"] == "pgd_at":
            k = 4  # adv_fraction 0.5: half the batch is adversarial, within the L-inf ball
            assert (outs[0][:k] - x[:k]).abs().max() <= 8 / 255 + 1e-6
            assert torch.equal(outs[0][k:], x[k:])


class HighFrequencyDetector(nn.Module):
    """Mean squared Laplacian of the grey image minus a threshold: > 0 on noisy images, < 0 on smooth ones."""

    def __init__(self, threshold: float):
        super().__init__()
        k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).reshape(1, 1, 3, 3)
        self.register_buffer("k", k)
        self.threshold = threshold

    def forward(self, x, rectified=None):
        lap = nn.functional.conv2d(x.mean(1, keepdim=True), self.k)
        return lap.pow(2).mean(dim=(1, 2, 3)) - self.threshold


def test_gate_classifies_the_rectified_image_only_where_the_detector_fires():
    from train.models import create_model

    torch.manual_seed(0)
    clf = create_model("lisa_cnn_tiny", num_classes=3).eval()
    smooth = torch.linspace(0, 1, 32).reshape(1, 1, 1, 32).expand(4, 3, 32, 32).contiguous()
    noisy = (smooth + 0.2 * torch.randn(4, 3, 32, 32)).clamp(0, 1)
    x = torch.cat([smooth, noisy])
    gated = DefendedModel(clf, rectifier=BoxBlur(5), detector=HighFrequencyDetector(0.01)).eval()
    assert list(gated.parts()) == ["gate", "classifier"]
    with torch.no_grad():
        fired = gated.detector(x) > 0
        assert fired.tolist() == [False] * 4 + [True] * 4
        expected = torch.cat([clf(smooth), clf(BoxBlur(5)(noisy))])
        assert torch.allclose(gated(x), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="needs a rectifier"):
        DefendedModel(clf, detector=HighFrequencyDetector(0.01))


def test_describe_names_settings_as_the_papers_do():
    assert DefenseStack.from_config({"kind": "none"}).describe() == "-"
    assert DefenseStack.from_config({"kind": "pgd_at"}).describe() == "eps=8/255, 7 steps"
    stack = DefenseStack.from_config([{"kind": "input_blur", "kernel_size": 5}, {"kind": "blur", "alpha": 0.1}])
    assert stack.kind == "input_blur+blur" and stack.describe() == "kernel_size=5; 5x5, alpha=0.1"


def test_doa_fine_tuning_stops_the_occlusion_attack(tmp_path):
    """DOA's job, measured: ROA with a 12x12 rectangle fools the baseline on held-out images, and not the same
    classifier fine-tuned on ROA examples (through the registry, from ``model.init``)."""
    from train.attacks.roa import ROA

    data = _toy_data(480, 120)
    train(_recipe({"kind": "none"}, epochs=3), tmp_path / "base", progress=False, data=data)
    doa = {"kind": "doa", "height": 12, "width": 12, "steps": 10, "alpha": 0.1}
    train(_recipe(doa, epochs=2, init=str(tmp_path / "base")), tmp_path / "doa", progress=False, data=data)
    x, y = torch.from_numpy(data.test.x), torch.from_numpy(data.test.y)
    asr = {}
    for name in ("base", "doa"):
        model, _ = load_checkpoint(tmp_path / name)
        r = ROA(model, height=12, width=12, search="exhaustive", steps=20, alpha=0.1)(x, y, seed=0)
        assert (r.info["pred_clean"] == y.numpy()).mean() > 0.95  # clean accuracy kept
        asr[name] = r.info["success"].mean()
    assert asr["base"] > 0.15 and asr["doa"] < 0.05, asr


def test_restoration_score_averages_clean_and_perturbed_accuracy():
    """The model-selection score of PRN and FRU: a perturbation that flips every prediction halves it, and the
    key changes with the perturbations it is measured on."""
    from types import SimpleNamespace

    from train.attacks.bank import perturbations_digest
    from train.defenses.restoration import restoration_score

    class MeanColour(torch.nn.Module):  # predicts the channel with the largest mean
        def forward(self, x):
            return x.mean((2, 3))

    x = torch.zeros(8, 3, 4, 4)
    x[:, 0] = 0.6  # every image red: class 0
    split = SimpleNamespace(x=x.numpy(), y=np.zeros(8, dtype=np.int64))
    green = torch.zeros(2, 3, 4, 4)
    green[:, 1] = 0.9  # pushes every image to class 1
    assert restoration_score(MeanColour(), split, torch.zeros(2, 3, 4, 4), torch.device("cpu")) == 1.0
    assert restoration_score(MeanColour(), split, green, torch.device("cpu")) == 0.5
    assert perturbations_digest(green) != perturbations_digest(torch.zeros(2, 3, 4, 4))
