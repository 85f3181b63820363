"""The key status of every provider: one model, read by the status bar, the composer and
the settings dialog.

It asks the keychain (the ``SecretStore``'s async calls, each with its timeout, on the
app's loop) once at start, again when the user asks, and for one provider after its
stored key was saved or removed here. Widgets read ``status()`` and follow ``changed``;
they never call the keychain themselves.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

from nbdesk.api.base import InputError
from nbdesk.api.capabilities import PROVIDERS
from nbdesk.core.secrets import (
    KeychainError,
    KeychainTimeout,
    KeychainUnavailable,
    RedactingFilter,
    SecretStore,
    redact,
)

#: Runs a coroutine from a slot (``Controller.spawn``): ``spawn(coro, what=...)``.
Spawn = Callable[..., Any]


class KeyState(enum.Enum):
    CHECKING = "checking"  # not known yet: the first lookup has not answered
    ENV = "env"  # from the provider's environment variable (this run only)
    KEYCHAIN = "keychain"  # stored in the OS keychain
    MISSING = "missing"  # no key anywhere
    UNAVAILABLE = "unavailable"  # no usable OS keychain on this system
    TIMEOUT = "timeout"  # the keychain did not answer in time
    ERROR = "error"  # the keychain refused (locked, a backend error)

    @property
    def has_key(self) -> bool:
        return self in (KeyState.ENV, KeyState.KEYCHAIN)

    @property
    def failed(self) -> bool:
        """The keychain could not say (its message is in ``KeyInfo.message``)."""
        return self in (KeyState.UNAVAILABLE, KeyState.TIMEOUT, KeyState.ERROR)


@dataclass(frozen=True)
class KeyInfo:
    state: KeyState
    #: the keychain's one-line message when ``state.failed`` (never holds a key)
    message: str = ""


class Outcome(enum.Enum):
    """How a save or a removal asked of the model ended (``KeyStatus.finished``)."""

    SAVED = "saved"
    REMOVED = "removed"
    ABSENT = "absent"  # a removal with no key stored
    REFUSED = "refused"  # a malformed key, or the keychain failed: the message says why


def _info(error: KeychainError) -> KeyInfo:
    if isinstance(error, KeychainUnavailable):
        state = KeyState.UNAVAILABLE
    elif isinstance(error, KeychainTimeout):
        state = KeyState.TIMEOUT
    else:
        state = KeyState.ERROR
    return KeyInfo(state, str(error))


def _asyncio_spawn(coro: Coroutine[Any, Any, Any], *, what: str) -> asyncio.Task[Any]:
    del what
    return asyncio.ensure_future(coro)


class KeyStatus(QObject):
    """Each provider's key status, and the keychain's name.

    ``secrets`` gives the store to ask (called at each lookup: the runtime's store may be
    replaced); ``spawn`` runs the lookups on the app's loop (the controller's, which
    reports a bug; by default a plain asyncio task).
    """

    changed = Signal(str)  # provider id whose KeyInfo changed
    busyChanged = Signal(bool)  # a keychain call started (True) / the last one ended
    backendChanged = Signal()  # the keychain's name is known, or could not be read
    stored = Signal(str)  # provider id whose stored key was saved or removed
    finished = Signal(str, object, str)  # provider id, Outcome, one-line message

    def __init__(self, secrets: Callable[[], SecretStore], *, spawn: Spawn | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._secrets = secrets
        self._spawn = spawn if spawn is not None else _asyncio_spawn
        self._status = {pid: KeyInfo(KeyState.CHECKING) for pid in PROVIDERS}
        self._asked: dict[str, int] = {}  # provider -> lookups begun (the newest decides)
        self._backend = ""
        self._backend_error = ""
        self._busy = 0
        self._started = False

    # ------------------------------------------------------------------ reading

    def status(self, provider_id: str) -> KeyInfo:
        return self._status[provider_id]

    def providers(self) -> list[str]:
        return list(self._status)

    def busy(self) -> bool:
        """Whether a keychain call of this model is running."""
        return self._busy > 0

    def backend(self) -> str:
        """The keychain's name; ``"none"`` without a usable one, ``""`` until known."""
        return self._backend

    def backend_error(self) -> str:
        """Why the keychain's name could not be read (``""`` if it could)."""
        return self._backend_error

    # ------------------------------------------------------------------ commands

    def start(self) -> None:
        """The lookups at start: the first call asks the keychain, later ones do nothing."""
        if not self._started:
            self.check_again()

    def check_again(self) -> None:
        """Ask the keychain again, for every provider."""
        self._started = True
        self._spawn(self.refresh(), what="checking the API keys")

    def save(self, provider_id: str, key: str) -> None:
        """Store ``key`` (``finished`` tells how it went)."""
        self._spawn(self.asave(provider_id, key), what="saving the API key")

    def remove(self, provider_id: str) -> None:
        """Delete the stored key (``finished`` tells how it went)."""
        self._spawn(self.aremove(provider_id), what="removing the API key")

    # ------------------------------------------------------------------ the work

    async def refresh(self, provider_ids: Iterable[str] | None = None) -> None:
        """Look the keys up (every provider's by default) and the keychain's name."""
        self._started = True
        pids = list(self._status if provider_ids is None else provider_ids)
        async with self._call():
            await asyncio.gather(self._read_backend(), *(self._lookup(p) for p in pids))

    async def asave(self, provider_id: str, key: str) -> Outcome:
        async with self._call():
            try:
                await self._secrets().aset(provider_id, key)
            except (InputError, KeychainError) as e:  # messages never hold the key
                return self._finish(provider_id, Outcome.REFUSED, _clean(str(e)))
            self.stored.emit(provider_id)
            await self._lookup(provider_id)
            return self._finish(provider_id, Outcome.SAVED, "")

    async def aremove(self, provider_id: str) -> Outcome:
        async with self._call():
            try:
                removed = await self._secrets().adelete(provider_id)
            except KeychainError as e:
                return self._finish(provider_id, Outcome.REFUSED, _clean(str(e)))
            if removed:
                self.stored.emit(provider_id)
            await self._lookup(provider_id)
            return self._finish(provider_id, Outcome.REMOVED if removed else Outcome.ABSENT, "")

    def _finish(self, provider_id: str, outcome: Outcome, message: str) -> Outcome:
        self.finished.emit(provider_id, outcome, message)
        return outcome

    async def _lookup(self, provider_id: str) -> None:
        # The newest lookup of a provider decides: an older one answering later (a slow
        # start-up lookup, then a key saved meanwhile) is dropped.
        asked = self._asked[provider_id] = self._asked.get(provider_id, 0) + 1
        try:
            found = await self._secrets().alookup(provider_id)
        except KeychainError as e:
            info = _info(e)
        else:
            info = KeyInfo(KeyState.ENV if found.source == "env" else
                           KeyState.KEYCHAIN if found.source == "keychain" else
                           KeyState.MISSING)
        if asked != self._asked[provider_id]:
            return
        if info != self._status[provider_id]:
            self._status[provider_id] = info
            self.changed.emit(provider_id)

    async def _read_backend(self) -> None:
        try:
            name, error = await self._secrets().abackend_name(), ""
        except KeychainError as e:
            name, error = "", str(e)
        if (name, error) != (self._backend, self._backend_error):
            self._backend, self._backend_error = name, error
            self.backendChanged.emit()

    def _call(self) -> _Busy:
        return _Busy(self)

    def _add_busy(self, n: int) -> None:
        was = self.busy()
        self._busy += n
        if self.busy() != was:
            self.busyChanged.emit(self.busy())


def _clean(text: str) -> str:
    return redact(text, RedactingFilter.known())


class _Busy:
    def __init__(self, model: KeyStatus) -> None:
        self.model = model

    async def __aenter__(self) -> None:
        self.model._add_busy(1)

    async def __aexit__(self, *exc: object) -> None:
        self.model._add_busy(-1)


__all__ = ["KeyInfo", "KeyState", "KeyStatus", "Outcome"]
