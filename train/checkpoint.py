"""Checkpoints: safetensors weights + a JSON sidecar, written atomically.

The sidecar says everything needed to rebuild and deploy the model
(architecture and options, defense, classes, preprocessing, the recipe, the
data hash, metrics) and the SHA-256 of the weights, which is checked on load.
No pickle anywhere: a checkpoint received from elsewhere cannot run code.
Training state for ``--resume`` (optimizer moments, epoch, RNG) is stored the
same way in ``train_state.safetensors`` + ``train_state.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from edge.errors import SignguardError
from edge.fileio import atomic_write_bytes, atomic_write_json, sha256_file

from .defenses import LEGACY_FIELDS, DefenseStack
from .models import create_model

FORMAT = "signguard-checkpoint"
VERSION = 1


def _versions() -> dict[str, str]:
    import numpy

    return {"torch": torch.__version__, "numpy": numpy.__version__}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json``; returns the JSON path.

    ``meta`` must hold ``architecture`` ({name, options}) and ``classes``.
    """
    path = Path(path).with_suffix("")
    for key in ("architecture", "classes"):
        if key not in meta:
            raise ValueError(f"checkpoint meta needs {key!r}")
    weights = path.with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, st_save(state))
    sidecar = dict(meta)
    sidecar.update(
        format=FORMAT,
        version=VERSION,
        weights=weights.name,
        weights_sha256=sha256_file(weights),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
    )
    out = path.with_suffix(".json")
    atomic_write_json(out, sidecar)
    return out


def read_sidecar(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Resolve a checkpoint path (run folder, .json or .safetensors) and read its sidecar."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.json"
    path = path.with_suffix(".json")
    if not path.is_file():
        raise SignguardError(f"{path}: checkpoint sidecar not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SignguardError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise SignguardError(f"{path}: not a signguard checkpoint of version {VERSION}")
    return path, meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its sidecar, verify the weights' hash, load them strictly."""
    sidecar, meta = read_sidecar(path)
    weights = sidecar.parent / meta["weights"]
    if not weights.is_file():
        raise SignguardError(f"{weights}: weights file named by {sidecar.name} is missing")
    if sha256_file(weights) != meta["weights_sha256"]:
        raise SignguardError(f"{weights}: SHA-256 does not match {sidecar.name}; refusing to load")
    arch = meta["architecture"]
    model = create_model(arch["name"], **arch.get("options", {}))
    model = DefenseStack.from_config(meta.get("defense", {"kind": "none"}), f"{sidecar}: defense",
                                     ignore=LEGACY_FIELDS).wrap(model)  # parts in front of the classifier
    state = st_load(weights.read_bytes())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SignguardError(f"{weights}: weights do not fit {arch['name']}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), meta


def save_train_state(run_dir: Path, optimizer: torch.optim.Optimizer, epoch: int, extra: dict[str, Any]) -> None:
    """Optimizer tensors to safetensors, scalars to JSON: enough to resume bit-for-bit."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"state.{idx}.{k}"] = t.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    atomic_write_bytes(run_dir / "train_state.safetensors", st_save(tensors))
    atomic_write_json(run_dir / "train_state.json", {"epoch": epoch, "param_groups": sd["param_groups"], **extra})


def load_train_state(run_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_train_state` wrote; returns the JSON part (epoch, extra)."""
    meta = json.loads((run_dir / "train_state.json").read_text(encoding="utf-8"))
    tensors = st_load((run_dir / "train_state.safetensors").read_bytes())
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta
