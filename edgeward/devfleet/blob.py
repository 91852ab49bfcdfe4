"""The fleet's traffic source: GET /blob/N answers exactly N bytes.

Run as a process of the fleet: `python -m edgeward.devfleet.blob HOST PORT`.
"""

from __future__ import annotations

import http.server
import sys

CHUNK = b"\xa5" * 65536


class BlobHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        try:
            size = int(self.path.rsplit("/", 1)[-1])
        except ValueError:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        remaining = size
        try:
            while remaining > 0:
                n = min(remaining, len(CHUNK))
                self.wfile.write(CHUNK[:n])
                remaining -= n
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str]) -> None:
    host, port = argv[0], int(argv[1])
    server = http.server.ThreadingHTTPServer((host, port), BlobHandler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
