"""NRP's evidence (Naseer et al. 2020) -> reports/nrp/.

    python bench/nrp_report.py layers    # which extractor layer SSP attacks: ssp_layers.{md,json,png}
    python bench/nrp_report.py report    # attach, sweep, ablation, device checks: README.md + eval/ + device/

``layers`` reproduces the paper's Fig. 4 choice at our scale (``bench/nrp_layers.py``): SSP at every ReLU of the
feature extractor, scored on two *selection* LISA-CNNs (BlurNet Tik_hf and DOA) the purifier is never evaluated
behind.

``report`` puts each trained purifier (``runs/nrp/purifier``, and the two ablations) in front of the
classifiers it never saw, runs ``signguard eval configs/eval/nrp.yaml`` into ``reports/nrp/eval/``, exports the
defended baseline as one graph and as two parts with INT8, runs verify, bench and the edge loop on it, and
writes the summary tables (accuracy restored, clean cost, ablation, adaptive rows) to ``reports/nrp/README.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from edge.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "nrp"
EXTRACTOR = "runs/nrp/extractor"
# score the layer choice; neither is ever evaluated behind the purifier (nor is the extractor)
SELECTION = ("runs/sweep/synthetic/blurnet_tik_hf", "runs/doa_s10")
LAYERS = ("features.relu1_1", "features.relu1_2", "features.relu2_1", "features.relu2_2", "features.relu3_1",
          "features.relu3_2", "features.relu3_3")


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)")


def _save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------- report


CLASSIFIERS = {"baseline": "runs/sweep/synthetic/baseline", "blurnet_tv": "runs/sweep/synthetic/blurnet_tv",
               "gtsrb32": "runs/gtsrb32/baseline"}
PURIFIERS = {"nrp": "runs/nrp/purifier", "nrp_no_feat": "runs/nrp/purifier_no_feat",
             "nrp_no_gan": "runs/nrp/purifier_no_gan", "nrp_paper_weights": "runs/nrp/purifier_paper_weights"}
#: sweep label -> (purifier, classifier label): what configs/eval/nrp.yaml evaluates behind a purifier
ATTACHED = {"baseline_nrp": ("nrp", "baseline"), "blurnet_tv_nrp": ("nrp", "blurnet_tv"),
            "gtsrb32_nrp": ("nrp", "gtsrb32"), "baseline_nrp_no_feat": ("nrp_no_feat", "baseline"),
            "baseline_nrp_no_gan": ("nrp_no_gan", "baseline"),
            "baseline_nrp_paper_weights": ("nrp_paper_weights", "baseline"),
            "gtsrb32_nrp_paper_weights": ("nrp_paper_weights", "gtsrb32")}
TRANSFER = ("pgd8_transfer", "pgd16_transfer", "mifgsm8_transfer", "mifgsm16_transfer", "ssp8", "ssp16",
            "uap_transfer")
ADAPTIVE = ("pgd8_adaptive", "pgd16_adaptive", "pgd16_bpda")
SWEEP = "configs/eval/nrp.yaml"


def attach_all(cfg) -> dict[str, dict[str, Any]]:
    """Each purifier in front of its classifiers (``cfg.models`` paths), re-attached only when either changed."""
    from train.checkpoint import read_sidecar
    from train.defenses.nrp import attach, load_purifier

    out = {}
    for label, (pur, clf) in ATTACHED.items():
        target, pmeta = Path(cfg.models[label]), load_purifier(ROOT / PURIFIERS[pur])[1]
        cmeta = read_sidecar(ROOT / CLASSIFIERS[clf])[1]
        try:
            meta = read_sidecar(target)[1]
            fresh = (meta["purifier"]["weights_sha256"] == pmeta["weights_sha256"]
                     and meta["classifier"]["weights_sha256"] == cmeta["weights_sha256"])
        except Exception:  # noqa: BLE001  (absent or unreadable: attach again)
            fresh = False
        if not fresh:
            print(f"  attach {PURIFIERS[pur]} -> {CLASSIFIERS[clf]}", flush=True)
            attach(ROOT / PURIFIERS[pur], ROOT / CLASSIFIERS[clf], target)
        out[label] = read_sidecar(target)[1]["metrics"]
    return out


def _row(results: dict[str, Any], attack: str, label: str) -> dict[str, Any] | None:
    return next((r for r in results["attacks"].get(attack, []) if r["model"] == label), None)


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


def restoration_rows(results: dict[str, Any], clean: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per classifier and transferred attack: accuracy bare and behind NRP on the same images, and the share
    of the bare classifier's clean accuracy the purifier restores (``adv_acc(NRP) / clean_acc(bare)``)."""
    rows = []
    for clf in CLASSIFIERS:
        m = clean[f"{clf}_nrp"]
        row = {"classifier": clf, "clean_bare": m["classifier_test_acc"], "clean_nrp": m["test_acc"]}
        for a in TRANSFER:
            bare, nrp = _row(results, a, clf), _row(results, a, f"{clf}_nrp")
            if bare and nrp:
                row[a] = {"bare": bare["adv_acc"], "nrp": nrp["adv_acc"], "clean_bare": bare["clean_acc"],
                          "restored": nrp["adv_acc"] / bare["clean_acc"]}
        rows.append(row)
    return rows


def findings(results, layers, train_logs, through) -> list[str]:
    """Why the numbers are what they are, each reason with the measurement behind it."""
    t, tr, steps = through["nrp"], through["transfer"], train_logs["nrp"][-1]["steps"]
    best = max(layers["rows"], key=lambda r: r["mean_drop"])
    ssp = [(r["model"], r["adv_acc"], r["clean_acc"]) for r in results["attacks"].get("ssp16", [])
           if r["model"] in CLASSIFIERS]
    ssp_drop = max((100 * (c - a) for _, a, c in ssp), default=float("nan"))
    adaptive = [r["adv_acc"] for a in ADAPTIVE for r in results["attacks"].get(a, [])]
    return ["Reading the numbers:", "",
            f"- **The purifier removes little of a classifier's own PGD perturbation.**  It removes "
            f"{100 * (1 - t['ssp16']):.0f}% of the L2 norm of an SSP perturbation, the attack it trained on (PSNR "
            f"{t['ssp16_psnr']:.1f} -> {t['ssp16_psnr_purified']:.1f} dB), but {100 * (1 - t['pgd16']):.0f}% of PGD "
            f"16/255 made on the bare baseline (PSNR {t['pgd16_psnr']:.1f} -> {t['pgd16_psnr_purified']:.1f} dB): "
            "what it learned does not carry over to LISA-CNN gradients.",
            f"- **SSP's feature space is far from the classifiers'.**  At every extractor layer SSP at 16/255 cost the "
            f"two selection LISA-CNNs at most {100 * best['mean_drop']:.1f} points ([ssp_layers.md](ssp_layers.md)); "
            f"behind no defense it costs the evaluated classifiers at most {ssp_drop:.1f} points (ssp16 column), "
            f"while it takes the extractor itself (a LISA-18 classifier) from {_pct(tr['extractor_clean'])} to "
            f"{_pct(tr['ssp_on_extractor'])}, label-free.  The paper's premise -- feature-space adversaries "
            "of one VGG transfer widely -- is much weaker between a 32x32 VGG and LISA-CNNs, so the "
            "self-supervised training signal says little about the perturbations that break these classifiers."
            + extractor_finding(),
            f"- **Scale.**  {steps} purifier steps of 32 images on a 46k-parameter, 1-RRDB purifier (one CPU "
            "thread), against the paper's 23-RRDB purifier trained on 25k images to convergence on four GPUs."
            + scale_finding(),
            "- **The transfer source is the strongest one available**: the classifier's own weights (a grey-box "
            "attacker who lacks only the purifier).  A same-architecture surrogate transfers almost as well here "
            f"(PGD 16/255 made on the bare baseline leaves BlurNet-Tik_hf {_pct(tr['baseline_to_tik_hf'])} accuracy, "
            f"clean {_pct(tr['tik_hf_clean'])}), and a different-architecture surrogate barely transfers (made on "
            f"the VGG extractor, it leaves the baseline {_pct(tr['vgg_to_baseline'])}, clean "
            f"{_pct(tr['baseline_clean'])}): little to restore.",
            "- **Adaptive rows**: the purifier is differentiable, so PGD end to end through it is the white-box "
            "attack (BPDA, the identity on the backward pass, checks that its gradient does not mislead); NRP does "
            "not claim "
            f"white-box robustness, and the adaptive rows leave at most {_pct(max(adaptive, default=None))} "
            "accuracy.", ""]


EXTRACTOR_STUDY = (
    "Extractor study ([extractor.md](extractor.md)): `signguard train --config configs/nrp_extractor.yaml --set "
    "model.name=lisa_cnn --set name=nrp_extractor_lisa --run-dir runs/nrp/extractor_lisa`, `python "
    "bench/nrp_report.py layers --extractor runs/nrp/extractor_lisa --layers conv1,conv2,conv3 --stem "
    "ssp_layers_lisa_cnn`, purifiers `signguard nrp train --config configs/nrp.yaml --set "
    "extractor=runs/nrp/extractor_lisa --set layer=conv2 --run-dir runs/nrp/purifier_lisa` (and, larger and longer, "
    "`--set ssp.steps=10 --set ssp.alpha=0.0078431 --set optim.epochs=4 --set purifier.nf=32 --set purifier.gc=16 "
    "--set purifier.blocks=2 --run-dir runs/nrp/purifier_lisa_big`), then the `Regenerate` line of extractor.md.")


def extractor_finding() -> str:
    """The measured answer to "is it the extractor?", when the LISA-CNN-extractor study has run
    (``ssp_layers_lisa_cnn.json`` and ``extractor.json`` from ``bench/nrp_scale.py --stem extractor``)."""
    layers, study = OUT / "ssp_layers_lisa_cnn.json", OUT / "extractor.json"
    if not (layers.is_file() and study.is_file()):
        return ""
    lay, s = json.loads(layers.read_text(encoding="utf-8")), json.loads(study.read_text(encoding="utf-8"))
    first = next(iter(s["training"]))  # the recipe's (VGG-extractor) purifier; the others use the LISA-CNN one
    best = max(lay["rows"], key=lambda r: r["mean_drop"])
    other = [c for c in s["cells"] if c["purifier"] != first]
    syn = [c for c in other if c["classifier"] != "gtsrb32"]
    gtsrb = [c for c in other if c["classifier"] == "gtsrb32"]
    return (f"  Measured ([extractor.md](extractor.md)): with a LISA-CNN extractor (the classifiers' own "
            f"architecture, trained on the seed-7 signs) SSP at `{best['layer']}` costs the selection LISA-CNNs "
            f"{100 * best['mean_drop']:.1f} points ([ssp_layers_lisa_cnn.md](ssp_layers_lisa_cnn.md)), and "
            f"purifiers trained on it restore at most {100 * max(c['restored'] for c in syn):.1f}% on the synthetic "
            f"signs under the same PGD 16/255, at a GTSRB-32 clean cost of up to "
            f"{100 * max(c['clean_bare'] - c['clean'] for c in gtsrb):.1f} points: closer feature spaces help "
            "a little, not to the target.")


def scale_finding() -> str:
    """The measured answer to the scale bullet, when ``bench/nrp_scale.py`` has run (``scale.json``)."""
    path = OUT / "scale.json"
    if not path.is_file():
        return ""
    s = json.loads(path.read_text(encoding="utf-8"))
    first = next(iter(s["training"]))  # the recipe's purifier; the others are the scaled-up runs
    bigger = [c for c in s["cells"] if c["purifier"] != first]
    runs = [t for k, t in s["training"].items() if k != first]
    longest, largest = max(runs, key=lambda t: t["steps"]), max(runs, key=lambda t: t["params"])
    through = [c["let_through"] for c in bigger]
    return (f"  Measured ([scale.md](scale.md)): on a GPU, purifiers trained for up to {longest['steps']} steps of "
            f"{longest['batch']} with a {longest['ssp_steps']}-step SSP, with up to {largest['params']:,} "
            f"parameters, restore at most {100 * max(c['restored'] for c in bigger):.1f}% under the same transferred "
            f"PGD 16/255 and let {min(through):.2f}-{max(through):.2f} of it through: more steps and width remove "
            "SSP better, not PGD -- scale is not what limits it here.")


def markdown(results, clean, rows, layers, train_logs, device, through) -> str:
    n = (_row(results, "pgd16_transfer", "baseline") or {}).get("n", "?")
    restored = sorted((r.get("pgd16_transfer", {}).get("restored", 0.0), r["classifier"]) for r in rows)[::-1]
    ok = [c for v, c in restored if v >= 0.8]
    second = restored[1][0] if len(restored) > 1 else 0.0
    lines = ["# NRP: a purifier trained once, label-free, in front of classifiers it never saw", "",
             "Regenerate (in order; each step caches): `signguard train --config configs/nrp_extractor.yaml "
             "--run-dir runs/nrp/extractor`, `python bench/nrp_report.py layers`, `runs/nrp` purifiers by "
             "`signguard nrp train --config configs/nrp.yaml --run-dir runs/nrp/purifier` (ablations: `--set "
             "loss.lam=0 --run-dir runs/nrp/purifier_no_feat`, `--set loss.alpha=0 --run-dir "
             "runs/nrp/purifier_no_gan`, `--set loss.gamma=0.01 --run-dir runs/nrp/purifier_paper_weights`), then "
             "`python bench/nrp_report.py report`.", "", EXTRACTOR_STUDY, "",
             f"Machine: {machine()}.  Full sweep tables (every threat model, budget and attack parameter): "
             "[eval/report.md](eval/report.md).  SSP layer: `" + layers["chosen"] + "` of the extractor, chosen "
             "by transferability to two LISA-CNNs outside the evaluation ([ssp_layers.md](ssp_layers.md)).", "",
             "## Target: >= 80% of clean accuracy restored under transferred 16/255 PGD, >= 2 unseen classifiers",
             "", f"**{'Met' if len(ok) >= 2 else 'Not met'}**: restored >= 80% on {len(ok)} of {len(rows)} "
             f"({', '.join(ok) or 'none'}); the second-best classifier gets {_pct(second)} back"
             + ("" if len(ok) >= 2 else f", {100 * (0.8 - second):.1f} points short")
             + ".  PGD is crafted on the bare classifier (L-inf 16/255, 10 steps of 4/255, random start; "
             f"{n} test images per classifier) and scored through the purifier.", ""]
    lines += findings(results, layers, train_logs, through)
    lines += ["## Accuracy restored (transferred attacks) and clean cost", "",
             "Each cell: accuracy of the bare classifier -> behind NRP (share of the bare classifier's clean "
             "accuracy on the same images that NRP restores).  Clean accuracy on the full test split.", "",
             "| classifier | clean bare | clean NRP (cost) | " + " | ".join(TRANSFER) + " |",
             "|---|---|---|" + "---|" * len(TRANSFER)]
    for r in rows:
        cells = [f"{_pct(r[a]['bare'])} -> {_pct(r[a]['nrp'])} ({_pct(r[a]['restored'])})" if a in r else "-"
                 for a in TRANSFER]
        cost = 100 * (r["clean_bare"] - r["clean_nrp"])
        lines.append(f"| {r['classifier']} | {_pct(r['clean_bare'])} | {_pct(r['clean_nrp'])} (cost {cost:.1f} "
                     "pts) | " + " | ".join(cells) + " |")
    lines += ["", "## Adaptive white-box attacks on purifier + classifier (honest rows)", "",
              "PGD through the whole pipeline end to end (the purifier is differentiable: no BPDA needed), and "
              "with the purifier's gradient replaced by the identity (BPDA); RP2 stickers optimised through the "
              "purifier vs transferred from the bare classifier (avg / worst targeted success on held-out poses).",
              "", "| model | " + " | ".join(ADAPTIVE) + " | rp2_transfer | rp2_adaptive |", "|---|" + "---|" * 5]
    for clf in CLASSIFIERS:
        label = f"{clf}_nrp"
        cells = [_pct((_row(results, a, label) or {}).get("adv_acc")) for a in ADAPTIVE]
        for a in ("rp2_transfer", "rp2_adaptive"):
            r = _row(results, a, label)
            cells.append(f"{_pct(r['avg_asr'])} / {_pct(r['worst_asr'])}" if r else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy under PGD for the adaptive columns (64 test images each: each step back-propagates "
              "through the purifier).", "",
              "## Ablation (paper Fig. 5): each purifier behind the baseline", "",
              "Last two columns: the training run's held-out SSP examples (its own 3-step adversary), before -> after "
              "purification, and clean images passed through.", "",
              "| purifier | clean | pgd8_transfer | pgd16_transfer | ssp16 | feature distortion: SSP -> purified "
              "(clean through) | PSNR: SSP -> purified (clean through) |", "|---|---|---|---|---|---|---|"]
    for pur in PURIFIERS:
        label = "baseline_" + pur
        e = train_logs[pur][-1]
        cells = [_pct(clean[label]["test_acc"])] + [_pct((_row(results, a, label) or {}).get("adv_acc"))
                                                    for a in ("pgd8_transfer", "pgd16_transfer", "ssp16")]
        lines.append(f"| {pur} | " + " | ".join(cells) + f" | {e['dist_adv']:.3f} -> {e['dist_purified']:.3f} "
                     f"({e['dist_clean_through']:.3f}) | {e['psnr_adv']:.1f} -> {e['psnr_purified']:.1f} "
                     f"({e['psnr_clean_through']:.1f}) dB |")
    g, gp = clean["gtsrb32_nrp"], clean["gtsrb32_nrp_paper_weights"]
    lines += ["", f"GTSRB-32 clean accuracy behind the purifier: {_pct(g['test_acc'])} with the recipe's pixel weight, "
              f"{_pct(gp['test_acc'])} with the paper's (bare: {_pct(g['classifier_test_acc'])}).", ""]
    lines += ["Share of the perturbation each purifier lets through (`||P(x') - P(x)|| / ||x' - x||`, 200 baseline "
              "test images; 1 = untouched) and PSNR to the clean image before -> after purification:", "",
              "| purifier | PGD 16/255 (on the bare classifier) | PSNR | SSP 16/255 | PSNR |", "|---|---|---|---|---|"]
    for pur, t in ((k, v) for k, v in through.items() if k in PURIFIERS):
        lines.append(f"| {pur} | {t['pgd16']:.2f} | {t['pgd16_psnr']:.1f} -> {t['pgd16_psnr_purified']:.1f} dB | "
                     f"{t['ssp16']:.2f} | {t['ssp16_psnr']:.1f} -> {t['ssp16_psnr_purified']:.1f} dB |")
    lines += ["", "![training](training.png)", "", "![restored](restored.png)", "", "![examples](examples.png)", ""]
    return "\n".join(lines + device)


def let_through(x: torch.Tensor, x_adv: torch.Tensor, px: torch.Tensor, pa: torch.Tensor) -> float:
    """Mean share of a perturbation a purifier lets through, ``||P(x') - P(x)|| / ||x' - x||`` (1 = untouched)."""
    return float(((pa - px).flatten(1).norm(dim=1) / (x_adv - x).flatten(1).norm(dim=1)).mean())


def passthrough(cfg, n: int = 200) -> dict[str, dict[str, float]]:
    """How much of a perturbation each purifier lets through on the baseline's test images:
    ``||P(x') - P(x)||_2 / ||x' - x||_2`` for PGD 16/255 made on the bare classifier and for SSP 16/255 (1 =
    passed untouched, 0 = removed), and the PSNR of ``P(x')`` to ``x`` against that of ``x'``; under
    ``transfer``, how well PGD transfers between bare models here (to put the transfer rows in context)."""
    from train.attacks.pgd import PGD
    from train.attacks.ssp import SSP
    from train.checkpoint import load_checkpoint
    from train.data.datasets import load_checkpoint_data
    from train.defenses.nrp import load_purifier

    clf, meta = load_checkpoint(ROOT / CLASSIFIERS["baseline"])
    test = load_checkpoint_data(meta, progress=False).test.sample(n, 2)
    x, y = torch.from_numpy(test.x), torch.from_numpy(test.y).long()
    advs = {"pgd16": PGD(clf, eps=16 / 255, alpha=4 / 255, steps=10)(x, y).x_adv,
            "ssp16": SSP(clf, extractor=str(ROOT / EXTRACTOR), layer=json.loads((OUT / "ssp_layers.json").read_text())
                         ["chosen"], eps=16 / 255, alpha=4 / 255, steps=10)(x, y).x_adv}

    def psnr(a: torch.Tensor) -> float:
        return float((10 * torch.log10(1 / ((a - x) ** 2).flatten(1).mean(1))).mean())

    # how far PGD transfers between bare models here: LISA-CNN -> LISA-CNN, and from the (VGG) extractor
    tik, vgg = load_checkpoint(ROOT / SELECTION[0])[0], load_checkpoint(ROOT / EXTRACTOR)[0]
    from_vgg = PGD(vgg, eps=16 / 255, alpha=4 / 255, steps=10)(x, y).x_adv
    out: dict[str, dict[str, float]] = {}

    def acc(m: torch.nn.Module, xa: torch.Tensor) -> float:
        return float((m(xa).argmax(1) == y).float().mean())

    with torch.no_grad():
        out["transfer"] = {"baseline_to_tik_hf": acc(tik, advs["pgd16"]), "vgg_to_baseline": acc(clf, from_vgg),
                           "tik_hf_clean": acc(tik, x), "baseline_clean": acc(clf, x),
                           "ssp_on_extractor": acc(vgg, advs["ssp16"]), "extractor_clean": acc(vgg, x)}
        for name, d in PURIFIERS.items():
            pur = load_purifier(ROOT / d)[0]
            px = pur(x)
            for a, xa in advs.items():
                pa = pur(xa)
                out.setdefault(name, {})[a] = let_through(x, xa, px, pa)
                out[name][f"{a}_psnr"], out[name][f"{a}_psnr_purified"] = psnr(xa), psnr(pa)
    return out


def run_report() -> None:
    from train.eval.sweep_config import load_sweep
    from train.eval.sweep_runner import run_sweep

    cfg = load_sweep(SWEEP, root=ROOT)  # relative: the report's regenerate line names configs/eval/nrp.yaml
    clean = attach_all(cfg)
    results = run_sweep(cfg, OUT / "eval", progress=False)
    rows = restoration_rows(results, clean)
    logs = {p: [json.loads(x) for x in (ROOT / d / "log.jsonl").read_text().splitlines()]
            for p, d in PURIFIERS.items()}
    steps = {p: [json.loads(x) for x in (ROOT / d / "steps.jsonl").read_text().splitlines()]
             for p, d in PURIFIERS.items()}
    from nrp_plots import plot_examples, plot_restored, plot_training  # bench/: the script's own folder

    plot_training(steps, OUT)
    plot_restored(rows, TRANSFER, OUT)
    plot_examples(cfg.models["baseline_nrp"], OUT)
    through = passthrough(cfg)
    from nrp_device import device_checks  # bench/ is the script's own folder on sys.path

    device = device_checks(ROOT, OUT, str(Path(cfg.models["baseline_nrp"]).relative_to(ROOT)))
    layers = json.loads((OUT / "ssp_layers.json").read_text())
    last = {p: log[-1] for p, log in logs.items()}
    atomic_write_json(OUT / "summary.json", {"restoration": rows, "clean": clean, "train": last,
                                             "passthrough": through})
    atomic_write_text(OUT / "README.md", markdown(results, clean, rows, layers, logs, device, through))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["layers", "report"])
    p.add_argument("--n", type=int, default=300, help="layers: test images of the selection classifier")
    p.add_argument("--steps", type=int, default=30, help="layers: SSP iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extractor", default=EXTRACTOR, help="layers: the extractor run (default: the recipe's)")
    p.add_argument("--layers", default=",".join(LAYERS), help="layers: comma-separated module names to attack")
    p.add_argument("--stem", default="ssp_layers", help="layers: output file stem under reports/nrp/")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.chdir(ROOT)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.stage == "layers":
        from nrp_layers import layer_study, write_layers

        layers = tuple(x for x in args.layers.split(",") if x)
        write_layers(layer_study(args.n, 16 / 255, args.steps, args.seed, args.extractor, layers), args.stem)
        return 0
    run_report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
