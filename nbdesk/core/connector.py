"""Builds the provider clients: API key, base URL, the shared HTTP client, Demo mode.

Demo mode drives the real client against a loopback server that answers as every
provider does, so a new user can try everything offline with no key. The core does not
know which server: the composition roots (the app, the CLI) give a ``StartDemo``, the
simulator of ``nbdesk.sim``, started at first Demo use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from nbdesk.api.apiframe import ApiframeProvider
from nbdesk.api.apifree import ApifreeProvider
from nbdesk.api.base import AnyProvider
from nbdesk.api.capabilities import PROVIDERS, ProviderCaps
from nbdesk.api.gemini import GeminiProvider
from nbdesk.api.http import RetryPolicy
from nbdesk.api.urls import check_base_url
from nbdesk.core.secrets import KeychainError, SecretStore, register_env_keys
from nbdesk.core.settings import Settings
from nbdesk.core.settings_service import SettingsService

if TYPE_CHECKING:  # httpx comes with the client
    import httpx

_CLASSES: dict[str, type[ApiframeProvider] | type[ApifreeProvider] | type[GeminiProvider]] = {
    "apiframe": ApiframeProvider,
    "apifree": ApifreeProvider,
    "gemini": GeminiProvider,
}


class ConfigError(Exception):
    """A provider cannot be used as configured (no key, bad base URL); user-facing."""


class DemoServer(Protocol):
    """A running loopback server that answers as every provider does (Demo mode)."""

    @property
    def base_url(self) -> str: ...

    @property
    def key(self) -> str:
        """The key a client sends it."""
        ...

    def stop(self) -> None: ...


#: Starts a Demo server and returns it running. It blocks (and may import a lot): the
#: connector calls it on a worker thread, at the first Demo use, once per connector.
StartDemo = Callable[[], DemoServer]


def base_url_for(
    caps: ProviderCaps, settings: Settings, env: Mapping[str, str] | None = None
) -> str:
    env = os.environ if env is None else env
    url = env.get(caps.env_base_url) or settings.base_urls.get(caps.id) or caps.base_url
    try:
        return check_base_url(url)
    except ValueError as exc:
        raise ConfigError(f"{caps.label}: {exc}") from None


class Connector:
    """``http``: the process's client, or a function that makes it (``make_client``): then
    the connector makes it when ``open_http()`` runs (off the event loop's thread: its SSL
    context takes tens of ms) or at first use, and closes it in ``close()``.

    ``settings``: the process's settings service (a plain ``Settings`` gets a service of
    its own, in memory). Base URLs are read from it when a client is made, and a changed
    base URL drops the clients made with the old one.

    ``demo``: how to start the Demo server; without it a Demo job is a ConfigError."""

    def __init__(
        self,
        http: httpx.AsyncClient | Callable[[], httpx.AsyncClient],
        secrets: SecretStore,
        settings: SettingsService | Settings,
        *,
        env: Mapping[str, str] | None = None,
        policy_factory: Callable[[], RetryPolicy] = RetryPolicy,
        demo: StartDemo | None = None,
    ) -> None:
        if callable(http):
            self._http: httpx.AsyncClient | None = None
            self._make_http: Callable[[], httpx.AsyncClient] | None = http
        else:
            self._http, self._make_http = http, None
        self.secrets = secrets
        self.settings_service = (
            settings if isinstance(settings, SettingsService) else SettingsService(settings))
        self._unsubscribe = self.settings_service.subscribe(self._on_settings)
        self._env = os.environ if env is None else env
        # A provider may repeat back any key it was sent: every provider's key in the
        # environment is masked from the start (keychain keys as they are read).
        register_env_keys(self._env)
        self._policy_factory = policy_factory
        self._start_demo = demo
        self._demo: DemoServer | None = None
        self._cache: dict[tuple[str, bool], AnyProvider] = {}
        self._lock = asyncio.Lock()

    @property
    def settings(self) -> Settings:
        return self.settings_service.current

    def _on_settings(self, old: Settings, new: Settings) -> None:
        for pid in PROVIDERS:
            if old.base_urls.get(pid) != new.base_urls.get(pid):
                self.forget(pid)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            assert self._make_http is not None
            self._http = self._make_http()
        return self._http

    async def open_http(self) -> None:
        """Make the HTTP client now, in a worker thread (a no-op if it exists)."""
        if self._http is not None or self._make_http is None:
            return
        client = await asyncio.to_thread(self._make_http)
        if self._http is None:
            self._http = client
        else:  # made at first use meanwhile
            await client.aclose()

    async def provider(self, provider_id: str, demo: bool = False) -> AnyProvider:
        """The client for a provider (cached); raises ConfigError with a clear message."""
        async with self._lock:
            cached = self._cache.get((provider_id, demo))
            if cached is not None:
                return cached
            try:
                caps = PROVIDERS[provider_id]
            except KeyError:
                raise ConfigError(f"unknown provider {provider_id!r}") from None
            if demo:
                if self._demo is None:
                    if self._start_demo is None:
                        raise ConfigError("Demo is not available in this program")
                    self._demo = await asyncio.to_thread(self._start_demo)
                key, base = self._demo.key, self._demo.base_url
            else:
                key = await self._key(caps)
                base = base_url_for(caps, self.settings, self._env)
            client = _CLASSES[provider_id](self.http, key, base, self._policy_factory())
            self._cache[(provider_id, demo)] = client
            return client

    async def _key(self, caps: ProviderCaps) -> str:
        value = self._env.get(caps.env_key)
        if value is not None and not value.strip():
            raise ConfigError(
                f"{caps.env_key} is set but empty: set it to your {caps.label} API key, or "
                "unset it to use the key stored in the keychain")
        try:
            found = await self.secrets.alookup(caps.id)
        except KeychainError as exc:
            raise ConfigError(f"{caps.label}: {exc}") from None
        if not found.key:
            raise ConfigError(
                f"no API key for {caps.label}: run `nbdesk keys set {caps.id}`, add it in "
                f"Settings, or set {caps.env_key}; or try it offline with --provider demo"
            )
        return found.key

    async def learn_keys(self) -> None:
        """Read every provider's key once (off the loop's thread, as every keychain call),
        so that a key a provider repeats back is masked whichever provider it belongs to;
        a keychain that cannot answer is no error here."""
        for caps in PROVIDERS.values():
            with contextlib.suppress(KeychainError):
                await self.secrets.alookup(caps.id)

    def forget(self, provider_id: str) -> None:
        """Drop cached clients (after a key or base URL changed). Safe from any thread
        (a settings change may be told on the thread that saved it)."""
        for k in list(self._cache):
            if k[0] == provider_id:
                self._cache.pop(k, None)

    async def close(self) -> None:
        self._unsubscribe()
        self._cache.clear()
        try:
            if self._demo is not None:
                server, self._demo = self._demo, None
                await asyncio.to_thread(server.stop)
        finally:
            if self._make_http is not None and self._http is not None:
                client, self._http = self._http, None
                await client.aclose()
