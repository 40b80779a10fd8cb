"""The CLI turns bad input into one line naming the file/field, exit code 1; no tracebacks."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.preprocess import PreprocessConfig
from export.bundle import export_bundle
from signguard.cli import COMMANDS, main
from train.models import create_model


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_bad_config_field_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\ndata: {}\nmodel: {}\noptim: {epochs: 2, learning_rate: 0.1}\n")
    assert main(["train", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(cfg) in err and "learning_rate" in err


def test_ill_typed_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\ndata: {}\nmodel: {}\noptim: {}\ndefense: {kind: tv, alpha: lots}\n")
    assert main(["train", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "defense.alpha" in err


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("b")
    x = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    return export_bundle(create_model("lisa_cnn_tiny", num_classes=3), out, ["a", "b", "c"], PreprocessConfig(), x)


def test_missing_and_corrupt_video_are_one_line(bundle, tmp_path, capsys):
    missing = tmp_path / "nope.mp4"
    assert main(["run", "--bundle", str(bundle), "--source", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.mp4" in err
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["run", "--bundle", str(bundle), "--source", str(corrupt)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt.mp4" in err


def test_wrong_hash_bundle_is_one_line(bundle, tmp_path, capsys):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes() + b"\0")
    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2

    cv2.imwrite(str(frames / "0.png"), np.zeros((40, 40, 3), np.uint8))
    assert main(["run", "--bundle", str(b), "--source", str(frames)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.onnx" in err and "SHA-256" in err


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "signguard", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "demo" in r.stdout


def test_missing_extra_is_one_line_and_exit_2(tmp_path):
    """As on an [edge]-only install: torch absent -> the install hint, exit 2, no traceback."""
    code = ("import sys; sys.modules['torch'] = None; from signguard.cli import main; "
            "sys.exit(main(['train', '--config', 'configs/baseline.yaml']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "needs the train extra (missing: torch)" in lines[0] and "pip install 'signguard[train]'" in lines[0]


def test_attack_options_come_from_the_attack_class(tmp_path, capsys):
    """`signguard attack` builds its hyper-parameter options from the attack's signature: --help quotes the
    class default, and an option of the other universal method is one line naming the class."""
    import inspect

    from train.attacks.pgd import PGD

    with pytest.raises(SystemExit):
        main(["attack", "pgd", "--help"])
    assert f"(default: {inspect.signature(PGD.__init__).parameters['alpha'].default:.4g})" in capsys.readouterr().out
    assert main(["attack", "uap", str(tmp_path / "run"), "--out", str(tmp_path / "u"), "--steps", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "['steps'] not parameters of UAP" in err
