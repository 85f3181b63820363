"""API keys in the OS keychain (through ``keyring``), never anywhere else.

* service name ``"nbdesk"``, user name = the provider id;
* the provider's environment variable (``ProviderCaps.env_key``, e.g.
  ``NBDESK_APIFRAME_API_KEY``) overrides the keychain for this process and is never written
  anywhere;
* no usable keychain is an error the user sees (``KeychainUnavailable``), never a silent
  fallback to a plain-text file;
* every keyring call runs in its own *daemon* thread and is waited for with a timeout: a
  D-Bus call that hangs neither hangs the caller nor blocks the interpreter's exit (a
  ``ThreadPoolExecutor`` would: its threads are joined at exit). The async variants wait
  without blocking the event loop.
* error messages never contain a key; ``RedactingFilter`` scrubs known keys from logs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from nbdesk.api import capabilities
from nbdesk.api.base import InputError

if TYPE_CHECKING:
    import keyring.backend

# keyring (and its backends' discovery) is imported by the functions that run on the
# keychain's worker threads, not here: the window's start-up does not wait for it.

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE = "nbdesk"
DEFAULT_TIMEOUT = 10.0
MAX_KEY_LENGTH = 512
#: Shorter strings are not redacted: too likely to match ordinary words.
MIN_REDACT_LENGTH = 4

KeySource = Literal["env", "keychain", "none"]


class KeychainError(Exception):
    """A keychain operation failed. ``str()`` is user-facing and never holds a key."""


class KeychainUnavailable(KeychainError):
    """No usable OS keychain on this system."""


class KeychainTimeout(KeychainError):
    """The keychain did not answer in time (a hung D-Bus call, an unanswered prompt)."""


@dataclass(frozen=True)
class KeyLookup:
    key: str | None
    source: KeySource

    def __repr__(self) -> str:  # never print the key itself
        shown = None if self.key is None else "***"
        return f"KeyLookup(key={shown!r}, source={self.source!r})"


# --------------------------------------------------------------------------- redaction


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret of at least MIN_REDACT_LENGTH characters replaced by ***."""
    # Longest first, so a secret that contains another is replaced whole.
    known = sorted({s for s in secrets if len(s) >= MIN_REDACT_LENGTH}, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, "***")
    # A message cut short (a provider's text is cut to a readable length before it is
    # stored) may end in the first part of a key: that part is masked too.
    body = text.rstrip("…. ")
    tail = text[len(body):]
    for secret in known:
        for n in range(len(secret) - 1, MIN_REDACT_LENGTH - 1, -1):
            if body.endswith(secret[:n]):
                return body[:-n] + "***" + tail
    return text


def scrub(text: str) -> str:
    """``text`` with every key this process knows (``RedactingFilter.known``) masked: for
    any text that came from a provider, before it is stored or shown."""
    return redact(text, RedactingFilter.known())


def register_env_keys(environ: Mapping[str, str] | None = None) -> None:
    """Make every provider's key in the environment known for masking, not only the key
    of the provider in use (keychain keys become known as they are read)."""
    environ = os.environ if environ is None else environ
    for caps in capabilities.PROVIDERS.values():
        value = environ.get(caps.env_key, "").strip()
        if value:
            RedactingFilter.register(value)


class RedactingFilter(logging.Filter):
    """Replaces every registered key in a record's final message (and its traceback text).

    Attach it to the *handlers* (a logger's filters do not see records propagated from
    child loggers). Keys are registered process-wide by ``SecretStore`` whenever one is
    looked up or stored.
    """

    _lock = threading.Lock()
    _secrets: frozenset[str] = frozenset()

    @classmethod
    def register(cls, secret: str) -> None:
        if len(secret) >= MIN_REDACT_LENGTH:
            with cls._lock:
                cls._secrets = cls._secrets | {secret}

    @classmethod
    def unregister(cls, secret: str) -> None:
        with cls._lock:
            cls._secrets = cls._secrets - {secret}

    @classmethod
    def known(cls) -> frozenset[str]:
        return cls._secrets

    @classmethod
    def clear(cls) -> None:
        with cls._lock:
            cls._secrets = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        message = record.getMessage()
        clean = redact(message, secrets)
        if clean != message:
            record.msg = clean
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return True


# --------------------------------------------------------------------------- key checks


def validate_key(key: str) -> str:
    """The key without surrounding whitespace; ``InputError`` (without the key) if unusable."""
    key = key.strip()
    if not key:
        raise InputError("The API key is empty.")
    if len(key) > MAX_KEY_LENGTH:
        raise InputError(
            f"The API key is too long ({len(key)} characters, at most {MAX_KEY_LENGTH})."
        )
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise InputError(
            "The API key contains spaces or control characters; paste only the key itself."
        )
    return key


# --------------------------------------------------------------------------- daemon threads


def _start_call(fn: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
    """Run ``fn`` in a new daemon thread; its outcome lands in the returned future."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as e:
            future.set_exception(e)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=f"nbdesk-keychain-{name}", daemon=True).start()
    return future


# --------------------------------------------------------------------------- the store


def _unavailable_message(provider_id: str | None = None) -> str:
    if provider_id is not None and provider_id in capabilities.PROVIDERS:
        env = capabilities.PROVIDERS[provider_id].env_key
    else:
        env = " or ".join(p.env_key for p in capabilities.PROVIDERS.values())
    return (
        "No OS keychain was found (such as GNOME Keyring / KWallet through the Secret "
        "Service, the macOS Keychain or the Windows Credential Manager), so the API key "
        "cannot be stored. nbdesk never stores keys in a plain file. Start or install a "
        f"keychain, or set {env} in the environment to use a key for one run only."
    )


def _usable(backend: keyring.backend.KeyringBackend) -> bool:
    """Whether ``backend`` really stores secrets in an OS keychain."""
    from keyring.backends import chainer, fail, null

    if isinstance(backend, fail.Keyring | null.Keyring):
        return False
    if isinstance(backend, chainer.ChainerBackend):
        chained: list[keyring.backend.KeyringBackend] = list(backend.backends)
        # The chainer writes to its first backend; with none it silently does nothing.
        return bool(chained) and _usable(chained[0])
    if "plaintext" in type(backend).__name__.lower():
        return False
    try:
        # keyring's own "recommended" test; below 1 are the non-recommended ones
        # (keyrings.alt files and the like). A non-viable backend raises here.
        priority = float(backend.priority)
    except Exception:
        return False
    return priority >= 1


#: Held around every call into keyring (see SecretStore._guarded).
_ONE_CALL = threading.Lock()

_FRIENDLY_NAMES = {
    "keyring.backends.SecretService.Keyring": "Secret Service",
    "keyring.backends.libsecret.Keyring": "Secret Service (libsecret)",
    "keyring.backends.macOS.Keyring": "macOS Keychain",
    "keyring.backends.Windows.WinVaultKeyring": "Windows Credential Manager",
    "keyring.backends.kwallet.DBusKeyring": "KWallet",
    "keyring.backends.kwallet.DBusKeyringKWallet4": "KWallet 4",
}

_SECRET_SERVICE_DAEMONS = {
    "gnome-keyring-d": "gnome-keyring",  # /proc/PID/comm is cut at 15 characters
    "gnome-keyring-daemon": "gnome-keyring",
    "keepassxc": "KeePassXC",
    "kwalletd5": "KWallet",
    "kwalletd6": "KWallet",
    "ksecretd": "KWallet",
}


def _secret_service_daemon() -> str | None:
    """Which program owns org.freedesktop.secrets on the session bus (Linux, best effort)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        with open_dbus_connection(bus="SESSION") as conn:
            reply = conn.send_and_get_reply(
                message_bus.GetConnectionUnixProcessID("org.freedesktop.secrets"), timeout=2
            )
        pid = int(reply.body[0])
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except Exception:
        return None
    return _SECRET_SERVICE_DAEMONS.get(comm, comm or None)


def _describe(backend: keyring.backend.KeyringBackend) -> str:
    from keyring.backends import chainer

    if not _usable(backend):
        return "none"
    if isinstance(backend, chainer.ChainerBackend):
        return " + ".join(_describe(b) for b in backend.backends)
    cls = type(backend)
    qualified = f"{cls.__module__}.{cls.__qualname__}"
    friendly = _FRIENDLY_NAMES.get(qualified)
    if friendly is None:
        name = getattr(cls, "name", None)
        return name if isinstance(name, str) and name else cls.__name__
    if qualified == "keyring.backends.SecretService.Keyring":
        daemon = _secret_service_daemon()
        if daemon:
            return f"{friendly} ({daemon})"
    return friendly


class SecretStore:
    """The app's API keys. One instance, shared; safe to use from any thread."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        environ: Mapping[str, str] | None = None,
        backend: keyring.backend.KeyringBackend | None = None,
    ) -> None:
        """``environ``: where the override variables are read (``os.environ`` at call time
        by default). ``backend``: a keyring backend to use instead of keyring's configured
        one (``keyring.get_keyring()``, resolved in the worker thread since its detection
        talks to D-Bus)."""
        self.timeout = timeout
        self._environ = environ
        self._backend = backend

    # -- plumbing

    def _keyring(self, provider_id: str | None = None) -> keyring.backend.KeyringBackend:
        """The backend, checked usable. Runs in a worker thread."""
        import keyring
        import keyring.errors

        try:
            backend = self._backend if self._backend is not None else keyring.get_keyring()
        except (keyring.errors.NoKeyringError, keyring.errors.InitError) as e:
            raise KeychainUnavailable(_unavailable_message(provider_id)) from e
        if not _usable(backend):
            raise KeychainUnavailable(_unavailable_message(provider_id))
        return backend

    def _guarded(
        self, fn: Callable[[], T], provider_id: str | None, secret: str | None = None
    ) -> Callable[[], T]:
        """``fn`` with keyring's exceptions turned into ours (messages carry no key)."""

        def call() -> T:
            import keyring.errors

            try:
                # One keychain call at a time: keyring's backend set-up is not safe from
                # two threads at once ("Set changed size during iteration").
                with _ONE_CALL:
                    return fn()
            except KeychainError:
                raise
            except (keyring.errors.NoKeyringError, keyring.errors.InitError) as e:
                raise KeychainUnavailable(_unavailable_message(provider_id)) from e
            except keyring.errors.KeyringLocked as e:
                raise KeychainError(
                    "The keychain is locked and was not unlocked; unlock it and try again."
                ) from e
            except Exception as e:
                known = [*RedactingFilter.known(), *([secret] if secret else [])]
                raw = f"{type(e).__name__}: {e}"
                reason = redact(raw, known)
                # Keep the cause for the logs, unless its own message holds a key.
                cause = e if reason == raw else None
                raise KeychainError(f"The keychain refused the operation ({reason}).") from cause

        return call

    def _timeout_error(self) -> KeychainTimeout:
        return KeychainTimeout(f"The keychain did not answer within {self.timeout:g} s.")

    def _run(
        self,
        fn: Callable[[], T],
        name: str,
        provider_id: str | None = None,
        secret: str | None = None,
    ) -> T:
        future = _start_call(self._guarded(fn, provider_id, secret), name)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise self._timeout_error() from None

    async def _arun(
        self,
        fn: Callable[[], T],
        name: str,
        provider_id: str | None = None,
        secret: str | None = None,
    ) -> T:
        import asyncio  # (only async callers pay for it: the window's grid starts first)

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()

        def transfer(done: concurrent.futures.Future[T]) -> None:
            # On the loop's thread. After a timeout or a cancellation nobody waits any more.
            if waiter.done():
                return
            error = done.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(done.result())

        def on_done(done: concurrent.futures.Future[T]) -> None:
            # In the worker thread, whenever it ends (possibly long after a timeout).
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to tell
                loop.call_soon_threadsafe(transfer, done)

        future = _start_call(self._guarded(fn, provider_id, secret), name)
        future.add_done_callback(on_done)
        try:
            return await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError:
            raise self._timeout_error() from None

    def _env_value(self, provider_id: str) -> str | None:
        environ = os.environ if self._environ is None else self._environ
        value = environ.get(capabilities.provider(provider_id).env_key, "").strip()
        return value or None

    # -- the operations, as plain functions for the worker thread

    def _lookup_fn(self, provider_id: str) -> Callable[[], str | None]:
        def fn() -> str | None:
            return self._keyring(provider_id).get_password(SERVICE, provider_id)

        return fn

    def _set_fn(self, provider_id: str, key: str) -> Callable[[], None]:
        def fn() -> None:
            self._keyring(provider_id).set_password(SERVICE, provider_id, key)

        return fn

    def _delete_fn(self, provider_id: str) -> Callable[[], bool]:
        def fn() -> bool:
            backend = self._keyring(provider_id)
            if backend.get_password(SERVICE, provider_id) is None:
                return False
            backend.delete_password(SERVICE, provider_id)
            return True

        return fn

    def _name_fn(self) -> Callable[[], str]:
        def fn() -> str:
            import keyring
            import keyring.errors

            try:
                backend = self._backend if self._backend is not None else keyring.get_keyring()
            except keyring.errors.KeyringError:
                return "none"
            return _describe(backend)

        return fn

    def _available_fn(self) -> Callable[[], bool]:
        def fn() -> bool:
            try:
                self._keyring()
            except KeychainError:
                return False
            return True

        return fn

    def _found(self, provider_id: str, key: str | None) -> KeyLookup:
        # Stored by another tool, a key may carry a newline.
        key = key.strip() if key is not None else None
        if not key:
            return KeyLookup(None, "none")
        RedactingFilter.register(key)
        return KeyLookup(key, "keychain")

    def _prepare_set(self, provider_id: str, key: str) -> str:
        capabilities.provider(provider_id)  # KeyError for an unknown provider
        key = validate_key(key)
        RedactingFilter.register(key)
        return key

    # -- public, blocking (with the timeout)

    def lookup(self, provider_id: str) -> KeyLookup:
        """The key for ``provider_id``: the environment first, then the keychain."""
        env = self._env_value(provider_id)
        if env is not None:
            RedactingFilter.register(env)
            return KeyLookup(env, "env")
        return self._found(
            provider_id, self._run(self._lookup_fn(provider_id), "lookup", provider_id)
        )

    def set(self, provider_id: str, key: str) -> None:
        """Store ``key`` in the keychain (stripped; ``ValueError`` if malformed)."""
        key = self._prepare_set(provider_id, key)
        self._run(self._set_fn(provider_id, key), "set", provider_id, key)

    def delete(self, provider_id: str) -> bool:
        """Remove the stored key; False if there was none."""
        capabilities.provider(provider_id)
        return self._run(self._delete_fn(provider_id), "delete", provider_id)

    def backend_name(self) -> str:
        """A human-readable name of the keychain, ``"none"`` without a usable one."""
        return self._run(self._name_fn(), "name")

    def available(self) -> bool:
        """Whether a usable keychain backend was found in time (without reading from it:
        that could raise an unlock prompt)."""
        try:
            return self._run(self._available_fn(), "available")
        except KeychainTimeout:
            return False

    # -- public, async (the event loop stays free while the keychain thinks)

    async def alookup(self, provider_id: str) -> KeyLookup:
        env = self._env_value(provider_id)
        if env is not None:
            RedactingFilter.register(env)
            return KeyLookup(env, "env")
        key = await self._arun(self._lookup_fn(provider_id), "lookup", provider_id)
        return self._found(provider_id, key)

    async def aset(self, provider_id: str, key: str) -> None:
        key = self._prepare_set(provider_id, key)
        await self._arun(self._set_fn(provider_id, key), "set", provider_id, key)

    async def adelete(self, provider_id: str) -> bool:
        capabilities.provider(provider_id)
        return await self._arun(self._delete_fn(provider_id), "delete", provider_id)

    async def abackend_name(self) -> str:
        return await self._arun(self._name_fn(), "name")


__all__ = [
    "SERVICE",
    "KeyLookup",
    "KeychainError",
    "KeychainTimeout",
    "KeychainUnavailable",
    "RedactingFilter",
    "SecretStore",
    "redact",
    "register_env_keys",
    "scrub",
    "validate_key",
]
