"""The embedded deployment: catalog (SQLite + a local blob directory), in-memory scheduler, one engine,
one trainer and the gateway's public API, all in one process on one port (and the gateway's HTTP door, with
its OpenAI-compatible API, on a port beside it).

Components talk in-process (no loopback gRPC between them); clients use the same public API as against a
fleet. The data directory keeps the catalog, blobs, engine cache, trainer states and the admin key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import grpc

from mint import auth
from mint.adapters.refs import adapter_ref
from mint.errors import Code, MintError
from mint.limits import RequestLimits
from mint.models.loading import base_description
from mint.proto import common_pb2
from mint.tls import TLSConfig
from services.catalog import convert
from services.catalog.catalog import Catalog, StoreAuthenticator
from services.catalog.config import CatalogConfig
from services.catalog.main import catalog_service, open_catalog
from services.engine.config import EngineConfig
from services.engine.engine import Engine
from services.engine.fleet import FleetAgent
from services.engine.sequences import Request
from services.engine.servicer import base_tokenizer, compute_logprobs, start_sample, stream_chunks
from services.engine.sources import BlobStoreSource
from services.gateway.http.app import http_server
from services.gateway.http.door import Door, LocalCatalog
from services.gateway.main import admit_tenant, sampling_service, start_reaper
from services.gateway.resolver import ResolveCache
from services.gateway.servicer import SamplingServicer
from services.scheduler import MemoryScheduler, QuotaLimiter, TenantQuota
from services.scheduler.quotas import MemoryQuotas, quota_of
from services.trainer.config import TrainerConfig
from services.trainer.main import trainer_service
from services.trainer.servicer import TrainerServicer
from services.trainer.session import Session
from services.trainer.trainer import Published, Trainer

LOCAL_ENGINE = "local"
TENANT = "local"


class LocalPublisher:
    """Publishes trainer revisions straight into the in-process catalog, acting for the session's tenant on
    behalf of the key that asked (the audit log names that key)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def _as(self, tenant: str, on_behalf_of: str | None) -> auth.Principal:
        return auth.Principal(tenant=tenant, key_id="trainer", role=auth.Role.SERVICE, on_behalf_of=on_behalf_of)

    def ensure_policy(self, tenant: str, policy: str, base_model: str, on_behalf_of: str | None) -> None:
        with auth.acting(self._as(tenant, on_behalf_of)):
            try:
                self.catalog.create_policy(policy, base_model)
            except MintError as err:
                if err.code is not Code.ALREADY_EXISTS:
                    raise

    def publish(self, session: Session, weights, name: str, metrics: dict[str, float], on_behalf_of: str | None) -> Published:
        with auth.acting(self._as(session.tenant, on_behalf_of)):
            revision = self.catalog.publish(
                session.policy, weights.config.to_json(), weights.safetensors_chunks(), source=f"trainer:{session.session_id}/{name}"[:256],
                metrics=metrics, idempotency_key=name,
            )
        return Published(address=f"mint://{revision.address}", number=revision.number, adapter=adapter_ref(revision))


class LocalEngines:
    """The gateway's engine connector (services.gateway.engines.EngineConnector) in the embedded process: its
    own engines, called without serialization."""

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}  # address -> engine

    def sample(self, address, request, timeout_s):
        engine = self.engines[address]
        return _LocalStream(engine, start_sample(engine, request))

    def compute_logprobs(self, address, request, timeout_s):
        return compute_logprobs(self.engines[address], request, timeout_s)

    def tokenizer(self, address, request, timeout_s):
        return base_tokenizer(self.engines[address], request)


class _LocalStream:
    def __init__(self, engine: Engine, handle: Request):
        self._engine, self._handle = engine, handle

    def __iter__(self) -> Iterator[common_pb2.SampleChunk]:
        return stream_chunks(self._handle)

    def cancel(self) -> None:
        self._engine.cancel(self._handle)


@dataclasses.dataclass(kw_only=True)
class EmbeddedConfig:
    model_path: str
    data_dir: str = ".mint"
    base_model: str = ""  # default: the model directory's name
    address: str = "127.0.0.1:50050"
    http_address: str = "127.0.0.1:0"  # the HTTP door (OpenAI-compatible API); "" for none
    engine: dict = dataclasses.field(default_factory=dict)  # EngineConfig overrides
    trainer: dict = dataclasses.field(default_factory=dict)  # TrainerConfig overrides
    request_limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)
    tls: TLSConfig = dataclasses.field(default_factory=TLSConfig)  # the public port's (mint.tls); default plaintext


class EmbeddedStack:
    def __init__(self, config: EmbeddedConfig):
        self.config = config
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.base_model = config.base_model or Path(config.model_path).name
        self.admin_key = _admin_key(data / "admin.key")
        self.catalog = open_catalog(
            CatalogConfig(
                database_url=f"sqlite:///{data / 'catalog.db'}", blob_dir=str(data / "blobs"), admin_key=self.admin_key, admin_tenant=TENANT
            )
        )
        self._register_base()
        self.scheduler = MemoryScheduler()
        start_reaper(self.scheduler)
        # One process shares the machine with a trainer: modest budgets unless the caller asks for more.
        engine_config = EngineConfig(
            model_path=config.model_path, base_model=self.base_model, cache_dir=str(data / "engine"), engine_id="engine-local",
            max_lora_rank=32, device_budget_bytes=512 * 1024**2, host_budget_bytes=1024**3, kv_cache_bytes=256 * 1024**2,
        )
        self.engine = Engine(dataclasses.replace(engine_config, **config.engine), BlobStoreSource(self.catalog.blobs)).start()
        self.fleet = FleetAgent(self.engine, self.scheduler, LOCAL_ENGINE).start()
        engines = LocalEngines()
        engines.engines[LOCAL_ENGINE] = self.engine
        trainer_config = TrainerConfig(model_path=config.model_path, base_model=self.base_model, state_dir=str(data / "trainer"))
        publisher = LocalPublisher(self.catalog)
        self.quotas = QuotaLimiter(MemoryQuotas(), self._tenant_quota)
        self.catalog.limit_listeners.append(self.quotas.forget)
        self.trainer = Trainer(dataclasses.replace(trainer_config, **config.trainer), publisher, quotas=self.quotas)
        resolver = ResolveCache(self._resolve)
        self.catalog.policy_listeners.append(resolver.invalidate)
        trainer_servicer = TrainerServicer(self.trainer, publisher.ensure_policy)
        catalog = catalog_service(self.catalog)
        sampling = SamplingServicer(resolver, self.scheduler, engines, quotas=self.quotas)
        authenticator = StoreAuthenticator(self.catalog.store)
        admit = admit_tenant(self.quotas)
        self.server, self.port = _build(
            [
                catalog,
                sampling_service(sampling),
                trainer_service(trainer_servicer),
            ],
            config.address,
            authenticator,
            config.request_limits,
            config.tls,
            admit,
        )

        self.http = None
        if config.http_address:
            self.door = Door(sampling, authenticator, LocalCatalog(catalog.servicer), limits=config.request_limits, admit=admit)
            self.http = http_server(self.door, config.http_address, config.tls)

    @property
    def http_url(self) -> str | None:
        """The HTTP door's base URL (its OpenAI-compatible API is under /v1), or None without one."""
        return self.http.url if self.http is not None else None

    @property
    def address(self) -> str:
        host = self.config.address.rpartition(":")[0]
        return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def start(self) -> EmbeddedStack:
        self.server.start()
        if self.http is not None:
            self.http.start()
        return self

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
        self.server.stop(2).wait()
        self.fleet.stop()
        self.engine.stop()
        self.trainer.close()
        self.quotas.close()
        self.catalog.store.close()

    def _resolve(self, ref: str, api_key: str):
        from mint.proto import catalog_pb2

        revision = self.catalog.resolve(ref)  # runs as the caller: the interceptor set the principal
        return catalog_pb2.ResolveResponse(revision=convert.revision_pb(revision), adapter=adapter_ref(revision))

    def _tenant_quota(self, tenant: str) -> TenantQuota:
        with auth.acting(auth.Principal(tenant=TENANT, key_id="embedded", role=auth.Role.ADMIN)):
            return quota_of(self.catalog.get_tenant_limits(tenant))

    def _register_base(self) -> None:
        with auth.acting(auth.Principal(tenant=TENANT, key_id="embedded", role=auth.Role.ADMIN)):
            self.catalog.register_base_model(name=self.base_model, **base_description(self.config.model_path))


def _build(services, address: str, authenticator, limits: RequestLimits, tls: TLSConfig, admit) -> tuple[grpc.Server, int]:
    from mint.server import build_server

    return build_server(services, address=address, authenticator=authenticator, max_workers=128, limits=limits, tls=tls, public=True, admit=admit)


def _admin_key(path: Path) -> str:
    """The data directory's admin key: made once, readable only by its owner."""
    if path.is_file():
        return path.read_text().strip()
    key = auth.generate_key().key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
