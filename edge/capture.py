"""Pipelined capture: the source is read in its own thread, into a bounded queue.

Why: decoding a frame, preprocessing it and running the model one after the
other leaves the CPU idle in each stage while the others run; OpenCV's
decoder and onnxruntime both release the GIL, so a decode thread that keeps
a few frames ready lets the loop run at the rate of its slowest stage
instead of the sum of all of them (``bench/capture_throughput.py`` measures
it).

What the queue does when the loop falls behind depends on the source:

- a **file** (video, image folder, recording) must not lose frames: the
  decode thread waits for room, so every frame is classified;
- a **live** source (camera, network stream) must not fall behind the world:
  the oldest queued frame is dropped to make room, so latency stays flat, and
  :attr:`PipelinedCapture.dropped` counts the frames dropped (the summary
  reports it).

The loop takes frames with :meth:`PipelinedCapture.take`: the next frame plus
whatever is already queued behind it (up to a limit), which it classifies
as one batch.  A loop that keeps up thus gets single frames at the lowest
latency, and one that falls behind catches up with batched inference (one
onnxruntime call per batch costs less per frame than one per frame).

Sources may yield :class:`SourceEvent` objects between frames (a stream
disconnected or reconnected, a file stopped decoding early).  Events travel
in the same queue as the frames, in order, and are never dropped, so the
frame log shows them exactly where they happened.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Iterable, Iterator, List, NamedTuple, Optional, Union

import numpy as np

from .events import SourceEvent

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 8
_POLL_S = 0.05  # how often a waiting consumer re-checks its stop flag (SIGINT/SIGTERM)


class Captured(NamedTuple):
    """One frame as the capture stage hands it over: source index, BGR frame (None: a live source lost it),
    unix time of capture, how long the read took (ms), and ``perf_counter()`` when the read started."""

    index: int
    frame: Optional[np.ndarray]
    ts: float
    capture_ms: float
    t_start: float


Item = Union[Captured, SourceEvent]


class _Failure:
    """An exception raised by the source in the decode thread, re-raised in the loop's thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def _close(it: Iterator[Any]) -> None:
    """Close a generator-based source iterator, so its ``finally`` blocks (releasing a capture) run now."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


def _read(it: Iterator[Any]) -> Iterator[Item]:
    """Time each ``next()`` of a source iterator and wrap ``(index, frame)`` pairs as :class:`Captured`."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        if isinstance(item, SourceEvent):
            yield item
            continue
        index, frame = item
        yield Captured(int(index), frame, time.time(), (time.perf_counter() - t0) * 1000.0, t0)


class InlineCapture:
    """The same interface as :class:`PipelinedCapture`, reading in the caller's thread (no queue, no drops).

    For in-memory iterables (lists, generators in tests, replays of arrays):
    there is no decoding to overlap, and reading inline keeps the order of
    side effects exact.
    """

    dropped = 0

    def __init__(self, source: Iterable[Any]) -> None:
        self._source_it = iter(source)
        self._items = _read(self._source_it)

    def take(self, limit: int, stop: Callable[[], bool]) -> Optional[List[Item]]:
        """The next item as a one-item list (nothing is ever queued here); None at the end or once ``stop()``."""
        if stop():
            return None
        item = next(self._items, None)
        return None if item is None else [item]

    def close(self) -> None:
        _close(self._source_it)


class PipelinedCapture:
    """Reads ``source`` in a daemon thread into a queue of at most ``maxsize`` frames.

    ``drop_oldest`` (default: ``source.live``) chooses the policy for a full
    queue: drop the oldest frame (live) or wait for room (files).  Iterate
    with :meth:`take`; always call :meth:`close`, which stops and joins the
    thread (so the caller may then release the source safely: OpenCV must not
    release a capture another thread is reading).
    """

    def __init__(self, source: Iterable[Any], maxsize: int = DEFAULT_QUEUE, drop_oldest: Optional[bool] = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1, got %d" % maxsize)
        self.source = source
        self.maxsize = int(maxsize)
        self.drop_oldest = bool(getattr(source, "live", False)) if drop_oldest is None else bool(drop_oldest)
        self.dropped = 0
        self._q: Deque[Any] = collections.deque()
        self._frames = 0  # frames (not events) in the queue
        self._cond = threading.Condition()
        self._closed = False
        self._ended = False
        self._thread = threading.Thread(target=self._produce, name="signguard-capture", daemon=True)
        self._thread.start()

    # -- producer (decode thread) ------------------------------------------------------------------------------
    def _put(self, item: Any) -> bool:
        """Queue ``item``; False once the capture is closed (the producer then stops)."""
        is_frame = isinstance(item, Captured)
        with self._cond:
            while is_frame and self._frames >= self.maxsize and not self._closed:
                if self.drop_oldest:
                    for queued in self._q:  # events are never dropped
                        if isinstance(queued, Captured):
                            self._q.remove(queued)
                            break
                    self._frames -= 1
                    self.dropped += 1
                    break
                self._cond.wait()
            if self._closed:
                return False
            self._q.append(item)
            self._frames += int(is_frame)
            self._cond.notify_all()
            return True

    def _produce(self) -> None:
        source_it = iter(self.source)
        try:
            for item in _read(source_it):
                if not self._put(item):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(_Failure(e))
            return
        finally:
            _close(source_it)  # runs the source generator's cleanup in the thread that ran it
        self._put(_END)

    # -- consumer (the loop's thread) --------------------------------------------------------------------------
    def take(self, limit: int, stop: Callable[[], bool]) -> Optional[List[Item]]:
        """Wait for the next item, then add the frames already queued behind it, up to ``limit`` frames.

        Never waits for a second frame (a batch is what is ready, so a loop
        that keeps up gets single frames at the lowest latency, and one that
        falls behind catches up in batches); an event is always alone.
        Returns None when the source has ended or once ``stop()`` is true.
        """
        with self._cond:
            while not self._q:
                if stop() or self._ended:
                    return None
                self._cond.wait(_POLL_S)
            if stop():
                return None
            first = self._q.popleft()
            batch: List[Item] = []
            if first is _END:
                self._ended = True
                return None
            if isinstance(first, _Failure):
                self._ended = True
                raise first.error
            batch.append(first)
            if isinstance(first, Captured):
                while self._q and len(batch) < limit and isinstance(self._q[0], Captured):
                    batch.append(self._q.popleft())
                self._frames -= len(batch)
            self._cond.notify_all()
            return batch

    def close(self) -> None:
        """Stop the decode thread and wait for it (a read in progress ends within the source's read timeout)."""
        with self._cond:
            self._closed = True
            self._q.clear()
            self._frames = 0
            self._cond.notify_all()
        interrupt = getattr(self.source, "interrupt", None)
        if interrupt is not None:  # e.g. wake a live source waiting to reconnect
            interrupt()
        self._thread.join()


def open_capture(source: Iterable[Any], queue_size: Optional[int] = None) -> Union[InlineCapture, PipelinedCapture]:
    """Pipelined capture for a real source (:class:`edge.sources.FrameSource`), inline for plain iterables.

    ``queue_size=0`` forces inline reading; ``None`` picks the default queue
    (:data:`DEFAULT_QUEUE` frames) for a :class:`FrameSource`.
    """
    from .sources import FrameSource

    if queue_size == 0 or (queue_size is None and not isinstance(source, FrameSource)):
        return InlineCapture(source)
    return PipelinedCapture(source, DEFAULT_QUEUE if queue_size is None else queue_size)
