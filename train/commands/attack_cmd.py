"""``signguard attack rp2|uap|pgd CHECKPOINT --out DIR``: make and save one attack artifact.

* ``rp2``: a printable sticker for one target (PNG + PDF at the physical
  size, mask, JSON), a preview grid of held-out views, and its held-out
  success rate.
* ``uap``: a universal perturbation (``.npy`` + JSON sidecar) fitted on
  training images of the checkpoint's recipe and scored (fooling ratio) on
  held-out test images it never saw.
* ``pgd``: adversarial copies of held-out sign views (``.npz``) with their
  success rate.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.classes import LISA_CLASSES

    sub = p.add_subparsers(dest="kind", required=True)
    for name, help_text in (("rp2", "RP2 sticker for one target class"), ("uap", "universal perturbation"),
                            ("pgd", "PGD adversarial examples of sign views")):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("checkpoint", help="run folder or model.json of a trained model")
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--sign", default="stop", choices=LISA_CLASSES, help="sign class to attack")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--views", type=int, default=40, help="optimisation / evaluation views (poses)")
        if name == "rp2":
            q.add_argument("--target", default="speedLimit45", choices=LISA_CLASSES)
            q.add_argument("--steps", type=int, default=300)
            q.add_argument("--lam", type=float, default=0.002, help="weight of ||M . delta||_2 (paper's lambda)")
            q.add_argument("--mask", default="bars", help="bars, sign, or a PNG (white = sticker)")
            q.add_argument("--palette", help="printable colours, one RGB per line (default: shipped palette)")
            q.add_argument("--dct-dim", type=int, default=0, help="low-frequency variant (BlurNet Eq. 8)")
            q.add_argument("--sign-width-mm", type=float, default=750.0, help="physical sign width")
            q.add_argument("--dpi", type=int, default=150)
        elif name == "uap":
            q.add_argument("--xi", type=float, help="budget (default: the papers' 10/255 L-inf)")
            q.add_argument("--norm", default="linf", choices=["linf", "l2"])
            q.add_argument("--method", default="uap", choices=["uap", "spgd"],
                           help="uap: Moosavi-Dezfooli's DeepFool loop; spgd: stochastic PGD (faster, stronger)")
            q.add_argument("--n", type=int, default=500, help="training images to fit it on")
            q.add_argument("--n-test", type=int, default=1000, help="held-out test images to score it on")
        else:
            q.add_argument("--eps", type=float, default=8 / 255)
            q.add_argument("--steps", type=int, default=10)
            q.add_argument("--alpha", type=float, default=0.01)
            q.add_argument("--loss", default="ce", choices=["ce", "margin"])
            q.add_argument("--restarts", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from edge.fileio import atomic_write_bytes, atomic_write_json

    from ..attacks.views import render_views
    from ..checkpoint import load_checkpoint, read_sidecar
    from ..data.classes import LISA_INDEX

    model, meta = load_checkpoint(args.checkpoint)
    _, side = read_sidecar(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cls = LISA_INDEX[args.sign]
    if args.kind == "rp2":
        from ..attacks.rp2 import RP2, evaluate_stickers, save_rp2_sticker

        target = LISA_INDEX[args.target]
        train_v = render_views(cls, args.views, args.seed * 2 + 1)
        held = render_views(cls, args.views, args.seed * 2 + 2)
        res = RP2(model, steps=args.steps, lam=args.lam, mask=args.mask, palette=args.palette, dct_dim=args.dct_dim,
                  progress=True)(train_v, [target], seed=args.seed)
        ev = evaluate_stickers(model, held, res)
        rate = ev["per_target"][0]["targeted_success"]
        paths = save_rp2_sticker(out, model, held, res, ev, 0, args.sign_width_mm, args.dpi,
                                 {"model_sha256": side["weights_sha256"]})
        print(f"rp2 {args.sign} -> {args.target}: {100 * rate:.1f}% targeted success on {len(held)} held-out poses "
              f"(clean accuracy {100 * ev['clean_accuracy']:.1f}%)\nsticker: {paths['sticker_png']}, "
              f"{paths['sticker_pdf']}")
    elif args.kind == "uap":
        from ..attacks.base import eval_mode
        from ..attacks.uap import UAP, SPGDUniversal, apply_universal, default_xi, save_perturbation
        from ..data.datasets import load_checkpoint_data
        from ..eval.metrics import accuracy

        data = load_checkpoint_data(meta)
        rng = np.random.default_rng(args.seed)
        fit_idx = rng.permutation(len(data.train))[: args.n]
        test_idx = rng.permutation(len(data.test))[: args.n_test]
        x_fit = torch.from_numpy(data.train.x[fit_idx])
        x_test, y_test = torch.from_numpy(data.test.x[test_idx]), torch.from_numpy(data.test.y[test_idx]).long()
        make = UAP if args.method == "uap" else SPGDUniversal
        kw = {"batch_size": 8} if args.method == "uap" else {}
        attack = make(model, xi=args.xi, norm=args.norm, progress=True, **kw)
        with eval_mode(model):
            v = attack.fit(x_fit, seed=args.seed)
        fit_res = apply_universal(model, x_fit, torch.from_numpy(data.train.y[fit_idx]).long(), v)
        test_res = apply_universal(model, x_test, y_test, v)
        v = v.cpu().numpy()
        norm = float(np.abs(v).max() if args.norm == "linf" else np.linalg.norm(v))
        fr, fr_test = float(fit_res.info["fooling_ratio"]), float(test_res.info["fooling_ratio"])
        save_perturbation(out / "uap.npy", v, {
            "method": args.method, "norm": args.norm,
            "xi": default_xi(args.norm, v.size) if args.xi is None else args.xi,  # the budget; ||v|| may be below
            "fooling_ratio": fr, "n_images": len(x_fit), "heldout_fooling_ratio": fr_test,
            "heldout_images": len(x_test),
            "heldout_accuracy": accuracy(test_res.info["pred_adv"], y_test.numpy()),
            "model_hash": side["weights_sha256"], "seed": args.seed})
        print(f"{args.method} ({args.norm}, ||v|| = {norm:.4f}): fooling ratio {100 * fr:.1f}% on the {len(x_fit)} "
              f"training images it was fitted on, {100 * fr_test:.1f}% on {len(x_test)} held-out test images "
              f"-> {out / 'uap.npy'}")
    else:
        from ..attacks.pgd import PGD

        held = render_views(cls, args.views, args.seed * 2 + 2)
        y = torch.full((len(held),), cls, dtype=torch.long)
        r = PGD(model, eps=args.eps, alpha=args.alpha, steps=args.steps, loss=args.loss,
                restarts=args.restarts)(held.x, y, seed=args.seed)
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, x=held.x.numpy(), x_adv=r.x_adv.numpy(), y=y.numpy(), pred_adv=r.info["pred_adv"])
        atomic_write_bytes(out / "pgd.npz", buf.getvalue())
        rate = r.success_rate
        atomic_write_json(out / "pgd.json", {"eps": args.eps, "steps": args.steps, "alpha": args.alpha,
                                             "loss": args.loss, "restarts": args.restarts,
                                             "success_rate": rate, "model_sha256": side["weights_sha256"]})
        print(f"pgd eps={args.eps:.4f}: {100 * rate:.1f}% of {len(y)} views misclassified -> {out / 'pgd.npz'}")
    return 0
