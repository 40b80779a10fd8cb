"""Training runs under faults: a kill at any write, damaged state files, and a run folder trained into twice.

Kills are simulated by raising a BaseException (caught by nothing in the trainer) at one write of one epoch;
the resumed run must then end bit-identical to an uninterrupted one, with each epoch logged once.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import train.checkpoint as C
import train.trainer as T
from edge.errors import SignguardError
from signguard.cli import main
from tests.toy_data import toy_data
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.trainer import train

DATA = toy_data(96, 24)
BASELINE = Path(__file__).resolve().parents[1] / "configs" / "baseline.yaml"


def _recipe() -> Recipe:
    return Recipe(name="toy", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny"), defense={"kind": "none"},
                  optim=OptimConfig(epochs=3, batch_size=32, lr=3e-3, seed=0))


class _Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` in the code under test catches it."""


def _kill_at(monkeypatch, owner, name: str, when) -> None:
    """Make ``owner.name`` raise :class:`_Killed` at its first call for which ``when(*args)`` holds."""
    orig = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if when(*args):
            raise _Killed
        return orig(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def _epochs(run: Path) -> list:
    return [json.loads(s)["epoch"] for s in (run / "log.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    for name in ("model.json", "last.json"):
        wa, wb = load_checkpoint(a / name)[0].state_dict(), load_checkpoint(b / name)[0].state_dict()
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref")
    return run, train(_recipe(), run, progress=False, data=DATA)


def _json_write(name: str, epoch: int):
    return lambda path, obj: Path(path).name == name and obj.get("epoch") == epoch


def _rename_of(name: str):
    return lambda src, dst: str(src).endswith(C.PENDING) and Path(dst).name == name


KILLS = {
    # fault 16: the epoch's log line is written, its checkpoints and state are not
    "after the log line": (T, "save_checkpoint", lambda path, model, meta: meta["epoch"] == 1),
    # fault 9: the weights of last are written, its sidecar is not (and the commit after the sidecar)
    "between last's weights and sidecar": (C, "atomic_write_json", _json_write("last.json", 1)),
    "after last's sidecar, before its rename": (os, "replace", _rename_of("last.safetensors")),
    "between the best model's weights and sidecar": (C, "atomic_write_json", _json_write("model.json", 1)),
    # the training state's tensors written, its JSON not (fault 6/9: the pair must not mix epochs)
    "between the state's tensors and JSON": (C, "atomic_write_json", _json_write("train_state.json", 1)),
    "after the state's JSON, before its rename": (os, "replace", _rename_of("train_state.safetensors")),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_a_kill_at_any_write_resumes_exactly_and_logs_each_epoch_once(point, reference, tmp_path, monkeypatch):
    owner, name, when = KILLS[point]
    run = tmp_path / "run"
    _kill_at(monkeypatch, owner, name, when)
    with pytest.raises(_Killed):
        train(_recipe(), run, progress=False, data=DATA)
    monkeypatch.undo()
    metrics = train(_recipe(), run, resume=True, progress=False, data=DATA)
    assert _epochs(run) == [0, 1, 2]
    ref_run, ref_metrics = reference
    assert {k: v for k, v in metrics.items() if k != "train_time_s"} == \
        {k: v for k, v in ref_metrics.items() if k != "train_time_s"}
    _assert_same_weights(run, ref_run)
    assert not list(run.glob("*" + C.PENDING))  # every interrupted write was completed or replaced


def test_a_pair_killed_after_its_commit_point_still_loads(tmp_path, monkeypatch):
    """Weights renamed into place after the sidecar: a reader between the two finds them in the pending file."""
    model = torch.nn.Linear(2, 2)
    meta = {"architecture": {"name": "lisa_cnn_tiny", "options": {}}, "classes": ["a"]}
    C.save_checkpoint(tmp_path / "m", model, meta)
    sd = {k: v + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    _kill_at(monkeypatch, os, "replace", _rename_of("m.safetensors"))
    with pytest.raises(_Killed):
        C.save_checkpoint(tmp_path / "m", model, meta)
    monkeypatch.undo()
    side = json.loads((tmp_path / "m.json").read_text())
    data = C._read_tensors(tmp_path / "m.json", side, "weights")
    assert data == (tmp_path / ("m.safetensors" + C.PENDING)).read_bytes()
    (tmp_path / ("m.safetensors" + C.PENDING)).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SignguardError, match=r"m\.safetensors: SHA-256 does not match m\.json"):
        C._read_tensors(tmp_path / "m.json", side, "weights")


@pytest.fixture()
def interrupted(tmp_path, monkeypatch):
    """A run killed after its log line of epoch 1: the training state is the one of epoch 0."""
    run = tmp_path / "run"
    _kill_at(monkeypatch, T, "save_checkpoint", lambda path, model, meta: meta["epoch"] == 1)
    with pytest.raises(_Killed):
        train(_recipe(), run, progress=False, data=DATA)
    monkeypatch.undo()
    assert json.loads((run / "train_state.json").read_text())["epoch"] == 0
    return run


def test_truncated_state_json_is_one_clear_error(interrupted, capsys):
    p = interrupted / "train_state.json"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(SignguardError, match=r"train_state\.json: not valid JSON .*--overwrite"):
        train(_recipe(), interrupted, resume=True, progress=False, data=DATA)
    # through the CLI (refused before any data is loaded): one line, exit 1
    assert main(["train", "--config", str(BASELINE), "--run-dir", str(interrupted), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train_state.json: not valid JSON" in err


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_damaged_state_tensors_are_refused_by_their_hash(interrupted, damage):
    p = interrupted / "train_state.safetensors"
    data = bytearray(p.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:
        data[-3] ^= 0x10  # inside the last tensor: still parses, silently different without a hash
    p.write_bytes(bytes(data))
    with pytest.raises(SignguardError, match=r"train_state\.safetensors: SHA-256 does not match train_state\.json"):
        train(_recipe(), interrupted, resume=True, progress=False, data=DATA)


def test_training_into_an_existing_run_needs_resume_or_overwrite(reference, tmp_path, capsys):
    ref_run, _ = reference
    run = Path(shutil.copytree(ref_run, tmp_path / "run"))
    before = {n: (run / n).read_bytes() for n in ("model.json", "model.safetensors", "log.jsonl")}
    with pytest.raises(SignguardError, match=r"already holds a training run .*--resume.*--overwrite"):
        train(_recipe(), run, progress=False, data=DATA)
    assert main(["train", "--config", str(BASELINE), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run) in err and "--overwrite" in err
    assert {n: (run / n).read_bytes() for n in before} == before  # nothing touched
    with pytest.raises(SystemExit):  # argparse: the two flags exclude each other
        main(["train", "--config", str(BASELINE), "--run-dir", str(run), "--resume", "--overwrite"])
    with pytest.raises(SignguardError, match="exclude each other"):
        train(_recipe(), run, resume=True, overwrite=True, progress=False, data=DATA)
    (run / "log.jsonl").write_text('{"epoch": 7}\n')  # a stale line from the replaced run must go
    train(_recipe(), run, overwrite=True, progress=False, data=DATA)
    assert _epochs(run) == [0, 1, 2]
    _assert_same_weights(run, ref_run)


def test_resume_of_a_state_without_weights_or_hash_uses_last(interrupted, reference):
    """A state written by the previous format (no weights inside, no hash) still resumes, from last.json."""
    from safetensors.torch import load, save

    p = interrupted / "train_state.safetensors"
    tensors = {k: v for k, v in load(p.read_bytes()).items() if not k.startswith("model.")}
    p.write_bytes(save(tensors))
    meta = json.loads((interrupted / "train_state.json").read_text())
    for key in ("tensors", "tensors_sha256", "format", "version"):
        meta.pop(key)
    (interrupted / "train_state.json").write_text(json.dumps(meta))
    train(_recipe(), interrupted, resume=True, progress=False, data=DATA)
    assert _epochs(interrupted) == [0, 1, 2]
    _assert_same_weights(interrupted, reference[0])
