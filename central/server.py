"""Running central: storage, the mTLS node service, the enforcement and retention tickers.

`serve()` is the whole program minus signal handling and systemd, so tests
start and stop it in-process on port 0; `cli.py run` adds those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from edgeward.proto import v1
from edgeward.sdnotify import Notifier as SystemdNotifier
from edgeward.sdnotify import watchdog_interval

from . import link_store, retention, subscription
from .admin_service import AdminService, install_admin_identity
from .config import CentralConfig
from .identity import Identify, install_node_identity, pki_identify
from .open_storage import open_storage
from .storage import Storage
from .stream import NodeService

log = logging.getLogger("edgeward.central.server")

# How long a graceful stop waits for streams to finish the message in hand.
STOP_GRACE_SECONDS = 5.0


def pki_hooks(ca_dir) -> tuple[object, Identify, object, object]:
    """(ca_store, identify, enroller, renewer) backed by the CA directory."""
    from edgeward.pki import authority
    from edgeward.pki.errors import PkiError, TokenRejected
    from edgeward.pki.store import CAStore
    from edgeward.pki.verify import Verifier

    store = CAStore(ca_dir)

    async def enroller(request: v1.EnrollRequest) -> v1.EnrollResponse:
        try:
            cert_pem = await asyncio.to_thread(
                authority.enroll,
                store,
                request.node_id,
                request.token,
                request.csr_pem,
                datetime.now(UTC),
            )
        except TokenRejected as e:
            raise GRPCError(Status.PERMISSION_DENIED, str(e)) from None
        except PkiError as e:
            raise GRPCError(Status.INVALID_ARGUMENT, str(e)) from None
        return v1.EnrollResponse(certificate_pem=cert_pem, ca_pem=store.ca_pem)

    async def renewer(node_id: str, peer_der: bytes | None, csr_pem: bytes) -> v1.RenewResponse:
        if peer_der is None:
            raise ValueError("no peer certificate to renew")
        cert_pem = await asyncio.to_thread(
            authority.renew, store, peer_der, csr_pem, datetime.now(UTC)
        )
        return v1.RenewResponse(certificate_pem=cert_pem, chain_pem=store.ca_pem)

    return store, pki_identify(Verifier.from_store(store)), enroller, renewer


async def enforcement_ticker(
    storage: Storage, interval: float, systemd: SystemdNotifier, service: NodeService
) -> None:
    """Expiry is a matter of time, not of usage: check every user periodically."""
    beat = watchdog_interval()
    period = min(interval, beat) if beat else interval
    next_enforce = 0.0
    loop = asyncio.get_running_loop()
    while True:
        if loop.time() >= next_enforce:
            try:
                decisions = await storage.enforce()
            except Exception:
                log.exception("enforcement pass failed")
            else:
                if decisions:
                    log.info("enforcement: %d change(s)", len(decisions))
            next_enforce = loop.time() + interval
        systemd.watchdog()
        systemd.status(f"serving {len(service.sessions)} node stream(s)")
        await asyncio.sleep(period)


async def serve(
    config: CentralConfig,
    *,
    shutdown: asyncio.Event,
    ready: Callable[[int], None] | None = None,
    systemd: SystemdNotifier | None = None,
    storage: Storage | None = None,
) -> None:
    """Serve until `shutdown` is set; ready(port) once accepting (port 0 picks one).

    storage: an already open storage to serve from (kept open on return), so an
    in-process caller shares its change notifications; default: open config.database
    (a SQLite file, or PostgreSQL listening for the other replicas' changes).
    """
    from edgeward.pki.tls import server_context
    from edgeward.pki.verify import Verifier

    systemd = systemd or SystemdNotifier()
    ca_store, identify, enroller, renewer = pki_hooks(config.ca_dir)
    own_storage = storage is None
    if storage is None:
        try:
            storage = await open_storage(
                config.database, wg_pool=config.wireguard_pool, listen=True
            )
        except BaseException:
            ca_store.close()  # type: ignore[attr-defined]
            raise
    await retention.prepare_at_start(storage)  # partitions exist before any ingest
    service = NodeService(storage, enroller=enroller, renewer=renewer)  # type: ignore[arg-type]
    admin = AdminService(storage, service, ca_store, config.subscription_url)
    server = Server([service, admin])
    install_node_identity(server, identify)
    install_admin_identity(server, Verifier.from_store(ca_store))  # type: ignore[arg-type]
    # Client certificates are optional at the TLS layer so that Enroll works without
    # one; every other method is refused without a valid node certificate.
    ssl_context = server_context(
        config.cert, config.key, config.ca_dir / "ca.crt", require_client_cert=False
    )
    ticker = None
    pruning = None  # retention: monthly partitions ahead, old rollups pruned (retention.py)
    sharing = None  # node link states written for the other replicas (link_store.py)
    subscriptions = None
    try:
        sock = socket.create_server((config.host, config.port), reuse_port=False)
        port = sock.getsockname()[1]
        await server.start(sock=sock, ssl=ssl_context)
        if config.subscription_host:
            subscriptions = await subscription.start(
                storage, config.subscription_host, config.subscription_port
            )
            log.info("subscriptions on %s", subscriptions.sockets[0].getsockname())
        ticker = asyncio.create_task(
            enforcement_ticker(storage, config.enforce_interval, systemd, service)
        )
        pruning = asyncio.create_task(
            retention.retention_ticker(storage, config.rollup_months, config.delta_days)
        )
        replica = f"{socket.gethostname()}:{port}/{os.getpid()}"
        if storage.shares_replicas:
            sharing = asyncio.create_task(link_store.share_links(storage, service.links, replica))
        log.info("central listening on %s:%d", config.host, port)
        systemd.ready(f"listening on {config.host}:{port}")
        if ready is not None:
            ready(port)
        await shutdown.wait()
        systemd.stopping("stopping: finishing node streams")
        await service.stop(STOP_GRACE_SECONDS)
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), STOP_GRACE_SECONDS)
        except TimeoutError:
            log.warning("node streams did not finish within %ss", STOP_GRACE_SECONDS)
        if sharing is not None:  # the other replicas see these streams end now
            sharing.cancel()
            await link_store.flush(storage, service.links, replica)
    finally:
        if subscriptions is not None:
            subscriptions.close()
            await subscriptions.wait_closed()
        for task in (ticker, pruning, sharing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if own_storage:
            await storage.close()
        ca_store.close()  # type: ignore[attr-defined]
