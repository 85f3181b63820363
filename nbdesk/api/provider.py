"""What every HTTP provider client shares: the app's client, the key, the base URL, retries.

Each provider module subclasses ``HttpProvider`` and says how its key goes on the wire
(``auth_headers``); everything else about a provider lives in its own module and in the
capability table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from nbdesk.api.capabilities import ProviderCaps
from nbdesk.api.http import RetryPolicy

if TYPE_CHECKING:  # imported with the client (nbdesk.api.http.make_client)
    import httpx


class HttpProvider:
    """The constructor and headers of a provider client; subclasses set ``caps``."""

    caps: ClassVar[ProviderCaps]
    id: str
    idempotent_submit: bool
    #: True: one call returns the image (no remote job to poll); see ``SyncProvider``.
    synchronous: bool = False

    def __init__(
        self,
        client: httpx.AsyncClient,
        api_key: str,
        base_url: str | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._client = client
        self._key = api_key
        self.base_url = (base_url or self.caps.base_url).rstrip("/")
        self.policy = policy or RetryPolicy()

    def auth_headers(self) -> dict[str, str]:
        """The header(s) that carry the API key."""
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        return {**self.auth_headers(), "Accept": "application/json"}
