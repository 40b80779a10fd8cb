"""Frame sources and sinks named by URIs, in the style of jetson-inference.

One parser (:func:`parse_source`) turns a string into a :class:`SourceSpec`,
and :func:`open_source` opens it.  Every source is an iterator of
``(index, frame)`` with ``frame`` a BGR uint8 array (``None``: an unreadable
image; the loop skips it), with :class:`edge.events.SourceEvent` objects
between frames when something happens to the source (a damaged file, a
stream that disconnects: see :mod:`edge.events`).  Anything that cannot be
opened -- a missing file, a camera that is not there, a video whose first
frame cannot be decoded, a stream that does not answer within its open
timeout -- raises :class:`SourceError` naming the URI.  Cameras and streams
are :class:`edge.live.LiveSource` objects (timeouts, reconnection).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from .errors import SourceError
from .events import SourceEvent
from .fileio import PathLike

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".h264", ".264", ".ts")

USAGE = """source URIs:
  file.mp4 | file.avi | ...       a video file
  folder/                         a folder of images, read in sorted name order
  recording/                      a folder written by `signguard run --record` (replayed frame by frame)
  image.jpg                       a single image
  0 | /dev/video0 | v4l2:///dev/video0   a V4L2/USB camera
  csi://0[?width=1280&height=720&framerate=30&flip=0]   a Jetson CSI camera (GStreamer)
  rtsp://host/stream | http(s)://...    a network stream"""

SINK_USAGE = """output URIs:
  out.mp4 (mp4v, MJPG fallback) | out.avi (MJPG) | display://0 (a window; needs OpenCV with GUI)"""

Frame = Optional[np.ndarray]


class SourceSpec(NamedTuple):
    """What a URI means: ``kind`` in {video, camera, csi, stream, folder, recording, image}."""

    kind: str
    location: str
    options: Dict[str, str]


def parse_source(uri: Union[int, PathLike]) -> SourceSpec:
    """Interpret a source URI without opening anything (testable without hardware)."""
    s = os.fspath(uri) if not isinstance(uri, int) else str(uri)
    if not s:
        raise SourceError("source URI is empty; expected e.g. video.mp4, a folder, csi://0 or /dev/video0")
    parts = urlsplit(s)
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query))
    if s.isdigit():
        return SourceSpec("camera", s, {})
    if scheme == "csi":
        sensor = (parts.netloc or parts.path.strip("/") or "0")
        if not sensor.isdigit():
            raise SourceError("%s: csi:// needs a sensor number, e.g. csi://0" % s)
        return SourceSpec("csi", sensor, options)
    if scheme == "v4l2":
        return SourceSpec("camera", (parts.netloc + parts.path) or "/dev/video0", options)
    if scheme in ("rtsp", "rtsps", "http", "https", "rtmp", "udp"):
        return SourceSpec("stream", s, {})
    if scheme == "file":
        s = parts.netloc + parts.path
    elif scheme and len(scheme) > 1:  # one letter is a Windows drive
        raise SourceError("%s: unknown source scheme %r (see signguard run --help)" % (s, scheme))
    if s.startswith("/dev/video"):
        return SourceSpec("camera", s, {})
    p = Path(s)
    if p.is_dir():
        from .record import is_recording

        return SourceSpec("recording" if is_recording(p) else "folder", s, {})
    if p.suffix.lower() in IMAGE_EXTS:
        return SourceSpec("image", s, {})
    return SourceSpec("video", s, {})


def csi_pipeline(sensor: str, options: Dict[str, str]) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc), ending in BGR frames for OpenCV."""
    w, h = int(options.get("width", 1280)), int(options.get("height", 720))
    fps, flip = int(options.get("framerate", 30)), int(options.get("flip", 0))
    return (
        "nvarguscamerasrc sensor-id=%s ! video/x-raw(memory:NVMM), width=%d, height=%d, framerate=%d/1, "
        "format=NV12 ! nvvidconv flip-method=%d ! video/x-raw, format=BGRx ! videoconvert ! "
        "video/x-raw, format=BGR ! appsink drop=true max-buffers=1" % (sensor, w, h, fps, flip)
    )


class FrameSource:
    """Iterator of ``(index, BGR frame or None)`` (and :class:`edge.events.SourceEvent` between frames);
    also a context manager that releases the device."""

    uri = ""
    live = False
    fps: Optional[float] = None

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Ask a reading thread blocked in this source to give up soon (live sources; no-op otherwise)."""

    def close(self) -> None:
        """Release the underlying device/file (idempotent)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class CaptureSource(FrameSource):
    """A video file read through ``cv2.VideoCapture``, frame by frame, reporting damage instead of hiding it.

    The first frame is read at open time so a corrupt or empty file fails
    here, with its name, rather than as an empty run.  A damaged file that
    still opens (bytes overwritten, cut short) used to end quietly with
    frames missing; now:

    - a frame that fails to decode is skipped and decoding resumes (FFmpeg
      recovers at the next key frame); each failed read is one lost frame,
      so indices stay aligned with the file's frame numbers (and with an ROI
      CSV), and a ``decode_error`` event says which frames were lost;
    - when decoding stops before the frame count the header declares, an
      ``ended_early`` event says so.
    """

    def __init__(self, uri: str, target: Union[str, int], api: int = cv2.CAP_ANY,
                 expected: str = "a readable video", max_skip: int = 30) -> None:
        self.uri, self.max_skip = uri, max_skip
        self.cap = cv2.VideoCapture(target, api)
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceError("%s: cannot open; expected %s" % (uri, expected))
        ok, frame = self.cap.read()
        if not ok or frame is None:
            self.cap.release()
            raise SourceError("%s: opened but no frame could be decoded; expected %s" % (uri, expected))
        self._first: Frame = frame
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        # a damaged header can declare nonsense (negative, astronomically large): then nothing is declared
        self.declared: Optional[int] = int(count) if count and 0 < count < 1e8 else None

    def __iter__(self) -> Iterator[Any]:
        index = 0
        if self._first is not None:
            frame, self._first = self._first, None
            yield index, frame
            index += 1
        failed = 0
        while self.cap.isOpened():
            ok, frame = self.cap.read()
            if ok and frame is not None:
                if failed:
                    lost = "frame %d" % index if failed == 1 else "frames %d..%d" % (index, index + failed - 1)
                    yield SourceEvent("decode_error", index, "%s could not be decoded; decoding resumed at frame %d"
                                      % (lost, index + failed), lost=failed)
                    index += failed
                    failed = 0
                yield index, frame
                index += 1
                continue
            failed += 1
            if failed > self.max_skip or (self.declared is not None and index + failed >= self.declared):
                break
        if self.declared is not None and index < self.declared:
            yield SourceEvent("ended_early", index, "decoding stopped after %d of the %d frames the file declares; "
                              "the file is damaged or cut short" % (index, self.declared), declared=self.declared)

    def close(self) -> None:
        self.cap.release()


class ImageSource(FrameSource):
    """A folder of images (sorted by name) or one image; frame ``i`` is the ``i``-th file."""

    def __init__(self, uri: str, files: List[Path]) -> None:
        self.uri, self.files = uri, files

    def __iter__(self) -> Iterator[Tuple[int, Frame]]:
        for i, f in enumerate(self.files):
            frame = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if frame is None:
                log.warning("%s: %s is not a readable image; frame %d skipped", self.uri, f.name, i)
            yield i, frame


def open_source(uri: Union[int, PathLike], live: Optional[Any] = None) -> FrameSource:
    """Open any source URI (see ``USAGE``); raises :class:`SourceError` naming the URI when it cannot.

    ``live`` is an :class:`edge.live.LiveConfig` (timeouts, reconnection) for
    cameras and streams; the default is ``LiveConfig()``.
    """
    from .live import LiveConfig, LiveSource

    spec = parse_source(uri)
    name = os.fspath(uri) if not isinstance(uri, int) else str(uri)
    cfg = live or LiveConfig()
    if spec.kind == "camera":
        if spec.location.isdigit():
            return LiveSource(name, int(spec.location), expected="camera %s" % spec.location, config=cfg)
        if not os.path.exists(spec.location):
            raise SourceError("%s: no such camera device %s" % (name, spec.location))
        return LiveSource(name, spec.location, cv2.CAP_V4L2, expected="a V4L2 camera", config=cfg)
    if spec.kind == "csi":
        return LiveSource(name, csi_pipeline(spec.location, spec.options), cv2.CAP_GSTREAMER, config=cfg,
                          expected="a CSI camera via GStreamer (nvarguscamerasrc; OpenCV built with GStreamer)")
    if spec.kind == "stream":
        return LiveSource(name, spec.location, cv2.CAP_FFMPEG, expected="a reachable network video stream", config=cfg)
    path = Path(spec.location)
    if spec.kind == "recording":
        from .record import RecordingSource

        return RecordingSource(name, path)
    if spec.kind == "folder":
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise SourceError("%s: folder holds no images (expected %s)" % (name, ", ".join(IMAGE_EXTS)))
        return ImageSource(name, files)
    if not path.is_file():
        raise SourceError("%s: no such file; expected a video, an image, a folder or a camera URI" % name)
    if spec.kind == "image":
        if cv2.imread(str(path), cv2.IMREAD_COLOR) is None:
            raise SourceError("%s: not a readable image" % name)
        return ImageSource(name, [path])
    return CaptureSource(name, str(path), expected="a video file OpenCV can decode (mp4, avi, mkv, mov...)")


class VideoSink:
    """Writes BGR frames to a video file; opens on the first frame when the size is not known yet."""

    def __init__(self, path: str, fps: float, size: Optional[Tuple[int, int]] = None) -> None:
        self.path, self.fps, self.writer = path, float(fps) if fps and fps > 0 else 30.0, None
        self.size = size
        if size is not None:
            self._open(size)

    def _open(self, size: Tuple[int, int]) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        codecs = ["MJPG"] if self.path.lower().endswith(".avi") else ["mp4v", "MJPG"]
        for codec in codecs:
            w = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*codec), self.fps, tuple(size))
            if w.isOpened():
                self.writer, self.size = w, tuple(size)
                log.debug("%s: writing %s at %.1f fps, %s", self.path, codec, self.fps, size)
                return
            w.release()
        raise SourceError("%s: cannot open a video writer (tried %s)" % (self.path, ", ".join(codecs)))

    def write(self, frame: np.ndarray) -> None:
        size = (frame.shape[1], frame.shape[0])
        if self.writer is None:
            self._open(size)
        elif size != self.size:
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class DisplaySink:
    """A window (``display://0``); needs OpenCV with GUI support (not the headless wheel)."""

    def __init__(self, name: str = "signguard") -> None:
        self.name = name

    def write(self, frame: np.ndarray) -> None:
        try:
            cv2.imshow(self.name, frame)
            cv2.waitKey(1)
        except cv2.error as e:
            raise SourceError("display://: this OpenCV has no GUI support (%s); write a video file instead"
                              % str(e).strip().splitlines()[-1]) from None

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.name)
        except cv2.error:
            pass


def open_sink(uri: Optional[str], fps: Optional[float] = None, size: Optional[Tuple[int, int]] = None) -> Any:
    """A sink for ``uri`` (``display://N`` or a video file path), or ``None`` when ``uri`` is empty."""
    if not uri:
        return None
    if uri.startswith("display://"):
        return DisplaySink("signguard %s" % uri[len("display://"):])
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return VideoSink(uri, fps or 30.0, size)
