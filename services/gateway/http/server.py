"""An ASGI app served by uvicorn on a thread of its own, its socket bound when built (so port 0 works and
the port is known before it starts), stopped with the process's other servers."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from mint.errors import Code, MintError
from mint.tls import TLSConfig


class HttpServer:
    """`tls`: the process's TLS config, applied as on its public gRPC port (HTTPS when a certificate is set,
    client certificates only where MINT_TLS_CLIENT_AUTH=require)."""

    def __init__(self, app, address: str, tls: TLSConfig | None = None):
        host, _, port = address.rpartition(":")
        self._socket = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host.strip("[]") or "0.0.0.0", int(port)))
        except OSError as err:
            self._socket.close()
            raise MintError(Code.UNAVAILABLE, f"could not bind the HTTP address {address}: {err}") from None
        self.host = host.strip("[]")
        self.port = self._socket.getsockname()[1]
        tls_options = tls.http_server_options(public=True) if tls is not None else {}
        self.scheme = "https" if tls_options else "http"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30,
                                timeout_graceful_shutdown=2, **tls_options)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> HttpServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise MintError(Code.UNAVAILABLE, f"the HTTP server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self, grace_s: float = 2.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=grace_s + 5)
        self._socket.close()
