"""Fixtures of the packaging tests: the packages, built once per session, and chroots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging.system import (
    Build,
    Chroot,
    ChrootCache,
    SigningKey,
    finish_build,
    make_signing_key,
    project_version,
    start_build,
)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, dpkg and rpm into a root); CI runs as root")


@dataclass(frozen=True)
class Packages:
    old: Build  # pyproject's version: .deb and signed .rpm of both programs
    new: Build  # the same source one version up: .deb of both, to upgrade to
    key: SigningKey


@pytest.fixture(scope="session")
def chroot_cache() -> ChrootCache:
    require_root()
    cache = ChrootCache()
    cache.start()  # debootstrap (when not cached) runs while the packages build
    return cache


@pytest.fixture(scope="session")
def packages(chroot_cache: ChrootCache, tmp_path_factory: pytest.TempPathFactory) -> Packages:
    work = tmp_path_factory.mktemp("packages")
    key = make_signing_key(work)
    old_version = project_version()
    new_version = f"{old_version}.1"
    old = start_build(work / "old", old_version, ["deb", "rpm"], key)
    new = start_build(work / "new", new_version, ["deb"], None)
    return Packages(finish_build(old, old_version), finish_build(new, new_version), key)


@pytest.fixture
def chroot(chroot_cache: ChrootCache, tmp_path: Path) -> Iterator[Chroot]:
    root = Chroot.extract(chroot_cache.wait(), tmp_path / "root")
    yield root
    shutil.rmtree(root.root)  # ~300 MB; nothing is mounted inside


@pytest.fixture(scope="module")
def module_chroot(
    chroot_cache: ChrootCache, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    root = Chroot.extract(chroot_cache.wait(), tmp_path_factory.mktemp("chroot") / "root")
    yield root
    shutil.rmtree(root.root)
