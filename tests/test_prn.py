"""PRN + DCT-SVM detector: the DCT, the SVM as tensor ops, the gate's select, training on a toy set."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import scipy.fft
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from train.defenses import DefendedModel, DefenseStack
from train.defenses.dct_svm import DCTFeatures, DCTSVMDetector, dct_matrix, fit_detector
from train.defenses.prn import Rectifier
from train.models import create_model


def test_dct_matrix_matches_scipy_and_opencv():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32))
    d = dct_matrix(32).double().numpy()
    ours = d @ x @ d.T
    np.testing.assert_allclose(ours, scipy.fft.dctn(x, type=2, norm="ortho"), atol=1e-6)
    np.testing.assert_allclose(ours, cv2.dct(x), atol=1e-6)


def test_features_are_log_abs_dct_of_the_gray_image():
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 32, 32)).astype(np.float32)
    gray = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    want = np.log(np.abs(scipy.fft.dctn(gray, axes=(1, 2), norm="ortho")) + 1e-4).reshape(2, -1)
    got = DCTFeatures(32)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-3)  # float32 DCT: log amplifies errors on tiny coefficients


def _two_class_features(n: int = 200, dim: int = 1024, seed: int = 0):
    rng = np.random.default_rng(seed)
    clean = rng.normal(0.0, 1.0, (n, dim))
    pert = rng.normal(0.0, 1.0, (n, dim)) + np.where(np.arange(dim) % 7 == 0, 0.6, 0.0)
    return np.r_[clean, pert], np.r_[np.zeros(n), np.ones(n)].astype(int)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_detector_score_equals_sklearn_decision_function(kernel):
    feats, labels = _two_class_features()
    svm, params = fit_detector(feats, labels, kernel)
    det = DCTSVMDetector(torch.nn.Identity(), 32)
    det.load_svm(params)
    z = torch.from_numpy(((feats - params["mean"]) / params["scale"]).astype(np.float32))
    with torch.no_grad():
        if kernel == "rbf":
            zz = (z * z).sum(1, keepdim=True) - 2 * z @ det.support.t() + (det.support ** 2).sum(1)
            score = torch.exp(-det.gamma * zz.clamp_min(0)) @ det.dual + det.bias
        else:
            score = z @ det.weight + det.bias
    want = svm.decision_function((feats - params["mean"]) / params["scale"])
    np.testing.assert_allclose(score.numpy(), want, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert det.kernel == kernel
    assert ((want > 0) == labels).mean() > 0.9  # the toy task is separable enough to mean something


def test_detector_buffers_resize_when_loading_an_rbf_checkpoint():
    feats, labels = _two_class_features(n=60)
    _, params = fit_detector(feats, labels, "rbf")
    det = DCTSVMDetector(torch.nn.Identity(), 32)
    det.load_svm(params)
    fresh = DCTSVMDetector(torch.nn.Identity(), 32)
    fresh.load_state_dict(st_load(st_save({k: v.contiguous() for k, v in det.state_dict().items()})))
    assert fresh.support.shape == det.support.shape and fresh.kernel == "rbf"
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(fresh.score(x), det.score(x))


def _gated(bias: float) -> DefendedModel:
    torch.manual_seed(0)
    clf = create_model("lisa_cnn_tiny", num_classes=4).eval()
    rect = Rectifier(width=4, blocks=1)
    with torch.no_grad():
        rect.out.bias.fill_(0.3)  # a rectifier that visibly changes the image
    det = DCTSVMDetector(rect, 32)
    det.bias.fill_(bias)  # weight is zero: the score is the bias for every image
    return DefendedModel(clf, rectifier=rect, detector=det).eval()


def test_a_gate_that_never_fires_is_the_bare_classifier_and_one_that_always_fires_rectifies():
    x = torch.rand(5, 3, 32, 32)
    never, always = _gated(-1.0), _gated(1.0)
    with torch.no_grad():
        assert torch.equal(never(x), never.classifier(x))
        assert torch.allclose(always(x), always.classifier(always.rectifier(x)))
        assert not torch.allclose(always(x), always.classifier(x))
        _, score, fired = never.front["gate"].select(x)
        assert not fired.any() and torch.all(score == -1.0)


def test_the_gate_selects_per_image():
    model = _gated(0.0)
    det = model.detector
    with torch.no_grad():
        det.weight[0] = 1.0  # score = the first standardised DCT feature (the DC term's log-magnitude)
        x = torch.cat([torch.full((2, 3, 32, 32), 0.1), torch.rand(2, 3, 32, 32)])  # R clips the bright pixels
        dc = det.features(x - model.rectifier(x))[:, 0]
        det.mean[0] = (dc[:2].mean() + dc[2:].mean()) / 2  # threshold between the two groups
        score = det(x)
        fire = score > 0
        assert fire.any() and not fire.all()
        want = torch.where(fire.view(-1, 1), model.classifier(model.rectifier(x)), model.classifier(x))
        assert torch.allclose(model(x), want)


def test_rectifier_starts_as_the_identity_and_keeps_the_range():
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(Rectifier()(x), x)
    r = Rectifier(width=4, blocks=1)
    with torch.no_grad():
        r.out.bias.fill_(5.0)
    assert float(r(x).max()) <= 1.0


def test_prn_recipe_builds_a_gate_in_front_of_a_frozen_classifier():
    stack = DefenseStack.from_config({"kind": "prn", "width": 4, "blocks": 1})
    model = stack.wrap(create_model("lisa_cnn_tiny", num_classes=4))
    assert list(model.parts()) == ["gate", "classifier"]
    stack.setup(model, torch.device("cpu"))
    trainable = {id(p) for p in stack.trainable(model)}
    assert trainable == {id(p) for p in model.rectifier.parameters()}
    assert not any(p.requires_grad for p in model.classifier.parameters())


def test_identity_term_weighs_only_the_unperturbed_rows_of_the_batch():
    """``identity_weight``: ||R(I) - I||^2 over the rows transform() left clean; the perturbed rows and the
    sticker rows do not count, and weight 0 adds nothing (the paper's Eq. 2 alone)."""
    from train.defenses.base import Step
    from train.defenses.prn import PRN, PRNConfig

    model = DefendedModel(create_model("lisa_cnn_tiny", num_classes=4), rectifier=Rectifier(4, 1),
                          detector=DCTSVMDetector(Rectifier(4, 1), 32))
    with torch.no_grad():
        model.rectifier.out.bias.fill_(0.1)  # R(I) = I + 0.1 wherever that stays in [0, 1]
    x = torch.full((8, 3, 32, 32), 0.5)
    step = Step(0, 0, 0, torch.Generator().manual_seed(0), torch.device("cpu"))
    for weight in (0.0, 2.0):
        prn = PRN(PRNConfig(width=4, blocks=1, identity_weight=weight, sticker_fraction=0.25))
        prn.perturbations = torch.full((1, 3, 32, 32), 0.2)
        prn.stickers = (torch.full((4, 3, 32, 32), 0.5), torch.full((4, 3, 32, 32), 0.9))
        xb, _ = prn.transform(model, x, torch.zeros(8, dtype=torch.long), step)
        term = prn.loss(model, xb, None, None, {})
        if weight == 0:
            assert term is None
            continue
        clean = prn.clean_rows
        assert len(clean) == len(xb) == 10 and not clean[8:].any() and 0 < int(clean.sum()) < 8
        assert torch.equal(xb[clean], torch.full_like(xb[clean], 0.5))
        assert float(term) == pytest.approx(2.0 * 3 * 32 * 32 * 0.1 ** 2, rel=1e-4)


@pytest.mark.slow  # ~40 s on 2 idle cores: bank, base and PRN training
def test_prn_training_restores_accuracy_under_held_out_universal_perturbations(tmp_path):
    """The whole recipe on a toy set: bank (sPGD + UAP of the frozen classifier), Eq. 2 training, SVM fit.
    Held-out perturbations (other seeds) fool the bare classifier; the gated pipeline recovers most images
    and the detector separates clean from perturbed."""
    from tests.toy_data import toy_data
    from train.attacks.bank import load_bank, split_perturbations
    from train.checkpoint import load_checkpoint
    from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
    from train.trainer import predict, train

    data = toy_data(480, 120)

    def recipe(defense, epochs, init=None, smoothing=0.0):
        return Recipe(name="toy", data=DataConfig(), model=ModelConfig(name="lisa_cnn_tiny", init=init),
                      defense=defense, optim=OptimConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=0,
                                                         label_smoothing=smoothing))

    # label smoothing bounds the toy classifier's logit margins: without it they reach ~200 nats and sPGD's
    # float32 gradients underflow to zero
    train(recipe({"kind": "none"}, 3, smoothing=0.2), tmp_path / "base", progress=False, data=data)
    prn = {"kind": "prn", "width": 8, "blocks": 1, "bank_xi": 0.4, "bank_train_uap": 0, "bank_train_spgd": 2,
           "bank_test_uap": 0, "bank_test_spgd": 2, "synthetic": 0, "detector_images": 240}
    metrics = train(recipe(prn, 3, init=str(tmp_path / "base")), tmp_path / "prn", progress=False, data=data)
    assert metrics["detector"] == "linear" and metrics["detector_train_acc"] > 0.9
    base, _ = load_checkpoint(tmp_path / "base")
    gated, meta = load_checkpoint(tmp_path / "prn")
    test = split_perturbations(load_bank(tmp_path / "prn" / "bank"), "test")
    assert len(test) == 2
    x, y = data.test.x, data.test.y
    xp = np.clip(x + test[np.arange(len(x)) % len(test)], 0, 1).astype(np.float32)
    acc = {name: float((predict(m, xp) == y).mean()) for name, m in (("base", base), ("gated", gated))}
    assert acc["base"] < 0.6 and acc["gated"] > acc["base"] + 0.3, acc
    assert float((predict(gated, x) == y).mean()) >= float((predict(base, x) == y).mean()) - 0.02
    with torch.no_grad():
        fired = gated.detector(torch.from_numpy(np.concatenate([x, xp]))) > 0
    assert fired[len(x):].float().mean() > 0.6 and fired[: len(x)].float().mean() < 0.2


def _fitted_gate(kernel: str) -> DefendedModel:
    """A small gated model whose detector is fitted to tell noisy images (perturbed) from smooth ones."""
    torch.manual_seed(0)
    clf = create_model("lisa_cnn_tiny", num_classes=4).eval()
    rect = Rectifier(width=4, blocks=1)
    with torch.no_grad():
        rect.out.weight.normal_(0, 0.05)  # a rectifier that removes something
    model = DefendedModel(clf, rectifier=rect, detector=DCTSVMDetector(rect, 32)).eval()
    clean, noisy = _smooth_and_noisy(60, seed=1)
    from train.defenses.prn import detector_features

    feats = detector_features(model, torch.cat([clean, noisy]))
    _, params = fit_detector(feats, np.r_[np.zeros(60), np.ones(60)].astype(int), kernel)
    model.detector.load_svm(params)
    return model


def _smooth_and_noisy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * torch.linspace(0.2, 0.8, 32).view(1, 1, 1, 32)
    clean = base.expand(n, 3, 32, 32).contiguous()
    noisy = (clean + 0.15 * torch.sign(torch.randn(n, 3, 32, 32, generator=g))).clamp(0, 1)
    return clean, noisy


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_fused_gate_graph_matches_pytorch_and_sklearn_in_fp32_and_int8(tmp_path, kernel):
    """One ONNX graph: rectifier, DCT as MatMuls, SVM as Gemm (+ Exp), select, classifier; its gate scores
    equal PyTorch's within 1e-4, decisions and classes agree; INT8 keeps the detector path in FP32."""
    import onnx

    from edge.bundle import load_bundle
    from edge.preprocess import PreprocessConfig
    from export.bundle import export_bundle, gate_nodes

    model = _fitted_gate(kernel)
    clean, noisy = _smooth_and_noisy(40, seed=2)
    x = torch.cat([clean, noisy]).numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = export_bundle(model, tmp_path / "b", ["a", "b", "c", "d"], PreprocessConfig(), x,
                            precisions=("fp32", "int8"), calib_x=x)
    # the kernel branch is a Python flag, not a traced tensor shape turned into a bool
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    bundle = load_bundle(out)
    assert bundle.gate["kernel"] == kernel and bundle.gate["score_output"] == "gate_score"
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"MatMul", "Log", "Abs", "Where"} <= ops and ("Exp" in ops) == (kernel == "rbf")
    with torch.no_grad():
        want_logits = model(torch.from_numpy(x)).numpy()
        _, want_score, want_fire = model.front["gate"].select(torch.from_numpy(x))
    assert 0.2 < want_fire.float().mean() < 0.8  # both branches are exercised
    got = bundle.backend.run_outputs(x, ["logits", "gate_score", "gate_fired"])
    assert np.abs(got["gate_score"] - want_score.numpy()).max() < 1e-4
    assert (got["gate_fired"] == want_fire.numpy()).mean() >= 0.995
    assert (got["logits"].argmax(1) == want_logits.argmax(1)).mean() >= 0.995
    int8 = load_bundle(out, precision="int8")
    q = onnx.load(str(out / "model.int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    excluded = set(gate_nodes(out / "model.onnx"))
    assert excluded and not any(n.op_type == "QuantizeLinear" and n.name.split("_QuantizeLinear")[0] in excluded
                                for n in q.graph.node)
    got8 = int8.backend.run_outputs(x, ["gate_fired"])
    assert (got8["gate_fired"] == want_fire.numpy()).mean() >= 0.95
    classifier = [e for e in bundle.manifest["models"] if e["part"] == "classifier"]
    assert {e["precision"] for e in classifier} == {"fp32", "int8"}  # the --no-gate graph rides along


@pytest.mark.parametrize("bias", [-1.0, 1.0])
def test_edge_runtime_reads_the_gate_and_no_gate_runs_the_bare_classifier(tmp_path, bias):
    """A gate that never fires (bias -1) and one that always fires (+1), through export and the edge runtime:
    decisions, logits, ``gate=False``, and the per-part bundle chained by the runtime."""
    from edge.bundle import load_bundle
    from edge.preprocess import PreprocessConfig
    from export.bundle import export_bundle

    model = _gated(bias)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        bare = model.classifier(x).numpy()
        rect = model.classifier(model.rectifier(x)).numpy()
    classes = ["a", "b", "c", "d"]
    one = export_bundle(model, tmp_path / "one", classes, PreprocessConfig(), x.numpy())
    logits, score, fired = load_bundle(one).classify_gated(x.numpy())
    assert fired.tolist() == [bias > 0] * 6 and np.allclose(score, bias, atol=1e-5)
    np.testing.assert_allclose(logits, rect if bias > 0 else bare, atol=1e-4)
    off = load_bundle(one, gate=False)
    assert off.gate is None and off.model["part"] == "classifier"
    off_logits, off_score, _ = off.classify_gated(x.numpy())
    assert off_score is None
    np.testing.assert_allclose(off_logits, bare, atol=1e-4)
    sep = export_bundle(model, tmp_path / "sep", classes, PreprocessConfig(), x.numpy(), graphs="separate")
    chained = load_bundle(sep)
    assert [type(r).__name__ for r in chained.backend.runners] == ["OrtBackend", "OrtBackend"]
    np.testing.assert_allclose(chained.classify(x.numpy()), logits, atol=1e-4)


def test_bench_and_verify_report_the_gate(tmp_path):
    from edge.preprocess import PreprocessConfig
    from export.bundle import export_bundle
    from train.eval.artifact import to_markdown as verify_markdown
    from train.eval.artifact import verify_bundle
    from train.eval.bench import bench_bundle, to_markdown

    model = _gated(1.0)
    x = torch.rand(8, 3, 32, 32).numpy()
    y = np.zeros(8, dtype=int)
    out = export_bundle(model, tmp_path / "b", ["a", "b", "c", "d"], PreprocessConfig(), x)
    res = bench_bundle(out, None, x, y, x, y, batch=4, repeats=3, progress=False)
    labels = [r["backend"] for r in res["rows"]]
    assert labels == ["onnxruntime-cpu gate-on", "onnxruntime-cpu gate-off"]
    assert res["rows"][0]["gate_fired_clean"] == 1.0 and "gate_fired_clean" not in res["rows"][1]
    assert "gate fires on clean" in to_markdown(res)
    report = verify_bundle(out, model, x, y, [])
    assert report.rows[1]["gate_fired"] == {"clean": 1.0} and "gate_fired" not in report.rows[0]
    assert "gate fires on" in verify_markdown(report)


def test_the_device_loop_logs_and_counts_gate_decisions(tmp_path):
    """`signguard run` on a gated bundle: every frame record carries the gate's score and decision, the summary
    counts detections, and --no-gate (gate=False) logs none."""
    from edge.bundle import load_bundle
    from edge.framelog import read_log
    from edge.loop import run_loop
    from edge.preprocess import PreprocessConfig
    from edge.rois import StaticRoi
    from export.bundle import export_bundle

    model = _gated(1.0)  # fires on everything
    x = torch.rand(4, 3, 32, 32).numpy()
    out = export_bundle(model, tmp_path / "b", ["a", "b", "c", "d"], PreprocessConfig(), x)
    rng = np.random.default_rng(0)
    frames = [(i, rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)) for i in range(5)]
    s = run_loop(load_bundle(out), frames, StaticRoi("30,10,30,30"), log_path=str(tmp_path / "on.jsonl"),
                 out_video=str(tmp_path / "on.mp4"))
    assert (s.gated, s.gate_fired) == (5, 5)
    records = [r for r in read_log(tmp_path / "on.jsonl") if "event" not in r]
    assert len(records) == 5 and all(r["gate"]["fired"] is True and r["gate"]["score"] > 0 for r in records)
    s_off = run_loop(load_bundle(out, gate=False), frames, StaticRoi("30,10,30,30"),
                     log_path=str(tmp_path / "off.jsonl"))
    assert (s_off.gated, s_off.gate_fired) == (0, 0)
    assert all(r["gate"] is None for r in read_log(tmp_path / "off.jsonl") if "event" not in r)


def test_bank_imports_made_perturbations_and_is_rebuilt_for_another_classifier(tmp_path):
    """``import_dir``: the train/ and test/ perturbations of another tool (FRU's) become the bank, named by
    split, method and seed; a wrong budget names the file; a bank made for one classifier is not reused for
    another (its weights' digest differs), and is reused for the same one until the import folder changes."""
    from edge.errors import SignguardError
    from train.attacks.bank import BankConfig, build_bank, split_perturbations
    from train.attacks.uap import save_perturbation
    from train.defenses.prn import stop_label

    xi = 32 / 255
    rng = np.random.default_rng(0)
    for split, method, seed in (("train", "uap", 1), ("train", "spgd", 2), ("test", "spgd", 101)):
        v = rng.uniform(-xi, xi, (3, 32, 32)).astype(np.float32)
        save_perturbation(tmp_path / "made" / split / f"{method}_s{seed}" / "uap.npy", v,
                          {"norm": "linf", "xi": xi, "fooling_ratio": 0.8, "model_hash": "x", "method": method,
                           "seed": seed})
    torch.manual_seed(0)
    clf = create_model("lisa_cnn_tiny", num_classes=4).eval()
    x = torch.rand(16, 3, 32, 32)
    cfg = BankConfig(xi=xi, sticker_targets=0, import_dir=str(tmp_path / "made"))
    bank = build_bank(clf, x, x, tmp_path / "bank", cfg)
    assert list(bank["names"]) == ["train:spgd:2", "train:uap:1", "test:spgd:101"]
    assert len(split_perturbations(bank, "train")) == 2 and len(split_perturbations(bank, "test", "spgd")) == 1
    stamp = (tmp_path / "bank" / "bank.npz").stat().st_mtime_ns
    build_bank(clf, x, x, tmp_path / "bank", cfg)
    assert (tmp_path / "bank" / "bank.npz").stat().st_mtime_ns == stamp  # same classifier: reused
    save_perturbation(tmp_path / "made" / "train" / "spgd_s3" / "uap.npy", np.zeros((3, 32, 32), np.float32),
                      {"norm": "linf", "xi": xi, "fooling_ratio": 0.8, "model_hash": "x", "method": "spgd", "seed": 3})
    bank = build_bank(clf, x, x, tmp_path / "bank", cfg)  # the import folder gained a file: rebuilt with it
    assert "train:spgd:3" in list(bank["names"]) and len(split_perturbations(bank, "train")) == 3
    stamp = (tmp_path / "bank" / "bank.npz").stat().st_mtime_ns
    with torch.no_grad():
        next(clf.parameters()).add_(1.0)
    build_bank(clf, x, x, tmp_path / "bank", cfg)
    assert (tmp_path / "bank" / "bank.npz").stat().st_mtime_ns != stamp  # another classifier: rebuilt
    with pytest.raises(SignguardError, match="xi"):
        build_bank(clf, x, x, tmp_path / "bank", BankConfig(xi=16 / 255, sticker_targets=0,
                                                            import_dir=str(tmp_path / "made")))
    assert stop_label(["priority road", "yield", "stop"]) == 2 and stop_label(["Stop"]) == 0
    assert stop_label(["yield"]) is None
