"""`signguard run` as the registry will call it, and proof that the edge runtime needs no torch."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from edge import cli
from edge.errors import SignguardError

from .helpers import colour_frame

REPO = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="signguard run")
    cli.add_arguments(p)
    return p


def test_help_is_assembled_from_component_usage() -> None:
    text = _parser().format_help()
    for piece in ("csi://0", "display://0", "center:0.6", "--bundle", "--max-frames"):
        assert piece in text


def test_run_on_an_image_folder(colour_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, colour in enumerate(("red", "blue", "green")):
        cv2.imwrite(str(folder / ("%03d.png" % i)), colour_frame(colour, (24, 8, 48, 48)))
    log = tmp_path / "f.jsonl"
    args = _parser().parse_args(["--bundle", str(colour_bundle), "--source", str(folder), "--roi", "center:0.6",
                                 "--log", str(log), "--quiet"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "frames    3 (3 classified)" in out and "accuracy" not in out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["pred"] for r in records if "event" not in r] == ["red", "blue", "green"]

    args = _parser().parse_args(["--bundle", str(colour_bundle), "--source", str(folder), "--json",
                                 "--max-frames", "2"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["frames"] == 2


def test_run_rejects_bad_arguments(colour_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--bundle", "b", "--source", "s", "--backend", "openvino"])
    args = _parser().parse_args(["--bundle", str(colour_bundle), "--source", str(tmp_path / "no.mp4")])
    with pytest.raises(SignguardError, match="no.mp4: no such file"):
        cli.run(args)
    args = _parser().parse_args(["--bundle", str(colour_bundle), "--source", "x", "--topk", "0"])
    with pytest.raises(SignguardError, match="--topk"):
        cli.run(args)


TORCH_FREE = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
import edge, edge.backends, edge.bundle, edge.cli, edge.framelog, edge.loop, edge.rois, edge.sources
from edge import load_bundle, preprocess
b = load_bundle(sys.argv[1])
frame = np.zeros((48, 64, 3), np.uint8)
frame[8:40, 16:48] = (255, 0, 0)  # a blue square, BGR
x = preprocess(frame, (16, 8, 32, 32), b.preprocess_cfg)[None]
assert b.classes[int(np.argmax(b.classify(x)[0]))] == "blue"
assert "torch" not in sys.modules or sys.modules["torch"] is None, "torch was imported"
print("ok-torch-free")
"""


def test_edge_imports_and_classifies_without_torch(colour_bundle: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(colour_bundle)], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok-torch-free" in proc.stdout


def test_training_subcommand_on_an_edge_only_install_names_the_extra() -> None:
    """The device's install has no torch: `signguard train` is one line naming the extra, exit 2."""
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here; this runs in the torch-free venvs of .ci/edge_pythons.sh")
    r = subprocess.run([sys.executable, "-m", "signguard", "train", "--config", "configs/baseline.yaml"],
                       capture_output=True, text=True, timeout=120, cwd=str(REPO),
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "needs the train extra (missing: torch" in lines[0] and "pip install 'signguard[train]'" in lines[0]


def test_debug_is_accepted_after_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`signguard run ... --debug` means `signguard --debug run ...`: the traceback instead of a usage error."""
    import logging

    from signguard.cli import main

    args = ["--bundle", str(tmp_path / "nope"), "--source", str(tmp_path / "v.mp4")]
    assert main(["run", *args]) == 1
    assert "does not exist" in capsys.readouterr().err
    root = logging.getLogger()
    level = root.level
    try:
        for argv in (["run", *args, "--debug"], ["--debug", "run", *args]):
            with pytest.raises(SignguardError, match="does not exist"):
                main(argv)
            assert root.level == logging.DEBUG
            root.setLevel(level)
    finally:
        root.setLevel(level)
