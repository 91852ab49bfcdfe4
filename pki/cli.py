"""`edgeward pki ...`: thin commands over the pki library.

Exit codes: 0 success; 1 refused (bad token, bad input, CA exists, certificate
rejected by `verify`); 2 usage error (click). Errors go to stderr as `error: ...`;
results go to stdout (`--json` for machine-readable output).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from edgeward.pki import authority, certs, tokens
from edgeward.pki.errors import PkiError
from edgeward.pki.names import ROLES, Identity
from edgeward.pki.store import DEFAULT_DIR, CAStore, atomic_write

F = TypeVar("F", bound=Callable[..., Any])


class Env:
    """What every command needs: the CA directory and the clock (tests inject one
    through click's `obj={"clock": ...}`)."""

    def __init__(self, ca_dir: Path, clock: Callable[[], datetime]) -> None:
        self.ca_dir = ca_dir
        self.clock = clock

    def open(self) -> CAStore:
        return CAStore(self.ca_dir)


def refusals(fn: F) -> F:
    """Turn library refusals into `error: ...` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PkiError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except OSError as e:  # unreadable CA files, unwritable output, full disk
            click.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def identity_json(identity: Identity) -> dict[str, object]:
    return {
        "kind": identity.kind,
        "name": identity.name,
        "role": identity.role,
        "serial": certs.format_serial(identity.serial),
    }


def check_outputs(*paths: Path, force: bool) -> None:
    """Refuse before anything is issued: existing files (without --force) or an output
    directory that does not exist."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise PkiError(f"refusing to overwrite {', '.join(existing)} (use --force)")
    for parent in {p.parent for p in paths}:
        if not parent.is_dir():
            raise PkiError(f"output directory {parent} does not exist")


@click.group()
@click.option(
    "--ca-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEWARD_CA_DIR",
    default=DEFAULT_DIR,
    show_default=True,
    help="CA directory (env EDGEWARD_CA_DIR).",
)
@click.pass_context
def pki(ctx: click.Context, ca_dir: Path) -> None:
    """Certificate authority: init, enrollment tokens, certificates, revocation."""
    obj = ctx.ensure_object(dict)
    ctx.obj = Env(ca_dir, obj.get("clock") or (lambda: datetime.now(UTC)))


pass_env = click.make_pass_decorator(Env)


@pki.command()
@click.option("--name", default="edgeward", show_default=True, help="CA name (in its subject).")
@click.option("--validity-days", type=click.IntRange(1, 36500), default=3650, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA (old files are kept aside).")
@click.option("--json", "as_json", is_flag=True)
@pass_env
@refusals
def init(env: Env, name: str, validity_days: int, force: bool, as_json: bool) -> None:
    """Create a CA (ECDSA P-256; ca.key mode 0600) and show its fingerprint."""
    with CAStore.init(
        env.ca_dir, name, env.clock(), force=force, validity=timedelta(days=validity_days)
    ) as store:
        fp = certs.fingerprint(store.ca_cert)
        if as_json:
            emit_json(
                {
                    "ca_dir": str(store.path),
                    "fingerprint": fp,
                    "ca_cert": str(store.path / "ca.crt"),
                }
            )
        else:
            click.echo(f"created CA in {store.path}")
            click.echo(f"fingerprint: {fp}")


@pki.command()
@click.argument("node_id")
@click.option("--ttl-minutes", type=click.IntRange(1, 30 * 24 * 60), default=60, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_env
@refusals
def token(env: Env, node_id: str, ttl_minutes: int, as_json: bool) -> None:
    """Mint a single-use enrollment token for NODE_ID (printed alone on stdout)."""
    with env.open() as store:
        now = env.clock()
        value = authority.mint_enrollment_token(store, node_id, now, timedelta(minutes=ttl_minutes))
        claims = tokens.read_token(store.token_secret(), value)
    if as_json:
        emit_json({"token": value, "node_id": node_id, "expires_at": claims.expires_at.isoformat()})
    else:
        click.echo(value)
        click.echo(f"expires at {claims.expires_at.isoformat()}", err=True)


@pki.command("sign-csr")
@click.argument("node_id")
@click.argument("csr_file", type=click.File("rb"))
@click.option("--token", "token_value", help="Enrollment token (spent on success).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Certificate file.")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@pass_env
@refusals
def sign_csr(
    env: Env,
    node_id: str,
    csr_file: Any,
    token_value: str | None,
    out: Path | None,
    days: int,
    force: bool,
) -> None:
    """Sign a node's CSR offline (CSR_FILE, '-' for stdin). With --token the token must be
    valid for NODE_ID and is spent; without, the operator's CA access is the authority."""
    csr_pem = csr_file.read()
    if out is not None:
        check_outputs(out, force=force)
    with env.open() as store:
        now, validity = env.clock(), timedelta(days=days)
        if token_value is not None:
            cert_pem = authority.enroll(store, node_id, token_value, csr_pem, now, validity)
        else:
            cert_pem = authority.sign_csr(store, node_id, csr_pem, now, validity)
    if out is None:
        click.echo(cert_pem.decode(), nl=False)
    else:
        atomic_write(out, cert_pem, 0o644)
        click.echo(f"wrote {out}", err=True)


def write_issued(issued: authority.Issued, out_dir: Path, stem: str) -> None:
    assert issued.key_pem is not None
    atomic_write(out_dir / f"{stem}.key", issued.key_pem, 0o600)
    atomic_write(out_dir / f"{stem}.crt", issued.cert_pem, 0o644)
    click.echo(f"wrote {out_dir / stem}.crt and {stem}.key")
    click.echo(f"serial: {certs.format_serial(issued.serial)}")
    click.echo(f"not after: {issued.cert.not_valid_after_utc.isoformat()}")


@pki.command("issue-server")
@click.argument("name", default="central")
@click.option("--host", "hosts", multiple=True, required=True, help="DNS name or IP (repeat).")
@click.option(
    "--out-dir",
    type=click.Path(exists=True, file_okay=False, writable=True, path_type=Path),
    required=True,
    help="Existing directory for NAME.crt and NAME.key.",
)
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing files in --out-dir.")
@pass_env
@refusals
def issue_server(
    env: Env, name: str, hosts: tuple[str, ...], out_dir: Path, days: int, force: bool
) -> None:
    """Issue central's server certificate (NAME.crt, NAME.key) for its hostnames/IPs."""
    check_outputs(out_dir / f"{name}.crt", out_dir / f"{name}.key", force=force)
    with env.open() as store:
        issued = authority.issue_server(store, name, list(hosts), env.clock(), timedelta(days=days))
    write_issued(issued, out_dir, name)


@pki.command("issue-admin")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option(
    "--out-dir",
    type=click.Path(exists=True, file_okay=False, writable=True, path_type=Path),
    required=True,
    help="Existing directory for NAME.crt and NAME.key.",
)
@click.option("--days", type=click.IntRange(1, 3650), default=90, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing files in --out-dir.")
@pass_env
@refusals
def issue_admin(env: Env, name: str, role: str, out_dir: Path, days: int, force: bool) -> None:
    """Issue an admin client certificate carrying ROLE (NAME.crt, NAME.key)."""
    check_outputs(out_dir / f"{name}.crt", out_dir / f"{name}.key", force=force)
    with env.open() as store:
        issued = authority.issue_admin(store, name, role, env.clock(), timedelta(days=days))
    write_issued(issued, out_dir, name)


@pki.command()
@click.argument("target")
@click.option("--reason", default="unspecified", show_default=True)
@pass_env
@refusals
def revoke(env: Env, target: str, reason: str) -> None:
    """Revoke TARGET: a node id (all its certificates), a serial (hex), or
    node:ID / serial:HEX when a value could be either."""
    with env.open() as store:
        serials = authority.revoke(store, target, env.clock(), reason)
    if not serials:
        click.echo(f"{target}: already revoked")
    for serial in serials:
        click.echo(f"revoked {certs.format_serial(serial)}")


@pki.command()
@click.option("--json", "as_json", is_flag=True)
@pass_env
@refusals
def show(env: Env, as_json: bool) -> None:
    """Show the CA, issued certificates, revocations and enrollment tokens."""
    with env.open() as store:
        now, ca = env.clock(), store.ca_cert
        issued, minted = store.issued(), store.tokens()
        path = store.path
    if as_json:
        emit_json(
            {
                "ca": {
                    "dir": str(path),
                    "subject": ca.subject.rfc4514_string(),
                    "fingerprint": certs.fingerprint(ca),
                    "not_after": ca.not_valid_after_utc.isoformat(),
                },
                "issued": [{**r.as_json(), "state": r.state(now)} for r in issued],
                "tokens": [{**t.as_json(), "state": t.state(now)} for t in minted],
            }
        )
        return
    click.echo(f"CA {ca.subject.rfc4514_string()} in {path}")
    click.echo(f"  fingerprint {certs.fingerprint(ca)}")
    click.echo(f"  valid until {ca.not_valid_after_utc.isoformat()}")
    click.echo("certificates:")
    for r in issued:
        who = f"{r.kind} {r.name}" + (f" ({r.role})" if r.role else "")
        until = r.not_after.isoformat()
        click.echo(f"  {certs.format_serial(r.serial)}  {who}  until {until}  {r.state(now)}")
    click.echo("tokens:")
    for t in minted:
        until = t.expires_at.isoformat()
        click.echo(f"  {t.token_id}  node {t.node_id}  until {until}  {t.state(now)}")


@pki.command()
@click.argument("cert_file", type=click.File("rb"))
@click.option("--json", "as_json", is_flag=True)
@pass_env
@refusals
def verify(env: Env, cert_file: Any, as_json: bool) -> None:
    """Check CERT_FILE against this CA: issuer, validity, identity, revocation.
    Exit 0 if acceptable, 1 if not (with the reason)."""
    pem = cert_file.read()
    with env.open() as store:
        now = env.clock()
        try:
            identity = authority.verify_cert(store, pem, now)
        except PkiError as e:
            if as_json:
                emit_json({"valid": False, "reason": str(e)})
                sys.exit(1)
            raise
        cert = certs.load_cert(pem)
    data = {
        "valid": True,
        **identity_json(identity),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "renew_after": certs.renew_at(cert).isoformat(),
        "should_renew": certs.should_renew(cert, now),
        "fingerprint": certs.fingerprint(cert),
    }
    if as_json:
        emit_json(data)
    else:
        role = f" role {identity.role}" if identity.role else ""
        click.echo(f"ok: {identity.kind} {identity.name}{role}, serial {data['serial']}")
        click.echo(f"valid until {data['not_after']} (renew after {data['renew_after']})")
