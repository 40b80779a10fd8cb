"""Live sources (network streams, V4L2 and CSI cameras) that time out and reconnect instead of hanging.

Why: OpenCV's FFmpeg backend waits 30 s for a stream that accepts a
connection but never answers, and a camera or stream that dies mid-run used
to end the run with exit code 0.  On a device in the field the loop must
instead notice within seconds, say so in the frame log, and get the stream
back when it returns.

- **Timeouts.**  ``open_timeout_s`` and ``read_timeout_s`` go to OpenCV as
  ``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC`` (honoured by
  the FFmpeg backend -- rtsp, http, udp -- and by recent GStreamer/V4L2
  backends).  A backend that refuses these parameters is opened without them
  (it then keeps its own timeout; OpenCV's V4L2 backend waits 10 s).
- **Reconnection.**  When a read fails the source yields a ``disconnect``
  event, releases the capture and reopens it after ``backoff_s``, doubling
  the wait after every failed attempt up to ``backoff_max_s``.  Each failed
  attempt is a ``reconnect_failed`` event, success a ``reconnect`` event; no
  frame is yielded during the outage.  After ``max_reconnects`` failed
  attempts in one outage the source yields ``gave_up`` and ends (the run's
  summary then says the source was lost and ``signguard run`` exits 1).
  Frame indices keep counting across outages, so they never repeat in a log.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import cv2

from .config import check_range, from_dict, to_dict
from .errors import ConfigError, SourceError
from .events import SourceEvent
from .sources import Frame, FrameSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveConfig:
    """Timeouts and reconnection policy of a live source (``signguard run --open-timeout`` etc.)."""

    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    max_reconnects: int = 10  # failed attempts allowed per outage; 0 = end the run at the first disconnect
    backoff_s: float = 0.5  # wait before the first reconnection attempt
    backoff_max_s: float = 10.0  # cap of the doubling wait

    def __post_init__(self) -> None:
        for name in ("open_timeout_s", "read_timeout_s"):
            check_range(getattr(self, name), name, 0.0, 600.0, lo_open=True)
        if not isinstance(self.max_reconnects, int) or isinstance(self.max_reconnects, bool) or self.max_reconnects < 0:
            raise ConfigError("max_reconnects: expected an integer >= 0, got %r" % (self.max_reconnects,))
        check_range(self.backoff_s, "backoff_s", 0.0, 600.0)
        check_range(self.backoff_max_s, "backoff_max_s", self.backoff_s, 3600.0)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "live") -> LiveConfig:
        return from_dict(cls, data, where)

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnection attempt ``attempt`` (1-based): backoff_s * 2**(attempt-1), capped."""
        return min(self.backoff_max_s, self.backoff_s * (2.0 ** max(0, attempt - 1)))


_FLAGS = {"open_timeout_s": "--open-timeout", "read_timeout_s": "--read-timeout", "max_reconnects": "--max-reconnects"}


def live_config_from_options(open_timeout_s: float, read_timeout_s: float, max_reconnects: int) -> LiveConfig:
    """A :class:`LiveConfig` from ``signguard run`` options; an error names the command-line flag."""
    try:
        return LiveConfig(open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s, max_reconnects=max_reconnects)
    except ConfigError as e:
        msg = str(e)
        for name, flag in _FLAGS.items():
            msg = msg.replace(name, flag)
        raise ConfigError(msg) from None


def timeout_params(cfg: LiveConfig) -> List[int]:
    """The ``cv2.VideoCapture`` open parameters that carry the timeouts ([] on an OpenCV older than 4.5.3)."""
    if not hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
        return []
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(round(cfg.open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(round(cfg.read_timeout_s * 1000))]


class LiveSource(FrameSource):
    """A camera or stream read through ``cv2.VideoCapture`` with timeouts and reconnection (see module doc).

    The first connection is made (and the first frame read) in the
    constructor, so a source that is not there fails at once with a
    :class:`SourceError` naming the URI, after at most the open timeout.
    :meth:`close` also wakes a backoff wait, so a stop request is not held up
    by a long reconnection delay.
    """

    live = True

    def __init__(self, uri: str, target: Union[str, int], api: int = cv2.CAP_ANY, expected: str = "a live source",
                 config: Optional[LiveConfig] = None) -> None:
        self.uri, self.target, self.api, self.expected = uri, target, api, expected
        self.config = config or LiveConfig()
        self.reconnects = 0
        self._stop = threading.Event()
        self._with_params = True
        cap, why = self._connect()
        if cap is None:
            raise SourceError("%s: cannot open within the %.3g s open timeout (%s); expected %s"
                              % (uri, self.config.open_timeout_s, why, expected))
        self.cap: Optional[cv2.VideoCapture] = cap
        self._first: Frame = self._pending
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None

    def _open(self, params: bool) -> cv2.VideoCapture:
        timeouts = timeout_params(self.config) if params else []
        if timeouts:
            return cv2.VideoCapture(self.target, self.api, timeouts)
        return cv2.VideoCapture(self.target, self.api)

    def _connect(self) -> Tuple[Optional[cv2.VideoCapture], str]:
        """Open and read one frame (kept in ``_pending``); ``(None, why)`` on failure."""
        cap = self._open(self._with_params)
        if not cap.isOpened() and self._with_params and self.api != cv2.CAP_FFMPEG:
            cap.release()  # this backend may refuse the timeout parameters: try once without
            cap = self._open(False)
            if cap.isOpened():
                log.info("%s: the capture backend takes no timeout parameters; using its own", self.uri)
                self._with_params = False
        if not cap.isOpened():
            cap.release()
            return None, "no connection"
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            return None, "connected but no frame within the %.3g s read timeout" % self.config.read_timeout_s
        self._pending: Frame = frame
        return cap, ""

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def _reconnect(self, last: int) -> Iterator[SourceEvent]:
        """Yield ``reconnect_failed`` events until connected (``reconnect``) or out of attempts (``gave_up``)."""
        cfg, down = self.config, time.monotonic()
        for attempt in range(1, cfg.max_reconnects + 1):
            if self._stop.wait(cfg.backoff(attempt)):
                return
            cap, why = self._connect()
            if cap is not None:
                self.cap = cap
                self.reconnects += 1
                outage = time.monotonic() - down
                yield SourceEvent("reconnect", last, "reconnected after %.1f s (attempt %d)" % (outage, attempt),
                                  attempt=attempt, outage_s=outage)
                return
            retry = cfg.backoff(attempt + 1) if attempt < cfg.max_reconnects else 0.0
            yield SourceEvent("reconnect_failed", last, "attempt %d failed: %s" % (attempt, why),
                              attempt=attempt, retry_in_s=retry)
        yield SourceEvent("gave_up", last, "no frames after %d reconnection attempt(s); giving up" % cfg.max_reconnects,
                          attempts=cfg.max_reconnects)

    def __iter__(self) -> Iterator[Any]:
        index = 0
        if self._first is not None:
            frame, self._first = self._first, None
            yield index, frame
            index += 1
        try:
            while not self._stop.is_set() and self.cap is not None:
                ok, frame = self.cap.read()
                if ok and frame is not None:
                    yield index, frame
                    index += 1
                    continue
                if self._stop.is_set():
                    return
                self._release()
                timeout = self.config.read_timeout_s
                yield SourceEvent("disconnect", index - 1, "no frame within the %.3g s read timeout, or the stream "
                                  "ended" % timeout, read_timeout_s=timeout)
                yield from self._reconnect(index - 1)
                if self.cap is None:  # gave up, or stopped during the backoff
                    return
                yield index, self._pending  # the frame read while reconnecting
                index += 1
        finally:
            self._release()

    def interrupt(self) -> None:
        """Ask the reading thread to stop: a backoff wait ends at once, a read in progress at its timeout."""
        self._stop.set()

    def close(self) -> None:
        """Stop reconnecting and release the capture (call after the reading thread has stopped)."""
        self._stop.set()
        self._release()
