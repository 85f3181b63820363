"""One window per library (``nbdesk.ui.single_instance``), on real local sockets: the
first listens, a later launch hands its files over and gets an acknowledgement; a socket
left by a crashed window does not block; garbage, oversize and silent connections are
dropped unanswered; of launches at the same moment exactly one listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from nbdesk.ui.single_instance import (
    ACK,
    HEADER,
    MAGIC,
    MAX_MESSAGE,
    Address,
    Handoff,
    InstanceServer,
    claim,
    decode,
    encode,
    hand_off,
    maybe_running,
    socket_dir,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix socket files")
REPO = Path(__file__).parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private runtime folder of this test's: its sockets are nobody else's."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return {"XDG_RUNTIME_DIR": str(run)}


@pytest.fixture
def address(env: dict[str, str], tmp_path: Path) -> Address:
    found = Address.for_library(tmp_path / "library", env)
    assert found is not None
    return found


@pytest.fixture
def servers() -> Iterator[list[InstanceServer]]:
    made: list[InstanceServer] = []
    yield made
    for server in made:
        server.close()


LAUNCH = """
import sys
from PySide6.QtCore import QCoreApplication
from nbdesk.ui.single_instance import Address, claim, hand_off

app = QCoreApplication([])
how, name, lock, ack_timeout, *files = sys.argv[1:]
address = Address(name, lock)
if how == "claim":
    print(claim(address, files, ack_timeout=float(ack_timeout)))
else:
    print(hand_off(address, files, ack_timeout=float(ack_timeout)))
"""


def launch(qtbot: QtBot, address: Address, files: list[str], *, how: str = "hand_off",
           ack_timeout: float = 5.0, cwd: Path = REPO) -> str:
    """A later launch, in its own process (its wait blocks, as in the app), while this
    process's event loop serves the window's end; what it returned."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, how, address.name, address.lock, str(ack_timeout),
         *files], cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO),
                                "QT_QPA_PLATFORM": "offscreen"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        qtbot.waitUntil(lambda: proc.poll() is not None, timeout=30_000)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return out.strip()


def listening(address: Address, servers: list[InstanceServer]) -> InstanceServer:
    claimed = claim(address, [])
    assert isinstance(claimed, InstanceServer)
    servers.append(claimed)
    return claimed


def test_the_first_listens_and_a_later_launch_hands_over_its_files(
    qtbot: QtBot, address: Address, servers: list[InstanceServer], tmp_path: Path
) -> None:
    assert hand_off(address, ["x.png"]) is Handoff.NO_WINDOW  # nobody there yet
    server = listening(address, servers)
    assert server.is_listening()
    assert Path(address.name).is_socket()
    assert os.stat(address.name).st_mode & 0o077 == 0  # the user's only
    received: list[list[str]] = []
    server.filesReceived.connect(received.append)

    photo = tmp_path / "holiday photo é.png"
    files = ["rel.png", photo.as_uri(), "https://example.com/a.png"]
    # (relative paths are the launch's, made absolute by it)
    assert launch(qtbot, address, files, cwd=tmp_path) == "Handoff.HANDED"
    qtbot.waitUntil(lambda: bool(received), timeout=5000)
    assert received == [[str(tmp_path / "rel.png"), str(photo), "https://example.com/a.png"]]

    # no files (the app's icon clicked again): handed over all the same, to raise it
    assert launch(qtbot, address, []) == "Handoff.HANDED"
    qtbot.waitUntil(lambda: len(received) == 2, timeout=5000)
    assert received[1] == []

    # a second claim on the same library hands over instead of listening
    assert launch(qtbot, address, [str(photo)], how="claim") == "Handoff.HANDED"
    qtbot.waitUntil(lambda: len(received) == 3, timeout=5000)
    assert received[2] == [str(photo)]

    server.close()  # the window closed: its socket goes, a new launch starts afresh
    assert not Path(address.name).exists()
    assert hand_off(address, ["x.png"]) is Handoff.NO_WINDOW


def test_a_socket_left_by_a_crashed_window_does_not_block_a_new_one(
    qtbot: QtBot, address: Address, servers: list[InstanceServer]
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(address.name)  # a socket file nobody listens on (SIGKILLed window)
    stale.close()
    assert Path(address.name).is_socket()
    runtime = {"XDG_RUNTIME_DIR": str(Path(address.name).parents[1])}
    # The look before the window is shown sees nobody listening: no costly handoff.
    assert not maybe_running(runtime)
    assert hand_off(address, []) is Handoff.NO_WINDOW

    server = listening(address, servers)
    assert maybe_running(runtime)
    received: list[list[str]] = []
    server.filesReceived.connect(received.append)
    assert launch(qtbot, address, ["/a.png"]) == "Handoff.HANDED"
    qtbot.waitUntil(lambda: received == [["/a.png"]], timeout=5000)


def raw_exchange(qtbot: QtBot, address: Address, data: bytes) -> bytes:
    """Send ``data`` as a foreign program would; what comes back before the window
    closes the connection (b"": dropped unanswered)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(address.name)
    client.setblocking(False)
    client.sendall(data)
    answer = bytearray()
    closed = False

    def done() -> bool:
        nonlocal closed
        try:
            chunk = client.recv(4096)
        except BlockingIOError:
            return False
        if not chunk:
            closed = True
            return True
        answer.extend(chunk)
        return False

    try:
        qtbot.waitUntil(done, timeout=10_000)
    finally:
        client.close()
    assert closed
    return bytes(answer)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # another protocol
    MAGIC + (MAX_MESSAGE + 1).to_bytes(4, "big"),  # announces too much
    MAGIC + (3).to_bytes(4, "big") + b"abcd",  # more than it announced
    MAGIC + (3).to_bytes(4, "big") + b"a\0\0",  # an empty path
    MAGIC + (5).to_bytes(4, "big") + b"\x00\x00\x00\x00\x00",
], ids=["http", "too-long", "trailing", "empty-path", "nuls"])
def test_garbage_is_dropped_unanswered_and_the_window_keeps_listening(
    qtbot: QtBot, address: Address, servers: list[InstanceServer], data: bytes
) -> None:
    server = listening(address, servers)
    received: list[list[str]] = []
    server.filesReceived.connect(received.append)
    assert raw_exchange(qtbot, address, data) == b""
    assert received == []
    assert launch(qtbot, address, ["/still/works.png"]) == "Handoff.HANDED"
    qtbot.waitUntil(lambda: received == [["/still/works.png"]], timeout=5000)


def test_the_message_size_is_bounded(
    qtbot: QtBot, address: Address, servers: list[InstanceServer]
) -> None:
    server = InstanceServer(address.name, max_message=64)
    servers.append(server)
    assert server.listen()
    received: list[list[str]] = []
    server.filesReceived.connect(received.append)
    at_limit = "/" + "a" * 63
    assert raw_exchange(qtbot, address, MAGIC + (64).to_bytes(4, "big")
                        + at_limit.encode()) == ACK
    qtbot.waitUntil(lambda: received == [[at_limit]], timeout=5000)
    # one byte over, sent in one go with nothing announced past it: dropped
    over = "/" + "a" * 64
    assert raw_exchange(qtbot, address, MAGIC + (65).to_bytes(4, "big")
                        + over.encode()) == b""
    assert len(received) == 1
    # a launch never sends more than the window takes
    with pytest.raises(ValueError, match="too many files"):
        encode(["/" + "b" * 1000] * (MAX_MESSAGE // 1000 + 1))


def test_a_connection_that_stays_silent_is_dropped(
    qtbot: QtBot, address: Address, servers: list[InstanceServer]
) -> None:
    server = InstanceServer(address.name, idle_timeout=0.3)
    servers.append(server)
    assert server.listen()
    # half a message, then nothing: the window does not wait for the rest for ever
    assert raw_exchange(qtbot, address, MAGIC[:5]) == b""


def test_a_window_that_does_not_acknowledge_is_not_taken_for_gone(
    address: Address,
) -> None:
    """A program listening at the address that takes the message and never answers (a
    window hung): the launch says so (SILENT, exit 1 in the app), it does not start a
    second window on the library."""
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(address.name)
    mute.listen(1)
    try:
        assert hand_off(address, ["/x.png"], ack_timeout=0.3) is Handoff.SILENT
    finally:
        mute.close()
        os.unlink(address.name)


def test_the_address_is_per_user_and_library_and_in_a_private_folder(
    tmp_path: Path, env: dict[str, str]
) -> None:
    lib = tmp_path / "library"
    lib.mkdir()
    (tmp_path / "link").symlink_to(lib)
    one = Address.for_library(lib, env)
    assert one is not None
    assert one == Address.for_library(tmp_path / "link", env)  # the same folder
    assert one != Address.for_library(tmp_path / "other", env)
    assert Path(one.name).parent == Path(env["XDG_RUNTIME_DIR"]) / "nbdesk"
    assert len(one.name.encode()) < 100  # a Unix socket's path is at most ~104 bytes
    assert Path(one.name).parent.stat().st_mode & 0o777 == 0o700

    # no runtime folder: the temp folder, in a private folder of the user's
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    plain = {"TMPDIR": str(tmp)}
    assert socket_dir(plain) == tmp / f"nbdesk-{os.getuid()}"
    assert not maybe_running(plain)
    fallback = Address.for_library(lib, plain)
    assert fallback is not None and Path(fallback.name).parent == socket_dir(plain)
    # a runtime folder others may enter is not used
    shared = tmp_path / "shared-run"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert socket_dir({"XDG_RUNTIME_DIR": str(shared), "TMPDIR": str(tmp)}) == socket_dir(plain)
    # a folder of that name that others may enter (or anyone made): no guard at all
    other_tmp = tmp_path / "tmp2"
    (other_tmp / f"nbdesk-{os.getuid()}").mkdir(parents=True, mode=0o755)
    (other_tmp / f"nbdesk-{os.getuid()}").chmod(0o755)
    assert Address.for_library(lib, {"TMPDIR": str(other_tmp)}) is None


def test_paths_survive_the_message_whatever_their_bytes() -> None:
    odd = os.fsdecode(b"/tmp/\xff\xfe not utf-8\n.png")  # Linux allows it
    files = ["/a b/c.png", odd, "/ü/ñ.webp"]
    message = encode(files)
    assert message[:len(MAGIC)] == MAGIC
    assert decode(message[HEADER:]) == files
    assert decode(b"") == []


RACER = """
import sys
from pathlib import Path
from PySide6.QtCore import QCoreApplication, QTimer
from nbdesk.ui.single_instance import Address, InstanceServer, claim

app = QCoreApplication([])
address = Address.for_library(Path(sys.argv[1]))
expected = int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # go: all at once
claimed = claim(address, [sys.argv[2]])
if not isinstance(claimed, InstanceServer):
    print("handed" if claimed is not None else "none", claimed, flush=True)
    sys.exit(0)
print("listening", flush=True)
got = []

def on_files(files):
    got.extend(files)
    if len(got) == expected:
        print("received", " ".join(sorted(got)), flush=True)
        app.quit()

claimed.filesReceived.connect(on_files)
QTimer.singleShot(30_000, app.quit)
app.exec()
claimed.close()
"""


def test_of_launches_at_the_same_moment_exactly_one_listens(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """Four processes claim the same library at once: one listens, the three others
    hand it their files."""
    n = 4
    procs = [subprocess.Popen(
        [sys.executable, "-c", RACER, str(tmp_path / "library"), f"/file{i}.png", str(n - 1)],
        cwd=REPO, env={**os.environ, **env, "QT_QPA_PLATFORM": "offscreen"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) for i in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * n, [e for _o, e in outs]
    lines = [o.split() for o, _e in outs]
    winners = [i for i, words in enumerate(lines) if words[0] == "listening"]
    assert len(winners) == 1, outs
    (winner,) = winners
    assert all(lines[i][:2] == ["handed", "Handoff.HANDED"] for i in range(n) if i != winner), outs
    others = sorted(f"/file{i}.png" for i in range(n) if i != winner)
    assert lines[winner][1:] == ["received", *others]
