"""Exporting a small trained checkpoint in a test: the one call and manifest read the export tests share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def export_files(model: Any, meta: dict, data: Any, out: Path, n_parity: int, n_calib: int = 0,
                 **options: Any) -> set[str]:
    """Export ``model`` to ``out`` (parity on the test split's first ``n_parity`` images; INT8, when asked for in
    ``options["precisions"]``, calibrated on the training split's first ``n_calib``) and return the manifest's
    model files."""
    from edge.preprocess import PreprocessConfig
    from export.bundle import export_bundle

    calib = {"calib_x": data.train.x[:n_calib]} if n_calib else {}
    export_bundle(model, out, meta["classes"], PreprocessConfig(), data.test.x[:n_parity], name=out.name,
                  source={}, **calib, **options)
    return {e["file"] for e in json.loads((out / "manifest.json").read_text())["models"]}
