"""Real parts for the packaging tests: a Debian chroot, package builds, a signing key.

The chroot is `debootstrap --variant=minbase` of the suite the packages target,
with the packages' dependencies preinstalled (dpkg -i does not fetch any). It is
cached as a tarball under /var/cache/edgeward, keyed by suite and package list;
a fresh machine builds it once (about a minute).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging" / "build"
SUITE = "bookworm"
# the packages' Depends (python3.11, systemd, procps), and man-db so that
# `systemd-analyze verify` can resolve the units' Documentation=man:...
CHROOT_PACKAGES = ("python3.11", "systemd", "procps", "man-db")
CACHE = Path(os.environ.get("EDGEWARD_CHROOT_CACHE", "/var/cache/edgeward"))


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its whole output (for the test report)."""
    done = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}\n--- stdout\n{done.stdout}"
            f"\n--- stderr\n{done.stderr}"
        )
    return done


class ChrootCache:
    """The cached minbase tarball; built in a background thread when missing."""

    def __init__(self, cache_dir: Path = CACHE) -> None:
        key = hashlib.sha256(f"{SUITE} {' '.join(CHROOT_PACKAGES)}".encode()).hexdigest()[:12]
        self.tarball = cache_dir / f"chroot-{SUITE}-minbase-{key}.tar"
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.tarball.exists() and self._thread is None:
            self._thread = threading.Thread(target=self._build, daemon=True)
            self._thread.start()

    def _build(self) -> None:
        try:
            self.tarball.parent.mkdir(parents=True, exist_ok=True)
            # private names: two sessions building at once do not collide
            work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=self.tarball.parent))
            try:
                include = f"--include={','.join(CHROOT_PACKAGES)}"
                # debootstrap's default mirror, as apt's sources here
                run(["debootstrap", "--variant=minbase", include, SUITE, str(work / "root")])
                partial = work / "chroot.tar"
                run(["tar", "-C", str(work / "root"), "-cf", str(partial), "."])
                partial.rename(self.tarball)  # atomic: a killed run leaves no half tarball
            finally:
                shutil.rmtree(work, ignore_errors=True)
        except BaseException as exc:  # reported by wait()
            self._error = exc

    def wait(self) -> Path:
        if self._thread is not None:
            self._thread.join(timeout=900)
            if self._thread.is_alive():
                raise AssertionError("debootstrap did not finish within 15 minutes")
        if self._error is not None:
            raise AssertionError(f"building the {SUITE} chroot failed: {self._error}")
        if not self.tarball.exists():
            self.start()
            return self.wait()
        return self.tarball


@dataclass
class Chroot:
    """A throw-away root extracted from the cached tarball."""

    root: Path

    @classmethod
    def extract(cls, tarball: Path, where: Path) -> Chroot:
        where.mkdir(parents=True)
        run(["tar", "-C", str(where), "-xf", str(tarball)])
        return cls(where)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        full = ["chroot", str(self.root), *cmd]
        if check:
            return run(full, env=env)
        return subprocess.run(full, text=True, capture_output=True, env=env)

    def copy_in(self, path: Path) -> str:
        """Copy a file into the chroot's /tmp; returns its path inside."""
        shutil.copy(path, self.root / "tmp" / path.name)
        return f"/tmp/{path.name}"

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


@dataclass(frozen=True)
class SigningKey:
    secret: Path  # armored private key (no passphrase) for nfpm
    public: Path  # armored public key for `rpm --import`


def make_signing_key(where: Path) -> SigningKey:
    """A throw-away OpenPGP key, as a release would sign with its own."""
    home = where / "gnupg"
    home.mkdir(mode=0o700, parents=True)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
    uid = "edgeward test signing <test-signing@edgeward.invalid>"
    run([*gpg, "--passphrase", "", "--quick-gen-key", uid, "rsa2048", "sign", "never"])
    secret, public = where / "signing.key", where / "signing.pub"
    secret.write_text(run([*gpg, "--armor", "--export-secret-keys", uid]).stdout)
    public.write_text(run([*gpg, "--armor", "--export", uid]).stdout)
    run(["gpgconf", "--homedir", str(home), "--kill", "all"])
    return SigningKey(secret, public)


@dataclass(frozen=True)
class Build:
    version: str
    files: dict[str, Path]  # "edgeward-agent.deb" -> path

    def deb(self, package: str) -> Path:
        return self.files[f"{package}.deb"]

    def rpm(self, package: str) -> Path:
        return self.files[f"{package}.rpm"]


def start_build(out: Path, version: str, formats: list[str], key: SigningKey | None):
    """Start packaging/build (the command developers run); finish with `finish_build`."""
    cmd = [str(BUILD), "--version", version, "--out", str(out)]
    cmd += [arg for fmt in formats for arg in ("--format", fmt)]
    if key:
        cmd += ["--rpm-signing-key", str(key.secret)]
    return subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_build(process: subprocess.Popen, version: str) -> Build:
    stdout, stderr = process.communicate(timeout=600)
    if process.returncode != 0:
        raise AssertionError(f"packaging/build {version} failed:\n{stderr}")
    files: dict[str, Path] = {}
    for line in stdout.split():
        path = Path(line)
        package = re.match(r"(edgeward-[a-z]+)", path.name)
        assert package and path.exists(), f"packaging/build printed {line!r}"
        files[f"{package.group(1)}{path.suffix}"] = path
    return Build(version, files)


def project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    found = re.search(r'(?m)^version = "([^"]*)"$', text)
    assert found, "pyproject.toml has no version line"
    return found.group(1)


def rpm_scripts(package: Path) -> dict[str, str]:
    """The scriptlets of an .rpm, by name (postinstall, preuninstall, ...)."""
    scripts: dict[str, str] = {}
    for tag in ("PREIN", "POSTIN", "PREUN", "POSTUN"):
        body = run(["rpm", "-qp", "--qf", f"%{{{tag}}}", str(package)]).stdout
        if body and body != "(none)":
            scripts[tag.lower()] = body
    return scripts


def deb_scripts(package: Path, where: Path) -> dict[str, str]:
    control = where / "control"
    run(["dpkg-deb", "-e", str(package), str(control)])
    return {
        name: (control / name).read_text()
        for name in ("preinst", "postinst", "prerm", "postrm")
        if (control / name).exists()
    }
