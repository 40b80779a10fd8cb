"""signguard verify / bench: every precision of a real bundle is scored; a broken INT8 calibration fails verify."""

import json

import numpy as np
import pytest
import torch

from calib.dataset import save_calibration_set
from edge.backends import OrtBackend
from edge.preprocess import PreprocessConfig
from export.bundle import export_bundle
from signguard.cli import main
from train.checkpoint import load_checkpoint
from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
from train.data.datasets import load_data
from train.eval.artifact import Margins, pgd_transfer, verify_bundle
from train.eval.bench import bench_bundle
from train.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LISA-CNN-tiny trained briefly on a small rendered split (real renderer, real trainer)."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run")
    r = Recipe(name="tiny", data=DataConfig(train_per_class=30, test_per_class=12), model=ModelConfig("lisa_cnn_tiny"),
               optim=OptimConfig(epochs=4, batch_size=32, lr=3e-3))
    train(r, run, progress=False)
    model, meta = load_checkpoint(run)
    data = load_data(DataConfig(**meta["recipe"]["data"]), PreprocessConfig(**meta["preprocess"]), progress=False)
    return run, model, meta, data


def _bundle(tmp_path, trained, calib_x, name):
    run, model, meta, data = trained
    return export_bundle(model, tmp_path / name, meta["classes"], PreprocessConfig(**meta["preprocess"]),
                         data.test.x[:64], source={"checkpoint": str(run / "model.json")},
                         precisions=["fp16", "int8"], calib_x=calib_x)


def test_verify_passes_a_calibrated_int8_and_fails_one_calibrated_on_blank_images(tmp_path, trained):
    _, model, _, data = trained
    x, y = data.test.x, data.test.y
    attacks = [pgd_transfer(model, x[:64], y[:64])]
    # no parameter given: PGD's own defaults, and the budget says which
    assert attacks[0].name == "pgd_8" and attacks[0].budget == f"L-inf eps 8.0/255, 10 steps of {2 / 255:.4g}, ce loss"
    good = verify_bundle(_bundle(tmp_path, trained, data.train.x, "good"), model, x, y, attacks)
    rows = {(r["backend"], r["precision"]): r for r in good.rows}
    assert set(rows) == {("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                         ("onnxruntime", "int8")}
    assert rows["onnxruntime", "fp32"]["accuracy"] == rows["pytorch", "fp32"]["accuracy"] > 0.5
    assert good.passed, good.failures
    blank = np.zeros((8, 3, 32, 32), np.float32)
    bad = verify_bundle(_bundle(tmp_path, trained, blank, "bad"), model, x, y, attacks)
    assert not bad.passed
    assert any(f.startswith("int8: clean accuracy") for f in bad.failures)
    assert not any(f.startswith("fp16") for f in bad.failures)  # only the broken precision is blamed
    # the same verdict with looser margins passes: the margins are what decide
    assert verify_bundle(tmp_path / "bad", model, x, y, attacks, Margins(100.0, 100.0)).passed


def test_verify_cli_exit_code_and_report(tmp_path, trained, capsys):
    run = trained[0]
    save_calibration_set(tmp_path / "blank.npz", np.zeros((8, 3, 32, 32), np.float32))
    b = tmp_path / "b"
    assert main(["export", "--checkpoint", str(run), "--out", str(b), "--precision", "int8",
                 "--calib", str(tmp_path / "blank.npz"), "--sensitivity", "60", "--quiet"]) == 0
    table = (b / "sensitivity.md").read_text()
    assert [ln.split("`")[1] for ln in table.splitlines() if ln.startswith("| `")] and table.count("| `") == 4
    assert main(["verify", "--bundle", str(b), "--attack-n", "32", "--out", str(tmp_path / "rep")]) == 1
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert not rep["passed"] and rep["n_images"] == 216
    assert "verdict: FAILED" in capsys.readouterr().out


def test_bench_measures_every_precision(tmp_path, trained):
    _, model, _, data = trained
    # INT8 calibrated on blank images: its accuracy differs from FP32's, so a row that ran the wrong graph shows
    b = _bundle(tmp_path, trained, np.zeros((8, 3, 32, 32), np.float32), "bench")
    res = bench_bundle(b, model, data.test.x, data.test.y, None, None, batch=8, repeats=3, progress=False)
    assert [(r["backend"], r["precision"]) for r in res["rows"]] == [
        ("eager", "fp32"), ("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"), ("onnxruntime-cpu", "int8")]
    for r in res["rows"]:
        assert r["status"] == "ok" and 0 < r["batch1"]["p50_ms"] <= r["batch1"]["p99_ms"]
        assert r["batch8"]["throughput"] > 0
    acc = {r["precision"]: r["accuracy"] for r in res["rows"] if r["format"] == "onnx"}
    for prec, file in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
        assert acc[prec] == np.mean(OrtBackend(b / file).run(data.test.x).argmax(1) == data.test.y)
    assert acc["int8"] != acc["fp32"]
    sizes = {r["precision"]: r["size_mb"] for r in res["rows"] if r["format"] == "onnx"}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]  # weights at 1, 2 and 4 bytes


def test_bundle_classifier_scores_the_deployed_graph_through_the_pytorch_evaluation_code(tmp_path, trained):
    """bench/sticker_robustness.py scores stickers on the INT8 graph with the same predict/evaluate_stickers code
    it uses for PyTorch; the adapter must return that graph's outputs, not the PyTorch model's."""
    from train.eval.artifact import BundleClassifier
    from train.trainer import predict

    _, model, _, data = trained
    x = data.test.x[:48]
    good = BundleClassifier(_bundle(tmp_path, trained, data.train.x, "good"), "int8")
    raw = good.bundle.classify(x)
    assert np.array_equal(good(torch.from_numpy(x)).numpy(), raw)
    assert np.mean(predict(good, x) == predict(model, x)) >= 0.9  # a calibrated INT8 graph agrees
    blank = BundleClassifier(_bundle(tmp_path, trained, np.zeros((8, 3, 32, 32), np.float32), "bad"), "int8")
    assert not np.array_equal(blank(torch.from_numpy(x)).numpy(), raw)  # a different graph, other outputs
