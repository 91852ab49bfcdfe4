"""The control socket: real unix socket, trio server, blocking CLI client."""

from __future__ import annotations

import socket
import stat

import pytest
import trio

from edgeward.agent.control import ControlError, ask, serve_control


async def _echo_status(request):
    if request.get("cmd") == "status":
        return {"ok": True, "epoch": "e1"}
    raise KeyError(request.get("cmd"))


async def test_status_round_trip_and_socket_mode(tmp_path):
    path = tmp_path / "run" / "control.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, _echo_status)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        answer = await trio.to_thread.run_sync(ask, path, {"cmd": "status"})
        assert answer == {"ok": True, "epoch": "e1"}
        nursery.cancel_scope.cancel()
    assert not path.exists(), "the socket is removed when the daemon stops"


async def test_bad_requests_get_an_error_answer(tmp_path):
    path = tmp_path / "control.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, _echo_status)
        unknown = await trio.to_thread.run_sync(ask, path, {"cmd": "reboot"})
        assert unknown == {"ok": False, "error": "bad request: 'reboot'"}

        def send_raw(payload: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                sock.sendall(payload)
                return sock.recv(4096)

        garbage = await trio.to_thread.run_sync(send_raw, b"{not json\n")
        assert b"bad request" in garbage
        not_object = await trio.to_thread.run_sync(send_raw, b"[1, 2]\n")
        assert b"a request is a JSON object" in not_object
        nursery.cancel_scope.cancel()


def test_daemon_not_running_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="edgeward-agent is not running"):
        ask(tmp_path / "absent.sock", {"cmd": "status"})


async def test_a_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, _echo_status)
        answer = await trio.to_thread.run_sync(ask, path, {"cmd": "status"})
        assert answer["ok"] is True
        nursery.cancel_scope.cancel()
