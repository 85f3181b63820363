"""Image checks (Pillow): what a file really is, whether it is whole, whether it is sane.

* ``probe_bytes`` / ``probe_file`` identify an image and prove it whole (every PNG chunk's
  CRC, a reduced-scale JPEG decode that still reads all its data, the WebP RIFF length;
  a full decode for the rest), so a truncated download or a damaged file is caught before
  it enters the library; a picture larger than a pixel cap (a decompression bomb, or
  simply absurd) is refused before it is decoded. Failures are ``ImageCheckError`` (a
  ``ValueError``) with a plain message.
* ``prepare_reference`` turns what the user gave as a reference image (an http(s) URL or a
  local file) into what goes on the wire, downscaling big local pictures. Failures are
  ``InputError`` naming the file.

Everything here is CPU-bound and blocking: call it from a worker thread, not the event loop.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

from nbdesk.api.base import InputError, Reference

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image

# Pillow is imported at first use (it is not needed to open the window).

#: Pixel cap for what providers send: the models' largest output is 4K (4096×4096, 16.8
#: megapixels; 21:9 at 4K is ~17), with headroom. A bigger "result" is refused before any
#: of it is decoded.
MAX_PIXELS = 25_000_000
#: Pillow's own decompression-bomb check (a safety net above our caps, see _open_formats).
_PILLOW_CAP = 120_000_000
#: Pixel cap for reference images.
MAX_REFERENCE_PIXELS = 50_000_000
MAX_REFERENCE_SIDE = 2048
MAX_REFERENCE_BYTES = 30 * 1024 * 1024
JPEG_QUALITY = 90


#: Pillow format name -> (our format name, file extension, MIME type). Only these formats
#: are even tried: Pillow knows others (EPS would run Ghostscript) we have no use for.
_FORMATS: dict[str, tuple[str, str, str]] = {
    "JPEG": ("jpeg", "jpg", "image/jpeg"),
    "MPO": ("jpeg", "jpg", "image/jpeg"),  # phone cameras' multi-picture JPEG
    "PNG": ("png", "png", "image/png"),
    "WEBP": ("webp", "webp", "image/webp"),
    "GIF": ("gif", "gif", "image/gif"),
    "BMP": ("bmp", "bmp", "image/bmp"),
    "TIFF": ("tiff", "tif", "image/tiff"),
}
_SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"
#: Formats a reference may be sent in unchanged; the only ones a provider's result may be
#: in (the models make nothing else), checked by their magic bytes before any decoding.
_WIRE_FORMATS = RESULT_FORMATS = frozenset({"jpeg", "png", "webp"})
#: Formats a reference may be in (the others are re-encoded before they are sent).
REFERENCE_FORMATS = frozenset(name for name, _, _ in _FORMATS.values())
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


class ImageCheckError(ValueError):
    """The data is not a usable image. ``str()`` is a plain, user-facing reason."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "jpeg", "png", "webp", ...
    ext: str  # "jpg", "png", "webp", ...
    mime: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:g}"


def _too_large(width: int, height: int, max_pixels: int) -> ImageCheckError:
    return ImageCheckError(
        f"the image is too large: {width}×{height} pixels "
        f"(limit {_megapixels(max_pixels)} megapixels)"
    )


def _bomb(error: Exception, max_pixels: int) -> ImageCheckError:
    # Pillow's own cap fired before we saw the size; its message carries the pixel count.
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{_megapixels(int(found.group(1)))} megapixels" if found else "too many pixels"
    return ImageCheckError(
        f"the image is too large: {size} (limit {_megapixels(max_pixels)} megapixels)"
    )


def _sniff(head: bytes) -> str | None:
    """The format the first bytes of a file announce (its magic bytes), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def _only(formats: frozenset[str]) -> str:
    names = sorted(("WebP" if f == "webp" else f.upper()) for f in formats)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


@functools.cache
def _open_formats() -> tuple[str, ...]:
    from PIL import Image

    # Pillow warns (and, at twice the value, raises) from Image.open on pictures bigger
    # than Image.MAX_IMAGE_PIXELS (~89 megapixels by default). We apply our own, explicit
    # caps (lower); Pillow's process-wide one is lifted to _PILLOW_CAP so that ours decide,
    # with a message that gives the picture's size, up to there. Anything above is still
    # refused (by Pillow). Every open here goes through this function first.
    if Image.MAX_IMAGE_PIXELS is not None and _PILLOW_CAP > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = _PILLOW_CAP
    Image.init()  # registers every plugin (MPO, WebP, TIFF are not among Pillow's first few)
    return tuple(f for f in _FORMATS if f in Image.OPEN)


def _open(data: bytes | BinaryIO, max_pixels: int,
          formats: frozenset[str] = REFERENCE_FORMATS) -> Image.Image:
    """Identify an image (header only); the size is checked against ``max_pixels``. Its
    magic bytes must announce one of ``formats``, and only that format's reader (Pillow's)
    sees it."""
    from PIL import Image, UnidentifiedImageError

    fp = io.BytesIO(data) if isinstance(data, bytes) else data
    start = fp.tell()
    kind = _sniff(fp.read(16))
    fp.seek(start)
    if kind is None:
        raise ImageCheckError(f"not an image (or not a supported format: {_SUPPORTED})")
    if kind not in formats:
        shown = "WebP" if kind == "webp" else kind.upper()
        raise ImageCheckError(f"a {shown} image, where only {_only(formats)} is accepted")
    readers = tuple(f for f in _open_formats() if _FORMATS[f][0] == kind)
    try:
        im = Image.open(fp, formats=readers)
    except UnidentifiedImageError:
        raise ImageCheckError(f"not an image (or not a supported format: {_SUPPORTED})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # The warning arrives as an exception only where warnings are errors (tests).
        raise _bomb(e, max_pixels) from None
    except Exception:
        # Pillow's plugins raise many kinds of errors on a header they half-recognize.
        raise ImageCheckError("the image is truncated or damaged") from None
    width, height = im.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        im.close()
        if width <= 0 or height <= 0:
            raise ImageCheckError("the image is truncated or damaged")
        raise _too_large(width, height, max_pixels)
    return im


def _info(im: Image.Image) -> ImageInfo:
    fmt, ext, mime = _FORMATS[im.format or ""]
    return ImageInfo(format=fmt, ext=ext, mime=mime, width=im.width, height=im.height)


#: IEND's CRC: Pillow's verify() checks every chunk's CRC but stops before this one.
_IEND_CRC = b"\xaeB`\x82"
#: WebP pictures up to this size are decoded to check them; larger ones are checked by
#: their RIFF length (a cut file fails to open) without spending a full decode.
WEBP_DECODE_PIXELS = 4_200_000


def _damaged() -> ImageCheckError:
    return ImageCheckError("the image is truncated or damaged")


def _check(fp: BinaryIO, max_pixels: int, png: PngProof | None = None,
           formats: frozenset[str] = RESULT_FORMATS) -> ImageInfo:
    """Identify the image in ``fp`` and prove it whole, as cheaply as the format allows:

    * PNG: every chunk's CRC up to and including IEND (no pixel is decoded; a cut file
      fails its CRC or misses IEND), unless ``png`` (a ``PngStreamCheck``'s proof of this
      very file, whose size the caller compared) already showed that and agrees with the
      header;
    * JPEG: a 1/8-scale decode (libjpeg still reads every entropy-coded byte, and reports a
      missing end as truncation) instead of a full one;
    * WebP: the RIFF length must equal the file's; small pictures are also decoded;
    * GIF, BMP, TIFF: structure checks, then a full decode.
    """
    from PIL import Image

    with _open(fp, max_pixels, formats) as im:
        info = _info(im)
        try:
            if info.format == "png":
                if png is not None and (png.width, png.height) == (info.width, info.height):
                    return info  # the header above is Pillow's; the rest was proved
                im.verify()  # structure and every CRC; leaves fp just past IEND's header
                if fp.read(4) != _IEND_CRC:
                    raise _damaged()
                return info
            if info.format == "jpeg":
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
                if formats == RESULT_FORMATS and not _ends_with_eoi(fp):
                    # libjpeg makes up a missing end marker (a file cut by a byte or two)
                    # with a mere warning; a provider's file always has its own.
                    raise _damaged()
                return info
            if info.format == "webp":
                fp.seek(0, os.SEEK_END)
                end = fp.tell()
                fp.seek(4)
                riff = int.from_bytes(fp.read(4), "little") + 8
                if riff + (riff & 1) != end and riff != end:
                    raise _damaged()
                if info.width * info.height > WEBP_DECODE_PIXELS:
                    return info
                im.load()
                return info
            im.verify()  # structure and checksums, without decoding
        except ImageCheckError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _bomb(e, max_pixels) from None
        except Exception:
            raise _damaged() from None
    # verify() leaves the image unusable: reopen and decode everything, which is what
    # catches a picture whose data stops early.
    fp.seek(0)
    with _open(fp, max_pixels, formats) as im:
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _bomb(e, max_pixels) from None
        except Exception:
            raise _damaged() from None
    return info


def _ends_with_eoi(fp: BinaryIO) -> bool:
    """The JPEG's last bytes (padding aside) are its end-of-image marker. Only for
    providers' files: a camera's reference may carry a trailer (a motion photo's video)."""
    fp.seek(0, os.SEEK_END)
    fp.seek(max(0, fp.tell() - 64))
    return fp.read().rstrip(b"\x00 \t\r\n").endswith(b"\xff\xd9")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MAX_CHUNK = 2**31 - 1  # the PNG spec's limit on a chunk's length


@dataclass(frozen=True)
class PngProof:
    """What ``PngStreamCheck`` saw: a whole PNG of ``size`` bytes, ``width``x``height``."""

    width: int
    height: int
    size: int


@functools.cache
def png_crc32() -> Callable[[bytes | memoryview, int], int]:
    """The CRC-32 the PNG check uses: ISA-L's where its wheel is installed (carry-less
    multiplication: a quarter of zlib's time, ~6 ms instead of ~23 over a 50 MB PNG on
    the bench machine), else zlib's. Both give the same values."""
    try:
        from isal.isal_zlib import crc32
    except ImportError:
        return zlib.crc32
    return crc32


class PngStreamCheck:
    """Proves a PNG whole while its bytes go by (``feed`` the blocks in order, then
    ``result``), so that a download need not be read back to be checked.

    It checks the structure and every chunk's CRC, IHDR first, an IDAT before IEND, IEND
    last (empty) and nothing after it. It decodes no pixel and does not judge chunk
    contents: ``probe_file(path, png=proof)`` still opens the header with Pillow (format,
    size, pixel cap, the chunks before the image data) and only skips the second pass
    over the data. It is stricter than that pass (bytes after IEND, chunk names that are
    not letters), never looser: a stream it does not prove goes through ``probe_file`` as
    before. ``feed`` never raises; ``result`` raises ``ImageCheckError``."""

    __slots__ = ("_crc", "_error", "_head", "_ihdr", "_kind", "_need", "_remaining",
                 "_seen_idat", "_size", "_state")

    # states: what the next bytes are
    _SIGNATURE, _HEADER, _DATA, _CRC, _END = range(5)

    def __init__(self) -> None:
        self._state = self._SIGNATURE
        self._need = len(_PNG_SIGNATURE)  # bytes to collect in _head (all but _DATA)
        self._head = bytearray()
        self._kind = b""  # the current chunk's type
        self._remaining = 0  # data bytes left in the current chunk
        self._crc = 0
        self._ihdr: bytes | None = None
        self._seen_idat = False
        self._size = 0
        self._error: str | None = None

    def feed(self, block: bytes) -> None:
        if self._error is not None:
            return
        crc32 = png_crc32()  # (imported at the first feed: on the writer's thread)
        self._size += len(block)
        view = memoryview(block)
        pos, end = 0, len(view)
        while pos < end:
            if self._state == self._DATA:
                take = min(self._remaining, end - pos)
                part = view[pos:pos + take]
                self._crc = crc32(part, self._crc)
                if self._kind == b"IHDR":
                    self._head += part
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._state = self._CRC
                    self._need = len(self._head) + 4
                continue
            if self._state == self._END:
                self._error = "data after the end of the PNG"
                return
            take = min(self._need - len(self._head), end - pos)
            self._head += view[pos:pos + take]
            pos += take
            if len(self._head) == self._need:
                self._step()
                if self._error is not None:
                    return

    def _step(self) -> None:
        """A signature, chunk header or CRC (after the chunk's data) is complete."""
        head = bytes(self._head)
        self._head.clear()
        if self._state == self._SIGNATURE:
            if head != _PNG_SIGNATURE:
                self._error = "not a PNG"
                return
            self._begin_chunk()
        elif self._state == self._HEADER:
            length = int.from_bytes(head[:4], "big")
            kind = head[4:]
            first = self._ihdr is None
            if (length > _PNG_MAX_CHUNK or not kind.isalpha()  # bytes: ASCII letters
                    or first != (kind == b"IHDR") or (kind == b"IHDR" and length != 13)
                    or (kind == b"IEND" and (length or not self._seen_idat))):
                self._error = f"unexpected chunk {kind!r} (length {length})"
                return
            self._seen_idat = self._seen_idat or kind == b"IDAT"
            self._kind = kind
            self._crc = png_crc32()(kind, 0)
            self._remaining = length
            if length:
                self._state = self._DATA
            else:
                self._state = self._CRC
                self._need = 4
        else:  # _CRC: for IHDR, _head held its 13 data bytes as well
            data, crc = head[:-4], head[-4:]
            if int.from_bytes(crc, "big") != self._crc:
                self._error = f"bad CRC in chunk {self._kind!r}"
                return
            if self._kind == b"IHDR":
                self._ihdr = data
            if self._kind == b"IEND":
                self._state = self._END
                self._need = 0
            else:
                self._begin_chunk()

    def _begin_chunk(self) -> None:
        self._state = self._HEADER
        self._need = 8

    def result(self) -> PngProof:
        """The proof, or ``ImageCheckError`` (as ``probe_file``'s for a damaged file)."""
        if self._error is None and self._state != self._END:
            self._error = "the PNG ends early"
        if self._error is not None or self._ihdr is None:
            raise ImageCheckError("the image is truncated or damaged")
        return PngProof(width=int.from_bytes(self._ihdr[0:4], "big"),
                        height=int.from_bytes(self._ihdr[4:8], "big"), size=self._size)

    def proof(self) -> PngProof | None:
        """``result``, or None where it would raise (for ``probe_file(..., png=)``)."""
        try:
            return self.result()
        except ImageCheckError:
            return None

    @property
    def reason(self) -> str | None:
        """Why the stream was not proved (for logs and tests); None if it was, or if it
        is not finished."""
        return self._error


def probe_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS,
                formats: frozenset[str] = RESULT_FORMATS) -> ImageInfo:
    """Identify and verify an image; ``ImageCheckError`` if it is not a whole picture in
    one of ``formats`` of at most ``max_pixels`` pixels (see ``_check`` for what "whole"
    costs). The defaults are what a provider's result may be; references pass theirs."""
    if not data:
        raise ImageCheckError("the file is empty")
    return _check(io.BytesIO(data), max_pixels, formats=formats)


def identify_result(data: bytes) -> ImageInfo:
    """What a provider's inline image is, from its header alone (magic bytes, then the
    format's header for its size; nothing decoded): ``ImageCheckError`` unless a JPEG,
    PNG or WebP of at most MAX_PIXELS. ``probe_*`` still proves it whole when it is kept."""
    if not data:
        raise ImageCheckError("the file is empty")
    with _open(data, MAX_PIXELS, RESULT_FORMATS) as im:
        return _info(im)


def probe_file(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS,
               png: PngProof | None = None,
               formats: frozenset[str] = RESULT_FORMATS) -> ImageInfo:
    """``probe_bytes`` of a file, read from disk as the check needs it (not into memory
    first). ``OSError`` if the file cannot be read.

    ``png``: what a ``PngStreamCheck`` proved of the bytes written to this file. If it
    matches (same size, a PNG of the same dimensions) the second pass over the chunks is
    skipped; Pillow still reads the header. Anything else is checked in full."""
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        if size == 0:
            raise ImageCheckError("the file is empty")
        return _check(fp, max_pixels, png if png is not None and png.size == size else None,
                      formats)


# --------------------------------------------------------------------------- metadata

#: JPEG markers kept by strip_metadata besides the image's own: APP0 (JFIF), APP14 (Adobe:
#: how the colours are stored), and APP2 only when it is an ICC profile.
_APP0, _APP2, _APP14 = 0xE0, 0xE2, 0xEE
_PNG_DROPPED = frozenset({b"tEXt", b"zTXt", b"iTXt", b"eXIf"})
_WEBP_DROPPED = frozenset({b"EXIF", b"XMP "})
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def strip_metadata(data: bytes, mime: str) -> bytes:
    """``data`` without its metadata (EXIF with any GPS position, XMP, IPTC, comments,
    text chunks), byte for byte otherwise: no pixel is decoded or re-encoded.

    * JPEG: every APPn segment but APP0 (JFIF), APP2 ICC profiles and APP14 (Adobe), and
      every COM, are left out, and whatever follows the image's end (a second picture of a
      camera's multi-picture file, makers' trailers);
    * PNG: tEXt, zTXt, iTXt and eXIf chunks are left out (iCCP, gAMA... stay);
    * WebP: EXIF and "XMP " chunks are left out, the RIFF size and the VP8X flags fixed;
    * other types: returned as they are (they are re-encoded before they are sent).

    An image that has none comes back unchanged (the same bytes). An EXIF orientation
    other than "upright" is kept, alone, in a minimal EXIF: how the picture is to be shown
    is not private. ``ImageCheckError`` if the structure cannot be followed."""
    try:
        if mime == "image/jpeg":
            return _strip_jpeg(data)
        if mime == "image/png":
            return _strip_png(data)
        if mime == "image/webp":
            return _strip_webp(data)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, ImageCheckError):
            raise
        raise _damaged() from None
    return data


def _orientation(data: bytes) -> int | None:
    """The EXIF orientation (2..8) when the picture is not stored upright, else None."""
    try:
        with _open(data, MAX_REFERENCE_PIXELS) as im:
            value = im.getexif().get(0x0112)
    except Exception:
        return None
    return value if isinstance(value, int) and 2 <= value <= 8 else None


def _orientation_exif(value: int) -> bytes:
    """A TIFF-structured EXIF block holding only the orientation (little-endian)."""
    entry = (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little")  # SHORT
    entry += (1).to_bytes(4, "little") + value.to_bytes(2, "little") + b"\x00\x00"
    return b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little") + entry \
        + bytes(4)


def _strip_jpeg(data: bytes) -> bytes:
    if data[:2] != b"\xff\xd8":
        raise _damaged()
    out = [data[:2]]
    pos, end = 2, len(data)
    dropped = False
    while True:
        if data[pos] != 0xFF:
            raise _damaged()
        while data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos]
        start = pos - 1
        pos += 1
        if marker == 0xD9:  # EOI: the end of the picture
            out.append(b"\xff\xd9")
            dropped = dropped or pos < end
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            out.append(data[start:pos])
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > end:
            raise _damaged()
        seg_end = pos + length
        body = data[pos + 2:seg_end]
        keep = True
        if 0xE0 <= marker <= 0xEF:
            keep = marker in (_APP0, _APP14) or (
                marker == _APP2 and body.startswith(b"ICC_PROFILE\x00"))
        elif marker == 0xFE:  # COM
            keep = False
        if keep:
            out.append(data[start:seg_end])
        else:
            dropped = True
        pos = seg_end
        if marker == 0xDA:  # SOS: entropy-coded data up to the next real marker
            scan = pos
            while True:
                scan = data.index(b"\xff", scan)
                following = data[scan + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    scan += 1 if following == 0xFF else 2
                    continue
                break
            out.append(data[pos:scan])
            pos = scan
    if not dropped:
        return data
    orientation = _orientation(data)
    if orientation is not None:
        exif = b"Exif\x00\x00" + _orientation_exif(orientation)
        segment = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
        out.insert(2 if out[1][:2] == b"\xff\xe0" else 1, segment)  # JFIF's APP0 first
    return b"".join(out)


def _strip_png(data: bytes) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise _damaged()
    out = [data[:8]]
    pos, end = 8, len(data)
    dropped = False
    while pos < end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        chunk_end = pos + 12 + length
        if len(kind) != 4 or chunk_end > end:
            raise _damaged()
        if kind in _PNG_DROPPED:
            dropped = True
        else:
            out.append(data[pos:chunk_end])
        pos = chunk_end
        if kind == b"IEND":
            dropped = dropped or pos < end
            break
    if not dropped:
        return data
    orientation = _orientation(data)
    if orientation is not None:
        exif = _orientation_exif(orientation)
        crc = png_crc32()(b"eXIf" + exif, 0) & 0xFFFFFFFF
        chunk = len(exif).to_bytes(4, "big") + b"eXIf" + exif + crc.to_bytes(4, "big")
        out.insert(2, chunk)  # after IHDR, before the image data
    return b"".join(out)


def _strip_webp(data: bytes) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise _damaged()
    end = min(len(data), int.from_bytes(data[4:8], "little") + 8)
    chunks: list[bytearray] = []
    pos = 12
    dropped = False
    while pos + 8 <= end:
        kind = data[pos:pos + 4]
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        chunk_end = pos + 8 + size + (size & 1)
        if chunk_end > end + (size & 1):
            raise _damaged()
        if kind in _WEBP_DROPPED:
            dropped = True
        else:
            chunks.append(bytearray(data[pos:chunk_end]))
        pos = chunk_end
    if not dropped:
        return data
    orientation = _orientation(data)
    if chunks and chunks[0][:4] == b"VP8X":
        flags = chunks[0][8] & ~(_VP8X_EXIF | _VP8X_XMP)
        if orientation is not None:
            exif = _orientation_exif(orientation)
            chunks.append(bytearray(b"EXIF" + len(exif).to_bytes(4, "little") + exif))
            flags |= _VP8X_EXIF
        chunks[0][8] = flags
    body = b"WEBP" + b"".join(bytes(c) for c in chunks)
    return b"RIFF" + len(body).to_bytes(4, "little") + body


# --------------------------------------------------------------------------- references


def _refuse(name: str, reason: str) -> InputError:
    return InputError(f"reference image {name}: {reason}")


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _read_local(path: Path, name: str, max_bytes: int) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _refuse(name, "no such file") from None
    except OSError as e:
        raise _refuse(name, f"cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _refuse(name, "is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(name, "is not a regular file")
    if st.st_size == 0:
        raise _refuse(name, "the file is empty")
    if st.st_size > max_bytes:
        raise _refuse(
            name, f"the file is too big: {_megabytes(st.st_size)} (limit {_megabytes(max_bytes)})"
        )
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise _refuse(name, f"cannot read it ({e.strerror or e})") from None
    if not data:
        raise _refuse(name, "the file is empty")
    if len(data) > max_bytes:  # it grew since stat()
        raise _refuse(name, f"the file is too big (limit {_megabytes(max_bytes)})")
    return data


def _needs_rotation(im: Image.Image) -> bool:
    try:
        orientation = im.getexif().get(0x0112)  # EXIF Orientation
    except Exception:
        return False
    return orientation not in (None, 1)


def _encode_for_wire(data: bytes, max_side: int, max_pixels: int) -> tuple[bytes, str]:
    """Re-encode: EXIF orientation applied, long side <= max_side; PNG if the picture has
    transparency, else JPEG."""
    from PIL import Image, ImageOps

    with _open(data, max_pixels) as src:
        if src.format in ("JPEG", "MPO"):
            # Let the JPEG decoder scale down by 1/2..1/8 while decoding: much faster.
            src.draft("RGB", (max_side, max_side))
        im = ImageOps.exif_transpose(src)
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if im.has_transparency_data:
            if im.mode not in ("RGBA", "LA"):
                im = im.convert("RGBA")
            im.save(out, format="PNG")
            return out.getvalue(), "image/png"
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        im.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue(), "image/jpeg"


def prepare_reference(
    source: str,
    *,
    max_side: int = MAX_REFERENCE_SIDE,
    max_bytes: int = MAX_REFERENCE_BYTES,
    max_pixels: int = MAX_REFERENCE_PIXELS,
    keep_metadata: bool = False,
) -> tuple[Reference, bytes | None, ImageInfo | None]:
    """What to send for a reference image the user named.

    * an http(s) URL passes through unchanged: ``(Reference(url), None, None)``;
    * any other URL scheme (file:, data:, javascript:, ...) is refused;
    * a local file is checked (exists, regular, readable, not empty, at most ``max_bytes``,
      a whole image of at most ``max_pixels``) and becomes a ``data:`` URI: the original
      bytes when it is a JPEG/PNG/WebP already within ``max_side`` and upright, else a
      re-encoded copy (EXIF orientation applied, long side scaled to ``max_side``; PNG if
      it has transparency, else JPEG). Returns the reference, the ORIGINAL file's bytes and
      the original's ``ImageInfo`` (the library keeps the original).

    Unless ``keep_metadata``, a JPEG, PNG or WebP file's metadata (EXIF with its GPS
    position, XMP, comments, text) is taken out first, losslessly (``strip_metadata``):
    neither the provider nor the library copy gets it. Its orientation is kept, and applied
    before sending.

    Every refusal is an ``InputError`` whose message names the file or URL.
    """
    text = source.strip()
    if not text:
        raise InputError("reference image: no file or URL given")
    scheme = _SCHEME.match(text)
    # A one-letter "scheme" is a Windows drive (C:\pictures\cat.png).
    if scheme is not None and len(scheme.group(1)) > 1:
        name = scheme.group(1).lower()
        if name in ("http", "https"):
            return Reference(_check_url(text)), None, None
        raise InputError(
            f"reference image {text[:80]!r}: only http(s) URLs or local image files "
            "can be references"
        )

    path = Path(source).expanduser()
    shown = str(path)
    data = _read_local(path, shown, max_bytes)
    try:
        info = probe_bytes(data, max_pixels=max_pixels, formats=REFERENCE_FORMATS)
    except ImageCheckError as e:
        raise _refuse(shown, str(e)) from None

    try:
        if not keep_metadata:
            data = strip_metadata(data, info.mime)
        with _open(data, max_pixels) as im:
            upright = not _needs_rotation(im)
        if info.format in _WIRE_FORMATS and max(info.width, info.height) <= max_side and upright:
            wire, mime = data, info.mime
        else:
            wire, mime = _encode_for_wire(data, max_side, max_pixels)
    except ImageCheckError as e:
        raise _refuse(shown, str(e)) from None
    except (OSError, ValueError) as e:
        raise _refuse(shown, f"cannot convert the image ({e})") from None
    uri = f"data:{mime};base64,{base64.b64encode(wire).decode('ascii')}"
    return Reference(uri), data, info


def _check_url(url: str) -> str:
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InputError(f"reference image {url[:80]!r}: the URL contains spaces")
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    if not host:
        raise InputError(f"reference image {url[:80]!r}: the URL has no host name")
    return url
