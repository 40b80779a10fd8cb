"""PRN + DCT-SVM gate, evaluated as the paper does and against stickers -> reports/prn/.

    python bench/prn_report.py --run runs/prn/synthetic --out reports/prn/synthetic

What it measures, on a gated checkpoint trained by ``signguard train --config configs/prn.yaml``:

* the paper's Table 1 rows (Protocols A and B: PRN-gain, PRN-restoration, detection rate, defense rate) on the
  test split under the bank's **held-out** perturbations (other seeds; never seen in training), for the
  recipe's SVM and for the other kernel fitted on the same features (linear vs RBF);
* the clean-accuracy cost of the gate;
* stickers (label spaces with a stop sign: LISA-18, GTSRB): RP2 stickers on the rendered stop sign for every
  other class as target (``--targets`` caps it), made against the frozen baseline (the gate's
  detection rate on held-out stickered poses, targeted success through the gate), then adaptive RP2 made
  through the gate itself -- soft select over both branches, BPDA, and low-frequency -- scored on the real
  (hard) gate;
* an adaptive universal perturbation (sPGD through the soft gate) at the same budget.

Each part is cached in ``OUT/parts/<part>.json``, so parts can run as parallel processes (``--parts soft``)
and a last run without anything left to compute writes ``report.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from edge.fileio import atomic_write_json, atomic_write_text
from train.attacks.adaptive_view import attacker_view
from train.attacks.bank import bank_summary, load_bank, split_perturbations
from train.attacks.rp2 import RP2, evaluate_stickers
from train.attacks.uap import SPGDUniversal
from train.attacks.views import render_views, render_with_sticker
from train.checkpoint import load_checkpoint
from train.config import Recipe
from train.data.classes import LISA_INDEX
from train.data.datasets import load_data
from train.defenses import defense_from_dict
from train.defenses.dct_svm import fit_detector
from train.defenses.prn import stop_label
from train.eval.prn_protocol import gate_decisions, protocol_metrics
from train.eval.sweep_runner import rp2_row
from train.trainer import predict

STICKER_ATTACKS = ("transfer", "soft", "bpda", "lowfreq")
STICKER_LABELS = {"transfer": "RP2 made against the baseline (non-adaptive)", "soft": "adaptive RP2, soft select",
                  "bpda": "adaptive RP2, BPDA (hard forward, soft backward)",
                  "lowfreq": "adaptive low-frequency RP2 (k = 16), soft select"}
PARTS = ("protocols", "transfer", "soft", "bpda", "lowfreq", "universal", "device")


def device_checks(run: Path, out: Path, model, data, meta: dict) -> dict:
    """The gated bundle as the device gets it: export (FP32 + INT8, one fused graph), ``signguard verify`` with a
    held-out bank UAP beside PGD (accuracy, attack success and gate firing per precision), and ``signguard bench``
    (gate-on vs gate-off latency at batch 1 on CPU onnxruntime)."""
    from signguard.cli import main as signguard
    from train.attacks.uap import save_perturbation

    bank = load_bank(run / "bank")
    names = [str(n) for n in bank["names"]]
    i = names.index(next(n for n in names if n.startswith("test:uap:")))
    uap = run / "bank" / "heldout_uap.npy"
    base, base_meta = load_checkpoint(meta["recipe"]["model"]["init"])  # the frozen classifier it was made on
    v = bank["perturbations"][i]
    fooled = predict(base, data.test.x) != predict(base, np.clip(data.test.x + v, 0, 1))
    save_perturbation(uap, v, {"norm": "linf", "xi": float(np.abs(v).max()), "model_hash": base_meta["weights_sha256"],
                               "fooling_ratio": float(fooled.mean()), "bank_name": names[i]})
    bundle, dev = run / "bundle", out / "device"
    steps = [["export", "--checkpoint", str(run), "--out", str(bundle), "--precision", "fp32", "int8", "--quiet"],
             ["verify", "--bundle", str(bundle), "--uap", str(uap), "--out", str(dev / "verify")],
             ["bench", "--bundle", str(bundle), "--repeats", "300", "--out", str(dev / "bench")]]
    for argv in steps:
        if signguard(argv) not in (0, 1):  # verify exits 1 when a precision fails its margins: reported, not fatal
            raise SystemExit(f"signguard {argv[0]} failed")
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {"macs": {"rectifier": macs(model.rectifier), "classifier": macs(model.classifier)},
            "commands": ["signguard " + " ".join(a) for a in steps], "heldout_uap": names[i],
            "parity": [{"file": e["file"], "precision": e["precision"], **e["parity"]} for e in manifest["models"]],
            "verify": json.loads((dev / "verify.json").read_text()),
            "bench": json.loads((dev / "bench.json").read_text())}


def macs(module: torch.nn.Module, size: int = 32) -> int:
    """Multiply-adds of one (1, 3, size, size) forward pass through the convs and linears (what dominates)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):  # every output value: in_channels * k * k products
            total += out.numel() * m.weight[0].numel()
        elif isinstance(m, torch.nn.ConvTranspose2d):  # every input value is spread over out_channels * k * k
            total += inp[0].numel() * m.weight[0].numel()
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
    with torch.no_grad():
        module.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def device_markdown(d: dict) -> list[str]:
    """The device section: parity, verify rows, gate-on vs gate-off latency and its ratio."""
    lines = ["", "## On the device: the fused graph (FP32 and INT8)", "", "```bash", *d["commands"], "```", "",
             "| file | precision | max abs logit diff vs PyTorch | argmax agreement |", "|---|---|---|---|"]
    lines += [f"| {p['file']} | {p['precision']} | {p['max_abs_diff']:.2e} | {p['argmax_agreement']:.1%} |"
              for p in d["parity"]]
    v = d["verify"]
    attacks = list(v["attacks"])
    lines += ["", f"`signguard verify` on {v['n_images']} held-out images (held-out UAP = bank `{d['heldout_uap']}`; "
              f"verdict {'PASSED' if v['passed'] else 'FAILED'}):", "",
              "| backend | precision | clean acc | " + " | ".join(f"{a} success | gate fires on {a}" for a in attacks)
              + " | gate fires on clean |", "|---|---|---|" + "---|---|" * len(attacks) + "---|"]
    for r in v["rows"]:
        g = r.get("gate_fired", {})
        cells = " | ".join(f"{r[a]:.1%} | " + (f"{g[a]:.1%}" if a in g else "-") for a in attacks)
        lines.append(f"| {r['backend']} | {r['precision']} | {r['accuracy']:.1%} | {cells} | "
                     + (f"{g['clean']:.1%}" if g else "-") + " |")
    rows = {(r["backend"], r["precision"]): r for r in d["bench"]["rows"] if r["status"] == "ok"}
    m = d["bench"]["machine"]
    lines += ["", f"`signguard bench` ({m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}, "
              f"{d['bench']['threads']} thread), batch 1, median of {d['bench']['repeats']} runs taken in "
              "rounds (every row once per round), so the ratios hold under the shared machine's load:", "",
              "| precision | gate-on p50 / p99 ms | gate-off p50 / p99 ms | gate-on / gate-off (p50) |",
              "|---|---|---|---|"]
    for prec in ("fp32", "int8"):
        on, off = rows.get(("onnxruntime-cpu gate-on", prec)), rows.get(("onnxruntime-cpu gate-off", prec))
        if on and off:
            lines.append(f"| {prec} | {on['batch1']['p50_ms']:.2f} / {on['batch1']['p99_ms']:.2f} | "
                         f"{off['batch1']['p50_ms']:.2f} / {off['batch1']['p99_ms']:.2f} | "
                         f"{on['batch1']['p50_ms'] / off['batch1']['p50_ms']:.1f}x |")
    ratios = {prec: rows[("onnxruntime-cpu gate-on", prec)]["batch1"]["p50_ms"]
              / rows[("onnxruntime-cpu gate-off", prec)]["batch1"]["p50_ms"] for prec in ("fp32", "int8")
              if ("onnxruntime-cpu gate-on", prec) in rows and ("onnxruntime-cpu gate-off", prec) in rows}
    if ratios:
        worst = max(ratios.values())
        mr, mc = d["macs"]["rectifier"] / 1e6, d["macs"]["classifier"] / 1e6
        lines += ["", f"Target gate-on <= 2x gate-off: {'met' if worst <= 2 else f'missed by {worst - 2:.1f}x'}.  "
                  f"Gate-on runs the rectifier ({mr:.1f} M MACs, {mr / mc:.2f}x the classifier's {mc:.1f} M), the "
                  "DCT MatMuls and SVM (small) and the classifier once (the Where selects its input, I or R(I)): "
                  f"~{1 + mr / mc:.1f}x gate-off's MACs.  The measured ratio is above that (not profiled here: the "
                  "rectifier's nodes are small, so per-node overhead at batch 1 is the likely rest; at INT8 its "
                  "stem, sum and clip also stay FP32, which its robustness needs)."]
    return lines


def detectors(model, defense, data) -> dict:
    """The checkpoint's detector and the other kernel's, fitted on the same training features."""
    out = {defense.cfg.detector: model}
    other = "rbf" if defense.cfg.detector == "linear" else "linear"
    feats, labels = defense.detector_data(model, data.train.x, seed=1)
    _, params = fit_detector(feats, labels, other, defense.cfg.svm_c)
    alt = copy.deepcopy(model)
    alt.detector.rectifier = [alt.rectifier]
    alt.detector.load_svm(params)
    out[other] = alt
    return out


def sticker_attack(name: str, model, baseline, meta, args) -> dict:
    """One RP2 row on held-out stickered poses, scored on the hard gate: ``transfer`` (stickers made against
    the frozen baseline), ``soft`` / ``bpda`` / ``lowfreq`` (made through the gate's attacker view,
    :func:`~train.attacks.adaptive_view.attacker_view`)."""
    stop = stop_label(meta["classes"])
    targets = sticker_targets(meta["classes"], args.targets)
    fit = render_views(LISA_INDEX["stop"], args.views, seed=2 * args.seed + 1)
    held = render_views(LISA_INDEX["stop"], args.heldout, seed=2 * args.seed + 2)
    attack_model = baseline if name == "transfer" else attacker_view(model, bpda=name == "bpda")
    res = RP2(attack_model, steps=args.steps, lr=0.03, lam=0.002, views_per_step=10,
              dct_dim=16 if name == "lowfreq" else 0)(fit, targets, seed=args.seed)
    row = rp2_row(evaluate_stickers(model, held, res, label=stop), meta)
    xs = np.concatenate([render_with_sticker(held, s, res.region) for s in res.stickers])
    out = {**{k: row[k] for k in ("clean_view_acc", "avg_asr", "worst_asr", "worst_target", "avg_untargeted_asr")},
           "detection_rate": float(gate_decisions(model, torch.from_numpy(xs)).mean()),
           "clean_view_fpr": float(gate_decisions(model, held.x).mean())}
    if name == "transfer":
        base = rp2_row(evaluate_stickers(baseline, held, res, label=stop), meta)
        out["baseline"] = {k: base[k] for k in ("avg_asr", "worst_asr", "avg_untargeted_asr")}
    return out


def sticker_targets(classes: list[str], cap: int) -> list[int]:
    """The RP2 targets: every class but stop, the first ``cap`` of them (0 = all)."""
    stop = stop_label(classes)
    return [c for c in range(len(classes)) if c != stop][: cap or None]


def adaptive_universal(model, data, xi, seed) -> dict:
    """sPGD through the soft gate, fitted on training images, scored on the test split (through the real gate)."""
    x_fit = torch.as_tensor(data.train.x)[torch.randperm(len(data.train.x),
                                                           generator=torch.Generator().manual_seed(seed))[:500]]
    v = SPGDUniversal(attacker_view(model), xi=xi, steps=100, batch_size=32).fit(x_fit, seed=seed)
    x, y = torch.as_tensor(data.test.x), data.test.y
    xv = (x + v).clamp(0, 1)
    return {"acc_gated": float((predict(model, xv) == y).mean()),
            "acc_bare": float((predict(model.classifier, xv) == y).mean()),
            "detection_rate": float(gate_decisions(model, xv).mean())}


def to_markdown(res: dict) -> str:
    lines = [f"# PRN + DCT-SVM gate: {res['name']}", "",
             f"Regenerate: `{res['command']}`", "",
             f"Classifier: `{res['baseline']}` (frozen), gated checkpoint `{res['run']}`.  Held-out test "
             f"perturbations: {', '.join(res['test_perturbations'])} at xi = {res['xi'] * 255:.0f}/255 L-inf "
             f"(fooling ratio on the test split: {', '.join(f'{f:.2f}' for f in res['test_fooling'])}).", "",
             "## The paper's table (held-out perturbations)", "",
             "| detector | protocol | PRN-gain | PRN-restoration | detection rate | defense rate "
             "| clean acc bare -> gated |",
             "|---|---|---|---|---|---|---|"]
    for kernel, prots in res["protocols"].items():
        for p in prots:
            lines.append(f"| {kernel} | {p['protocol']} | {p['prn_gain']:.1f}% | {p['prn_restoration']:.1f}% | "
                         f"{p['detection_rate']:.1f}% | {p['defense_rate']:.1f}% | "
                         f"{p['acc_clean']:.3f} -> {p['acc_gated_clean']:.3f} |")
    st = res.get("stickers", {})
    if st:
        tr = st.get("transfer", {})
        lines += ["", f"## Stickers (RP2 on the rendered stop sign, {res.get('sticker_targets', 17)} targets, "
                  "held-out poses; scored on the hard gate)", ""]
        if "baseline" in tr:
            lines += [f"Baseline under its own stickers: targeted avg {tr['baseline']['avg_asr']:.1%}, worst "
                      f"{tr['baseline']['worst_asr']:.1%}, untargeted {tr['baseline']['avg_untargeted_asr']:.1%}.  "
                      f"The gate fires on {tr['clean_view_fpr']:.1%} of clean held-out stop views.", ""]
        lines += ["| attack on the gated model | clean view acc | targeted avg | targeted worst (target) | untargeted "
                  "| gate fires |", "|---|---|---|---|---|---|"]
        for k, r in st.items():
            lines.append(f"| {STICKER_LABELS[k]} | {r['clean_view_acc']:.3f} | {r['avg_asr']:.1%} | "
                         f"{r['worst_asr']:.1%} ({r['worst_target']}) | {r['avg_untargeted_asr']:.1%} | "
                         f"{r['detection_rate']:.1%} |")
        adaptive = [k for k in st if k != "transfer"]
        if adaptive:
            best = max(adaptive, key=lambda k: (st[k]["worst_asr"], st[k]["avg_asr"]))
            lines += ["", f"Strongest adaptive attack: **{STICKER_LABELS[best]}**."]
    u = res.get("adaptive_universal")
    if u:
        lines += ["", "## Adaptive universal perturbation (sPGD through the soft gate, same budget)", "",
                  f"Test accuracy with it: gated {u['acc_gated']:.3f}, bare classifier {u['acc_bare']:.3f}; "
                  f"the gate fires on {u['detection_rate']:.1%} of those images."]
    if res.get("device"):
        lines += device_markdown(res["device"])
    lines += ["", f"Machine: {res['machine']}; wall time {res['wall_s']:.0f} s (the parts' sum)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="gated run folder (signguard train --config configs/prn.yaml)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=60, help="RP2 steps")
    ap.add_argument("--views", type=int, default=20, help="RP2 optimisation poses")
    ap.add_argument("--heldout", type=int, default=40, help="held-out poses")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", type=int, default=0, help="RP2 targets: the first N classes other than stop "
                    "(0 = all)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                    help="what to compute (each is cached in OUT/parts/; run parts in parallel, then once more "
                         "with none left to compute to write the report)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    run = Path(args.run)
    model, meta = load_checkpoint(run)
    recipe = Recipe.from_sidecar(meta["recipe"], f"{run}/model.json")
    has_stop = stop_label(meta["classes"]) is not None
    todo = [p for p in args.parts if not (out / "parts" / f"{p}.json").is_file()
            and (has_stop or p not in STICKER_ATTACKS)]
    if todo:
        baseline, _ = load_checkpoint(recipe.model.init)
        data = load_data(recipe.data, recipe.preprocess_cfg(), progress=False)
        defense = defense_from_dict(meta["defense"])
        defense.prepare(model, data, run, torch.device("cpu"))
    for part in todo:
        t0 = time.time()
        if part == "protocols":
            test = split_perturbations(load_bank(run / "bank"), "test")
            value = {k: [protocol_metrics(m, data.test.x, data.test.y, test, p) for p in ("A", "B")]
                     for k, m in detectors(model, defense, data).items()}
        elif part == "universal":
            value = adaptive_universal(model, data, defense.cfg.bank_xi, args.seed)
        elif part == "device":
            value = device_checks(run, out, model, data, meta)
        else:
            value = sticker_attack(part, model, baseline, meta, args)
        atomic_write_json(out / "parts" / f"{part}.json", {"value": value, "wall_s": time.time() - t0})
        print(f"{part}: {json.dumps(value)} ({time.time() - t0:.0f} s)", flush=True)
    parts = {p: json.loads((out / "parts" / f"{p}.json").read_text()) for p in PARTS
             if (out / "parts" / f"{p}.json").is_file()}
    if "protocols" not in parts:
        return 0
    summary = bank_summary(run / "bank")
    xi = defense_from_dict(meta["defense"]).cfg.bank_xi
    res = {"name": recipe.name, "run": str(run), "baseline": recipe.model.init, "xi": xi,
           "test_perturbations": [n for n in summary["names"] if n.startswith("test:")],
           "test_fooling": [f for n, f in zip(summary["names"], summary["fooling_ratio"]) if n.startswith("test:")],
           "max_abs_cosine_test_vs_train": summary.get("max_abs_cosine_test_vs_train"),
           "clean_test_acc": meta["metrics"].get("test_acc"),
           "protocols": parts["protocols"]["value"],
           "stickers": {p: parts[p]["value"] for p in STICKER_ATTACKS if p in parts},
           "adaptive_universal": parts.get("universal", {}).get("value"),
           "device": parts.get("device", {}).get("value"),
           "sticker_targets": len(sticker_targets(meta["classes"], args.targets)),
           "command": f"python bench/prn_report.py --run {args.run} --out {args.out} --steps {args.steps}"
                      + (f" --targets {args.targets}" if args.targets else ""),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
           "wall_s": sum(p["wall_s"] for p in parts.values())}
    atomic_write_json(out / "results.json", res)
    atomic_write_text(out / "report.md", to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
