"""ROA: positions cover the grid, the chosen rectangle maximises the loss, content stays inside it."""

import pytest
import torch
from torch import nn

from edge.errors import SignguardError
from train.attacks.roa import ROA, positions, rect_masks


class PatchSensitive(nn.Module):
    """Logit of class 1 = mean brightness of the 4x4 block at rows 20-23, cols 8-11 (scaled), class 0 = 0.5 * 8:
    an occluder there decides the class, an occluder elsewhere does nothing."""

    def forward(self, x):
        spot = x[:, :, 20:24, 8:12].mean(dim=(1, 2, 3))
        return torch.stack([torch.full_like(spot, 4.0), 8.0 * spot], 1)


def test_positions_cover_every_valid_corner():
    p = positions((32, 32), (7, 7), 2)
    rows = sorted({int(r) for r in p[:, 0]})
    assert rows[0] == 0 and rows[-1] == 25 and len(p) == len(rows) ** 2  # 0, 2, ..., 24 and the last, 25
    m = rect_masks((32, 32), (10, 5), torch.tensor([[3, 4]]))
    assert m.shape == (1, 1, 32, 32) and m.sum() == 50 and m[0, 0, 3, 4] == 1 and m[0, 0, 13, 4] == 0


@pytest.mark.parametrize("search", ["exhaustive", "gradient"])
def test_roa_finds_the_sensitive_spot_and_flips_the_class(search):
    model = PatchSensitive()
    x = torch.zeros(3, 3, 32, 32)  # class 0 on a black image
    y = torch.zeros(3, dtype=torch.long)
    atk = ROA(model, height=5, width=5, stride=1, search=search, candidates=5, steps=20, alpha=0.1)
    if search == "gradient":  # the gradient search needs a gradient: brighten the image a little
        x = x + 0.05
    res = atk(x, y, seed=0)
    mask = torch.as_tensor(res.info["mask"])
    assert res.info["success"].all()
    assert (mask[:, 20:24, 8:12] == 1).any(dim=(1, 2)).all()  # the rectangle covers the spot
    changed = (res.x_adv - x).abs().amax(1) > 0
    assert not (changed & (mask == 0)).any()  # nothing outside the rectangle moves
    assert mask.sum(dim=(1, 2)).eq(25).all()


def test_roa_rejects_bad_parameters():
    with pytest.raises(SignguardError, match="search must be one of"):
        ROA(PatchSensitive(), search="random")
    with pytest.raises(SignguardError, match="does not fit"):
        ROA(PatchSensitive(), height=40)(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
