"""The core driver against a real v2ray (v2fly 4.34) moving real bytes."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import trio
from grpclib.exceptions import GRPCError

from edgeward.agent.aio_bridge import open_island
from edgeward.agent.core_driver import CoreDriver, CoreUnavailable, Op
from edgeward.agent.core_flavor import V2FLY
from edgeward.agent.model import DesiredState, DesiredUser, ProxyProtocol, ProxyUser
from edgeward.agent.reconcile import Change, reconcile_proxies
from tests.support.rawcore import raw_add_vless, raw_query_stats
from tests.support.v2ray import FetchFailed, fetch_through, open_client

NBYTES = 300_000


def new_user(protocol: ProxyProtocol, tag: str, email: str) -> ProxyUser:
    secret = str(uuid.uuid4()) if protocol is not ProxyProtocol.TROJAN else uuid.uuid4().hex
    return ProxyUser(tag, protocol, email, secret)


async def fetch(socks_port: int, url: str) -> int:
    return await trio.to_thread.run_sync(fetch_through, socks_port, url, 10.0)


async def raw(fn, *args):
    """The raw helpers run their own asyncio loop: keep it off the island's thread."""
    return await trio.to_thread.run_sync(fn, *args)


async def test_three_protocols_bytes_flow_then_removal_cuts_new_connections(
    v2ray_core, http_blob_server, tmp_path
):
    users = {
        "vless": new_user(ProxyProtocol.VLESS, "vless-in", "alice@vless"),
        "vmess": new_user(ProxyProtocol.VMESS, "vmess-in", "bob@vmess"),
        "trojan": new_user(ProxyProtocol.TROJAN, "trojan-in", "carol@trojan"),
    }
    desired = DesiredState(
        revision=1, users=tuple(DesiredUser(f"u-{p}", (u,)) for p, u in users.items())
    )
    async with open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        report = await driver.apply(reconcile_proxies(desired, [], now_ms=0))
        assert report.errors == []
        assert sorted(c.user_id for c in report.added) == ["u-trojan", "u-vless", "u-vmess"]

        for protocol, user in users.items():
            with open_client(tmp_path, v2ray_core, protocol, user.secret) as client:
                assert await fetch(client.socks_port, http_blob_server.url(NBYTES)) == NBYTES
        stats = await driver.query_stats("user>>>alice@vless>>>")
        assert stats["user>>>alice@vless>>>traffic>>>downlink"] >= NBYTES
        # The independent raw client sees the same counter.
        seen = await raw(raw_query_stats, v2ray_core.api_port, "user>>>alice@vless>>>")
        assert seen["user>>>alice@vless>>>traffic>>>downlink"] >= NBYTES

        # alice is no longer desired: the plan removes her, a new connection fails.
        remaining = DesiredState(revision=2, users=desired.users[1:])
        plan = reconcile_proxies(remaining, list(users.values()), now_ms=0)
        assert [c.item.email for c in plan.removes] == ["alice@vless"]
        report = await driver.apply(plan)
        assert report.errors == [] and len(report.removed) == 1
        with (
            open_client(tmp_path, v2ray_core, "vless", users["vless"].secret) as client,
            pytest.raises(FetchFailed),
        ):
            await fetch(client.socks_port, http_blob_server.url(NBYTES))
        with open_client(tmp_path, v2ray_core, "vmess", users["vmess"].secret) as client:
            assert await fetch(client.socks_port, http_blob_server.url(NBYTES)) == NBYTES


async def test_already_exists_and_not_found_are_idempotent(v2ray_core, http_blob_server, tmp_path):
    user = new_user(ProxyProtocol.VLESS, "vless-in", "dave@vless")
    change = Change("u-dave", user)
    async with open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        for _ in range(2):
            report = await driver.add_users([change])
            assert (report.added, report.errors) == ([change], [])
        # The core really has it: a raw add of the same email is refused.
        with pytest.raises(GRPCError, match="already exists"):
            await raw(
                raw_add_vless, v2ray_core.api_port, "vless-in", "dave@vless", str(uuid.uuid4())
            )
        for _ in range(2):
            report = await driver.remove_users([change])
            assert (report.removed, report.errors) == ([change], [])
        # Gone: now the raw add succeeds.
        await raw(raw_add_vless, v2ray_core.api_port, "vless-in", "dave@vless", user.secret)


async def test_already_exists_with_another_uuid_is_replaced(v2ray_core, http_blob_server, tmp_path):
    stale = str(uuid.uuid4())
    await raw(raw_add_vless, v2ray_core.api_port, "vless-in", "erin@vless", stale)
    fresh = ProxyUser("vless-in", ProxyProtocol.VLESS, "erin@vless", str(uuid.uuid4()))
    async with open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        report = await driver.add_users([Change("u-erin", fresh)])
        assert report.errors == [] and len(report.added) == 1
    with open_client(tmp_path, v2ray_core, "vless", fresh.secret) as client:
        assert await fetch(client.socks_port, http_blob_server.url(1000)) == 1000
    with open_client(tmp_path, v2ray_core, "vless", stale) as client, pytest.raises(FetchFailed):
        await fetch(client.socks_port, http_blob_server.url(1000))


async def test_other_core_errors_carry_core_message_and_user(v2ray_core):
    good = new_user(ProxyProtocol.VLESS, "vless-in", "frank@vless")
    lost = new_user(ProxyProtocol.VLESS, "no-such-in", "gina@vless")
    shadow = ProxyUser("ss-in", ProxyProtocol.SHADOWSOCKS, "hal@ss", "pw", cipher="aes-128-gcm")
    async with open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        report = await driver.add_users(
            [Change("u-frank", good), Change("u-gina", lost), Change("u-hal", shadow)]
        )
    assert [c.user_id for c in report.added] == ["u-frank"]
    by_user = {e.change.user_id: e for e in report.errors}
    assert by_user["u-gina"].op is Op.ADD
    assert "handler not found: no-such-in" in by_user["u-gina"].message
    assert "user 'u-gina' 'gina@vless' on inbound 'no-such-in'" in str(by_user["u-gina"])
    assert "v2fly cannot add shadowsocks users" in by_user["u-hal"].message
    assert not report.unavailable


async def test_xray_only_rpcs_are_gated_by_unimplemented(v2ray_core):
    # A flavor that believes the core can list: v2fly answers UNIMPLEMENTED,
    # which the driver turns into "not supported" and remembers.
    optimistic = dataclasses.replace(V2FLY, can_list_users=True)
    async with open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, optimistic)
        assert await driver.inbound_users("vless-in") is None
        assert await driver.list_inbound_tags() is None
        assert await driver.inbound_users_count("vless-in") is None
        assert await driver.observe_users(["vless-in"]) is None
        # "already exists." without a listing falls back to replace.
        user = new_user(ProxyProtocol.VLESS, "vless-in", "ivy@vless")
        await driver.add_users([Change("u", user)])
        report = await driver.add_users([Change("u", user)])
        assert report.errors == [] and len(report.added) == 1
        # And the real flavor never even asks.
        plain = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        assert await plain.observe_users(["vless-in"]) is None


async def test_core_down_is_unavailable_not_a_user_error(v2ray_core):
    user = new_user(ProxyProtocol.VLESS, "vless-in", "jack@vless")
    async with open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        assert (await driver.sys_stats()).uptime >= 0
        v2ray_core.kill()
        with pytest.raises(CoreUnavailable):
            await driver.sys_stats()
        report = await driver.add_users([Change("u-jack", user)])
        assert report.unavailable and report.added == []
        await trio.to_thread.run_sync(v2ray_core.start)
        # The same driver reconnects on its own once the core is back.
        report = await driver.add_users([Change("u-jack", user)])
        assert report.errors == [] and len(report.added) == 1


async def test_read_counters_reads_then_has_the_uptime_on_the_wire(
    v2ray_core, http_blob_server, tmp_path
):
    """read_counters: QueryStats, and GetSysStats sent as soon as its reply is in
    (answered while the caller works): the same counters as query_stats, the
    core's uptime, the trio clock when that reply arrived; a dead core is
    CoreUnavailable, as for every other call."""
    user = new_user(ProxyProtocol.VLESS, "vless-in", "kim@vless")
    async with open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        assert (await driver.add_users([Change("u-kim", user)])).errors == []
        with open_client(tmp_path, v2ray_core, "vless", user.secret) as client:
            assert await fetch(client.socks_port, http_blob_server.url(20_000)) == 20_000
        asked = trio.current_time()
        counters, pending = await driver.read_counters("user>>>")
        assert counters == await driver.query_stats("user>>>")
        assert counters["user>>>kim@vless>>>traffic>>>downlink"] > 20_000
        await trio.sleep(0.5)  # the caller's work: the uptime's reply comes meanwhile
        looked = trio.current_time()
        uptime, arrived = await pending.result()
        assert asked <= arrived <= looked  # it was on the wire before it was asked for
        assert abs(uptime - (await driver.sys_stats()).uptime) <= 1

        v2ray_core.kill()
        with pytest.raises(CoreUnavailable, match="core unreachable"):
            await driver.read_counters("user>>>")
        await trio.to_thread.run_sync(v2ray_core.start)
        counters, pending = await driver.read_counters("user>>>")
        uptime, _ = await pending.result()
        assert uptime >= 0 and counters == {}  # a new life: its counters start empty
