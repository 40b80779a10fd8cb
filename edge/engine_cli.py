"""``signguard engine --bundle B --precision fp16``: build (or reuse) the TensorRT engine on the device.

Torch-free, for the Jetson.  ``--trtexec`` only prints the equivalent
``trtexec`` command for a given TensorRT version and GPU name, which works
anywhere (no TensorRT needed) -- useful to build by hand or in a container.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder written by `signguard export`")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"))
    p.add_argument("--batch", type=int, nargs=3, default=(1, 8, 32), metavar=("MIN", "OPT", "MAX"),
                   help="optimisation profile batch sizes (default 1 8 32)")
    p.add_argument("--workspace-mib", type=int, default=1024, help="builder workspace memory pool (MiB)")
    p.add_argument("--timing-cache", help="timing cache file, read and updated (speeds up rebuilds)")
    p.add_argument("--int8-mode", default="auto", choices=("auto", "explicit", "implicit"),
                   help="int8 from the Q/DQ ONNX (explicit) or the FP32 ONNX + calibration cache (implicit, TRT 8.x)")
    p.add_argument("--rebuild", action="store_true", help="build even if the bundle has a matching engine")
    p.add_argument("--trtexec", action="store_true", help="only print the equivalent trtexec command")
    p.add_argument("--trt-version", default="10.3.0", help="with --trtexec: the device's TensorRT version")
    p.add_argument("--gpu", default="Orin sm87", help="with --trtexec: the device's GPU name")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .manifest import read_manifest
    from .trt_plan import plan_engine

    if args.trtexec:
        plan = plan_engine(read_manifest(args.bundle), args.bundle, args.precision, args.trt_version, args.gpu,
                           batch=tuple(args.batch), workspace_mib=args.workspace_mib, timing_cache=args.timing_cache,
                           int8_mode=args.int8_mode, rebuild=True)
        print("cd %s && %s" % (Path(args.bundle), plan.entry["trtexec"]))
        return 0
    from .trt_build import ensure_engine

    path = ensure_engine(args.bundle, args.precision, batch=tuple(args.batch), workspace_mib=args.workspace_mib,
                         timing_cache=args.timing_cache, rebuild=args.rebuild, int8_mode=args.int8_mode)
    print("engine: %s (recorded in %s)" % (path, Path(args.bundle) / "manifest.json"))
    return 0
