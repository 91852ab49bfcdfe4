"""Counter names of the engines and who owns them (pure; see agent/deltas.py).

* proxy core (Xray-core / v2ray): the core's own stat names,
  ``user>>>EMAIL>>>traffic>>>uplink`` and ``...>>>downlink``;
* WireGuard: ``wg>>>IFACE>>>PUBKEY>>>rx`` and ``...>>>tx`` with the peer's
  base64 public key. Seen from the server, ``rx`` is what the peer sent (the
  user's uplink) and ``tx`` what it received (the user's downlink).

A Resolver maps a counter name to its owner (user and direction), or None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Direction = Literal["uplink", "downlink"]
UPLINK: Direction = "uplink"
DOWNLINK: Direction = "downlink"

SEP = ">>>"
_PROXY_DIRECTIONS: dict[str, Direction] = {"uplink": UPLINK, "downlink": DOWNLINK}
# Seen from the server: rx is what the peer sent (uplink), tx what it got.
_WG_DIRECTIONS: dict[str, Direction] = {"rx": UPLINK, "tx": DOWNLINK}


@dataclass(frozen=True, slots=True)
class CounterOwner:
    """Whose traffic a counter measures, and which way."""

    user_id: str
    direction: Direction


Resolver = Callable[[str], CounterOwner | None]


def proxy_counter(email: str, direction: Direction) -> str:
    """The core's stat name of a user's uplink or downlink counter."""
    return f"user{SEP}{email}{SEP}traffic{SEP}{direction}"


def wg_counter(interface: str, public_key: str, which: Literal["rx", "tx"]) -> str:
    """Our name of a WireGuard peer's rx or tx byte counter."""
    return f"wg{SEP}{interface}{SEP}{public_key}{SEP}{which}"


def parse_proxy_counter(name: str) -> tuple[str, Direction] | None:
    """``user>>>EMAIL>>>traffic>>>uplink`` -> (EMAIL, "uplink"); other stats -> None."""
    parts = name.split(SEP)
    if len(parts) != 4 or parts[0] != "user" or parts[2] != "traffic":
        return None
    direction = _PROXY_DIRECTIONS.get(parts[3])
    return None if direction is None else (parts[1], direction)


def parse_wg_counter(name: str) -> tuple[str, str, Direction] | None:
    """``wg>>>IFACE>>>KEY>>>rx`` -> (IFACE, KEY, "uplink"); anything else -> None."""
    parts = name.split(SEP)
    if len(parts) != 4 or parts[0] != "wg":
        return None
    direction = _WG_DIRECTIONS.get(parts[3])
    return None if direction is None else (parts[1], parts[2], direction)


def proxy_resolver(user_by_email: Mapping[str, str]) -> Resolver:
    """Map core stat names to users through the core-side key, the email."""

    def resolve(name: str) -> CounterOwner | None:
        parsed = parse_proxy_counter(name)
        if parsed is None:
            return None
        user_id = user_by_email.get(parsed[0])
        return None if user_id is None else CounterOwner(user_id, parsed[1])

    return resolve


def wg_resolver(user_by_peer: Mapping[tuple[str, str], str]) -> Resolver:
    """Map WireGuard counter names to users through (interface, public key)."""

    def resolve(name: str) -> CounterOwner | None:
        parsed = parse_wg_counter(name)
        if parsed is None:
            return None
        user_id = user_by_peer.get((parsed[0], parsed[1]))
        return None if user_id is None else CounterOwner(user_id, parsed[2])

    return resolve
