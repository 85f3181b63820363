"""A cheaper "has the server closed this idle connection?" for httpcore's pool.

Each time the pool hands out a connection it asks every idle one whether its socket
has become readable (the server closed it, or sent something unasked). Through the
anyio backend that question builds anyio's whole table of socket attributes, with a
``getpeername`` call, for each connection: ~80 us, so ~1 ms per request with 16 idle
connections. With hundreds of jobs polling, that was the largest single cost on the
event loop, which in the app is the GUI thread's. Here the streams keep their socket
and ask ``poll()`` alone; everything else goes to the backend they wrap.

Imported by ``make_client`` (httpcore is not loaded before it).
"""

# ruff: noqa: ASYNC109  (the ``timeout`` parameters are httpcore's interface)

from __future__ import annotations

import select
from collections.abc import Iterable
from typing import Any, Protocol

import httpcore


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def socket_readable(sock: _HasFileno | None) -> bool:
    """True if a read would not block (data, or the peer closed); True when unknown
    (no socket, or a closed one)."""
    if sock is None:
        return True
    fd = sock.fileno()
    if fd < 0:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    ready, _, _ = select.select([fd], [], [], 0)  # (Windows)
    return bool(ready)


class QuickCheckStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        # (on asyncio, anyio gives the transport's TransportSocket, not the socket)
        sock = inner.get_extra_info("socket")
        self._sock: _HasFileno | None = (
            sock if callable(getattr(sock, "fileno", None)) else None)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return QuickCheckStream(await self._inner.start_tls(ssl_context, server_hostname,
                                                            timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._sock is not None:
            return socket_readable(self._sock)
        return self._inner.get_extra_info(info)


class QuickCheckBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return QuickCheckStream(await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return QuickCheckStream(await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def install(client: Any) -> bool:
    """Give ``client``'s connection pool the quick check; False (and the client as it
    was) if httpx or httpcore no longer look as expected."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not isinstance(
            inner, httpcore.AsyncNetworkBackend):
        return False
    if not isinstance(inner, QuickCheckBackend):
        pool._network_backend = QuickCheckBackend(inner)
    return True
