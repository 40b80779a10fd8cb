"""Per-stage latency quantiles: within a quarter percent of exact order statistics, in fixed memory."""

from __future__ import annotations

import numpy as np
import pytest

from edge.timings import STAGES, LatencyHistogram, StageTimes


def test_histogram_quantiles_match_exact_order_statistics() -> None:
    rng = np.random.RandomState(0)
    samples = np.concatenate([rng.lognormal(0.0, 0.6, 20000), rng.uniform(20, 80, 300)])  # a slow tail
    h = LatencyHistogram()
    h.extend(samples)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = np.sort(samples)[int(np.ceil(q * len(samples))) - 1]  # nearest rank
        assert h.quantile(q) == pytest.approx(exact, rel=0.003), q
    assert h.quantile(0.0) == pytest.approx(samples.min(), rel=0.003) and h.quantile(1.0) == samples.max()
    size = h.counts.nbytes
    h.extend(rng.lognormal(0.0, 0.6, 50000))
    assert h.counts.nbytes == size and h.n == len(samples) + 50000  # memory does not grow with frames


def test_empty_stage_is_none_and_extremes_are_clamped() -> None:
    h = LatencyHistogram()
    assert h.quantile(0.5) is None
    h.extend([0.0, 5e-4, 2e6, float("nan")])  # below and above the binned range; NaN ignored
    assert h.n == 3 and h.quantile(0.01) == 0.0 and h.quantile(1.0) == 2e6
    t = StageTimes()
    t.add({"capture": 1.0, "preprocess": 0.2, "infer": 0.5, "total": 2.0, "not-a-stage": 9.0})
    s = t.summary()
    assert tuple(s) == STAGES and s["gate"] is None and s["queue"] is None
    assert s["infer"] == {"p50": pytest.approx(0.5, rel=0.003), "p99": pytest.approx(0.5, rel=0.003), "n": 1}
    assert set(t.medians()) == {"capture", "preprocess", "infer", "total"}
