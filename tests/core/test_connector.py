"""The connector's HTTP client: made off the event loop's thread, closed with it."""

from __future__ import annotations

import threading

import httpx
import pytest

from nbdesk.api.http import make_client
from nbdesk.core.connector import Connector
from nbdesk.core.secrets import SecretStore
from nbdesk.core.settings import Settings

pytestmark = pytest.mark.anyio


async def test_connector_makes_its_client_off_the_loop_and_closes_it() -> None:
    made: list[str] = []

    def factory() -> httpx.AsyncClient:
        made.append(threading.current_thread().name)
        return make_client(timeout=5.0)

    connector = Connector(factory, SecretStore(environ={}), Settings())
    await connector.open_http()
    client = connector.http
    assert made and made[0] != threading.main_thread().name
    await connector.open_http()
    assert connector.http is client and len(made) == 1
    await connector.close()
    assert client.is_closed
