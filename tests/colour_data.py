"""The tiny dataset several test modules train on: learnable in seconds, breakable by small perturbations."""

import torch


def colour_data(n: int, seed: int, lift: float = 0.05):
    """Three classes = a ``+lift`` of one colour channel over uniform noise in [0.25, 0.75].

    Learnable to 100% in seconds, yet the class signal is small enough that an L-inf perturbation of
    about ``lift / 2`` can erase it: a model that PGD must break.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.25 + 0.5 * torch.rand(n, 3, 32, 32, generator=g)
    x[torch.arange(n), y] += lift
    return x, y
