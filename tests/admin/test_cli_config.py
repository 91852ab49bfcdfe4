"""Where the CLI finds central and its admin certificate; unreachable and unconfigured
central; shell completion."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeward.cli import main
from tests.admin.fleet import Fleet, running_fleet
from tests.central.backends import StorageBackend
from tests.support.ports import free_port

SETTINGS = ("CENTRAL", "CERT", "KEY", "CA", "CONFIG", "SERVER_NAME")
NO_SETTINGS: dict[str, str | None] = {f"EDGEWARD_{name}": None for name in SETTINGS}


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, module_storage_backend: StorageBackend
) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("config"), module_storage_backend) as fleet:
        yield fleet


def run(args: list[str], env: dict[str, str | None], home: Path):
    return CliRunner().invoke(main, args, env={**NO_SETTINGS, "HOME": str(home), **env})


def test_settings_from_the_environment(fleet: Fleet, tmp_path: Path):
    pair = fleet.admins["viewer"]
    env = {"EDGEWARD_CENTRAL": f"127.0.0.1:{fleet.port}", "EDGEWARD_CERT": str(pair.cert),
           "EDGEWARD_KEY": str(pair.key), "EDGEWARD_CA": str(fleet.pki.ca_file)}  # fmt: skip
    result = run(["status", "--json"], env, tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["caller"] == "viewer-one"


def test_settings_from_the_default_config_file_with_relative_paths(fleet: Fleet, tmp_path: Path):
    config_dir = tmp_path / ".config" / "edgeward"
    config_dir.mkdir(parents=True)
    pair = fleet.admins["operator"]
    for source, name in ((pair.cert, "admin.crt"), (pair.key, "admin.key"),
                         (fleet.pki.ca_file, "ca.crt")):  # fmt: skip
        (config_dir / name).write_bytes(source.read_bytes())
    (config_dir / "admin.toml").write_text(
        f'central = "localhost:{fleet.port}"\ncert = "admin.crt"\nkey = "admin.key"\n'
        'ca = "ca.crt"\n'
    )
    result = run(["status", "--json"], {}, tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["caller_role"] == "operator"
    # An option wins over the file: this admin certificate is the viewer's.
    viewer = fleet.admins["viewer"]
    result = run(["--cert", str(viewer.cert), "--key", str(viewer.key), "status", "--json"], {},
                 tmp_path)  # fmt: skip
    assert json.loads(result.stdout)["caller_role"] == "viewer"


def test_a_bad_config_file_is_refused(tmp_path: Path):
    bad = tmp_path / "admin.toml"
    bad.write_text('centrl = "x:1"\n')
    result = run(["--config", str(bad), "users", "list"], {}, tmp_path)
    assert result.exit_code == 2 and "unknown key(s) centrl" in result.output
    missing = run(["--config", str(tmp_path / "nope.toml"), "users", "list"], {}, tmp_path)
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_unconfigured_and_unreachable_central(fleet: Fleet, tmp_path: Path):
    result = run(["users", "list"], {}, tmp_path)
    assert result.exit_code == 6
    assert "not configured: central, cert, key, ca" in result.output
    pair = fleet.admins["admin"]
    port = free_port()  # nothing listens there
    args = ["--central", f"127.0.0.1:{port}", "--cert", str(pair.cert), "--key", str(pair.key),
            "--ca", str(fleet.pki.ca_file), "users", "list"]  # fmt: skip
    result = run(args, {}, tmp_path)
    assert result.exit_code == 6 and f"cannot reach central at 127.0.0.1:{port}" in result.output


def test_shell_completion_scripts(tmp_path: Path):
    bash = run(["completion", "bash"], {}, tmp_path)
    assert bash.exit_code == 0 and "_EDGEWARD_COMPLETE=bash_complete" in bash.stdout
    assert "_EDGEWARD_COMPLETE=zsh_complete" in run(["completion", "zsh"], {}, tmp_path).stdout


def test_shell_completion_completes_nouns_and_verbs(tmp_path: Path):
    env = {"_EDGEWARD_COMPLETE": "bash_complete", "COMP_WORDS": "edgeward users re",
           "COMP_CWORD": "2"}  # fmt: skip
    result = CliRunner().invoke(main, [], prog_name="edgeward", env={**NO_SETTINGS, **env})
    offered = {line.split(",", 1)[1] for line in result.stdout.splitlines()}
    assert offered == {"reissue", "renew", "resume"}
