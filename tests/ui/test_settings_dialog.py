"""The settings dialog: keys go to the keychain (never anywhere else), the dialog never
waits on the keychain, settings are validated before anything is written."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import keyring
import keyring.backend
import keyring.core
import keyring.errors
import pytest
from keyring.backends import fail
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QAbstractButton, QWidget
from pytestqt.qtbot import QtBot

from nbdesk.core.secrets import SERVICE, SecretStore
from nbdesk.core.settings import load_settings
from nbdesk.ui.settings_dialog import (
    CHECKING,
    LATER,
    RESTART_NOW,
    RESTART_TEXT,
    SettingsDialog,
)
from tests.keychain import SecretServiceEnv
from tests.ui.conftest import UiEnv

KEY = "free-secret-key-7f3a9c"


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A keychain in a dict (never picked by keyring's auto-detection)."""

    priority = 1  # type: ignore[assignment]
    viable = False

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.store.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError("not found")


class HangingKeyring(MemoryKeyring):
    """Every read blocks until ``release`` is set: a D-Bus call nobody answers."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def get_password(self, service: str, username: str) -> str | None:
        self.release.wait()
        return None


class RecordingFailKeyring(fail.Keyring):
    """keyring's "no keychain" backend, counting write attempts."""

    viable = False

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.writes = 0

    def set_password(self, service: str, username: str, password: str) -> None:
        self.writes += 1
        super().set_password(service, username, password)  # type: ignore[no-untyped-call]


@pytest.fixture
def messages(ui_env: UiEnv) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    ui_env.controller.message.connect(lambda level, text: seen.append((level, text)))
    return seen


@pytest.fixture
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NBDESK_APIFRAME_API_KEY", "NBDESK_APIFREE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def make(qtbot: QtBot, ui_env: UiEnv, secrets: SecretStore) -> SettingsDialog:
    dialog = SettingsDialog(ui_env.controller, secrets=secrets)
    qtbot.addWidget(dialog)
    return dialog


def offer_button(dialog: SettingsDialog, text: str) -> QAbstractButton:
    box = dialog.restart_offer
    assert box is not None and box.isVisible()
    (button,) = [b for b in box.buttons() if b.text() == text]
    return button


def settled(qtbot: QtBot, dialog: SettingsDialog) -> None:
    qtbot.waitUntil(lambda: not dialog.busy()
                    and all(dialog.key_status(p) != CHECKING for p in dialog.key_rows),
                    timeout=10_000)


@pytest.mark.keychain
def test_save_and_remove_a_key_in_the_private_keychain(
    qtbot: QtBot, ui_env: UiEnv, secret_service: SecretServiceEnv,
    messages: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    forgotten: list[str] = []
    monkeypatch.setattr(ui_env.connector, "forget", forgotten.append)
    dialog = make(qtbot, ui_env, SecretStore())
    assert dialog.key_status("apifree") == CHECKING
    settled(qtbot, dialog)
    assert "Secret Service (gnome-keyring)" in dialog.keychain_text()
    assert dialog.key_status("apifree").startswith("No key stored")
    row = dialog.key_rows["apifree"]
    assert row.field.echoMode() == row.field.EchoMode.Password
    assert row.save.isEnabled() and not row.remove.isEnabled()

    row.field.setText(f"  {KEY}\n")
    with qtbot.waitSignal(dialog.keysChanged, timeout=10_000) as changed:
        row.save.click()
    assert changed.args == ["apifree"] and forgotten == ["apifree"]
    settled(qtbot, dialog)
    assert dialog.key_status("apifree") == "Stored in Secret Service (gnome-keyring)"
    assert row.field.text() == "" and row.remove.isEnabled()
    assert SecretStore().lookup("apifree").key == KEY
    assert "Saved the APIFree key" in dialog.message_text()

    with qtbot.waitSignal(dialog.keysChanged, timeout=10_000) as changed:
        row.remove.click()
    assert changed.args == ["apifree"] and forgotten == ["apifree", "apifree"]
    settled(qtbot, dialog)
    assert SecretStore().lookup("apifree").key is None
    assert dialog.key_status("apifree").startswith("No key stored")
    assert not row.remove.isEnabled()

    shown = [dialog.message_text(), *(t for _l, t in messages),
             *(dialog.key_status(p) for p in dialog.key_rows)]
    assert not any(KEY in text for text in shown)
    assert KEY not in caplog.text


def test_a_key_from_the_environment_is_read_only_with_a_note(
    qtbot: QtBot, ui_env: UiEnv, no_env_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBDESK_APIFRAME_API_KEY", "env-frame-key-5555")
    dialog = make(qtbot, ui_env, SecretStore(backend=MemoryKeyring()))
    settled(qtbot, dialog)
    frame = dialog.key_rows["apiframe"]
    assert "environment variable NBDESK_APIFRAME_API_KEY" in dialog.key_status("apiframe")
    assert frame.field.isReadOnly() and frame.field.text() == ""
    assert not frame.save.isEnabled() and not frame.remove.isEnabled()
    assert "NBDESK_APIFRAME_API_KEY" in frame.field.placeholderText()
    free = dialog.key_rows["apifree"]
    assert not free.field.isReadOnly() and free.save.isEnabled()
    assert dialog.key_status("apifree").startswith("No key stored")


def test_without_a_keychain_nothing_can_be_stored(
    qtbot: QtBot, ui_env: UiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keyring.set_keyring for this test; monkeypatch puts the previous backend back.
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    backend = RecordingFailKeyring()
    keyring.set_keyring(backend)
    dialog = make(qtbot, ui_env, SecretStore(environ={}))
    settled(qtbot, dialog)
    assert "No OS keychain available" in dialog.keychain_text()
    for pid, row in dialog.key_rows.items():
        env = f"NBDESK_{pid.upper()}_API_KEY"
        assert dialog.key_status(pid) == (
            f"No OS keychain available: nothing can be stored; set {env} for one run")
        assert not row.save.isEnabled() and not row.remove.isEnabled()
        assert not row.field.isEnabled()
    # Even a forced attempt does not reach the keychain.
    row = dialog.key_rows["apiframe"]
    row.field.setText("frame-key-0000")
    row.save.click()
    row.field.returnPressed.emit()
    dialog.save_key("apiframe")
    assert not dialog.busy() and backend.writes == 0


def test_a_hanging_keychain_does_not_freeze_the_dialog(
    qtbot: QtBot, ui_env: UiEnv, messages: list[tuple[str, str]]
) -> None:
    backend = HangingKeyring()
    try:
        dialog = make(qtbot, ui_env, SecretStore(timeout=0.5, environ={}, backend=backend))
        ticks: list[int] = []
        timer = QTimer(dialog)
        timer.setInterval(20)
        timer.timeout.connect(lambda: ticks.append(1))
        timer.start()
        qtbot.waitUntil(dialog.busy)
        assert dialog.activity.isVisibleTo(dialog) and dialog.activity.text() == CHECKING
        assert not dialog.recheck_button.isEnabled()
        # The form stays usable meanwhile.
        dialog.concurrency.setValue(9)
        assert dialog.concurrency.value() == 9

        qtbot.waitUntil(lambda: "did not answer within 0.5 s" in dialog.message_text(),
                        timeout=5000)
        assert len(ticks) >= 10  # the event loop kept running through the wait
        qtbot.waitUntil(lambda: not dialog.busy())
        for pid in dialog.key_rows:
            assert "did not answer within 0.5 s" in dialog.key_status(pid)
        assert dialog.recheck_button.isEnabled()
        assert any(level == "error" and "did not answer" in text for level, text in messages)
    finally:
        backend.release.set()


def test_a_malformed_key_is_refused_without_echoing_it(
    qtbot: QtBot, ui_env: UiEnv, messages: list[tuple[str, str]]
) -> None:
    backend = MemoryKeyring()
    dialog = make(qtbot, ui_env, SecretStore(environ={}, backend=backend))
    settled(qtbot, dialog)
    row = dialog.key_rows["apiframe"]
    row.field.setText("half a key")
    row.save.click()
    qtbot.waitUntil(lambda: "spaces" in dialog.message_text())
    assert "half a key" not in dialog.message_text()
    assert not any("half a key" in text for _l, text in messages)
    assert backend.store == {}

    row.field.setText("frame-key-1234")
    with qtbot.waitSignal(dialog.keysChanged):
        row.field.returnPressed.emit()
    assert backend.store == {(SERVICE, "apiframe"): "frame-key-1234"}
    settled(qtbot, dialog)
    assert dialog.key_status("apiframe").startswith("Stored in ")
    assert "MemoryKeyring" in dialog.key_status("apiframe")


def test_settings_are_validated_then_saved_off_thread(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    dialog = make(qtbot, ui_env, SecretStore(environ={}, backend=MemoryKeyring()))
    settled(qtbot, dialog)
    path = ui_env.rt.paths.settings_file
    before = path.read_bytes()
    saved: list[object] = []
    dialog.settingsSaved.connect(saved.append)

    dialog.base_urls["apiframe"].setText("http://example.com")
    dialog.save_button.click()
    assert "APIFrame".lower() in dialog.message_text().lower()
    assert "only allowed for this computer" in dialog.message_text()
    dialog.base_urls["apiframe"].setText("https://proxy.example.com/")
    dialog.library_dir.setText("relative/folder")
    dialog.save_button.click()
    assert "not an absolute folder path" in dialog.message_text()
    assert path.read_bytes() == before and saved == []

    library = tmp_path / "elsewhere"
    dialog.library_dir.setText(str(library))
    dialog.concurrency.setValue(7)
    dialog.default_provider.setCurrentIndex(dialog.default_provider.findData("apifree"))
    dialog.demo_when_no_key.setChecked(False)
    assert dialog.confirm_paid_retry.isChecked()  # asked by default
    dialog.confirm_paid_retry.setChecked(False)
    assert not dialog.keep_reference_metadata.isChecked()  # stripped by default
    dialog.keep_reference_metadata.setChecked(True)
    with qtbot.waitSignal(dialog.settingsSaved, timeout=5000) as signal:
        dialog.save_button.click()
    new = signal.args[0]
    assert new.base_urls == {"apiframe": "https://proxy.example.com"}
    assert (new.concurrency, new.default_provider, new.demo_when_no_key) == (7, "apifree", False)
    assert new.confirm_paid_retry is False and new.keep_reference_metadata is True
    assert new.library_dir == str(library)
    assert new.poll_interval == 0.2  # untouched settings are kept
    assert load_settings(path) == new
    # one settings, read by all: the runtime, the connector, and the engine at once
    assert ui_env.rt.settings is new and ui_env.connector.settings is new
    assert ui_env.engine.config.concurrency == 7
    assert dialog.message_text() == f"Settings saved. {RESTART_TEXT}"
    assert dialog.save_button.isEnabled()
    assert dialog.restart_offer is not None  # the library folder: restart now or later
    with qtbot.waitSignal(dialog.restart_offer.finished, timeout=5000):
        offer_button(dialog, LATER).click()


@pytest.mark.qt_log_ignore("does not support propagateSizeHints")
def test_return_in_a_field_presses_no_button(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    backend = MemoryKeyring()
    backend.store[(SERVICE, "apiframe")] = "frame-key-1111"
    dialog = make(qtbot, ui_env, SecretStore(environ={}, backend=backend))
    dialog.open()
    qtbot.waitExposed(dialog)
    settled(qtbot, dialog)
    assert dialog.key_rows["apiframe"].remove.isEnabled()
    saved: list[object] = []
    dialog.settingsSaved.connect(saved.append)
    edit = dialog.base_urls["apifree"]
    edit.setFocus()
    qtbot.keyClick(edit, Qt.Key.Key_Return)
    assert dialog.isVisible() and not dialog.busy() and saved == []
    assert dialog.message_text() == ""  # no button was pressed at all
    assert backend.store == {(SERVICE, "apiframe"): "frame-key-1111"}


def test_jobs_at_once_applies_at_once_and_says_nothing_of_new_jobs(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    dialog = make(qtbot, ui_env, SecretStore(environ={}, backend=MemoryKeyring()))
    settled(qtbot, dialog)
    limit = ui_env.engine.slots("apiframe")
    assert limit.limit == 4
    dialog.concurrency.setValue(2)
    with qtbot.waitSignal(dialog.settingsSaved, timeout=5000):
        dialog.save_button.click()
    assert dialog.message_text() == "Settings saved."
    assert dialog.restart_offer is None  # nothing waits for a restart
    assert limit.limit == 2 and ui_env.engine.config.concurrency == 2


def test_a_new_library_folder_offers_a_restart_and_later_starts_nothing(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    started: list[object] = []

    def command() -> tuple[str, list[str]]:
        started.append("asked")
        raise AssertionError("Later must start nothing")

    window = QWidget()
    qtbot.addWidget(window)
    window.show()
    dialog = SettingsDialog(ui_env.controller, window,
                            secrets=SecretStore(environ={}, backend=MemoryKeyring()),
                            restart_command=command)
    dialog.open()
    settled(qtbot, dialog)
    dialog.library_dir.setText(str(tmp_path / "new library"))
    with qtbot.waitSignal(dialog.settingsSaved, timeout=5000):
        dialog.save_button.click()
    box = dialog.restart_offer
    assert box is not None and box.isVisible()
    assert box.text() == RESTART_TEXT
    assert sorted(b.text() for b in box.buttons()) == sorted([RESTART_NOW, LATER])
    with qtbot.waitSignal(box.finished, timeout=5000):
        offer_button(dialog, LATER).click()
    assert dialog.restart_offer is None and started == []
    assert window.isVisible() and dialog.isVisible()
    assert load_settings(ui_env.rt.paths.settings_file).library_dir == str(
        tmp_path / "new library")


def test_restart_now_starts_nbdesk_again_and_closes_the_window(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    marker = tmp_path / "started-again"
    # The same command line in the app; here a process that proves it was started.
    program = (sys.executable, ["-c", f"open({str(marker)!r}, 'w').close()"])
    window = QWidget()
    qtbot.addWidget(window)
    window.show()
    dialog = SettingsDialog(ui_env.controller, window,
                            secrets=SecretStore(environ={}, backend=MemoryKeyring()),
                            restart_command=lambda: program)
    dialog.open()
    settled(qtbot, dialog)
    dialog.library_dir.setText(str(tmp_path / "new library"))
    with qtbot.waitSignal(dialog.settingsSaved, timeout=5000):
        dialog.save_button.click()
    assert dialog.restart_offer is not None
    with qtbot.waitSignal(dialog.restarting, timeout=5000):
        offer_button(dialog, RESTART_NOW).click()
    qtbot.waitUntil(marker.exists, timeout=10_000)
    assert not window.isVisible() and not dialog.isVisible()

