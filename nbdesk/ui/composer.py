"""The composer: prompt, provider, model, parameters and references of the next job.

Every control follows the capability table (``nbdesk.api.capabilities``) for the selected
provider and model: a setting the model lacks is disabled, emptied and says why in its
tooltip; nothing the user sets is silently dropped. Queueing goes through the controller
(``controller.submit``), never to the engine directly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QEvent, QMimeData, Qt, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from nbdesk.api.capabilities import DEMO, DEMO_PROVIDER, PROVIDERS, ModelCaps, ProviderCaps
from nbdesk.core.jobs import MAX_COUNT, Job, JobParams, JobSpec
from nbdesk.core.library import Item
from nbdesk.core.secrets import RedactingFilter, redact
from nbdesk.ui.controller import Controller, is_expected
from nbdesk.ui.models.history import HISTORY_MAX
from nbdesk.ui.models.keys import KeyState
from nbdesk.ui.references import ReferenceTray, normalize

log = logging.getLogger(__name__)

#: queueing more images than this at once is confirmed first, with the total cost
CONFIRM_COUNT = 4
DEMO_LABEL = "Demo (offline)"
_ERROR_STYLE = "color: #c0392b;"
_OK_STYLE = "color: #2e7d32;"
_HINT_STYLE = "color: #8a6d1f;"


def _is_submit(event: QKeyEvent) -> bool:
    return (
        event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        and bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
    )


def _history_step(event: QKeyEvent) -> int:
    """+1 for Ctrl+Up (older), -1 for Ctrl+Down (newer), 0 otherwise."""
    if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
        if event.key() == Qt.Key.Key_Up:
            return 1
        if event.key() == Qt.Key.Key_Down:
            return -1
    return 0


class PromptEdit(QPlainTextEdit):
    """The prompt: Ctrl+Enter queues, Ctrl+Up/Down walk the history; pasted or dropped
    pictures and image files go to the reference tray instead of into the text."""

    submitRequested = Signal()
    historyStep = Signal(int)
    referencesOffered = Signal(QMimeData)

    def event(self, e: QEvent) -> bool:
        # Keep our keys from any window shortcut (and the text control's own bindings).
        if e.type() == QEvent.Type.ShortcutOverride and isinstance(e, QKeyEvent) and (
            _is_submit(e) or _history_step(e)
        ):
            e.accept()
            return True
        return super().event(e)

    def keyPressEvent(self, e: QKeyEvent) -> None:
        if _is_submit(e):
            e.accept()
            self.submitRequested.emit()
            return
        step = _history_step(e)
        if step:
            e.accept()
            self.historyStep.emit(step)
            return
        super().keyPressEvent(e)

    @staticmethod
    def _is_reference(source: QMimeData) -> bool:
        if source.hasUrls() and all(u.isLocalFile() for u in source.urls()):
            return True
        return source.hasImage() and not source.text().strip()

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return self._is_reference(source) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        if self._is_reference(source):
            self.referencesOffered.emit(source)
            return
        super().insertFromMimeData(source)


class Composer(QWidget):
    """Builds a ``JobSpec`` from the controls and queues it through the controller."""

    #: the jobs written by a successful submit
    submitted = Signal(list)

    def __init__(self, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._history_index = -1  # -1: the draft, else an index into history()
        self._draft = ""
        self._recalling = False
        self._submitting = False
        self._provider_touched = False  # the user picked a provider: no automatic switch
        self._parent_item: tuple[int, str] | None = None  # (item id, its file) when editing
        #: the provider selected at start, until its key status is known (no key: Demo)
        self._awaiting_start: str | None = None

        # -- controls
        self.provider_combo = QComboBox()
        self.provider_combo.addItem(DEMO_LABEL, DEMO)
        self.provider_combo.setItemData(
            0, "Apiframe's API against the built-in simulator: no key, no cost, "
            "placeholder images", Qt.ItemDataRole.ToolTipRole,
        )
        for pid, pcaps in PROVIDERS.items():
            self.provider_combo.addItem(pcaps.label, pid)
        self.model_combo = QComboBox()
        self.ratio_combo = QComboBox()
        self.resolution_combo = QComboBox()
        self.format_combo = QComboBox()
        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, MAX_COUNT)
        self.count_spin.setToolTip(
            f"How many images to make (1–{MAX_COUNT}); one job, and one paid request, each")
        self.cost_label = QLabel()
        self.cost_label.setObjectName("costLabel")
        self.cost_label.setWordWrap(True)  # (its longest text must not widen the composer)
        #: the open "queue this many images?" question
        self.count_question: QMessageBox | None = None
        self.google_search = QCheckBox("Google search")
        self.image_search = QCheckBox("Image search")
        self.with_text = QCheckBox("Text too")
        self.cache_key = QLineEdit()
        self.cache_key.setPlaceholderText("optional")
        self.cache_key.setClearButtonEnabled(True)

        self.prompt = PromptEdit()
        self.prompt.setPlaceholderText(
            "Describe the image… (Ctrl+Enter queues it, Ctrl+Up/Down recall earlier prompts)"
        )
        self.prompt.setTabChangesFocus(True)
        self.prompt.setAccessibleName("Prompt")
        self.prompt.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.prompt.setMinimumHeight(70)
        self.length_label = QLabel()
        self.length_label.setToolTip("Characters in the prompt / the most this model takes")
        self.history_menu = QMenu(self)
        self.history_button = QToolButton()
        self.history_button.setText("History")
        self.history_button.setToolTip(
            f"Your last {HISTORY_MAX} prompts (Ctrl+Up / Ctrl+Down in the prompt)"
        )
        self.history_button.setMenu(self.history_menu)
        self.history_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.queue_button = QPushButton("Queue")
        self.queue_button.setToolTip("Queue the job (Ctrl+Enter)")
        self.queue_button.setDefault(False)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet(_HINT_STYLE)
        self.hint.hide()
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.hide()
        self.tray = ReferenceTray(controller, self)

        # -- layout
        # two rows of options, so the composer fits a narrow column
        row1 = QGridLayout()
        row1.setHorizontalSpacing(6)
        cells = (
            (0, 0, "&Provider", self.provider_combo), (0, 2, "&Model", self.model_combo),
            (1, 0, "&Ratio", self.ratio_combo), (1, 2, "Re&solution", self.resolution_combo),
            (2, 0, "Form&at", self.format_combo), (2, 2, "&Images", self.count_spin),
        )
        for row, col, text, widget in cells:
            label = QLabel(text)
            label.setBuddy(widget)
            row1.addWidget(label, row, col)
            row1.addWidget(widget, row, col + 1)
        # what the images will cost, under the count (the column is narrow)
        row1.addWidget(self.cost_label, 3, 3)
        row1.setColumnStretch(1, 1)
        row1.setColumnStretch(3, 1)
        row2 = QHBoxLayout()
        row2.addWidget(self.google_search)
        row2.addWidget(self.image_search)
        row2.addWidget(self.with_text)
        cache_label = QLabel("&Cache key")
        cache_label.setBuddy(self.cache_key)
        row2.addWidget(cache_label)
        row2.addWidget(self.cache_key, 1)
        row3 = QHBoxLayout()
        row3.addWidget(self.length_label)
        row3.addStretch(1)
        row3.addWidget(self.history_button)
        row3.addWidget(self.queue_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addWidget(self.prompt, 1)
        layout.addLayout(row3)
        layout.addWidget(self.hint)
        layout.addWidget(self.status)
        layout.addWidget(self.tray)

        # -- wiring
        self.provider_combo.currentIndexChanged.connect(self._on_provider_changed)
        self.provider_combo.activated.connect(self._on_provider_activated)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.resolution_combo.currentIndexChanged.connect(self._update_cost)
        self.count_spin.valueChanged.connect(self._update_cost)
        self.prompt.textChanged.connect(self._on_text_changed)
        self.prompt.submitRequested.connect(self.queue)
        self.prompt.historyStep.connect(self.recall)
        self.prompt.referencesOffered.connect(self.tray.add_mime)
        self.queue_button.clicked.connect(self.queue)
        self.history_menu.aboutToShow.connect(self._fill_history_menu)
        self.tray.changed.connect(self._on_tray_changed)
        for key in ("Ctrl+Return", "Ctrl+Enter"):
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(self.queue)
        controller.useAsReference.connect(self.add_reference)
        controller.editRequested.connect(lambda item: self.set_from_item(item, edit=True))
        controller.rerunRequested.connect(lambda item: self.set_from_item(item, edit=False))

        # -- initial state
        settings = controller.settings
        start = settings.default_provider
        if start != DEMO and start in PROVIDERS:
            self._awaiting_start = start
        index = self.provider_combo.findData(start)
        self.provider_combo.setCurrentIndex(max(index, 0))
        self._on_provider_changed()  # index 0 emits no change signal
        controller.keys.changed.connect(self._on_key_status)
        controller.history.load()

    # ------------------------------------------------------------------ capabilities

    def provider_choice(self) -> str:
        """``"demo"`` or a provider id."""
        return str(self.provider_combo.currentData())

    def provider_caps(self) -> ProviderCaps:
        choice = self.provider_choice()
        return PROVIDERS[DEMO_PROVIDER if choice == DEMO else choice]

    def model_caps(self) -> ModelCaps:
        caps = self.provider_caps()
        data = self.model_combo.currentData()
        try:
            return caps.model(str(data))
        except KeyError:
            return caps.default_model

    def select_provider(self, choice: str) -> bool:
        index = self.provider_combo.findData(choice)
        if index < 0:
            return False
        if index == self.provider_combo.currentIndex():
            return True
        self.provider_combo.setCurrentIndex(index)
        return True

    def select_model(self, model_id: str) -> bool:
        index = self.model_combo.findData(model_id)
        if index < 0:
            return False
        self.model_combo.setCurrentIndex(index)
        return True

    def _on_provider_activated(self, _index: int) -> None:
        self._provider_touched = True
        self._awaiting_start = None

    def _on_provider_changed(self, _index: int = -1) -> None:
        choice = self.provider_choice()
        caps = self.provider_caps()
        wanted = self.controller.settings.default_models.get(choice)
        self.model_combo.blockSignals(True)
        try:
            self.model_combo.clear()
            for m in caps.models:
                self.model_combo.addItem(m.label, m.model)
                self.model_combo.setItemData(
                    self.model_combo.count() - 1, m.model, Qt.ItemDataRole.ToolTipRole
                )
            index = self.model_combo.findData(wanted) if wanted else -1
            self.model_combo.setCurrentIndex(max(index, 0))
        finally:
            self.model_combo.blockSignals(False)
        self._on_model_changed()
        if choice == DEMO:
            self._set_hint(
                "Demo: Apiframe's API against the built-in simulator — no key, no cost, "
                "placeholder images."
            )
        else:
            self._show_key_hint()

    def _on_model_changed(self, _index: int = -1) -> None:
        caps = self.provider_caps()
        m = self.model_caps()
        where = f"{m.label} on {caps.label}"

        self._fill(self.ratio_combo, m.aspect_ratios, m.default_ratio)
        self.ratio_combo.setToolTip(f"Aspect ratio ({where}: {', '.join(m.aspect_ratios)})")
        self._fill_optional(
            self.resolution_combo, m.resolutions, m.default_resolution,
            f"Output resolution ({where})",
            f"{where} has no resolution setting: the provider decides the size",
        )
        self._fill_optional(
            self.format_combo, m.formats, m.default_format,
            f"Output file format ({where})",
            f"{where} has no output format setting: the provider picks the format",
        )
        for box, offered, what, missing in (
            (self.google_search, m.search_grounding,
             "ground the image in Google Search results",
             "no search grounding (Apiframe's models and Gemini's Nano Banana Pro have it)"),
            (self.image_search, m.image_search,
             "ground the image in Google Image Search results",
             "no image search (only Apiframe's models have it)"),
            (self.with_text, m.text_answers,
             "answer with text beside the image (shown in the details)",
             "no text answers: it answers with images only"),
        ):
            box.setEnabled(offered)
            if offered:
                box.setToolTip(f"Ask {caps.label} to {what}")
            else:
                box.setChecked(False)
                box.setToolTip(f"{where} has {missing}")
        self.cache_key.setEnabled(m.cache_key)
        if m.cache_key:
            self.cache_key.setToolTip(
                f"Optional: {caps.label} returns a cached result for a repeated cache key"
            )
        else:
            self.cache_key.clear()
            self.cache_key.setToolTip(f"{where} takes no cache key (only APIFree does)")
        self.tray.set_max(m.max_refs)
        sources = "image files or URLs" if m.url_refs else "image files (no URLs)"
        self.tray.setToolTip(
            f"Up to {m.max_refs} reference images for {where}: drop {sources} "
            "here, or paste with Ctrl+V"
        )
        self._update_length()
        self._update_cost()

    @staticmethod
    def _fill(combo: QComboBox, values: Sequence[str], default: str | None) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        try:
            combo.clear()
            combo.addItems(list(values))
            keep = current if current in values else default
            combo.setCurrentIndex(max(combo.findText(keep or ""), 0))
        finally:
            combo.blockSignals(False)

    def _fill_optional(
        self, combo: QComboBox, values: Sequence[str], default: str | None,
        tip: str, missing: str,
    ) -> None:
        if values:
            self._fill(combo, values, default)
            combo.setEnabled(True)
            combo.setToolTip(f"{tip}: {', '.join(values)}")
        else:
            combo.clear()
            combo.setPlaceholderText("—")
            combo.setCurrentIndex(-1)
            combo.setEnabled(False)
            combo.setToolTip(missing)

    # ------------------------------------------------------------------ keys

    def _on_key_status(self, provider_id: str) -> None:
        if provider_id == self.provider_choice():
            self._show_key_hint()

    def _show_key_hint(self) -> None:
        """The current provider's key status, from the shared model: nothing while it has
        a key or is not known yet; without one, a hint, and at start Demo instead (when
        the settings ask for it and the user has not picked a provider)."""
        choice = self.provider_choice()
        if choice not in PROVIDERS:
            return
        info = self.controller.keys.status(choice)
        if info.state is KeyState.CHECKING:
            self._set_hint("")
            return
        initial = choice == self._awaiting_start
        self._awaiting_start = None
        if info.state.has_key:
            self._set_hint("")
            return
        caps = PROVIDERS[choice]
        reason = f" ({info.message})" if info.message else ""
        settings = self.controller.settings
        if initial and settings.demo_when_no_key and not self._provider_touched:
            self.select_provider(DEMO)
            self._set_hint(
                f"No API key for {caps.label}, so {DEMO_LABEL} is selected: jobs run "
                f"against the built-in simulator. Add a key in Settings (or set "
                f"{caps.env_key}) to use {caps.label}.{reason}"
            )
        else:
            self._set_hint(
                f"No API key for {caps.label}: add one in Settings (or set {caps.env_key}), "
                f"or choose {DEMO_LABEL}.{reason}"
            )

    def hint_text(self) -> str:
        return self.hint.text()

    def _set_hint(self, text: str) -> None:
        self.hint.setText(text)
        self.hint.setVisible(bool(text))

    # ------------------------------------------------------------------ prompt

    def prompt_text(self) -> str:
        return self.prompt.toPlainText().strip()

    def set_prompt(self, text: str) -> None:
        self.prompt.setPlainText(text)
        cursor = self.prompt.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        self.prompt.setTextCursor(cursor)

    def focus_prompt(self) -> None:
        self.prompt.setFocus(Qt.FocusReason.OtherFocusReason)

    def _on_text_changed(self) -> None:
        if not self._recalling:
            self._history_index = -1
        self._update_length()

    def _update_length(self) -> None:
        n = len(self.prompt_text())
        limit = self.model_caps().prompt_max
        self.length_label.setText(f"{n} / {limit}")
        self.length_label.setStyleSheet(_ERROR_STYLE if n > limit else "")

    # ------------------------------------------------------------------ cost

    def estimate(self) -> float | None:
        """The estimated total of the images the controls ask for: 0 for Demo, None
        where the provider reports its cost only after the job (no price to go by)."""
        if self.provider_choice() == DEMO:
            return 0.0
        price = self.model_caps().price_per_image(self.resolution_combo.currentText() or None)
        return None if price is None else price * self.count_spin.value()

    def cost_text(self) -> str:
        """E.g. "4 images · about $0.54"."""
        n = self.count_spin.value()
        images = f"{n} image{'s' if n != 1 else ''}"
        total = self.estimate()
        if self.provider_choice() == DEMO:
            return f"{images} · no cost (Demo)"
        if total is None:
            return f"{images} · cost reported by the provider"
        return f"{images} · about {_money(total)}"

    def _update_cost(self, _value: int = 0) -> None:
        self.cost_label.setText(self.cost_text())
        caps, m = self.provider_caps(), self.model_caps()
        if self.provider_choice() == DEMO:
            tip = "Demo runs against the built-in simulator: nothing is paid"
        elif m.price:
            each = self.model_caps().price_per_image(self.resolution_combo.currentText()
                                                     or None)
            tip = (f"An estimate from {caps.label}'s list price for {m.label} "
                   f"({_money(each or 0.0, each=True)} an image); each job's cost is recorded when "
                   "its answer comes")
        else:
            tip = (f"{caps.label} reports each job's cost after it runs (shown in the "
                   "queue and the library); nbdesk has no price list for it")
        self.cost_label.setToolTip(tip)

    def _on_tray_changed(self) -> None:
        if self._parent_item is not None and self._parent_item[1] not in self.tray.sources():
            self._parent_item = None

    # ------------------------------------------------------------------ queueing

    def problem(self) -> str | None:
        """Why the current input cannot be queued, or None."""
        caps, m = self.provider_caps(), self.model_caps()
        where = f"{m.label} on {caps.label}"
        prompt = self.prompt_text()
        if self._submitting:
            return "Still queueing the previous request…"
        if not prompt:
            return "The prompt is empty: describe the image first."
        if len(prompt) > m.prompt_max:
            return (
                f"The prompt is {len(prompt)} characters; {where} takes at most "
                f"{m.prompt_max}. Shorten it by {len(prompt) - m.prompt_max}."
            )
        refs = len(self.tray.sources())
        if refs > m.max_refs:
            return (
                f"{refs} reference images; {where} takes at most {m.max_refs}. "
                f"Remove {refs - m.max_refs} of them or choose another model."
            )
        if not m.url_refs:
            urls = [u for u in self.tray.sources()
                    if u.lower().startswith(("http://", "https://"))]
            if urls:
                return (
                    f"{caps.label} takes reference images as local files only: remove the "
                    f"{len(urls)} URL reference{'s' if len(urls) != 1 else ''} or save "
                    f"{'them' if len(urls) != 1 else 'it'} as a file first."
                )
        if self.tray.pending():
            return "Reference images are still being checked; queue again in a moment."
        return None

    def spec(self) -> JobSpec:
        """The job the controls describe (not checked: see ``problem``)."""
        choice = self.provider_choice()
        demo = choice == DEMO
        m = self.model_caps()
        cache_key = self.cache_key.text().strip() if m.cache_key else ""
        params = JobParams(
            aspect_ratio=self.ratio_combo.currentText() or None,
            resolution=(self.resolution_combo.currentText() or None) if m.resolutions else None,
            output_format=(self.format_combo.currentText() or None) if m.formats else None,
            google_search=m.search_grounding and self.google_search.isChecked(),
            image_search=m.image_search and self.image_search.isChecked(),
            cache_key=cache_key or None,
            with_text=m.text_answers and self.with_text.isChecked(),
        )
        refs = tuple(self.tray.sources())
        parent = self._parent_item[0] if self._parent_item and self._parent_item[1] in refs \
            else None
        return JobSpec(
            provider=DEMO_PROVIDER if demo else choice, model=m.model, prompt=self.prompt_text(),
            params=params, refs=refs, demo=demo, parent_item=parent,
        )

    def queue(self) -> asyncio.Task[list[Job]] | None:
        """Queue the job (Ctrl+Enter); None when refused (the reason is shown) or when
        a large count is asked about first (``count_question``: queued on its OK)."""
        if self.count_question is not None:
            return None
        problem = self.problem()
        if problem is not None:
            self._show(problem, error=True)
            self.controller.message.emit("warning", problem)
            return None
        spec = self.spec()
        count = self.count_spin.value()
        if count > CONFIRM_COUNT and not spec.demo:
            self._ask_count(spec, count)
            return None
        return self._queue(spec, count)

    def _ask_count(self, spec: JobSpec, count: int) -> None:
        """Confirm a large count, stating the total; non-blocking (``open``: a nested
        event loop would re-enter the asyncio loop)."""
        caps, m = self.provider_caps(), self.model_caps()
        total = self.estimate()
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Queue many images")
        box.setText(f"Queue {count} images? That is {count} jobs, each a paid request to "
                    f"{caps.label}.")
        if total is None:
            box.setInformativeText(
                f"{caps.label} reports each job's cost after it runs; nbdesk has no "
                f"price to estimate the total from.")
        else:
            res = spec.params.resolution
            box.setInformativeText(
                f"About {_money(total)} in total ({m.label}{f' at {res}' if res else ''}, "
                f"about {_money(total / count, each=True)} an image).")
        ok = box.addButton(f"Queue {count} images", QMessageBox.ButtonRole.AcceptRole)
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(ok)
        box.setEscapeButton(cancel)

        def answered() -> None:
            self.count_question = None
            box.deleteLater()
            if box.clickedButton() is ok and shiboken6.isValid(self):
                self._queue(spec, count)

        box.finished.connect(answered)
        self.count_question = box
        box.open()

    def _queue(self, spec: JobSpec, count: int) -> asyncio.Task[list[Job]]:
        self._submitting = True
        self.queue_button.setEnabled(False)
        self._show("Queueing…")
        task = self.controller.spawn(self.controller.submit(spec, count), what="queueing")
        task.add_done_callback(functools.partial(self._queued, spec.prompt))
        return task

    def _queued(self, prompt: str, task: asyncio.Task[list[Job]]) -> None:
        if not shiboken6.isValid(self):
            return
        self._submitting = False
        self.queue_button.setEnabled(True)
        if task.cancelled():
            self._show("Queueing was cancelled.", error=True)
            return
        exc = task.exception()
        if exc is not None:
            # The controller reports it on its message channel too.
            if is_expected(exc):
                text = redact(str(exc), RedactingFilter.known())
            else:
                text = f"Queueing failed: internal error ({type(exc).__name__}); see the report"
            self._show(text, error=True)
            return
        jobs = task.result()
        n = len(jobs)
        self._show(f"Queued {n} job{'s' if n != 1 else ''}.", ok=True)
        self.remember(prompt)
        self.submitted.emit(list(jobs))

    def status_text(self) -> str:
        return self.status.text()

    def _show(self, text: str, *, error: bool = False, ok: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(_ERROR_STYLE if error else _OK_STYLE if ok else "")
        self.status.setVisible(bool(text))

    # ------------------------------------------------------------------ items

    def add_reference(self, source: str) -> None:
        self.tray.add(source)

    def set_from_item(self, item: Item, *, edit: bool) -> None:
        """Re-run (``edit=False``): the item's prompt, provider, model, parameters and
        references. Edit: the item's provider, model and parameters, the item's image as
        the only reference, and an empty prompt with the focus."""
        choice = DEMO if item.demo else item.provider
        if not self.select_provider(choice):
            self._show(f"Image #{item.id} was made with {item.provider!r}, which this "
                       "version does not know.", error=True)
            return
        self._provider_touched = True
        notes: list[str] = []
        if not self.select_model(item.model):
            notes.append(f"model {item.model!r} is no longer offered")
        notes += self._apply_params(JobParams.from_dict(item.params))
        self.tray.clear()
        if edit:
            path = str(item.path)
            self.prompt.clear()
            self._parent_item = (item.id, normalize(path))
            self.tray.add(path)
            self.focus_prompt()
            text = f"Editing image #{item.id}: describe the change, then Ctrl+Enter."
            if self.model_caps().history_turns and not item.demo:
                text += (f" {self.provider_caps().label} continues the conversation: its "
                         "earlier answers and their context go back with the edit.")
        else:
            self._parent_item = None
            self.set_prompt(item.prompt)
            root = self.controller.library_root
            refs = [
                str(root / r.path) if r.kind == "file" and r.path else r.source
                for r in item.refs
            ]
            if refs:
                self.tray.add_sources(refs)
            text = f"The settings of image #{item.id} are loaded: Ctrl+Enter queues it again."
        if notes:
            text += " Not restored: " + "; ".join(notes) + "."
        self._show(text)

    def _apply_params(self, params: JobParams) -> list[str]:
        notes: list[str] = []
        m = self.model_caps()
        for combo, value, what in (
            (self.ratio_combo, params.aspect_ratio, "aspect ratio"),
            (self.resolution_combo, params.resolution, "resolution"),
            (self.format_combo, params.output_format, "format"),
        ):
            if value is None:
                continue
            index = combo.findText(value)
            if index >= 0 and combo.isEnabled():
                combo.setCurrentIndex(index)
            else:
                notes.append(f"{what} {value}")
        for box, wanted, what in (
            (self.google_search, params.google_search, "Google search"),
            (self.image_search, params.image_search, "image search"),
            (self.with_text, params.with_text, "text answers"),
        ):
            if box.isEnabled():
                box.setChecked(wanted)
            elif wanted:
                notes.append(what)
        if m.cache_key:
            self.cache_key.setText(params.cache_key or "")
        elif params.cache_key:
            notes.append("cache key")
        return notes

    # ------------------------------------------------------------------ history

    @property
    def history_path(self) -> Path:
        return self.controller.history.path

    def history(self) -> list[str]:
        """Earlier prompts, newest first."""
        return self.controller.history.prompts()

    def remember(self, prompt: str) -> None:
        """Put ``prompt`` at the top of the history (the model saves it, off this
        thread)."""
        self._history_index = -1
        self.controller.history.remember(prompt)

    def clear_history(self) -> None:
        self._history_index = -1
        self.controller.history.clear()

    def recall(self, step: int) -> None:
        """Walk the history: +1 older (Ctrl+Up), -1 newer (Ctrl+Down); past the newest
        comes back the text being written."""
        target = self._history_index + step
        history = self.history()
        if not history or target < -1 or target >= len(history):
            return
        if self._history_index == -1:
            self._draft = self.prompt.toPlainText()
        self._history_index = target
        self._recalling = True
        try:
            self.set_prompt(self._draft if target == -1 else history[target])
        finally:
            self._recalling = False

    def _fill_history_menu(self) -> None:
        menu = self.history_menu
        menu.clear()
        history = self.history()
        if not history:
            empty = menu.addAction("No earlier prompts")
            empty.setEnabled(False)
            return
        metrics = menu.fontMetrics()
        for prompt in history:
            shown = metrics.elidedText(
                " ".join(prompt.split()), Qt.TextElideMode.ElideRight, 420
            ).replace("&", "&&")
            action = menu.addAction(shown)
            action.setToolTip(prompt)
            action.triggered.connect(functools.partial(self._use_history, prompt))
        menu.setToolTipsVisible(True)
        menu.addSeparator()
        menu.addAction("Clear history", self.clear_history)

    def _use_history(self, prompt: str) -> None:
        self.set_prompt(prompt)
        self.focus_prompt()

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Any, what: str) -> None:
        self.controller.spawn(coro, what=what)


def _money(amount: float, *, each: bool = False) -> str:
    """Dollars: a total to the cent ($0.54, $2.14; a tenth of a cent below a dime:
    $0.039), a price of one image as listed ($0.134)."""
    return f"${amount:.3f}" if each or 0 < amount < 0.1 else f"${amount:.2f}"
