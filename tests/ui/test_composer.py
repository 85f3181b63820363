"""The composer: controls follow the capability table, queueing goes through the
controller, refusals are inline messages, the prompt history persists."""

from __future__ import annotations

import json
from pathlib import Path

import keyring.backend
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, Qt, QUrl
from PySide6.QtWidgets import QApplication, QComboBox
from pytestqt.qtbot import QtBot

from nbdesk.api.capabilities import ALL_RATIOS, APIFRAME, APIFREE, GEMINI
from nbdesk.core.jobs import JobParams, JobSpec, JobState
from nbdesk.core.secrets import SecretStore
from nbdesk.ui.composer import Composer
from nbdesk.ui.models.history import HISTORY_MAX, HISTORY_NAME
from tests.ui.conftest import UiEnv, run_async


class EmptyKeyring(keyring.backend.KeyringBackend):
    """A working keychain that holds no key."""

    priority = 1  # type: ignore[assignment]
    viable = False  # never picked by keyring's auto-detection

    def get_password(self, service: str, username: str) -> str | None:
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        raise AssertionError("the composer never stores keys")

    def delete_password(self, service: str, username: str) -> None:
        raise AssertionError("the composer never deletes keys")


def items(combo: QComboBox) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def png(path: Path, colour: str = "red") -> Path:
    Image.new("RGB", (32, 32), colour).save(path, "PNG")
    return path


def saved_prompts(path: Path) -> list[str] | None:
    """The prompts in the history file; None while it is missing or not (yet) valid."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    prompts = data.get("prompts")
    return prompts if isinstance(prompts, list) else None


@pytest.fixture
def composer(qtbot: QtBot, ui_env: UiEnv) -> Composer:
    widget = Composer(ui_env.controller)
    qtbot.addWidget(widget)
    return widget


@pytest.fixture
def messages(ui_env: UiEnv) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    ui_env.controller.message.connect(lambda level, text: seen.append((level, text)))
    return seen


def test_controls_follow_the_capability_table(composer: Composer) -> None:
    c = composer
    assert c.provider_choice() == "apiframe"  # settings.default_provider, key in the env
    assert [c.provider_combo.itemData(i) for i in range(c.provider_combo.count())] == [
        "demo", "apiframe", "apifree", "gemini"]
    assert items(c.model_combo) == [m.label for m in APIFRAME.models]

    # Nano Banana: five ratios, no resolution, formats, search grounding, no cache key.
    assert c.select_model("nano-banana")
    nb = APIFRAME.model("nano-banana")
    assert items(c.ratio_combo) == list(nb.aspect_ratios) and c.ratio_combo.currentText() == "1:1"
    assert not c.resolution_combo.isEnabled() and c.resolution_combo.count() == 0
    assert "no resolution setting" in c.resolution_combo.toolTip()
    assert c.format_combo.isEnabled() and items(c.format_combo) == ["jpg", "png", "webp"]
    assert c.google_search.isEnabled() and c.image_search.isEnabled()
    assert not c.cache_key.isEnabled() and "no cache key" in c.cache_key.toolTip()
    assert c.tray.max_refs() == 3 and c.tray.count_label.text() == "0 / 3"
    assert c.length_label.text() == "0 / 2000"
    assert c.spec().params == JobParams(aspect_ratio="1:1", output_format="jpg")

    # Nano Banana Pro: all ten ratios and a resolution; the chosen ratio is kept.
    assert c.select_model("nano-banana-pro")
    assert items(c.ratio_combo) == list(ALL_RATIOS)
    assert c.resolution_combo.isEnabled() and items(c.resolution_combo) == ["1K", "2K", "4K"]
    assert c.tray.max_refs() == 14
    c.ratio_combo.setCurrentText("21:9")
    c.resolution_combo.setCurrentText("4K")
    c.google_search.setChecked(True)
    assert c.spec().params == JobParams(aspect_ratio="21:9", resolution="4K",
                                        output_format="jpg", google_search=True)
    # Back to Nano Banana: 21:9 is not offered, so the default, visibly.
    assert c.select_model("nano-banana")
    assert c.ratio_combo.currentText() == "1:1" and c.spec().params.resolution is None

    # APIFree: one model, no format, no search grounding (unticked, not ignored),
    # a cache key, a 20000-character prompt.
    assert c.select_provider("apifree")
    assert [c.model_combo.itemData(i) for i in range(c.model_combo.count())] == [
        "google/nano-banana-pro"]
    assert not c.format_combo.isEnabled() and "format" in c.format_combo.toolTip()
    for box, missing in ((c.google_search, "no search grounding"),
                         (c.image_search, "no image search"), (c.with_text, "images only")):
        assert not box.isEnabled() and not box.isChecked()
        assert missing in box.toolTip()
    assert c.cache_key.isEnabled()
    assert c.resolution_combo.isEnabled() and items(c.ratio_combo) == list(ALL_RATIOS)
    assert c.length_label.text() == "0 / 20000" and c.tray.max_refs() == 14
    c.cache_key.setText("  run-7 ")
    c.set_prompt("a kite")
    spec = c.spec()
    assert (spec.provider, spec.model, spec.demo) == ("apifree", "google/nano-banana-pro", False)
    assert spec.params == JobParams(aspect_ratio="1:1", resolution="1K", cache_key="run-7")

    # Demo: Apiframe's models against the simulator; the cache key is gone with APIFree.
    assert c.select_provider("demo")
    assert items(c.model_combo) == [m.label for m in APIFRAME.models]
    assert not c.cache_key.isEnabled() and c.cache_key.text() == ""
    assert "simulator" in c.hint_text()
    spec = c.spec()
    assert (spec.provider, spec.demo) == ("apiframe", True)


def test_gemini_controls_follow_the_table_and_url_references_are_refused(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer, messages: list[tuple[str, str]],
    tmp_path: Path,
) -> None:
    c = composer
    assert c.select_provider("gemini")
    assert items(c.model_combo) == [m.label for m in GEMINI.models]
    # Nano Banana (flash): all ten ratios, no size, no format, no search; text on request.
    assert c.select_model("gemini-2.5-flash-image")
    assert items(c.ratio_combo) == list(ALL_RATIOS)
    assert not c.resolution_combo.isEnabled() and not c.format_combo.isEnabled()
    assert not c.google_search.isEnabled() and not c.image_search.isEnabled()
    assert c.with_text.isEnabled() and c.tray.max_refs() == 3
    assert "no URLs" in c.tray.toolTip()
    c.with_text.setChecked(True)
    assert c.spec().params == JobParams(aspect_ratio="1:1", with_text=True)
    # Nano Banana Pro: 1K/2K/4K, Google search (no image search), 14 references.
    assert c.select_model("gemini-3-pro-image-preview")
    assert items(c.resolution_combo) == ["1K", "2K", "4K"]
    assert c.google_search.isEnabled() and not c.image_search.isEnabled()
    assert c.tray.max_refs() == 14
    c.resolution_combo.setCurrentText("4K")
    c.google_search.setChecked(True)
    spec = c.spec()
    assert (spec.provider, spec.model, spec.demo) == (
        "gemini", "gemini-3-pro-image-preview", False)
    assert spec.params == JobParams(aspect_ratio="1:1", resolution="4K", google_search=True,
                                    with_text=True)

    # A URL reference cannot go to Gemini: refused inline, nothing written or sent.
    with qtbot.waitSignal(c.tray.changed, timeout=5000):
        c.tray.add_sources([str(png(tmp_path / "a.png")), "https://example.com/b.png"])
    c.set_prompt("combine them")
    assert c.queue() is None
    assert "local files only" in c.status_text() and "1 URL reference" in c.status_text()
    assert messages[-1] == ("warning", c.status_text())
    assert ui_env.rt.library.jobs() == []
    assert ui_env.sim.stats.requests == 0


def test_ctrl_enter_queues_a_job_that_completes(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer
) -> None:
    c = composer
    c.select_model("nano-banana")
    c.ratio_combo.setCurrentText("4:3")
    c.format_combo.setCurrentText("png")
    c.set_prompt("a red kite over the dunes")
    with qtbot.waitSignal(ui_env.controller.itemsAdded, timeout=15_000) as added, \
            qtbot.waitSignal(c.submitted, timeout=10_000) as submitted:
        qtbot.keyClick(c.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    (job,) = submitted.args[0]
    stored = ui_env.rt.library.job(job.id)
    assert (stored.provider, stored.model, stored.demo) == ("apiframe", "nano-banana", False)
    assert stored.prompt == "a red kite over the dunes"
    assert stored.params == JobParams(aspect_ratio="4:3", output_format="png")
    assert len(added.args[0]) == 1
    qtbot.waitUntil(lambda: ui_env.rt.library.job(job.id).state is JobState.COMPLETED)
    # The prompt stays for tweaking; the status says it was queued; history has it.
    assert c.prompt.toPlainText() == "a red kite over the dunes"
    assert c.status_text().startswith("Queued")
    assert c.history()[0] == "a red kite over the dunes"
    assert c.queue_button.isEnabled()


def test_several_images_with_a_reference(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer, tmp_path: Path
) -> None:
    c = composer
    ref = png(tmp_path / "ref.png")
    with qtbot.waitSignal(c.tray.changed, timeout=5000):
        c.add_reference(str(ref))
    c.count_spin.setValue(2)
    c.set_prompt("two variations")
    with qtbot.waitSignal(c.submitted, timeout=10_000) as submitted:
        c.queue_button.click()
    jobs = submitted.args[0]
    assert len(jobs) == 2 and all(j.refs[0].source == str(ref) for j in jobs)
    assert all(j.refs[0].kind == "file" for j in jobs)
    qtbot.waitUntil(
        lambda: all(ui_env.rt.library.job(j.id).state.finished for j in jobs), timeout=15_000
    )


def test_empty_over_long_and_too_many_references_are_refused(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer, messages: list[tuple[str, str]],
    tmp_path: Path,
) -> None:
    c = composer
    c.select_model("nano-banana")
    c.set_prompt("   \n  ")
    qtbot.keyClick(c.prompt, Qt.Key.Key_Enter,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.KeypadModifier)
    assert "prompt is empty" in c.status_text() and c.status.isVisibleTo(c)
    assert messages[-1] == ("warning", c.status_text())

    c.set_prompt("x" * 2001)
    assert c.length_label.text() == "2001 / 2000"
    assert "#c0392b" in c.length_label.styleSheet()
    assert c.queue() is None
    assert "2001 characters" in c.status_text() and "at most 2000" in c.status_text()
    c.set_prompt("x" * 2000)
    assert c.length_label.styleSheet() == "" and c.problem() is None

    # Four references fit Nano Banana Pro, not Nano Banana (3).
    c.select_model("nano-banana-pro")
    refs = [str(png(tmp_path / f"{i}.png", colour)) for i, colour in
            enumerate(("red", "green", "blue", "white"))]
    with qtbot.waitSignal(c.tray.changed, timeout=5000):
        c.tray.add_sources(refs)
    c.select_model("nano-banana")
    assert c.tray.count_label.text() == "4 / 3"
    c.set_prompt("combine them")
    c.queue_button.click()
    assert "4 reference images" in c.status_text() and "at most 3" in c.status_text()
    assert messages[-1] == ("warning", c.status_text())

    assert ui_env.rt.library.jobs() == []


def test_an_error_from_the_core_is_shown_inline_and_on_the_message_channel(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer, messages: list[tuple[str, str]],
    tmp_path: Path,
) -> None:
    c = composer
    ref = png(tmp_path / "soon-gone.png")
    with qtbot.waitSignal(c.tray.changed, timeout=5000):
        c.add_reference(str(ref))
    ref.unlink()  # after the tray checked it: the engine's own check refuses it
    c.set_prompt("with a vanished reference")
    with qtbot.waitSignal(ui_env.controller.message, timeout=5000) as msg:
        task = c.queue()
    assert task is not None
    qtbot.waitUntil(lambda: "no such file" in c.status_text())
    assert msg.args[0] == "error" and "no such file" in msg.args[1]
    assert c.queue_button.isEnabled()
    assert ui_env.rt.library.jobs() == []


def test_prompt_history_persists_and_is_recalled(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer
) -> None:
    path = ui_env.rt.paths.root / HISTORY_NAME
    composer.remember("first prompt")
    composer.remember("second prompt")
    composer.remember("first prompt")  # again: moves to the top, no duplicate
    assert composer.history() == ["first prompt", "second prompt"]
    qtbot.waitUntil(lambda: saved_prompts(path) == ["first prompt", "second prompt"])

    # A new composer (the next session) reads it back.
    again = Composer(ui_env.controller)
    qtbot.addWidget(again)
    qtbot.waitUntil(lambda: again.history() == ["first prompt", "second prompt"])
    again.set_prompt("a draft")
    ctrl = Qt.KeyboardModifier.ControlModifier
    qtbot.keyClick(again.prompt, Qt.Key.Key_Up, ctrl)
    assert again.prompt.toPlainText() == "first prompt"
    qtbot.keyClick(again.prompt, Qt.Key.Key_Up, ctrl)
    assert again.prompt.toPlainText() == "second prompt"
    qtbot.keyClick(again.prompt, Qt.Key.Key_Up, ctrl)  # the oldest: stays
    assert again.prompt.toPlainText() == "second prompt"
    qtbot.keyClick(again.prompt, Qt.Key.Key_Down, ctrl)
    assert again.prompt.toPlainText() == "first prompt"
    qtbot.keyClick(again.prompt, Qt.Key.Key_Down, ctrl)
    assert again.prompt.toPlainText() == "a draft"

    # The history menu lists them newest first and recalls one.
    again.history_menu.aboutToShow.emit()
    actions = [a for a in again.history_menu.actions() if a.toolTip() in again.history()]
    assert [a.toolTip() for a in actions] == ["first prompt", "second prompt"]
    actions[1].trigger()
    assert again.prompt.toPlainText() == "second prompt"

    # At most HISTORY_MAX prompts are kept.
    for i in range(HISTORY_MAX + 5):
        again.remember(f"prompt {i}")
    expected = [f"prompt {i}" for i in reversed(range(5, HISTORY_MAX + 5))]
    assert again.history() == expected
    qtbot.waitUntil(lambda: saved_prompts(path) == expected)


def test_a_damaged_history_file_gives_an_empty_history(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    path = ui_env.rt.paths.root / HISTORY_NAME
    path.write_text("{not json")
    c = Composer(ui_env.controller)
    qtbot.addWidget(c)
    c.remember("fresh")
    qtbot.waitUntil(lambda: saved_prompts(path) == ["fresh"])
    assert c.history() == ["fresh"]


# The offscreen platform warns when a top-level window is shown.
@pytest.mark.qt_log_ignore("does not support propagateSizeHints")
def test_rerun_and_edit_from_a_library_item(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    ctl = ui_env.controller
    ref = png(tmp_path / "ref.png", "purple")
    spec = JobSpec(
        "apiframe", "nano-banana-pro", "a lighthouse at dusk",
        JobParams(aspect_ratio="16:9", resolution="2K", output_format="png",
                  google_search=True),
        refs=(str(ref),),
    )
    with qtbot.waitSignal(ctl.itemsAdded, timeout=15_000) as added:
        run_async(qtbot, ctl.submit(spec))
    item = run_async(qtbot, ctl.item(added.args[0][0]))
    library_copy = str(ctl.library_root / item.refs[0].path)

    c = Composer(ctl)
    qtbot.addWidget(c)
    c.select_provider("apifree")  # somewhere else first
    c.set_prompt("something else")

    # Re-run: the same everything.
    ctl.rerunRequested.emit(item)
    qtbot.waitUntil(lambda: c.tray.sources() == [library_copy])
    assert (c.provider_choice(), c.model_caps().model) == ("apiframe", "nano-banana-pro")
    assert c.prompt.toPlainText() == "a lighthouse at dusk"
    again = c.spec()
    assert again.params == spec.params and again.refs == (library_copy,)
    assert again.parent_item is None

    # Edit: provider/model/params kept, the image itself as the reference, a new prompt.
    c.show()
    qtbot.waitExposed(c)
    c.activateWindow()
    qtbot.waitUntil(c.isActiveWindow)
    ctl.editRequested.emit(item)
    qtbot.waitUntil(lambda: c.tray.sources() == [str(item.path)])
    assert c.prompt.toPlainText() == ""
    qtbot.waitUntil(c.prompt.hasFocus)
    edit = c.spec()
    assert (edit.provider, edit.model, edit.params) == ("apiframe", "nano-banana-pro",
                                                        spec.params)
    assert edit.parent_item == item.id
    assert "Editing image" in c.status_text()


def test_use_as_reference_signal_fills_the_tray(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer, tmp_path: Path
) -> None:
    image = png(tmp_path / "from-library.png")
    with qtbot.waitSignal(composer.tray.changed, timeout=5000):
        ui_env.controller.useAsReference.emit(str(image))
    assert composer.tray.sources() == [str(image)]


def test_no_key_selects_demo_and_says_so(qtbot: QtBot, ui_env: UiEnv) -> None:
    ui_env.rt.secrets = SecretStore(environ={}, backend=EmptyKeyring())
    c = Composer(ui_env.controller)
    qtbot.addWidget(c)
    assert c.provider_choice() == "apiframe" and c.hint_text() == ""  # not known yet
    ui_env.controller.keys.start()  # (the window does, once its first screen is drawn)
    qtbot.waitUntil(lambda: c.provider_choice() == "demo")
    assert "No API key for Apiframe" in c.hint_text() and "Demo (offline)" in c.hint_text()
    assert c.hint.isVisibleTo(c)

    c.set_prompt("an offline try")
    with qtbot.waitSignal(ui_env.controller.itemsAdded, timeout=15_000), \
            qtbot.waitSignal(c.submitted, timeout=10_000) as submitted:
        c.queue()
    (job,) = submitted.args[0]
    assert (job.provider, job.demo) == ("apiframe", True)


def test_no_key_without_the_demo_fallback_keeps_the_provider_with_a_hint(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    ui_env.rt.secrets = SecretStore(environ={}, backend=EmptyKeyring())
    ui_env.rt.settings_service.update(save=False, demo_when_no_key=False)
    c = Composer(ui_env.controller)
    qtbot.addWidget(c)
    ui_env.controller.keys.start()
    qtbot.waitUntil(lambda: "No API key for Apiframe" in c.hint_text())
    assert c.provider_choice() == "apiframe" and "Settings" in c.hint_text()
    c.select_provider("apifree")
    qtbot.waitUntil(lambda: "No API key for APIFree" in c.hint_text())
    assert APIFREE.env_key in c.hint_text()


def test_an_image_file_pasted_into_the_prompt_goes_to_the_tray(
    qtbot: QtBot, composer: Composer, tmp_path: Path
) -> None:
    image = png(tmp_path / "pasted.png")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(image))])
    QApplication.clipboard().setMimeData(mime)
    composer.set_prompt("keep this text")
    with qtbot.waitSignal(composer.tray.changed, timeout=5000):
        composer.prompt.paste()
    assert composer.tray.sources() == [str(image)]
    assert composer.prompt.toPlainText() == "keep this text"
    QApplication.clipboard().setText(" and more")
    composer.prompt.paste()  # plain text is text
    assert composer.prompt.toPlainText() == "keep this text and more"
