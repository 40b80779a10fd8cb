"""Benchmark a bundle, Ultralytics-style: one row per format x precision x backend.

Each row: status, file size, clean accuracy, success of a PGD attack crafted
on the PyTorch model and transferred, and latency (p50/p99 ms per image) at
batch 1 and at a larger batch, with throughput.  Latencies are medians of
repeated timed runs after warm-up; nothing here asserts a speed (machines
are shared and noisy) -- the table is the measurement, with the machine.

Every runtime runs with the same number of intra-op threads (``threads``,
default 1), recorded in the result.  Why: PyTorch's OpenMP threads
busy-wait at the barrier that ends each parallel operator; on a machine
whose cores are also busy with other work (a 2-core VM, a Jetson running a
camera pipeline) a 2-thread PyTorch spends most of a batch-32 forward
spinning while its partner thread is descheduled -- 4.4 ms of CPU per image
against 1.2 ms with ``OMP_WAIT_POLICY=PASSIVE`` or one thread -- whereas at
batch 1 the operators are below PyTorch's parallelisation grain and run on
one thread.  That is the "batch 32 slower per image than batch 1" anomaly of
issue 14 (reports/deploy/README.md has the measurement).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from edge.bundle import load_bundle
from edge.manifest import read_manifest, whole_model_entries


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": ort.__version__, "torch_threads": torch.get_num_threads()}


def time_interleaved(fns: Sequence[Callable[[np.ndarray], Any]], x: np.ndarray, repeats: int,
                     warmup: int = 3) -> list[np.ndarray]:
    """Wall-clock seconds of ``repeats`` calls of each ``fn(x)``, taken in rounds (one call of each per round, the
    order rotating) after ``warmup`` untimed calls each.

    Why rounds: on a shared or throttling machine the load drifts over a run; timing one function after another
    would hand one of them the busy minutes, and the ratios the bench exists for (INT8 vs FP32, gate on vs off)
    would measure the load.  Interleaved, every row sees the same drift."""
    for fn in fns:
        for _ in range(warmup):
            fn(x)
    out = [np.empty(repeats) for _ in fns]
    for i in range(repeats):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            t0 = time.perf_counter()
            fns[j](x)
            out[j][i] = time.perf_counter() - t0
    return out


def _latencies(fns: Sequence[Callable[[np.ndarray], Any]], x: np.ndarray, batch: int,
               repeats: int) -> list[dict[str, float]]:
    xb = np.ascontiguousarray(np.resize(x, (batch,) + x.shape[1:]), dtype=np.float32)
    out = []
    for t in time_interleaved(fns, xb, repeats):
        per_img = t / batch * 1e3
        out.append({"p50_ms": float(np.median(per_img)), "p99_ms": float(np.percentile(per_img, 99)),
                    "throughput": float(batch / np.median(t))})
    return out


def bench_bundle(bundle_dir: str | Path, model: nn.Module | None, x: np.ndarray, y: np.ndarray,
                 x_adv: np.ndarray | None, y_adv: np.ndarray | None, batch: int = 32, repeats: int = 50,
                 progress: bool = True, threads: int = 1) -> dict[str, Any]:
    """Measure every runnable row; rows that cannot run here (TensorRT off-device) say why in ``status``.

    PyTorch and onnxruntime both run with ``threads`` intra-op threads (see the module docstring)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _bench(Path(bundle_dir), model, x, y, x_adv, y_adv, batch, repeats, progress, threads)
    finally:
        torch.set_num_threads(previous)


def _bench(bundle_dir: Path, model: nn.Module | None, x: np.ndarray, y: np.ndarray, x_adv: np.ndarray | None,
           y_adv: np.ndarray | None, batch: int, repeats: int, progress: bool, threads: int) -> dict[str, Any]:
    from edge.backends import OrtBackend

    from ..progress import progress as bar

    manifest = read_manifest(bundle_dir)  # every hash checked once, here
    runners: list[tuple[str, str, str, float, Any]] = []
    if model is not None:
        model.eval()

        def torch_fn(a: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(a)).numpy()

        runners.append(("pytorch", "fp32", "eager", 0.0, torch_fn))
    gated = bool(manifest.get("gate"))
    gate_off = [e for e in manifest["models"] if gated and e["format"] == "onnx"
                and e["part"] == manifest["gate"]["no_gate_part"]]
    gates: dict[int, Any] = {}  # runner index -> gated bundle, for detection rates
    for e in whole_model_entries(manifest, "onnx") + gate_off + whole_model_entries(manifest, "engine"):
        size = (bundle_dir / e["file"]).stat().st_size / 1e6
        if e["format"] == "onnx":
            on = e not in gate_off
            b = load_bundle(bundle_dir, precision=e["precision"], verify_hashes=False, gate=on)
            b.backend = OrtBackend(b.model_path, input_name=b.backend.input_name, output_name=b.backend.output_name,
                                   threads=threads)
            label = "onnxruntime-cpu" + ("" if not gated else " gate-on" if on else " gate-off")
            if gated and on:
                gates[len(runners)] = b
            runners.append(("onnx", e["precision"], label, size, b.classify))
        else:
            try:
                b = load_bundle(bundle_dir, precision=e["precision"], backend="tensorrt", verify_hashes=False)
                runners.append(("engine", e["precision"], "tensorrt", size, b.classify))
            except Exception as err:  # no TensorRT here: the row stays, with the reason
                runners.append(("engine", e["precision"], "tensorrt", size, f"skipped: {err}"))
    rows = []
    for i, (fmt, prec, backend, size, fn) in enumerate(bar(runners, "bench", progress)):
        row: dict[str, Any] = {"format": fmt, "precision": prec, "backend": backend, "size_mb": round(size, 3)}
        if isinstance(fn, str):
            rows.append({**row, "status": fn})
            continue
        row["status"] = "ok"
        row["accuracy"] = float(np.mean(fn(x).argmax(1) == y))
        if x_adv is not None:
            row["attack_success"] = float(np.mean(fn(x_adv).argmax(1) != y_adv))
        if i in gates:  # the gate's firing rate on clean and on attacked images
            row["gate_fired_clean"] = float(np.mean(gates[i].classify_gated(x)[2]))
            if x_adv is not None:
                row["gate_fired_attacked"] = float(np.mean(gates[i].classify_gated(x_adv)[2]))
        rows.append(row)
    timed = [(row, fn) for row, (*_, fn) in zip(rows, runners) if row["status"] == "ok"]
    for key, b, n in (("batch1", 1, repeats), (f"batch{batch}", batch, max(5, repeats // 5))):
        for (row, _), lat in zip(timed, _latencies([fn for _, fn in timed], x, b, n)):
            row[key] = lat
    return {"bundle": str(bundle_dir), "batch": batch, "repeats": repeats, "n_images": int(len(x)),
            "threads": threads, "machine": machine_info(), "rows": rows}


def to_markdown(res: dict[str, Any], attack: str = "") -> str:
    b = res["batch"]
    lines = [f"| format | precision | backend | status | size (MB) | clean acc | {attack or 'attack'} success | "
             f"p50 ms/img (b1) | p99 ms/img (b1) | p50 ms/img (b{b}) | p99 ms/img (b{b}) | img/s (b{b}) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['format']} | {r['precision']} | {r['backend']} | {r['status']} | {r['size_mb']:.3f} |"
                         + " - |" * 7)
            continue
        b1, bb = r["batch1"], r[f"batch{b}"]
        asr = f"{100 * r['attack_success']:.1f}%" if "attack_success" in r else "-"
        size = f"{r['size_mb']:.3f}" if r["size_mb"] else "-"
        lines.append(f"| {r['format']} | {r['precision']} | {r['backend']} | ok | {size} | "
                     f"{100 * r['accuracy']:.2f}% | {asr} | {b1['p50_ms']:.3f} | {b1['p99_ms']:.3f} | "
                     f"{bb['p50_ms']:.4f} | {bb['p99_ms']:.4f} | {bb['throughput']:.0f} |")
    gated = [r for r in res["rows"] if "gate_fired_clean" in r]
    if gated:
        lines += ["", "| gated row | gate fires on clean | gate fires on attacked |", "|---|---|---|"]
        lines += [f"| {r['format']} {r['precision']} | {100 * r['gate_fired_clean']:.1f}% | "
                  + (f"{100 * r['gate_fired_attacked']:.1f}% |" if "gate_fired_attacked" in r else "- |")
                  for r in gated]
    m = res["machine"]
    threads = res.get("threads", m.get("torch_threads"))
    return (f"Bundle `{res['bundle']}` on {m['cpu']} ({m['cores']} cores, {m['platform']}); onnxruntime "
            f"{m['onnxruntime']}, torch {m['torch']}, {threads} intra-op thread(s) for both runtimes.  "
            f"{res['n_images']} held-out images; latency = median and "
            f"99th percentile over {res['repeats']} timed runs at batch 1 (and {max(5, res['repeats'] // 5)} at "
            f"batch {b}) after warm-up.\n\n" + "\n".join(lines) + "\n")
