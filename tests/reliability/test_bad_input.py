"""Reliability: a catalogue of bad inputs, each run through the layer a user reaches.

Every case must end in one clear line (a meaningful substring is asserted), send nothing
that costs money, and leave the library as it was. The table below is the one place that
lists them all with the same checks (single cases also live in tests/core/test_engine.py,
tests/e2e/test_cli.py, tests/api/test_images.py and tests/ui/test_references.py).

What each kind of case may do, and nothing more:

* ``input``   refused before anything is sent or written: simulator requests, paid jobs,
              job rows, items and library files all unchanged.
* ``auth``    the key is only known to be bad once the provider says so: exactly one
              request reaches the simulator, no paid job is created, one job row is
              written and is ``failed`` with ``error_kind == "auth"``; no image, no file.
* ``answer``  the server's answer is unusable (provider client level): no paid job is
              created by the attempt, no job row, no file.
* ``result``  the provider "completed" but its result is unusable (engine level, a tiny
              local server plays the provider): one job row, ``failed`` with
              ``error_kind == "download"``; no item and no file (no partial download left).
* ``library`` the library database cannot be used: the CLI exits 3 with one line and the
              database's bytes (and every other library file) are unchanged.

Every case adds one to ``report.bad_inputs``; one summary note lists them with the layer
that refuses each.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import re
import socket
import sqlite3
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from nbdesk.api.apiframe import ApiframeProvider
from nbdesk.api.apifree import ApifreeProvider
from nbdesk.api.base import ApiError, GenerationRequest, InputError, ProtocolError
from nbdesk.api.capabilities import APIFRAME
from nbdesk.api.http import RetryPolicy, download_to, make_client
from nbdesk.api.images import prepare_reference
from nbdesk.core.connector import ConfigError
from nbdesk.core.jobs import Job, JobParams, JobSpec, JobState
from nbdesk.core.library import SCHEMA_VERSION
from nbdesk.core.paths import DB_NAME
from tests.e2e.harness import Cli, Result
from tests.helpers import EngineEnv, FakeSleep, close_engine
from tests.reliability.conftest import ReliabilityReport

pytestmark = pytest.mark.anyio

#: The key EngineEnv gives the engine for Apiframe (tests/helpers.py).
FRAME_KEY = "frame-test-key-123"
FRAME = JobSpec(provider="apiframe", model="nano-banana", prompt="a red bicycle")
FREE = JobSpec(provider="apifree", model="google/nano-banana-pro", prompt="a blue boat")
FRAME_REQUEST = GenerationRequest(model="nano-banana", prompt="a red bicycle")
FREE_REQUEST = GenerationRequest(model="google/nano-banana-pro", prompt="a blue boat")
SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"
#: Files of NBDESK_HOME that are not library content (the CLI logs every run).
NOT_LIBRARY = ("logs", "settings.json", "window.ini")


# --------------------------------------------------------------------------- pictures


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 140, 200)).save(out, "PNG")
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def black_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size; its rows compress to almost nothing, so
    the file is tiny however many pixels it claims (the shape of a decompression bomb)."""
    row = b"\x00" + bytes((width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------- a tiny server


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    ctype: str = "application/json"
    length: int | None = None  # Content-Length to declare; None: the body's length
    streamed: bool = False  # no Content-Length: the body ends when the connection closes


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up early (an oversize download) is not an error here


class AnswerServer:
    """A loopback HTTP server answering each (method, path) with a scripted ``Answer``:
    the answers the simulator cannot produce (HTML, empty, huge, wrong shapes, result URLs
    on other schemes, downloads that are not images or too big)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Answer] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = urlsplit(self.path).path
                with owner._lock:
                    owner.hits[path] += 1
                answer = owner.answers.get(
                    (method, path), Answer(404, b'{"error": "no such route"}'))
                self.close_connection = True
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.ctype)
                self.send_header("Connection", "close")
                if not answer.streamed:
                    declared = len(answer.body) if answer.length is None else answer.length
                    self.send_header("Content-Length", str(declared))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client may stop reading early
                    self.wfile.write(answer.body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def answer(self, method: str, path: str, answer: Answer) -> None:
        self.answers[(method, path)] = answer

    def json(self, method: str, path: str, payload: Any, status: int = 200) -> None:
        self.answer(method, path, Answer(status, json.dumps(payload).encode()))

    def play_apiframe(self, result: Any) -> None:
        """Accept a submit as job ``fake-1``, whose status is COMPLETED with ``result``."""
        self.json("POST", "/v2/images/generate", {"jobId": "fake-1", "status": "QUEUED"}, 202)
        self.json("GET", "/v2/jobs/fake-1",
                  {"jobId": "fake-1", "status": "COMPLETED", "progress": 100,
                   "result": result, "creditCost": 1})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- the bench


@dataclass(frozen=True)
class State:
    requests: int  # simulator requests
    submits: dict[str, int]  # paid jobs the simulator created
    jobs: tuple[tuple[str, str, str | None], ...] | None  # (id, state, error_kind)
    items: int | None
    files: dict[str, str]  # library file (relative) -> sha256


class Bench:
    """One user's library (engine_env's NBDESK_HOME, shared with a CLI installation), the
    simulator, and the helpers that reach it the way a user does."""

    def __init__(self, env: EngineEnv, tmp: Path) -> None:
        self.env = env
        self.sim = env.sim
        self.home = env.home
        self.picked = tmp / "picked"  # where the user's own files live (outside the library)
        self.picked.mkdir()
        # The CLI installation shares NBDESK_HOME (tmp/home) and the simulator.
        self.cli = Cli(tmp, env.sim)
        assert self.cli.home == self.home
        self._servers: list[AnswerServer] = []
        self.before: State | None = None
        self.db_checked = False

    # -- state

    def state(self, *, db: bool = False) -> State:
        snap = self.sim.stats.snapshot()
        files: dict[str, str] = {}
        for path in sorted(self.home.rglob("*")):
            rel = path.relative_to(self.home)
            if not path.is_file() or rel.parts[0] in NOT_LIBRARY:
                continue
            if rel.name.startswith(DB_NAME) and not db:
                continue  # compared through its content (jobs, items) instead
            files[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        jobs = items = None
        if not db:
            jobs = tuple((j.id, j.state.value, j.error_kind) for j in self.env.library.jobs())
            items = self.env.library.count_items()
        return State(snap["requests"], snap["submits"], jobs, items, files)

    def mark(self, *, db: bool = False) -> None:
        """The moment before the bad input is given: what must not change from here."""
        self.db_checked = db
        self.before = self.state(db=db)

    # -- the layers a user reaches

    async def refuse(self, spec: JobSpec, count: int = 1) -> str:
        """engine.enqueue must refuse ``spec``; its message."""
        engine = self.env.engine()
        try:
            async with asyncio.timeout(30):  # a FIFO opened for reading would hang here
                with pytest.raises((InputError, ConfigError)) as info:
                    await engine.enqueue(spec, count)
        finally:
            await close_engine(engine)
        return str(info.value)

    async def run_job(self, spec: JobSpec, base_url: str | None = None) -> Job:
        """enqueue ``spec`` and wait until its job is finished (against ``base_url``)."""
        if base_url is not None:
            self.env.env["NBDESK_APIFRAME_BASE_URL"] = base_url
        engine = self.env.engine()
        try:
            async with asyncio.timeout(30):
                (job,) = await engine.enqueue(spec)
                (job,) = await engine.wait([job.id])
        finally:
            await close_engine(engine)
        return job

    async def cli_run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        saved = dict(self.cli.env)
        self.cli.env.update(env or {})
        try:
            return await asyncio.to_thread(self.cli.run, *args)
        finally:
            self.cli.env.clear()
            self.cli.env.update(saved)

    @staticmethod
    def one_line(result: Result, code: int) -> str:
        assert result.code == code, result.describe()
        (line,) = result.stderr_lines()
        assert line.startswith("nbdesk: ") and "Traceback" not in line, line
        return line

    def server(self) -> AnswerServer:
        server = AnswerServer()
        self._servers.append(server)
        return server

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=2, rng=random.Random(7), sleep=FakeSleep())

    def picture(self, name: str, data: bytes | None = None) -> Path:
        path = self.picked / name
        path.write_bytes(png_bytes() if data is None else data)
        return path

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self.cli.close()


# --------------------------------------------------------------------------- the cases

Run = Callable[[Bench], Awaitable[str]]

# Layers, named once for the summary.
VALIDATE = "engine.enqueue -> api/validate.validate_request"
REFS = "engine.enqueue -> api/images.prepare_reference, api/refs.fetch_reference"
CONNECTOR = "CLI -> core/connector (key lookup, before any request)"
KEYS_CLI = "CLI keys set -> core/secrets.validate_key (before the keychain)"
AUTH = "provider client (HTTP 401 -> AuthError, never retried) -> engine marks the job failed"
ANSWER = "provider client -> api/http.parse_json / raise_for_status"
SHAPE = "provider client -> apiframe.parse_job / apifree.unwrap"
RESULT = "engine download -> api/http.check_result_url"
DOWNLOAD = "engine download -> api/http.download_to (size cap)"
PROBE = "engine download -> api/images.probe_file"
LIBRARY = "CLI -> core/library.Library (LibraryError, file left untouched)"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # input | auth | answer | result | library
    layer: str
    expect: str  # a substring of the one-line message
    run: Run = field(compare=False)


def spec_case(name: str, spec: JobSpec, expect: str, count: int = 1) -> Case:
    async def run(b: Bench) -> str:
        b.mark()
        return await b.refuse(spec, count)

    return Case(name, "input", VALIDATE, expect, run)


def _served(b: Bench, answer: Answer) -> str:
    """A reference URL on a loopback server that answers ``answer``."""
    server = b.server()
    server.answer("GET", "/photo", answer)
    return f"{server.url}/photo"


def _refused_url() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/photo.png"


def ref_case(name: str, make: Callable[[Bench], str], expect: str) -> Case:
    """A reference the user picked: ``make`` builds it and returns what the user gave."""

    async def run(b: Bench) -> str:
        source = make(b)
        b.mark()
        return await b.refuse(JobSpec("apiframe", "nano-banana", "edit this", refs=(source,)))

    return Case(name, "input", REFS, expect, run)


# -- references


def _non_image(b: Bench) -> str:
    return str(b.picture("notes.png", b"these are my notes, not a picture\n"))


def _empty(b: Bench) -> str:
    return str(b.picture("empty.png", b""))


def _truncated(b: Bench) -> str:
    data = png_bytes((400, 300))
    return str(b.picture("cut.png", data[: len(data) - 40]))


def _hundred_megapixels(b: Bench) -> str:
    return str(b.picture("huge.png", black_png(10_000, 10_000)))


def _bomb(b: Bench) -> str:
    path = b.picture("bomb.png", black_png(20_000, 20_000))
    assert path.stat().st_size < 200_000  # 400 megapixels in a tiny file
    return str(path)


def _too_many_bytes(b: Bench) -> str:
    path = b.picked / "scan.tiff"
    with path.open("wb") as f:  # sparse: 31 MB on paper, nothing on disk
        f.truncate(31 * 1024 * 1024)
    return str(path)


def _directory(b: Bench) -> str:
    folder = b.picked / "holiday.png"
    folder.mkdir()
    return str(folder)


def _fifo(b: Bench) -> str:
    path = b.picked / "pipe.png"
    os.mkfifo(path)  # no writer: an open() for reading would block forever
    return str(path)


def _vanished(b: Bench) -> str:
    path = b.picture("moved.png")
    prepare_reference(str(path))  # picked: the tray checked it and showed it
    path.unlink()  # then moved away before the user pressed Generate
    return str(path)


def _unreadable(b: Bench) -> str:
    # We run as root here: mode 000 and a directory without x permission do not stop
    # root (CAP_DAC_OVERRIDE), a FIFO is refused by stat() before any open(), and a
    # dangling symlink is just "no such file". A symlink loop fails in the kernel for
    # every user, root included: stat()/open() raise ELOOP.
    a, c = b.picked / "loop-a.png", b.picked / "loop-b.png"
    a.symlink_to(c.name)
    c.symlink_to(a.name)
    with pytest.raises(OSError):
        a.open("rb")
    return str(a)


# -- keys (the CLI, as a user runs it)


def key_case(name: str, value: str) -> Case:
    async def run(b: Bench) -> str:
        b.mark()
        result = await b.cli_run("generate", "a red bicycle", "--provider", "apiframe",
                                 env={"NBDESK_APIFRAME_API_KEY": value})
        return b.one_line(result, 3)

    return Case(name, "input", CONNECTOR,
                "NBDESK_APIFRAME_API_KEY is set but empty: set it to your Apiframe API key, "
                "or unset it to use the key stored in the keychain", run)


async def _keys_set_empty(b: Bench) -> str:
    b.mark()
    result = await b.cli_run("keys", "set", "apiframe")  # stdin is empty
    line = b.one_line(result, 2)
    assert not list(b.cli.system.rglob("*keyring*"))  # nothing keychain-like was created
    return line


def wrong_key_case(name: str, spec: JobSpec) -> Case:
    async def run(b: Bench) -> str:
        b.sim.config.keys = {spec.provider: {"the-right-key-000"}}
        b.mark()
        job = await b.run_job(spec)
        assert job.error is not None and FRAME_KEY not in job.error
        return job.error

    return Case(name, "auth", AUTH, "rejected the API key", run)


async def _revoked_key(b: Bench) -> str:
    b.sim.config.keys = {"apiframe": {FRAME_KEY}}
    first = await b.run_job(FRAME)
    assert first.state is JobState.COMPLETED, first.error
    b.sim.config.keys = {"apiframe": {"the-rotated-key-001"}}  # revoked at the provider
    b.mark()  # the earlier image must survive untouched
    job = await b.run_job(FRAME)
    assert job.error is not None
    return job.error


# -- server answers (provider client)


def answer_case(name: str, layer: str, expect: str,
                call: Callable[[Bench, AnswerServer, httpx.AsyncClient], Awaitable[Any]],
                error: type[ApiError] = ApiError) -> Case:
    async def run(b: Bench) -> str:
        server = b.server()
        b.mark()
        async with make_client(timeout=10.0) as http:
            with pytest.raises(error) as info:
                await call(b, server, http)
        return str(info.value)

    return Case(name, "answer", layer, expect, run)


def _frame(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> ApiframeProvider:
    return ApiframeProvider(http, FRAME_KEY, server.url, b.policy())


def _free(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> ApifreeProvider:
    return ApifreeProvider(http, "free-test-key-456", server.url, b.policy())


async def _html_poll(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> None:
    server.answer("GET", "/v2/jobs/j1", Answer(
        200, b"<!doctype html><html><body>Sign in to continue</body></html>", "text/html"))
    await _frame(b, server, http).poll("j1")


async def _html_502_submit(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> None:
    path = "/v2/images/generate"
    server.answer("POST", path, Answer(
        502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"))
    try:
        await _frame(b, server, http).submit(FRAME_REQUEST, "idem-1")
    finally:
        assert server.hits[path] == 2  # retried, but within the policy's bound


async def _empty_submit(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> None:
    path = "/v1/image/submit"
    server.answer("POST", path, Answer(200, b""))
    try:
        await _free(b, server, http).submit(FREE_REQUEST, "unused")
    finally:
        assert server.hits[path] == 1  # no idempotency key: never sent twice


HUGE = 24 * 1024 * 1024


async def _huge_poll(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> None:
    server.answer("GET", "/v2/jobs/j1", Answer(200, b"x" * HUGE, "application/json"))
    await _frame(b, server, http).poll("j1")


async def _list_poll(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> None:
    server.json("GET", "/v2/jobs/j1", [{"status": "COMPLETED"}])
    await _frame(b, server, http).poll("j1")


async def _no_url_poll(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> None:
    server.json("GET", "/v2/jobs/j1", {"status": "COMPLETED", "result": {"note": "done"}})
    await _frame(b, server, http).poll("j1")


async def _no_job_id(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> None:
    server.json("POST", "/v2/images/generate", {"status": "QUEUED", "id": 42}, 202)
    await _frame(b, server, http).submit(FRAME_REQUEST, "idem-2")


async def _no_resp_data(b: Bench, server: AnswerServer, http: httpx.AsyncClient) -> None:
    server.json("POST", "/v1/image/submit", {"code": 200, "code_msg": "Success"})
    await _free(b, server, http).submit(FREE_REQUEST, "unused")


async def _malformed_json(b: Bench) -> str:
    # The simulator can produce this one: its "malformed" fault cuts a JSON answer short.
    async with make_client(timeout=10.0) as http:
        provider = ApiframeProvider(http, FRAME_KEY, b.sim.base_url, b.policy())
        remote = await provider.submit(FRAME_REQUEST, "idem-3")
        b.sim.script("apiframe.poll", ["malformed"])
        b.mark()
        with pytest.raises(ProtocolError) as info:
            await provider.poll(remote.remote_id)
    assert b.sim.stats.snapshot()["polls"]["apiframe"] == 1  # a protocol error: no retry
    return str(info.value)


# -- results the provider "completed" (engine + a local server playing Apiframe)


def result_case(name: str, layer: str, expect: str,
                script: Callable[[AnswerServer], None]) -> Case:
    async def run(b: Bench) -> str:
        server = b.server()
        script(server)
        b.mark()
        job = await b.run_job(FRAME, base_url=server.url)
        assert job.error is not None
        return job.error

    return Case(name, "result", layer, expect, run)


def _ftp_result(server: AnswerServer) -> None:
    server.play_apiframe("ftp://files.example.com/out/0.png")


def _file_result(server: AnswerServer) -> None:
    server.play_apiframe({"images": ["file:///etc/passwd"]})


def _html_download(server: AnswerServer) -> None:
    server.play_apiframe([f"{server.url}/files/0.png"])
    server.answer("GET", "/files/0.png", Answer(
        200, b"<html><body>Access denied</body></html>", "image/png"))


def _expired_link(server: AnswerServer) -> None:
    server.play_apiframe([f"{server.url}/files/0.png"])
    server.answer("GET", "/files/0.png", Answer(
        403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        "application/xml"))


def _oversize_download(server: AnswerServer) -> None:
    server.play_apiframe(f"{server.url}/files/0.png")
    server.answer("GET", "/files/0.png", Answer(
        200, b"\x89PNG" + bytes(65_536), "image/png", length=APIFRAME.max_download_bytes + 1))


async def _streamed_oversize(b: Bench) -> str:
    server = b.server()
    server.answer("GET", "/big.png", Answer(200, bytes(3_000_000), "image/png", streamed=True))
    b.mark()
    dest = b.env.library.tmp_path("streamed", 0)  # where the engine downloads to
    async with make_client(timeout=10.0) as http:
        with pytest.raises(ProtocolError) as info:
            await download_to(http, f"{server.url}/big.png", dest, origin=server.url,
                              max_bytes=2_000_000)
    assert not dest.exists()
    return str(info.value)


# -- the library database (the CLI)


def _close_libraries(b: Bench) -> Path:
    b.env.library.close()
    b.cli.library.close()
    db = b.home / DB_NAME
    for extra in (db.with_name(DB_NAME + "-wal"), db.with_name(DB_NAME + "-shm")):
        assert not extra.exists()  # the last connection checkpointed and removed them
    return db


async def _corrupted_db(b: Bench) -> str:
    db = _close_libraries(b)
    db.write_bytes(b"SQLite format 2\x00" + b"this is not a database at all " * 300)
    b.mark(db=True)
    return b.one_line(await b.cli_run("generate", "a red bicycle", "--provider", "apiframe"), 3)


async def _newer_db(b: Bench) -> str:
    db = _close_libraries(b)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    b.mark(db=True)
    return b.one_line(await b.cli_run("jobs"), 3)


# -- the table

def _urls(n: int) -> tuple[str, ...]:
    return tuple(f"https://images.example.com/ref-{i}.png" for i in range(n))


def _four_pictures(b: Bench) -> tuple[str, ...]:
    return tuple(str(b.picture(f"r{i}.png", png_bytes((32 + i, 32)))) for i in range(4))


async def _too_many_files(b: Bench) -> str:
    refs = _four_pictures(b)
    b.mark()
    return await b.refuse(JobSpec("apiframe", "nano-banana", "compose these", refs=refs))


CASES: list[Case] = [
    # the prompt and the parameters: the capability table
    spec_case("empty prompt", JobSpec("apiframe", "nano-banana", ""), "the prompt is empty"),
    spec_case("whitespace prompt", JobSpec("apifree", "google/nano-banana-pro", " \n\t "),
              "the prompt is empty"),
    spec_case("prompt over the Apiframe limit",
              JobSpec("apiframe", "nano-banana", "x" * 2001), "takes at most 2000"),
    spec_case("prompt over the APIFree limit",
              JobSpec("apifree", "google/nano-banana-pro", "y" * 20_001), "takes at most 20000"),
    spec_case("unknown model", JobSpec("apiframe", "nano-banana-9", "a cat"),
              "has no model 'nano-banana-9'"),
    spec_case("ratio the model lacks",
              JobSpec("apiframe", "nano-banana", "a cat", JobParams(aspect_ratio="21:9")),
              "has no aspect ratio '21:9'"),
    spec_case("resolution on a model without one",
              JobSpec("apiframe", "nano-banana", "a cat", JobParams(resolution="2K")),
              "has no resolution setting"),
    spec_case("resolution the model lacks",
              JobSpec("apiframe", "nano-banana-pro", "a cat", JobParams(resolution="8K")),
              "has no resolution '8K'"),
    spec_case("format the model lacks",
              JobSpec("apiframe", "nano-banana-2", "a cat", JobParams(output_format="gif")),
              "has no output format 'gif'"),
    spec_case("format on a provider that picks it",
              JobSpec("apifree", "google/nano-banana-pro", "a cat",
                      JobParams(output_format="png")), "does not let you pick a format"),
    spec_case("search grounding the model lacks",
              JobSpec("apifree", "google/nano-banana-pro", "a cat",
                      JobParams(google_search=True)), "has no search grounding"),
    spec_case("more reference URLs than the model takes",
              JobSpec("apiframe", "nano-banana-pro", "a cat", refs=_urls(15)),
              "takes at most 14"),
    Case("more reference files than the model takes", "input", VALIDATE, "takes at most 3",
         _too_many_files),
    spec_case("zero images", FRAME, "at least 1", count=0),
    # references: what the file really is
    ref_case("a non-image file", _non_image, f"not an image (or not a supported format: "
                                             f"{SUPPORTED})"),
    ref_case("an empty file", _empty, "the file is empty"),
    ref_case("a truncated PNG", _truncated, "truncated or damaged"),
    ref_case("a 100-megapixel image", _hundred_megapixels,
             "too large: 10000×10000 pixels (limit 50 megapixels)"),
    ref_case("a decompression bomb", _bomb, "too large: 400 megapixels (limit 50 megapixels)"),
    ref_case("a file over 30 MB", _too_many_bytes, "the file is too big: 31.0 MB"),
    ref_case("a directory", _directory, "is a folder, not an image file"),
    ref_case("a FIFO with no writer", _fifo, "is not a regular file"),
    ref_case("a file that vanished before submit", _vanished, "no such file"),
    ref_case("an unreadable file (symlink loop)", _unreadable,
             "cannot read it (Too many levels of symbolic links)"),
    ref_case("a file: URL", lambda b: "file:///etc/passwd",
             "only http(s) URLs or local image files"),
    ref_case("a javascript: URL", lambda b: "javascript:alert(document.cookie)",
             "only http(s) URLs or local image files"),
    ref_case("a data: URL", lambda b: "data:text/html;base64,PGgxPmhpPC9oMT4=",
             "only http(s) URLs or local image files"),
    ref_case("an http URL without a host", lambda b: "https:///cat.png", "has no host name"),
    ref_case("an http URL with spaces", lambda b: "https://example.com/my cat.png",
             "the URL contains spaces"),
    ref_case("a URL that answers an HTML page", lambda b: _served(
        b, Answer(200, b"<!doctype html><p>Log in to see this photo</p>", "text/html")),
        "the address leads to a web page, not to an image"),
    ref_case("a URL that answers 404", lambda b: _served(
        b, Answer(404, b"<h1>Not Found</h1>", "text/html")),
        "the server answered HTTP 404, so the provider could not fetch it either"),
    ref_case("a URL that answers bytes that are no image", lambda b: _served(
        b, Answer(200, b"GIF89a" + bytes(40), "image/gif")), "not an image"),
    ref_case("a URL on a host that refuses connections", lambda b: _refused_url(),
             "cannot fetch it"),
    # keys
    key_case("an empty key", ""),
    key_case("a whitespace key", "   "),
    Case("an empty key given to `keys set`", "input", KEYS_CLI, "The API key is empty",
         _keys_set_empty),
    wrong_key_case("a wrong Apiframe key", FRAME),
    wrong_key_case("a wrong APIFree key", FREE),
    Case("a revoked key", "auth", AUTH, "rejected the API key (HTTP 401)", _revoked_key),
    # server answers
    answer_case("an HTML page as a status answer", ANSWER,
                "status: expected JSON but got an HTML page (HTTP 200)", _html_poll,
                ProtocolError),
    answer_case("an HTML error page to a submit", ANSWER,
                "submit: provider unavailable (HTTP 502): an HTML page", _html_502_submit),
    answer_case("an empty answer to a submit", ANSWER, "expected JSON but got an empty body",
                _empty_submit),
    answer_case("a huge answer", ANSWER, "answer is too large (over 2.0 MiB)", _huge_poll,
                ProtocolError),
    Case("malformed JSON", "answer", ANSWER, "status: expected JSON but got", _malformed_json),
    answer_case("JSON of the wrong shape (a list)", SHAPE,
                "status: the provider's answer is not a JSON object", _list_poll, ProtocolError),
    answer_case("a completed job without an image URL", SHAPE,
                "the job completed but its result holds no image URL", _no_url_poll,
                ProtocolError),
    answer_case("a submit answer without a job id", SHAPE,
                "submit: the provider's answer has no jobId", _no_job_id),
    answer_case("an APIFree envelope without resp_data", SHAPE,
                "the provider's answer has no resp_data object", _no_resp_data),
    # results
    result_case("a result URL on ftp:", RESULT,
                "result URL that is not http(s): 'ftp://files.example.com/out/0.png'",
                _ftp_result),
    result_case("a result URL on file:", RESULT,
                "result URL that is not http(s): 'file:///etc/passwd'", _file_result),
    result_case("a download that is not an image", PROBE,
                "the provider's file is not a usable image: not an image", _html_download),
    result_case("a download larger than the cap", DOWNLOAD, "MiB limit", _oversize_download),
    result_case("an expired image link (HTTP 403)", DOWNLOAD,
                "download: the image link was refused (HTTP 403); it may have expired. Retry "
                "asks the provider for a fresh link (no new payment)", _expired_link),
    Case("a streamed download over the cap", "answer", DOWNLOAD,
         "download: the image is over the 1.9 MiB limit", _streamed_oversize),
    # the library
    Case("a corrupted library database", "library", LIBRARY,
         "is damaged (file is not a database); it was left untouched", _corrupted_db),
    Case("a library database from a newer nbdesk", "library", LIBRARY,
         f"written by a newer nbdesk (schema 99, this version knows {SCHEMA_VERSION}); "
         "it was left untouched",
         _newer_db),
]


# --------------------------------------------------------------------------- the checks


@pytest.fixture(scope="module")
def catalogue(report: ReliabilityReport) -> Iterator[list[str]]:
    """Collects one line per case; one summary note at the end of the module."""
    lines: list[str] = []
    yield lines
    if lines:
        report.notes.append(f"bad-input catalogue ({len(lines)} cases, refusing layer):\n"
                            + "\n".join(f"    {line}" for line in lines))


@pytest.fixture
def bench(engine_env: EngineEnv, tmp_path: Path) -> Iterator[Bench]:
    b = Bench(engine_env, tmp_path)
    try:
        yield b
    finally:
        b.close()


def test_the_catalogue_has_at_least_30_distinct_cases() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input(case: Case, bench: Bench, report: ReliabilityReport,
                         catalogue: list[str]) -> None:
    with report.lock:
        report.bad_inputs += 1
    message = await case.run(bench)

    # One clear line.
    assert message.strip() and "\n" not in message.strip(), message
    assert "Traceback" not in message and "internal error" not in message, message
    assert case.expect in message, message

    before = bench.before
    assert before is not None, "the case never marked its starting point"
    after = bench.state(db=bench.db_checked)
    # Never a paid job, whatever the kind.
    assert after.submits == before.submits
    if case.kind in ("input", "library"):
        assert after == before
    elif case.kind == "auth":
        assert after.requests - before.requests == 1  # one refused request, no retry
        assert after.items == before.items and after.files == before.files
        assert before.jobs is not None and after.jobs is not None
        new = [j for j in after.jobs if j not in before.jobs]
        assert [(state, kind) for _id, state, kind in new] == [("failed", "auth")]
    elif case.kind == "answer":
        assert (after.jobs, after.items, after.files) == (before.jobs, before.items,
                                                           before.files)
    elif case.kind == "result":
        assert after.requests == before.requests  # the simulator was not involved
        assert after.items == before.items and after.files == before.files  # no partial file
        assert before.jobs is not None and after.jobs is not None
        new = [j for j in after.jobs if j not in before.jobs]
        assert [(state, kind) for _id, state, kind in new] == [("failed", "download")]
    else:
        raise AssertionError(f"unknown kind {case.kind}")
    catalogue.append(f"{case.name}: {case.layer}")


# --------------------------------------------------------------------------- findings


async def test_a_bad_second_reference_leaves_no_copy_of_the_first(bench: Bench) -> None:
    good = bench.picture("good.png")
    bad = bench.picture("notes.png", b"not a picture")
    bench.mark()
    message = await bench.refuse(JobSpec("apiframe", "nano-banana", "x",
                                         refs=(str(good), str(bad))))
    assert "notes.png: not an image" in message
    assert bench.state() == bench.before


async def test_an_oversize_download_message_does_not_contradict_itself(bench: Bench) -> None:
    server = bench.server()
    max_bytes = APIFRAME.max_download_bytes
    server.answer("GET", "/big.png", Answer(200, b"\x89PNG", "image/png", length=max_bytes + 1))
    async with make_client(timeout=10.0) as http:
        with pytest.raises(ProtocolError) as info:
            await download_to(http, f"{server.url}/big.png", bench.picked / "x.part",
                              origin=server.url, max_bytes=max_bytes)
    found = re.search(r"is ([\d.]+) MiB, over the ([\d.]+) MiB limit", str(info.value))
    assert found is not None, str(info.value)
    size, limit = (float(n) for n in found.groups())
    assert size > limit or (size == limit and "." in found.group(2)), str(info.value)


async def test_a_huge_valid_json_answer_is_refused(bench: Bench) -> None:
    server = bench.server()
    body = json.dumps({"status": "PROCESSING", "progress": 5, "pad": "x" * HUGE}).encode()
    server.answer("GET", "/v2/jobs/j1", Answer(200, body))
    async with make_client(timeout=10.0) as http:
        provider = ApiframeProvider(http, FRAME_KEY, server.url, bench.policy())
        with pytest.raises(ProtocolError, match="too large"):
            await provider.poll("j1")


async def test_a_key_revoked_while_a_job_runs_does_not_cost_a_second_payment(
    bench: Bench,
) -> None:
    sim = bench.sim
    sim.config.keys = {"apiframe": {FRAME_KEY}}
    engine = bench.env.engine()
    revoked = False

    def revoke(job: Job) -> None:
        nonlocal revoked
        if job.state is JobState.SUBMITTED and not revoked:
            revoked = True
            sim.config.keys = {"apiframe": {"the-rotated-key-001"}}

    engine.subscribe(revoke)
    try:
        (job,) = await engine.enqueue(FRAME)
        (job,) = await engine.wait([job.id])
        assert (job.state, job.error_kind) == (JobState.FAILED, "auth")
        sim.config.keys = {"apiframe": {FRAME_KEY}}  # the user fixes the key and retries
        await engine.retry(job.id)
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    assert sim.stats.snapshot()["submits"]["apiframe"] == 1
