"""Checkpoints: safetensors weights + a JSON sidecar, written atomically.

The sidecar says everything needed to rebuild and deploy the model
(architecture and options, defense, classes, preprocessing, the recipe, the
data hash, metrics) and the SHA-256 of the weights, which is checked on load.
No pickle anywhere: a checkpoint received from elsewhere cannot run code.
Training state for ``--resume`` (model weights, optimizer moments, RNG; epoch
and scalars in the JSON) is stored the same way, hash included, in
``train_state.safetensors`` + ``train_state.json``.

Why each tensors + JSON pair is written as one unit (:func:`_write_pair`): a
run killed between the two files must still load, or a resume would find
weights that do not match their sidecar.  The tensors go to
``<name>.pending`` first; the atomic write of the JSON (naming the final file
and its hash) is the commit point; the pending file is then renamed into
place.  A reader that finds the committed hash in the pending file uses it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from edge.errors import SignguardError
from edge.fileio import atomic_write_bytes, atomic_write_json

from .defenses import LEGACY_FIELDS, DefenseStack
from .models import create_model

log = logging.getLogger(__name__)

FORMAT = "signguard-checkpoint"
VERSION = 1
STATE_FORMAT = "signguard-train-state"
PENDING = ".pending"  # suffix of a tensors file written but not yet renamed into place
TRAIN_STATE = "train_state"
_DAMAGED = "the training state is damaged; start the run again with --overwrite"


def _versions() -> dict[str, str]:
    import numpy

    return {"torch": torch.__version__, "numpy": numpy.__version__}


def _write_pair(tensors: Path, data: bytes, sidecar: Path, meta: dict[str, Any], key: str) -> None:
    """Write ``data`` to ``tensors`` and ``meta`` (plus ``key`` = its file name, ``key_sha256`` = its hash) to
    ``sidecar`` as one unit: the pending file, then the sidecar (the commit point), then the rename."""
    pending = tensors.with_name(tensors.name + PENDING)
    atomic_write_bytes(pending, data)
    atomic_write_json(sidecar, {**meta, key: tensors.name, f"{key}_sha256": hashlib.sha256(data).hexdigest()})
    os.replace(pending, tensors)


def _read_tensors(sidecar: Path, meta: dict[str, Any], key: str) -> bytes:
    """The bytes of the tensors file ``meta[key]`` names, checked against ``meta[key_sha256]``; the pending
    file of a write killed after its commit point is accepted when it carries the committed hash."""
    name, digest = meta.get(key), meta.get(f"{key}_sha256")
    if not isinstance(name, str) or not isinstance(digest, str) or Path(name).name != name:
        raise SignguardError(f"{sidecar}: expected {key!r} (a file name beside it) and {key + '_sha256'!r}")
    tensors = sidecar.parent / name
    found = False
    for candidate in (tensors, tensors.with_name(name + PENDING)):
        try:
            data = candidate.read_bytes()
        except FileNotFoundError:
            continue
        found = True
        if hashlib.sha256(data).hexdigest() == digest:
            return data
    if not found:
        raise SignguardError(f"{tensors}: file named by {sidecar.name} is missing")
    raise SignguardError(f"{tensors}: SHA-256 does not match {sidecar.name}; refusing to load")


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (as one unit, see the module doc); returns the JSON path.

    ``meta`` must hold ``architecture`` ({name, options}) and ``classes``.
    """
    path = Path(path).with_suffix("")
    for key in ("architecture", "classes"):
        if key not in meta:
            raise ValueError(f"checkpoint meta needs {key!r}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sidecar = dict(meta)
    sidecar.update(
        format=FORMAT,
        version=VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
    )
    out = path.with_suffix(".json")
    _write_pair(path.with_suffix(".safetensors"), st_save(state), out, sidecar, "weights")
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise SignguardError(f"{path}: not a signguard checkpoint of version {VERSION}")
    return path, meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its sidecar, verify the weights' hash, load them strictly."""
    sidecar, meta = read_sidecar(path)
    data = _read_tensors(sidecar, meta, "weights")
    weights = sidecar.parent / meta["weights"]
    arch = meta["architecture"]
    model = create_model(arch["name"], **arch.get("options", {}))
    model = DefenseStack.from_config(meta.get("defense", {"kind": "none"}), f"{sidecar}: defense",
                                     ignore=LEGACY_FIELDS).wrap(model)  # parts in front of the classifier
    state = st_load(data)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SignguardError(f"{weights}: weights do not fit {arch['name']}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), meta


def save_train_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                     extra: dict[str, Any]) -> None:
    """Model weights, optimizer tensors and the RNG to safetensors, scalars and the tensors' SHA-256 to JSON,
    as one unit: the whole state of one epoch, enough to resume bit-for-bit."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"state.{idx}.{k}"] = t.detach().cpu().contiguous()
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"format": STATE_FORMAT, "version": VERSION, "epoch": epoch, "param_groups": sd["param_groups"], **extra}
    _write_pair(run_dir / f"{TRAIN_STATE}.safetensors", st_save(tensors), run_dir / f"{TRAIN_STATE}.json", meta,
                "tensors")


def read_train_state(run_dir: Path) -> dict[str, Any]:
    """The JSON part of the training state (epoch, ``best_val``...), checked for shape; a one-line
    :class:`SignguardError` naming the file when it is unreadable or truncated."""
    path = run_dir / f"{TRAIN_STATE}.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SignguardError(f"{path}: cannot read the training state ({e.strerror})") from None
    except ValueError as e:
        raise SignguardError(f"{path}: not valid JSON ({e}); {_DAMAGED}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int) or "param_groups" not in meta:
        raise SignguardError(f"{path}: expected an object with 'epoch' and 'param_groups'; {_DAMAGED}")
    return meta


def load_train_state(run_dir: Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict | None]:
    """Restore what :func:`save_train_state` wrote into ``optimizer`` and the RNG, after checking the tensors'
    hash; returns the JSON part (epoch, extra) and the model weights (None for a state written before weights
    and hashes were part of it: its weights are in ``last.json``, its tensors unverified)."""
    meta = read_train_state(run_dir)
    path = run_dir / f"{TRAIN_STATE}.safetensors"
    if "tensors_sha256" in meta:
        data = _read_tensors(run_dir / f"{TRAIN_STATE}.json", meta, "tensors")
    else:
        log.warning("%s: written by an older signguard without a hash; its tensors cannot be verified", path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SignguardError(f"{path}: cannot read the training state ({e.strerror})") from None
    try:
        tensors = st_load(data)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            if key.startswith("state."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = t
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
    except (SafetensorError, ValueError, KeyError, RuntimeError) as e:  # unreadable, or does not fit the optimizer
        raise SignguardError(f"{path}: cannot restore the training state ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else e!r}); {_DAMAGED}") from None
    weights = {k[len("model."):]: t for k, t in tensors.items() if k.startswith("model.")}
    return meta, weights or None
