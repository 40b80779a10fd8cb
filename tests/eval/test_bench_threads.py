"""`signguard bench` runs PyTorch and onnxruntime at the same, recorded thread count (issue 14, item 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.backends import OrtBackend
from train.eval.bench import bench_bundle, to_markdown

from ..edge.helpers import COLOUR_CLASSES, colour_weights, write_bundle


class MeanColour(nn.Module):
    """The colour bundle's network in torch (logit c = mean of channel c); records the threads it ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(torch.get_num_threads())
        return x.mean(dim=(2, 3))


def test_bench_uses_the_same_thread_count_for_every_runtime(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", [("model.onnx", "fp32", colour_weights())], COLOUR_CLASSES)
    rng = np.random.RandomState(0)
    y = rng.randint(0, 3, 24)
    x = rng.uniform(0, 0.3, (24, 3, 32, 32)).astype(np.float32)
    x[np.arange(24), y] += 0.5  # the true class is the dominant channel
    model = MeanColour()
    before = torch.get_num_threads()
    res = bench_bundle(bundle, model, x, y, None, None, batch=4, repeats=2, progress=False, threads=2)
    assert model.seen == {2} and torch.get_num_threads() == before and res["threads"] == 2
    assert [r["accuracy"] for r in res["rows"]] == [1.0, 1.0]
    assert "2 intra-op thread(s) for both runtimes" in to_markdown(res)
    assert OrtBackend(bundle / "model.onnx", threads=2).session.get_session_options().intra_op_num_threads == 2


def test_timing_rounds_interleave_the_rows_with_a_rotating_order() -> None:
    """Each row is timed once per round, the order rotating, so a load burst falls on all rows alike."""
    from train.eval.bench import time_interleaved

    calls: list[str] = []
    fns = [lambda x, n=n: calls.append(n) for n in "abc"]
    times = time_interleaved(fns, np.zeros(1), repeats=4, warmup=2)
    assert [len(t) for t in times] == [4, 4, 4] and all((t >= 0).all() for t in times)
    timed = calls[6:]  # after 2 warm-up calls of each
    assert calls[:6] == list("aabbcc")
    assert [timed[i:i + 3] for i in range(0, 12, 3)] == [list("abc"), list("bca"), list("cab"), list("abc")]
