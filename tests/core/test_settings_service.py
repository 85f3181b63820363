"""The settings service: the one live Settings, validated, saved atomically, and told to
its subscribers; a bad value or a failed write changes nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from nbdesk.core.settings import Settings, load_settings
from nbdesk.core.settings_service import SettingsService


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "config" / "settings.json"


def recorder(service: SettingsService) -> list[tuple[Settings, Settings]]:
    seen: list[tuple[Settings, Settings]] = []
    service.subscribe(lambda old, new: seen.append((old, new)))
    return seen


def test_update_saves_then_notifies_with_old_and_new(path: Path) -> None:
    service = SettingsService.load(path)
    first = service.current
    seen = recorder(service)
    on_disk: list[Settings] = []
    service.subscribe(lambda _old, _new: on_disk.append(load_settings(path)))

    new = service.update(concurrency=9, poll_interval=2)
    assert service.current is new and (new.concurrency, new.poll_interval) == (9, 2.0)
    assert seen == [(first, new)]
    assert on_disk == [new]  # written before anyone was told
    assert load_settings(path) == new
    assert not list(path.parent.glob("*.tmp"))  # the temp file was renamed into place

    service.update(concurrency=9)  # no change: nobody is told
    assert seen == [(first, new)]


@pytest.mark.parametrize(("changes", "message"), [
    ({"concurrency": 0}, "concurrency must be between 1 and 64, not 0"),
    ({"concurrency": "many"}, "concurrency must be a whole number"),
    ({"job_timeout": float("nan")}, "job_timeout must be a finite number"),
    ({"library_dir": "relative/folder"}, "library_dir must be an absolute path"),
    ({"colour": "blue"}, "unknown setting colour"),
])
def test_a_bad_value_changes_nothing_and_says_why(
        path: Path, changes: dict[str, object], message: str) -> None:
    service = SettingsService.load(path)
    service.update(concurrency=5)
    before, on_disk = service.current, path.read_bytes()
    seen = recorder(service)
    with pytest.raises(ValueError, match=message) as err:
        service.update(poll_interval=3.0, **changes)
    assert "\n" not in str(err.value)  # one line
    assert service.current is before and path.read_bytes() == on_disk and seen == []


def test_a_failed_write_changes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the settings folder should be")
    service = SettingsService(Settings(), blocker / "settings.json")
    seen = recorder(service)
    with pytest.raises(OSError):
        service.update(concurrency=2)
    assert service.current == Settings() and seen == []


def test_applied_now_saved_later_writes_the_latest(path: Path) -> None:
    service = SettingsService.load(path)
    seen = recorder(service)
    service.update(save=False, confirm_paid_retry=False)
    assert not path.exists() and len(seen) == 1  # applied (and told) before any write
    service.update(save=False, concurrency=3)
    assert service.save()
    saved = load_settings(path)
    assert saved == service.current and not saved.confirm_paid_retry
    assert saved.concurrency == 3


def test_a_newer_file_is_replaced_only_when_forced(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 99, "concurrency": 6}))
    service = SettingsService.load(path)
    assert service.current.concurrency == 6
    service.update(concurrency=7)
    assert json.loads(path.read_text())["version"] == 99  # kept: a newer nbdesk's file
    assert service.current.concurrency == 7
    service.update(force=True, concurrency=8)
    assert load_settings(path).concurrency == 8


def test_unsubscribe_and_a_failing_subscriber(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = SettingsService.load(path)

    def broken(_old: Settings, _new: Settings) -> None:
        raise RuntimeError("subscriber bug")

    service.subscribe(broken)
    seen = recorder(service)
    gone: list[Settings] = []
    unsubscribe = service.subscribe(lambda _old, new: gone.append(new))
    unsubscribe()
    with caplog.at_level("ERROR"):
        new = service.update(concurrency=2)
    assert seen[-1][1] is new and gone == []  # the others are still told
    assert "a settings subscriber failed" in caplog.text


def test_updates_from_many_threads_lose_nothing(path: Path) -> None:
    service = SettingsService.load(path)
    fields = ["notify_on_finish", "confirm_paid_retry", "demo_when_no_key",
              "keep_reference_metadata"]
    start = threading.Barrier(len(fields))

    def flip(name: str) -> None:
        start.wait()
        service.update(**{name: not getattr(Settings(), name)})

    threads = [threading.Thread(target=flip, args=(n,)) for n in fields]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for source in (service.current, load_settings(path)):
        assert all(getattr(source, n) is not getattr(Settings(), n) for n in fields)


def test_a_change_in_memory_never_waits_for_a_write_under_way(path: Path) -> None:
    """The GUI thread's change (``save=False``) must not wait for another thread's write
    and its fsync; and the write that was under way does not undo that change."""
    service = SettingsService.load(path)
    writing = threading.Event()
    release = threading.Event()
    real_write = service.save

    def slow_update() -> None:
        with service._writing:  # a write under way (its fsync on a slow disk)
            writing.set()
            release.wait(10)
        service.update(concurrency=3)

    worker = threading.Thread(target=slow_update)
    worker.start()
    assert writing.wait(10)
    done = threading.Event()
    quick = threading.Thread(target=lambda: (service.update(save=False,
                                                            confirm_paid_retry=False),
                                             done.set()))
    quick.start()
    assert done.wait(5), "an in-memory change waited for the write"
    release.set()
    worker.join(10)
    quick.join(10)
    assert service.current.confirm_paid_retry is False and service.current.concurrency == 3
    assert real_write()  # its maker saves it: the file then holds both
    assert load_settings(path) == service.current
