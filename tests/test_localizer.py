"""The sign localizer, torch side: scenes + COCO, targets <-> decode, metrics by hand, a tiny training that
learns, the classical baseline, and the export to a detector bundle that the edge runtime loads."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.bundle import load_bundle
from edge.errors import BundleError, ConfigError, SignguardError
from edge.localizer import DecodeConfig, Localizer, decode
from train.data.detection import load_coco
from train.data.scenes import SceneConfig, render_scene, write_scenes
from train.localizer.classical import classical_proposals
from train.localizer.data import InputSet, batches, crop_boxes
from train.localizer.loss import localizer_loss, make_targets
from train.localizer.metrics import average_precision, evaluate, match_image
from train.localizer.model import build_localizer

CLEAN = dict(p_empty=0.0, distractors=(0, 0), p_post=0.0, p_occlusion=0.0, p_shadow=0.0, p_specular=0.0,
             p_night=0.0, p_glare=0.0, p_motion_blur=0.0, p_defocus=0.0, max_noise=0.0, p_jpeg=0.0)


def test_scenes_are_deterministic_and_boxes_fit_the_frame() -> None:
    a, b = render_scene(3, 5), render_scene(3, 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, render_scene(3, 6).image)
    for i in range(6):
        s = render_scene(0, i)
        assert s.image.shape == (360, 640, 3) and len(s.boxes) <= 4 and len(s.labels) == len(s.boxes)
        assert (s.boxes[:, :2] >= 0).all() and (s.boxes[:, 0] + s.boxes[:, 2] <= 640).all()
        assert (s.boxes[:, 1] + s.boxes[:, 3] <= 360).all() and (s.boxes[:, 2] >= 4).all()


def test_scene_box_is_the_sign() -> None:
    """A clean scene with one sign: the box is tight around pixels that changed when the sign was drawn."""
    cfg = SceneConfig(max_signs=1, **CLEAN)
    s = render_scene(7, 0, cfg)
    assert len(s.boxes) == 1
    x, y, w, h = s.boxes[0].astype(int)
    empty = render_scene(7, 0, SceneConfig(max_signs=0, **CLEAN)).image  # same background draws
    diff = np.abs(s.image.astype(int) - empty.astype(int)).sum(2) > 30
    ys, xs = np.nonzero(diff)
    assert abs(xs.min() - x) <= 2 and abs(xs.max() + 1 - (x + w)) <= 2
    assert abs(ys.min() - y) <= 2 and abs(ys.max() + 1 - (y + h)) <= 2


def test_scene_config_rejects_bad_fields() -> None:
    with pytest.raises(ConfigError, match="sign_px"):
        SceneConfig(sign_px=(300.0, 10.0))
    with pytest.raises(ConfigError, match="scenes: unknown field"):
        SceneConfig.from_dict({"n_signs": 3})


def test_write_scenes_round_trips_through_coco(tmp_path: Path) -> None:
    path = write_scenes(tmp_path, 3, seed=4, image_format="png")
    coco = json.loads(path.read_text())
    assert coco["categories"] == [{"id": 1, "name": "sign", "supercategory": "traffic_sign"}]
    ds = load_coco(path)
    for i in range(3):
        s = render_scene(4, i)
        assert np.array_equal(ds.image(i), s.image)  # png: lossless
        assert np.allclose(ds.boxes[i], s.boxes, atol=0.01) and list(ds.labels[i]) == list(s.labels)
    coco["annotations"][0]["bbox"] = [1, 2, -3, 4]
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(SignguardError, match=r"annotations\[0\]\.bbox"):
        load_coco(tmp_path / "bad.json")


def test_targets_decode_back_to_the_boxes() -> None:
    """The training targets and the device's decoder agree: a perfect output map decodes to the true boxes."""
    boxes = np.array([[30.0, 40.0, 22.0, 26.0], [150.0, 60.0, 70.0, 64.0], [100.0, 180.0, 9.0, 11.0]])
    heat, reg, weight = make_targets(boxes, 32, 8)
    assert heat.max() == 1.0 and (heat == 1.0).sum() == 3
    out = np.concatenate([heat, reg])
    got, scores = decode(out, DecodeConfig(score_threshold=0.9), 256, (256, 256))
    order = np.argsort(got[:, 0])
    assert np.allclose(got[order], boxes[np.argsort(boxes[:, 0])], atol=1e-4) and (scores == 1.0).all()
    # frame pixels: a 640x360 frame squashed to 256 scales x and y separately
    got, _ = decode(out, DecodeConfig(score_threshold=0.9), 256, (640, 360))
    assert np.allclose(sorted(got[:, 2]), sorted(boxes[:, 2] * 2.5), atol=1e-4)
    assert weight[0][heat[0] == 1.0].min() == 1.0


def test_crop_boxes_clips_and_drops_mostly_hidden_signs() -> None:
    b = np.array([[10.0, 10.0, 20.0, 20.0], [90.0, 10.0, 20.0, 20.0], [-15.0, 50.0, 20.0, 20.0]])
    out = crop_boxes(b, 0, 0, 100)
    assert out.tolist() == [[10.0, 10.0, 20.0, 20.0], [90.0, 10.0, 10.0, 20.0]] or len(out) == 1
    assert crop_boxes(b, 0, 0, 100, min_visible=0.5).tolist() == [[10.0, 10.0, 20.0, 20.0], [90.0, 10.0, 10.0, 20.0]]


def test_metrics_by_hand() -> None:
    gt = np.array([[0, 0, 30, 30], [100, 100, 60, 60]], float)
    dets = (np.array([[1, 1, 30, 30], [200, 200, 20, 20], [100, 100, 58, 60]], float), np.array([0.9, 0.8, 0.7]))
    tp, ign, taken = match_image(dets[0], dets[1], gt, np.zeros(2, bool))
    assert tp.tolist() == [True, False, True] and taken.all()
    # ranked TP, FP, TP against 2 boxes: precision envelope 1 up to recall 0.5, then 2/3
    ap = average_precision(dets[1], tp, 2)
    assert ap == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    r = evaluate([dets], [gt], threshold=0.75)
    assert r["fp_per_frame"] == 1.0 and r["bins"]["all"]["recall"] == 0.5
    assert r["bins"]["48-96"]["n_gt"] == 1 and r["bins"]["48-96"]["recall"] == 0.0  # 0.7 < threshold
    # the 20 px false positive lies outside the 48-96 bin: ignored there, so AP there is 1
    assert r["bins"]["48-96"]["ap50"] == pytest.approx(1.0)
    assert np.isnan(evaluate([dets], [np.zeros((0, 4))], 0.5)["bins"]["all"]["ap50"])


def _square_frames(n: int, seed: int, size: int = 64):
    """Noise frames with one bright square each (the simplest thing a detector must find)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 90, (n, 3, size, size)).astype(np.uint8)
    boxes = []
    for i in range(n):
        w = int(rng.integers(10, 20))
        x0, y0 = (int(v) for v in rng.integers(0, size - w, 2))
        x[i, :, y0:y0 + w, x0:x0 + w] = [[[230]], [[40]], [[40]]]
        boxes.append(np.array([[x0, y0, w, w]], float))
    return InputSet(x, boxes, boxes, [(size, size)] * n)


def test_tiny_localizer_learns_to_find_squares() -> None:
    torch.manual_seed(0)
    model = build_localizer(widths=[8, 8, 16], dilations=[1, 2])
    train, test = _square_frames(64, 0), _square_frames(24, 1)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for epoch in range(12):
        for x, heat, reg, weight in batches(train, 16, 8, np.random.default_rng(epoch)):
            loss, _ = localizer_loss(model.heads(x), heat, reg, weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        maps = model.eval()(torch.from_numpy(test.x.astype(np.float32) / 255)).numpy()
    dets = [decode(m, DecodeConfig(score_threshold=0.05), 64, (64, 64)) for m in maps]
    r = evaluate(dets, test.boxes, 0.3)
    assert r["bins"]["all"]["ap50"] > 0.7, r["bins"]["all"]
    assert r["bins"]["all"]["recall"] > 0.7 and r["fp_per_frame"] < 0.5


def test_classical_proposals_find_a_clean_stop_sign() -> None:
    frame = np.full((360, 640, 3), (200, 160, 120), np.uint8)  # sky
    pts = (np.array([[np.cos(a), np.sin(a)] for a in np.deg2rad(22.5 + 45 * np.arange(8))]) * 40 + (300, 150))
    cv2.fillPoly(frame, [pts.astype(np.int32)], (38, 28, 190))
    boxes, scores = classical_proposals(frame)
    assert len(boxes) >= 1
    from edge.localizer import box_iou

    assert box_iou(boxes, np.array([[260, 110, 80, 80]])).max() > 0.8


def test_export_bundle_runs_on_the_edge_and_matches_pytorch(tmp_path: Path) -> None:
    from export.localizer import export_localizer

    torch.manual_seed(0)
    model = build_localizer(widths=[8, 8, 16], dilations=[1, 2]).eval()
    with torch.no_grad():  # scores that vary across cells (no near-ties), so that boxes exist at the threshold
        model.out.bias[0] = 0.0
        model.out.weight[0] *= 50.0
    frames = [render_scene(9, i) for i in range(6)]
    from train.localizer.data import frame_input

    x = np.stack([frame_input(f.image, 64) for f in frames])
    cfg = DecodeConfig(score_threshold=0.5, max_detections=64)
    out = export_localizer(model, tmp_path / "loc", 64, cfg, x, ["fp32", "int8"], calib_x=np.concatenate([x] * 4),
                           calib_method="minmax")
    m = json.loads((out / "manifest.json").read_text())
    assert m["output"]["semantics"] == "centernet" and {e["part"] for e in m["models"]} == {"detector"}
    fp32 = next(e for e in m["models"] if e["precision"] == "fp32")
    assert fp32["parity"]["max_abs_diff"] < 1e-4 and fp32["parity"]["box_recall"] == 1.0
    loc = Localizer(out)
    with torch.no_grad():
        ref = model(torch.from_numpy(x[:1])).numpy()[0]
    want, _ = decode(ref, cfg, 64, (640, 360))
    got = loc.detect(frames[0].image)
    assert np.allclose(np.array([d.box for d in got]).reshape(-1, 4), want, atol=1e-2)
    assert Localizer(out, precision="int8").precision == "int8"
    # the INT8 graph as onnxruntime runs it (fused int8 kernels) agrees with the plain Q/DQ arithmetic, and the
    # weights are 7-bit (full-range weights saturated the AVX2 kernels on the trained localizer, see calib)
    import onnxruntime as ort

    def run_int8(level):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(str(out / "localizer.int8.onnx"), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {"images": x})[0]

    levels = ort.GraphOptimizationLevel
    fused, plain = run_int8(levels.ORT_ENABLE_ALL), run_int8(levels.ORT_DISABLE_ALL)
    assert np.abs(fused - plain).max() < 0.05 * np.abs(plain).max()
    int8 = next(e for e in m["models"] if e["precision"] == "int8")
    assert int8["quantization"]["reduce_range"] is True
    # the output head (last conv, slices, sigmoid, concat) stays float: no Q/DQ pair touches its outputs,
    # so the heat reaches the threshold in float steps, not in the int8 steps of a scale shared with the boxes
    import onnx

    g = onnx.load(str(out / "localizer.int8.onnx")).graph
    head = [n for n in g.node if n.name in ("/out/Conv", "/Slice", "/Slice_1", "/Sigmoid", "/Concat")]
    assert len(head) == 5 and sorted(int8["quantization"]["excluded_nodes"]) == sorted(n.name for n in head)
    outs = {t for n in head for t in n.output}
    assert not [n.name for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and (set(n.input) | set(n.output)) & outs]
    with pytest.raises(BundleError, match="output 'detections' has shape"):
        load_bundle(out)  # a detector bundle is not a classifier
    from edge.trt_plan import plan_engine  # pure planning, no TensorRT: the engine builder takes the detector

    plan = plan_engine(m, out, "int8", "10.3.0", "Orin sm87")
    assert plan.entry["part"] == "detector" and "localizer.int8.onnx" in plan.entry["trtexec"]
    (out / "localizer.onnx").write_bytes((out / "localizer.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError, match="localizer.onnx"):
        Localizer(out)


def test_lisa_frames_group_every_box_of_a_file(tmp_path: Path) -> None:
    """LISA's allAnnotations.csv (one row per sign) -> one entry per frame with all its boxes of known classes."""
    from train.data.detection import load_lisa_frames

    root = tmp_path / "lisa"
    (root / "clips").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(root / "clips" / name), np.zeros((48, 64, 3), np.uint8))
    head = ("Filename;Annotation tag;Upper left corner X;Upper left corner Y;Lower right corner X;"
            "Lower right corner Y;Occluded,On another road;Origin file;Origin frame number;Origin track;"
            "Origin track frame number")
    rows = ["clips/a.png;stop;10;8;30;28;0,0;o;1;t1;0", "clips/a.png;yield;40;10;60;30;0,0;o;1;t2;0",
            "clips/b.png;noRightTurn;1;1;9;9;0,0;o;2;t3;0", "clips/b.png;stop;5;6;15;16;0,0;o;2;t1;1"]
    (root / "allAnnotations.csv").write_text("\n".join([head] + rows) + "\n")
    ds = load_lisa_frames(root)
    assert [p.name for p in ds.paths] == ["a.png", "b.png"] and ds.n_boxes == 3
    assert ds.boxes[0].tolist() == [[10, 8, 20, 20], [40, 10, 20, 20]] and ds.boxes[1].tolist() == [[5, 6, 10, 10]]
    assert ds.labels[0].tolist() == [13, 16] and ds.image(1).shape == (48, 64, 3)


def test_cli_renders_scenes_and_evaluates_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from export.localizer import export_localizer
    from signguard.cli import main
    from train.localizer.data import frame_input

    assert main(["localizer", "scenes", "--out", str(tmp_path / "s"), "--n", "3", "--seed", "5",
                 "--set", "p_empty=1.0"]) == 0
    ds = load_coco(tmp_path / "s" / "annotations.json")
    assert len(ds) == 3 and ds.n_boxes == 0
    model = build_localizer(widths=[8, 8, 16], dilations=[1, 2]).eval()
    x = np.stack([frame_input(ds.image(i), 64) for i in range(3)])
    export_localizer(model, tmp_path / "b", 64, DecodeConfig(score_threshold=0.99), x)
    assert main(["localizer", "eval", "--bundle", str(tmp_path / "b"), "--data",
                 str(tmp_path / "s" / "annotations.json")]) == 0
    out = capsys.readouterr().out
    assert "3 frames, 0 signs" in out and "FP/frame 0.000" in out  # an untrained net scores 0.05 < 0.99
    assert main(["localizer", "scenes", "--out", str(tmp_path / "t"), "--set", "sign_px=[300, 10]"]) == 1
    assert "sign_px" in capsys.readouterr().err


@pytest.mark.slow
def test_recipe_trains_exports_and_evaluates_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """configs/localizer.yaml at toy size: render, train 2 epochs, pick the threshold, export FP32 + INT8
    through the CLI (calibrated on training frames), evaluate the INT8 bundle."""
    from signguard.cli import main

    cfg = Path(__file__).resolve().parents[1] / "configs" / "localizer.yaml"
    args = ["localizer", "train", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), "--quiet",
            "--set", "data.train=24", "--set", "data.val=8", "--set", "data.cache=%s" % (tmp_path / "data"),
            "--set", "optim.epochs=2", "--set", "optim.batch_size=8", "--set", "model.input_size=128",
            "--set", "optim.crop=96", "--set", "optim.warmup_steps=2"]
    assert main(args) == 0
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["kind"] == "localizer" and 0.1 <= meta["decode"]["score_threshold"] <= 0.95
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2
    assert main(["localizer", "export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "b"),
                 "--precision", "int8", "--calib-n", "16", "--parity-samples", "8"]) == 0
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [e["precision"] for e in m["models"]] == ["fp32", "int8"]
    assert m["extra"]["calibration"]["n_images"] == 16 and m["extra"]["localizer"]["decode"] == meta["decode"]
    # fine-tune from that run on the scenes plus every 30th frame of one rendered drive-by (3 frames)
    assert main(args[:4] + ["--run-dir", str(tmp_path / "ft")] + args[6:] + [
        "--set", "model.init=%s" % (tmp_path / "run"), "--set", "data.driveby=1", "--set", "data.driveby_every=30",
        "--set", "optim.epochs=1"]) == 0
    ft = json.loads((tmp_path / "ft" / "model.json").read_text())
    assert ft["metrics"]["train_frames"] == 27 and ft["recipe"]["model"]["init"] == str(tmp_path / "run")
    val = next(p for p in (tmp_path / "data").iterdir() if p.name.startswith("val_"))
    assert main(["localizer", "eval", "--bundle", str(tmp_path / "b"), "--precision", "int8", "--data",
                 str(val / "annotations.json")]) == 0
    assert "8 frames" in capsys.readouterr().out


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after its first epoch and resumed ends with the weights of an uninterrupted run; a folder
    that holds a run is refused without --resume / --overwrite; a finished run resumes to its metrics."""
    from train.localizer import train as lt
    from train.localizer.config import load_localizer_recipe

    cfg = Path(__file__).resolve().parents[1] / "configs" / "localizer.yaml"
    small = {"data.train": 12, "data.val": 4, "data.cache": str(tmp_path / "data"), "optim.epochs": 2,
             "optim.batch_size": 4, "model.input_size": 64, "optim.crop": 48, "optim.warmup_steps": 1}
    recipe = load_localizer_recipe(cfg, small)
    lt.train_localizer(recipe, tmp_path / "whole", progress=False)
    real_save = lt.save_train_state

    def killed_after_first_epoch(run_dir, model, opt, epoch, extra):
        real_save(run_dir, model, opt, epoch, extra)
        raise KeyboardInterrupt

    monkeypatch.setattr(lt, "save_train_state", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        lt.train_localizer(recipe, tmp_path / "cut", progress=False)
    monkeypatch.setattr(lt, "save_train_state", real_save)
    with pytest.raises(SignguardError, match="already holds a training run"):
        lt.train_localizer(recipe, tmp_path / "cut", progress=False)
    with pytest.raises(SignguardError, match="started with another recipe"):
        lt.train_localizer(load_localizer_recipe(cfg, {**small, "optim.lr": 0.1}), tmp_path / "cut", progress=False,
                           resume=True)
    metrics = lt.train_localizer(recipe, tmp_path / "cut", progress=False, resume=True)
    a, _ = lt.load_localizer(tmp_path / "whole")
    b, _ = lt.load_localizer(tmp_path / "cut")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()] == [1, 2]
    again = lt.train_localizer(recipe, tmp_path / "cut", progress=False, resume=True)
    assert json.dumps(again, sort_keys=True) == json.dumps(metrics, sort_keys=True)  # NaN-safe equality
