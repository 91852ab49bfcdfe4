"""Enrollment: this node gets its first certificate from central with a single-use token.

The private key is generated here and never leaves the node; only a CSR goes to
central (NodeService.Enroll over server-authenticated TLS: the node checks
central against the CA file it was given, central checks the token). The CA,
certificate and key (0600) are written into the state directory (under
systemd hardening the agent can write nothing else), then the config file.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import trio

from .config import AgentConfig, ConfigError, load, to_toml, validate
from .pki_files import install_pair, write_atomically
from .uplink import split_address

ENROLL_PATH = "/edgeward.v1.NodeService/Enroll"
TIMEOUT = 30.0


class EnrollError(Exception):
    """Enrollment failed; the message says why and what to do."""


def enrolled_config(
    base: AgentConfig, *, node_id: str, central: str, server_name: str = ""
) -> AgentConfig:
    """The config after enrollment: node id, central, and the PKI files in the state dir."""
    pki = Path(base.state_dir) / "pki"
    settings = dataclasses.replace(
        base.central,
        address=central,
        server_name=server_name or base.central.server_name,
        ca_file=str(pki / "ca.crt"),
        cert_file=str(pki / "node.crt"),
        key_file=str(pki / "node.key"),
    )
    return validate(dataclasses.replace(base, node_id=node_id, central=settings))


def enroll_node(
    *,
    central: str,
    token: str,
    node_id: str,
    ca_file: Path,
    config_path: Path,
    server_name: str = "",
) -> list[Path]:
    """Enroll; returns the files written. Raises EnrollError with a clear reason."""
    from edgeward.pki.certs import generate_key, key_pem, load_cert, make_csr
    from edgeward.pki.errors import PkiError

    try:
        base = load(config_path, check=False) if config_path.exists() else AgentConfig()
        config = enrolled_config(base, node_id=node_id, central=central, server_name=server_name)
        host, port = split_address(central)
    except (ConfigError, ValueError) as e:
        raise EnrollError(str(e)) from None
    cert_file = Path(config.central.cert_file)
    if cert_file.exists():
        raise EnrollError(
            f"this node is already enrolled ({cert_file} exists); remove it to enroll again"
        )
    try:
        ca_pem = Path(ca_file).read_bytes()
        key = generate_key()
        csr = make_csr(key, node_id)
    except OSError as e:
        raise EnrollError(f"cannot read the CA file {ca_file}: {e.strerror}") from None
    except PkiError as e:
        raise EnrollError(str(e)) from None
    response = trio.run(_ask_central, host, port, ca_file, server_name or host, node_id, token, csr)
    try:
        cert = load_cert(response.certificate_pem)
    except PkiError as e:
        raise EnrollError(f"central answered with an unusable certificate: {e}") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise EnrollError("central's certificate is not for the key this node generated")
    ca_target = Path(config.central.ca_file)
    try:
        cert_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(ca_target, ca_pem, 0o644)
        install_pair(
            cert_file, Path(config.central.key_file), response.certificate_pem, key_pem(key)
        )
        give_to_state_owner(
            Path(config.state_dir),
            [cert_file.parent, ca_target, cert_file, Path(config.central.key_file)],
        )
        config_path.parent.mkdir(parents=True, exist_ok=True)
        # The config holds no secret: keep the mode (and owner) the package gave it,
        # so the service user can still read it.
        existing = config_path.stat() if config_path.exists() else None
        mode = stat.S_IMODE(existing.st_mode) if existing else 0o644
        write_atomically(config_path, to_toml(config).encode(), mode)
        if existing is not None and os.geteuid() == 0:
            os.chown(config_path, existing.st_uid, existing.st_gid)
    except OSError as e:
        raise EnrollError(
            f"central signed the certificate but it could not be stored: {e} "
            "(the token is spent: ask for a new one)"
        ) from None
    return [ca_target, cert_file, Path(config.central.key_file), config_path]


def give_to_state_owner(state_dir: Path, paths: list[Path]) -> None:
    """Run as root (the usual way to enroll), hand the PKI files to whoever owns the
    state directory (the service user the package created): the daemon must read
    its key, and only it and root may."""
    if os.geteuid() != 0 or not state_dir.exists():
        return
    owner = state_dir.stat()
    for path in paths:
        os.chown(path, owner.st_uid, owner.st_gid)


async def _ask_central(
    host: str, port: int, ca_file: Path, server_name: str, node_id: str, token: str, csr: bytes
):
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    from edgeward.pki.tls import client_context
    from edgeward.proto import v1

    from .aio_bridge import GrpcClient, UnaryCall, open_island

    try:
        ssl_context = client_context(ca_file)
    except (OSError, ValueError) as e:
        raise EnrollError(f"the CA file {ca_file} is not a usable CA certificate: {e}") from None
    request = v1.EnrollRequest(node_id=node_id, token=token, csr_pem=csr)
    # The outcome leaves the island as a value: raised inside, it would come out of
    # trio-asyncio's nursery wrapped in exception groups.
    outcome: object = None
    async with open_island() as island:
        client = await GrpcClient.open(
            island, host, port, ssl_context=ssl_context, server_hostname=server_name
        )
        try:
            outcome = await client.call(UnaryCall(ENROLL_PATH, request, v1.EnrollResponse, TIMEOUT))
        except GRPCError as e:
            if e.status is Status.PERMISSION_DENIED:
                outcome = EnrollError(f"central refused the enrollment token: {e.message}")
            else:
                why = e.message or e.status.name
                outcome = EnrollError(f"central refused the enrollment: {why}")
        except (OSError, TimeoutError) as e:
            outcome = EnrollError(f"cannot reach central at {host}:{port}: {e}")
    if isinstance(outcome, EnrollError):
        raise outcome
    return outcome
