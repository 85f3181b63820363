from __future__ import annotations

import base64
import io
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from nbdesk.api.base import InputError, Reference
from nbdesk.api.images import (
    MAX_PIXELS,
    REFERENCE_FORMATS,
    ImageCheckError,
    ImageInfo,
    PngProof,
    PngStreamCheck,
    identify_result,
    png_crc32,
    prepare_reference,
    probe_bytes,
    probe_file,
    strip_metadata,
)

# --------------------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **params)
    return out.getvalue()


def png(width: int = 64, height: int = 48, mode: str = "RGB") -> bytes:
    color: object = (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)
    return encode(Image.new(mode, (width, height), color), "PNG")  # type: ignore[arg-type]


def noisy_jpeg(width: int, height: int, **params: object) -> bytes:
    # Noise so the encoder cannot make the file trivially small.
    im = Image.effect_noise((width, height), 64).convert("RGB")
    return encode(im, "JPEG", quality=85, **params)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bilevel_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG of any size, built without holding it in memory:
    the rows compress to almost nothing (this is how decompression bombs are made)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed pixels
    z = zlib.compressobj(9)
    parts = [z.compress(row) for _ in range(height)]
    idat = b"".join(parts) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def decode_uri(ref: Reference) -> tuple[str, bytes]:
    assert ref.url.startswith("data:")
    header, _, payload = ref.url.partition(",")
    assert header.endswith(";base64")
    return header[len("data:") : -len(";base64")], base64.b64decode(payload, validate=True)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("PNG", ("png", "png", "image/png")),
        ("JPEG", ("jpeg", "jpg", "image/jpeg")),
        ("WEBP", ("webp", "webp", "image/webp")),
        ("GIF", ("gif", "gif", "image/gif")),
        ("BMP", ("bmp", "bmp", "image/bmp")),
    ],
)
def test_probe_identifies_formats(fmt: str, expected: tuple[str, str, str]) -> None:
    data = encode(Image.new("RGB", (30, 20), (1, 2, 3)), fmt)
    info = ImageInfo(*expected, width=30, height=20)
    assert probe_bytes(data, formats=REFERENCE_FORMATS) == info
    if info.format in ("jpeg", "png", "webp"):
        assert probe_bytes(data) == info  # the defaults: what a provider's result may be


def deflate_tiff(width: int = 1200, height: int = 1000) -> bytes:
    return encode(Image.new("RGB", (width, height), (9, 99, 199)), "TIFF",
                  compression="tiff_adobe_deflate")


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_results_are_only_jpeg_png_or_webp(fmt: str, tmp_path: Path) -> None:
    """Refused by the magic bytes, before Pillow reads the file: not stored as a .tif."""
    if fmt == "TIFF":
        data = deflate_tiff()
        assert len(data) < 50_000  # a few KB that would decode to 3.6 MB
    else:
        data = encode(Image.new("RGB", (30, 20), (1, 2, 3)), fmt)
    message = rf"^a {fmt} image, where only JPEG, PNG or WebP is accepted$"
    with pytest.raises(ImageCheckError, match=message):
        probe_bytes(data)
    with pytest.raises(ImageCheckError, match=message):
        probe_file(write(tmp_path, "result.bin", data))
    with pytest.raises(ImageCheckError, match=message):
        identify_result(data)
    # A reference may still be one (it is re-encoded before it is sent).
    assert probe_bytes(data, formats=REFERENCE_FORMATS).format == fmt.lower()


def test_result_pixel_cap_is_4k_with_headroom() -> None:
    assert 4096 * 4096 <= MAX_PIXELS <= 30_000_000
    # A PNG whose header declares 6000x6000 (36 MP): refused from the header, in a few KB.
    with pytest.raises(ImageCheckError, match=r"6000×6000 pixels \(limit 25 megapixels\)"):
        identify_result(bilevel_png(6000, 6000))
    with pytest.raises(ImageCheckError, match="too large"):
        probe_bytes(bilevel_png(20_000, 20_000))
    assert identify_result(bilevel_png(4096, 4096)).pixels == 4096 * 4096


def test_probe_file(tmp_path: Path) -> None:
    path = write(tmp_path, "a.png", png(5, 7))
    assert probe_file(path) == ImageInfo("png", "png", "image/png", 5, 7)
    with pytest.raises(OSError):
        probe_file(tmp_path / "missing.png")


def test_probe_empty() -> None:
    with pytest.raises(ImageCheckError, match=r"^the file is empty$"):
        probe_bytes(b"")


@pytest.mark.parametrize(
    "data",
    [b"hello, world", b"<html><body>502 Bad Gateway</body></html>", b"\x89PNG\r\n", b"%PDF-1.7"],
)
def test_probe_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageCheckError, match=r"^not an image"):
        probe_bytes(data)


def test_probe_unsupported_format_is_not_an_image() -> None:
    data = encode(Image.new("RGB", (8, 8)), "PPM")  # Pillow reads it; we do not take it
    with pytest.raises(ImageCheckError, match="not an image"):
        probe_bytes(data)


def test_probe_truncated_png() -> None:
    data = png(300, 200)
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_bytes(data[: len(data) // 2])


def test_probe_truncated_jpeg() -> None:
    data = noisy_jpeg(400, 300)
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_bytes(data[: len(data) // 2])


def test_probe_png_cut_inside_its_last_chunk() -> None:
    # Pillow's verify() stops before IEND's CRC; a file missing only those bytes is cut too.
    data = png(300, 200)
    for cut in (1, 4, 12):
        with pytest.raises(ImageCheckError, match="truncated or damaged"):
            probe_bytes(data[:-cut])


def test_probe_jpeg_without_its_end_marker() -> None:
    data = noisy_jpeg(400, 300)
    assert data.endswith(b"\xff\xd9")
    for cut in (1, 2, 100):
        with pytest.raises(ImageCheckError, match="truncated or damaged"):
            probe_bytes(data[:-cut])


def test_probe_large_progressive_jpeg_is_checked_whole(tmp_path: Path) -> None:
    data = noisy_jpeg(2400, 1600, progressive=True)
    assert probe_file(write(tmp_path, "p.jpg", data)) == ImageInfo(
        "jpeg", "jpg", "image/jpeg", 2400, 1600)
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_file(write(tmp_path, "cut.jpg", data[: len(data) * 9 // 10]))


@pytest.mark.parametrize("size", [(64, 48), (2400, 1800)])  # decoded / checked by length
def test_probe_truncated_webp(tmp_path: Path, size: tuple[int, int]) -> None:
    im = Image.effect_noise(size, 64).convert("RGB")
    data = encode(im, "WEBP", quality=80)
    assert probe_file(write(tmp_path, "w.webp", data)).width == size[0]
    for cut in (1, len(data) // 2):
        with pytest.raises(ImageCheckError, match="truncated or damaged"):
            probe_file(write(tmp_path, "cut.webp", data[:-cut]))
    grown = bytearray(data)
    grown[4:8] = (len(data) + 92).to_bytes(4, "little")  # claims more than the file holds
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_bytes(bytes(grown))


def test_probe_file_truncated_and_empty(tmp_path: Path) -> None:
    data = png(300, 200)
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_file(write(tmp_path, "half.png", data[: len(data) // 2]))
    with pytest.raises(ImageCheckError, match=r"^the file is empty$"):
        probe_file(write(tmp_path, "empty.png", b""))
    with pytest.raises(ImageCheckError, match="too large"):
        probe_file(write(tmp_path, "bomb.png", bilevel_png(20_000, 20_000)))


def test_probe_png_with_bad_checksum() -> None:
    data = bytearray(png(40, 40))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip a byte inside the compressed data
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_bytes(bytes(data))


def test_probe_too_many_pixels_reports_the_size() -> None:
    data = bilevel_png(10_000, 10_000)  # 100 megapixels in ~12 kB
    assert len(data) < 200_000
    with pytest.raises(
        ImageCheckError,
        match=r"^the image is too large: 10000×10000 pixels \(limit 50 megapixels\)$",
    ):
        probe_bytes(data, max_pixels=50_000_000)


def test_probe_decompression_bomb() -> None:
    data = bilevel_png(20_000, 20_000)  # 400 megapixels
    with pytest.raises(ImageCheckError, match="too large") as info:
        probe_bytes(data)
    assert f"limit {MAX_PIXELS // 1_000_000} megapixels" in str(info.value)


def test_probe_bomb_between_pillow_warning_and_error() -> None:
    # 150 megapixels: above our cap, where Pillow only warns.
    with pytest.raises(ImageCheckError, match="too large"):
        probe_bytes(bilevel_png(15_000, 10_000))


def test_image_check_error_is_a_value_error() -> None:
    assert issubclass(ImageCheckError, ValueError)


# --------------------------------------------------------------------------- references: URLs


@pytest.mark.parametrize(
    "url", ["https://example.com/cat.png", "http://example.com/a?b=c", "HTTPS://EXAMPLE.COM/x"]
)
def test_http_urls_pass_through(url: str) -> None:
    assert prepare_reference(url) == (Reference(url), None, None)


@pytest.mark.parametrize(
    "source",
    [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "ftp://example.com/cat.png",
        "FILE:///tmp/x.png",
    ],
)
def test_other_schemes_are_refused(source: str) -> None:
    with pytest.raises(InputError, match="only http\\(s\\) URLs or local image files"):
        prepare_reference(source)


@pytest.mark.parametrize("url", ["https://", "http:///path", "https://exa mple.com/x.png"])
def test_malformed_http_urls(url: str) -> None:
    with pytest.raises(InputError, match="reference image"):
        prepare_reference(url)


def test_blank_source() -> None:
    with pytest.raises(InputError, match="no file or URL"):
        prepare_reference("  ")


# --------------------------------------------------------------------------- references: refusals


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(InputError, match="no such file") as info:
        prepare_reference(str(path))
    assert str(path) in str(info.value)


def test_drive_letter_is_a_path_not_a_scheme() -> None:
    with pytest.raises(InputError, match="no such file"):
        prepare_reference("C:\\pictures\\nbdesk-test-cat.png")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder") as info:
        prepare_reference(str(tmp_path))
    assert str(tmp_path) in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        prepare_reference(str(fifo))


def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.png", png())
    path.chmod(0o000)
    try:
        try:
            path.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("this user can read a mode-000 file (running as root)")
        with pytest.raises(InputError, match="cannot read it \\(Permission denied\\)") as info:
            prepare_reference(str(path))
        assert str(path) in str(info.value)
    finally:
        path.chmod(0o600)


def test_unreadable_file_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same refusal where mode 000 does not stop us (root): the OS says no on open().
    path = write(tmp_path, "locked.png", png())

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(InputError, match="cannot read it \\(Permission denied\\)") as info:
        prepare_reference(str(path))
    assert str(path) in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.png", b"")
    with pytest.raises(InputError, match="empty") as info:
        prepare_reference(str(path))
    assert str(path) in str(info.value)


def test_not_an_image(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.png", b"these are my notes, not a picture\n")
    with pytest.raises(InputError, match="not an image") as info:
        prepare_reference(str(path))
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path: Path) -> None:
    data = png(500, 400)
    path = write(tmp_path, "cut.png", data[: len(data) - 40])
    with pytest.raises(InputError, match="truncated or damaged") as info:
        prepare_reference(str(path))
    assert str(path) in str(info.value)


def test_file_over_the_byte_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "big.jpg", noisy_jpeg(300, 300))
    with pytest.raises(InputError, match="too big"):
        prepare_reference(str(path), max_bytes=1024)


def test_hundred_megapixel_image(tmp_path: Path) -> None:
    path = write(tmp_path, "huge.png", bilevel_png(10_000, 10_000))
    with pytest.raises(
        InputError, match=r"too large: 10000×10000 pixels \(limit 50 megapixels\)"
    ) as info:
        prepare_reference(str(path))
    assert str(path) in str(info.value)


def test_decompression_bomb(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.png", bilevel_png(20_000, 20_000))
    assert path.stat().st_size < 200_000
    with pytest.raises(InputError, match="too large"):
        prepare_reference(str(path))


# --------------------------------------------------------------------------- references: accepted


def test_small_png_is_sent_byte_identical(tmp_path: Path) -> None:
    data = png(64, 48)
    path = write(tmp_path, "small.png", data)
    ref, original, info = prepare_reference(str(path))
    mime, sent = decode_uri(ref)
    assert mime == "image/png"
    assert sent == data
    assert original == data
    assert info == ImageInfo("png", "png", "image/png", 64, 48)


def test_small_webp_and_jpeg_are_kept(tmp_path: Path) -> None:
    for name, fmt, mime in (("a.webp", "WEBP", "image/webp"), ("a.jpg", "JPEG", "image/jpeg")):
        data = encode(Image.new("RGB", (100, 80), (9, 9, 9)), fmt)
        ref, original, _ = prepare_reference(str(write(tmp_path, name, data)))
        assert decode_uri(ref) == (mime, data)
        assert original == data


def test_large_jpeg_is_downscaled_to_2048(tmp_path: Path) -> None:
    data = noisy_jpeg(3000, 2250)
    path = write(tmp_path, "large.jpg", data)
    ref, original, info = prepare_reference(str(path))
    assert original == data  # the library keeps the original
    assert info == ImageInfo("jpeg", "jpg", "image/jpeg", 3000, 2250)
    mime, sent = decode_uri(ref)
    assert mime == "image/jpeg"
    with Image.open(io.BytesIO(sent)) as im:
        assert im.format == "JPEG"
        assert im.size == (2048, 1536)


def test_max_side_parameter(tmp_path: Path) -> None:
    path = write(tmp_path, "tall.png", png(300, 900))
    ref, _, info = prepare_reference(str(path), max_side=512)
    assert info is not None and (info.width, info.height) == (300, 900)
    mime, sent = decode_uri(ref)
    assert mime == "image/jpeg"  # no transparency: JPEG
    with Image.open(io.BytesIO(sent)) as im:
        assert im.size == (171, 512)


def test_large_png_with_alpha_stays_png(tmp_path: Path) -> None:
    path = write(tmp_path, "alpha.png", png(3000, 1000, mode="RGBA"))
    ref, _, _ = prepare_reference(str(path))
    mime, sent = decode_uri(ref)
    assert mime == "image/png"
    with Image.open(io.BytesIO(sent)) as im:
        assert im.size == (2048, 683)
        assert im.mode == "RGBA"
        r, g, b, a = im.getpixel((10, 10))  # type: ignore[misc]
        assert a == 128
        assert max(abs(r - 200), abs(g - 30), abs(b - 30)) <= 2  # resampling rounding


def test_other_formats_are_reencoded(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (50, 40), (0, 128, 255)), "BMP")
    ref, original, info = prepare_reference(str(write(tmp_path, "a.bmp", data)))
    assert original == data
    assert info is not None and info.format == "bmp"
    mime, sent = decode_uri(ref)
    assert mime == "image/jpeg"
    with Image.open(io.BytesIO(sent)) as im:
        assert im.size == (50, 40)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (120, 60), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(im, "JPEG", exif=exif.tobytes())
    ref, original, info = prepare_reference(str(write(tmp_path, "phone.jpg", data)))
    assert original is not None
    with Image.open(io.BytesIO(original)) as kept:  # the library copy still shows upright
        assert dict(kept.getexif()) == {0x0112: 6}
    assert info is not None and (info.width, info.height) == (120, 60)  # as stored
    _, sent = decode_uri(ref)
    with Image.open(io.BytesIO(sent)) as out:
        assert out.size == (60, 120)  # as displayed


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    data = png(10, 10)
    write(tmp_path, "home.png", data)
    _, original, _ = prepare_reference("~/home.png")
    assert original == data


# --------------------------------------------------------------------------- PNG as it streams

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunked_png(width: int = 40, height: int = 30) -> bytes:
    """A noise PNG with its image data in five IDAT chunks and text chunks before and
    after them (chunk boundaries everywhere, as in big real files)."""
    raw = encode(Image.effect_noise((width, height), 64).convert("RGB"), "PNG")
    ihdr = raw[8 : 8 + 25]
    idat = b""
    pos = 8 + 25
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        if raw[pos + 4 : pos + 8] == b"IDAT":
            idat += raw[pos + 8 : pos + 8 + length]
        pos += 12 + length
    step = len(idat) // 5 + 1
    parts = [_chunk(b"IDAT", idat[i : i + step]) for i in range(0, len(idat), step)]
    assert len(parts) == 5
    return (PNG_SIGNATURE + ihdr + _chunk(b"tEXt", b"Comment\x00before")
            + b"".join(parts) + _chunk(b"tEXt", b"Comment\x00after") + _chunk(b"IEND", b""))


@pytest.fixture(params=["isal", "zlib"])
def crc_library(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                ) -> Iterator[str]:
    """The stream check with ISA-L's CRC-32 (installed with nbdesk), and with zlib's, as
    where ISA-L has no wheel (its import fails)."""
    png_crc32.cache_clear()
    if request.param == "zlib":
        monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)  # import raises
        assert png_crc32() is zlib.crc32
    else:
        assert png_crc32() is not zlib.crc32
        assert png_crc32().__module__.startswith("isal")
    yield request.param
    png_crc32.cache_clear()


def stream_check(data: bytes, block: int = 4096) -> PngStreamCheck:
    check = PngStreamCheck()
    for i in range(0, len(data), block):
        check.feed(data[i : i + block])
    return check


def assert_refused(data: bytes, block: int = 4096) -> None:
    """The stream check does not prove ``data``; its error is the one probe_file gives a
    damaged file."""
    check = stream_check(data, block)
    with pytest.raises(ImageCheckError, match=r"^the image is truncated or damaged$"):
        check.result()
    assert check.reason


@pytest.mark.usefixtures("crc_library")
@pytest.mark.parametrize("block", [1, 3, 8, 12, 13, 100, 1 << 20])
def test_png_stream_check_proves_a_whole_png(tmp_path: Path, block: int) -> None:
    data = chunked_png()
    proof = stream_check(data, block).result()
    assert proof == PngProof(width=40, height=30, size=len(data))
    path = write(tmp_path, "whole.png", data)
    assert probe_file(path, png=proof) == probe_file(path) == ImageInfo(
        "png", "png", "image/png", 40, 30)


@pytest.mark.usefixtures("crc_library")
def test_png_stream_check_proves_pillows_own_pngs() -> None:
    for data in (png(300, 200), png(5, 7, "RGBA"), bilevel_png(3000, 2000)):
        proof = stream_check(data, 1000).result()
        info = probe_bytes(data)
        assert (proof.width, proof.height, proof.size) == (info.width, info.height, len(data))


def test_png_stream_check_refuses_every_truncation() -> None:
    data = chunked_png()
    for cut in range(len(data)):
        for block in (7, 4096):
            assert_refused(data[:cut], block)
        with pytest.raises(ImageCheckError):  # and so does the full probe
            probe_bytes(data[:cut])


@pytest.mark.usefixtures("crc_library")
def test_png_stream_check_refuses_any_changed_byte() -> None:
    """Signature, lengths, types, data and CRCs: one flipped bit anywhere is caught."""
    data = chunked_png()
    for pos in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[pos] ^= bit
            assert_refused(bytes(damaged))


def test_png_stream_check_refuses_a_flipped_data_byte_probe_does_too() -> None:
    data = bytearray(chunked_png())
    data[len(data) // 2] ^= 0x20  # inside an IDAT chunk's data
    assert_refused(bytes(data))
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_bytes(bytes(data))


@pytest.mark.usefixtures("crc_library")
def test_png_stream_check_refuses_a_bad_crc() -> None:
    data = chunked_png()
    iend = len(data) - 12
    bad = data[: iend - 4] + bytes(4) + data[iend:]  # the last text chunk's CRC zeroed
    assert_refused(bad)
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_bytes(bad)
    bad_iend = data[:-4] + b"\x00\x00\x00\x00"
    assert_refused(bad_iend)
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_bytes(bad_iend)


def test_png_stream_check_refuses_a_missing_iend() -> None:
    data = chunked_png()
    assert data.endswith(_chunk(b"IEND", b""))
    assert_refused(data[:-12])
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_bytes(data[:-12])


def test_png_stream_check_refuses_bytes_after_iend_which_the_probe_accepts() -> None:
    """Stricter than probe_file, which ignores what follows IEND: a stream the check does
    not prove is probed in full, so this stays accepted as it was (see the engine)."""
    data = chunked_png()
    for tail in (b"\x00", b"trailing garbage", _chunk(b"IEND", b"")):
        assert_refused(data + tail)
        assert probe_bytes(data + tail).width == 40


def test_png_stream_check_refuses_bad_structure() -> None:
    data = chunked_png()
    ihdr, rest = data[8:33], data[33:]
    text = _chunk(b"tEXt", b"Comment\x00x")
    assert_refused(PNG_SIGNATURE + text + ihdr + rest)  # IHDR not first
    assert_refused(PNG_SIGNATURE + ihdr + ihdr + rest)  # two IHDRs
    assert_refused(PNG_SIGNATURE + ihdr + _chunk(b"IEND", b""))  # no image data
    assert_refused(data[:-12] + _chunk(b"IEND", b"x"))  # IEND with data
    assert_refused(data[:-12] + _chunk(b"I_ND", b""))  # not a chunk name
    assert_refused(b"")
    assert_refused(noisy_jpeg(64, 48))  # not a PNG at all


def test_probe_file_uses_a_proof_only_for_the_same_file(tmp_path: Path) -> None:
    data = chunked_png()
    proof = stream_check(data).result()
    cut = write(tmp_path, "cut.png", data[:-1])  # a different size: checked in full
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_file(cut, png=proof)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 1
    other = write(tmp_path, "other.png", bytes(damaged))
    wrong = PngProof(width=41, height=30, size=len(data))  # not this picture's header
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_file(other, png=wrong)
    jpeg = write(tmp_path, "p.jpg", noisy_jpeg(64, 48)[:-2])  # a JPEG: its own check
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_file(jpeg, png=PngProof(64, 48, jpeg.stat().st_size))


# --------------------------------------------------------------------------- metadata

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description>nbdesk-xmp-secret'  \
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
GPS_IFD = 0x8825


def srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_exif(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0110] = "nbdesk-camera-model"
    exif[0x0112] = orientation
    gps = exif.get_ifd(GPS_IFD)
    gps.update({1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 1.0)})
    return exif.tobytes()


def with_metadata(fmt: str, orientation: int = 1, size: tuple[int, int] = (64, 48)) -> bytes:
    """A photo as a phone leaves it: EXIF with GPS, XMP, a comment or text, an ICC profile."""
    im = Image.effect_noise(size, 40).convert("RGB")
    params: dict[str, object] = {"exif": camera_exif(orientation), "icc_profile": srgb_icc()}
    if fmt == "JPEG":
        params |= {"xmp": XMP, "comment": b"nbdesk-comment-secret", "quality": 90}
    elif fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Comment", "nbdesk-comment-secret")
        info.add_text("Author", "nbdesk-comment-secret", zip=True)
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        params["pnginfo"] = info
    else:
        params |= {"xmp": XMP, "lossless": True}
    return encode(im, fmt, **params)


MIMES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
SECRETS = (b"nbdesk-camera-model", b"nbdesk-xmp-secret", b"nbdesk-comment-secret", b"xmpmeta")


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_strip_metadata_leaves_no_gps_exif_xmp_or_text(fmt: str) -> None:
    data = with_metadata(fmt)
    with Image.open(io.BytesIO(data)) as before:  # the test's photo does carry them
        assert before.getexif().get_ifd(GPS_IFD)
        carried = SECRETS if fmt != "WEBP" else SECRETS[:2]  # (WebP has no comment)
        assert all(secret in data for secret in carried)
    out = strip_metadata(data, MIMES[fmt])
    assert len(out) < len(data)
    for secret in SECRETS:
        assert secret not in out
    assert b"Exif" not in out and b"eXIf" not in out and b"EXIF" not in out
    with Image.open(io.BytesIO(out)) as after:
        assert len(after.getexif()) == 0 and not after.getexif().get_ifd(GPS_IFD)
        assert not {"xmp", "XML:com.adobe.xmp", "comment", "Comment", "Author", "exif"
                    } & set(after.info)
        assert after.info.get("icc_profile") == srgb_icc()  # the colours' meaning stays
    assert pixels(out) == pixels(data)  # nothing re-encoded
    assert probe_bytes(out) == probe_bytes(data)  # still a whole file (CRCs, RIFF size)
    if fmt == "WEBP":
        assert out[12:16] == b"VP8X" and out[20] & 0x0C == 0  # no EXIF/XMP flags left
        assert int.from_bytes(out[4:8], "little") + 8 == len(out)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_strip_metadata_keeps_a_clean_file_byte_identical(fmt: str) -> None:
    data = encode(Image.effect_noise((40, 30), 40).convert("RGB"), fmt)
    assert strip_metadata(data, MIMES[fmt]) == data


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_strip_metadata_keeps_only_the_orientation(fmt: str) -> None:
    out = strip_metadata(with_metadata(fmt, orientation=6), MIMES[fmt])
    for secret in SECRETS:
        assert secret not in out
    with Image.open(io.BytesIO(out)) as after:
        assert dict(after.getexif()) == {0x0112: 6}
    assert probe_bytes(out).width == 64


def test_strip_metadata_drops_a_trailer_after_the_jpeg() -> None:
    data = with_metadata("JPEG")
    out = strip_metadata(data + b"trailing maker notes nbdesk-xmp-secret", "image/jpeg")
    assert out.endswith(b"\xff\xd9") and b"trailing" not in out


def test_strip_metadata_refuses_what_it_cannot_follow() -> None:
    with pytest.raises(ImageCheckError, match="damaged"):
        strip_metadata(with_metadata("JPEG")[:300], "image/jpeg")
    assert strip_metadata(b"GIF89a...", "image/gif") == b"GIF89a..."


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_references_are_sent_and_kept_without_metadata(fmt: str, tmp_path: Path) -> None:
    data = with_metadata(fmt)
    path = write(tmp_path, f"photo.{fmt.lower()}", data)
    ref, original, _ = prepare_reference(str(path))
    mime, sent = decode_uri(ref)
    assert mime == MIMES[fmt] and sent == original == strip_metadata(data, mime)
    for secret in SECRETS:
        assert secret not in sent
    assert pixels(sent) == pixels(data)
    # The user's choice to keep it: the file as it is.
    ref, original, _ = prepare_reference(str(path), keep_metadata=True)
    assert decode_uri(ref) == (MIMES[fmt], data) and original == data


def test_a_rotated_photo_is_sent_upright_without_metadata(tmp_path: Path) -> None:
    path = write(tmp_path, "phone.jpg", with_metadata("JPEG", orientation=6, size=(120, 60)))
    ref, original, _ = prepare_reference(str(path))
    _, sent = decode_uri(ref)
    with Image.open(io.BytesIO(sent)) as out:
        assert out.size == (60, 120) and len(out.getexif()) == 0
    assert original is not None and b"nbdesk-camera-model" not in original
