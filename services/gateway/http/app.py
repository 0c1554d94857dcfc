"""The gateway's HTTP app: every HTTP API's routes on one Starlette app, and the server that runs it."""

from __future__ import annotations

from starlette.applications import Starlette

from mint.tls import TLSConfig
from services.gateway.http.door import Door
from services.gateway.http.openai_api import OpenAIApi
from services.gateway.http.server import HttpServer
from services.gateway.http.status import StatusPage


def create_app(door: Door) -> Starlette:
    return Starlette(routes=[*OpenAIApi(door).routes(), *StatusPage(door).routes()])


def http_server(door: Door, address: str, tls: TLSConfig | None = None) -> HttpServer:
    """The HTTP door bound to `address` (port 0: any free port), HTTPS under `tls`'s certificate, not started:
    call `.start()`."""
    return HttpServer(create_app(door), address, tls)
