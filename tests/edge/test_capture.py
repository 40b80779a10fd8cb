"""Pipelined capture: files never drop, live sources drop the oldest frame (never an event), errors surface.

Determinism without clocks: a test source sets an Event once the decode thread has handed over its
last item, and the consumer waits for that Event before taking anything, so what is in the queue is
known exactly.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, List

import numpy as np
import pytest

from edge.capture import Captured, InlineCapture, PipelinedCapture, open_capture
from edge.errors import SourceError
from edge.events import SourceEvent
from edge.sources import FrameSource


class Scripted(FrameSource):
    """Yields ``n`` frames (frame i is filled with i), optionally an event after frame ``event_after``;
    ``done`` is set once everything has been taken from the generator."""

    def __init__(self, n: int, live: bool, event_after: int = -1, fail_after: int = -1) -> None:
        self.n, self.live, self.event_after, self.fail_after = n, live, event_after, fail_after
        self.done = threading.Event()
        self.closed = False
        self.uri = "scripted://%d" % n

    def __iter__(self) -> Iterator[Any]:
        try:
            for i in range(self.n):
                if i == self.fail_after:
                    raise SourceError("scripted://: the camera caught fire at frame %d" % i)
                yield i, np.full((4, 4, 3), i, np.uint8)
                if i == self.event_after:
                    yield SourceEvent("disconnect", i, "scripted outage")
        finally:
            self.closed = True
        self.done.set()


def _drain(cap: Any, limit: int = 100) -> List[Any]:
    out: List[Any] = []
    while True:
        batch = cap.take(limit, lambda: False)
        if batch is None:
            return out
        out.extend(batch)


def test_file_source_never_drops_and_keeps_order_when_the_consumer_lags() -> None:
    src = Scripted(40, live=False, event_after=17)
    cap = PipelinedCapture(src, maxsize=4)
    items = _drain(cap, limit=3)
    cap.close()
    frames = [i for i in items if isinstance(i, Captured)]
    assert [c.index for c in frames] == list(range(40)) and cap.dropped == 0
    assert all(int(c.frame[0, 0, 0]) == c.index for c in frames)
    kinds = [type(i).__name__ for i in items]
    assert kinds[18] == "SourceEvent" and items[18].kind == "disconnect"  # in place: after frame 17
    assert src.closed


def test_live_source_drops_the_oldest_frames_but_never_an_event() -> None:
    src = Scripted(20, live=True, event_after=3)
    cap = PipelinedCapture(src, maxsize=5)
    assert src.done.wait(60), "the decode thread should never block on a live source"
    items = _drain(cap)
    cap.close()
    frames = [i.index for i in items if isinstance(i, Captured)]
    assert frames == list(range(15, 20)) and cap.dropped == 15  # the newest five frames survive
    assert [i.kind for i in items if isinstance(i, SourceEvent)] == ["disconnect"]


def test_take_batches_what_is_queued_and_stops_at_events() -> None:
    src = Scripted(6, live=False, event_after=2)
    cap = PipelinedCapture(src, maxsize=8)
    assert src.done.wait(60)
    sizes = []
    while True:
        batch = cap.take(2, lambda: False)
        if batch is None:
            break
        sizes.append([i.index if isinstance(i, Captured) else i.kind for i in batch])
    cap.close()
    assert sizes == [[0, 1], [2], ["disconnect"], [3, 4], [5]]


def test_an_error_in_the_decode_thread_is_raised_in_the_loop() -> None:
    cap = PipelinedCapture(Scripted(10, live=False, fail_after=4), maxsize=8)
    with pytest.raises(SourceError, match="caught fire at frame 4"):
        _drain(cap)
    cap.close()


def test_close_stops_a_producer_blocked_on_a_full_queue_and_closes_the_source() -> None:
    src = Scripted(10 ** 6, live=False)
    cap = PipelinedCapture(src, maxsize=2)
    assert [c.index for c in cap.take(1, lambda: False)] == [0]
    cap.close()  # the producer is blocked waiting for room; close must wake it and join
    assert not cap._thread.is_alive() and src.closed


def test_stop_flag_ends_take_without_consuming() -> None:
    cap = PipelinedCapture(Scripted(3, live=False), maxsize=8)
    assert cap.take(8, lambda: True) is None
    cap.close()


def test_plain_iterables_are_read_inline_and_frame_sources_pipelined() -> None:
    frames = [(0, np.zeros((2, 2, 3), np.uint8)), (1, None)]
    inline = open_capture(frames)
    assert isinstance(inline, InlineCapture)
    got = _drain(inline)
    assert [(c.index, c.frame is None) for c in got] == [(0, False), (1, True)]
    piped = open_capture(Scripted(2, live=False))
    assert isinstance(piped, PipelinedCapture)
    piped.close()
    assert isinstance(open_capture(Scripted(2, live=False), queue_size=0), InlineCapture)
