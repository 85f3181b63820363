"""Settings: API keys (in the OS keychain), base URLs, concurrency, library folder,
default provider, Demo fallback.

Nothing here blocks the GUI thread: keychain calls are the ``SecretStore``'s async
methods (each with its timeout), the settings file is written in a worker thread and the
folder picker is opened with ``open()``. A key never appears in a message or a log line.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QProcess, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from nbdesk.api.capabilities import DEMO, PROVIDERS, ProviderCaps
from nbdesk.core.secrets import SecretStore
from nbdesk.core.settings import CONCURRENCY_RANGE, Settings, validate_base_url
from nbdesk.ui.controller import Controller
from nbdesk.ui.models.keys import KeyState, Outcome

log = logging.getLogger(__name__)

CHECKING = "Checking the keychain…"
_ERROR_STYLE = "color: #c0392b;"
_OK_STYLE = "color: #2e7d32;"
RESTART_TEXT = "The library folder changes when nbdesk restarts."
RESTART_NOW = "Restart now"
LATER = "Later"


def restart_command() -> tuple[str, list[str]]:
    """This process's command line (the interpreter's options and ``-m nbdesk``
    included; a bundle's own executable), to start nbdesk again the same way."""
    return sys.executable, list(sys.orig_argv[1:])


def no_keychain_text(caps: ProviderCaps) -> str:
    return (
        "No OS keychain available: nothing can be stored; "
        f"set {caps.env_key} for one run"
    )


@dataclass
class _KeyRow:
    caps: ProviderCaps
    field: QLineEdit
    save: QPushButton
    remove: QPushButton
    status: QLabel


class SettingsDialog(QDialog):
    """Non-modal; show it with ``show()`` or ``open()``."""

    settingsSaved = Signal(object)  # the new Settings
    keysChanged = Signal(str)  # provider id whose stored key was saved or removed
    restarting = Signal()  # nbdesk was started again; the window closes next

    def __init__(
        self, controller: Controller, parent: QWidget | None = None, *,
        secrets: SecretStore | None = None,
        restart_command: Callable[[], tuple[str, list[str]]] = restart_command,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self._restart_command = restart_command
        #: "The library folder changes when nbdesk restarts — Restart now / Later"
        self.restart_offer: QMessageBox | None = None
        #: the key status it shows and changes: the window's, or one on ``secrets``
        self.keys = (controller.keys if secrets is None
                     else controller.key_status(lambda: secrets))
        self._folder_dialog: QFileDialog | None = None
        self.setWindowTitle("Settings")
        self.setModal(False)
        self.setMinimumWidth(640)

        # -- API keys
        keys_box = QGroupBox("API keys")
        grid = QGridLayout(keys_box)
        self.keychain_label = QLabel()
        self.keychain_label.setWordWrap(True)
        self.activity = QLabel(CHECKING)
        self.activity.setStyleSheet("font-style: italic;")
        self.activity.hide()
        grid.addWidget(self.keychain_label, 0, 0, 1, 3)
        grid.addWidget(self.activity, 0, 3)
        self.key_rows: dict[str, _KeyRow] = {}
        for n, (pid, caps) in enumerate(PROVIDERS.items()):
            field = QLineEdit()
            field.setEchoMode(QLineEdit.EchoMode.Password)
            field.setAccessibleName(f"{caps.label} API key")
            field.setPlaceholderText(f"paste the {caps.label} API key")
            save = QPushButton("Save")
            save.setToolTip(f"Store the {caps.label} key in the OS keychain")
            remove = QPushButton("Remove")
            remove.setToolTip(f"Delete the stored {caps.label} key from the OS keychain")
            status = QLabel()
            status.setWordWrap(True)
            status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label = QLabel(f"{caps.label}:")
            label.setBuddy(field)
            row = 1 + 2 * n
            grid.addWidget(label, row, 0)
            grid.addWidget(field, row, 1)
            grid.addWidget(save, row, 2)
            grid.addWidget(remove, row, 3)
            grid.addWidget(status, row + 1, 1, 1, 3)
            self.key_rows[pid] = _KeyRow(caps, field, save, remove, status)
            save.clicked.connect(functools.partial(self.save_key, pid))
            field.returnPressed.connect(functools.partial(self.save_key, pid))
            remove.clicked.connect(functools.partial(self.remove_key, pid))
        grid.setColumnStretch(1, 1)
        self.recheck_button = QPushButton("Check again")
        self.recheck_button.setToolTip("Ask the keychain again")
        self.recheck_button.clicked.connect(self.keys.check_again)
        grid.addWidget(self.recheck_button, 1 + 2 * len(PROVIDERS), 3)

        # -- the settings file
        general = QGroupBox("General")
        form = QFormLayout(general)
        self.base_urls: dict[str, QLineEdit] = {}
        settings = controller.settings
        for pid, caps in PROVIDERS.items():
            edit = QLineEdit(settings.base_urls.get(pid, ""))
            edit.setPlaceholderText(caps.base_url)
            edit.setClearButtonEnabled(True)
            edit.setToolTip(
                f"Leave empty for {caps.base_url}. https://, or http:// to this computer "
                f"only. {caps.env_base_url} overrides it for one run."
            )
            self.base_urls[pid] = edit
            form.addRow(f"{caps.label} base URL:", edit)
        self.concurrency = QSpinBox()
        self.concurrency.setRange(*CONCURRENCY_RANGE)
        self.concurrency.setValue(settings.concurrency)
        self.concurrency.setToolTip("How many jobs of each provider run at once; a change "
                                    "applies at once, to the jobs already queued too")
        form.addRow("Jobs at once:", self.concurrency)
        self.library_dir = QLineEdit(settings.library_dir or "")
        self.library_dir.setPlaceholderText(f"default: {controller.library_root}")
        self.library_dir.setToolTip("Where the images and the database live; an absolute "
                                    "folder path. nbdesk offers to restart when it changes.")
        browse = QPushButton("Choose…")
        browse.clicked.connect(self.choose_library_dir)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.library_dir, 1)
        folder_row.addWidget(browse)
        form.addRow("Library folder:", folder_row)
        self.default_provider = QComboBox()
        self.default_provider.addItem("Demo (offline)", DEMO)
        for pid, caps in PROVIDERS.items():
            self.default_provider.addItem(caps.label, pid)
        self.default_provider.setCurrentIndex(
            max(self.default_provider.findData(settings.default_provider), 0)
        )
        form.addRow("Default provider:", self.default_provider)
        self.demo_when_no_key = QCheckBox("Use Demo when a provider has no key")
        self.demo_when_no_key.setChecked(settings.demo_when_no_key)
        form.addRow("", self.demo_when_no_key)
        self.confirm_paid_retry = QCheckBox("Ask before a Retry that is a new paid submission")
        self.confirm_paid_retry.setChecked(settings.confirm_paid_retry)
        self.confirm_paid_retry.setToolTip(
            "Retry of a job the provider already has continues it at no cost; a job that "
            "never got an answer is sent again, and paid again: ask first")
        form.addRow("", self.confirm_paid_retry)
        self.keep_reference_metadata = QCheckBox(
            "Send references with their location and camera data (EXIF)")
        self.keep_reference_metadata.setChecked(settings.keep_reference_metadata)
        self.keep_reference_metadata.setToolTip(
            "Off: the GPS location, camera and other EXIF/XMP data of a reference image are "
            "removed (its pixels untouched) before it is copied to the library or sent")
        form.addRow("", self.keep_reference_metadata)

        # -- messages and buttons
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        buttons = QDialogButtonBox()
        self.save_button = buttons.addButton("Save settings",
                                             QDialogButtonBox.ButtonRole.ApplyRole)
        self.save_button.setToolTip("Write the general settings (API keys are saved with "
                                    "their own Save buttons)")
        close = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.save_button.clicked.connect(self.save_settings)
        close.clicked.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(keys_box)
        layout.addWidget(general)
        layout.addWidget(self.message)
        layout.addWidget(buttons)

        # Return in a field must never press a button the user did not aim at (a QDialog
        # makes its first auto-default button the default: that could be "Remove").
        for button in self.findChildren(QPushButton):
            button.setAutoDefault(False)
            button.setDefault(False)

        self.keys.changed.connect(self._on_key_status)
        self.keys.busyChanged.connect(self._update_key_rows)
        self.keys.backendChanged.connect(self._on_backend)
        self.keys.finished.connect(self._on_finished)
        self.keys.stored.connect(self.keysChanged)
        self._update_key_rows()
        self.keys.start()  # (once: the window's status bar may have asked already)

    # ------------------------------------------------------------------ keychain

    def keychain_text(self) -> str:
        return self.keychain_label.text()

    def key_status(self, provider_id: str) -> str:
        return self.key_rows[provider_id].status.text()

    def busy(self) -> bool:
        return self.keys.busy()

    def _on_key_status(self, provider_id: str) -> None:
        info = self.keys.status(provider_id)
        if info.state is KeyState.TIMEOUT:
            self._say(info.message, error=True)
        self._update_key_rows()

    def _on_backend(self) -> None:
        if self.keys.backend_error():
            self._say(self.keys.backend_error(), error=True)
        self._update_key_rows()

    def _on_finished(self, provider_id: str, outcome: Outcome, message: str) -> None:
        row = self.key_rows[provider_id]
        where = self.keys.backend() or "the keychain"
        if outcome is Outcome.REFUSED:
            self._say(message, error=True)
        elif outcome is Outcome.SAVED:
            row.field.clear()
            self._say(f"Saved the {row.caps.label} key in {where}.", ok=True)
        elif outcome is Outcome.REMOVED:
            self._say(f"Removed the {row.caps.label} key from {where}.", ok=True)
        else:
            self._say(f"No {row.caps.label} key was stored.", ok=True)

    def _update_key_rows(self) -> None:
        backend = self.keys.backend()
        where = backend if backend not in ("", "none") else "the OS keychain"
        if backend == "none":
            self.keychain_label.setText(
                "No OS keychain available (such as GNOME Keyring, KWallet, the macOS "
                "Keychain or the Windows Credential Manager): API keys cannot be stored. "
                "nbdesk never writes keys to a plain file."
            )
            self.keychain_label.setStyleSheet(_ERROR_STYLE)
        elif backend:
            self.keychain_label.setText(f"Keys are kept in {backend}.")
            self.keychain_label.setStyleSheet("")
        else:
            self.keychain_label.setText("Keys are kept in the OS keychain." if not self.busy()
                                        else CHECKING)
            self.keychain_label.setStyleSheet("")
        idle = not self.busy()
        self.activity.setVisible(not idle)
        for pid, row in self.key_rows.items():
            env = row.caps.env_key
            info = self.keys.status(pid)
            state = info.state
            if state is KeyState.ENV:
                row.field.clear()
                row.field.setReadOnly(True)
                row.field.setEnabled(True)
                row.field.setPlaceholderText(f"set by {env}")
                self._set_status(
                    row, f"The key comes from the environment variable {env} "
                    "(this run only)."
                )
            else:
                row.field.setReadOnly(False)
                row.field.setPlaceholderText(f"paste the {row.caps.label} API key")
            if state is KeyState.KEYCHAIN:
                row.field.setPlaceholderText("a key is stored; paste a new one to replace it")
                self._set_status(row, f"Stored in {where}", ok=True)
            elif state is KeyState.MISSING:
                self._set_status(row, f"No key stored (it would go to {where}).")
            elif state is KeyState.UNAVAILABLE:
                self._set_status(row, no_keychain_text(row.caps), error=True)
            elif state is KeyState.TIMEOUT:
                self._set_status(row, f"{info.message} Check that the keychain is running "
                                 "and unlocked, then press Check again.", error=True)
            elif state is KeyState.ERROR:
                self._set_status(row, info.message, error=True)
            elif state is KeyState.CHECKING:
                self._set_status(row, CHECKING)
            failed = state in (KeyState.TIMEOUT, KeyState.ERROR)
            row.field.setEnabled(state is not KeyState.UNAVAILABLE)
            row.save.setEnabled(idle and (failed or state in (KeyState.KEYCHAIN,
                                                               KeyState.MISSING)))
            row.remove.setEnabled(idle and (failed or state is KeyState.KEYCHAIN))
            if state is KeyState.UNAVAILABLE:
                row.save.setToolTip(no_keychain_text(row.caps))
            else:
                row.save.setToolTip(f"Store the {row.caps.label} key in {where}")
        self.recheck_button.setEnabled(idle)
        self._fit()

    def _fit(self) -> None:
        """Grow to show every line of the wrapped status texts (they change after the
        dialog was laid out)."""
        layout = self.layout()
        if layout is None:
            return
        layout.activate()
        width = self.width()
        needed = (layout.totalHeightForWidth(width) if layout.hasHeightForWidth()
                  else layout.totalSizeHint().height())
        if needed > self.height():
            self.resize(width, needed)

    def save_key(self, provider_id: str) -> None:
        row = self.key_rows[provider_id]
        if not row.save.isEnabled():
            return
        key = row.field.text()
        if not key.strip():
            self._say(f"Paste the {row.caps.label} API key first.", error=True)
            return
        self.keys.save(provider_id, key)

    def remove_key(self, provider_id: str) -> None:
        if self.key_rows[provider_id].remove.isEnabled():
            self.keys.remove(provider_id)

    # ------------------------------------------------------------------ settings file

    def collect(self) -> Settings:
        """The settings the form describes; ValueError with a user-facing message."""
        return self.controller.check_settings(**self._changes())

    def _changes(self) -> dict[str, Any]:
        """The form's settings (only those it shows); ValueError with a user-facing
        message."""
        base_urls: dict[str, str] = {}
        for pid, edit in self.base_urls.items():
            text = edit.text().strip()
            if not text:
                continue
            try:
                base_urls[pid] = validate_base_url(text)
            except ValueError as e:
                raise ValueError(f"{PROVIDERS[pid].label} base URL: {e}") from None
        folder = self.library_dir.text().strip() or None
        if folder is not None and not Path(folder).expanduser().is_absolute():
            raise ValueError(f"Library folder: {folder!r} is not an absolute folder path.")
        return dict(
            base_urls=base_urls,
            concurrency=self.concurrency.value(),
            library_dir=folder,
            default_provider=str(self.default_provider.currentData()),
            demo_when_no_key=self.demo_when_no_key.isChecked(),
            confirm_paid_retry=self.confirm_paid_retry.isChecked(),
            keep_reference_metadata=self.keep_reference_metadata.isChecked(),
        )

    def save_settings(self) -> None:
        try:
            changes = self._changes()
            self.collect()  # every value checked before anything is written
        except ValueError as e:
            self._say(str(e), error=True)
            return
        self.save_button.setEnabled(False)
        self._spawn(self._save_settings(changes), "saving the settings")

    async def _save_settings(self, changes: dict[str, Any]) -> None:
        # The service writes the file (off this thread) and then tells the connector
        # (new base URLs) and the engine (jobs at once, at once) of the change.
        try:
            old, new = await self.controller.save_settings(**changes)
        except OSError as e:
            if shiboken6.isValid(self):
                self.save_button.setEnabled(True)
            self._say(f"Cannot write {self.controller.settings_file}: {e.strerror or e}",
                      error=True)
            return
        if not shiboken6.isValid(self):  # closed meanwhile: the jobs waiting for a key
            self.controller.unblock_jobs()  # or a base URL are told all the same
            return
        self.settingsSaved.emit(new)
        self.save_button.setEnabled(True)
        folder_changed = old.library_dir != new.library_dir
        self._say(f"Settings saved. {RESTART_TEXT}" if folder_changed else "Settings saved.",
                  ok=True)
        if folder_changed:
            self._offer_restart()

    def _offer_restart(self) -> None:
        """Ask, without blocking: restart now on the new library folder, or later."""
        if self.restart_offer is not None:
            return
        box = QMessageBox(QMessageBox.Icon.Information, "Library folder", RESTART_TEXT,
                          QMessageBox.StandardButton.NoButton, self)
        box.setInformativeText("Jobs still running carry on at the next start with "
                               "the library they belong to.")
        box.addButton(RESTART_NOW, QMessageBox.ButtonRole.AcceptRole)
        later = box.addButton(LATER, QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(later)
        box.finished.connect(functools.partial(self._restart_answered, box))
        self.restart_offer = box
        box.open()

    def _restart_answered(self, box: QMessageBox, _result: int) -> None:
        self.restart_offer = None
        clicked = box.clickedButton()
        box.deleteLater()
        if clicked is not None and clicked.text() == RESTART_NOW:
            self.restart()

    def restart(self) -> None:
        """Start nbdesk again (its command line, detached), then close the window as
        its close button does: the engine stops in order and the new process opens the
        new library folder."""
        program, arguments = self._restart_command()
        started, _pid = QProcess.startDetached(program, arguments, os.getcwd())
        if not started:
            self._say("Could not start nbdesk again: close it and start it yourself to "
                      "use the new library folder.", error=True)
            return
        self.restarting.emit()
        window = self.parentWidget()
        self.close()
        if window is not None:
            window.close()

    def choose_library_dir(self) -> None:
        if self._folder_dialog is None:
            dialog = QFileDialog(self, "Library folder")
            dialog.setFileMode(QFileDialog.FileMode.Directory)
            dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
            dialog.fileSelected.connect(self.library_dir.setText)
            self._folder_dialog = dialog
        current = self.library_dir.text().strip() or str(self.controller.library_root)
        self._folder_dialog.setDirectory(current)
        self._folder_dialog.open()

    # ------------------------------------------------------------------ plumbing

    def message_text(self) -> str:
        return self.message.text()

    def _say(self, text: str, *, error: bool = False, ok: bool = False) -> None:
        if not shiboken6.isValid(self):
            return
        repeated = self.message.isVisibleTo(self) and self.message.text() == text
        self.message.setText(text)
        self.message.setStyleSheet(_ERROR_STYLE if error else _OK_STYLE if ok else "")
        self.message.setVisible(bool(text))
        self._fit()
        if error and not repeated:
            self.controller.error(text)

    @staticmethod
    def _set_status(row: _KeyRow, text: str, *, error: bool = False, ok: bool = False) -> None:
        row.status.setText(text)
        row.status.setStyleSheet(_ERROR_STYLE if error else _OK_STYLE if ok else "")

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        self.controller.spawn(coro, what=what)

