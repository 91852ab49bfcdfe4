"""Interop: independent TLS stacks (grpcio/BoringSSL, openssl s_client) against the same
grpclib server with edgeward's server context and a node certificate from our CA."""

from __future__ import annotations

import asyncio
import shutil

import grpc
import pytest

from edgeward.proto import v1
from tests.pki.servers import STATUS_PATH, Pki, node_files, serving


def test_grpcio_client_with_valid_node_cert_completes_mtls_call(pki: Pki) -> None:
    files = node_files(pki, "edge-grpcio")

    def call(port: int) -> v1.GetStatusResponse:
        creds = grpc.ssl_channel_credentials(
            root_certificates=pki.ca_file.read_bytes(),
            private_key=files.key.read_bytes(),
            certificate_chain=files.cert.read_bytes(),
        )
        # The server certificate carries IP SAN 127.0.0.1, so no name override is needed.
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            get_status = channel.unary_unary(
                STATUS_PATH,
                request_serializer=bytes,
                response_deserializer=v1.GetStatusResponse.parse,
            )
            return get_status(v1.GetStatusRequest(), timeout=10)

    async def run() -> tuple[v1.GetStatusResponse, list]:
        async with serving(pki) as (port, seen):
            reply = await asyncio.to_thread(call, port)
        return reply, seen.identities

    reply, identities = asyncio.run(run())
    assert reply.nodes_total == 1
    assert [(i.kind, i.node_id) for i in identities] == [("node", "edge-grpcio")]


def test_grpcio_client_without_certificate_is_refused(pki: Pki) -> None:
    def call(port: int) -> grpc.StatusCode:
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            get_status = channel.unary_unary(
                STATUS_PATH,
                request_serializer=bytes,
                response_deserializer=v1.GetStatusResponse.parse,
            )
            try:
                get_status(v1.GetStatusRequest(), timeout=10)
            except grpc.RpcError as e:
                return e.code()
        return grpc.StatusCode.OK

    async def run() -> tuple[grpc.StatusCode, list]:
        async with serving(pki) as (port, seen):
            code = await asyncio.to_thread(call, port)
        return code, seen.identities

    code, identities = asyncio.run(run())
    assert code == grpc.StatusCode.UNAVAILABLE
    assert identities == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")
def test_openssl_s_client_completes_handshake_with_alpn_h2(pki: Pki) -> None:
    files = node_files(pki, "edge-openssl")

    async def run() -> tuple[int, str]:
        async with serving(pki) as (port, _seen):
            proc = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                "-CAfile", str(pki.ca_file), "-cert", str(files.cert), "-key", str(files.key),
                "-alpn", "h2", "-verify_return_error", "-verify_ip", "127.0.0.1",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
        return proc.returncode or 0, out.decode(errors="replace")

    returncode, output = asyncio.run(run())
    assert returncode == 0, output
    assert "Verify return code: 0 (ok)" in output
    assert "ALPN protocol: h2" in output
    assert "New, TLSv1.3" in output
