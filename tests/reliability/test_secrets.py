"""Reliability: an API key never leaves the keychain (or the environment variable it came
from), a hanging keychain never freezes the window, and keys only travel over TLS that is
verified (plain http only to this computer).

Leak scans: after representative operations with unique, recognisable key values, every
file under NBDESK_HOME (the database and its WAL, settings.json, window.ini, logs, crash
reports, images with their decoded metadata, reference copies, thumbnails), the CLI's
stdout/stderr, the captured log records and the texts the window shows are searched for
each key, raw and encoded (URL-encoded, base64 and base64url at the three byte
alignments, UTF-16). Every hit is added to ``report.leaks``; there must be none.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import keyring.backend
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from PySide6.QtCore import QTimer
from pytestqt.qtbot import QtBot

from nbdesk.api.apiframe import ApiframeProvider
from nbdesk.api.base import GenerationRequest, TransientError
from nbdesk.api.http import RetryPolicy, make_client
from nbdesk.api.urls import check_base_url
from nbdesk.core.jobs import JobSpec, JobState
from nbdesk.core.paths import DB_NAME, Paths
from nbdesk.core.runtime import setup_logging
from nbdesk.core.secrets import SecretStore
from nbdesk.core.settings import validate_base_url
from nbdesk.sim import SimConfig, Simulator
from nbdesk.ui.crash import CrashHandler
from nbdesk.ui.main_window import MainWindow
from nbdesk.ui.settings_dialog import CHECKING, SettingsDialog
from tests.e2e.harness import Cli, Result
from tests.keychain import SecretServiceEnv
from tests.reliability.conftest import ReliabilityReport, WindowEnv
from tests.reliability.leaks import LeakScan
from tests.ui.conftest import run_async

# Unique, recognisable keys. "+", "/" and "=" make the URL-encoded forms differ from the
# raw ones (and are legal in a key: printable, no spaces).
CLI_FRAME_KEY = "afk_LEAKcanary+cliFrame/7Q2x9=Zt41"
CLI_FREE_KEY = "LEAKcanary-cliFree+Mv8k3/Rw57=Hd02"
CLI_WRONG_KEY = "afk_LEAKcanary+cliWrong/Pq5s8=Lx33"
APP_FRAME_KEY = "afk_LEAKcanary+appFrame/Jx4c1=Ub90"
APP_FREE_KEY = "LEAKcanary-appFree+Ns2w6/Ey81=Gk47"
STORED_KEY = "LEAKcanary-keychain+Vb3n9/Qa62=Wt18"


# --------------------------------------------------------------------------- the scanner


@contextlib.contextmanager
def app_logging(paths: Paths) -> Iterator[Path]:
    """The app's own log file under NBDESK_HOME (setup_logging, as app.main does),
    removed again afterwards: the root logger is process-wide."""
    root = logging.getLogger()
    before = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in ("", "httpx", "httpcore")}
    setup_logging(paths, verbose=True)
    added = [h for h in root.handlers if h not in before]
    assert added, "another test left nbdesk's log handler installed"
    try:
        yield paths.log_dir / "nbdesk.log"
    finally:
        for handler in added:
            root.removeHandler(handler)
            handler.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def picture(path: Path) -> Path:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), (220, 120, 40)).save(out, "PNG")
    path.write_bytes(out.getvalue())
    return path


def test_the_leak_scan_finds_a_planted_key(tmp_path: Path) -> None:
    """A control: every form the scans look for is really found where it hides."""
    key = "LEAKcanary-planted+Kd7f2/Zs90=Qe55"
    home = tmp_path / "home"
    (home / "images").mkdir(parents=True)
    (home / "logs").mkdir()
    conn = sqlite3.connect(home / DB_NAME)
    conn.execute("CREATE TABLE jobs (error TEXT)")
    conn.execute("INSERT INTO jobs VALUES (?)", (f"refused key {key}",))
    conn.commit()
    conn.close()
    info = PngInfo()
    info.add_text("Comment", f"made with {key}", zip=True)  # zTXt: compressed
    image = home / "images" / "0.png"
    Image.new("RGB", (8, 8)).save(image, "PNG", pnginfo=info)
    assert key.encode() not in image.read_bytes()
    (home / "logs" / "nbdesk.log").write_text(f"GET /x?key={quote(key, safe='')}\n")
    (home / "window.ini").write_bytes(base64.b64encode(b"=" + key.encode() + b"!"))
    (home / "settings.json").write_bytes(key.encode("utf-16-le"))

    scan = LeakScan({"planted": key})
    scan.tree(home)
    scan.text("a line", "nothing to see here")
    found = sorted({hit.split(" in ", 1)[1] for hit in scan.hits})
    assert found == sorted([
        str(home / DB_NAME), f"{image} (metadata)", str(home / "logs" / "nbdesk.log"),
        str(home / "window.ini"), str(home / "settings.json")])
    assert any("(url-encoded)" in h for h in scan.hits)
    assert any("(base64@1)" in h for h in scan.hits)


# --------------------------------------------------------------------------- the CLI


def test_cli_operations_leave_no_key_anywhere(
    tmp_path: Path, report: ReliabilityReport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = {"apiframe env key": CLI_FRAME_KEY, "apifree env key": CLI_FREE_KEY,
            "wrong apiframe key": CLI_WRONG_KEY}
    scan = LeakScan(keys)
    # Only the canary keys are accepted: a completed job proves its key was really sent.
    config = SimConfig(queue_seconds=0.05, job_seconds=0.3,
                       keys={"apiframe": {CLI_FRAME_KEY}, "apifree": {CLI_FREE_KEY}})
    with Simulator(config) as sim:
        cli = Cli(tmp_path / "user", sim,
                  keys={"apiframe": CLI_FRAME_KEY, "apifree": CLI_FREE_KEY})
        try:
            ref = picture(tmp_path / "sketch.png")

            def run(*args: str, code: int = 0) -> Result:
                result = cli.run(*args)
                assert result.code == code, result.describe()
                scan.result(result, " ".join(args))
                return result

            run("-v", "generate", "a lighthouse at dusk", "--provider", "apiframe",
                "--ref", str(ref), "--json")
            run("-v", "generate", "a harbour at dawn", "--provider", "apifree", "--json")
            submitted = run("-v", "generate", "two foxes", "--provider", "apiframe",
                            "--count", "2", "--no-wait", "--json")
            assert all(r["remote_id"] for r in submitted.records())
            resumed = run("-v", "resume", "--json")
            assert [r["status"] for r in resumed.records()] == ["completed", "completed"]
            run("jobs")
            run("jobs", "--json")
            run("search", "lighthouse")
            run("search", "harbour", "--json")
            listed = run("keys", "list")
            assert "from NBDESK_APIFRAME_API_KEY" in listed.stdout
            cli.env["NBDESK_APIFRAME_API_KEY"] = CLI_WRONG_KEY  # a failed auth
            refused = run("-v", "generate", "not with this key", "--provider", "apiframe",
                          "--json", code=3)
            assert "API key" in refused.records()[0]["error"]

            jobs = cli.jobs()
            assert sorted(j.state.value for j in jobs) == ["completed"] * 4 + ["failed"]
            assert sim.stats.snapshot()["submits"] == {"apiframe": 3, "apifree": 1, "gemini": 0}
            scan.tree(cli.home)  # NBDESK_HOME: database + WAL, settings, logs, images, refs
            scan.tree(cli.system)  # the private HOME / XDG folders of the runs
        finally:
            cli.close()
    scan.records(caplog)
    assert {"database", "wal", "settings.json", "log", "images", "refs"} <= scan.names(
        cli.home), scan.names(cli.home)
    scan.report_to(report, "CLI generate/resume/jobs/search/keys list/failed auth")
    assert scan.hits == []


# --------------------------------------------------------------------------- the app


@pytest.fixture
def app_sim() -> Iterator[Simulator]:
    """In-process: these tests change which keys it accepts. Stopped after the engine."""
    with Simulator(SimConfig(queue_seconds=0.05, job_seconds=0.3)) as sim:
        yield sim


@pytest.fixture
def ui_env(app_sim: Simulator, make_ui: Callable[..., WindowEnv]) -> WindowEnv:
    """tests/ui's real runtime + engine + controller on a fresh NBDESK_HOME."""
    return make_ui(app_sim, concurrency=4)


def window_texts(window: MainWindow) -> list[str]:
    texts = [window.messages.label.text(), window.statusBar().currentMessage()]
    for label in window.key_labels.values():
        texts += [label.text(), label.toolTip()]
    return texts


def crash_with(handler: CrashHandler, qtbot: QtBot, message: str) -> list[str]:
    """An uncaught exception whose message holds keys: the report and the dialog."""
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        handler.handle(type(exc), exc, exc.__traceback__)
    qtbot.waitUntil(lambda: len(handler.dialogs) == 1, timeout=5000)
    box = handler.dialogs[0]
    shown = [box.text(), box.informativeText(), box.detailedText()]
    assert "RuntimeError" in box.detailedText() and "***" in box.detailedText()
    box.close()
    return shown


def test_the_app_and_a_crash_report_leave_no_key_anywhere(
    qtbot: QtBot, ui_env: WindowEnv, caplog: pytest.LogCaptureFixture, report: ReliabilityReport
) -> None:
    caplog.set_level(logging.DEBUG)
    # The runtime reads its keys from this mapping at every lookup.
    ui_env.env["NBDESK_APIFRAME_API_KEY"] = APP_FRAME_KEY
    ui_env.env["NBDESK_APIFREE_API_KEY"] = APP_FREE_KEY
    ui_env.sim.config.keys = {"apiframe": {APP_FRAME_KEY}, "apifree": {"another-key-000"}}
    scan = LeakScan({"apiframe env key": APP_FRAME_KEY, "apifree env key": APP_FREE_KEY})
    paths = ui_env.rt.paths
    messages: list[str] = []
    ui_env.controller.message.connect(lambda _level, text: messages.append(text))
    crash = CrashHandler(paths.log_dir)
    crash.install()
    try:
        with app_logging(paths) as log_file:
            window = ui_env.show_window()
            qtbot.waitUntil(lambda: "key from NBDESK_APIFRAME_API_KEY"
                            in window.key_labels["apiframe"].text()
                            and "key from NBDESK_APIFREE_API_KEY"
                            in window.key_labels["apifree"].text(), timeout=5000)
            composer = window.composer
            assert composer.select_provider("apiframe")
            composer.set_prompt("a lighthouse at dusk")
            with qtbot.waitSignal(ui_env.controller.itemsAdded, timeout=20_000):
                composer.queue()
            # The library grid shows it: its thumbnail is written to disk.
            qtbot.waitUntil(lambda: any(paths.thumbnails.rglob("*.jpg")), timeout=10_000)

            assert composer.select_provider("apifree")  # refused by the provider: 401
            composer.set_prompt("a harbour at dawn")
            composer.queue()
            qtbot.waitUntil(lambda: window.messages.level == "error"
                            and "API key" in window.messages.label.text(), timeout=15_000)

            shown = crash_with(crash, qtbot, f"request failed: X-API-Key: {APP_FRAME_KEY}; "
                                             f"Authorization: Bearer {APP_FREE_KEY}")
            texts = window_texts(window)
            window.close()  # saves the layout (window.ini)
            assert log_file.is_file()
    finally:
        crash.uninstall()
    jobs = ui_env.rt.library.jobs()
    assert sorted((j.provider, j.state.value, j.error_kind) for j in jobs) == [
        ("apiframe", "completed", None), ("apifree", "failed", "auth")]

    for n, text in enumerate([*shown, *texts, *messages]):
        scan.text(f"window text #{n}", text)
    scan.tree(paths.root)
    scan.records(caplog)
    assert {"database", "wal", "settings.json", "window.ini", "log", "crash report",
            "images", "thumbnails"} <= scan.names(paths.root), scan.names(paths.root)
    scan.report_to(report, "window, job, failed auth, thumbnails, crash report")
    assert scan.hits == []


def settled(qtbot: QtBot, dialog: SettingsDialog) -> None:
    qtbot.waitUntil(lambda: not dialog.busy()
                    and all(dialog.key_status(p) != CHECKING for p in dialog.key_rows),
                    timeout=10_000)


@pytest.mark.keychain
def test_a_key_saved_in_settings_goes_to_the_keychain_and_nowhere_else(
    qtbot: QtBot, ui_env: WindowEnv, secret_service: SecretServiceEnv,
    caplog: pytest.LogCaptureFixture, report: ReliabilityReport,
) -> None:
    caplog.set_level(logging.DEBUG)
    # No environment key for APIFree: the runtime must take it from the private keychain.
    del ui_env.env["NBDESK_APIFREE_API_KEY"]
    ui_env.sim.config.keys = {"apifree": {STORED_KEY}}
    scan = LeakScan({"key saved in Settings": STORED_KEY})
    paths = ui_env.rt.paths
    messages: list[str] = []
    ui_env.controller.message.connect(lambda _level, text: messages.append(text))
    crash = CrashHandler(paths.log_dir)
    crash.install()
    try:
        with app_logging(paths):
            dialog = SettingsDialog(ui_env.controller, secrets=SecretStore())
            ui_env.keep(dialog)
            settled(qtbot, dialog)
            row = dialog.key_rows["apifree"]
            row.field.setText(STORED_KEY)
            with qtbot.waitSignal(dialog.keysChanged, timeout=10_000):
                row.save.click()
            settled(qtbot, dialog)
            assert dialog.key_status("apifree").startswith("Stored in Secret Service")
            assert row.field.text() == ""
            with qtbot.waitSignal(dialog.settingsSaved, timeout=5000):
                dialog.save_button.click()  # settings.json written with the key stored

            # The key is used for real: a job with it completes (the simulator accepts
            # only this key), read from the keychain by the runtime's own SecretStore.
            with qtbot.waitSignal(ui_env.controller.itemsAdded, timeout=20_000):
                run_async(qtbot, ui_env.controller.submit(JobSpec(
                    "apifree", "google/nano-banana-pro", "a harbour at dawn")))
            shown = crash_with(crash, qtbot, f"keychain said: {STORED_KEY}")
            texts = [dialog.message_text(), dialog.keychain_text(),
                     *(dialog.key_status(p) for p in dialog.key_rows),
                     *(r.field.text() for r in dialog.key_rows.values())]
    finally:
        crash.uninstall()
    assert SecretStore().lookup("apifree").key == STORED_KEY  # where it belongs
    (job,) = ui_env.rt.library.jobs()
    assert job.state is JobState.COMPLETED, job.error

    for n, text in enumerate([*shown, *texts, *messages]):
        scan.text(f"dialog text #{n}", text)
    scan.tree(paths.root)
    scan.records(caplog)
    assert {"database", "settings.json", "log", "crash report", "images"} <= scan.names(
        paths.root), scan.names(paths.root)
    scan.report_to(report, "Settings dialog -> private keychain, a job with it, crash")
    assert scan.hits == []


# --------------------------------------------------------------------------- a hanging keychain


class HangingKeyring(keyring.backend.KeyringBackend):
    """Every read blocks until ``release`` is set: a D-Bus call nobody answers."""

    priority = 1
    viable = False  # never picked by keyring's auto-detection

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.release = threading.Event()
        self.calls = 0

    def get_password(self, service: str, username: str) -> str | None:
        self.calls += 1
        self.release.wait()
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self.release.wait()

    def delete_password(self, service: str, username: str) -> None:
        self.release.wait()


def test_a_hanging_keychain_does_not_freeze_the_window(
    qtbot: QtBot, ui_env: WindowEnv, report: ReliabilityReport
) -> None:
    backend = HangingKeyring()
    ui_env.rt.secrets = SecretStore(timeout=0.5, environ={}, backend=backend)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    try:
        asked = time.monotonic()  # (the lookups start while the window is shown)
        window = ui_env.show_window()  # the status bar asks the keychain at once
        timer.start()
        started = time.monotonic()
        labels = window.key_labels
        assert all(label.text().endswith(": …") for label in labels.values())
        qtbot.waitUntil(lambda: all(label.text().endswith("keychain unavailable")
                                    for label in labels.values()), timeout=5000)
        waited = time.monotonic() - asked
        timer.stop()
        for label in labels.values():
            assert "did not answer within 0.5 s" in label.toolTip()
        # The lookups really hung: one per provider, shared by the status bar and the
        # composer (one key-status model); the first in the keychain, the others waiting
        # their turn, one keychain call at a time; all were told.
        assert backend.calls == 1
        assert waited >= 0.5
        # The GUI thread stayed free the whole time: the timer kept firing.
        gaps = [b - a for a, b in zip([started, *ticks], ticks, strict=False)]
        assert len(ticks) >= 20, ticks
        stall = max(gaps)
        assert stall < 0.4, f"the GUI thread stalled {stall:.3f} s"
        with report.lock:
            report.notes.append(f"hanging keychain: told after {waited:.2f} s; GUI thread's "
                                f"longest stall meanwhile {stall * 1000:.0f} ms")
        window.close()
    finally:
        timer.stop()
        backend.release.set()


# --------------------------------------------------------------------------- TLS and base URLs


@pytest.mark.anyio
async def test_the_http_client_verifies_certificates_and_follows_no_redirects() -> None:
    async with make_client() as client:
        transport = client._transport
        assert isinstance(transport, httpx.AsyncHTTPTransport)
        context = transport._pool._ssl_context
        assert context is not None
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
        # A redirect would carry X-API-Key to whatever host it names.
        assert client.follow_redirects is False


class _Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.connections = 0
        self.requests = 0
        self.accepted = threading.Event()

        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server.requests += 1
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                body = b'{"jobId": "tls-1"}'
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(address, Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        self.accepted.set()
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@contextlib.contextmanager
def serving(server: _Counting) -> Iterator[_Counting]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 that no trust store knows, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.mark.anyio
async def test_a_self_signed_server_never_receives_the_key(
    self_signed: tuple[Path, Path],
) -> None:
    cert, key = self_signed
    server = _Counting(("127.0.0.1", 0))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    url = f"https://localhost:{server.server_address[1]}"
    request = GenerationRequest(model="nano-banana", prompt="a cat")
    with serving(server):
        async with make_client(timeout=10.0) as http:
            provider = ApiframeProvider(http, APP_FRAME_KEY, url, RetryPolicy(max_attempts=1))
            with pytest.raises(TransientError) as info:
                await provider.submit(request, "idem-tls")
        assert server.requests == 0  # the handshake failed: no request, no header, no key
        # Control: the same server, trusted explicitly, is reached (so the refusal above
        # was the certificate check, not a broken server).
        trusting = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=trusting) as http:
            response = await http.post(f"{url}/v2/images/generate", json={})
            assert response.status_code == 202
    message = str(info.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message, message
    assert APP_FRAME_KEY not in message
    assert server.requests == 1  # the control request only


BAD_BASE_URLS = [
    "http://example.com",
    "http://192.0.2.2:8080",
    "http://127.0.0.1.example.com",
    "http://localhost.example.com",
    "http://0.0.0.0:8765",
    "ftp://127.0.0.1/",
    "https://",
    "example.com",
]
GOOD_BASE_URLS = [
    "http://127.0.0.1:8765",
    "http://[::1]:8765",
    "http://localhost:8765",
    "https://api.apiframe.ai",
    "https://proxy.example.com/apiframe",
]


@pytest.mark.parametrize("url", BAD_BASE_URLS)
def test_base_urls_must_be_https_except_loopback_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must use https://") as info:
        check_base_url(url)
    assert repr(url) in str(info.value)
    with pytest.raises(ValueError) as info:
        validate_base_url(url)
    assert repr(url) in str(info.value)


@pytest.mark.parametrize("url", GOOD_BASE_URLS)
def test_base_urls_must_be_https_except_loopback_accepted(url: str) -> None:
    assert check_base_url(url) == url.rstrip("/")
    assert validate_base_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["https://user:secret@proxy.example.com",
                                 "http://user@127.0.0.1:8765"])
def test_credentials_in_a_base_url_are_refused(url: str) -> None:
    """In Settings and in the NBDESK_*_BASE_URL overrides alike."""
    with pytest.raises(ValueError, match="user name or password") as info:
        validate_base_url(url)
    assert "secret" not in str(info.value)
    with pytest.raises(ValueError, match="user name or password") as info:
        check_base_url(url)
    assert "secret" not in str(info.value)


def _one_line(result: Result) -> str:
    assert result.code == 3, result.describe()
    (line,) = result.stderr_lines()
    assert line.startswith("nbdesk: ") and "Traceback" not in line, line
    return line


def test_a_plain_http_base_url_makes_the_cli_exit_3_and_send_nothing(
    tmp_path: Path, report: ReliabilityReport
) -> None:
    with Simulator(SimConfig()) as sim:
        cli = Cli(tmp_path / "user", sim, keys={"apiframe": CLI_FRAME_KEY})
        try:
            cli.env["NBDESK_APIFRAME_BASE_URL"] = "http://example.com"
            result = cli.run("generate", "a red bicycle", "--provider", "apiframe")
            line = _one_line(result)
            assert "base URL 'http://example.com' must use https://" in line
            assert CLI_FRAME_KEY not in result.stdout + result.stderr
            assert result.stdout == ""
            assert sim.stats.snapshot()["requests"] == 0
            assert cli.jobs() == []
        finally:
            cli.close()


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address: str = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_plain_http_server_off_this_computer_gets_no_connection(tmp_path: Path) -> None:
    """The refusal happens before any connection: a server listening on this machine's
    non-loopback address, named by an http:// base URL, sees nothing at all."""
    address = _outward_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    with serving(_Counting(("0.0.0.0", 0))) as server:
        url = f"http://{address}:{server.server_address[1]}"
        cli = Cli(tmp_path / "user", None, keys={"apiframe": CLI_FRAME_KEY})
        try:
            cli.env["NBDESK_APIFRAME_BASE_URL"] = url
            line = _one_line(cli.run("generate", "a red bicycle", "--provider", "apiframe"))
            assert f"base URL '{url}' must use https://" in line
            assert cli.jobs() == []
        finally:
            cli.close()
        # Control: the address really is reachable, so "nothing" means nothing was sent.
        with socket.create_connection((address, server.server_address[1]), timeout=5):
            assert server.accepted.wait(5)
    assert server.connections == 1  # the control connection only
    assert server.requests == 0
