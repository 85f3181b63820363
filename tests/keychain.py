"""A real, private Secret Service for tests: ``secret_service`` fixture.

Per test: a temporary HOME / XDG folders, a private D-Bus session bus (dbus-daemon) and a
gnome-keyring-daemon with only its "secrets" component, its login keyring created and
unlocked with a throw-away password. The test's environment points at them, and keyring's
backend is set to the Secret Service backend for the test. The user's own keychain is
never touched.

Missing dbus-daemon / gnome-keyring-daemon: the test is skipped, except on CI (CI=true)
where it fails, so that CI cannot silently stop testing the keychain.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import keyring.core
import pytest

#: Seconds to wait for either daemon to come up.
START_TIMEOUT = 15.0
SECRETS_NAME = "org.freedesktop.secrets"


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> NoReturn:
    if on_ci():
        pytest.fail(f"CI=true but the keychain test environment is missing: {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class SecretServiceEnv:
    bus_address: str
    home: Path
    runtime_dir: Path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a child started with start_new_session, and anything it forked."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of the child's stdout, or "" if it exits or stays silent for ``timeout``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().decode("utf-8", "replace").strip()


def _tail(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-2000:]
    except OSError:
        return ""


@pytest.fixture
def secret_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretServiceEnv]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the Secret Service test environment is Linux-only")
    dbus_daemon = shutil.which("dbus-daemon")
    gnome_keyring = shutil.which("gnome-keyring-daemon")
    if dbus_daemon is None or gnome_keyring is None:
        missing = [
            n
            for n, p in (("dbus-daemon", dbus_daemon), ("gnome-keyring-daemon", gnome_keyring))
            if p is None
        ]
        _unavailable(f"{' and '.join(missing)} not installed (apt install dbus gnome-keyring)")
    try:
        from jeepney import MatchRule, message_bus
        from jeepney.io.blocking import Proxy, open_dbus_connection
        from keyring.backends import SecretService
    except ImportError as e:
        _unavailable(f"jeepney / secretstorage missing: {e}")

    # A short path: the unix socket path limit is ~108 bytes.
    base = Path(tempfile.mkdtemp(prefix="nbk-"))
    home = base / "home"
    runtime = base / "run"
    for d in (home, runtime, home / ".config", home / ".local" / "share", home / ".cache"):
        d.mkdir(parents=True, mode=0o700)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    env.pop("GNOME_KEYRING_CONTROL", None)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (base / "dbus.log").open("wb") as log:
            bus = subprocess.Popen(
                [
                    dbus_daemon,
                    "--session",
                    "--nofork",
                    "--nopidfile",
                    f"--address=unix:path={runtime / 'bus'}",
                    "--print-address=1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        procs.append(bus)
        address = _read_line(bus, START_TIMEOUT)
        if not address:
            pytest.fail(f"dbus-daemon did not start: {_tail(base / 'dbus.log')}")
        env["DBUS_SESSION_BUS_ADDRESS"] = address

        with open_dbus_connection(bus=address) as conn:
            # Subscribe to the name's arrival *before* starting the daemon: no race, no polling.
            rule = MatchRule(
                type="signal",
                sender=message_bus.bus_name,
                interface=message_bus.interface,
                member="NameOwnerChanged",
                path=message_bus.object_path,
            )
            rule.add_arg_condition(0, SECRETS_NAME)
            Proxy(message_bus, conn, timeout=START_TIMEOUT).AddMatch(rule)
            with conn.filter(rule) as arrivals, (base / "keyring.log").open("wb") as log:
                keyring_proc = subprocess.Popen(
                    [gnome_keyring, "--foreground", "--unlock", "--components=secrets"],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
                procs.append(keyring_proc)
                assert keyring_proc.stdin is not None
                keyring_proc.stdin.write(b"nbdesk-test-password")
                keyring_proc.stdin.close()  # EOF ends the password
                try:
                    conn.recv_until_filtered(arrivals, timeout=START_TIMEOUT)
                except TimeoutError:
                    pytest.fail(
                        "gnome-keyring-daemon did not register the Secret Service within "
                        f"{START_TIMEOUT:g} s: {_tail(base / 'keyring.log')}"
                    )

        for name in (
            "HOME",
            "XDG_RUNTIME_DIR",
            "XDG_CONFIG_HOME",
            "XDG_DATA_HOME",
            "XDG_CACHE_HOME",
            "DBUS_SESSION_BUS_ADDRESS",
        ):
            monkeypatch.setenv(name, env[name])
        for name in (
            "GNOME_KEYRING_CONTROL",
            "PYTHON_KEYRING_BACKEND",
            "NBDESK_APIFRAME_API_KEY",
            "NBDESK_APIFREE_API_KEY",
        ):
            monkeypatch.delenv(name, raising=False)
        # keyring caches both its chosen backend and (for the life of the process) which
        # backends are viable; set the Secret Service backend explicitly for this test.
        # monkeypatch restores keyring's previous backend afterwards.
        backend = SecretService.Keyring()  # type: ignore[no-untyped-call]
        monkeypatch.setattr(keyring.core, "_keyring_backend", backend)

        yield SecretServiceEnv(bus_address=address, home=home, runtime_dir=runtime)
    finally:
        for proc in reversed(procs):
            _stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(base, ignore_errors=True)
