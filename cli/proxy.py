"""``lookalike proxy``: nginx in front of ``lookalike serve``, in the foreground.

Renders ``stack/nginx.conf.template`` (body limit from the settings' largest accepted
request, client timeouts from ``LOOKALIKE_PROXY_*``) into ``--dir`` and replaces this
process with nginx (``daemon off``), as ``lookalike serve`` does with gunicorn. Both
``make stack`` and docker-compose.yml run it; docs/OPERATIONS.md ("Behind nginx") says why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cli.context import CliContext
from stack.proxy import ProxyConfig, ProxyError, check_address, nginx_argv, write_config


def _address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.option("--listen", default="127.0.0.1:8000", show_default=True, callback=_address,
              help="host:port clients connect to.")
@click.option("--upstream", default="127.0.0.1:8001", show_default=True, callback=_address,
              help="host:port of `lookalike serve` (gunicorn); the defaults are the stack's layout: "
                   "`lookalike serve --bind 127.0.0.1:8001` behind nginx on 8000.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="nginx's directory: config, pid file, request-body temp files [default: <home>/proxy].")
@click.pass_obj
def proxy(ctx: CliContext, listen: str, upstream: str, directory: Path | None) -> None:
    """Run nginx in front of the API: buffers whole requests, so slow clients cannot stall gunicorn."""
    config = ProxyConfig(listen=listen, upstream=upstream, directory=directory or ctx.settings.home / "proxy")
    try:
        argv = nginx_argv(config)
    except ProxyError as exc:
        raise click.ClickException(str(exc)) from exc
    write_config(config, ctx.settings)
    click.echo(f"proxy: nginx on http://{listen} in front of http://{upstream} (config {config.conf_path})",
               err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
