"""De-randomized column smoothing: the certificate, its guarantee under real patches, one-graph export."""


import pytest
import torch

from tests.toy_data import toy_data
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.defenses.smoothing import SmoothedClassifier, certified, column_masks
from train.trainer import train


def test_column_masks_wrap_around():
    m = column_masks(8, 3)[:, 0, 0]
    assert m.shape == (8, 8) and m.sum(1).eq(3).all()
    assert m[6].tolist() == [1, 0, 0, 0, 0, 0, 1, 1]  # band 6, 7, 0


def test_certificate_margin_and_tie_break():
    counts = torch.tensor([[20.0, 4.0, 8.0], [8.0, 20.0, 4.0], [20.0, 5.0, 7.0], [10.0, 10.0, 12.0]])
    y = torch.tensor([0, 1, 0, 0])
    # delta 6: 20 - 6 > 8 + 6 fails by 0 (tie): allowed only when the winner has the lower index
    assert certified(counts, y, 6).tolist() == [True, False, True, False]
    assert certified(counts, y, 5).tolist() == [True, True, True, False]


@pytest.fixture(scope="module")
def smoothed(tmp_path_factory):
    d = tmp_path_factory.mktemp("smooth")
    data = toy_data(480, 120)
    r = Recipe(name="smooth", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny"),
               defense={"kind": "column_smoothing", "band": 4, "patch": 5},
               optim=OptimConfig(epochs=3, batch_size=32, lr=3e-3, seed=0))
    train(r, d, progress=False, data=data)
    model, meta = load_checkpoint(d)
    return model, meta, data


def test_certified_predictions_survive_every_patch(smoothed):
    """Certified for 5-px patches: a 5x5 patch of any colour of another class, at every position, never changes a
    certified prediction (and a patch much wider than certified is allowed to)."""
    model, _, data = smoothed
    assert isinstance(model, SmoothedClassifier)
    x, y = torch.from_numpy(data.test.x[:24]), torch.from_numpy(data.test.y[:24])
    with torch.no_grad():
        counts = model(x)
    cert = certified(counts, y, 5 + 4 - 1)
    assert cert.float().mean() > 0.9
    pred = counts.argmax(1)
    for colour in range(3):
        for r0 in range(0, 28, 9):
            for c0 in range(0, 28, 2):
                xp = x.clone()
                xp[:, :, r0:r0 + 5, c0:c0 + 5] = 0.0
                xp[:, colour, r0:r0 + 5, c0:c0 + 5] = 1.0
                with torch.no_grad():
                    assert torch.equal(model(xp).argmax(1)[cert], pred[cert]), (colour, r0, c0)


def test_smoothed_model_exports_as_one_graph_with_int8(smoothed, tmp_path):
    from edge.bundle import load_bundle
    from tests.bundle_helpers import export_files

    model, meta, data = smoothed
    out = tmp_path / "bundle"
    files = export_files(model, meta, data, out, 64, 128, precisions=["fp32", "int8"])
    assert files == {"model.onnx", "model.int8.onnx"}
    x = data.test.x[64:]
    with torch.no_grad():
        votes = model(torch.from_numpy(x)).numpy()
    for precision in ("fp32", "int8"):
        bundle = load_bundle(out, precision=precision)
        out_votes = bundle.classify(x)
        assert out_votes.sum(1).min() >= 32  # every band voted
        agree = (out_votes.argmax(1) == votes.argmax(1)).mean()
        assert agree == 1.0 if precision == "fp32" else agree > 0.95, (precision, agree)


def test_soft_vote_is_the_differentiable_expectation_over_ablations(smoothed):
    from train.defenses.smoothing import SoftVote

    model, _, data = smoothed
    x = torch.from_numpy(data.test.x[:16]).requires_grad_(True)
    soft = SoftVote(model)(x)
    probs = soft.exp()
    assert torch.allclose(probs.sum(1), torch.ones(16), atol=1e-5)  # a distribution: mean of band softmaxes
    expected = torch.softmax(model.band_logits(x), dim=2).mean(1)
    assert torch.allclose(probs, expected, atol=1e-5)
    (g,) = torch.autograd.grad(soft[:, 0].sum(), x)
    assert g.abs().sum() > 0  # the vote itself has no gradient; its expectation does
    with torch.no_grad():
        assert (soft.argmax(1) == model(x).argmax(1)).float().mean() > 0.9
