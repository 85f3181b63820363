"""The leak scanner: searches files, image metadata and texts for every encoded form of
every API key (raw, URL- and form-encoded, UTF-16, base64 and base64url at the three
byte alignments). Used by test_secrets.py and by the suite-wide scan that runs after
every reliability test (conftest.py)."""

from __future__ import annotations

import base64
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import pytest
from PIL import Image

from nbdesk.core.paths import DB_NAME
from tests.e2e.harness import Result

if TYPE_CHECKING:
    from tests.reliability.conftest import ReliabilityReport


def encoded_forms(key: str) -> dict[str, bytes]:
    """The key as it could appear in a file or a stream."""
    raw = key.encode()
    forms = {
        "raw": raw,
        "url-encoded": quote(key, safe="").encode(),
        "form-encoded": quote_plus(key).encode(),
        "utf-16-le": key.encode("utf-16-le"),
        "utf-16-be": key.encode("utf-16-be"),
    }
    for shift in range(3):  # inside a longer base64 stream the key starts at any of 3 offsets
        for name, encode in (("base64", base64.b64encode),
                             ("base64url", base64.urlsafe_b64encode)):
            # Drop the first and last 4 characters: they mix in the neighbours' bits.
            forms[f"{name}@{shift}"] = encode(bytes(shift) + raw)[4:-4]
    return forms


_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


#: Larger images (the 100-megapixel bad input) are not decoded: the metadata read at
#: opening is scanned, and the raw bytes as for every file.
_DECODE_PIXELS = 16_000_000


def _metadata(path: Path) -> bytes:
    """An image's metadata, decoded (compressed PNG text chunks, EXIF, XMP, comments)."""
    parts: list[bytes] = []

    def add(value: Any) -> None:
        if isinstance(value, bytes):
            parts.append(value)
        elif isinstance(value, str):
            parts.append(value.encode("utf-8", "surrogatepass"))
        elif isinstance(value, dict):
            for k, v in value.items():
                add(k)
                add(v)
        elif isinstance(value, list | tuple):
            for v in value:
                add(v)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height <= _DECODE_PIXELS:
                    im.load()  # PNG text chunks after the image data are read here
                add(im.info)
                add(getattr(im, "text", {}))  # PNG tEXt/zTXt/iTXt, decompressed
                add(dict(im.getexif()))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        pass  # not a readable image (the bad-input catalogue's): its bytes are scanned
    return b"\n".join(parts)


@dataclass
class LeakScan:
    """Searches everything it is given for every encoded form of every key."""

    keys: dict[str, str]  # label -> key (labels, never keys, appear in messages)
    hits: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    texts: int = 0

    def __post_init__(self) -> None:
        self._needles = [(label, form, needle.lower())
                         for label, key in self.keys.items()
                         for form, needle in encoded_forms(key).items()]

    def data(self, where: str, data: bytes) -> None:
        low = data.lower()
        for label, form, needle in self._needles:
            if needle in low:
                self.hits.append(f"{label} ({form}) in {where}")

    def text(self, where: str, text: str) -> None:
        self.texts += 1
        self.data(where, text.encode("utf-8", "surrogatepass"))

    def tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            self.files.append(path)
            self.data(str(path), path.read_bytes())
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                self.data(f"{path} (metadata)", _metadata(path))

    def result(self, result: Result, what: str) -> None:
        self.text(f"stdout of `{what}`", result.stdout)
        self.text(f"stderr of `{what}`", result.stderr)

    def records(self, caplog: pytest.LogCaptureFixture) -> None:
        for record in caplog.records:
            self.text(f"log record {record.name}", record.getMessage())
            for extra in (record.exc_text, record.stack_info):
                if extra:
                    self.text(f"log record {record.name} (traceback)", extra)
        self.text("captured log text", caplog.text)

    def names(self, root: Path) -> set[str]:
        """What kinds of files were scanned (for the coverage assertions)."""
        kinds: set[str] = set()
        for path in self.files:
            try:
                rel = path.relative_to(root)
            except ValueError:
                continue
            name = rel.name
            if name == DB_NAME:
                kinds.add("database")
            elif name == f"{DB_NAME}-wal":
                kinds.add("wal")
            elif name in ("settings.json", "window.ini"):
                kinds.add(name)
            elif rel.parts[0] == "logs":
                kinds.add("crash report" if name.startswith("crash-") else "log")
            elif rel.parts[0] in ("images", "refs", "thumbnails"):
                kinds.add(rel.parts[0])
        return kinds

    def report_to(self, report: ReliabilityReport, what: str) -> None:
        with report.lock:
            report.leaks += len(self.hits)
            report.leak_scans += 1
            report.notes.append(
                f"leak scan ({what}): {len(self._needles)} needles "
                f"({len(self.keys)} keys x {len(self._needles) // len(self.keys)} forms) over "
                f"{len(self.files)} files and {self.texts} texts: {len(self.hits)} hits")
