"""One window per library: a second launch hands its files to the running window.

The window that opens a library listens on a local socket (``QLocalServer``) whose name
is made of the user and the library's folder. A later launch of the window on the same
library (a second double-click, "Open with nbdesk" on an image) connects to it, sends the
files of its command line, waits for a short acknowledgement and exits 0; the running
window opens the files as it opens its own (``nbdesk.ui.launch``) and comes to the front.
The command line never takes this path: a CLI next to the window shares the library
through the database's leases.

Where (Unix): a folder only the user can enter, ``$XDG_RUNTIME_DIR/nbdesk`` or else
``$TMPDIR/nbdesk-<uid>`` (made 0700; a folder of that name that is not the user's own
and private is not used at all: no guard then, as before it existed), one socket per
library, ``<hash>.sock``, and a lock file beside it. Windows: a named pipe
``nbdesk-<hash>``, restricted to the user, its lock file in the user's temp folder.

Race-free: whoever listens does so holding the lock (``QLockFile``, which a crashed
holder does not keep), after trying to connect once more; so of two launches at the same
moment exactly one listens and the other hands its files to it, and a socket file left
by a crashed window (nobody answers on it) is removed before listening.

The message: ``MAGIC``, the payload's length (4 bytes, big-endian, at most
``MAX_MESSAGE``) and the payload, the absolute paths in the file system's encoding
(UTF-8), NUL-separated. The answer: ``ACK``. Anything else is dropped unanswered.

Start-up cost: before its window is shown, a launch only looks whether the socket folder
holds any socket (one ``scandir``); only then does it work out the library (reading the
settings) and try to hand its files over. The window listens once its library's first
screen is drawn, before the engine starts.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer, Signal

if TYPE_CHECKING:
    from PySide6.QtNetwork import QLocalSocket

log = logging.getLogger(__name__)

MAGIC = b"nbdesk-open/1\n"
ACK = b"ok\n"
HEADER = len(MAGIC) + 4
#: the largest payload taken (some thousands of paths)
MAX_MESSAGE = 1 << 20
#: how long a launch waits for the running window's acknowledgement
ACK_TIMEOUT = 10.0
#: how long the running window keeps a connection that has not sent its whole message
IDLE_TIMEOUT = 5.0
#: connections read at the same time; more are dropped
MAX_CLIENTS = 8
LOCK_TIMEOUT = 5.0

HANDED_TEXT = "nbdesk is already open for this library; the files were handed to it"
RAISED_TEXT = "nbdesk is already open for this library; its window was brought to the front"
SILENT_TEXT = ("nbdesk is already open for this library but did not answer; nothing was "
               "opened (wait for that window, or close it, and try again)")


class Handoff(enum.Enum):
    NO_WINDOW = "no window answers on this library"
    HANDED = "the running window took the files"
    SILENT = "a window is there but did not acknowledge"


# ---------------------------------------------------------------------------- where


def socket_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The user's private folder of nbdesk sockets (Unix); None on Windows."""
    if sys.platform == "win32":
        return None
    environ = os.environ if env is None else env
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and _private(Path(runtime)):
        return Path(runtime) / "nbdesk"
    tmp = environ.get("TMPDIR", "")
    return Path(tmp if os.path.isabs(tmp) else "/tmp") / f"nbdesk-{os.getuid()}"


def _private(path: Path) -> bool:
    """``path`` is a real folder (no link) of this user's that nobody else may enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False
    return st.st_mode & 0o077 == 0


def maybe_running(env: Mapping[str, str] | None = None) -> bool:
    """Whether some nbdesk window of this user may be listening (on any library): the
    cheap look before the window is shown. False means certainly none."""
    folder = socket_dir(env)
    try:
        if folder is None:  # Windows: the pipes' names
            return any(n.startswith("nbdesk-") for n in os.listdir("\\\\.\\pipe\\"))
        with os.scandir(folder) as entries:
            return any(e.name.endswith(".sock") and _listening(e.path) for e in entries)
    except OSError:
        return folder is None  # (no folder: no socket; pipes not listed: look closer)


def _listening(path: str) -> bool:
    """Whether a window listens at this Unix socket: a stale one (its window was killed)
    refuses the connection at once. Looked at with the C socket module, before the
    window is shown: socket.py's imports, QtNetwork and the settings would cost ~30 ms."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(0.2)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Address:
    """``name``: QLocalServer's (a socket's path on Unix, a pipe's name on Windows);
    ``lock``: the QLockFile held while deciding who listens. (A plain class: this
    module is imported before the window is shown, and a dataclass costs ~0.5 ms.)"""

    __slots__ = ("lock", "name")

    def __init__(self, name: str, lock: str) -> None:
        self.name = name
        self.lock = lock

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and (self.name, self.lock) == (other.name, other.lock)

    def __hash__(self) -> int:
        return hash((self.name, self.lock))

    def __repr__(self) -> str:
        return f"Address({self.name!r}, {self.lock!r})"

    @classmethod
    def for_library(cls, root: Path, env: Mapping[str, str] | None = None) -> Address | None:
        """The address of the window on the library at ``root``; None when the user has
        no private place for it (then nothing guards against a second window)."""
        from PySide6.QtCore import QByteArray, QCryptographicHash, QDir

        environ = os.environ if env is None else env
        user = (str(os.getuid()) if sys.platform != "win32"
                else environ.get("USERNAME", "") + "@" + environ.get("USERDOMAIN", ""))
        key = f"{user}\0{os.path.realpath(root)}".encode("utf-8", "surrogateescape")
        digest = QCryptographicHash.hash(QByteArray(key), QCryptographicHash.Algorithm.Sha256)
        short = bytes(digest.toHex().data()[:20]).decode("ascii")
        folder = socket_dir(environ)
        if folder is None:
            return cls(f"nbdesk-{short}", str(Path(QDir.tempPath()) / f"nbdesk-{short}.lock"))
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            log.warning("no single-window guard: cannot make %s (%s)", folder, exc)
            return None
        if not _private(folder):
            log.warning("no single-window guard: %s is not a private folder of this user",
                        folder)
            return None
        return cls(str(folder / f"{short}.sock"), str(folder / f"{short}.lock"))


# ---------------------------------------------------------------------------- the message


def encode(files: Sequence[str]) -> bytes:
    """The message for ``files`` (paths as given; made absolute here, the running window
    has another working folder). A ``file://`` URL becomes its path; anything else that
    is not a local path (an http URL) goes as it is, for the window to refuse."""
    from nbdesk.desktop import local_path

    parts = []
    for arg in files:
        path = local_path(arg)
        parts.append(os.fsencode(str(path) if path is not None else arg))
    payload = b"\0".join(parts)
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"too many files to hand over ({len(files)})")
    return MAGIC + len(payload).to_bytes(4, "big") + payload


def decode(payload: bytes) -> list[str] | None:
    """The paths of a payload, or None if it is not one."""
    if not payload:
        return []
    try:
        files = [os.fsdecode(p) for p in payload.split(b"\0")]
    except UnicodeError:
        return None
    return None if any(not f for f in files) else files


# ---------------------------------------------------------------------------- the launch


def hand_off(address: Address, files: Sequence[str], *,
             ack_timeout: float = ACK_TIMEOUT) -> Handoff:
    """Give ``files`` to the window listening at ``address`` (blocking; no event loop)."""
    import time

    from PySide6.QtNetwork import QLocalSocket

    message = encode(files)
    sock = QLocalSocket()
    try:
        sock.connectToServer(address.name)
        if not sock.waitForConnected(1000):  # (local: it connects or fails at once)
            return Handoff.NO_WINDOW
        sock.write(message)
        sock.flush()
        answer = b""
        deadline = time.monotonic() + ack_timeout
        while len(answer) < len(ACK):
            left = deadline - time.monotonic()
            if left <= 0 or not sock.waitForReadyRead(max(1, int(left * 1000))):
                break
            answer += bytes(sock.readAll().data())
        return Handoff.HANDED if answer.startswith(ACK) else Handoff.SILENT
    finally:
        sock.abort()


def claim(address: Address, files: Sequence[str], *,
          ack_timeout: float = ACK_TIMEOUT) -> InstanceServer | Handoff | None:
    """Become the library's window (a listening ``InstanceServer``), or hand ``files``
    to the one that is (``Handoff.HANDED``; ``SILENT`` if it did not acknowledge).
    None: the lock could not be had, or listening failed: no guard (logged)."""
    from PySide6.QtCore import QLockFile

    lock = QLockFile(address.lock)
    lock.setStaleLockTime(0)  # stale only when its process is gone (no time limit)
    if not lock.tryLock(int(LOCK_TIMEOUT * 1000)):
        log.warning("no single-window guard: %s stays locked (%s)", address.lock,
                    lock.error().name)
        return None
    try:
        handed = hand_off(address, files, ack_timeout=ack_timeout)
        if handed is not Handoff.NO_WINDOW:
            return handed
        server = InstanceServer(address.name)
        return server if server.listen() else None
    finally:
        lock.unlock()


def outcome_text(handed: Handoff, files: Sequence[str]) -> str:
    """The line a launch that did not open a window prints on stderr."""
    if handed is Handoff.HANDED:
        return HANDED_TEXT if files else RAISED_TEXT
    return SILENT_TEXT


# ---------------------------------------------------------------------------- the window


class InstanceServer(QObject):
    """The running window's end: reads each launch's message without blocking (on
    ``readyRead``), bounded in size and time; answers ``ACK`` and emits
    ``filesReceived`` with the paths. Garbage, a message too long, or a connection
    that stays silent is dropped unanswered."""

    filesReceived = Signal(list)

    def __init__(self, name: str, parent: QObject | None = None, *,
                 max_message: int = MAX_MESSAGE, idle_timeout: float = IDLE_TIMEOUT) -> None:
        from PySide6.QtNetwork import QLocalServer

        super().__init__(parent)
        self.name = name
        self.max_message = max_message
        self.idle_ms = int(idle_timeout * 1000)
        self._server = QLocalServer(self)
        self._server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self._server.newConnection.connect(self._accept)
        self._clients: dict[QLocalSocket, bytearray] = {}

    def listen(self) -> bool:
        """Listen at the name; a socket file of a window gone without closing it
        (nobody answered on it: see ``claim``) is removed first."""
        from PySide6.QtNetwork import QLocalServer

        QLocalServer.removeServer(self.name)
        if self._server.listen(self.name):
            return True
        log.warning("no single-window guard: cannot listen at %s (%s)", self.name,
                    self._server.errorString())
        return False

    def is_listening(self) -> bool:
        return self._server.isListening()

    def close(self) -> None:
        """Stop listening (the socket file goes) and drop connections being read."""
        self._server.close()
        for sock in list(self._clients):
            self._drop(sock)

    def _accept(self) -> None:
        while self._server.hasPendingConnections():
            sock = self._server.nextPendingConnection()
            if len(self._clients) >= MAX_CLIENTS:
                sock.abort()
                sock.deleteLater()
                continue
            self._clients[sock] = bytearray()
            timer = QTimer(sock)
            timer.setSingleShot(True)
            timer.timeout.connect(lambda s=sock: self._drop(s))
            timer.start(self.idle_ms)
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(lambda s=sock: self._drop(s))
            self._read(sock)  # (bytes may have come with the connection)

    def _read(self, sock: QLocalSocket) -> None:
        buffer = self._clients.get(sock)
        if buffer is None:  # answered or dropped already
            return
        buffer += bytes(sock.read(self.max_message + HEADER + 1 - len(buffer)).data())
        head = bytes(buffer[:len(MAGIC)])
        if not MAGIC.startswith(head) or len(buffer) > HEADER + self.max_message:
            self._drop(sock)
            return
        if len(buffer) < HEADER:
            return
        size = int.from_bytes(buffer[len(MAGIC):HEADER], "big")
        if size > self.max_message or len(buffer) > HEADER + size:
            self._drop(sock)
            return
        if len(buffer) < HEADER + size:
            return
        files = decode(bytes(buffer[HEADER:]))
        if files is None:
            self._drop(sock)
            return
        from PySide6.QtNetwork import QLocalSocket

        del self._clients[sock]
        sock.write(ACK)
        sock.flush()  # (now: whatever the files lead to, the launch is answered)
        sock.disconnected.connect(sock.deleteLater)
        sock.disconnectFromServer()  # (once the answer is written)
        if sock.state() == QLocalSocket.LocalSocketState.UnconnectedState:
            sock.deleteLater()
        self.filesReceived.emit(files)

    def _drop(self, sock: QLocalSocket) -> None:
        if self._clients.pop(sock, None) is None:
            return
        sock.abort()
        sock.deleteLater()
