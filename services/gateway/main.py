"""Run the gateway: the public API on one port, in front of the catalog, the engines and a trainer."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import grpc

from mint import auth
from mint.bus import RedisPolicyBus
from mint.errors import MintError
from mint.proto import catalog_pb2, catalog_pb2_grpc, gateway_pb2, gateway_pb2_grpc, trainer_pb2
from mint.server import RemoteAuthenticator, Service, build_server, channel, run_until_signalled
from services.gateway.config import GatewayConfig
from services.gateway.engines import GrpcEngines
from services.gateway.forwarding import forwarding_handler
from services.gateway.http.app import http_server
from services.gateway.http.door import Door, GrpcCatalog
from services.gateway.http.server import HttpServer
from services.gateway.resolver import ResolveCache
from services.gateway.servicer import SamplingServicer
from services.scheduler import QuotaLimiter, Scheduler, open_quotas, open_scheduler
from services.scheduler.quotas import catalog_limits

log = logging.getLogger(__name__)


def generic_service(handler: grpc.GenericRpcHandler, descriptor) -> Service:
    return Service(descriptor, handler, lambda h, server: server.add_generic_rpc_handlers((h,)))


def sampling_service(servicer: SamplingServicer) -> Service:
    return Service(gateway_pb2.DESCRIPTOR.services_by_name["SamplingService"], servicer, gateway_pb2_grpc.add_SamplingServiceServicer_to_server)


def catalog_resolver(catalog: grpc.Channel):
    stub = catalog_pb2_grpc.CatalogServiceStub(catalog)

    def resolve(ref: str, api_key: str) -> catalog_pb2.ResolveResponse:
        try:
            return stub.Resolve(catalog_pb2.ResolveRequest(ref=ref), metadata=auth.call_metadata(api_key), timeout=30)
        except grpc.RpcError as err:
            raise MintError.from_rpc_error(err) from None

    return resolve


def admit_tenant(quotas: QuotaLimiter):
    """The server's per-call check: the caller's tenant's request rate."""

    def admit(principal: auth.Principal | None, method: str) -> None:
        if principal is not None:
            quotas.admit(principal.tenant)

    return admit


def start_reaper(scheduler: Scheduler) -> threading.Thread:
    """Reap engines unseen for 3 heartbeat periods, every period. Every gateway does this; the scheduler
    makes sure each dead engine is handled once."""

    def reap() -> None:
        while True:
            time.sleep(scheduler.heartbeat_s)
            try:
                for engine_id in scheduler.reap():
                    log.warning("engine %s stopped heartbeating; its adapters are placed elsewhere", engine_id)
            except MintError as err:
                log.warning("reaper: %s", err)

    thread = threading.Thread(target=reap, name="reaper", daemon=True)
    thread.start()
    return thread


def create_server(config: GatewayConfig) -> tuple[grpc.Server, int]:
    server, port, _ = create_servers(dataclasses.replace(config, http_address="off"))
    return server, port


def create_servers(config: GatewayConfig) -> tuple[grpc.Server, int, HttpServer | None]:
    """The gRPC server and its port, and the HTTP door over the same servicer (None with http_address
    "off"), bound and not started."""
    catalog = channel(config.catalog_address, config.tls)
    resolver = ResolveCache(catalog_resolver(catalog), ttl_s=config.resolve_ttl_s)
    if config.redis_url:
        RedisPolicyBus(config.redis_url, config.redis_prefix).subscribe(resolver.invalidate)
    scheduler = open_scheduler(config.redis_url or None, prefix=config.redis_prefix, heartbeat_s=config.heartbeat_s)
    start_reaper(scheduler)
    # Tenants' quotas (the catalog's limits): requests per second on every call, sequences around each sample.
    quotas = QuotaLimiter(open_quotas(config.redis_url or None, prefix=config.redis_prefix), catalog_limits(catalog, config.service_key))
    sampling = SamplingServicer(resolver, scheduler, GrpcEngines(config.service_key, config.tls), retries=config.retries, quotas=quotas)
    authenticator = RemoteAuthenticator(catalog, ttl_s=config.key_cache_ttl_s)
    services = [
        sampling_service(sampling),
        generic_service(forwarding_handler(catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"], lambda: catalog), catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]),
    ]
    if config.trainer_address:
        trainer = channel(config.trainer_address, config.tls)
        descriptor = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]
        services.append(generic_service(forwarding_handler(descriptor, lambda: trainer), descriptor))
    admit = admit_tenant(quotas)
    server, port = build_server(services, address=config.address, authenticator=authenticator, max_workers=config.max_workers,
                                limits=config.request_limits, tls=config.tls, public=True, admit=admit)
    http = None
    if config.http_address != "off":
        door = Door(sampling, authenticator, GrpcCatalog(catalog), limits=config.request_limits, max_workers=config.max_workers,
                    admit=admit)
        http = http_server(door, config.http_address, config.tls)
    return server, port, http


def serve(config: GatewayConfig | None = None) -> None:
    config = config or GatewayConfig.from_env()
    server, port, http = create_servers(config)
    if http is not None:
        http.start()
        print(f"mint gateway HTTP (OpenAI-compatible API at /v1) on {http.url}", flush=True)
    run_until_signalled(server, port, "gateway", on_stop=http.stop if http is not None else None, security=config.tls.security(public=True))
