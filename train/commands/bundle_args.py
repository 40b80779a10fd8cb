"""Arguments shared by the commands that score a bundle on held-out images (``verify``, ``bench``)."""

from __future__ import annotations

import argparse


def add_bundle_arguments(p: argparse.ArgumentParser, attack_n: int) -> None:
    """The bundle, its PyTorch source, and the seeded held-out draw: one spelling, so that
    ``verify`` and ``bench`` at the same ``--n/--seed`` score the same images."""
    p.add_argument("--bundle", required=True, help="bundle folder written by `signguard export`")
    p.add_argument("--checkpoint", help="the trained model (default: the bundle manifest's source.checkpoint)")
    p.add_argument("--n", type=int, default=1000, help="held-out test images for clean accuracy")
    p.add_argument("--attack-n", type=int, default=attack_n, help="of those, images attacked with PGD")
    p.add_argument("--eps", type=float, default=8 / 255, help="PGD L-inf budget (0 disables PGD)")
    p.add_argument("--seed", type=int, default=0, help="the held-out draw and the PGD random start")
