"""Event records of the frame log: what happened to the source or the run, between frame records.

The frame log (:mod:`edge.framelog`) holds one JSON line per frame.  Event
lines sit among them, in the order things happened, and are told apart by
their ``"event"`` key (frame records never have one), so a reader that wants
only frames keeps the lines without ``"event"``.  Keys of every event::

    ts      unix time (float, seconds) when it happened
    event   the kind, below
    frame   source frame index it refers to (see the kind)
    source  the source URI
    detail  one human-readable sentence

Kinds and their extra keys:

    start             the first line of a run; ``frame`` = 0, ``bundle`` (name), ``precision``,
                      ``classes`` (the bundle's class names, in index order), ``roi`` (the ROI provider)
    disconnect        a live source stopped delivering (read failed or timed out); ``frame`` = last frame read
    reconnect_failed  one reconnection attempt failed; ``attempt`` (1, 2, ...), ``retry_in_s``
    reconnect         the source delivers again; ``attempt``, ``outage_s`` (seconds without frames)
    gave_up           ``--max-reconnects`` attempts failed; the run ends; ``attempts``
    decode_error      a file's frames could not be decoded and decoding resumed after them;
                      ``frame`` = first lost index, ``lost`` = how many
    ended_early       a file stopped decoding before the frame count its header declares;
                      ``frame`` = first frame never decoded, ``declared``
    end               the last line of a run that closed cleanly; ``reason`` (eof, max_frames,
                      SIGINT, SIGTERM, source_lost, error), ``frames`` (frames processed),
                      ``dropped_total`` (live frames dropped because the loop fell behind)

Frame records keep their keys (see :mod:`edge.framelog`); since issue 14
``ts`` is the capture time of the frame, ``latency_ms`` also has ``queue``
(ms the frame waited between capture and processing; ``total`` runs from
the start of the capture to the record) and ``gate`` when a gate ran, and a
record carries ``dropped`` (frames the live source's queue dropped since
the previous record) when that is not zero -- so ``dropped`` values add up --
and ``batch`` (frames classified in the same inference call) when above 1.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

EVENT_KINDS = ("start", "disconnect", "reconnect_failed", "reconnect", "gave_up", "decode_error", "ended_early", "end")


class SourceEvent:
    """Something that happened to a source between frames; sources yield it among their ``(index, frame)``.

    ``frame`` is the index the event refers to (see the kinds above),
    ``detail`` a sentence, ``data`` the kind's extra keys.  ``ts`` is taken
    when the event is created, i.e. when it happened.
    """

    __slots__ = ("kind", "frame", "detail", "data", "ts")

    def __init__(self, kind: str, frame: int, detail: str, **data: Any) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError("unknown event kind %r (known: %s)" % (kind, ", ".join(EVENT_KINDS)))
        self.kind, self.frame, self.detail, self.data = kind, int(frame), detail, data
        self.ts = time.time()

    def record(self, source: str) -> Dict[str, Any]:
        """This event as a frame-log line."""
        return make_event(self.kind, self.frame, self.detail, source=source, ts=self.ts, **self.data)

    def __repr__(self) -> str:
        return "SourceEvent(%s, frame=%d, %r)" % (self.kind, self.frame, self.detail)


def make_event(kind: str, frame: int, detail: str, source: str = "", ts: Optional[float] = None,
               **extra: Any) -> Dict[str, Any]:
    """An event record with the common keys first, then ``extra`` (JSON-ready values)."""
    if kind not in EVENT_KINDS:
        raise ValueError("unknown event kind %r (known: %s)" % (kind, ", ".join(EVENT_KINDS)))
    record: Dict[str, Any] = {"ts": time.time() if ts is None else float(ts), "event": kind, "frame": int(frame),
                              "source": source, "detail": detail}
    for k, v in extra.items():
        record[k] = round(v, 3) if isinstance(v, float) else v
    return record
