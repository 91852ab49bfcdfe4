"""State shared across processes: several processes race to enroll with the same token
against one CA directory (exactly one certificate is issued per token); a revocation
made by the CLI applies to a verifier another process already holds open."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgeward.pki import authority
from edgeward.pki.errors import PeerRejected
from edgeward.pki.store import CAStore
from edgeward.pki.verify import Verifier

RACER = r"""
import json, sys, time
from datetime import datetime, UTC
from pathlib import Path
from edgeward.pki import authority, certs
from edgeward.pki.errors import TokenRejected
from edgeward.pki.store import CAStore

ca_dir, go_file, tokens = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
store = CAStore(ca_dir)
key = certs.generate_key()
csr = certs.make_csr(key, "edge-1")
deadline = time.monotonic() + 20
while not go_file.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
results = []
for token in tokens:
    try:
        pem = authority.enroll(store, "edge-1", token, csr, datetime.now(UTC))
        results.append(["issued", certs.format_serial(certs.load_cert(pem).serial_number)])
    except TokenRejected as e:
        results.append(["refused", str(e)])
print(json.dumps(results))
"""


def test_each_token_is_spent_exactly_once_across_processes(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca_dir = tmp_path / "ca"
    with CAStore.init(ca_dir, "race", now) as store:
        tokens = [authority.mint_enrollment_token(store, "edge-1", now) for _ in range(8)]
    go_file = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(ca_dir), str(go_file), json.dumps(tokens)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        time.sleep(0.5)  # let the interpreters import; correctness does not depend on it
        go_file.touch()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    per_token = list(zip(*(json.loads(out) for out, _ in outputs), strict=True))
    issued_serials = []
    for results in per_token:
        outcomes = sorted(kind for kind, _ in results)
        assert outcomes == ["issued", "refused", "refused", "refused"], results
        assert all("already used" in msg for kind, msg in results if kind == "refused")
        issued_serials += [serial for kind, serial in results if kind == "issued"]
    with CAStore(ca_dir) as store:
        recorded = sorted(f"{r.serial:x}" for r in store.issued())
        assert recorded == sorted(issued_serials)
        assert all(t.used_at is not None for t in store.tokens())


def test_revocation_by_the_cli_process_applies_to_an_open_verifier(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca_dir = tmp_path / "ca"
    with CAStore.init(ca_dir, "live", now) as store:
        issued = authority.issue_node(store, "edge-1", now)
        verifier = Verifier.from_store(store)  # what a running central holds
        assert verifier.check_peer(issued.cert_pem).node_id == "edge-1"
        edgeward = Path(sys.executable).with_name("edgeward")
        done = subprocess.run(
            [str(edgeward), "pki", "--ca-dir", str(ca_dir), "revoke", "edge-1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("revoked ")
        with pytest.raises(PeerRejected, match="is revoked"):
            verifier.check_peer(issued.cert_pem)
