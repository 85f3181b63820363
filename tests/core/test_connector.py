"""The connector's HTTP client and Demo server: made off the event loop's thread, closed
with it."""

from __future__ import annotations

import threading

import httpx
import pytest

from nbdesk.api.http import make_client
from nbdesk.core.connector import ConfigError, Connector
from nbdesk.core.secrets import SecretStore
from nbdesk.core.settings import Settings
from nbdesk.demo import start_demo
from nbdesk.sim import SimConfig, Simulator

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


async def test_demo_starts_its_server_at_first_use_off_the_loop_once_and_stops_it() -> None:
    """The connector is given how to start the Demo server (the roots give the simulator):
    started at the first Demo client, not before, on a worker thread, once for every
    provider, and stopped when the connector closes."""
    started: list[Simulator] = []
    threads: list[str] = []

    def start() -> Simulator:
        threads.append(threading.current_thread().name)
        started.append(start_demo(SimConfig(queue_seconds=0, job_seconds=0)))
        return started[-1]

    connector = Connector(lambda: make_client(timeout=5.0), SecretStore(environ={}),
                          Settings(), env={}, demo=start)
    await connector.open_http()
    assert started == []
    frame = await connector.provider("apiframe", demo=True)
    free = await connector.provider("apifree", demo=True)
    [sim] = started
    assert threads[0] != threading.main_thread().name
    assert sim.running and frame.base_url == free.base_url == sim.base_url
    assert sim.key in frame.auth_headers().values()
    await connector.close()
    assert not sim.running


async def test_without_a_demo_server_a_demo_client_is_a_clear_error() -> None:
    connector = Connector(lambda: make_client(timeout=5.0), SecretStore(environ={}),
                          Settings(), env={})
    try:
        with pytest.raises(ConfigError, match=r"^Demo is not available in this program$"):
            await connector.provider("apiframe", demo=True)
    finally:
        await connector.close()
