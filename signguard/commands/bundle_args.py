"""Arguments shared by several commands: the bundle and its held-out draw (``verify``, ``bench``) and attack
hyper-parameters (``attack``, ``verify``, ``bench``)."""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Mapping, Sequence

#: argparse ``dest`` prefix of the options :func:`add_attack_options` adds
_PREFIX = "hp_"


def add_bundle_arguments(p: argparse.ArgumentParser, attack_n: int) -> None:
    """The bundle, its PyTorch source, and the seeded held-out draw: one spelling, so that
    ``verify`` and ``bench`` at the same ``--n/--seed`` score the same images; and the transferred PGD's
    ``--eps/--alpha/--steps`` (PGD's own defaults when not given; ``--eps 0`` disables PGD)."""
    from train.attacks.pgd import PGD

    p.add_argument("--bundle", required=True, help="bundle folder written by `signguard export`")
    p.add_argument("--checkpoint", help="the trained model (default: the bundle manifest's source.checkpoint)")
    p.add_argument("--n", type=int, default=1000, help="held-out test images for clean accuracy")
    p.add_argument("--attack-n", type=int, default=attack_n, help="of those, images attacked with PGD")
    add_attack_options(p, [PGD], only=("eps", "alpha", "steps"), help={"eps": "PGD L-inf budget (0 disables PGD)"})
    p.add_argument("--seed", type=int, default=0, help="the held-out draw and the PGD random start")


def add_attack_options(p: argparse.ArgumentParser, classes: Sequence[type] | Mapping[str, type],
                       only: Iterable[str] | None = None, help: dict[str, str] | None = None) -> None:
    """One ``--name`` option per hyper-parameter of the attack ``classes`` (their constructors' keyword
    arguments, :func:`train.attacks.base.hyperparameters`; a mapping labels each class in the help), typed
    by the annotation.  Every option defaults to None, i.e. not given: :func:`attack_options` passes only
    the given ones, so the class's default applies, and ``--help`` quotes that default from its signature."""
    import typing

    from train.attacks.base import hyperparameters

    labelled = dict(classes) if isinstance(classes, Mapping) else {c.__name__: c for c in classes}
    seen: dict[str, list[str]] = {}
    types: dict[str, Any] = {}
    for label, cls in labelled.items():
        hints = typing.get_type_hints(cls.__init__)
        for name, param in hyperparameters(cls).items():
            if only is not None and name not in only:
                continue
            prefix = f"{label} " if len(labelled) > 1 else ""
            seen.setdefault(name, []).append(f"{prefix}{_show(param.default)}")
            types.setdefault(name, _arg_type(hints.get(name)))
    for name, defaults in seen.items():
        text = (help or {}).get(name, "")
        p.add_argument(f"--{name.replace('_', '-')}", dest=_PREFIX + name, metavar=name.upper(), type=types[name],
                       default=None, help=f"{text + ' ' if text else ''}(default: {', '.join(defaults)})")


def attack_options(args: argparse.Namespace) -> dict[str, Any]:
    """The attack hyper-parameters given on the command line (see :func:`add_attack_options`)."""
    return {k[len(_PREFIX):]: v for k, v in vars(args).items() if k.startswith(_PREFIX) and v is not None}


def _show(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _arg_type(tp: Any):
    """An argparse ``type`` for an annotation: the non-None member of an optional, paths as strings,
    ``true/false`` for booleans."""
    args = [a for a in _union_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    if base is bool:
        return _bool
    return base if base in (int, float) else str


def _union_args(tp: Any) -> tuple:
    import types
    import typing

    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
