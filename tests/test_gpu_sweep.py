"""bench/gpu_sweep.py: the jobs file, the deadline, and packing run folders into size-capped tar files."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest

from bench.gpu_sweep import pack, read_jobs, run_all


def test_jobs_file_needs_a_run_dir_on_every_line(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# a comment\ntrain --config a.yaml --run-dir runs/a  # trailing\n\n", encoding="utf-8")
    [(argv, run_dir)] = read_jobs(jobs)
    assert argv == ["train", "--config", "a.yaml", "--run-dir", "runs/a"] and run_dir == Path("runs/a")
    jobs.write_text("train --config a.yaml\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"jobs.txt:1: expected --run-dir"):
        read_jobs(jobs)


def _run(folder, sizes):
    folder.mkdir(parents=True)
    for name, n in sizes.items():
        (folder / name).write_bytes(b"x" * n)
    return folder


def test_pack_keeps_each_run_whole_skips_resume_state_and_caps_tar_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [_run(tmp_path / "runs" / f"r{i}", {"model.safetensors": 4000, "model.json": 100,
                                                "train_state.safetensors": 50_000, "last.safetensors": 4000})
            for i in range(3)]
    (tmp_path / "runs" / "r0.log").write_text("log\n", encoding="utf-8")
    names = pack([r.relative_to(tmp_path) for r in runs], tmp_path / "out", max_bytes=10_000)
    assert names == ["sweep_0.tar", "sweep_1.tar", "sweep_2.tar"]  # ~5 kB per run: one run per 10 kB tar
    members = {}
    for n in names:
        with tarfile.open(tmp_path / "out" / n) as tar:
            members[n] = sorted(tar.getnames())
    assert members["sweep_0.tar"] == ["runs/r0.log", "runs/r0/model.json", "runs/r0/model.safetensors"]
    assert all(not m.rsplit("/", 1)[-1].startswith(("train_state.", "last.")) for ms in members.values() for m in ms)
    assert len(pack([r.relative_to(tmp_path) for r in runs], tmp_path / "out2", max_bytes=20_000)) == 2
    with pytest.raises(SystemExit, match="more than --max-bytes 1000 on its own"):
        pack([runs[0].relative_to(tmp_path)], tmp_path / "out3", max_bytes=1000)


def test_a_job_that_ends_is_recorded_with_its_exit_code_and_log(tmp_path):
    quick = (["train", "--config", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "quick")],
             tmp_path / "quick")
    [s] = run_all([quick], deadline_s=600, threads=1)  # returns when the job ends, not at the deadline
    assert s["finished"] and s["returncode"] != 0 and s["last_record"] is None
    assert "missing.yaml" in (tmp_path / "quick.log").read_text(encoding="utf-8")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_the_deadline_stops_an_unfinished_job(tmp_path):
    # a real training job far longer than the deadline: 500 epochs of Deep Defense (~10 s each here)
    slow = (["train", "--config", "configs/deep_defense.yaml", "--set", "optim.epochs=500", "--set",
             "model.init=null", "--set", "data.train_per_class=50", "--run-dir", str(tmp_path / "slow")],
            tmp_path / "slow")
    [s] = run_all([slow], deadline_s=10, threads=1)
    assert not s["finished"] and s["returncode"] != 0
