"""A real MJPEG-over-HTTP stream server (standard library only) for the live-source tests.

Run as a process (``python mjpeg_server.py --port 0 --jpeg a.jpg [--stall-after N]``; it prints
``ready <port>`` once it listens, so a test can kill it and start it again on the same port) or in a
thread with :func:`serve_in_thread`.  Each client gets ``multipart/x-mixed-replace`` JPEG parts, the
format of IP cameras' ``/video.mjpg`` endpoints, which OpenCV's FFmpeg backend reads as a stream.
Modes: stream forever, or send ``stall_after`` frames and then keep the connection open in silence (a
camera that hangs).  Nothing here imports OpenCV, so the process starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple

BOUNDARY = b"signguardframe"


def make_handler(jpeg: bytes, interval_s: float, stall_after: Optional[int]) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=%s" % BOUNDARY.decode())
            self.end_headers()
            part = (b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    + jpeg + b"\r\n")
            sent = 0
            try:
                while True:
                    if stall_after is not None and sent >= stall_after:
                        while not getattr(self.server, "closing", False):
                            time.sleep(0.05)  # hang in silence, connection open, until the server shuts down
                        return
                    self.wfile.write(part)
                    self.wfile.flush()
                    sent += 1
                    if getattr(self.server, "closing", False):
                        return
                    time.sleep(interval_s)
            except (BrokenPipeError, ConnectionResetError):
                return

    return Handler


def make_server(port: int, jpeg: bytes, interval_s: float = 0.01, stall_after: Optional[int] = None
                ) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(jpeg, interval_s, stall_after))
    server.daemon_threads = True
    return server


def serve_in_thread(jpeg: bytes, interval_s: float = 0.01, stall_after: Optional[int] = None
                    ) -> Tuple[ThreadingHTTPServer, str]:
    """Start a server on a free port in a daemon thread; returns it and its URL (call ``stop(server)``)."""
    server = make_server(0, jpeg, interval_s, stall_after)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "http://127.0.0.1:%d/video.mjpg" % server.server_address[1]


def stop(server: ThreadingHTTPServer) -> None:
    server.closing = True  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--jpeg", required=True)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--stall-after", type=int, default=None)
    a = ap.parse_args()
    with open(a.jpeg, "rb") as f:
        jpeg = f.read()
    server = make_server(a.port, jpeg, a.interval, a.stall_after)
    print("ready %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
