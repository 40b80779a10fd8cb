"""PatchCleanser double masking: the mask set's coverage, Algorithm 1 in tensor ops against a plain reference,
the certificate against an exhaustive patch search, and the one-graph export (FP32 parity, INT8)."""

import itertools
from collections import Counter

import pytest
import torch
from torch import nn

from edge.errors import ConfigError
from tests.toy_data import toy_data
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.defenses import defense_from_dict
from train.defenses.patchcleanser import (
    MaskedEOT,
    PatchCleanser,
    certified,
    double_masking,
    mask_geometry,
    mask_set,
)
from train.trainer import train


def reference_double_masking(pred_map: list[list[int]]) -> int:
    """Algorithm 1 of the paper, written plainly (majority ties -> lowest class; disagreers in mask order)."""
    k = len(pred_map)
    one = [pred_map[i][i] for i in range(k)]
    if len(set(one)) == 1:
        return one[0]  # Case I
    counts = Counter(one)
    majority = min(counts, key=lambda c: (-counts[c], c))
    for i in range(k):
        if one[i] != majority and all(pred_map[i][j] == one[i] for j in range(k)):
            return one[i]  # Case II
    return majority  # Case III


@pytest.mark.parametrize("image,patch,per_axis", [(32, 6, 3), (32, 8, 3), (32, 5, 4), (32, 5, 6), (10, 3, 2)])
def test_mask_set_covers_every_patch_position(image, patch, per_axis):
    size, stride, starts = mask_geometry(image, patch, per_axis)
    assert len(starts) <= per_axis and starts[0] == 0 and starts[-1] == image - size
    masks = mask_set(image, patch, per_axis)[:, 0]
    assert masks.shape == (len(starts) ** 2, image, image)
    assert ((1 - masks).sum((1, 2)) == size * size).all()
    for r, c in itertools.product(range(image - patch + 1), repeat=2):
        hidden = (masks[:, r:r + patch, c:c + patch] == 0).flatten(1).all(1)
        assert hidden.any(), (r, c)


def test_mask_geometry_is_the_papers():
    # stride ceil((32 - 5 + 1) / 6) = 5, mask 5 + 5 - 1 = 9, starts 0..20 step 5 and one flush with the edge
    assert mask_geometry(32, 5, 6) == (9, 5, [0, 5, 10, 15, 20, 23])
    assert mask_geometry(32, 6, 3) == (14, 9, [0, 9, 18])


def random_maps(n: int, k: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    """Symmetric two-mask label maps that reach all three cases: noisy maps, plus rows forced to agree."""
    maps = torch.randint(0, classes, (n, k, k), generator=gen)
    maps = torch.triu(maps) + torch.triu(maps, 1).transpose(1, 2)
    for m in maps:
        mode = int(torch.randint(0, 3, (1,), generator=gen))
        if mode == 0:  # unanimous first round with noise elsewhere
            m.diagonal().fill_(int(m[0, 0]))
        elif mode == 1:  # a few rows whose two-mask labels all equal their one-mask label
            for i in torch.randperm(k, generator=gen)[:2].tolist():
                m[i, :] = m[:, i] = m[i, i]
    return maps


def test_double_masking_equals_the_papers_algorithm():
    gen = torch.Generator().manual_seed(0)
    maps = random_maps(600, 9, 3, gen)
    label, votes = double_masking(maps, 3)
    cases = Counter()
    for m, got, v in zip(maps.tolist(), label.tolist(), votes):
        want = reference_double_masking(m)
        assert got == want, m
        one = [m[i][i] for i in range(9)]
        assert v.tolist() == [float(one.count(c)) for c in range(3)]
        majority = Counter(one).most_common(1)[0][0]
        cases["I" if len(set(one)) == 1 else "II" if want != majority else "III"] += 1
    assert min(cases["I"], cases["II"], cases["III"]) > 50, cases


def small_cnn(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, classes))


def test_wrapper_equals_plain_double_masking_on_a_toy_model():
    """The in-graph copies, label table and decision equal masking each pair by hand and running Algorithm 1."""
    clf = small_cnn().eval()
    pc = PatchCleanser(clf, 32, 6, 3, fill=0.5).eval()
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    masks = mask_set(32, 6, 3)
    with torch.no_grad():
        scores = pc(x)
        pmap = pc.prediction_map(x)
        for n in range(len(x)):
            by_hand = [[int(clf((x[n] * masks[i] * masks[j] + 0.5 * (1 - masks[i] * masks[j]))[None]).argmax())
                        for j in range(9)] for i in range(9)]
            assert pmap[n].tolist() == by_hand
            assert int(scores[n].argmax()) == reference_double_masking(by_hand)
    assert (scores.amax(1) < 2 * 9).any()  # the toy model disagrees with itself on some images


def test_certificate_agrees_with_exhaustive_patch_search():
    """A toy classifier that thresholds its input, so a 2x2 patch has 16 distinguishable contents: trying all
    of them at all 25 positions is an exhaustive search.  No certified image can be flipped; the search
    does flip some uncertified ones (the certificate is not vacuous and the search has teeth)."""

    class Threshold(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(3)
            self.w = torch.randn(3, 36, generator=g)
            self.w[0] += 0.2  # class 0 is the "bright" class: certifiable when bright pixels dominate

        def forward(self, x):
            return ((x.mean(1) > 0.5).float().flatten(1)) @ self.w.T

    pc = PatchCleanser(Threshold(), 6, 2, 2, fill=0.5).eval()
    gen = torch.Generator().manual_seed(4)
    x = (torch.rand(120, 1, 6, 6, generator=gen) < 0.6).float().expand(-1, 3, -1, -1).clone()
    with torch.no_grad():
        y = pc(x).argmax(1)
        cert = certified(pc.prediction_map(x), y)
        contents = torch.tensor(list(itertools.product((0.0, 1.0), repeat=4))).view(16, 1, 2, 2)
        flipped = torch.zeros(len(x), dtype=torch.bool)
        for r, c in itertools.product(range(5), repeat=2):
            xp = x[:, None].repeat(1, 16, 1, 1, 1)
            xp[:, :, :, r:r + 2, c:c + 2] = contents
            flipped |= (pc(xp.flatten(0, 1)).argmax(1).view(len(x), 16) != y[:, None]).any(1)
    assert cert.sum() >= 20 and not (cert & flipped).any()
    assert (~cert & flipped).sum() >= 20


@pytest.fixture(scope="module")
def cleanser(tmp_path_factory):
    d = tmp_path_factory.mktemp("pc")
    data = toy_data(480, 120)
    r = Recipe(name="pc", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny"),
               defense={"kind": "patchcleanser", "patch": 6, "masks_per_axis": 3},
               optim=OptimConfig(epochs=3, batch_size=32, lr=3e-3, seed=0))
    metrics = train(r, d, progress=False, data=data)
    model, meta = load_checkpoint(d)
    return model, meta, data, metrics


def test_trained_wrapper_is_certified_and_unanimous_on_clean_images(cleanser):
    """Colour classes survive any two masks: nearly every clean image is certified; where the first round is
    unanimous the output is the classifier's own label on the unmasked image, with every vote."""
    model, meta, data, metrics = cleanser
    assert isinstance(model, PatchCleanser) and meta["defense"]["kind"] == "patchcleanser"
    assert metrics["test_acc"] > 0.95
    x, y = torch.from_numpy(data.test.x), torch.from_numpy(data.test.y)
    with torch.no_grad():
        scores = model(x)
        cert = certified(model.prediction_map(x), y)
        bare = model.classifier(x).argmax(1)
    unanimous = scores.amax(1) == 2 * model.num_masks
    assert cert.float().mean() > 0.9 and unanimous.float().mean() > 0.9
    assert torch.equal(scores.argmax(1)[unanimous], bare[unanimous])
    assert (scores.sum(1) == 2 * model.num_masks).all()  # K votes + K on the label


def test_masked_eot_is_the_mean_one_mask_softmax(cleanser):
    model, _, data, _ = cleanser
    x = torch.from_numpy(data.test.x[:8]).requires_grad_(True)
    out = MaskedEOT(model)(x)
    expected = torch.softmax(model.one_mask_logits(x), dim=2).mean(1)
    assert torch.allclose(out.exp(), expected, atol=1e-5)
    (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert g.abs().sum() > 0


def test_exports_as_one_graph_fp32_parity_and_int8(cleanser, tmp_path):
    from edge.bundle import load_bundle
    from tests.bundle_helpers import export_files

    model, meta, data, _ = cleanser
    out = tmp_path / "bundle"
    files = export_files(model, meta, data, out, 32, 64, precisions=["fp32", "int8"])
    assert files == {"model.onnx", "model.int8.onnx"}
    x = data.test.x[32:]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    fp32 = load_bundle(out, precision="fp32").classify(x)
    assert abs(fp32 - ref).max() < 1e-4  # integer-valued scores: the same decision, vote for vote
    int8 = load_bundle(out, precision="int8").classify(x)
    assert (int8.sum(1) == 2 * model.num_masks).all()
    assert (int8.argmax(1) == ref.argmax(1)).mean() > 0.95


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="masks_per_axis"):
        defense_from_dict({"kind": "patchcleanser", "patch": 6, "masks_per_axis": 1})
    with pytest.raises(ConfigError, match="patch"):
        defense_from_dict({"kind": "patchcleanser", "patch": 32})
