"""Two WireGuard interfaces in two network namespaces, joined by a veth pair.

`wg_pair` (userspace: one wireguard-go per namespace) and `kernel_wg_pair`
(kernel WireGuard; only inside the tests/vm QEMU VM) give a `WgPair`: each
end has its namespace, interface, device key and listen port configured and
its tunnel address up, but no peers; tests add peers with the driver under
test or with the independent `wg` tool (`connect_with_wg_tool`).

Addresses are documentation ranges, private to the namespaces: the veth
underlay is 192.0.2.0/24, the tunnel 198.51.100.0/24. Names are unique per
use (the UAPI socket directory /var/run/wireguard is global to all
namespaces). Everything is removed afterwards, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

UAPI_DIR = Path("/var/run/wireguard")
WGVM_ENV = "EDGEWARD_WGVM"  # set by tests/vm/wgvm.sh inside the VM
CMD_TIMEOUT = 15.0
SOCKET_WAIT = 10.0


def run(*args: str, input: str | None = None, check: bool = True) -> str:
    """Run a command with a time bound; raise with its stderr when it fails."""
    proc = subprocess.run(
        args, input=input, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *args: str, input: str | None = None, check: bool = True) -> str:
    return run("ip", "netns", "exec", ns, *args, input=input, check=check)


def kernel_wireguard_available() -> bool:
    return Path("/sys/module/wireguard").exists()


def in_wgvm() -> bool:
    """Inside the project's QEMU VM with kernel WireGuard loaded."""
    return os.environ.get(WGVM_ENV) == "1" and kernel_wireguard_available()


def missing_requirements(kind: str) -> str | None:
    """Why a pair of this kind cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, WireGuard interfaces); CI runs as root"
    binaries = ["ip", "wg", "ping"] + (["wireguard-go"] if kind == "userspace" else [])
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        debian = "iproute2 wireguard-tools iputils-ping wireguard-go"
        return f"{', '.join(missing)} not installed (Debian packages: {debian})"
    if kind == "kernel" and not in_wgvm():
        return f"kernel WireGuard runs only inside the tests/vm QEMU VM ({WGVM_ENV}=1)"
    return None


@dataclass
class WgEnd:
    name: str  # "a" or "b"
    ns: str
    iface: str
    veth: str
    underlay: str
    tunnel: str
    listen_port: int
    private_key: str = ""
    public_key: str = ""
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.underlay}:{self.listen_port}"

    @property
    def tunnel_cidr(self) -> str:
        return f"{self.tunnel}/32"


@dataclass
class WgPair:
    kind: str  # "userspace" or "kernel"
    a: WgEnd
    b: WgEnd
    logdir: Path
    retired_pids: list[int] = field(default_factory=list)

    def ends(self) -> tuple[WgEnd, WgEnd]:
        return self.a, self.b

    def other(self, end: WgEnd) -> WgEnd:
        return self.b if end is self.a else self.a

    def wg(self, end: WgEnd, *args: str, input: str | None = None) -> str:
        return in_ns(end.ns, "wg", *args, input=input)

    def wg_dump_peers(self, end: WgEnd) -> dict[str, dict]:
        """`wg show IF dump`, parsed: public key -> fields (an independent reader)."""
        lines = self.wg(end, "show", end.iface, "dump").splitlines()
        peers = {}
        for line in lines[1:]:  # the first line is the device
            pub, psk, endpoint, allowed, handshake, rx, tx, _keepalive = line.split("\t")
            peers[pub] = {
                "preshared": psk != "(none)",
                "endpoint": endpoint,
                "allowed_ips": () if allowed == "(none)" else tuple(allowed.split(",")),
                "last_handshake": int(handshake),
                "rx_bytes": int(rx),
                "tx_bytes": int(tx),
            }
        return peers

    async def read_checked_by_wg(self, end: WgEnd, read: Callable[[], Awaitable[list]]) -> list:
        """Call `read` (a driver's peer listing) between two `wg show dump`
        readings and check it against them: same peers and allowed IPs, and
        counters/handshake within [before, after] (a keepalive may pass)."""
        before = self.wg_dump_peers(end)
        peers = await read()
        after = self.wg_dump_peers(end)
        assert {p.public_key for p in peers} == set(before) == set(after)
        assert len(peers) == len(after)
        for p in peers:
            old, new = before[p.public_key], after[p.public_key]
            assert sorted(p.allowed_ips) == sorted(new["allowed_ips"])
            assert p.has_preshared_key == new["preshared"]
            assert old["rx_bytes"] <= p.rx_bytes <= new["rx_bytes"]
            assert old["tx_bytes"] <= p.tx_bytes <= new["tx_bytes"]
            assert old["last_handshake"] <= int(p.last_handshake or 0) <= new["last_handshake"]
        return peers

    def ping(
        self, src: WgEnd, dst: str, count: int = 3, size: int = 56, deadline: int | None = None
    ) -> bool:
        """True when every echo came back within `deadline` seconds (default
        3 + count: room for the first handshake). Expected failures pass a
        short deadline, since a failing ping waits all of it."""
        deadline = deadline or 3 + count
        proc = subprocess.run(
            ["ip", "netns", "exec", src.ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
             "-s", str(size), "-W", "1", "-w", str(deadline), dst],
            capture_output=True, text=True, timeout=CMD_TIMEOUT + deadline, check=False,
        )  # fmt: skip
        return proc.returncode == 0

    def connect_with_wg_tool(self) -> None:
        """Make each end the other's peer using wireguard-tools' `wg set`."""
        for end in self.ends():
            peer = self.other(end)
            self.wg(end, "set", end.iface, "peer", peer.public_key,
                    "endpoint", peer.endpoint, "allowed-ips", peer.tunnel_cidr)  # fmt: skip

    def recreate(self, end: WgEnd) -> None:
        """Destroy the end's interface and build a fresh one with the same
        name, key and addresses (all peers gone, as after a reboot)."""
        if self.kind == "userspace":
            assert end.proc is not None
            self.retired_pids.append(end.proc.pid)
            stop_process(end.proc)
            remove_socket(end.iface)
        else:
            ip_batch(end.ns, f"link del {end.iface}")
        create_interface(self.kind, end, self.logdir)
        configure_interface(end, self.logdir)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def remove_socket(iface: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (UAPI_DIR / f"{iface}.sock").unlink()


def create_interface(kind: str, end: WgEnd, logdir: Path) -> None:
    if kind == "kernel":
        ip_batch(end.ns, f"link add {end.iface} type wireguard")
        return
    end.log = logdir / f"{end.iface}.log"
    with open(end.log, "ab") as log:
        end.proc = subprocess.Popen(
            ["ip", "netns", "exec", end.ns, "env", "WG_PROCESS_FOREGROUND=1",
             "LOG_LEVEL=error", "wireguard-go", "-f", end.iface],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    sock = UAPI_DIR / f"{end.iface}.sock"
    deadline = time.monotonic() + SOCKET_WAIT
    while not sock.exists():
        if end.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"wireguard-go {end.iface} gave no UAPI socket (exit {end.proc.poll()}): "
                f"{end.log.read_text(errors='replace')[-500:]}"
            )
        time.sleep(0.02)


def configure_interface(end: WgEnd, keydir: Path) -> None:
    """Device key, listen port, tunnel address, link up; no peers."""
    keyfile = keydir / f"{end.iface}.key"  # a file: a bare VM /dev has no /dev/stdin
    keyfile.touch(mode=0o600)
    keyfile.write_text(end.private_key + "\n")
    in_ns(end.ns, "wg", "set", end.iface, "private-key", str(keyfile),
          "listen-port", str(end.listen_port))  # fmt: skip
    ip_batch(end.ns, f"addr add {end.tunnel}/24 dev {end.iface}", f"link set {end.iface} up")


def ip_batch(ns: str | None, *commands: str, check: bool = True) -> None:
    """Several `ip` commands in one process (process starts are slow in the VM)."""
    where = ("-n", ns) if ns else ()
    flags = () if check else ("-force",)
    run("ip", *where, *flags, "-batch", "-", input="\n".join(commands) + "\n", check=check)


@contextlib.contextmanager
def wg_pair_setup(kind: str = "userspace") -> Iterator[WgPair]:
    """Build a pair; tear everything down on exit, whatever happened."""
    tag = secrets.token_hex(3)
    ends = [
        WgEnd(name=side, ns=f"ewt-{tag}-{side}", iface=f"ewg{tag}{side}", veth=f"ewv{tag}{side}",
              underlay=f"192.0.2.{n}", tunnel=f"198.51.100.{n}", listen_port=51819 + n)
        for n, side in ((1, "a"), (2, "b"))
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"ewt-{tag}-") as logdir:
        pair = WgPair(kind, ends[0], ends[1], Path(logdir))
        try:
            a, b = ends
            veth = f"link add {a.veth} netns {a.ns} type veth peer name {b.veth} netns {b.ns}"
            ip_batch(None, f"netns add {a.ns}", f"netns add {b.ns}", veth)
            for end in ends:
                ip_batch(end.ns, "link set lo up", f"addr add {end.underlay}/24 dev {end.veth}",
                         f"link set {end.veth} up")  # fmt: skip
                end.private_key = run("wg", "genkey").strip()
                end.public_key = run("wg", "pubkey", input=end.private_key + "\n").strip()
                create_interface(kind, end, pair.logdir)
                configure_interface(end, pair.logdir)
            yield pair
        finally:
            teardown(pair)


def teardown(pair: WgPair) -> None:
    for end in pair.ends():
        if end.proc is not None:
            stop_process(end.proc)
        remove_socket(end.iface)
    ip_batch(None, *(f"netns del {end.ns}" for end in pair.ends()), check=False)


def _pair_fixture(kind: str) -> Iterator[WgPair]:
    reason = missing_requirements(kind)
    if reason:
        pytest.skip(reason)
    with wg_pair_setup(kind) as pair:
        yield pair


@pytest.fixture
def wg_pair() -> Iterator[WgPair]:
    """Two wireguard-go interfaces in two namespaces over a veth pair."""
    yield from _pair_fixture("userspace")


@pytest.fixture
def kernel_wg_pair() -> Iterator[WgPair]:
    """Two kernel WireGuard interfaces in two namespaces (inside tests/vm only)."""
    yield from _pair_fixture("kernel")
