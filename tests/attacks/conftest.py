"""Shared fixtures of the attack tests: one torch thread, and a tiny CNN fitted on data built in the test."""

import pytest
import torch
import torch.nn.functional as F

from train.models import create_model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning
    OpenMP threads made these tests 20-70x slower; restored afterwards for the rest of the suite."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit_tiny(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("lisa_cnn_tiny", num_classes=num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def fit_tiny():
    """``fit_tiny(x, y, num_classes)``: ``lisa_cnn_tiny`` trained with Adam for 6 epochs, seed 0, in eval mode."""
    return _fit_tiny
