"""A real v2ray core (Debian package `v2ray`, v2fly 4.34) for tests.

`V2rayCore` runs the server with the API (HandlerService + StatsService) and
VLESS/VMess/Trojan inbounds on free loopback ports; `open_client` runs a second
v2ray as a socks -> protocol client so a test moves real bytes through a user;
`BlobServer` serves a known number of bytes over local HTTP.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgeward.devfleet.blob import BlobHandler
from edgeward.devfleet.layout import v2ray_server_config

from .ports import free_port, wait_listening
from .rawcore import raw_uptime

INBOUND_TAGS = ("vless-in", "vmess-in", "trojan-in")
PROTOCOL_OF_TAG = {"vless-in": "vless", "vmess-in": "vmess", "trojan-in": "trojan"}
TAG_OF_PROTOCOL = {v: k for k, v in PROTOCOL_OF_TAG.items()}


def v2ray_binary() -> str | None:
    return shutil.which("v2ray")


def server_config(api_port: int, ports: dict[str, int]) -> dict:
    return v2ray_server_config("127.0.0.1", api_port, ports)


def _start_v2ray(config: dict, workdir: Path, name: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=1))
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
    try:
        return subprocess.Popen(
            [v2ray_binary() or "v2ray", "-config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()


def _kill(process: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass
class V2rayCore:
    """A v2ray server process with its API and inbounds on fixed loopback ports."""

    workdir: Path
    api_port: int = field(default_factory=free_port)
    ports: dict[str, int] = field(default_factory=lambda: {t: free_port() for t in INBOUND_TAGS})
    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "core not started"
        return self.process.pid

    @property
    def log_text(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 15.0) -> None:
        config = server_config(self.api_port, self.ports)
        self.process = _start_v2ray(config, self.workdir, "server")
        self._wait_api(timeout)

    def _wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"v2ray exited with {self.process.returncode}: {self.log_text}")
            try:
                raw_uptime(self.api_port)  # the API answers a real call
                for port in self.ports.values():
                    wait_listening(port, timeout=max(0.1, deadline - time.monotonic()))
                return
            except (OSError, TimeoutError) as exc:
                last_error = exc
                time.sleep(0.05)
        raise TimeoutError(f"v2ray API on {self.api_port} did not answer: {last_error}")

    def kill(self) -> None:
        """SIGKILL: the core forgets every API-added user and resets counters."""
        _kill(self.process)

    def stop(self) -> None:
        _kill(self.process, signal.SIGTERM)

    def restart(self) -> None:
        self.kill()
        self.start()


@dataclass
class ClientProxy:
    socks_port: int
    process: subprocess.Popen


def client_config(socks_port: int, server_port: int, protocol: str, secret: str) -> dict:
    if protocol == "vless":
        settings = {
            "vnext": [
                {
                    "address": "127.0.0.1",
                    "port": server_port,
                    "users": [{"id": secret, "encryption": "none"}],
                }
            ]
        }
    elif protocol == "vmess":
        settings = {
            "vnext": [
                {
                    "address": "127.0.0.1",
                    "port": server_port,
                    "users": [{"id": secret, "alterId": 0, "security": "auto"}],
                }
            ]
        }
    elif protocol == "trojan":
        settings = {"servers": [{"address": "127.0.0.1", "port": server_port, "password": secret}]}
    else:
        raise ValueError(f"no client for protocol {protocol!r}")
    outbound = {"tag": "proxy", "protocol": protocol, "settings": settings}
    if protocol == "vless":
        outbound["streamSettings"] = {"network": "tcp", "security": "none"}
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "tag": "socks",
                "listen": "127.0.0.1",
                "port": socks_port,
                "protocol": "socks",
                "settings": {"udp": False},
            }
        ],
        "outbounds": [outbound],
    }


@contextlib.contextmanager
def open_client(
    workdir: Path,
    core: V2rayCore,
    protocol: str,
    secret: str,
    *,
    tag: str | None = None,
    server_port: int | None = None,
) -> Iterator[ClientProxy]:
    """A second v2ray: socks5 on loopback -> `protocol` to the server's inbound."""
    port = server_port or core.ports[tag or TAG_OF_PROTOCOL[protocol]]
    socks_port = free_port()
    name = f"client-{protocol}-{socks_port}"
    process = _start_v2ray(client_config(socks_port, port, protocol, secret), workdir, name)
    try:
        wait_listening(socks_port, timeout=10)
        yield ClientProxy(socks_port=socks_port, process=process)
    finally:
        _kill(process)


class FetchFailed(Exception):
    """A download through a client proxy did not complete."""


def fetch_through(socks_port: int, url: str, timeout: float = 10.0) -> int:
    """Download url through the socks proxy; return the number of bytes received."""
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            str(timeout),
            "--socks5-hostname",
            f"127.0.0.1:{socks_port}",
            "--output",
            "/dev/null",
            "--write-out",
            "%{size_download}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 5,
    )
    if result.returncode != 0:
        raise FetchFailed(f"curl exit {result.returncode}: {result.stderr.strip()}")
    return int(result.stdout.strip() or 0)


class BlobServer:
    """A threaded HTTP server on loopback that serves a known number of bytes."""

    def __init__(self) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BlobHandler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> BlobServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, nbytes: int) -> str:
        return f"http://127.0.0.1:{self.port}/blob/{nbytes}"
