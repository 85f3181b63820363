from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from nbdesk.core import settings as settings_mod
from nbdesk.core.settings import (
    SETTINGS_VERSION,
    Settings,
    load_settings,
    save_settings,
    validate_base_url,
)

WARN = logging.WARNING


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= WARN]


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = Settings()
    assert s.default_provider == "demo"
    assert s.default_models == {}
    assert s.base_urls == {}
    assert s.concurrency == 4
    assert s.poll_interval is None
    assert s.job_timeout == 900.0
    assert s.demo_when_no_key is True
    assert s.library_dir is None
    assert s.library_path is None
    assert s.notify_on_finish is True


def test_missing_file_gives_defaults_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_settings(tmp_path / "nope.json") == Settings()
    assert warnings_of(caplog) == []


# --------------------------------------------------------------------------- round trip


def full_settings(tmp_path: Path) -> Settings:
    return Settings(
        default_provider="apifree",
        default_models={"apiframe": "nano-banana-pro", "apifree": "google/nano-banana-pro"},
        base_urls={"apiframe": "https://proxy.example.com/af/", "apifree": "http://127.0.0.1:8765"},
        concurrency=12,
        poll_interval=1.5,
        job_timeout=600,
        demo_when_no_key=False,
        library_dir=str(tmp_path / "lib"),
        notify_on_finish=False,
    )


def test_round_trip_every_field(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cfg" / "settings.json"
    s = full_settings(tmp_path)
    assert save_settings(path, s) is True
    loaded = load_settings(path)
    assert loaded == s
    assert loaded.base_urls["apiframe"] == "https://proxy.example.com/af"  # no trailing /
    assert loaded.job_timeout == 600.0 and isinstance(loaded.job_timeout, float)
    assert loaded.library_path == tmp_path / "lib"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == SETTINGS_VERSION
    assert set(data) == {"version", *settings_mod.FIELD_NAMES}
    assert warnings_of(caplog) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    save_settings(path, Settings())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    save_settings(path, Settings(concurrency=2))
    save_settings(path, Settings(concurrency=3))
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]
    assert load_settings(path).concurrency == 3


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.json"
    save_settings(path, Settings(concurrency=2))

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        save_settings(path, Settings(concurrency=9))
    monkeypatch.undo()
    assert load_settings(path).concurrency == 2
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


# --------------------------------------------------------------------------- versions


def test_v0_file_without_version_is_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "settings.json", {"concurrency": 8, "notify_on_finish": False})
    s = load_settings(path)
    assert s.concurrency == 8
    assert s.notify_on_finish is False
    assert warnings_of(caplog) == []
    save_settings(path, s)
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 1


def test_upgrade_runs_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def step(data: dict[str, Any]) -> dict[str, Any]:
        calls.append(0)
        data["concurrency"] = data.pop("threads")
        return data

    monkeypatch.setitem(settings_mod._UPGRADES, 0, step)
    assert settings_mod.upgrade({"threads": 5}, 0) == {"concurrency": 5}
    assert calls == [0]
    assert settings_mod.upgrade({"concurrency": 5}, SETTINGS_VERSION) == {"concurrency": 5}
    assert calls == [0]


def test_failing_upgrade_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("boom")

    monkeypatch.setitem(settings_mod._UPGRADES, 0, broken)
    path = write(tmp_path / "settings.json", {"concurrency": 8})
    assert load_settings(path) == Settings()
    assert any("cannot upgrade" in m for m in warnings_of(caplog))


def test_newer_version_is_read_but_not_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = {"version": SETTINGS_VERSION + 1, "concurrency": 7, "future_thing": [1, 2]}
    path = write(tmp_path / "settings.json", original)
    s = load_settings(path)
    assert s.concurrency == 7
    assert any("newer nbdesk" in m for m in warnings_of(caplog))

    caplog.clear()
    assert save_settings(path, s.replace(concurrency=9)) is False
    assert json.loads(path.read_text(encoding="utf-8")) == original
    assert any("not overwriting" in m for m in warnings_of(caplog))

    # The user saved explicitly: now it is replaced.
    assert save_settings(path, s.replace(concurrency=9), force=True) is True
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == SETTINGS_VERSION
    assert data["concurrency"] == 9
    assert "future_thing" not in data


@pytest.mark.parametrize("version", ["2", -1, True, 1.5, None])
def test_invalid_version_field_is_read_as_current(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: object
) -> None:
    path = write(tmp_path / "settings.json", {"version": version, "concurrency": 3})
    assert load_settings(path).concurrency == 3
    assert any("not a valid version" in m for m in warnings_of(caplog))


# --------------------------------------------------------------------------- bad content


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '"text"', "null", "\xff\xfe not utf-8"])
def test_corrupt_file_gives_defaults_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(content.encode("latin-1"))
    assert load_settings(path) == Settings()
    assert len(warnings_of(caplog)) == 1


def test_unreadable_path_gives_defaults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "settings.json").mkdir()
    assert load_settings(tmp_path / "settings.json") == Settings()
    assert any("cannot read" in m for m in warnings_of(caplog))


def test_unknown_keys_are_dropped_and_not_written_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path / "settings.json",
        {"version": 1, "api_key": "afk_not_for_this_file", "apiframe_key": "x", "concurrency": 5},
    )
    s = load_settings(path)
    assert s.concurrency == 5
    messages = warnings_of(caplog)
    assert any("'api_key'" in m for m in messages)
    assert any("'apiframe_key'" in m for m in messages)
    assert not any("afk_not_for_this_file" in m for m in messages)  # values are not logged
    save_settings(path, s)
    text = path.read_text(encoding="utf-8")
    assert "api_key" not in text
    assert "afk_not_for_this_file" not in text
    assert "apiframe_key" not in text


BAD_VALUES: list[tuple[str, object]] = [
    ("default_provider", "openai"),
    ("default_provider", 3),
    ("default_models", {"apiframe": "dall-e"}),
    ("default_models", {"nosuch": "nano-banana"}),
    ("default_models", ["apiframe"]),
    ("default_models", {"apiframe": 1}),
    ("base_urls", {"apiframe": "http://evil.example.com"}),
    ("base_urls", {"apiframe": "ftp://example.com"}),
    ("base_urls", {"apiframe": "https://user:pw@example.com"}),
    ("base_urls", {"nosuch": "https://example.com"}),
    ("base_urls", "https://example.com"),
    ("concurrency", 0),
    ("concurrency", 65),
    ("concurrency", "4"),
    ("concurrency", True),
    ("concurrency", 2.5),
    ("poll_interval", 0),
    ("poll_interval", -1.0),
    ("poll_interval", "fast"),
    ("job_timeout", 1e9),
    ("job_timeout", "900"),
    ("job_timeout", None),
    ("demo_when_no_key", "yes"),
    ("demo_when_no_key", 1),
    ("library_dir", ""),
    ("library_dir", "relative/dir"),
    ("library_dir", 42),
    ("notify_on_finish", None),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_in_file_falls_back_to_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, value: object
) -> None:
    path = write(
        tmp_path / "settings.json",
        {"version": 1, name: value, "concurrency": 6}
        if name != "concurrency"
        else {"version": 1, name: value, "job_timeout": 60},
    )
    s = load_settings(path)
    assert getattr(s, name) == getattr(Settings(), name)
    # The other, valid setting is kept.
    if name == "concurrency":
        assert s.job_timeout == 60.0
    else:
        assert s.concurrency == 6
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert name in messages[0]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_replace_refuses_bad_values(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name.split("_")[0]):
        Settings().replace(**{name: value})


def test_non_finite_numbers_are_refused(tmp_path: Path) -> None:
    # Python's json reads NaN and Infinity.
    path = tmp_path / "settings.json"
    path.write_text('{"version": 1, "poll_interval": NaN, "job_timeout": Infinity}')
    s = load_settings(path)
    assert s.poll_interval is None
    assert s.job_timeout == 900.0


def test_replace_validates_and_copies() -> None:
    s = Settings()
    t = s.replace(concurrency=64, poll_interval=3, default_provider="apiframe")
    assert (t.concurrency, t.poll_interval, t.default_provider) == (64, 3.0, "apiframe")
    assert s.concurrency == 4  # unchanged
    with pytest.raises(TypeError):
        s.replace(api_key="x")
    models = {"apiframe": "nano-banana"}
    u = s.replace(default_models=models)
    models["apiframe"] = "bogus"
    assert u.default_models == {"apiframe": "nano-banana"}  # not shared with the caller


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Settings(concurrency=100)


def test_demo_has_default_model() -> None:
    assert Settings(default_models={"demo": "nano-banana"}).default_models == {
        "demo": "nano-banana"
    }


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.apiframe.ai", "https://api.apiframe.ai"),
        ("https://proxy.example.com:8443/base/", "https://proxy.example.com:8443/base"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://localhost:1234/", "http://localhost:1234"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("HTTP://LOCALHOST:1", "HTTP://LOCALHOST:1"),
    ],
)
def test_base_url_accepted(url: str, expected: str) -> None:
    assert validate_base_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "api.apiframe.ai",
        "http://api.apiframe.ai",
        "http://127.0.0.2",
        "http://localhost.evil.com",
        "https://",
        "https://host:notaport",
        "https://a b.com",
        " https://api.apiframe.ai",
        "https://api.apiframe.ai?x=1",
        "https://api.apiframe.ai#frag",
        "https://key@api.apiframe.ai",
        "file:///etc/passwd",
        "javascript:alert(1)",
    ],
)
def test_base_url_refused(url: str) -> None:
    with pytest.raises(ValueError):
        validate_base_url(url)
