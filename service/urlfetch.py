"""Fetching a query image by URL without becoming an SSRF proxy.

Off unless ``settings.url_fetch_enabled``. When on, a URL is fetched only if

* its scheme is http or https and it names a host on the allow-list
  (``settings.url_fetch_allowed_hosts``: exact names, or ``*.example.com`` for
  sub-domains) — an empty list allows nothing;
* *every* address the host resolves to is public: private, loopback, link-local,
  site-local, multicast, reserved and unspecified addresses are refused, and an IPv6
  address that embeds an IPv4 one a gateway would reach (IPv4-mapped, 6to4, NAT64)
  is judged by that IPv4 address (see :func:`is_public_address`);
* and the connection then goes to the address that was checked (pinned), with the
  original host name for the Host header and TLS verification, so a DNS answer
  that changes between check and connect (rebinding) cannot redirect it.

Redirects are not followed. The body is read in chunks up to ``max_bytes`` and the
whole exchange must finish within ``timeout`` seconds.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]
AddressPolicy = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]
_CHUNK = 64 * 1024


class UrlFetchError(ValueError):
    """The URL was refused or could not be fetched; ``refused`` tells which."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (both families)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
"""RFC 6052: the last 32 bits are the IPv4 address a NAT64 gateway connects to."""
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
"""RFC 8215: network-specific translation prefixes, never global."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that traffic to ``address`` ends up at, for the forms that embed one.

    IPv4-mapped (``::ffff:a.b.c.d``: the host's own IPv4 stack), 6to4 (``2002:AABB:CCDD::/48``:
    a relay forwards to ``A.B.C.D``) and the NAT64 well-known prefix (``64:ff9b::a.b.c.d``).
    ``2002:a9fe:a9fe::`` is the cloud metadata address 169.254.169.254, so these must be
    judged by the IPv4 address, not by the (nominally global) IPv6 prefix.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for globally routable unicast addresses.

    IPv6 site-local (``fec0::/10``, deprecated but still routed inside some networks) and
    local-use NAT64 are private; an address that embeds IPv4 (:func:`embedded_ipv4`) is
    public only if the IPv4 address is. Teredo (``2001::/32``) is refused as part of
    ``2001::/23``, which the standard library already counts as private.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local or address in _NAT64_LOCAL_USE:
            return False
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified
    )


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


@dataclass
class UrlFetcher:
    """Fetches small images from allowed public hosts (see the module docstring)."""

    allowed_hosts: Sequence[str]
    max_bytes: int
    timeout: float = 5.0
    resolver: Resolver = field(default=resolve_host)
    address_allowed: AddressPolicy = field(default=is_public_address)

    def fetch(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UrlFetchError(f"only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}",
                                refused=True)
        host = parts.hostname
        if not host:
            raise UrlFetchError("the URL has no host", refused=True)
        if parts.username or parts.password:
            raise UrlFetchError("URLs with credentials are refused", refused=True)
        if not host_allowed(host, self.allowed_hosts):
            raise UrlFetchError(f"host {host!r} is not on the URL fetch allow-list", refused=True)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise UrlFetchError(f"bad port in URL: {exc}", refused=True) from exc
        address = self._checked_address(host, port)
        deadline = time.monotonic() + self.timeout
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn = self._connection(parts.scheme, host, address, port)
        try:
            conn.request("GET", path, headers={"Host": parts.netloc.rpartition("@")[2],
                                               "Accept": "image/*", "User-Agent": "lookalike-urlfetch"})
            response = conn.getresponse()
            if response.status != 200:
                raise UrlFetchError(f"{host} answered HTTP {response.status} (redirects are not followed)",
                                    refused=False)
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise UrlFetchError(f"remote image is {int(declared):,} bytes, more than {self.max_bytes:,}",
                                    refused=False)
            return self._read_capped(conn, response, deadline)
        except (OSError, http.client.HTTPException) as exc:
            raise UrlFetchError(f"fetching {host} failed: {exc}", refused=False) from exc
        finally:
            conn.close()

    def _checked_address(self, host: str, port: int) -> str:
        try:
            addresses = self.resolver(host, port)
        except OSError as exc:
            raise UrlFetchError(f"host {host!r} does not resolve: {exc}", refused=False) from exc
        if not addresses:
            raise UrlFetchError(f"host {host!r} does not resolve", refused=False)
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if not self.address_allowed(address):
                raise UrlFetchError(f"host {host!r} resolves to the non-public address {address}",
                                    refused=True)
        return addresses[0]

    def _connection(self, scheme: str, host: str, address: str, port: int) -> http.client.HTTPConnection:
        if scheme == "https":
            return _PinnedHTTPSConnection(address, port, server_hostname=host, timeout=self.timeout)
        return http.client.HTTPConnection(address, port, timeout=self.timeout)

    def _read_capped(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
                     deadline: float) -> bytes:
        """Read whatever arrives (read1), never waiting past the deadline for more."""
        chunks: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UrlFetchError(f"fetching took longer than {self.timeout:g} s", refused=False)
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            try:
                chunk = response.read1(_CHUNK)
            except TimeoutError as exc:
                raise UrlFetchError(f"fetching took longer than {self.timeout:g} s", refused=False) from exc
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise UrlFetchError(f"remote image is larger than {self.max_bytes:,} bytes", refused=False)
            chunks.append(chunk)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, verifying the certificate for the original host name."""

    def __init__(self, address: str, port: int, *, server_hostname: str, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=ssl.create_default_context())
        self._server_hostname = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_hostname)  # type: ignore[attr-defined]
