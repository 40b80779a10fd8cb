"""``signguard`` command line: a registry of thin subcommands (parse -> call -> exit code).

Each subcommand lives in a module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs,
so ``signguard run`` works on a device without torch and a subcommand whose
optional dependency is missing still shows in ``--help`` and says what to
install.  :class:`edge.errors.SignguardError` becomes a one-line message and
exit code 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from edge.errors import SignguardError

# name -> (module, help, what to install when the module's imports fail)
COMMANDS = {
    "train": ("train.commands.train_cmd", "train a classifier (+ defense) from a recipe YAML", "signguard[train]"),
    "export": ("train.commands.export_cmd", "export a checkpoint to an ONNX deployment bundle", "signguard[train]"),
    "render": ("train.commands.render_cmd", "render synthetic signs: contact sheet or drive-by video",
               "signguard"),
    "engine": ("edge.engine_cli", "build or reuse the TensorRT engine of a bundle (on the device)",
               "signguard[edge,jetson]"),
    "run": ("edge.cli", "run the camera/video loop on a bundle (torch-free)", "signguard[edge]"),
    "attack": ("train.commands.attack_cmd", "make one attack artifact: RP2 sticker, UAP or PGD examples",
               "signguard[train]"),
    "eval": ("train.commands.eval_cmd", "robustness sweep: models x attacks -> tables and plots", "signguard[train]"),
    "verify": ("train.commands.verify_cmd", "check every precision of a bundle: accuracy and attack success",
               "signguard[train]"),
    "bench": ("train.commands.bench_cmd", "benchmark a bundle: size, accuracy, attack success, latency per format",
              "signguard[train]"),
    "demo": ("train.demo", "end-to-end demo on the embedded synthetic signs", "signguard[train,edge]"),
}


def _load(name: str):
    module, _, extra = COMMANDS[name]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SignguardError(f"'signguard {name}' needs more packages: pip install '{extra}' ({e})") from None


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
    level = logging.DEBUG if top.debug else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        module = _load(top.command)
        sub = argparse.ArgumentParser(prog=f"signguard {top.command}", description=COMMANDS[top.command][1])
        module.add_arguments(sub)
        args = sub.parse_args(rest)
        return int(module.run(args) or 0)
    except SignguardError as e:
        if top.debug:
            raise
        print(f"signguard {top.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"signguard {top.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
