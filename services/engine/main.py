"""Run an engine: `create_server(config)` for tests and embedding, `serve()` for processes."""

from __future__ import annotations

import logging

import grpc
import torch
from grpc_health.v1 import health, health_pb2

from mint.auth import Role
from mint.blobs import LocalBlobStore
from mint.errors import MintError
from mint.proto import engine_pb2, engine_pb2_grpc
from mint.sdk.catalog import CatalogClient
from mint.server import RemoteAuthenticator, Service, build_server, channel, run_until_signalled
from services.engine.config import EngineConfig
from services.engine.engine import Engine
from services.engine.fleet import FleetAgent
from services.engine.residency import AdapterSource
from services.engine.servicer import EngineServicer
from services.engine.sources import BlobStoreSource, CatalogBlobSource
from services.scheduler import open_scheduler

log = logging.getLogger(__name__)


def engine_service(engine: Engine) -> Service:
    return Service(engine_pb2.DESCRIPTOR.services_by_name["EngineService"], EngineServicer(engine), engine_pb2_grpc.add_EngineServiceServicer_to_server)


def open_engine(config: EngineConfig) -> Engine:
    """An engine that fetches adapters from the catalog at config.catalog_address (reading them straight from
    the catalog's blob store when config.blob_dir names it), and registers its base model there when its key
    may (an admin key; otherwise an operator runs `mint base register`)."""
    source: AdapterSource = CatalogBlobSource(channel(config.catalog_address, config.tls), config.service_key)
    if config.blob_dir:
        source = BlobStoreSource(LocalBlobStore(config.blob_dir, create=False), fallback=source)
    engine = Engine(config, source)
    try:
        CatalogClient(channel(config.catalog_address, config.tls), config.service_key).register_base_dir(config.model_path, engine.base_model)
    except MintError as err:
        log.warning("base model %s not registered by this engine: %s", engine.base_model, err)
    return engine.start()


def create_server(config: EngineConfig, engine: Engine) -> tuple[grpc.Server, int]:
    """A server for `engine`; callers need service or admin keys, checked with the catalog. Its gRPC health
    turns NOT_SERVING if the engine stops serving (its step loop ended), for load balancers and probes."""
    authenticator = None
    if config.catalog_address:
        authenticator = RemoteAuthenticator(channel(config.catalog_address, config.tls), roles=frozenset({Role.SERVICE, Role.ADMIN}), ttl_s=config.key_cache_ttl_s)
    service = engine_service(engine)
    checks = health.HealthServicer()
    server, port = build_server([service], address=config.address, authenticator=authenticator, max_workers=config.max_num_seqs + 16,
                                limits=config.request_limits, health_servicer=checks, tls=config.tls)
    engine.on_failure(lambda: [checks.set(name, health_pb2.HealthCheckResponse.NOT_SERVING) for name in ("", service.name)])
    return server, port


def serve(config: EngineConfig | None = None) -> None:
    config = config or EngineConfig.from_env()
    if config.torch_threads:
        # On a host shared with other busy processes, fewer threads than cores avoids OpenMP workers
        # spinning at barriers while the OS runs someone else.
        torch.set_num_threads(config.torch_threads)
    engine = open_engine(config)
    server, port = create_server(config, engine)
    agent = None
    if config.redis_url:
        scheduler = open_scheduler(config.redis_url, prefix=config.redis_prefix, heartbeat_s=config.heartbeat_s)
        agent = FleetAgent(engine, scheduler, config.advertise_address or f"127.0.0.1:{port}")

    def on_stop() -> None:
        if agent is not None:
            agent.stop()
        engine.stop()

    if agent is not None:
        agent.start()  # requests routed here before the server starts are retried elsewhere
    run_until_signalled(server, port, "engine", on_stop=on_stop, security=config.tls.security(public=False))
