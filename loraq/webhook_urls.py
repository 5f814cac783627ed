"""Which webhook URLs loraq may call, so that a user cannot make the server reach internal addresses (SSRF).

A URL must be `https://` on a host whose every address is public (not private, loopback, link-local such as
the cloud metadata address 169.254.169.254, shared, reserved or multicast), unless the operator lists its
host in LORAQ_WEBHOOK_ALLOWED_HOSTS (those may use http:// and any address). The API checks at registration
and the worker again before each attempt, since DNS may change; the worker then connects to the address it
checked, not to a second lookup's.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class WebhookURLError(ValueError):
    """Why a URL may not be called (the message is for the user)."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:  # unknown name, no DNS, a label too long, a NUL
        raise WebhookURLError(f"The webhook URL's host '{host}' does not resolve ({exc}).") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_address(url: str, allowed_hosts: frozenset[str]) -> str:
    """The address to connect to for `url`, once it passes the rules above; raises WebhookURLError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLError(f"The webhook URL is not a valid URL ({exc}).") from None
    host = (parts.hostname or "").lower()
    if not host or parts.scheme not in ("http", "https"):
        raise WebhookURLError("The webhook URL must be an absolute https:// URL.")
    if parts.username is not None or parts.password is not None:
        raise WebhookURLError("The webhook URL may not carry a user name or password.")
    allowed = host in allowed_hosts
    if parts.scheme != "https" and not allowed:
        raise WebhookURLError("The webhook URL must use https:// (http:// only for hosts the operator allows).")
    addresses = resolve(host, port or (443 if parts.scheme == "https" else 80))
    if not allowed:
        internal = [a for a in addresses if not _is_public(a)]
        if internal:
            raise WebhookURLError(
                f"The webhook URL's host '{host}' resolves to a non-public address ({', '.join(internal)}); "
                "loraq only calls public addresses, or hosts the operator allows (LORAQ_WEBHOOK_ALLOWED_HOSTS)."
            )
    return addresses[0]
