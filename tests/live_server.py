"""A real uvicorn server for tests: the service on a free loopback port, in a background thread."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from service.server import uvicorn_options


class LiveServer:
    """A uvicorn server in a background thread, on a free loopback port, run as `swishnet serve` runs it."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **uvicorn_options(app.state.settings)))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive(), "server exited during start-up (see its log above)"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, query: str = "", path: str = "/v1/stream") -> str:
        return f"ws://127.0.0.1:{self.port}{path}{query}"
