"""The node daemon: one trio root nursery running everything the agent does.

`serve(config, task_status=..., shutdown_trigger=...)` is the whole program
minus signals and process setup, so tests run it in-process; `run_daemon`
(the `edgeward-agent run` command) adds SIGTERM/SIGINT (bounded graceful
drain), SIGHUP (re-read the config), systemd notify and stderr logging.

Tasks: CoreSync (users into the proxy core), the proxy sampler (counters into
journalled deltas), the local enforcer (expiry, spent leases), the uplink to
central (when configured), the control socket, and a watchdog that pings
systemd only while the journal answers.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from edgeward.proto import v1
from edgeward.sdnotify import Notifier, watchdog_interval

from .aio_bridge import AsyncioIsland, open_island
from .config import AgentConfig, ConfigError, load
from .control import serve_control
from .core_driver import CoreDriver
from .core_flavor import flavor_by_name
from .core_sync import CoreSync, Epoch, PassReport
from .deltas import ENGINE_PROXY, ENGINE_WIREGUARD
from .journal import Journal
from .node import Node, crashpoint, wall_ms
from .sampler import RoundReport, Sampler
from .uplink import Uplink, split_address

log = logging.getLogger("edgeward.agent.daemon")

LOCAL_CHECK_INTERVAL = 1.0
# While central is away, unsent deltas are merged every this many samples (the
# outbox then grows with users, not with time: issue 5's 7-day autonomy).
COMPACT_EVERY = 30


# ---------------------------------------------------------------- the daemon


@dataclass
class Daemon:
    """Handles to the running parts (tests and the control socket read them)."""

    config: AgentConfig
    node: Node
    core_sync: CoreSync
    sampler: Sampler
    uplink: Uplink | None
    wg_sync: Any = None  # WgSync when [wireguard] interfaces are configured
    started_at_ms: int = field(default_factory=wall_ms)
    reloads: int = 0

    def status(self) -> dict[str, Any]:
        sync = self.core_sync
        effective = self.node.effective()
        now = wall_ms()
        uplink = self.uplink.status if self.uplink else None
        applied = self.node.applied.get(ENGINE_PROXY, {})
        return {
            "node_id": self.config.node_id,
            "revision": self.node.revision,
            "epoch": sync.epoch.id if sync.epoch else None,
            "epoch_evidence": sync.epoch_evidence,
            "core_reachable": sync.reachable,
            "users_desired": len(self.node.desired.users),
            "users_served": sum(1 for u in effective.users if u.is_active(now)),
            "users_applied": len(applied),
            "connection": uplink.state if uplink else "off",
            "acked_seq": uplink.acked_seq if uplink else None,
            "last_ack_at_ms": uplink.last_ack_at_ms if uplink else None,
            "last_error": uplink.last_error if uplink else None,
            "samples": self.sampler.rounds,
            "last_sample": _round_summary(self.sampler.last_round),
            "sample_interval": self.config.sample_interval,
            "reloads": self.reloads,
        }

    async def full_status(self) -> dict[str, Any]:
        stats = await self.node.journal.outbox_stats()
        status = self.status()
        status.update(
            outbox_depth=stats.rows,
            outbox_bytes=stats.uplink + stats.downlink,
            journal_head_seq=stats.high_seq,
            journal_acked_seq=stats.acked_seq,
        )
        return status

    async def handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            return {"ok": True, "status": await self.full_status()}
        if command == "explain":
            user = request.get("user")
            if not isinstance(user, str) or not user:
                return {"ok": False, "error": "explain needs a user id"}
            return {"ok": True, "explain": self.node.explain(user)}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def applied_report(self) -> v1.AppliedReport | None:
        report = self.core_sync.last_pass
        if report is None:
            return None
        return v1.AppliedReport(
            revision=report.revision,
            users_desired=self.status()["users_served"],
            users_applied=len(self.node.applied.get(ENGINE_PROXY, {})),
            errors=[
                v1.ApplyError(user_id=user or "", engine=v1.Engine.PROXY, message=message)
                for user, message in report.problems()[:100]
            ],
        )

    def reload(self, config: AgentConfig) -> None:
        """Take a re-read config: intervals, reconnect and logging apply now;
        the journal path, core address and control socket need a restart."""
        for what in ("state_dir", "control_socket", "core"):
            if getattr(config, what) != getattr(self.config, what):
                log.warning("reload: %s changed; takes effect after a restart", what)
        self.config = config
        self.sampler.interval = config.sample_interval
        if self.uplink is not None:
            self.uplink.config = config
        setup_logging(config.log_level)
        self.reloads += 1
        log.info("configuration reloaded")


async def _on_pass(daemon_ref: list[Daemon], report: PassReport) -> None:
    if not daemon_ref:
        return
    daemon = daemon_ref[0]
    crashpoint("during-reconcile")
    node, sync = daemon.node, daemon.core_sync
    owner: dict[tuple[str, str], str] = {}
    for user in node.desired.users:
        for proxy in user.proxies:
            owner[proxy.key] = user.user_id
    held: dict[str, list[str]] = {}
    for key in sync.applied:
        user_id = owner.get(key)
        if user_id is not None:
            held.setdefault(user_id, []).append(f"{key[0]}/{key[1]}")
    await node.record_applied(ENGINE_PROXY, {u: sorted(v) for u, v in held.items()})
    for _user, message in report.problems():
        log.warning("core: %s", message)


def _round_summary(report: RoundReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "at_ms": report.sampled_at_ms,
        "engines": {
            engine: {"epoch": r.epoch, "deltas": r.deltas, "skipped": r.skipped}
            for engine, r in report.engines.items()
        },
    }


async def _local_enforcer(node: Node) -> None:
    while True:
        await node.check_local()
        await trio.sleep(LOCAL_CHECK_INTERVAL)


async def _watchdog(daemon: Daemon, notifier: Notifier) -> None:
    """WATCHDOG=1 only while the main loop turns and the journal answers."""
    period = min(watchdog_interval() or 5.0, 5.0)
    while True:
        with trio.move_on_after(max(period, 0.5)):
            status = await daemon.full_status()
            notifier.watchdog()
            notifier.status(
                f"{status['connection']}; {status['users_served']}/{status['users_desired']} "
                f"users served; outbox {status['outbox_depth']}"
            )
        await trio.sleep(period)


async def serve(
    config: AgentConfig,
    *,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: trio.Event | None = None,
    notifier: Notifier | None = None,
    island_hook: Callable[[AsyncioIsland], None] | None = None,
) -> None:
    """Run the node until shutdown_trigger is set (or cancelled).

    Raises JournalError at startup for a journal that is not usable (never
    replaced), ConfigError for settings that cannot work.
    """
    notifier = notifier or Notifier()
    shutdown_trigger = shutdown_trigger if shutdown_trigger is not None else trio.Event()
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    host, port = split_address(config.core.api)
    flavor = flavor_by_name(config.core.flavor)
    journal = await Journal.open(config.journal_path)
    async with journal:
        node = await Node.load(journal)
        # The sampler stores the core's start time (ms) as the proxy epoch's marker.
        marker = await journal.epoch_marker(ENGINE_PROXY)
        known = Epoch(marker, int(marker)) if marker and marker.isdigit() else None
        daemon_ref: list[Daemon] = []

        async def on_pass(report: PassReport) -> None:
            await _on_pass(daemon_ref, report)

        async with open_island() as island:
            if island_hook is not None:
                island_hook(island)
            driver = await CoreDriver.open(
                island, host, port, flavor, concurrency=config.core.concurrency
            )
            sync = CoreSync(
                driver,
                desired=node.effective(),
                poll_interval=config.core.poll_interval,
                known_epoch=known,
                on_pass=on_pass,
            )
            node.subscribe(sync.set_desired)
            wg = wg_sync = None
            if config.wireguard.interfaces:
                from .wg_sync import WgSync
                from .wireguard import WireGuard

                wg = WireGuard()

                async def on_wg_pass(report: Any) -> None:
                    # WgSync keeps the (interface, public key) pairs the devices hold.
                    held: set[tuple[str, str]] = getattr(wg_sync, "_held", set())
                    owners = {p.key: u.user_id for u in node.desired.users for p in u.wireguard}
                    users: dict[str, list[str]] = {}
                    for key in held:
                        if key in owners:
                            users.setdefault(owners[key], []).append(f"{key[0]}/{key[1]}")
                    await node.record_applied(
                        ENGINE_WIREGUARD, {u: sorted(v) for u, v in users.items()}
                    )

                wg_sync = WgSync(
                    wg,
                    desired=node.effective(),
                    interfaces=config.wireguard.interfaces,
                    on_pass=on_wg_pass,
                )
                node.subscribe(wg_sync.set_desired)

            async def after_sample(report: RoundReport) -> None:
                await node.check_local()
                offline = uplink is None or uplink.status.state != "connected"
                if offline and sampler.rounds % COMPACT_EVERY == 0:
                    saved = await node.compact_outbox()
                    if saved:
                        log.info("outbox compacted: %d rows merged", saved)

            sampler = Sampler(
                journal,
                desired=lambda: node.desired,
                core=driver,
                wg=wg,
                wg_interfaces=(lambda: config.wireguard.interfaces) if wg else None,
                interval=config.sample_interval,
                after_sample=after_sample,
                commit=node.commit_sample,
            )
            uplink = None
            if config.central.address:
                uplink = Uplink(
                    node,
                    config,
                    island,
                    core_epoch=lambda: sync.epoch.id if sync.epoch else "",
                )
            daemon = Daemon(config, node, sync, sampler, uplink, wg_sync)
            daemon_ref.append(daemon)
            if uplink is not None:
                uplink.applied_report = daemon.applied_report
            async with trio.open_nursery() as nursery:
                await nursery.start(sync.run)
                if wg_sync is not None:
                    await nursery.start(wg_sync.run)
                await nursery.start(sampler.run)
                nursery.start_soon(_local_enforcer, node)
                if uplink is not None:
                    nursery.start_soon(uplink.run)
                await nursery.start(serve_control, config.control_socket, daemon.handle_control)
                nursery.start_soon(_watchdog, daemon, notifier)
                log.info(
                    "edgeward-agent %s serving (revision %d, %d users)",
                    config.node_id, node.revision, len(node.desired.users),
                )  # fmt: skip
                notifier.ready(f"serving {len(node.desired.users)} users")
                task_status.started(daemon)
                await shutdown_trigger.wait()
                notifier.stopping("stopping: last sample, draining the outbox")
                log.info("stopping: last sample, then up to %ss for central", config.stop_grace)
                with trio.move_on_after(max(config.stop_grace, 0.1)):
                    await sampler.sample_once()
                if uplink is not None:
                    await uplink.stop(config.stop_grace)
                nursery.cancel_scope.cancel()
    log.info("stopped")


# ---------------------------------------------------------------- the process


class _PriorityFilter(logging.Filter):
    # journald reads "<N>" (syslog priority) at the start of each stderr line.
    LEVELS = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}

    def filter(self, record: logging.LogRecord) -> bool:
        record.priority = self.LEVELS.get(record.levelno, 2)
        return True


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_edgeward", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_PriorityFilter())
        handler.setFormatter(logging.Formatter("<%(priority)d>%(name)s: %(message)s"))
        handler._edgeward = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())


async def run_daemon(config_path: Path) -> None:
    """`edgeward-agent run`: serve with signals (TERM/INT stop, HUP reloads) and systemd."""
    config = load(config_path)
    setup_logging(config.log_level)
    notifier = Notifier()
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(
                lambda task_status: serve(
                    config, task_status=task_status, shutdown_trigger=shutdown, notifier=notifier
                )
            )

            async def handle_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        notifier.reloading()
                        try:
                            daemon.reload(load(config_path))
                        except ConfigError as e:
                            log.error("reload refused, keeping the running config: %s", e)
                        notifier.ready("reloaded")
                    else:
                        log.info("signal %s: stopping", signal.Signals(signum).name)
                        shutdown.set()
                        return

            nursery.start_soon(handle_signals)
    notifier.close()
