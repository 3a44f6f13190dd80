"""Where a webhook may point: http(s) to a public address, unless private ones are allowed.

A webhook URL is typed by an admin but its host name is resolved by whoever controls its DNS, so
the check runs twice: when the webhook is saved (`validate_webhook_url`, from `Webhook.clean()`)
and again right before every send (`resolve_webhook_url`), whose addresses the sender then connects
to, so a name that turns private after the check (DNS rebinding) is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`addresses`), and what to ask for there."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, never empty
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def is_public(address: IPAddress) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None and not is_public(mapped):
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _resolve(host: str, port: int) -> list[str]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [str(literal)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValidationError(f"The host {host!r} does not resolve ({exc}).") from None
    # Order kept, duplicates dropped; the scope of an IPv6 link-local address is of no interest.
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


def resolve_webhook_url(url: str, *, allow_private: bool | None = None) -> Target:
    """Check `url` and resolve its host; raises ValidationError saying what is wrong."""
    if allow_private is None:
        allow_private = settings.WEBHOOK_ALLOW_PRIVATE
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"Not a valid URL ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValidationError("Only http:// and https:// URLs are allowed.")
    host = parts.hostname
    if not host:
        raise ValidationError("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("Credentials in the URL are not allowed; use the secret instead.")
    try:
        host = host.encode("idna").decode("ascii")  # an internationalized name, as DNS knows it
    except UnicodeError:
        raise ValidationError(f"The host {host!r} is not a valid host name.") from None
    port = port or DEFAULT_PORTS[scheme]
    addresses = _resolve(host, port)
    if not addresses:
        raise ValidationError(f"The host {host!r} does not resolve.")
    if not allow_private:
        for address in addresses:
            if not is_public(ipaddress.ip_address(address)):
                raise ValidationError(
                    f"The host {host!r} is (or resolves to) the non-public address {address}; "
                    "set WEBHOOK_ALLOW_PRIVATE=true to allow private, loopback and link-local targets."
                )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    # Spaces and non-ASCII characters percent-encoded; what is already encoded stays as it is.
    path = quote(path, safe="!#$%&'()*+,/:;=?@[]~")
    return Target(scheme=scheme, host=host, port=port, path=path, addresses=tuple(addresses))


def validate_webhook_url(url: str) -> None:
    """A validator: raises ValidationError unless `url` is an allowed webhook target now."""
    resolve_webhook_url(url)
