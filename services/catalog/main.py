"""Run the catalog service: `create_server(config)` for tests and embedding, `serve()` for processes."""

from __future__ import annotations

import logging

import grpc

from mint.auth import Role
from mint.blobs import LocalBlobStore
from mint.bus import RedisPolicyBus
from mint.proto import catalog_pb2, catalog_pb2_grpc
from mint.server import Service, build_server, run_until_signalled
from services.catalog.catalog import Catalog, StoreAuthenticator
from services.catalog.config import CatalogConfig
from services.catalog.servicer import CatalogServicer
from services.catalog.store import CatalogStore

log = logging.getLogger(__name__)


def open_catalog(config: CatalogConfig) -> Catalog:
    store = CatalogStore.open(config.database_url, migrate=config.migrate)
    if config.admin_key:
        store.tenants.ensure_key(config.admin_key, tenant=config.admin_tenant, role=Role.ADMIN, name="bootstrap-admin")
    blobs = LocalBlobStore(config.blob_dir)
    removed = blobs.remove_stale_uploads()
    if removed:
        log.info("removed %d staging files of uploads that never finished", removed)
    catalog = Catalog(store, blobs, config.limits)
    if config.redis_url:
        catalog.policy_listeners.append(RedisPolicyBus(config.redis_url, config.redis_prefix).publish)
    return catalog


def catalog_service(catalog: Catalog) -> Service:
    return Service(catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"], CatalogServicer(catalog), catalog_pb2_grpc.add_CatalogServiceServicer_to_server)


def create_server(config: CatalogConfig, catalog: Catalog | None = None) -> tuple[grpc.Server, int]:
    """A server for `catalog` (opened from `config` when not given); not started."""
    catalog = catalog or open_catalog(config)
    return build_server(
        [catalog_service(catalog)],
        address=config.address,
        authenticator=StoreAuthenticator(catalog.store, ttl_s=config.key_cache_ttl_s),
        max_workers=config.max_workers,
        limits=config.request_limits,
        tls=config.tls,
    )


def serve(config: CatalogConfig | None = None) -> None:
    config = config or CatalogConfig.from_env()
    catalog = open_catalog(config)
    server, port = create_server(config, catalog)
    run_until_signalled(server, port, "catalog", on_stop=catalog.store.close, security=config.tls.security(public=False))
