"""torchrun with two CPU processes (gloo): the DDP run equals one process with the doubled batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.toy_data import toy_data
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.distributed import World, shard
from train.trainer import train

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = '''
import sys
sys.path.insert(0, {root!r})
from tests.test_distributed import recipe
from tests.toy_data import toy_data
from train.trainer import train

from tests.toy_data import toy_data
train(recipe({batch}), {out!r}, progress=False, data=toy_data(256, 64))
'''


def recipe(batch: int) -> Recipe:
    return Recipe(name="ddp", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny"),
                  defense={"kind": "tv", "alpha": 1e-3},
                  optim=OptimConfig(epochs=2, batch_size=batch, lr=3e-3, seed=0, device="cpu", num_threads=1))


def test_shard_is_the_distributed_sampler_split():
    perm = torch.arange(10)
    parts = [shard(perm, World(r, 3, r)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # padded by wrap-around to 12
    assert sorted(torch.cat(parts).tolist()) == sorted(list(range(10)) + [0, 1])
    assert torch.equal(shard(perm, World()), perm)


def test_torchrun_two_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(root=str(ROOT), batch=16, out=str(out)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # only rank 0 wrote: one log line per epoch, statistics over both ranks' samples
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in lines] == [0, 1]
    ddp, meta = load_checkpoint(out / "last.json")

    # each step of two ranks x 16 samples is one step of 32 samples in one process (same permutation)
    train(recipe(32), tmp_path / "one", progress=False, data=toy_data(256, 64))
    one, _ = load_checkpoint(tmp_path / "one" / "last.json")
    for (k, a), b in zip(ddp.state_dict().items(), one.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), k
    single = [json.loads(s) for s in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert abs(lines[-1]["train_acc"] - single[-1]["train_acc"]) <= 2 / 256  # both ranks counted
