from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import keyring
import keyring.core
import keyring.errors
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail

from nbdesk.api.base import InputError
from nbdesk.core.secrets import (
    SERVICE,
    KeychainError,
    KeychainTimeout,
    KeychainUnavailable,
    KeyLookup,
    RedactingFilter,
    SecretStore,
    redact,
    validate_key,
)
from tests.keychain import SecretServiceEnv

KEY = "afk_0123456789abcdef"
OTHER_KEY = "afk_fedcba9876543210"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("NBDESK_APIFRAME_API_KEY", "NBDESK_APIFREE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    RedactingFilter.clear()
    yield
    RedactingFilter.clear()


def no_keychain() -> KeyringBackend:
    """keyring's backend for "no keychain found": every call raises NoKeyringError."""
    return fail.Keyring()  # type: ignore[no-untyped-call]


def use_backend(monkeypatch: pytest.MonkeyPatch, backend: KeyringBackend) -> None:
    """keyring.set_keyring for this test only (monkeypatch restores the previous one)."""
    monkeypatch.setattr(keyring.core, "_keyring_backend", backend)


class HangingKeyring(KeyringBackend):
    """Every call blocks until ``release`` is set, like a D-Bus call nobody answers."""

    priority = 1
    viable = False  # never picked by keyring's auto-detection

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.entered = threading.Event()
        self.release = threading.Event()

    def _hang(self) -> None:
        self.entered.set()
        self.release.wait()

    def get_password(self, service: str, username: str) -> str | None:
        self._hang()
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self._hang()

    def delete_password(self, service: str, username: str) -> None:
        self._hang()


class FailingKeyring(KeyringBackend):
    """A backend that fails with a given keyring error."""

    priority = 1
    viable = False

    def __init__(self, error: Exception) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.error = error

    def get_password(self, service: str, username: str) -> str | None:
        raise self.error

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError(f"cannot store {password}")

    def delete_password(self, service: str, username: str) -> None:
        raise self.error


@pytest.fixture
def hanging(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingKeyring]:
    backend = HangingKeyring()
    use_backend(monkeypatch, backend)
    yield backend
    backend.release.set()  # let the abandoned daemon thread finish


# --------------------------------------------------------------------------- real keychain


@pytest.mark.keychain
def test_set_lookup_delete_round_trip(secret_service: SecretServiceEnv) -> None:
    store = SecretStore()
    assert store.lookup("apiframe") == KeyLookup(None, "none")
    store.set("apiframe", f"  {KEY}\n")  # pasted with whitespace: stripped
    assert store.lookup("apiframe") == KeyLookup(KEY, "keychain")
    assert store.lookup("apifree") == KeyLookup(None, "none")
    # Really in the Secret Service, under service "nbdesk", user = provider id.
    assert keyring.get_password(SERVICE, "apiframe") == KEY
    store.set("apiframe", OTHER_KEY)  # replaces
    assert store.lookup("apiframe").key == OTHER_KEY
    assert store.delete("apiframe") is True
    assert store.lookup("apiframe") == KeyLookup(None, "none")
    assert keyring.get_password(SERVICE, "apiframe") is None
    assert store.delete("apiframe") is False


@pytest.mark.keychain
@pytest.mark.anyio
async def test_async_round_trip(secret_service: SecretServiceEnv) -> None:
    store = SecretStore()
    await store.aset("apifree", KEY)
    assert await store.alookup("apifree") == KeyLookup(KEY, "keychain")
    assert await store.adelete("apifree") is True
    assert await store.alookup("apifree") == KeyLookup(None, "none")
    assert (await store.abackend_name()).startswith("Secret Service")


@pytest.mark.keychain
def test_env_override_wins_and_is_never_stored(
    secret_service: SecretServiceEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SecretStore()
    monkeypatch.setenv("NBDESK_APIFRAME_API_KEY", f" {KEY} ")
    assert store.lookup("apiframe") == KeyLookup(KEY, "env")
    assert keyring.get_password(SERVICE, "apiframe") is None  # not written to the keychain

    store.set("apiframe", OTHER_KEY)
    assert store.lookup("apiframe") == KeyLookup(KEY, "env")  # env still wins
    assert keyring.get_password(SERVICE, "apiframe") == OTHER_KEY
    monkeypatch.delenv("NBDESK_APIFRAME_API_KEY")
    assert store.lookup("apiframe") == KeyLookup(OTHER_KEY, "keychain")
    # Only the provider's own variable counts.
    monkeypatch.setenv("NBDESK_APIFREE_API_KEY", KEY)
    assert store.lookup("apiframe").source == "keychain"


@pytest.mark.keychain
def test_a_gemini_key_lives_in_the_keychain_like_the_others(
    secret_service: SecretServiceEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SecretStore()
    store.set("gemini", KEY)
    assert keyring.get_password(SERVICE, "gemini") == KEY
    assert store.lookup("gemini") == KeyLookup(KEY, "keychain")
    assert store.lookup("apiframe") == KeyLookup(None, "none")  # one entry per provider
    monkeypatch.setenv("NBDESK_GEMINI_API_KEY", OTHER_KEY)  # this process only
    assert store.lookup("gemini") == KeyLookup(OTHER_KEY, "env")
    assert keyring.get_password(SERVICE, "gemini") == KEY  # the stored one is untouched
    monkeypatch.delenv("NBDESK_GEMINI_API_KEY")
    assert store.delete("gemini") is True
    assert store.lookup("gemini") == KeyLookup(None, "none")


@pytest.mark.keychain
def test_backend_name_and_available(secret_service: SecretServiceEnv) -> None:
    store = SecretStore()
    assert store.backend_name() == "Secret Service (gnome-keyring)"
    assert store.available() is True


def test_environ_mapping_is_read_instead_of_os_environ() -> None:
    # No keychain call at all: the mapping has the key.
    store = SecretStore(environ={"NBDESK_APIFREE_API_KEY": KEY}, backend=no_keychain())
    assert store.lookup("apifree") == KeyLookup(KEY, "env")
    with pytest.raises(KeychainUnavailable):
        store.lookup("apiframe")


# --------------------------------------------------------------------------- no keychain


def test_no_backend_is_keychain_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    use_backend(monkeypatch, no_keychain())
    store = SecretStore()
    with pytest.raises(KeychainUnavailable) as info:
        store.lookup("apiframe")
    message = str(info.value)
    assert "No OS keychain was found" in message
    assert "NBDESK_APIFRAME_API_KEY" in message
    with pytest.raises(KeychainUnavailable, match="NBDESK_APIFREE_API_KEY"):
        store.set("apifree", KEY)
    with pytest.raises(KeychainUnavailable):
        store.delete("apifree")
    assert store.available() is False
    assert store.backend_name() == "none"


def test_no_backend_still_allows_the_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    use_backend(monkeypatch, no_keychain())
    monkeypatch.setenv("NBDESK_APIFRAME_API_KEY", KEY)
    assert SecretStore().lookup("apiframe") == KeyLookup(KEY, "env")


@pytest.mark.anyio
async def test_no_backend_async(monkeypatch: pytest.MonkeyPatch) -> None:
    use_backend(monkeypatch, no_keychain())
    with pytest.raises(KeychainUnavailable):
        await SecretStore().alookup("apiframe")


@pytest.mark.parametrize(
    "error",
    [keyring.errors.InitError("no collection"), keyring.errors.NoKeyringError("none")],
)
def test_init_errors_are_keychain_unavailable(error: Exception) -> None:
    store = SecretStore(backend=FailingKeyring(error))
    with pytest.raises(KeychainUnavailable, match="No OS keychain"):
        store.lookup("apiframe")


def test_other_keyring_errors_are_keychain_errors_without_the_key() -> None:
    store = SecretStore(backend=FailingKeyring(keyring.errors.KeyringLocked("locked")))
    with pytest.raises(KeychainError, match="locked") as info:
        store.lookup("apiframe")
    assert not isinstance(info.value, KeychainUnavailable | KeychainTimeout)
    with pytest.raises(KeychainError) as info:
        store.set("apiframe", KEY)  # the backend's own message quotes the key
    assert KEY not in str(info.value)
    assert "***" in str(info.value)
    assert info.value.__cause__ is None  # the cause quoted the key: not chained


def test_plaintext_backend_is_refused() -> None:
    class PlaintextKeyring(KeyringBackend):
        priority = 2
        viable = False

        def get_password(self, service: str, username: str) -> str | None:
            raise AssertionError("must not be used")

        def set_password(self, service: str, username: str, password: str) -> None:
            raise AssertionError("must not be used")

        def delete_password(self, service: str, username: str) -> None:
            raise AssertionError("must not be used")

    backend = PlaintextKeyring()  # type: ignore[no-untyped-call]
    with pytest.raises(KeychainUnavailable):
        SecretStore(backend=backend).set("apiframe", KEY)


# --------------------------------------------------------------------------- timeouts


def test_hanging_backend_times_out(hanging: HangingKeyring) -> None:
    store = SecretStore(timeout=0.5)
    start = time.monotonic()
    with pytest.raises(KeychainTimeout, match=r"did not answer within 0\.5 s"):
        store.lookup("apiframe")
    elapsed = time.monotonic() - start
    assert hanging.entered.is_set()
    assert 0.4 <= elapsed < 3.0
    with pytest.raises(KeychainTimeout):
        store.set("apiframe", KEY)


def test_hanging_detection_means_not_available() -> None:
    release = threading.Event()

    class HangingDetection(HangingKeyring):
        @property
        def priority(self) -> float:  # type: ignore[override]
            release.wait()  # like keyring's Secret Service probe on a dead D-Bus
            return 5.0

    store = SecretStore(timeout=0.2, backend=HangingDetection())
    try:
        assert store.available() is False
        with pytest.raises(KeychainTimeout):
            store.backend_name()
    finally:
        release.set()


@pytest.mark.anyio
async def test_hanging_backend_async_keeps_the_loop_free(hanging: HangingKeyring) -> None:
    store = SecretStore(timeout=0.5)
    ticks = 0
    lookup_over = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not lookup_over.is_set():
            ticks += 1
            await asyncio.sleep(0.02)

    async def lookup() -> BaseException | None:
        try:
            await store.alookup("apiframe")
        except KeychainTimeout as e:
            return e
        finally:
            lookup_over.set()
        return None

    start = time.monotonic()
    ticking = asyncio.create_task(ticker())
    error = await lookup()
    ticks_while_waiting = ticks
    await ticking
    elapsed = time.monotonic() - start

    assert isinstance(error, KeychainTimeout)
    assert hanging.entered.is_set()
    assert 0.4 <= elapsed < 3.0
    # The loop ran the other coroutine the whole time (0.5 s / 0.02 s = ~25 ticks).
    assert ticks_while_waiting >= 5


def join_keychain_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("nbdesk-keychain-"):
            thread.join(timeout=10)
            assert not thread.is_alive()


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.anyio
async def test_late_answer_after_timeout_is_dropped_quietly(
    hanging: HangingKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    store = SecretStore(timeout=0.2)
    with pytest.raises(KeychainTimeout):
        await store.alookup("apiframe")
    # The keychain answers late; its answer is handed to the loop, where nobody waits.
    hanging.release.set()
    await asyncio.get_running_loop().run_in_executor(None, join_keychain_threads)
    handed_over = asyncio.Event()
    asyncio.get_running_loop().call_soon(handed_over.set)  # runs after the late hand-over
    await handed_over.wait()
    assert errors_logged(caplog) == []
    # The store still works (the backend no longer hangs).
    assert await store.alookup("apifree") == KeyLookup(None, "none")


def test_late_answer_after_the_loop_closed(
    hanging: HangingKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    store = SecretStore(timeout=0.2)
    with pytest.raises(KeychainTimeout):
        asyncio.run(store.alookup("apiframe"))
    hanging.release.set()  # answers after asyncio.run closed its loop
    join_keychain_threads()
    assert errors_logged(caplog) == []


def test_hung_thread_does_not_block_interpreter_exit() -> None:
    script = textwrap.dedent(
        """
        import threading, keyring
        from keyring.backend import KeyringBackend
        from nbdesk.core.secrets import SecretStore, KeychainTimeout

        class Hang(KeyringBackend):
            priority = 1
            viable = False
            def get_password(self, s, u):
                threading.Event().wait()
            set_password = delete_password = get_password

        try:
            SecretStore(timeout=0.2, backend=Hang()).lookup("apiframe")
        except KeychainTimeout as e:
            print("timeout:", e)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "timeout: The keychain did not answer within 0.2 s" in done.stdout


# --------------------------------------------------------------------------- key checks


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("afk_abc def", "spaces"),
        ("afk_abc\tdef", "spaces"),
        ("afk_abc\x00def", "control"),
        ("afk_abc\x1bdef", "control"),
        ("a" * 513, "too long"),
    ],
)
def test_invalid_keys_are_refused(key: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as info:  # typed: a message, not a bug
        validate_key(key)
    if key.strip():
        assert key.strip() not in str(info.value)
    with pytest.raises(InputError, match=reason):
        SecretStore(backend=no_keychain()).set("apiframe", key)  # refused before the keychain


def test_valid_key_limits() -> None:
    assert validate_key("a" * 512) == "a" * 512
    assert validate_key("\t" + KEY + "\r\n") == KEY


def test_unknown_provider() -> None:
    store = SecretStore(backend=no_keychain())
    with pytest.raises(KeyError):
        store.lookup("nosuch")
    with pytest.raises(KeyError):
        store.set("nosuch", KEY)


# --------------------------------------------------------------------------- redaction


def test_redact() -> None:
    assert redact(f"key={KEY}; again {KEY}", [KEY]) == "key=***; again ***"
    assert redact("abc and abcd", ["abc", "abcd", ""]) == "abc and ***"  # short ones kept
    # A secret containing another is replaced whole.
    assert redact("x afk_long_secret y", ["afk_long", "afk_long_secret"]) == "x *** y"
    assert redact("nothing here", []) == "nothing here"


def test_redact_masks_a_key_cut_off_at_the_end_of_a_message() -> None:
    """A provider's message is cut to a readable length before it is stored: the cut may
    fall inside a key it repeated back."""
    from nbdesk.api.answers import text_value

    message = "x" * 975 + f" Invalid key: {KEY}"  # cut inside the key (1000 characters)
    cut = text_value(message)
    assert cut is not None and KEY[:4] in cut  # the control: the cut keeps part of it
    masked = redact(cut, [KEY])
    assert masked.endswith("Invalid key: ***…") and KEY[:4] not in masked
    assert redact(f"key {KEY[:9]}...", [KEY]) == "key ***..."
    assert redact("ends in text", [KEY]) == "ends in text"


def test_keylookup_repr_hides_the_key() -> None:
    assert KEY not in repr(KeyLookup(KEY, "env"))
    assert KEY not in str(KeyLookup(KEY, "keychain"))


def test_redacting_filter_scrubs_messages_args_and_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("before register %s", KEY)
        RedactingFilter.register(KEY)
        logger.info("sending header X-API-Key: %s", KEY)
        logger.info(f"inline {KEY}")
        try:
            raise RuntimeError(f"server echoed {KEY}")
        except RuntimeError:
            logger.exception("request failed")
        RedactingFilter.unregister(KEY)
        logger.info("after unregister %s", KEY)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = out.getvalue()
    assert lines.count(KEY) == 2  # before register, after unregister
    assert "sending header X-API-Key: ***" in lines
    assert "inline ***" in lines
    assert "RuntimeError: server echoed ***" in lines


def test_lookup_registers_the_key_for_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBDESK_APIFRAME_API_KEY", KEY)
    SecretStore(backend=no_keychain()).lookup("apiframe")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (KEY,), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "key ***"
