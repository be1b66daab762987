"""nginx in front of gunicorn: the config rendered from ``nginx.conf.template``, and how to run it.

gunicorn's ``gthread`` workers give each request a thread from a small pool
(workers × threads) until its body is read; a client that sends its headers and
then trickles the body holds that thread for as long as it likes, and a handful of
them leave nothing for ``/healthz``. nginx reads every request whole (headers and
body, buffered to memory or a temp file) under its own timeouts before gunicorn
sees it, so gunicorn's threads only ever serve complete requests.
docs/OPERATIONS.md ("Behind nginx") explains the settings.

``lookalike proxy`` (``cli/proxy.py``) renders the config into its own directory
(the nginx prefix: ``nginx.conf``, the pid file, the temp files) and runs nginx in
the foreground; ``make stack`` and docker-compose.yml both run it that way.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
UPSTREAM_TIMEOUT = 90
"""Seconds nginx waits on gunicorn: longer than gunicorn's worker timeout (60 s), so a
stuck request is ended by gunicorn (which logs it), not cut short here."""
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")


class ProxyError(RuntimeError):
    """nginx cannot be configured or found; the message says why."""


@dataclass(frozen=True)
class ProxyConfig:
    """Where nginx listens, where gunicorn is, and nginx's own directory."""

    listen: str
    """``host:port`` clients connect to (``127.0.0.1:8000``, ``0.0.0.0:8000``, ``[::]:8000``)."""
    upstream: str
    """gunicorn's ``host:port`` (a name such as ``api:8000`` is resolved once, when nginx starts)."""
    directory: Path
    """nginx's prefix: the rendered config, the pid file and the request-body temp files."""

    @property
    def conf_path(self) -> Path:
        return self.directory / "nginx.conf"


def check_address(value: str) -> str:
    """``value`` if it is ``host:port`` with a port in 1..65535; :class:`ValueError` saying why if not."""
    match = _ADDRESS.match(value)
    if match is None or not 1 <= int(match.group("port")) <= 65535:
        raise ValueError(f"{value!r} is not host:port (a port from 1 to 65535; IPv6 hosts in brackets)")
    return value


def render(config: ProxyConfig, settings: Settings) -> str:
    """The nginx config for ``config``; the body limit and client timeouts come from ``settings``."""
    values = {
        "listen": check_address(config.listen),
        "upstream": check_address(config.upstream),
        "prefix": str(config.directory.resolve()),
        # As root, nginx's workers would otherwise run as `nobody`, who may not reach
        # the temp directory under a private home; as another user the line is ignored.
        "user": "user root;\n" if os.geteuid() == 0 else "",
        "max_body_bytes": str(settings.max_request_bytes),
        "client_header_timeout": str(settings.proxy_client_header_timeout),
        "client_body_timeout": str(settings.proxy_client_body_timeout),
        "send_timeout": str(settings.proxy_send_timeout),
        "upstream_timeout": str(UPSTREAM_TIMEOUT),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATE.read_text())


def write_config(config: ProxyConfig, settings: Settings) -> Path:
    """Render the config into ``config.directory`` (made with its temp directories); its path."""
    text = render(config, settings)
    (config.directory / "tmp").mkdir(parents=True, exist_ok=True)
    config.conf_path.write_text(text)
    return config.conf_path


def nginx_binary() -> str:
    """nginx: on PATH, or Debian's ``/usr/sbin/nginx`` (not on a normal user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not found:
        raise ProxyError("nginx is not installed (Debian: apt-get install nginx; make setup installs it)")
    return found


def nginx_argv(config: ProxyConfig) -> list[str]:
    """nginx in the foreground with its prefix and config in ``config.directory``, errors on stderr.

    ``-e stderr``: the error log the binary was built with (``/var/log/nginx``) is not
    opened even before the config is read, so no root is needed.
    """
    return [nginx_binary(), "-p", str(config.directory.resolve()), "-c", str(config.conf_path.resolve()),
            "-e", "stderr"]
