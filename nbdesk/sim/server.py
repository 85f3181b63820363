"""A loopback HTTP server that speaks the Apiframe, APIFree and Gemini image APIs, with faults
on demand.

All three APIs are served from one base URL.  Jobs are stateless (see ``jobs.py``): the only
per-instance state is the Apiframe idempotency map, the fault RNG / script and the stats.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import io
import json
import logging
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image

from nbdesk.api.capabilities import APIFRAME, APIFREE, GEMINI, ModelCaps, ProviderCaps
from nbdesk.sim import gemini, images
from nbdesk.sim.jobs import (
    FAIL_REASON,
    PROMPT_HEAD,
    WEIRD_STATUS,
    JobToken,
    Phase,
    flags_of,
    iso8601,
    timeline,
)

log = logging.getLogger("nbdesk.sim")

DEMO_KEY = "demo"

#: Every fault kind the simulator knows.  ``reset_after``, ``cut`` and ``corrupt`` are only
#: used when scripted or listed in ``Faults.kinds`` explicitly.  ``truncate`` drops the
#: connection mid-body (short of its Content-Length); ``cut`` sends the first half of an
#: image as if it were all of it (a matching Content-Length: a host that lost the tail),
#: ``corrupt`` the whole image with one byte changed in the middle.  Off the download
#: route all three are a 500.
FAULT_KINDS: tuple[str, ...] = (
    "429", "500", "503", "reset", "reset_after", "slow", "truncate", "malformed", "cut",
    "corrupt",
)
ROUTES: tuple[str, ...] = (
    "apiframe.submit", "apiframe.poll", "apifree.submit", "apifree.poll", "download",
    "gemini.generate",
)
RESULT_FORMS: tuple[str, ...] = ("string", "list", "images")
STATUS_STYLES: tuple[str, ...] = ("short", "long")

MAX_BODY_BYTES = 64 * 1024 * 1024
_DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.ASCII)

_APIFRAME_STATUS = {
    Phase.QUEUED: "QUEUED",
    Phase.RUNNING: "PROCESSING",
    Phase.COMPLETED: "COMPLETED",
    Phase.FAILED: "FAILED",
    Phase.WEIRD: WEIRD_STATUS,
}
_APIFREE_STATUS = {
    "short": {
        Phase.QUEUED: "processing",
        Phase.RUNNING: "processing",
        Phase.COMPLETED: "success",
        Phase.FAILED: "error",
        Phase.WEIRD: WEIRD_STATUS,
    },
    "long": {
        Phase.QUEUED: "queuing",
        Phase.RUNNING: "processing",
        Phase.COMPLETED: "completed",
        Phase.FAILED: "failed",
        Phase.WEIRD: WEIRD_STATUS,
    },
}


# --------------------------------------------------------------------------- configuration


@dataclass
class Faults:
    rate: float = 0.0  # probability a request gets a fault
    seed: int = 0  # random.Random(seed) decides which requests and which kind
    kinds: tuple[str, ...] = ("429", "500", "503", "reset", "slow", "truncate", "malformed")
    retry_after: float = 1.0  # seconds, sent as Retry-After on 429 (and 503)
    slow_seconds: float = 2.0

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown} (known: {', '.join(FAULT_KINDS)})")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("fault rate must be between 0 and 1")


@dataclass
class SimConfig:
    queue_seconds: float = 0.5  # time a job stays QUEUED / queuing
    job_seconds: float = 3.0  # submit to completion; progress grows linearly in between
    keys: dict[str, set[str]] | None = None  # provider id -> accepted keys; None: any non-empty
    faults: Faults = field(default_factory=Faults)
    apiframe_result_form: str = "rotate"  # "string" | "list" | "images" | "rotate"
    apifree_status_style: str = "rotate"  # "short" | "long" | "rotate"
    apifree_errors_in_200: bool = True  # validation errors: HTTP 200 with envelope code 400
    gemini_seconds: float = 0.0  # how long a Gemini generateContent call takes
    #: random bytes added to each Gemini image (a private PNG chunk): answers as big as a
    #: real photographic 4K PNG, without the time it takes to encode one
    gemini_image_padding: int = 0


# --------------------------------------------------------------------------- statistics


@dataclass
class SimJobRecord:
    """One paid job the simulator created."""

    provider: str
    remote_id: str
    idempotency_key: str | None
    prompt: str
    model: str
    params: dict[str, Any]  # the request's parameters as sent, without the references
    n_refs: int
    ref_sha256s: list[str | None]  # sha256 of each data-URI reference's bytes; None for URLs
    answered: bool = True  # False: the submit's answer was replaced by a fault (reset, garbage)
    # Gemini only: the conversation a request continued
    turns: int = 1  # contents sent, the new user turn included
    signatures: list[str] = field(default_factory=list)  # thought signatures sent back
    history_sha256s: list[str] = field(default_factory=list)  # images of the model turns
    answer_signatures: list[str] = field(default_factory=list)  # issued in the answer


def _per_provider() -> dict[str, int]:
    return {APIFRAME.id: 0, APIFREE.id: 0, GEMINI.id: 0}


def _per_fault() -> dict[str, int]:
    return dict.fromkeys(FAULT_KINDS, 0)


@dataclass
class SimStats:
    """Counters of one simulator instance.  Mutate only under ``lock``; read via ``snapshot``."""

    submits: dict[str, int] = field(default_factory=_per_provider)  # paid jobs created
    replays: int = 0  # Apiframe submits answered from the idempotency map
    polls: dict[str, int] = field(default_factory=_per_provider)
    downloads: int = 0  # image bodies sent in full
    faults: dict[str, int] = field(default_factory=_per_fault)
    requests: int = 0  # every request except /_sim/*
    jobs: list[SimJobRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "submits": dict(self.submits),
                "replays": self.replays,
                "polls": dict(self.polls),
                "downloads": self.downloads,
                "faults": dict(self.faults),
                "requests": self.requests,
                "jobs": [copy.deepcopy(asdict(j)) for j in self.jobs],
            }

    def reset(self) -> None:
        with self.lock:
            self.submits = _per_provider()
            self.replays = 0
            self.polls = _per_provider()
            self.downloads = 0
            self.faults = _per_fault()
            self.requests = 0
            self.jobs = []


# --------------------------------------------------------------------------- responses


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, body, "application/json", dict(headers or {}))


def _apiframe_error(status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> _Response:
    return _json(status, {"error": {"code": code, "message": message}}, headers)


def _envelope(http_status: int, code: int, msg: str, resp_data: dict[str, Any],
              headers: dict[str, str] | None = None) -> _Response:
    payload = {
        "code": code,
        "code_msg": msg,
        "trace_id": secrets.token_hex(8),
        "resp_data": resp_data,
    }
    return _json(http_status, payload, headers)


def _retry_after_text(seconds: float) -> str:
    """Whole seconds when whole (the HTTP form); otherwise a decimal, e.g. "0.05"."""
    seconds = max(0.0, seconds)
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


class _BadInput(Exception):
    """A validation failure; the message is what the provider would say."""


# --------------------------------------------------------------------------- validation


@dataclass
class _Validated:
    caps: ModelCaps
    prompt: str
    aspect_ratio: str
    resolution: str | None
    output_format: str
    params: dict[str, Any]
    ref_sha256s: list[str | None]


def _check_refs(value: Any, name: str, caps: ModelCaps, allow_string: bool) -> list[str | None]:
    if value is None:
        return []
    if isinstance(value, str) and allow_string:
        refs: list[Any] = [value]
    elif isinstance(value, list):
        refs = value
    else:
        kind = "a string or a list of strings" if allow_string else "a list of strings"
        raise _BadInput(f"{name} must be {kind}")
    if len(refs) > caps.max_refs:
        raise _BadInput(
            f"{name} accepts at most {caps.max_refs} images for model {caps.model} "
            f"(got {len(refs)})"
        )
    hashes: list[str | None] = []
    for i, ref in enumerate(refs):
        where = f"{name}[{i}]"
        if not isinstance(ref, str):
            raise _BadInput(f"{where} must be a string")
        if ref.startswith(("http://", "https://")) and len(ref) > len("https://"):
            hashes.append(None)  # accepted without fetching
            continue
        match = _DATA_URI.match(ref)
        if match is None:
            raise _BadInput(f"{where} must be an http(s) URL or a data:image/...;base64, URI")
        try:
            data = base64.b64decode(ref[match.end():], validate=True)
        except (binascii.Error, ValueError):
            raise _BadInput(f"{where} is not valid base64") from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.draft("RGB", (256, 256))  # JPEG: decode at a reduced scale, still checked
                img.load()
        except Exception:  # any decoder complaint: not an image we could use
            raise _BadInput(f"{where} is not a valid image") from None
        hashes.append(hashlib.sha256(data).hexdigest())
    return hashes


def _check_prompt(value: Any, caps: ModelCaps) -> str:
    if not isinstance(value, str) or not caps.prompt_min <= len(value) <= caps.prompt_max:
        raise _BadInput(
            f"prompt must be between {caps.prompt_min} and {caps.prompt_max} characters"
        )
    return value


def _check_model(value: Any, provider: ProviderCaps) -> ModelCaps:
    if value is None:
        return provider.default_model
    names = ", ".join(m.model for m in provider.models)
    if not isinstance(value, str):
        raise _BadInput(f"model must be one of: {names}")
    try:
        return provider.model(value)
    except KeyError:
        raise _BadInput(f"unknown model {value!r} (expected one of: {names})") from None


def _check_ratio(value: Any, name: str, caps: ModelCaps) -> str:
    if value is None:
        return caps.default_ratio
    if not isinstance(value, str) or value not in caps.aspect_ratios:
        raise _BadInput(
            f"{name} must be one of: {', '.join(caps.aspect_ratios)} for model {caps.model}"
        )
    return value


def _check_resolution(value: Any, name: str, caps: ModelCaps) -> str | None:
    if value is None:
        return caps.default_resolution
    if not caps.resolutions:
        raise _BadInput(f"{name} is not supported by model {caps.model}")
    if not isinstance(value, str) or value not in caps.resolutions:
        raise _BadInput(f"{name} must be one of: {', '.join(caps.resolutions)}")
    return value


def _validate_apiframe(body: Any) -> _Validated:
    if not isinstance(body, dict):
        raise _BadInput("request body must be a JSON object")
    caps = _check_model(body.get("model"), APIFRAME)
    f = caps.fields
    prompt = _check_prompt(body.get("prompt"), caps)
    params = body.get(f["params"])
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _BadInput(f"{f['params']} must be an object")
    fmt = params.get(f["output_format"])
    if fmt is None:
        fmt = caps.default_format
    if not isinstance(fmt, str) or fmt not in caps.formats:
        raise _BadInput(f"{f['output_format']} must be one of: {', '.join(caps.formats)}")
    ratio = _check_ratio(params.get(f["aspect_ratio"]), f["aspect_ratio"], caps)
    resolution = _check_resolution(params.get(f["resolution"]), f["resolution"], caps)
    for flag in (f["google_search"], f["image_search"]):
        if flag in params and not isinstance(params[flag], bool):
            raise _BadInput(f"{flag} must be a boolean")
    webhook = body.get("webhook_url", body.get("webhookUrl"))
    if webhook is not None and not isinstance(webhook, str):
        raise _BadInput("webhook_url must be a string")
    hashes = _check_refs(params.get(f["refs"]), f["refs"], caps, allow_string=True)
    recorded = {k: v for k, v in params.items() if k != f["refs"]}
    if webhook is not None:
        recorded["webhook_url"] = webhook
    return _Validated(caps, prompt, ratio, resolution, fmt, recorded, hashes)


def _validate_apifree(body: Any) -> _Validated:
    if not isinstance(body, dict):
        raise _BadInput("request body must be a JSON object")
    caps = _check_model(body.get("model"), APIFREE)
    f = caps.fields
    prompt = _check_prompt(body.get("prompt"), caps)
    ratio = _check_ratio(body.get(f["aspect_ratio"]), f["aspect_ratio"], caps)
    resolution = _check_resolution(body.get(f["resolution"]), f["resolution"], caps)
    cache_key = body.get(f["cache_key"])
    if cache_key is not None and not isinstance(cache_key, str):
        raise _BadInput(f"{f['cache_key']} must be a string")
    hashes = _check_refs(body.get(f["refs"]), f["refs"], caps, allow_string=False)
    recorded = {k: v for k, v in body.items() if k not in ("prompt", "model", f["refs"])}
    return _Validated(caps, prompt, ratio, resolution, "png", recorded, hashes)


# --------------------------------------------------------------------------- the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("simulator connection error from %s", client_address, exc_info=True)

    def drop_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_version = "nbdesk-sim/1"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    # ---------------------------------------------------------------- plumbing

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sim %s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes | None:
        """The request body; None when it is refused (the answer has been sent)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._refuse_body(too_large=length > 0)
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip() or b"x", 16)
                if size < 0:
                    raise ValueError(size)
            except ValueError:
                self._refuse_body(too_large=False)
                return None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                self._refuse_body(too_large=True)
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)  # the CRLF after the chunk

    def _refuse_body(self, *, too_large: bool) -> None:
        self.close_connection = True
        if too_large:
            self._send(_apiframe_error(413, "INVALID_REQUEST", "request body too large"))
        else:
            self._send(_apiframe_error(400, "INVALID_REQUEST", "malformed request body framing"))

    def _send(self, resp: _Response, *, body: bytes | None = None) -> bool:
        """Write a response; ``body`` overrides what is written (Content-Length stays)."""
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            for name, value in resp.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(resp.body if body is None else body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionError, OSError):
            self.close_connection = True
            return False
        return True

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, answering nothing."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.connection.close()

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        body = self._read_body()
        if body is None:
            return
        path = unquote(urlsplit(self.path).path)
        if path == "/_sim/stats":
            if method == "GET":
                self._send(_json(200, sim.stats.snapshot()))
            else:
                self._send(_apiframe_error(405, "METHOD_NOT_ALLOWED", "use GET"))
            return
        with sim.stats.lock:
            sim.stats.requests += 1
        found = _match(method, path)
        if found is None:
            self._send(_apiframe_error(404, "NOT_FOUND", f"no route for {method} {path}"))
            return
        if isinstance(found, int):
            self._send(_apiframe_error(found, "METHOD_NOT_ALLOWED", f"{method} not allowed here"))
            return
        route, args = found
        outcome = sim._decide(route)
        try:
            self._serve(sim, route, args, body, outcome)
        except Exception:
            log.exception("simulator bug while serving %s %s", method, path)
            self.close_connection = True
            self._send(_apiframe_error(500, "SIMULATOR_BUG", "the simulator failed; see its log"))

    def _serve(self, sim: Simulator, route: str, args: tuple[str, ...], body: bytes,
               outcome: str) -> None:
        if outcome in ("truncate", "cut", "corrupt") and route != "download":
            outcome = "500"
        if outcome == "reset":
            self._reset()
            return
        if outcome in ("429", "500", "503"):
            self._send(sim._fault_response(route, outcome))
            return
        if outcome == "slow":
            sim._stopping.wait(sim.config.faults.slow_seconds)
            if sim._stopping.is_set():
                self._reset()
                return

        record: SimJobRecord | None = None
        if route == "apiframe.submit":
            resp, record = sim._apiframe_submit(self.headers, body)
        elif route == "apifree.submit":
            resp, record = sim._apifree_submit(self.headers, body)
        elif route == "apiframe.poll":
            resp = sim._apiframe_poll(self.headers, args[0])
        elif route == "apifree.poll":
            resp = sim._apifree_poll(self.headers, args[0])
        elif route == "gemini.generate":
            resp, record = sim._gemini_generate(self.headers, args[0], body)
            if record is not None and sim._stopping.wait(sim.config.gemini_seconds):
                sim._unanswered(record)
                self._reset()
                return
        else:
            resp = sim._download(*args)

        if outcome == "reset_after":
            sim._unanswered(record)
            self._reset()
            return
        if outcome == "malformed":
            sim._unanswered(record)
            if route == "download":
                garbage = b"<html><body><h1>502 Bad Gateway</h1>simulated</body></html>"
                self._send(_Response(200, garbage, resp.content_type if resp.status == 200
                                     else "image/png"))
            else:
                # A strict prefix of a JSON object is never valid JSON.
                broken = resp.body[: max(1, len(resp.body) // 2)]
                self._send(_Response(200, broken, "application/json"))
            return
        if outcome == "truncate" and resp.status == 200:
            self.close_connection = True
            self._send(resp, body=resp.body[: len(resp.body) // 2])
            return
        if outcome in ("cut", "corrupt") and resp.status == 200:
            damaged = bytearray(resp.body)
            half = len(damaged) // 2
            if outcome == "cut":
                del damaged[half:]
            else:
                damaged[half] ^= 0x20
            self._send(replace(resp, body=bytes(damaged)))
            return
        # A download is counted before its body goes out (so a client that has the body
        # also sees the count) and taken back if the body could not be sent in full.
        counted = route == "download" and resp.status == 200
        if counted:
            with sim.stats.lock:
                sim.stats.downloads += 1
        if not self._send(resp):
            sim._unanswered(record)
            if counted:
                with sim.stats.lock:
                    sim.stats.downloads -= 1


_ROUTE_PATTERNS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("POST", "apiframe.submit", re.compile(r"^/v2/images/generate/?$")),
    ("GET", "apiframe.poll", re.compile(r"^/v2/jobs/([^/]+)$")),
    ("POST", "apifree.submit", re.compile(r"^/v1/image/submit/?$")),
    ("GET", "apifree.poll", re.compile(r"^/v1/image/([^/]+)/result$")),
    ("GET", "download", re.compile(r"^/files/([^/]+)/([^/]+)$")),
    ("POST", "gemini.generate", re.compile(r"^/v1beta/models/([^/:]+):generateContent$")),
)


def _match(method: str, path: str) -> tuple[str, tuple[str, ...]] | int | None:
    """(route, path arguments); 405 for a known path with the wrong method; None: unknown."""
    for want, route, pattern in _ROUTE_PATTERNS:
        m = pattern.match(path)
        if m is None:
            continue
        if method != want:
            return 405
        return route, m.groups()
    return None


# --------------------------------------------------------------------------- the simulator


class Simulator:
    """A loopback server for both provider APIs.  ``config`` may be changed at any time."""

    def __init__(self, config: SimConfig | None = None, port: int = 0) -> None:
        self.config = config if config is not None else SimConfig()
        self.stats = SimStats()
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._idem_lock = threading.Lock()
        self._idempotency: dict[tuple[str, str], str] = {}
        self._ordinal = 0
        self._scripts: dict[str, deque[str]] = {r: deque() for r in ROUTES}
        self._rng: random.Random | None = None
        self._rng_faults: Faults | None = None
        self._rng_seed: int | None = None
        self.base_url = ""
        #: Unix time in seconds; jobs are created and aged by it.  Replace it (e.g. with a
        #: ``ManualClock``) to move jobs along without sleeping.
        self.clock: Callable[[], float] = time.time

    # ---------------------------------------------------------------- life cycle

    def start(self) -> Simulator:
        if self._server is not None:
            raise RuntimeError("simulator already running")
        self._stopping.clear()
        server = _Server(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self._port}"
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"nbdesk-sim-{self._port}", daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        log.debug("simulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def key(self) -> str:
        """The key a Demo client sends (any key is taken unless ``config.keys`` says)."""
        return DEMO_KEY

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- faults

    def script(self, route: str, outcomes: list[str]) -> None:
        """The next ``len(outcomes)`` requests on ``route`` get these outcomes, in order."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r} (known: {', '.join(ROUTES)})")
        bad = [o for o in outcomes if o != "ok" and o not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown outcome(s) {bad} (known: ok, {', '.join(FAULT_KINDS)})")
        with self._lock:
            self._scripts[route].extend(outcomes)

    def _decide(self, route: str) -> str:
        """This request's outcome: the script first, then the seeded RNG."""
        with self._lock:
            queue = self._scripts[route]
            outcome = queue.popleft() if queue else self._draw()
        if outcome != "ok":
            with self.stats.lock:
                self.stats.faults[outcome] = self.stats.faults.get(outcome, 0) + 1
            log.debug("simulated fault %s on %s", outcome, route)
        return outcome

    def _draw(self) -> str:
        faults = self.config.faults
        if self._rng is None or self._rng_faults is not faults or self._rng_seed != faults.seed:
            self._rng = random.Random(faults.seed)
            self._rng_faults, self._rng_seed = faults, faults.seed
        if faults.rate <= 0 or not faults.kinds:
            return "ok"
        if self._rng.random() >= faults.rate:
            return "ok"
        kind = faults.kinds[self._rng.randrange(len(faults.kinds))]
        return kind if kind in FAULT_KINDS else "500"

    def _fault_response(self, route: str, kind: str) -> _Response:
        retry = {"Retry-After": _retry_after_text(self.config.faults.retry_after)}
        if route.startswith("gemini."):
            # Google sends no Retry-After: the wait is in RetryInfo.retryDelay.
            if kind == "429":
                delay = _retry_after_text(self.config.faults.retry_after) + "s"
                return _json(429, gemini.google_error(
                    429, "RESOURCE_EXHAUSTED",
                    "Resource has been exhausted (e.g. check quota). (simulated)",
                    [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}],
                ))
            if kind == "503":
                return _json(503, gemini.google_error(
                    503, "UNAVAILABLE", "The model is overloaded. Please try again later."))
            return _json(500, gemini.google_error(
                500, "INTERNAL", "An internal error has occurred. (simulated)"))
        if route.startswith("apifree."):
            if kind == "429":
                return _envelope(429, 429, "Too many requests (simulated)", {}, retry)
            if kind == "503":
                return _envelope(503, 503, "No available capacity", {}, retry)
            return _envelope(500, 500, "Internal server error (simulated)", {})
        if kind == "429":
            return _apiframe_error(429, "RATE_LIMITED", "Too many requests (simulated)", retry)
        if kind == "503":
            return _apiframe_error(503, "SERVICE_UNAVAILABLE", "No available capacity", retry)
        return _apiframe_error(500, "INTERNAL_ERROR", "Internal server error (simulated)")

    def _unanswered(self, record: SimJobRecord | None) -> None:
        if record is not None:
            with self.stats.lock:
                record.answered = False

    # ---------------------------------------------------------------- helpers

    def _now_ms(self) -> int:
        return round(self.clock() * 1000)

    def _key_ok(self, provider: str, key: str | None) -> bool:
        if not key:
            return False
        keys = self.config.keys
        if keys is None or provider not in keys:
            return True
        return key in keys[provider]

    def _new_job(self, provider: str, v: _Validated, idem: str | None) -> tuple[str, SimJobRecord]:
        fail, weird = flags_of(v.prompt)
        head = v.prompt[:PROMPT_HEAD] + ("…" if len(v.prompt) > PROMPT_HEAD else "")
        with self._lock:
            ordinal = self._ordinal
            self._ordinal += 1
        token = JobToken(
            provider=provider,
            model=v.caps.model,
            aspect_ratio=v.aspect_ratio,
            resolution=v.resolution,
            output_format=v.output_format,
            created_ms=self._now_ms(),
            seed=secrets.randbits(32),
            ordinal=ordinal,
            fail=fail,
            weird=weird,
            prompt_head=head,
        )
        remote_id = token.encode()
        record = SimJobRecord(
            provider=provider,
            remote_id=remote_id,
            idempotency_key=idem,
            prompt=v.prompt,
            model=v.caps.model,
            params=v.params,
            n_refs=len(v.ref_sha256s),
            ref_sha256s=v.ref_sha256s,
        )
        with self.stats.lock:
            self.stats.submits[provider] = self.stats.submits.get(provider, 0) + 1
            self.stats.jobs.append(record)
        return remote_id, record

    def _timeline(self, job: JobToken) -> tuple[Phase, int, int | None]:
        t = timeline(job, self._now_ms(), self.config.queue_seconds, self.config.job_seconds)
        return t.phase, t.progress, t.completed_ms

    def _file_url(self, remote_id: str, job: JobToken) -> str:
        return f"{self.base_url}/files/{remote_id}/0.{job.output_format}"

    # ---------------------------------------------------------------- Apiframe

    def _apiframe_submit(
        self, headers: Message, body: bytes
    ) -> tuple[_Response, SimJobRecord | None]:
        key = headers.get("X-API-Key")
        if not self._key_ok(APIFRAME.id, key):
            return _apiframe_error(401, "UNAUTHORIZED", "Invalid or missing API key"), None
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _apiframe_error(400, "INVALID_REQUEST", "request body must be JSON"), None
        try:
            v = _validate_apiframe(payload)
        except _BadInput as e:
            return _apiframe_error(400, "INVALID_REQUEST", str(e)), None
        idem: str | None = headers.get("Idempotency-Key") or None
        if idem is None:
            remote_id, record = self._new_job(APIFRAME.id, v, None)
            return _json(202, {"jobId": remote_id, "status": "QUEUED"}), record
        with self._idem_lock:  # one job per key, even for concurrent duplicates
            existing = self._idempotency.get((key or "", idem))
            if existing is None:
                remote_id, record = self._new_job(APIFRAME.id, v, idem)
                self._idempotency[(key or "", idem)] = remote_id
                return _json(202, {"jobId": remote_id, "status": "QUEUED"}), record
        with self.stats.lock:
            self.stats.replays += 1
        job = JobToken.decode(existing)
        status = "QUEUED" if job is None else _APIFRAME_STATUS[self._timeline(job)[0]]
        return _json(202, {"jobId": existing, "status": status}), None

    def _apiframe_poll(self, headers: Message, remote_id: str) -> _Response:
        with self.stats.lock:
            self.stats.polls[APIFRAME.id] += 1
        if not self._key_ok(APIFRAME.id, headers.get("X-API-Key")):
            return _apiframe_error(401, "UNAUTHORIZED", "Invalid or missing API key")
        job = JobToken.decode(remote_id)
        if job is None or job.provider != APIFRAME.id:
            return _apiframe_error(404, "NOT_FOUND", "Job not found")
        phase, progress, done_ms = self._timeline(job)
        result: Any = None
        if phase is Phase.COMPLETED:
            url = self._file_url(remote_id, job)
            form = self.config.apiframe_result_form
            if form not in RESULT_FORMS:
                form = RESULT_FORMS[job.ordinal % len(RESULT_FORMS)]
            result = url if form == "string" else [url] if form == "list" else {"images": [url]}
        return _json(200, {
            "id": remote_id,
            "jobId": remote_id,
            "status": _APIFRAME_STATUS[phase],
            "progress": progress,
            "result": result,
            "error": FAIL_REASON if phase is Phase.FAILED else None,
            "creditCost": job.cost if phase is Phase.COMPLETED else 0,
            "createdAt": iso8601(job.created_ms),
            "completedAt": iso8601(done_ms) if done_ms is not None else None,
        })

    # ---------------------------------------------------------------- APIFree

    def _apifree_key(self, headers: Message) -> str | None:
        auth = headers.get("Authorization") or ""
        scheme, _, key = auth.strip().partition(" ")
        return key.strip() if scheme.lower() == "bearer" else None

    def _apifree_submit(
        self, headers: Message, body: bytes
    ) -> tuple[_Response, SimJobRecord | None]:
        if not self._key_ok(APIFREE.id, self._apifree_key(headers)):
            return _envelope(401, 401, "Invalid or missing API key", {}), None
        try:
            payload = json.loads(body)
            v = _validate_apifree(payload)
        except (ValueError, UnicodeDecodeError, _BadInput) as e:
            msg = str(e) if isinstance(e, _BadInput) else "request body must be JSON"
            http = 200 if self.config.apifree_errors_in_200 else 400
            return _envelope(http, 400, msg, {}), None
        remote_id, record = self._new_job(APIFREE.id, v, None)
        return _envelope(200, 200, "Success", {"request_id": remote_id, "time": None}), record

    def _apifree_poll(self, headers: Message, remote_id: str) -> _Response:
        with self.stats.lock:
            self.stats.polls[APIFREE.id] += 1
        if not self._key_ok(APIFREE.id, self._apifree_key(headers)):
            return _envelope(401, 401, "Invalid or missing API key", {})
        job = JobToken.decode(remote_id)
        if job is None or job.provider != APIFREE.id:
            return _envelope(404, 404, "request not found", {})
        phase, _, _ = self._timeline(job)
        style = self.config.apifree_status_style
        if style not in STATUS_STYLES:
            style = STATUS_STYLES[job.ordinal % len(STATUS_STYLES)]
        data: dict[str, Any] = {
            "request_id": remote_id,
            "status": _APIFREE_STATUS[style][phase],
            "image_list": [self._file_url(remote_id, job)] if phase is Phase.COMPLETED else [],
            "usage": {"cost": job.cost if phase is Phase.COMPLETED else 0},
        }
        if phase is Phase.FAILED:
            data["error"] = FAIL_REASON
        return _envelope(200, 200, "Success", data)

    # ---------------------------------------------------------------- Gemini

    def _gemini_generate(
        self, headers: Message, model_id: str, body: bytes
    ) -> tuple[_Response, SimJobRecord | None]:
        key = headers.get("x-goog-api-key")
        if not key:
            return _json(403, gemini.google_error(
                403, "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers. Please use an API key.")), None
        if not self._key_ok(GEMINI.id, key):
            return _json(400, gemini.google_error(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                  "reason": "API_KEY_INVALID", "domain": "googleapis.com"}])), None
        caps = gemini.model_caps(model_id)
        if caps is None:
            return _json(404, gemini.google_error(
                404, "NOT_FOUND", f"models/{model_id} is not found for API version v1beta, "
                "or is not supported for generateContent.")), None
        try:
            req = gemini.validate(json.loads(body), caps)
        except (ValueError, UnicodeDecodeError, gemini.GeminiBadInput) as e:
            msg = str(e) if isinstance(e, gemini.GeminiBadInput) else \
                "Invalid JSON payload received."
            return _json(400, gemini.google_error(400, "INVALID_ARGUMENT", msg)), None
        with self._lock:
            ordinal = self._ordinal
            self._ordinal += 1
        seed = secrets.randbits(32)
        response_id = f"sim-{ordinal}-{secrets.token_hex(6)}"
        width, height = images.image_size(req.aspect_ratio or "1:1", req.resolution)
        head = req.prompt[:PROMPT_HEAD] + ("…" if len(req.prompt) > PROMPT_HEAD else "")
        caption = (f"nbdesk simulator · {caps.model} · {req.aspect_ratio or '1:1'} · "
                   f"{req.resolution or '1K'}")
        png = images.CACHE.get(seed, width, height, head, "png", caption)
        if self.config.gemini_image_padding > 0:
            png = gemini.pad_png(png, self.config.gemini_image_padding)
        payload = gemini.answer(req, response_id, png)
        record = SimJobRecord(
            provider=GEMINI.id, remote_id=response_id, idempotency_key=None,
            prompt=req.prompt, model=caps.model, params=req.params,
            n_refs=len(req.ref_sha256s), ref_sha256s=req.ref_sha256s, turns=req.turns,
            signatures=req.signatures, history_sha256s=req.history_sha256s,
            answer_signatures=[
                str(p["thoughtSignature"])
                for c in payload.get("candidates", []) for p in c["content"]["parts"]
                if "thoughtSignature" in p
            ],
        )
        with self.stats.lock:
            self.stats.submits[GEMINI.id] += 1
            self.stats.jobs.append(record)
        return _json(200, payload), record

    # ---------------------------------------------------------------- files

    def _download(self, remote_id: str, name: str) -> _Response:
        job = JobToken.decode(remote_id)
        stem, _, ext = name.partition(".")
        if job is None or stem != "0" or ext != job.output_format:
            return _apiframe_error(404, "NOT_FOUND", "File not found")
        if self._timeline(job)[0] is not Phase.COMPLETED:
            return _apiframe_error(404, "NOT_FOUND", "File not ready")
        width, height = images.image_size(job.aspect_ratio, job.resolution)
        caption = f"nbdesk simulator · {job.model} · {job.aspect_ratio} · {job.resolution or '1K'}"
        data = images.CACHE.get(job.seed, width, height, job.prompt_head, job.output_format,
                                caption)
        return _Response(200, data, images.CONTENT_TYPES[job.output_format],
                         {"Cache-Control": "public, max-age=86400"})


class ManualClock:
    """A clock for ``Simulator.clock`` that moves only when told: jobs advance without sleeping.

    Usage: ``clock = ManualClock(); sim.clock = clock; ...; clock.advance(0.5)``.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


# --------------------------------------------------------------------------- standalone


def run_standalone(port: int, config: SimConfig) -> None:
    """Serve until Ctrl-C or SIGTERM (``nbdesk sim --port N``)."""
    sim = Simulator(config, port=port).start()
    done = threading.Event()
    previous: Callable[[int, FrameType | None], Any] | int | None = None
    in_main = threading.current_thread() is threading.main_thread()

    def on_term(signum: int, frame: FrameType | None) -> None:
        done.set()

    if in_main:
        previous = signal.signal(signal.SIGTERM, on_term)
    keys = "any key accepted" if config.keys is None else "only the configured keys accepted"
    print(f"nbdesk simulator listening on {sim.base_url} (Apiframe, APIFree and Gemini APIs; "
          f"{keys})", flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
        sys.stdout.flush()

