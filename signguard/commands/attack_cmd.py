"""``signguard attack rp2|uap|pgd CHECKPOINT --out DIR``: make and save one attack artifact.

* ``rp2``: a printable sticker for one target (PNG + PDF at the physical
  size, mask, JSON), a preview grid of held-out views, and its held-out
  success rate.
* ``uap``: a universal perturbation (``.npy`` + JSON sidecar) fitted on
  training images of the checkpoint's recipe and scored (fooling ratio) on
  held-out test images it never saw.
* ``pgd``: adversarial copies of held-out sign views (``.npz``) with their
  success rate.

The workflows are :mod:`train.eval.attack_artifacts`; every attack
hyper-parameter is an option generated from the attack class's signature and
passed only when given, so the class's default applies otherwise.
"""

from __future__ import annotations

import argparse
import functools
import inspect

from .bundle_args import add_attack_options, attack_options

_HELP = {"lam": "weight of ||M . delta||_2 (paper's lambda)", "mask": "bars, sign, or a PNG (white = sticker)",
         "palette": "printable colours, one RGB per line (None: the shipped palette)",
         "dct_dim": "low-frequency variant (BlurNet Eq. 8)", "xi": "budget (None: the papers' 10/255 L-inf)",
         "norm": "linf or l2", "loss": "ce or margin"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from train.attacks.pgd import PGD
    from train.attacks.rp2 import RP2
    from train.data.classes import LISA_CLASSES
    from train.eval import attack_artifacts as art

    sub = p.add_subparsers(dest="kind", required=True)
    for name, fn, help_text in (("rp2", art.rp2_sticker, "RP2 sticker for one target class"),
                                ("uap", art.universal_perturbation, "universal perturbation"),
                                ("pgd", art.pgd_examples, "PGD adversarial examples of sign views")):
        q = sub.add_parser(name, help=help_text)
        opt = functools.partial(_option, q, fn)
        q.add_argument("checkpoint", help="run folder or model.json of a trained model")
        q.add_argument("--out", required=True, help="output folder")
        opt("--seed", "attack seed (and pose seeds)", type=int)
        if name != "uap":
            opt("--sign", "sign class to attack", choices=LISA_CLASSES)
            opt("--views", "optimisation / evaluation views (poses)", type=int)
        if name == "rp2":
            opt("--target", "target class", choices=LISA_CLASSES)
            opt("--sign-width-mm", "physical sign width", type=float)
            opt("--dpi", "print resolution", type=int)
            add_attack_options(q, [RP2], help=_HELP)
        elif name == "uap":
            opt("--method", "uap: Moosavi-Dezfooli's DeepFool loop; spgd: stochastic PGD (faster, stronger)",
                choices=sorted(art.UNIVERSAL))
            opt("--n", "training images to fit it on", type=int)
            opt("--n-test", "held-out test images to score it on", type=int)
            add_attack_options(q, art.UNIVERSAL, help=_HELP)
        else:
            add_attack_options(q, [PGD], help=_HELP)


def _option(q: argparse.ArgumentParser, fn, flag: str, text: str, **kw) -> None:
    """A workflow option of ``fn`` that defaults to None (not passed); the help quotes ``fn``'s default."""
    default = inspect.signature(fn).parameters[flag[2:].replace("-", "_")].default
    q.add_argument(flag, help=f"{text} (default: {default})", **kw)


def run(args: argparse.Namespace) -> int:
    from train.eval import attack_artifacts as art

    common = {k: v for k, v in vars(args).items() if v is not None and k in (
        "sign", "views", "seed", "target", "sign_width_mm", "dpi", "method", "n", "n_test")}
    params = attack_options(args)
    if args.kind == "rp2":
        a = art.rp2_sticker(args.checkpoint, args.out, progress=True, **common, **params)
        m = a.metrics
        print(f"rp2 {m['sign']} -> {m['target']}: {100 * m['targeted_success']:.1f}% "
              f"targeted success on {m['heldout_views']} held-out poses (clean accuracy "
              f"{100 * m['clean_accuracy']:.1f}%)\nsticker: {a.paths['sticker_png']}, {a.paths['sticker_pdf']}")
    elif args.kind == "uap":
        a = art.universal_perturbation(args.checkpoint, args.out, progress=True, **common, **params)
        m = a.metrics
        print(f"{m['method']} ({m['norm']}, ||v|| = {m['v_norm']:.4f}): fooling ratio "
              f"{100 * m['fooling_ratio']:.1f}% on the {m['n_images']} training images it was fitted on, "
              f"{100 * m['heldout_fooling_ratio']:.1f}% on {m['heldout_images']} held-out test images "
              f"-> {a.paths['perturbation']}")
    else:
        a = art.pgd_examples(args.checkpoint, args.out, progress=True, **common, **params)
        print(f"pgd eps={a.config['eps']:.4f}: {100 * a.metrics['success_rate']:.1f}% of {a.metrics['n_views']} "
              f"views misclassified -> {a.paths['examples']}")
    return 0
