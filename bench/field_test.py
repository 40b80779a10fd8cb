"""Simulated field test on the INT8 bundles: the demo's stop-sign drive-by, clean, with the strongest sticker
against the undefended baseline, and with each defended model's own adaptive sticker, run through the device
loop (``signguard run --precision int8 --log``), then ``signguard field-report``; and the INT8 sticker table
(``signguard verify --sticker``, stickers read back from their printed PNG) that picks those stickers.

Why simulated: it exercises exactly the field workflow (sticker -> drive-by -> ``signguard run --log`` ->
``signguard field-report``) with a renderer that pastes the sticker in the same template coordinates the
attack optimised it in, so the numbers are reproducible here; a real test swaps the renderer for a camera.

Steps (each artifact cached, so a rerun redoes only the cheap parts):
  1. bundles  every model exported FP32 + INT8 (``signguard export``) -> runs/field_test/bundles/<model>
  2. stickers two candidates per attacked model (white-box and low-frequency RP2, each through the model's
              attacker view: EOT for column smoothing and PatchCleanser, the soft gate for PRN;
              ``bench/field_stickers.py``)
              -> reports/sticker_robustness/int8/stickers/<model>__<kind>
  3. verify   every candidate on every verified bundle's FP32 and INT8 graphs -> reports/sticker_robustness/int8/
  4. choose   per model, the candidate with the highest INT8 success on its own bundle (40 fresh poses)
  5. drives   clean, ``sticker_baseline`` (the baseline's strongest), ``adaptive_<model>`` (its own strongest;
              BlurNet-TV's is its TV-regularised sticker from reports/blurnet) -> runs/field_test/video
  6. run      every (drive, model) at INT8 and FP32 -> reports/field_test/logs
  7. report   INT8 baseline vs each defended model on each drive -> reports/field_test/<drive>__baseline_vs_<m>

    python bench/field_test.py
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench import field_stickers as fs  # noqa: E402
from bench.field_tables import int8_report, readme  # noqa: E402
from edge.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from signguard.cli import main as signguard  # noqa: E402

MODELS = {"baseline": "runs/sweep/synthetic/baseline", "doa": "runs/doa_s10",
          "column_smoothing": "runs/column_smoothing", "prn_gate": "runs/prn/synthetic",
          "blurnet_tv": "runs/sweep/synthetic/blurnet_tv", "patchcleanser": "runs/patchcleanser",
          "deep_defense": "runs/deep_defense/gpu/synthetic_c10/last.json", "rp2_at": "runs/rp2_at",
          "rp2_at_distill": "runs/rp2_at_distill"}
UNDEFENDED = "baseline"
#: models whose own stickers are made here, with their RP2 steps (RP2's default 300 for all; column smoothing's EOT
#: averages its 32 ablations every step, ~1.2 s a step at one thread against ~0.25 s, and still fits the budget)
ATTACKED = {"baseline": 300, "doa": 300, "column_smoothing": 300, "prn_gate": 300, "patchcleanser": 300,
            "deep_defense": 300, "rp2_at": 300, "rp2_at_distill": 300}
KINDS = ("whitebox", "lowfreq")
#: BlurNet-TV keeps the adaptive sticker of its own report (its TV regulariser in the attack loss)
EXTRA_ADAPTIVE = {"blurnet_tv": "reports/blurnet/stickers/rp2_regularizer__tv_1e-4"}
#: PyTorch sticker reports whose rows name each model's worst target; the first row for a model wins, so the
#: newest measurement of the retrained baseline (the RP2-training report) comes first
ROBUSTNESS_REPORTS = ("reports/sticker_robustness/rp2_at/results.json", "reports/sticker_robustness/results.json",
                      "reports/sticker_robustness/patchcleanser/results.json")
PRECISIONS = ("int8", "fp32")
DRIVE = dict(n_frames=90, seed=7, name="stop_driveby")  # the demo's drive-by (signguard/demo.py)
VERIFY_N = 1000  # held-out test images for clean accuracy in `signguard verify`


def _cli(*argv: str, ok: Tuple[int, ...] = (0,)) -> int:
    print("$ signguard " + " ".join(shlex.quote(a) for a in argv), flush=True)
    code = signguard(list(argv))
    if code not in ok:
        raise SystemExit("signguard %s failed with exit code %d" % (argv[0], code))
    return code


def _loads(bundle: Path, checkpoint: str) -> bool:
    """Whether an earlier export can be reused: today's loader accepts its INT8 graph and it was exported from
    the checkpoint's current weights (a retrained model must not be tested through its predecessor's bundle)."""
    from edge.bundle import load_bundle
    from edge.errors import SignguardError
    from train.checkpoint import read_sidecar

    try:
        manifest = load_bundle(bundle, precision="int8").manifest
    except SignguardError:
        return False
    return manifest.get("source", {}).get("weights_sha256") == read_sidecar(checkpoint)[1]["weights_sha256"]


def _render(work: Path, drive: str, sticker_dir: Optional[str]) -> Dict[str, Any]:
    from train.attacks.sticker_io import load_template_sticker
    from train.data.classes import STOP
    from train.data.driveby import render_driveby

    sticker, meta = load_template_sticker(sticker_dir) if sticker_dir else (None, None)
    d = render_driveby(work / "video" / drive, class_id=STOP, sticker=sticker, **DRIVE)
    return {"video": d.video_path, "csv": d.boxes_csv, "sticker": sticker_dir,
            "target": None if meta is None else meta["meta"]["target"],
            "sticker_meta": None if meta is None else meta["meta"]}


def export_bundles(work: Path) -> None:
    for name, ckpt in MODELS.items():
        if not _loads(work / "bundles" / name, ckpt):
            shutil.rmtree(str(work / "bundles" / name), ignore_errors=True)
            _cli("export", "--checkpoint", ckpt, "--out", str(work / "bundles" / name), "--precision", "fp32", "int8",
                 "--quiet")


def make_stickers(root: Path) -> List[fs.StickerSpec]:
    def read(path: str) -> Optional[Dict[str, Any]]:
        return json.loads((ROOT / path).read_text()) if (ROOT / path).is_file() else None

    rows = [r for path in ROBUSTNESS_REPORTS for r in (read(path) or {}).get("rows", [])]
    specs = fs.candidates(MODELS, {m: KINDS for m in ATTACKED}, ATTACKED, {"rows": rows},
                          read("reports/prn/synthetic/results.json"))
    for spec in specs:
        t0 = time.time()
        meta = fs.make_sticker(spec, root)
        print("sticker %s -> %s: held-out targeted success %.1f%% (%.0f s)" % (
            spec.folder, spec.target, 100 * meta["heldout_targeted_success"], time.time() - t0), flush=True)
    return specs


def verify_all(work: Path, out: Path, specs: List[fs.StickerSpec], root: Path) -> Dict[str, Any]:
    """``signguard verify`` of every attacked model's bundle against every candidate sticker."""
    from train.eval.artifact import sticker_names

    dirs = [str(root / s.folder) for s in specs]
    names = dict(zip((s.folder for s in specs), sticker_names(dirs)))
    res: Dict[str, Any] = {}
    for model in ATTACKED:
        cmd = ["verify", "--bundle", str(work / "bundles" / model), "--n", str(VERIFY_N), "--eps", "0",
               "--out", str(out / "verify" / model)]
        for d in dirs:
            cmd += ["--sticker", d]
        code = _cli(*cmd, ok=(0, 1))  # 1 = a precision outside the margins: a finding, reported
        res[model] = {"command": "signguard " + " ".join(shlex.quote(c) for c in cmd), "exit_code": code,
                      "report": json.loads((out / "verify" / (model + ".json")).read_text())}
    return {"names": names, "verify": res}


def _rate(report: Dict[str, Any], precision: str, attack: str) -> float:
    row = next(r for r in report["rows"] if r["backend"] == "onnxruntime" and r["precision"] == precision)
    return float(row[attack])


def choose(specs: List[fs.StickerSpec], ver: Dict[str, Any], root: Path) -> Dict[str, str]:
    """model -> folder of its strongest own sticker (:func:`bench.field_stickers.strongest`)."""
    out = {}
    for model in ATTACKED:
        own = [s.folder for s in specs if s.model == model]
        rep = ver["verify"][model]["report"]
        made = {f: json.loads((root / f / "sticker.json").read_text())["meta"]["heldout_targeted_success"]
                for f in own}
        out[model] = fs.strongest(own, {f: _rate(rep, "int8", ver["names"][f]) for f in own}, made)
    return out


def drives_of(chosen: Dict[str, str], root: Path) -> Dict[str, Tuple[Optional[str], List[str]]]:
    """drive -> (sticker folder or None, models run on it)."""
    defended = [m for m in MODELS if m != UNDEFENDED]
    drives: Dict[str, Tuple[Optional[str], List[str]]] = {
        "clean": (None, list(MODELS)), "sticker_baseline": (str(root / chosen[UNDEFENDED]), list(MODELS))}
    for m in defended:
        folder = str(root / chosen[m]) if m in chosen else EXTRA_ADAPTIVE[m]
        drives["adaptive_" + m] = (folder, [UNDEFENDED, m])
    return drives


def run_drives(work: Path, out: Path, drives: Dict[str, Tuple[Optional[str], List[str]]]):
    from edge.field_report import build_report

    logs_dir = out / "logs"
    for old in (out.iterdir() if out.is_dir() else []):  # this script's earlier logs and reports: all rewritten
        if old.is_dir() and (old == logs_dir or (old / "summary.json").is_file()):
            shutil.rmtree(str(old))
    logs_dir.mkdir(parents=True, exist_ok=True)
    csv = logs_dir / "stop_driveby.csv"
    rendered, metrics, logs = {}, {}, {}
    for drive, (sticker_dir, models) in drives.items():
        d = rendered[drive] = _render(work, drive, sticker_dir)
        if csv.is_file() and csv.read_text() != d["csv"].read_text():
            raise SystemExit("%s: drives differ in their boxes; the sticker must not move the sign" % d["csv"])
        shutil.copyfile(str(d["csv"]), str(csv))
        for model in models:
            for prec in PRECISIONS:
                raw = work / "logs" / ("%s_%s_%s.jsonl" % (drive, model, prec))
                raw.parent.mkdir(parents=True, exist_ok=True)
                if raw.exists():
                    raw.unlink()  # a fresh log per run (`run --log` refuses to overwrite one)
                _cli("run", "--bundle", str(work / "bundles" / model), "--precision", prec, "--source",
                     str(d["video"]), "--roi", str(d["csv"]), "--log", str(raw), "--quiet")
                logs[drive, model, prec] = logs_dir / raw.name
                shutil.copyfile(str(raw), str(logs[drive, model, prec]))
                metrics[drive, model, prec] = build_report(logs[drive, model, prec], csv,
                                                           d["target"]).summary["logs"][0]["metrics"]
    return rendered, metrics, logs, csv


def compare(out: Path, drives, rendered, logs, csv: Path) -> List[Dict[str, Any]]:
    """One ``field-report`` per (drive, defended model): the INT8 baseline against the INT8 defended bundle."""
    rows = []
    for drive, (_, models) in drives.items():
        for m in models:
            if m == UNDEFENDED:
                continue
            name = "%s__%s_vs_%s" % (drive, UNDEFENDED, m)
            cmd = ["field-report", str(logs[drive, UNDEFENDED, "int8"]), "--compare", str(logs[drive, m, "int8"]),
                   "--roi", str(csv), "--names", "%s,%s" % (UNDEFENDED, m), "--out", str(out / name)]
            if rendered[drive]["target"]:
                cmd += ["--target", rendered[drive]["target"]]
            _cli(*cmd)
            summary = json.loads((out / name / "summary.json").read_text())
            rows.append({"drive": drive, "name": name, "model": m, "paired": summary["paired"],
                         "command": "signguard " + " ".join(shlex.quote(c) for c in cmd)})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/field_test", help="bundles, videos, raw logs")
    p.add_argument("--out", default="reports/field_test", help="committed logs and drive-by reports")
    p.add_argument("--int8-out", default="reports/sticker_robustness/int8", help="stickers and the INT8 table")
    p.add_argument("--models", nargs="+", choices=list(MODELS), metavar="MODEL",
                   help="run only these models beside the undefended %r (default: all of %s)" % (
                       UNDEFENDED, ", ".join(MODELS)))
    args = p.parse_args(argv)
    if args.models:
        keep = {UNDEFENDED, *args.models}
        for table in (MODELS, ATTACKED):
            for name in [m for m in table if m not in keep]:
                del table[name]
    command = "python bench/field_test.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    t0 = time.time()
    work, out, int8_out = Path(args.work), Path(args.out), Path(args.int8_out)
    root = int8_out / "stickers"
    export_bundles(work)
    specs = make_stickers(root)
    ver = verify_all(work, int8_out, specs, root)
    chosen = choose(specs, ver, root)
    atomic_write_json(int8_out / "results.json", {"stickers": [s.__dict__ for s in specs], **ver, "chosen": chosen,
                                                  "command": command})
    atomic_write_text(int8_out / "report.md", int8_report(specs, ver, chosen, root, command, args.out))
    drives = drives_of(chosen, root)
    rendered, metrics, logs, csv = run_drives(work, out, drives)
    rows = compare(out, drives, rendered, logs, csv)
    summary = {"drives": {d: {"sticker": rendered[d]["sticker"], "target": rendered[d]["target"], "models": ms}
                          for d, (_, ms) in drives.items()},
               "metrics": [{"drive": d, "model": m, "precision": pr, **v} for (d, m, pr), v in metrics.items()],
               "reports": rows, "chosen": chosen, "wall_s": round(time.time() - t0), "command": command,
               "int8_report": os.path.relpath(str(int8_out / "report.md"), str(out)),
               "sticker_s": round(sum(json.loads((root / s.folder / "sticker.json").read_text())["meta"]["seconds"]
                                      for s in specs))}
    text = readme(summary, rendered, MODELS, DRIVE)  # adds the done-when checks to the summary
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "README.md", text)
    print((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
