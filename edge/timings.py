"""Per-stage latency statistics of the device loop: p50 and p99 over every frame, in bounded memory.

Why a histogram rather than a list of samples: a camera loop runs for hours
(30 FPS for a day is 2.6 million frames per stage), so the quantiles are read
from log-spaced bins, 0.5 % wide, covering 1 microsecond to 1000 seconds.  A
quantile is the geometric centre of the bin holding it, so it is within
0.25 % of an exact order statistic -- far below the run-to-run noise of any
timing -- and the memory is a fixed few kilobytes per stage.  Samples are
buffered and binned a few hundred at a time with numpy, so recording a frame's
stages costs a list append each, not a Python-level histogram update.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

# Stages of the loop, in order: capture = the source's read, queue = wait between capture and processing,
# localize (only with --roi detect: localizer + tracker), preprocess, gate (only when the bundle has a gate),
# infer, total = capture start to logged record.
STAGES = ("capture", "queue", "localize", "preprocess", "gate", "infer", "total")

_LO_MS, _HI_MS = 1e-3, 1e6
_RATIO = 1.005
_NBINS = int(math.ceil(math.log(_HI_MS / _LO_MS) / math.log(_RATIO)))
_FLUSH = 256  # samples buffered per stage before they are binned


class LatencyHistogram:
    """Counts of latencies (ms) in log-spaced bins; :meth:`quantile` returns a bin's geometric centre."""

    def __init__(self) -> None:
        self.counts = np.zeros(_NBINS + 2, np.int64)  # [under, bins..., over]
        self.n = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, ms: float) -> None:
        self.extend([ms])

    def extend(self, values: Iterable[float]) -> None:
        """Bin many samples at once (non-finite ones are ignored)."""
        v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if not v.size:
            return
        b = 1 + np.floor(np.log(np.maximum(v, _LO_MS) / _LO_MS) / math.log(_RATIO)).astype(np.int64)
        b = np.minimum(b, _NBINS)
        b[v < _LO_MS] = 0
        b[v >= _HI_MS] = _NBINS + 1
        self.counts += np.bincount(b, minlength=_NBINS + 2)
        self.n += int(v.size)
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))

    def quantile(self, q: float) -> Optional[float]:
        """The ``q`` quantile (0..1) in ms, None when empty; the minimum and maximum are exact."""
        if self.n == 0:
            return None
        rank = max(1, int(math.ceil(q * self.n)))  # nearest-rank definition
        if rank == 1 or rank >= self.n:  # the extremes are kept exactly
            return self.min if rank == 1 else self.max
        b = int(np.searchsorted(np.cumsum(self.counts), rank))
        if b == 0:
            value = self.min
        elif b == _NBINS + 1:
            value = self.max
        else:
            value = _LO_MS * _RATIO ** (b - 1 + 0.5)
        return min(max(value, self.min), self.max)


class StageTimes:
    """One histogram per stage; ``summary()`` gives ``{stage: {"p50", "p99", "n"}}``, ``None`` for stages
    that never ran (the gate without a gate)."""

    def __init__(self, stages: Sequence[str] = STAGES) -> None:
        self.stages = tuple(stages)
        self.hist: Dict[str, LatencyHistogram] = {s: LatencyHistogram() for s in self.stages}
        self._pending: Dict[str, List[float]] = {s: [] for s in self.stages}

    def add(self, latency_ms: Dict[str, float]) -> None:
        for stage, ms in latency_ms.items():
            pending = self._pending.get(stage)
            if pending is not None:
                pending.append(ms)
                if len(pending) >= _FLUSH:
                    self._flush(stage)

    def _flush(self, stage: str) -> None:
        self.hist[stage].extend(self._pending[stage])
        self._pending[stage] = []

    def summary(self) -> Dict[str, Optional[Dict[str, float]]]:
        for stage in self.stages:
            self._flush(stage)
        out: Dict[str, Optional[Dict[str, float]]] = {}
        for stage, h in self.hist.items():
            if h.n == 0:
                out[stage] = None
                continue
            out[stage] = {"p50": round(float(h.quantile(0.5)), 4), "p99": round(float(h.quantile(0.99)), 4),
                          "n": h.n}
        return out

    def medians(self) -> Dict[str, float]:
        """Median per stage that ran (the summary's ``latency_ms``, kept for readers of issue-4 summaries)."""
        for stage in self.stages:
            self._flush(stage)
        return {s: float(h.quantile(0.5)) for s, h in self.hist.items() if h.n}
