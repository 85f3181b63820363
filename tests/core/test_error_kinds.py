"""Job error kinds are one enum (core.jobs.ErrorKind); the provider clients' kinds
(``ApiError.kind``, plain text because api/ imports nothing from core/) each have a member."""

from __future__ import annotations

import importlib
import json
import pkgutil

import nbdesk.api
from nbdesk.api.base import ApiError
from nbdesk.core.jobs import NOT_SENT_KINDS, ErrorKind


def _api_errors() -> set[type[ApiError]]:
    for mod in pkgutil.iter_modules(nbdesk.api.__path__):
        importlib.import_module(f"nbdesk.api.{mod.name}")  # every subclass defined
    found: set[type[ApiError]] = set()
    todo: list[type[ApiError]] = [ApiError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_api_error_kind_is_an_error_kind() -> None:
    errors = _api_errors()
    assert len(errors) >= 9  # ApiError and its eight kinds at least
    missing = sorted(f"{c.__name__}.kind={c.kind!r}" for c in errors
                     if c.kind not in ErrorKind.__members__.values())
    assert not missing, missing


def test_an_error_kind_is_its_stored_text() -> None:
    # The database and the CLI's JSON keep the words they had as bare strings.
    assert ErrorKind.PROVIDER_FAILED == "provider_failed"
    assert ErrorKind("offline") is ErrorKind.OFFLINE
    assert json.dumps({"error_kind": ErrorKind.AUTH}) == '{"error_kind": "auth"}'
    assert "bad_input" in NOT_SENT_KINDS and all(isinstance(k, ErrorKind) for k in NOT_SENT_KINDS)


def test_a_provider_error_kind_not_in_the_table_is_the_plain_error() -> None:
    from nbdesk.core.jobs import ErrorKind

    assert ErrorKind.of("auth") is ErrorKind.AUTH
    assert ErrorKind.of("a-kind-of-a-newer-client") is ErrorKind.ERROR
