"""Fixtures for the edge tests: bundles built from tiny ONNX classifiers (see helpers.py). No torch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

import pytest

from .helpers import COLOUR_CLASSES, colour_weights, random_weights, write_bundle


@pytest.fixture(scope="session")
def _bundles(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "tiny": write_bundle(root / "tiny", [("model.onnx", "fp32", random_weights(0)),
                                             ("model.fp16.onnx", "fp16", random_weights(1))],
                             ["c%d" % i for i in range(5)]),
        "colour": write_bundle(root / "colour", [("model.onnx", "fp32", colour_weights())], COLOUR_CLASSES),
    }


@pytest.fixture()
def tiny_bundle(_bundles: Dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy (tests may corrupt it): 5 classes, fp32 = random_weights(0), fp16 = random_weights(1)."""
    return Path(shutil.copytree(str(_bundles["tiny"]), str(tmp_path / "tiny")))


@pytest.fixture()
def colour_bundle(_bundles: Dict[str, Path]) -> Path:
    """Read-only: classes red/green/blue, predicts the dominant RGB channel of the crop."""
    return _bundles["colour"]
