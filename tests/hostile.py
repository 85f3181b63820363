"""A loopback HTTP server that misbehaves as a test scripts it: the hostile provider.

Each route is (method, path prefix) -> a responder, a callable that is given the request
handler and writes whatever it likes (a gzip bomb, a body dripped a byte a second, a
truthful answer). Every request is recorded, so a test counts the paid POSTs itself.

    with Hostile() as h:
        h.route("POST", "/v2/images/generate", json_answer({"jobId": "job1"}))
        h.route("GET", "/v2/jobs/", json_answer({"status": "PROCESSING", "progress": 10**400}))
        ... NBDESK_APIFRAME_BASE_URL=h.base_url ...
        assert h.count("POST") == 1
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Responder = Callable[["Handler"], None]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Routes:
    table: list[tuple[str, str, Responder]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        routes = self.server.routes
        with routes.lock:
            routes.seen.append(Seen(self.command, self.path, dict(self.headers), body))
            found = next((r for m, p, r in reversed(routes.table)
                          if m == self.command and self.path.startswith(p)), None)
        if found is None:
            self.send_error(404)
            return
        # The client giving up on us is what several scenarios want.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            found(self)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    @property
    def stopping(self) -> threading.Event:
        return self.server.routes.stopping

    def send_body(self, body: bytes, *, status: int = 200, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: _Routes

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gives up (closes mid-answer) is what several scenarios want.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Hostile:
    def __init__(self, port: int = 0) -> None:
        """``port``: a given one (a provider's address that was closed until now)."""
        self._server = _Server(("127.0.0.1", port), Handler)
        self._server.routes = _Routes()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="hostile-server")

    @property
    def base_url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def route(self, method: str, prefix: str, responder: Responder) -> None:
        """The newest route matching a request's method and path prefix answers it."""
        with self._server.routes.lock:
            self._server.routes.table.append((method, prefix, responder))

    @property
    def seen(self) -> list[Seen]:
        with self._server.routes.lock:
            return list(self._server.routes.seen)

    def count(self, method: str, prefix: str = "/") -> int:
        return sum(1 for s in self.seen if s.method == method and s.path.startswith(prefix))

    def __enter__(self) -> Hostile:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.routes.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    """A started hostile server with no routes (a test adds its own), stopped after."""
    with Hostile() as h:
        yield h


def png_image(size: tuple[int, int] = (32, 24),
              colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    """A small, whole PNG: what a truthful provider's result link serves."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- responders


def json_answer(payload: Any, *, status: int = 200,
                headers: dict[str, str] | None = None) -> Responder:
    """An answer of this JSON (or of ``payload`` as it is, when it is bytes)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()

    def respond(h: Handler) -> None:
        h.send_body(body, status=status, headers=headers)

    return respond


_BOMBS: dict[tuple[int, str], bytes] = {}


def packed_bomb(decoded_bytes: int, encoding: str = "gzip") -> bytes:
    """``decoded_bytes`` of spaces after a JSON object's opening, compressed (made once
    per size and kept: a 400 MB bomb is about 400 KB, made a MiB at a time)."""
    key = (decoded_bytes, encoding)
    if key not in _BOMBS:
        if encoding not in ("gzip", "deflate"):
            raise ValueError(f"unknown encoding {encoding!r}")
        packer = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        parts = [packer.compress(b"{")]
        block = b" " * (1 << 20)
        left = decoded_bytes - 1
        while left > 0:
            parts.append(packer.compress(block[:left]))
            left -= len(block)
        parts.append(packer.flush())
        _BOMBS[key] = b"".join(parts)
    return _BOMBS[key]


def bomb(decoded_bytes: int, *, encoding: str = "gzip", status: int = 200) -> Responder:
    """A small compressed body that decodes to ``decoded_bytes``: what a hostile
    provider sends to exhaust memory."""
    packed = packed_bomb(decoded_bytes, encoding)

    def respond(h: Handler) -> None:
        h.send_body(packed, status=status, headers={"Content-Encoding": encoding})

    return respond


def drip(body: bytes, *, every: float = 1.0, chunk: int = 1, status: int = 200,
         content_type: str = "application/json") -> Responder:
    """``body`` sent ``chunk`` bytes at a time, one chunk each ``every`` seconds (so no
    single read times out), until the test's server stops."""

    def respond(h: Handler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for start in range(0, len(body), chunk):
            if h.stopping.wait(every if start else 0):
                return
            h.wfile.write(body[start:start + chunk])
            h.wfile.flush()

    return respond


def script(*responders: Responder) -> Responder:
    """The first request gets the first responder, and so on; the last one repeats."""
    lock = threading.Lock()
    left: Iterator[Responder] = iter(responders)
    last = [responders[-1]]

    def respond(h: Handler) -> None:
        with lock:
            chosen = next(left, last[0])
        chosen(h)

    return respond


def delay(seconds: float, then: Responder) -> Responder:
    """Wait (unless the server stops), then answer."""

    def respond(h: Handler) -> None:
        started = time.monotonic()
        h.stopping.wait(max(0.0, seconds - (time.monotonic() - started)))
        then(h)

    return respond
