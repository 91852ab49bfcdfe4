"""A local fleet per test: unique names and subnet, always taken down."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward.devfleet.fleet import Fleet, missing_requirements
from edgeward.devfleet.layout import make_layout


def fleet_or_skip(tmp_path: Path, **kwargs) -> Fleet:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    name = "t" + secrets.token_hex(1)  # "t3f": never the operator's default "ewf"
    subnet = 100 + secrets.randbelow(150)
    return Fleet(make_layout(tmp_path / "fleet", name=name, subnet=subnet), **kwargs)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = fleet_or_skip(tmp_path)
    try:
        yield fleet
    finally:
        assert fleet.down() == []
