"""The fallback home of a paid synchronous answer (nbdesk.core.answers): kept whole, and
never in a folder another user could have prepared."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from nbdesk.core import answers


@pytest.fixture(autouse=True)
def private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_an_answer_is_kept_whole_and_restored(tmp_path: Path) -> None:
    data = bytes(range(256)) * 3000  # several pieces
    answers.spill("job1", 0, data)
    assert answers.kept("job1", 0)
    assert answers.root().stat().st_mode & 0o777 == 0o700
    dest = tmp_path / "restored.png"
    assert answers.restore("job1", 0, dest) and dest.read_bytes() == data


def test_a_folder_open_to_others_is_not_used(tmp_path: Path) -> None:
    answers.root().mkdir(mode=0o755)
    answers.root().chmod(0o755)  # (made before us, by someone else's umask)
    with pytest.raises(PermissionError, match="not a folder of this user's alone"):
        answers.spill("job1", 0, b"paid image")
    assert not answers.kept("job1", 0) and list(answers.root().iterdir()) == []


def test_a_link_by_that_name_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    answers.root().symlink_to(elsewhere)
    with pytest.raises(PermissionError):
        answers.spill("job1", 0, b"paid image")
    assert list(elsewhere.iterdir()) == []
