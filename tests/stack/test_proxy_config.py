"""The nginx config ``lookalike proxy`` renders: valid for the real nginx, limits from the settings."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import lookalike
from core.config import Settings
from stack.proxy import ProxyConfig, check_address, nginx_argv, render, write_config


def _directive(text: str, name: str) -> str:
    found = re.findall(rf"^[ \t]*{name}[ \t]+([^;{{\n]+);", text, flags=re.MULTILINE)
    assert len(found) == 1, (name, found)
    return found[0]


def test_the_rendered_config_passes_nginx_own_check(tmp_path: Path) -> None:
    config = ProxyConfig(listen="127.0.0.1:18000", upstream="127.0.0.1:18001", directory=tmp_path / "nginx")
    write_config(config, Settings())
    check = subprocess.run([*nginx_argv(config), "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


def test_body_limit_and_client_timeouts_come_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(max_image_bytes=100 * 1024 * 1024, proxy_client_header_timeout=7,
                        proxy_client_body_timeout=11, proxy_send_timeout=13)
    text = render(ProxyConfig("0.0.0.0:8000", "api:8000", tmp_path), settings)
    assert _directive(text, "client_max_body_size") == str(settings.max_request_bytes)
    assert (_directive(text, "client_header_timeout"), _directive(text, "client_body_timeout"),
            _directive(text, "send_timeout")) == ("7s", "11s", "13s")
    assert _directive(text, "listen") == "0.0.0.0:8000"
    assert _directive(text, "server") == "api:8000"
    assert _directive(text, "proxy_request_buffering") == "on"
    assert not re.search(r"\{\{\w+\}\}", text)  # every placeholder filled
    # The 413 body names the same limit nginx enforces.
    assert f'"limit_bytes": {settings.max_request_bytes}' in text


@pytest.mark.parametrize("value", ["8000", "localhost", "host:0", "host:70000", "::1:8000", "a b:80"])
def test_addresses_must_be_host_and_port(value: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        check_address(value)


@pytest.mark.parametrize("value", ["127.0.0.1:8000", "api:8000", "[::]:8000", "[::1]:80"])
def test_good_addresses_pass(value: str) -> None:
    assert check_address(value) == value


def test_the_command_refuses_a_bad_address_before_starting_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(lookalike, ["proxy", "--listen", "8000", "--dir", str(tmp_path / "px")],
                                env={"LOOKALIKE_HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert "'8000' is not host:port" in result.output
    assert not (tmp_path / "px").exists()
