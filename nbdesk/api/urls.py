"""The rules for the addresses nbdesk talks to: a provider's base URL, and what kind of
host an address is (the internet, or this computer, the LAN, a link-local or special one).

Kept apart from ``nbdesk.api.http`` because Settings checks base
URLs while the window is still drawing, before asyncio and the HTTP client load.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

#: The hosts a plain http:// base URL may name: this computer (the simulator, a local proxy).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

#: What the kinds of non-public addresses are called in messages.
KIND_NAMES = {
    "loopback": "this computer (a loopback address)",
    "private": "a private network address",
    "link-local": "a link-local address",
    "special": "an unspecified, multicast or reserved address",
}


def check_base_url(url: str) -> str:
    """The one rule for a provider base URL (Settings, NBDESK_*_BASE_URL, the connector):
    https://, or plain http:// to this computer only (127.0.0.1, ::1, localhost); a host;
    no user name or password (they would travel with every request and end up in logs),
    no query or fragment. Returns it without a trailing slash; ValueError (one line,
    never showing a password) otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError:  # (its text may hold a password: not shown)
        shown = "" if "@" in url else f" {url!r}"
        raise ValueError(f"base URL{shown} is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("a base URL must not contain a user name or password")
    if not url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError(f"base URL {url!r} is not a valid URL")
    try:
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"base URL {url!r} is not a valid URL: {exc}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"base URL {url!r} must not have a query or a fragment")
    if host and (parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK_HOSTS)):
        return url.rstrip("/")
    raise ValueError(
        f"base URL {url!r} must use https:// (plain http:// is only allowed for this "
        "computer: 127.0.0.1, ::1 or localhost)"
    )


def address_kind(address: str) -> str | None:
    """The kind of an IP address (a key of KIND_NAMES), None for a public one; ValueError
    when ``address`` is not an IP address. An IPv4-mapped IPv6 address counts as the IPv4
    address it carries."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "special"
    if ip.is_private or not ip.is_global:
        return "private"
    return None


def literal_kind(host: str) -> tuple[bool, str | None]:
    """(known, kind) of a URL's host without asking DNS: known for an IP literal and for
    ``localhost`` (and names under it); a name that must be resolved is (False, None)."""
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True, "loopback"
    try:
        return True, address_kind(host)
    except ValueError:
        return False, None
