"""A small real HTTP server on 127.0.0.1 whose responses the test chooses, path by path."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What the server sends for one path: status, headers and body.

    Attributes:
        hang_s: seconds to wait before sending anything (a server that never responds).
        trickle_s: seconds between bytes of the body (a server that trickles it).
    """

    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    hang_s: float = 0.0
    trickle_s: float = 0.0


class RoutedServer:
    """Serve ``routes`` (path with query -> Route) and record every request's path and headers."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - name fixed by http.server
                owner.requests.append((self.path, dict(self.headers)))
                route = owner.routes.get(self.path, Route(404, b'{"detail": "Not found."}',
                                                          {"Content-Type": "application/json"}))
                if route.hang_s:
                    time.sleep(route.hang_s)
                    return
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if not route.trickle_s:
                    self.wfile.write(route.body)
                    return
                try:
                    for index in range(len(route.body)):
                        self.wfile.write(route.body[index:index + 1])
                        self.wfile.flush()
                        time.sleep(route.trickle_s)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
