"""Text a user reads about where images come from names every provider nbdesk supports
(it once named only Apiframe and APIFree after Gemini was added)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import nbdesk.sim
from nbdesk.api.capabilities import PROVIDERS

ROOT = Path(__file__).resolve().parent.parent


def _texts() -> dict[str, str]:
    from nbdesk.ui.main_window import WELCOME

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    metainfo = ROOT / "packaging" / "linux" / "io.github.nbdesk.nbdesk.metainfo.xml"
    return {
        "pyproject description": pyproject["project"]["description"],
        "nbdesk.sim docstring": nbdesk.sim.__doc__ or "",
        "welcome text": WELCOME,
        "Linux metainfo": metainfo.read_text("utf-8"),
    }


@pytest.mark.parametrize("where", sorted(_texts()))
def test_every_provider_is_named(where: str) -> None:
    text = " ".join(_texts()[where].split())  # (line breaks inside a sentence)
    missing = [caps.label for caps in PROVIDERS.values() if caps.label not in text]
    assert not missing, f"{where} leaves out {', '.join(missing)}"
