"""The .rpm packages: metadata, scriptlets, install into an `rpm --root`, rpmlint."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import Packages
from tests.packaging.system import REPO, Chroot, deb_scripts, rpm_scripts, run

AGENT, CENTRAL = "edgeward-agent", "edgeward-central"
CONFIG = {AGENT: "/etc/edgeward/agent.toml", CENTRAL: "/etc/edgeward/central.toml"}

# rpmlint warnings left, each with its reason (also in packaging/README.md)
RPMLINT_ACCEPTED = {
    "no-url-tag": "edgeward has no public homepage yet",
    "no-manual-page-for-binary": "rpmlint 2.4 bug: it records the man section, not the page "
    "name; the page is /usr/share/man/man1/<program>.1.gz",
    "dangerous-command-in-%postun": "`rm -rf /var/lib/<package>` runs on a deb purge only",
    "binary-or-shlib-calls-gethostbyname": "cryptography's bundled OpenSSL; edgeward resolves "
    "names through Python's socket module",
}


@pytest.mark.parametrize("package", [AGENT, CENTRAL])
def test_rpm_lists_files_requires_and_config(packages: Packages, package):
    rpm = str(packages.old.rpm(package))
    files = set(run(["rpm", "-qpl", rpm]).stdout.split())
    assert {
        f"/usr/bin/{package}",
        f"/usr/lib/{package}/edgeward/__init__.py",
        f"/usr/lib/systemd/system/{package}.service",
        f"/usr/lib/sysusers.d/{package}.conf",
        f"/usr/share/man/man1/{package}.1.gz",
        f"/usr/share/zsh/site-functions/_{package}",
        f"/usr/share/licenses/{package}/copyright",
        CONFIG[package],
    } <= files
    assert (f"/usr/lib/modules-load.d/{package}.conf" in files) == (package == AGENT)
    # no byte-code in the package (postinstall compiles it), no build paths
    assert not [f for f in files if "__pycache__" in f or f.startswith("/tmp")]

    requires = set(run(["rpm", "-qpR", rpm]).stdout.splitlines())
    # RHEL 9's python3 is 3.9: the bundled C extensions need the python3.11 package
    assert {"python3.11", "systemd", "procps-ng", "glibc >= 2.34"} <= requires
    assert "python3" not in requires

    assert run(["rpm", "-qpc", rpm]).stdout.split() == [CONFIG[package]]
    flags = run(["rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", rpm]).stdout
    assert f"cn {CONFIG[package]}" in flags.splitlines()  # %config(noreplace)


@pytest.mark.parametrize("package", [AGENT, CENTRAL])
def test_maintainer_scripts_are_valid_sh(packages: Packages, package, tmp_path: Path):
    rpm = rpm_scripts(packages.old.rpm(package))
    deb = deb_scripts(packages.old.deb(package), tmp_path)
    assert set(rpm) == {"postin", "preun", "postun"}
    assert set(deb) == {"postinst", "prerm", "postrm"}
    for name, body in [*rpm.items(), *deb.items()]:
        script = tmp_path / name
        script.write_text(body)
        for shell in ("dash", "bash"):
            done = subprocess.run([shell, "-n", str(script)], text=True, capture_output=True)
            assert done.returncode == 0, f"{package} {name} ({shell}): {done.stderr}"
    # the scripts are rendered for this package (no template placeholder left)
    assert f"NAME={package}\n" in rpm["postin"] and "systemd-sysusers" in rpm["postin"]
    assert "@" not in rpm["postin"] + rpm["preun"] + rpm["postun"]


def test_rpm_installs_into_a_root_verifies_and_erases(chroot: Chroot, packages: Packages):
    root = ["rpm", "--root", str(chroot.root), "--dbpath", "/var/lib/rpm"]
    run([*root, "--initdb"])
    rpms = [str(packages.old.rpm(p)) for p in (AGENT, CENTRAL)]
    run([*root, "--import", str(packages.key.public)])
    for rpm in rpms:  # signed with the release key (here a throw-away one)
        assert "signatures OK" in run([*root, "-K", rpm]).stdout

    # --nodeps: this root's python3.11 and systemd come from dpkg, not rpm; the
    # scriptlets run inside the root (systemd-sysusers, python3.11 -m compileall)
    run([*root, "-i", "--nodeps", *rpms])
    verify = subprocess.run(
        [*root, "-V", "--nodeps", AGENT, CENTRAL], text=True, capture_output=True
    )
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout + verify.stderr
    for package in (AGENT, CENTRAL):
        version = chroot.run(package, "--version").stdout
        assert version.strip() == f"{package}, version {packages.old.version}"
        assert chroot.run("getent", "passwd", package).stdout.startswith(f"{package}:")

    config = chroot.path(CONFIG[AGENT])
    config.write_text(config.read_text() + 'node_id = "edge-1"\n')
    changed = subprocess.run([*root, "-V", "--nodeps", AGENT], text=True, capture_output=True)
    assert f" c {CONFIG[AGENT]}" in changed.stdout  # rpm -V sees the edit, as config

    run([*root, "-e", AGENT])
    assert not chroot.path("/usr/bin/edgeward-agent").exists()
    assert not chroot.path("/usr/lib/edgeward-agent").exists()  # byte-code went too
    # rpm has no purge: an edited config is kept aside
    assert chroot.path(CONFIG[AGENT] + ".rpmsave").read_text().endswith('node_id = "edge-1"\n')
    assert chroot.path(CONFIG[CENTRAL]).exists()


def test_rpms_pass_rpmlint(packages: Packages, tmp_path: Path):
    rpms = [str(packages.old.rpm(p)) for p in (AGENT, CENTRAL)]
    # rpmlint checks the signature against the rpm database of $HOME's macros:
    # one that trusts the signing key, as a machine installing the packages would
    keyring = tmp_path / "rpmdb"
    run(["rpm", "--dbpath", str(keyring), "--initdb"])
    run(["rpm", "--dbpath", str(keyring), "--import", str(packages.key.public)])
    (tmp_path / ".rpmmacros").write_text(f"%_dbpath {keyring}\n")
    config = REPO / "packaging" / "rpmlint.toml"
    done = subprocess.run(
        ["rpmlint", "-c", str(config), *rpms],
        text=True,
        capture_output=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    findings = [line for line in done.stdout.splitlines() if ": E: " in line or ": W: " in line]
    errors = [line for line in findings if ": E: " in line]
    assert errors == [], "\n".join(errors)
    unexplained = [line for line in findings if line.split()[2] not in RPMLINT_ACCEPTED]
    assert unexplained == [], "\n".join(unexplained)
