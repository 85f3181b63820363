"""The key-status model on its own, without a widget: a QObject over the real SecretStore
(the environment, a keyring backend in memory, a hanging one, none, the private
Secret Service), on a plain asyncio loop."""

from __future__ import annotations

import asyncio

import keyring
import keyring.core
import pytest
from keyring.backends import fail

from nbdesk.api.capabilities import PROVIDERS
from nbdesk.core.secrets import SERVICE, SecretStore
from nbdesk.ui.models.keys import KeyInfo, KeyState, KeyStatus, Outcome
from tests.keychain import SecretServiceEnv
from tests.ui.test_settings_dialog import HangingKeyring, MemoryKeyring

pytestmark = pytest.mark.anyio

ENV_KEYS = {caps.env_key: f"env-key-{pid}-0001" for pid, caps in PROVIDERS.items()}


class CountingKeyring(MemoryKeyring):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get_password(self, service: str, username: str) -> str | None:
        self.reads.append(username)
        return super().get_password(service, username)


class Recorder:
    """The model's signals, as they came."""

    def __init__(self, model: KeyStatus) -> None:
        self.changed: list[tuple[str, KeyInfo]] = []
        self.stored: list[str] = []
        self.finished: list[tuple[str, Outcome, str]] = []
        self.busy: list[bool] = []
        self.idle = asyncio.Event()
        model.changed.connect(lambda pid: self.changed.append((pid, model.status(pid))))
        model.stored.connect(self.stored.append)
        model.finished.connect(lambda pid, outcome, text: self.finished.append(
            (pid, outcome, text)))
        model.busyChanged.connect(self._on_busy)

    def _on_busy(self, busy: bool) -> None:
        self.busy.append(busy)
        if not busy:
            self.idle.set()

    async def wait_idle(self) -> None:
        await asyncio.wait_for(self.idle.wait(), 10)
        self.idle.clear()


def model_on(store: SecretStore) -> KeyStatus:
    return KeyStatus(lambda: store)


async def test_keys_from_the_environment_need_no_keychain() -> None:
    backend = CountingKeyring()
    model = model_on(SecretStore(environ=ENV_KEYS, backend=backend))
    seen = Recorder(model)
    assert all(model.status(p).state is KeyState.CHECKING for p in PROVIDERS)
    await model.refresh()
    assert {p: model.status(p) for p in PROVIDERS} == {
        p: KeyInfo(KeyState.ENV) for p in PROVIDERS}
    assert sorted(p for p, _ in seen.changed) == sorted(PROVIDERS)
    assert backend.reads == [] and seen.busy == [True, False]
    await model.refresh()  # nothing changed: no signal
    assert len(seen.changed) == len(PROVIDERS)


async def test_start_looks_each_key_up_once() -> None:
    backend = CountingKeyring()
    backend.store[(SERVICE, "apifree")] = "free-key-4321"
    model = model_on(SecretStore(environ={}, backend=backend))
    seen = Recorder(model)
    model.start()
    model.start()  # a second reader (the dialog, the composer): no second lookup
    await seen.wait_idle()
    assert sorted(backend.reads) == sorted(PROVIDERS)
    assert model.status("apifree").state is KeyState.KEYCHAIN
    assert model.status("apiframe").state is KeyState.MISSING
    assert "CountingKeyring" in model.backend() and model.backend_error() == ""
    tasks = asyncio.all_tasks()
    model.start()  # started already: nothing is spawned
    assert asyncio.all_tasks() == tasks and not model.busy()
    model.check_again()  # asked for: all again
    await seen.wait_idle()
    assert len(backend.reads) == 2 * len(PROVIDERS)


async def test_save_and_remove_go_through_the_model_and_refresh_that_provider() -> None:
    backend = CountingKeyring()
    model = model_on(SecretStore(environ={}, backend=backend))
    seen = Recorder(model)
    await model.refresh()
    backend.reads.clear()

    assert await model.asave("apiframe", "  frame-key-9876\n") is Outcome.SAVED
    assert backend.store == {(SERVICE, "apiframe"): "frame-key-9876"}
    assert seen.stored == ["apiframe"] and backend.reads == ["apiframe"]
    assert model.status("apiframe").state is KeyState.KEYCHAIN
    assert seen.finished[-1] == ("apiframe", Outcome.SAVED, "")

    assert await model.aremove("apiframe") is Outcome.REMOVED
    assert backend.store == {} and seen.stored == ["apiframe", "apiframe"]
    assert model.status("apiframe").state is KeyState.MISSING
    assert await model.aremove("apiframe") is Outcome.ABSENT
    assert seen.stored == ["apiframe", "apiframe"]  # nothing was removed: nobody told

    # A malformed key: refused with a message that does not repeat it; nothing stored.
    assert await model.asave("apiframe", "half a key") is Outcome.REFUSED
    pid, outcome, text = seen.finished[-1]
    assert (pid, outcome) == ("apiframe", Outcome.REFUSED)
    assert "spaces" in text and "half a key" not in text
    assert backend.store == {} and len(seen.stored) == 2


async def test_a_hanging_keychain_is_a_timeout_for_each_provider() -> None:
    backend = HangingKeyring()
    try:
        model = model_on(SecretStore(timeout=0.3, environ={}, backend=backend))
        await model.refresh()
        for pid in PROVIDERS:
            info = model.status(pid)
            assert info.state is KeyState.TIMEOUT and info.state.failed
            assert "did not answer within 0.3 s" in info.message
        assert not model.busy()
    finally:
        backend.release.set()


async def test_no_keychain_is_unavailable_with_its_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(fail.Keyring())  # type: ignore[no-untyped-call]
    model = model_on(SecretStore(environ={}))
    await model.refresh()
    assert model.backend() == "none"
    for pid, caps in PROVIDERS.items():
        info = model.status(pid)
        assert info.state is KeyState.UNAVAILABLE and caps.env_key in info.message


async def test_the_store_is_read_at_each_lookup() -> None:
    """The runtime's store may be replaced (a test, a restart of the keychain): the
    model asks whichever is current."""
    stores = [SecretStore(environ={}, backend=MemoryKeyring())]
    model = KeyStatus(lambda: stores[0])
    await model.refresh()
    assert model.status("gemini").state is KeyState.MISSING
    stores[0] = SecretStore(environ=ENV_KEYS, backend=MemoryKeyring())
    await model.refresh(["gemini"])
    assert model.status("gemini").state is KeyState.ENV
    assert model.status("apiframe").state is KeyState.MISSING  # not asked again


@pytest.mark.keychain
async def test_the_private_keychain_through_the_model(secret_service: SecretServiceEnv) -> None:
    model = model_on(SecretStore())
    await model.refresh()
    assert model.backend().startswith("Secret Service")
    assert model.status("apifree").state is KeyState.MISSING
    assert await model.asave("apifree", "free-private-key-1357") is Outcome.SAVED
    assert model.status("apifree").state is KeyState.KEYCHAIN
    assert SecretStore().lookup("apifree").key == "free-private-key-1357"
    assert await model.aremove("apifree") is Outcome.REMOVED
    assert model.status("apifree").state is KeyState.MISSING
