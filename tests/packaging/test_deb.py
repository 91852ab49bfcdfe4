"""The .deb packages installed with dpkg into a Debian minbase chroot."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.packaging.conftest import Packages
from tests.packaging.system import Chroot

AGENT, CENTRAL = "edgeward-agent", "edgeward-central"
UNITS = "/usr/lib/systemd/system"


@pytest.fixture(scope="module")
def installed(module_chroot: Chroot, packages: Packages) -> Iterator[Chroot]:
    """Both programs' old .deb installed side by side, as on a node running central too."""
    debs = [module_chroot.copy_in(packages.old.deb(p)) for p in (AGENT, CENTRAL)]
    module_chroot.run("dpkg", "-i", *debs)
    yield module_chroot


@pytest.mark.parametrize("package", [AGENT, CENTRAL])
def test_deb_installs_files_user_and_config(installed: Chroot, packages: Packages, package):
    root = installed
    status = root.run("dpkg-query", "-W", "-f=${Status} ${Version}", package).stdout
    assert status == f"install ok installed {packages.old.version}-1"
    config = "/etc/edgeward/" + ("agent.toml" if package == AGENT else "central.toml")
    for path in (
        f"/usr/bin/{package}",
        f"{UNITS}/{package}.service",
        f"/usr/lib/sysusers.d/{package}.conf",
        f"/usr/share/man/man1/{package}.1.gz",
        f"/usr/share/bash-completion/completions/{package}",
        f"/usr/share/zsh/vendor-completions/_{package}",
        f"/usr/share/fish/vendor_completions.d/{package}.fish",
        config,
    ):
        assert root.path(path).is_file(), path
    # a conffile: dpkg keeps the operator's edits on upgrade
    assert config in root.run("dpkg-query", "-W", "-f=${Conffiles}", package).stdout
    # the system user from sysusers.d, with no login shell
    user = root.run("getent", "passwd", package).stdout.strip().split(":")
    assert user[5] == f"/var/lib/{package}" and user[6] == "/usr/sbin/nologin"
    # postinst byte-compiled the private library
    assert list(root.path(f"/usr/lib/{package}/edgeward").glob("__pycache__/*.pyc"))


def test_agent_loads_the_wireguard_module_at_boot(installed: Chroot):
    conf = installed.path("/usr/lib/modules-load.d/edgeward-agent.conf").read_text()
    assert [line for line in conf.splitlines() if not line.startswith("#")] == ["wireguard"]
    assert not installed.path("/usr/lib/modules-load.d/edgeward-central.conf").exists()


@pytest.mark.parametrize("package", [AGENT, CENTRAL])
def test_program_runs_version_help_and_man(installed: Chroot, packages: Packages, package):
    version = installed.run(package, "--version").stdout
    assert version.strip() == f"{package}, version {packages.old.version}"
    usage = installed.run(package, "--help").stdout
    assert usage.startswith(f"Usage: {package} [OPTIONS]")
    page = installed.run("man", "-P", "cat", package).stdout
    assert "NAME" in page and "SYNOPSIS" in page and "/etc/edgeward/" in page


def test_agent_status_without_a_running_daemon_says_so(installed: Chroot):
    config = installed.path("/etc/edgeward/agent.toml")
    shipped = config.read_text()
    try:
        # the shipped config with a node id, as after enrollment; no daemon runs here
        assert '\nnode_id = ""\n' in shipped
        config.write_text(shipped.replace('\nnode_id = ""\n', '\nnode_id = "edge-1"\n'))
        done = installed.run(AGENT, "status", check=False)
    finally:
        config.write_text(shipped)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        "Error: edgeward-agent is not running "
        "(no control socket at /run/edgeward-agent/control.sock)\n"
    )


def test_agent_status_with_the_shipped_config_names_the_missing_node_id(installed: Chroot):
    done = installed.run(AGENT, "status", check=False)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert "node_id '' is not a valid node id" in done.stderr


@pytest.mark.parametrize("package", [AGENT, CENTRAL])
def test_units_pass_systemd_analyze_verify(installed: Chroot, package):
    # inside the chroot: the unit's ExecStart, ExecReload and man page resolve there
    done = installed.run("systemd-analyze", "verify", f"{UNITS}/{package}.service", check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_upgrade_keeps_edited_config_and_purge_removes_it(chroot: Chroot, packages: Packages):
    config = chroot.path("/etc/edgeward/agent.toml")
    chroot.run("dpkg", "-i", chroot.copy_in(packages.old.deb(AGENT)))
    shipped = config.read_text()
    edited = shipped.replace('\nnode_id = ""\n', '\nnode_id = "edge-1"  # set by the operator\n')
    assert edited != shipped
    config.write_text(edited)
    journal = chroot.path("/var/lib/edgeward-agent/journal.sqlite")
    journal.parent.mkdir()  # as systemd's StateDirectory= does at the first start
    journal.write_bytes(b"state the agent wrote")

    chroot.run("dpkg", "-i", chroot.copy_in(packages.new.deb(AGENT)))
    assert config.read_text() == edited
    assert not config.with_name("agent.toml.dpkg-new").exists()
    assert chroot.run(AGENT, "--version").stdout.split()[-1] == packages.new.version
    assert journal.read_bytes() == b"state the agent wrote"

    chroot.run("dpkg", "--remove", AGENT)  # remove: the config and state stay
    assert not chroot.path("/usr/bin/edgeward-agent").exists()
    assert not chroot.path("/usr/lib/edgeward-agent").exists()  # byte-code went too
    assert config.read_text() == edited and journal.exists()

    chroot.run("dpkg", "--purge", AGENT)  # purge: both go
    assert not config.exists() and not chroot.path("/etc/edgeward").exists()
    assert not chroot.path("/var/lib/edgeward-agent").exists()
    listed = chroot.run("dpkg-query", "-W", AGENT, check=False)
    assert listed.returncode != 0


def test_debs_pass_lintian(packages: Packages):
    debs = [str(packages.old.deb(p)) for p in (AGENT, CENTRAL)]
    done = subprocess.run(["lintian", *debs], text=True, capture_output=True)
    tags = [line for line in done.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    # every warning left is overridden in the package, with its reason in
    # packaging/README.md; an error or a new warning fails here
    assert tags == [], "\n".join(tags)
    assert done.returncode == 0, done.stdout + done.stderr


# MemoryDenyWriteExecute=yes in the units: the kernel's own switch (prctl
# PR_SET_MDWE) refuses the same mappings; everything must still work under it.
MDWE_PROBE = """
import ctypes, importlib, mmap, pkgutil, sys
if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, REFUSE_EXEC_GAIN
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("a writable executable mapping was allowed: MDWE is not on")
except PermissionError:
    pass
sys.path.insert(0, "/usr/lib/PACKAGE")
import edgeward
for module in pkgutil.walk_packages(edgeward.__path__, "edgeward."):
    if not module.name.endswith(".__main__"):  # importing one runs its program
        importlib.import_module(module.name)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
ec.generate_private_key(ec.SECP256R1()).sign(b"x", ec.ECDSA(hashes.SHA256()))
import asyncio, trio, trio_asyncio
async def island():
    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(asyncio.sleep)(0.01)
trio.run(island)
print("ok")
"""


@pytest.mark.parametrize("package", [AGENT, CENTRAL])
def test_program_works_with_memory_deny_write_execute(installed: Chroot, package):
    probe = MDWE_PROBE.replace("PACKAGE", package)
    done = installed.run("python3.11", "-I", "-S", "-c", probe, check=False)
    if done.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    assert done.returncode == 0 and done.stdout == "ok\n", done.stdout + done.stderr
