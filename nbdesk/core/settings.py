"""Declared settings: types, defaults, validation, a versioned JSON file.

Rules:

* Every setting is a field of the frozen ``Settings`` dataclass with a type and a default.
  Constructing or ``replace()``-ing a ``Settings`` validates every value (``ValueError``).
* Loading never crashes on the file's content: a missing, unreadable or corrupt file gives
  the defaults; an unknown key is dropped and a wrong-typed or out-of-range value is
  replaced by its default, each with a logged warning.
* The file carries a schema ``version``. Older files are upgraded step by step by the
  functions in ``_UPGRADES``; a file written by a newer nbdesk is read as far as we
  understand it and is only overwritten by an explicit save (``force=True``).
* No API key is ever stored here; keys live in the OS keychain (``core.secrets``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdesk.api import capabilities
from nbdesk.api.urls import check_base_url
from nbdesk.core.paths import fsync_dir, private_mkdir

log = logging.getLogger(__name__)

#: The schema version this code writes.
SETTINGS_VERSION = 1

CONCURRENCY_RANGE = (1, 64)
POLL_INTERVAL_RANGE = (0.2, 60.0)  # seconds
JOB_TIMEOUT_RANGE = (10.0, 86_400.0)  # seconds: 10 s .. 1 day


# --------------------------------------------------------------------------- validators
# Each takes a value as found in JSON (or given by the caller) and returns the normalized
# value or raises ValueError with a message that names the setting.


def _provider_ids() -> tuple[str, ...]:
    return (*capabilities.PROVIDERS, capabilities.DEMO)


def _check_provider(value: object) -> str:
    if not isinstance(value, str) or value not in _provider_ids():
        raise ValueError(
            f"default_provider must be one of {', '.join(_provider_ids())}, not {value!r}"
        )
    return value


def _check_str_dict(name: str, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be an object mapping provider to text")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"{name} must map provider names to text, got {k!r}: {v!r}")
        out[k] = v
    return out


def _check_default_models(value: object) -> dict[str, str]:
    models = _check_str_dict("default_models", value)
    for provider_id, model in models.items():
        caps_id = capabilities.DEMO_PROVIDER if provider_id == capabilities.DEMO else provider_id
        caps = capabilities.PROVIDERS.get(caps_id)
        if caps is None:
            raise ValueError(f"default_models: unknown provider {provider_id!r}")
        known = [m.model for m in caps.models]
        if model not in known:
            raise ValueError(
                f"default_models: {provider_id} has no model {model!r} (known: {', '.join(known)})"
            )
    return models


def validate_base_url(url: str) -> str:
    """Check a provider base-URL override; return it without a trailing slash. The rule
    is ``nbdesk.api.urls.check_base_url``'s (the one the connector applies too)."""
    return check_base_url(url)


def _check_base_urls(value: object) -> dict[str, str]:
    urls = _check_str_dict("base_urls", value)
    out: dict[str, str] = {}
    for provider_id, url in urls.items():
        if provider_id not in capabilities.PROVIDERS:
            raise ValueError(f"base_urls: unknown provider {provider_id!r}")
        try:
            out[provider_id] = validate_base_url(url)
        except ValueError as e:
            raise ValueError(f"base_urls[{provider_id}]: {e}") from None
    return out


def _check_int(name: str, lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, not {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be between {lo} and {hi}, not {value}")
        return value

    return check


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return number


def _check_float(name: str, lo: float, hi: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        number = _as_float(name, value)
        if not lo <= number <= hi:
            raise ValueError(f"{name} must be between {lo:g} and {hi:g} seconds, not {number:g}")
        return number

    return check


def _check_poll_interval(value: object) -> float | None:
    if value is None:
        return None
    return _check_float("poll_interval", *POLL_INTERVAL_RANGE)(value)


def _check_bool(name: str) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, not {value!r}")
        return value

    return check


def _check_library_dir(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"library_dir must be a folder path, not {value!r}")
    if not Path(value).expanduser().is_absolute():
        raise ValueError(f"library_dir must be an absolute path, not {value!r}")
    return value


_VALIDATORS: dict[str, Callable[[object], Any]] = {
    "default_provider": _check_provider,
    "default_models": _check_default_models,
    "base_urls": _check_base_urls,
    "concurrency": _check_int("concurrency", *CONCURRENCY_RANGE),
    "poll_interval": _check_poll_interval,
    "job_timeout": _check_float("job_timeout", *JOB_TIMEOUT_RANGE),
    "demo_when_no_key": _check_bool("demo_when_no_key"),
    "library_dir": _check_library_dir,
    "notify_on_finish": _check_bool("notify_on_finish"),
    "confirm_paid_retry": _check_bool("confirm_paid_retry"),
    "keep_reference_metadata": _check_bool("keep_reference_metadata"),
}


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class Settings:
    #: A provider id of ``capabilities.PROVIDERS`` or ``"demo"``.
    default_provider: str = capabilities.DEMO
    #: provider id -> model id
    default_models: dict[str, str] = field(default_factory=dict)
    #: provider id -> base URL override (https://, or http:// to a loopback host)
    base_urls: dict[str, str] = field(default_factory=dict)
    #: jobs running at once
    concurrency: int = 4
    #: seconds between polls; None = the provider's documented interval
    poll_interval: float | None = None
    #: seconds before a job that has not finished is given up
    job_timeout: float = 900.0
    #: without an API key, offer the built-in simulator instead of failing
    demo_when_no_key: bool = True
    #: where the library lives; None = the platform's data folder
    library_dir: str | None = None
    notify_on_finish: bool = True
    #: the window asks before a Retry that is a new paid submission ("don't ask again")
    confirm_paid_retry: bool = True
    #: send references with their EXIF/XMP (GPS location, camera) instead of without
    keep_reference_metadata: bool = False

    def __post_init__(self) -> None:
        for name, check in _VALIDATORS.items():
            # Normalizes too (int -> float, copies of the dicts so nobody shares them).
            object.__setattr__(self, name, check(getattr(self, name)))

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied; ``ValueError`` if a value is invalid,
        ``TypeError`` for an unknown setting name."""
        return dataclasses.replace(self, **changes)

    @property
    def library_path(self) -> Path | None:
        return None if self.library_dir is None else Path(self.library_dir).expanduser()

    def to_json(self) -> dict[str, Any]:
        """The file's content: the version and every field."""
        return {"version": SETTINGS_VERSION, **dataclasses.asdict(self)}


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))
assert set(FIELD_NAMES) == set(_VALIDATORS), "every setting needs a validator"


# --------------------------------------------------------------------------- upgrades
# _UPGRADES[n] turns a version-n dict into a version-(n+1) dict. Add one per schema change.


def _upgrade_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    # Version 0 is a file without a "version" field: same keys as version 1.
    return data


_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    0: _upgrade_0_to_1,
}


def upgrade(data: dict[str, Any], version: int) -> dict[str, Any]:
    """Bring a file's content of ``version`` up to SETTINGS_VERSION."""
    while version < SETTINGS_VERSION:
        data = _UPGRADES[version](dict(data))
        version += 1
        log.info("settings upgraded to version %d", version)
    return data


def _file_version(data: Mapping[str, Any], path: Path) -> int:
    if "version" not in data:
        return 0
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        log.warning(
            "settings file %s: version %r is not a valid version; reading it as version %d",
            path,
            version,
            SETTINGS_VERSION,
        )
        return SETTINGS_VERSION
    return version


def _read_json(path: Path) -> dict[str, Any] | None:
    """The file's top-level object; None when missing; {} (with a warning) when unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("cannot read the settings file %s (%s); using the defaults", path, e)
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        log.warning("the settings file %s is not valid JSON (%s); using the defaults", path, e)
        return {}
    if not isinstance(data, dict):
        log.warning("the settings file %s does not hold a JSON object; using the defaults", path)
        return {}
    return data


def load_settings(path: Path) -> Settings:
    """Read the settings file; never raises for anything in the file."""
    data = _read_json(path)
    if not data:
        return Settings()
    version = _file_version(data, path)
    if version > SETTINGS_VERSION:
        log.warning(
            "the settings file %s was written by a newer nbdesk (version %d, this one knows "
            "%d); reading what this version understands, and leaving the file as it is "
            "unless you save the settings",
            path,
            version,
            SETTINGS_VERSION,
        )
    else:
        try:
            data = upgrade(data, version)
        except Exception:
            log.warning(
                "cannot upgrade the settings file %s from version %d; using the defaults",
                path,
                version,
                exc_info=True,
            )
            return Settings()

    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "version":
            continue
        check = _VALIDATORS.get(key)
        if check is None:
            log.warning("settings file %s: unknown setting %r ignored", path, key)
            continue
        try:
            values[key] = check(value)
        except ValueError as e:
            log.warning("settings file %s: %s; using the default", path, e)
    return Settings(**values)


def save_settings(path: Path, settings: Settings, *, force: bool = False) -> bool:
    """Write the settings atomically (temp file, fsync, rename).

    A file written by a newer nbdesk is left untouched unless ``force`` (the user saved
    the settings explicitly); returns whether the file was written.
    """
    if not force:
        existing = _read_json(path)
        if existing and _file_version(existing, path) > SETTINGS_VERSION:
            log.warning(
                "not overwriting %s: it was written by a newer nbdesk; save the settings "
                "explicitly to replace it",
                path,
            )
            return False
    text = json.dumps(settings.to_json(), indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"))
    return True


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file
    (private to its owner, in a private folder if it makes one)."""
    private_mkdir(path.parent)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)
