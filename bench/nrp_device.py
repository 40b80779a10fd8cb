"""The device half of ``bench/nrp_report.py report``: the purifier + classifier as deployed artifacts.

Every step is the ``signguard`` command a user would run (export ``--graphs one|separate`` with INT8, verify,
bench, render a drive-by, run the torch-free edge loop), called without a shell; the report quotes their
outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.fileio import atomic_write_text


def _cli(root: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    """One ``signguard`` command (no shell), its output returned; an exit code outside ``ok`` stops the report
    (verify exits 1 when a precision fails its margins: that is a result to report, not a crash)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "signguard", *args]
    print("  $ signguard " + " ".join(args), flush=True)
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode not in ok:
        raise SystemExit(f"signguard {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def device_checks(root: Path, out: Path, ckpt: str) -> list[str]:
    """Export the defended checkpoint ``ckpt`` as one graph and as two parts (FP32 + INT8), verify and bench
    the one-graph bundle, run it in the edge loop on a drive-by video of a stop sign; the report's lines."""
    # paths relative to ``root`` (every command runs there), so the quoted outputs name no machine's folders
    bundles, dev = Path("runs") / "nrp" / "bundles", out.relative_to(root) / "device"
    (root / dev).mkdir(parents=True, exist_ok=True)
    parity = {}
    for graphs in ("one", "separate"):
        b = bundles / f"baseline_nrp_{graphs}"
        _cli(root, "export", "--checkpoint", str(ckpt), "--out", str(b), "--precision", "fp32", "int8",
             "--graphs", graphs, "--quiet")
        parity[graphs] = [(e["file"], e["part"], e["precision"], e["parity"]) for e in
                          json.loads((root / b / "manifest.json").read_text())["models"]]
    one = bundles / "baseline_nrp_one"
    pgd = ("--n", "500", "--attack-n", "100", "--eps", "0.0627451", "--alpha", "0.0156863")
    verify_out = _cli(root, "verify", "--bundle", str(one), *pgd, "--out", str(dev / "verify_baseline_nrp"), ok=(0, 1))
    _cli(root, "bench", "--bundle", str(one), *pgd, "--out", str(dev / "bench_baseline_nrp"))
    video = Path("runs") / "nrp" / "video"
    _cli(root, "render", "driveby", "--sign", "stop", "--out", str(video))
    edge = {}
    for prec in ("fp32", "int8"):
        (root / dev / f"frames_{prec}.jsonl").unlink(missing_ok=True)  # the loop refuses to overwrite a frame log
        edge[prec] = _cli(root, "run", "--bundle", str(one), "--precision", prec, "--source",
                          str(video / "driveby.mp4"), "--roi", str(video / "driveby.csv"), "--log",
                          str(dev / f"frames_{prec}.jsonl"))
        atomic_write_text(root / dev / f"edge_loop_{prec}.txt", edge[prec])
    lines = ["## Device: export, parity, verify, bench, edge loop", "",
             "Bundles of `baseline_nrp` (purifier + classifier): `signguard export --checkpoint "
             "runs/nrp/attached/baseline --precision fp32 int8 --graphs one|separate`.  Parity against PyTorch "
             "on 256 held-out images (separate: each part on what it receives; the purifier's outputs are images):",
             "", "| graphs | file | part | precision | max abs diff | argmax agreement |", "|---|---|---|---|---|---|"]
    for graphs, entries in parity.items():
        for f, part, prec, par in entries:
            agree = "- (images)" if part == "purifier" else f"{100 * par['argmax_agreement']:.1f}%"
            lines.append(f"| {graphs} | {f} | {part} | {prec} | {par['max_abs_diff']:.2e} | {agree} |")
    with np.load(root / bundles / "baseline_nrp_separate" / "verify.npz") as z:  # the two INT8 parts chained
        chained, n = float((z["ref_int8"].argmax(1) == z["ref_fp32"].argmax(1)).mean()), len(z["inputs"])
    lines += ["", f"Separate bundle, INT8 purifier then INT8 classifier chained (its `verify.npz`): argmax agreement "
              f"with the FP32 chain {100 * chained:.1f}% on {n} images."]
    lines += ["", "`signguard verify` (one graph; 500 held-out images, of which 100 attacked with PGD 16/255 made "
              "white-box end to end on the PyTorch pipeline and transferred to each precision) -- "
              "[device/verify_baseline_nrp.md](device/verify_baseline_nrp.md):", "", "```",
              verify_out.strip(), "```", "", "`signguard bench`: [device/bench_baseline_nrp.md]"
              "(device/bench_baseline_nrp.md).  Edge loop (`signguard run` on a rendered drive-by of a stop sign, "
              "torch-free onnxruntime), last lines of its output:", ""]
    for prec, text in edge.items():
        lines += [f"{prec}:", "```", "\n".join(text.strip().splitlines()[-6:]), "```"]
    lines += ["", "The edge runtime runs a bundle's whole-model graph; a `--graphs separate` bundle is exported and "
              "parity-checked part by part above, but `signguard run/verify/bench` would run only its classifier "
              "part (the runtime does not chain parts), so the device checks use the one-graph bundle.", ""]
    return lines
