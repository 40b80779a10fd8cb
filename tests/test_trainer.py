"""Training loop: learns, writes safetensors + sidecar, resumes exactly, refuses tampered weights."""

import dataclasses
import json

import pytest
import torch

from edge.errors import SignguardError
from tests.toy_data import toy_data as _toy_data
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.defenses.base import Defense, register_defense
from train.trainer import train


def _recipe(epochs=2, defense=None):
    return Recipe(
        name="toy",
        data=DataConfig(),
        model=ModelConfig(name="lisa_cnn_tiny"),
        defense=defense or {"kind": "none"},
        optim=OptimConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=0),
    )


def test_train_learns_and_writes_checkpoint(tmp_path):
    metrics = train(_recipe(epochs=3), tmp_path, progress=False, data=_toy_data())
    assert metrics["test_acc"] > 0.9
    side = json.loads((tmp_path / "model.json").read_text())
    assert side["classes"] == ["r", "g", "b"] and side["data_hash"] == "toyhash"
    assert side["architecture"]["name"] == "lisa_cnn_tiny"
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all("val_acc" in json.loads(s) for s in lines)
    model, meta = load_checkpoint(tmp_path)
    assert meta["metrics"]["test_acc"] == metrics["test_acc"]


def test_resume_is_exact(tmp_path):
    data = _toy_data()
    r = _recipe(epochs=3, defense={"kind": "tv", "alpha": 1e-3})
    train(r, tmp_path / "a", progress=False, data=data)

    # crash during the third epoch's evaluation, then resume from the state saved after epoch 2
    import train.trainer as T

    orig = T.accuracy
    calls = {"n": 0}

    def crash_in_third_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(*a, **k)

    T.accuracy = crash_in_third_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            train(r, tmp_path / "c", progress=False, data=data)
    finally:
        T.accuracy = orig
    state = json.loads((tmp_path / "c" / "train_state.json").read_text())
    assert state["epoch"] == 1 and "train_time_s" in state
    metrics = train(r, tmp_path / "c", resume=True, progress=False, data=data)
    log_lines = (tmp_path / "c" / "log.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in log_lines] == [0, 1, 2]
    # resuming a finished run returns the recorded metrics (no re-timing, no re-evaluation, no new epochs)
    again = train(r, tmp_path / "c", resume=True, progress=False, data=data)
    assert again == metrics == load_checkpoint(tmp_path / "c")[1]["metrics"]
    assert (tmp_path / "c" / "log.jsonl").read_text().splitlines() == log_lines
    wa = load_checkpoint(tmp_path / "a" / "last.json")[0].state_dict()
    wc = load_checkpoint(tmp_path / "c" / "last.json")[0].state_dict()
    for k in wa:
        assert torch.equal(wa[k], wc[k]), k


def test_tampered_weights_are_refused(tmp_path):
    train(_recipe(epochs=1), tmp_path, progress=False, data=_toy_data())
    w = tmp_path / "model.safetensors"
    b = bytearray(w.read_bytes())
    b[-1] ^= 0xFF
    w.write_bytes(bytes(b))
    with pytest.raises(SignguardError, match="SHA-256"):
        load_checkpoint(tmp_path)


@dataclasses.dataclass
class _ProbeConfig:
    key: str = "bank-a"
    score: float = 0.9


@register_defense("test_validation_probe")
class _ValidationProbe(Defense):
    """A defense whose validation score and key come from its config, to drive the trainer's model selection."""

    Config = _ProbeConfig

    def validate(self, model, split, device):
        return self.cfg.score

    def validation_key(self):
        return self.cfg.key


def test_resume_restarts_model_selection_when_the_validation_key_changes(tmp_path):
    """A continuation whose validation score is measured differently (PRN's bank grew) must not compare its
    scores with the recorded best: with the same key a lower score keeps the old best checkpoint, with a new key
    the continuation's own best epoch is chosen."""
    import shutil

    data = _toy_data()
    train(_recipe(epochs=2, defense={"kind": "test_validation_probe", "score": 0.9}), tmp_path / "a",
          progress=False, data=data)
    assert json.loads((tmp_path / "a" / "train_state.json").read_text())["val_key"] == "bank-a"
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    same = train(_recipe(epochs=3, defense={"kind": "test_validation_probe", "score": 0.5}), tmp_path / "a",
                 resume=True, progress=False, data=data)
    assert same["best_epoch"] == 1  # 0.5 < the recorded 0.9: the epoch-1 checkpoint stays the best
    other = train(_recipe(epochs=3, defense={"kind": "test_validation_probe", "key": "bank-b", "score": 0.5}),
                  tmp_path / "b", resume=True, progress=False, data=data)
    assert other["best_epoch"] == 2
    assert json.loads((tmp_path / "b" / "train_state.json").read_text())["best_val"] == 0.5


def test_test_accuracy_is_the_record_or_measured_on_the_checkpoints_own_test_split(tmp_path):
    from train.data.datasets import load_checkpoint_data
    from train.trainer import accuracy, test_accuracy

    r = Recipe(name="tiny", data=DataConfig(train_per_class=4, test_per_class=3),
               model=ModelConfig(name="lisa_cnn_tiny"), optim=OptimConfig(epochs=2, batch_size=32, lr=3e-3))
    train(r, tmp_path, progress=False)
    model, meta = load_checkpoint(tmp_path / "last.json")  # the last epoch: no final record
    assert "test_acc" not in meta["metrics"]
    assert test_accuracy(model, meta) == accuracy(model, load_checkpoint_data(meta, progress=False).test)
    model, meta = load_checkpoint(tmp_path)
    meta["metrics"]["test_acc"] = 0.5  # a record is used as it is, unless measured on other data
    data = load_checkpoint_data(meta, progress=False)
    assert test_accuracy(model, meta) == test_accuracy(model, meta, data) == 0.5
    other = dataclasses.replace(data, data_hash="a copy of the data")
    assert test_accuracy(model, meta, other) == accuracy(model, data.test)
