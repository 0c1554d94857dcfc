"""Run a trainer: `create_server(config, trainer)` for tests and embedding, `serve()` for processes."""

from __future__ import annotations

import grpc

from mint.proto import trainer_pb2, trainer_pb2_grpc
from mint.server import RemoteAuthenticator, Service, build_server, channel, run_until_signalled
from services.scheduler.quotas import QuotaLimiter, catalog_limits, open_quotas
from services.trainer.config import TrainerConfig
from services.trainer.publish import CatalogPublisher
from services.trainer.servicer import TrainerServicer
from services.trainer.trainer import Trainer


def trainer_service(servicer: TrainerServicer) -> Service:
    return Service(trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"], servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server)


def open_trainer(config: TrainerConfig) -> tuple[Trainer, TrainerServicer]:
    catalog = channel(config.catalog_address, config.tls) if config.catalog_address else None
    publisher = CatalogPublisher(catalog, config.service_key) if catalog is not None else None
    # Tenants' max_concurrent_sessions (catalog limits), counted across the fleet's trainers through Redis.
    quotas = QuotaLimiter(open_quotas(config.redis_url or None, prefix=config.redis_prefix), catalog_limits(catalog, config.service_key)) if catalog is not None else None
    trainer = Trainer(config, publisher, quotas=quotas)
    return trainer, TrainerServicer(trainer, publisher.ensure_policy if publisher else None)


def create_server(config: TrainerConfig, servicer: TrainerServicer) -> tuple[grpc.Server, int]:
    authenticator = RemoteAuthenticator(channel(config.catalog_address, config.tls), ttl_s=config.key_cache_ttl_s) if config.catalog_address else None
    return build_server([trainer_service(servicer)], address=config.address, authenticator=authenticator, max_workers=config.max_workers,
                        limits=config.request_limits, tls=config.tls)


def serve(config: TrainerConfig | None = None) -> None:
    config = config or TrainerConfig.from_env()
    trainer, servicer = open_trainer(config)
    server, port = create_server(config, servicer)
    run_until_signalled(server, port, "trainer", on_stop=trainer.close, security=config.tls.security(public=False))
