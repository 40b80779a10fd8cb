"""``signguard`` command line: a registry of thin subcommands (parse -> call -> exit code).

Each subcommand lives in a module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs,
so ``signguard run`` works on a device without torch and a subcommand whose
optional dependency is missing still shows in ``--help`` and says what to
install: before a subcommand's module is imported, the packages of the extras
it needs are looked up, and a missing one is one line naming the extra and the
pip command, exit code 2 -- never a ``ModuleNotFoundError`` traceback.
:class:`edge.errors.SignguardError` becomes a one-line message and exit code
1; ``--debug`` (before or after the subcommand) shows the traceback.

This module is the console entry point on every install, the device's
torch-free ``[edge]`` one included: it imports nothing beyond ``edge.errors``
and the standard library, and supports Python 3.8.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from typing import List, Optional, Sequence, Tuple

from edge.errors import SignguardError

# the import names each extra of pyproject.toml provides (what a subcommand's code imports)
EXTRAS = {
    "train": ("torch", "safetensors", "yaml", "onnx", "onnxscript", "onnxslim", "tqdm", "matplotlib"),
    "edge": ("onnxruntime",),
    "report": ("matplotlib",),
}

# name -> (module, help, extras it needs)
COMMANDS = {
    "train": ("signguard.commands.train_cmd", "train a classifier (+ defense) from a recipe YAML", ("train",)),
    "export": ("signguard.commands.export_cmd", "export a checkpoint to an ONNX deployment bundle", ("train",)),
    "render": ("signguard.commands.render_cmd", "render synthetic signs: contact sheet or drive-by video", ()),
    "engine": ("edge.engine_cli", "build or reuse the TensorRT engine of a bundle (on the device)", ("edge",)),
    "run": ("edge.cli", "run the camera/video loop on a bundle (torch-free)", ("edge",)),
    "attack": ("signguard.commands.attack_cmd", "make one attack artifact: RP2 sticker, UAP or PGD examples",
               ("train",)),
    "eval": ("signguard.commands.eval_cmd", "robustness sweep: models x attacks -> tables and plots", ("train",)),
    "verify": ("signguard.commands.verify_cmd", "check every precision of a bundle: accuracy and attack success",
               ("train", "edge")),
    "bench": ("signguard.commands.bench_cmd", "benchmark a bundle: size, accuracy, attack success, latency per format",
              ("train", "edge")),
    "demo": ("signguard.demo", "end-to-end demo on the embedded synthetic signs", ("train", "edge")),
    "localizer": ("signguard.commands.localizer_cmd",
                  "sign localizer: render scenes (COCO), train, export a detector bundle, evaluate", ("train",)),
    "nrp": ("signguard.commands.nrp_cmd", "NRP purifier: train it label-free, attach it in front of a classifier",
            ("train",)),
    "field-report": ("signguard.commands.field_report_cmd",
                     "drive-by frame logs -> accuracy / attack success, Wilson intervals, by size, plots (torch-free)",
                     ("report",)),
}


class MissingExtra(Exception):
    """A subcommand's optional dependencies are not installed (exit code 2)."""


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _install_hint(name: str, extras: Sequence[str], missing: Sequence[str]) -> str:
    spec = "signguard[%s]" % ",".join(extras) if extras else "signguard"
    return "'signguard %s' needs the %s extra (missing: %s): pip install '%s'" % (
        name, " and ".join(extras) or "base", ", ".join(missing), spec)


def missing_packages(name: str) -> Tuple[List[str], List[str]]:
    """(extras, missing import names) of subcommand ``name``; the second list is empty when all are present."""
    extras = list(COMMANDS[name][2])
    return extras, [m for e in extras for m in EXTRAS[e] if not _installed(m)]


def _load(name: str):
    extras, missing = missing_packages(name)
    if missing:
        raise MissingExtra(_install_hint(name, extras, missing))
    try:
        return importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as e:
        raise MissingExtra(_install_hint(name, extras, [e.name or str(e)])) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signguard", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        parser.print_help()
        return 2
    debug = top.debug
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        module = _load(top.command)
        sub = argparse.ArgumentParser(prog=f"signguard {top.command}", description=COMMANDS[top.command][1])
        module.add_arguments(sub)
        sub.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
        args = sub.parse_args(rest)
        debug = debug or args.debug  # `signguard run --debug ...` means `signguard --debug run ...`
        if debug:
            logging.getLogger().setLevel(logging.DEBUG)
        try:
            return int(module.run(args) or 0)
        except ModuleNotFoundError as e:  # an optional package imported lazily inside the command
            if debug:
                raise
            raise MissingExtra(_install_hint(top.command, COMMANDS[top.command][2], [e.name or str(e)])) from None
    except MissingExtra as e:
        print(f"signguard {top.command}: error: {e}", file=sys.stderr)
        return 2
    except SignguardError as e:
        if debug:
            raise
        print(f"signguard {top.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"signguard {top.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
