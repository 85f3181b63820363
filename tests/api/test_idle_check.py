"""The HTTP client's quick check of idle pooled connections (nbdesk.api.idle_check)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpcore
import pytest

from nbdesk.api import idle_check
from nbdesk.api.http import make_client
from nbdesk.api.idle_check import QuickCheckBackend, socket_readable

pytestmark = pytest.mark.anyio


class KeepAliveServer:
    """Answers every request with a kept-alive ``ok``; ``drop()`` closes, from the
    server's side, every connection it holds."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def drop(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await asyncio.sleep(0.05)  # (the FIN reaches the client's socket)


@pytest.fixture
async def server() -> AsyncIterator[KeepAliveServer]:
    srv = KeepAliveServer()
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = listener.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        await srv.drop()
        listener.close()


def test_socket_readable_tells_a_closed_peer_from_an_idle_one() -> None:
    a, b = socket.socketpair()
    try:
        assert not socket_readable(a)  # open, nothing sent
        b.close()
        assert socket_readable(a)  # the peer closed: a read would return at once
    finally:
        a.close()
    assert socket_readable(None)  # unknown: httpcore then drops the connection


def test_make_client_installs_the_quick_check() -> None:
    client = make_client()
    assert isinstance(client._transport._pool._network_backend, QuickCheckBackend)  # type: ignore[attr-defined]


async def test_the_quick_check_sees_the_server_close_an_idle_connection(
    server: KeepAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streams answer is_readable themselves (poll on their socket, which on
    asyncio is the transport's TransportSocket), not through anyio's attributes."""
    real = idle_check.socket_readable
    backend = QuickCheckBackend(httpcore.AnyIOBackend())
    stream = await backend.connect_tcp("127.0.0.1", server.port)
    asked: list[object] = []
    monkeypatch.setattr(idle_check, "socket_readable",
                        lambda sock: asked.append(sock) or real(sock))
    try:
        await stream.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await stream.read(1024)).endswith(b"ok")
        assert stream.get_extra_info("is_readable") is False
        await server.drop()
        assert stream.get_extra_info("is_readable") is True
        assert stream.get_extra_info("socket") is not None  # the rest: the backend's
        assert len(asked) == 2  # both answers came from the quick check
    finally:
        await stream.aclose()


async def test_a_pooled_connection_closed_by_the_server_is_replaced(
    server: KeepAliveServer,
) -> None:
    client = make_client(timeout=5.0)
    try:
        url = f"http://127.0.0.1:{server.port}/"
        assert (await client.get(url)).text == "ok"
        assert (await client.get(url)).text == "ok"
        assert server.connections == 1  # kept alive
        await server.drop()
        assert (await client.get(url)).text == "ok"  # not sent into the closed one
        assert server.connections == 2
    finally:
        await client.aclose()
