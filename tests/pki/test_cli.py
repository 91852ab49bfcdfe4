"""`edgeward pki ...` through click's CliRunner, against a real CA directory.
The clock is injected through click's obj; the main `edgeward` group is used too."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgeward.cli import main
from edgeward.pki import certs
from edgeward.pki.cli import pki
from tests.pki.helpers import csr_for, snapshot_dir


class Cli:
    def __init__(self, ca_dir: Path, now: datetime) -> None:
        self.ca_dir = ca_dir
        self.now = now
        self.runner = CliRunner()

    def __call__(self, *args: str, stdin: bytes | None = None) -> Result:
        return self.runner.invoke(
            pki,
            ["--ca-dir", str(self.ca_dir), *args],
            obj={"clock": lambda: self.now},
            input=stdin,
            catch_exceptions=False,
        )


@pytest.fixture
def cli(tmp_path: Path, now: datetime) -> Cli:
    return Cli(tmp_path / "ca", now)


@pytest.fixture
def ca(cli: Cli) -> Cli:
    assert cli("init", "--name", "test").exit_code == 0
    return cli


def test_init_shows_fingerprint_and_refuses_to_overwrite(cli: Cli) -> None:
    result = cli("init")
    assert result.exit_code == 0, result.output
    fp = certs.fingerprint(certs.load_cert((cli.ca_dir / "ca.crt").read_bytes()))
    assert f"fingerprint: {fp}" in result.stdout
    assert stat.S_IMODE(os.stat(cli.ca_dir / "ca.key").st_mode) == 0o600
    before = snapshot_dir(cli.ca_dir)
    again = cli("init")
    assert again.exit_code == 1
    assert "error: a CA already exists" in again.stderr and "--force" in again.stderr
    assert snapshot_dir(cli.ca_dir) == before
    forced = cli("init", "--force", "--json")
    assert forced.exit_code == 0
    assert json.loads(forced.stdout)["fingerprint"] != fp


def test_commands_without_a_ca_say_so(cli: Cli) -> None:
    result = cli("show")
    assert result.exit_code == 1
    assert "error: no edgeward CA in" in result.stderr
    assert not cli.ca_dir.exists()


def test_token_then_sign_csr_with_token_then_reuse_is_refused(ca: Cli, tmp_path: Path) -> None:
    minted = ca("token", "edge-1", "--json")
    assert minted.exit_code == 0
    data = json.loads(minted.stdout)
    assert data["node_id"] == "edge-1"
    assert datetime.fromisoformat(data["expires_at"]) == ca.now + timedelta(hours=1)
    key, csr = csr_for("edge-1")
    csr_file = tmp_path / "edge-1.csr"
    csr_file.write_bytes(csr)
    out = tmp_path / "edge-1.crt"
    signed = ca("sign-csr", "edge-1", str(csr_file), "--token", data["token"], "--out", str(out))
    assert signed.exit_code == 0, signed.output
    cert = certs.load_cert(out.read_bytes())
    assert cert.public_key() == key.public_key()
    assert certs.identity_of(cert).node_id == "edge-1"

    before = snapshot_dir(ca.ca_dir)
    again = ca("sign-csr", "edge-1", "-", "--token", data["token"], stdin=csr)
    assert again.exit_code == 1
    assert "error: enrollment token was already used" in again.stderr
    assert again.stdout == ""
    assert snapshot_dir(ca.ca_dir) == before


def test_token_plain_output_is_the_token_alone(ca: Cli) -> None:
    result = ca("token", "edge-2", "--ttl-minutes", "5")
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("ewt1.")
    assert "expires at" in result.stderr


def test_token_with_bad_node_id_is_refused(ca: Cli) -> None:
    before = snapshot_dir(ca.ca_dir)
    result = ca("token", "Bad_Node")
    assert result.exit_code == 1
    assert "error: invalid node id 'Bad_Node'" in result.stderr
    assert snapshot_dir(ca.ca_dir) == before


@pytest.mark.parametrize(
    ("token", "csr", "error"),
    [
        ("tamper:edge-1", None, "enrollment token is not valid for this CA"),
        ("ewt1.forged.token", None, "enrollment token is malformed"),
        ("mint:edge-9", None, "bound to node 'edge-9', not 'edge-1'"),
        ("mint:edge-1", b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n", "malformed CSR"),
    ],
)
def test_sign_csr_bad_input_writes_nothing(
    ca: Cli, tmp_path: Path, token: str, csr: bytes | None, error: str
) -> None:
    if token.startswith("mint:"):
        token = ca("token", token.removeprefix("mint:")).stdout.strip()
    if token.startswith("tamper:"):
        prefix, payload, mac = ca("token", token.removeprefix("tamper:")).stdout.strip().split(".")
        token = f"{prefix}.{payload[:-1] + ('A' if payload[-1] != 'A' else 'B')}.{mac}"
    out = tmp_path / "out.crt"
    before = snapshot_dir(ca.ca_dir)
    result = ca(
        "sign-csr", "edge-1", "-", "--token", token, "--out", str(out),
        stdin=csr if csr is not None else csr_for("edge-1")[1],
    )  # fmt: skip
    assert result.exit_code == 1
    assert error in result.stderr
    assert not out.exists()
    assert snapshot_dir(ca.ca_dir) == before


def test_sign_csr_offline_without_token(ca: Cli) -> None:
    result = ca("sign-csr", "edge-3", "-", "--days", "7", stdin=csr_for("edge-3")[1])
    assert result.exit_code == 0
    cert = certs.load_cert(result.stdout.encode())
    assert cert.not_valid_after_utc == ca.now + timedelta(days=7)


def test_sign_csr_refuses_to_overwrite_output(ca: Cli, tmp_path: Path) -> None:
    out = tmp_path / "exists.crt"
    out.write_text("keep me")
    before = snapshot_dir(ca.ca_dir)
    result = ca("sign-csr", "edge-3", "-", "--out", str(out), stdin=csr_for("edge-3")[1])
    assert result.exit_code == 1
    assert "refusing to overwrite" in result.stderr
    assert out.read_text() == "keep me"
    assert snapshot_dir(ca.ca_dir) == before


def test_issue_server_and_admin_write_cert_and_private_key(ca: Cli, tmp_path: Path) -> None:
    out = tmp_path / "central"
    out.mkdir()
    server = ca("issue-server", "--host", "central.example.org", "--host", "10.0.0.1",
                "--out-dir", str(out))  # fmt: skip
    assert server.exit_code == 0, server.output
    assert stat.S_IMODE(os.stat(out / "central.key").st_mode) == 0o600
    identity = certs.identity_of(certs.load_cert((out / "central.crt").read_bytes()))
    assert identity.kind == "central"

    (tmp_path / "adm").mkdir()
    admin = ca("issue-admin", "alice", "--role", "operator", "--out-dir", str(tmp_path / "adm"))
    assert admin.exit_code == 0
    verified = ca("verify", "--json", str(tmp_path / "adm" / "alice.crt"))
    assert verified.exit_code == 0
    data = json.loads(verified.stdout)
    assert (data["valid"], data["kind"], data["name"], data["role"]) == (
        True,
        "admin",
        "alice",
        "operator",
    )


def test_issue_admin_with_bad_role_is_a_usage_error(ca: Cli, tmp_path: Path) -> None:
    before = snapshot_dir(ca.ca_dir)
    result = ca("issue-admin", "bob", "--role", "root", "--out-dir", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "'root' is not one of 'admin', 'operator', 'viewer'" in result.stderr
    assert not (tmp_path / "x").exists()
    assert snapshot_dir(ca.ca_dir) == before


def test_issue_server_with_bad_host_writes_nothing(ca: Cli, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    before = snapshot_dir(ca.ca_dir)
    result = ca("issue-server", "--host", "bad host", "--out-dir", str(tmp_path / "x"))
    assert result.exit_code == 1
    assert "error: invalid hostname 'bad host'" in result.stderr
    assert list((tmp_path / "x").iterdir()) == []
    assert snapshot_dir(ca.ca_dir) == before


def test_issue_refuses_existing_files_and_missing_dirs_before_issuing(
    ca: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "adm"
    out.mkdir()
    (out / "alice.key").write_text("old key")
    before = snapshot_dir(ca.ca_dir)
    kept = ca("issue-admin", "alice", "--role", "admin", "--out-dir", str(out))
    assert kept.exit_code == 1
    assert "refusing to overwrite" in kept.stderr and "alice.key" in kept.stderr
    assert (out / "alice.key").read_text() == "old key"
    assert not (out / "alice.crt").exists()
    missing = ca("issue-admin", "alice", "--role", "admin", "--out-dir", str(tmp_path / "no"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    no_dir = ca("sign-csr", "edge-1", "-", "--out", str(tmp_path / "no" / "c.crt"),
                stdin=csr_for("edge-1")[1])  # fmt: skip
    assert no_dir.exit_code == 1
    assert "output directory" in no_dir.stderr and "does not exist" in no_dir.stderr
    assert snapshot_dir(ca.ca_dir) == before
    forced = ca("issue-admin", "alice", "--role", "admin", "--out-dir", str(out), "--force")
    assert forced.exit_code == 0
    assert certs.load_private_key((out / "alice.key").read_bytes())


def test_revoke_then_verify_and_show(ca: Cli, tmp_path: Path) -> None:
    signed = ca("sign-csr", "edge-4", "-", stdin=csr_for("edge-4")[1])
    cert_file = tmp_path / "edge-4.crt"
    cert_file.write_text(signed.stdout)
    serial = certs.format_serial(certs.load_cert(signed.stdout.encode()).serial_number)

    ok = ca("verify", str(cert_file))
    assert ok.exit_code == 0
    assert f"ok: node edge-4, serial {serial}" in ok.stdout

    revoked = ca("revoke", "edge-4", "--reason", "stolen")
    assert revoked.exit_code == 0
    assert f"revoked {serial}" in revoked.stdout
    assert ca("revoke", f"serial:{serial}").stdout == f"serial:{serial}: already revoked\n"

    bad = ca("verify", str(cert_file))
    assert bad.exit_code == 1
    assert "is revoked" in bad.stderr
    bad_json = ca("verify", "--json", str(cert_file))
    assert bad_json.exit_code == 1
    assert json.loads(bad_json.stdout)["valid"] is False

    shown = json.loads(ca("show", "--json").stdout)
    (record,) = shown["issued"]
    assert (record["serial"], record["name"], record["state"]) == (serial, "edge-4", "revoked")
    text = ca("show").stdout
    assert f"{serial}  node edge-4" in text and "revoked" in text


def test_revoke_unknown_target_is_refused(ca: Cli) -> None:
    before = snapshot_dir(ca.ca_dir)
    result = ca("revoke", "ghost")
    assert result.exit_code == 1
    assert "error: no node or certificate serial 'ghost' is known to this CA" in result.stderr
    assert snapshot_dir(ca.ca_dir) == before


def test_verify_expired_and_foreign_certificates(ca: Cli, tmp_path: Path, now: datetime) -> None:
    ca.now = now - timedelta(days=60)
    old = ca("sign-csr", "edge-5", "-", stdin=csr_for("edge-5")[1]).stdout
    ca.now = now
    (tmp_path / "old.crt").write_text(old)
    expired = ca("verify", str(tmp_path / "old.crt"))
    assert expired.exit_code == 1 and "expired at" in expired.stderr

    other = Cli(tmp_path / "other", now)
    other("init")
    foreign = other("sign-csr", "edge-5", "-", stdin=csr_for("edge-5")[1]).stdout
    (tmp_path / "foreign.crt").write_text(foreign)
    result = ca("verify", str(tmp_path / "foreign.crt"))
    assert result.exit_code == 1 and "not issued by this edgeward CA" in result.stderr

    (tmp_path / "junk.crt").write_text("junk")
    junk = ca("verify", str(tmp_path / "junk.crt"))
    assert junk.exit_code == 1 and "malformed certificate" in junk.stderr


def test_show_lists_tokens_with_state(ca: Cli) -> None:
    ca("token", "edge-6", "--ttl-minutes", "1")
    ca.now += timedelta(minutes=2)
    ca("token", "edge-7")
    tokens = json.loads(ca("show", "--json").stdout)["tokens"]
    assert [(t["node_id"], t["state"]) for t in tokens] == [
        ("edge-6", "expired"),
        ("edge-7", "open"),
    ]


def test_pki_is_registered_under_the_main_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["pki", "--ca-dir", str(tmp_path / "ca"), "init"])
    assert result.exit_code == 0
    assert "fingerprint: sha256:" in result.stdout
