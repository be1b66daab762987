"""The client's address and scheme behind a reverse proxy, believed only from the proxy.

Behind nginx (``lookalike proxy``, docs/OPERATIONS.md "Behind nginx") every request
reaches gunicorn from the proxy's address; the proxy names the real client in
``X-Forwarded-For`` and the scheme it was reached by in ``X-Forwarded-Proto``.
Anyone can send those headers, so they are applied only when the direct peer is one
of ``LOOKALIKE_TRUSTED_PROXIES``; from any other peer they are ignored. Applied, they
rewrite ``REMOTE_ADDR`` and ``wsgi.url_scheme`` in the WSGI environ itself (Werkzeug's
``ProxyFix``, one hop: the value the trusted proxy set), so ``request.remote_addr`` and
gunicorn's access log (``%(h)s``, read from the same environ) show the real client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.middleware.proxy_fix import ProxyFix

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """WSGI middleware: ``X-Forwarded-For`` / ``-Proto`` honoured only from ``networks``."""

    def __init__(self, app: WSGIApplication, networks: Sequence[Network]) -> None:
        self.app = app
        self.networks = tuple(networks)
        self._fixed = ProxyFix(app, x_for=1, x_proto=1)

    def trusts(self, address: str) -> bool:
        """Whether a peer at ``address`` is one of the trusted proxies (IPv4-mapped IPv6 too)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False  # a Unix socket peer has no address
        candidates: list[Any] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(candidate in network for candidate in candidates for network in self.networks)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.trusts(environ.get("REMOTE_ADDR", "")):
            return self._fixed(environ, start_response)
        return self.app(environ, start_response)
