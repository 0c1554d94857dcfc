"""Publishing a session's adapter to the catalog: the adapter-only handoff (no merged checkpoint exists).

The trainer publishes with a service key acting for the session's tenant, on behalf of the key that asked
(x-mint-on-behalf-of), so the catalog's audit log and the revision's created_by name that key, not the
trainer's. The checkpoint name is the idempotency key, so a publish retried after a crash returns the
revision already made.
"""

from __future__ import annotations

import grpc

from mint.adapters import AdapterWeights
from mint.adapters.refs import adapter_ref
from mint.errors import Code, MintError
from mint.sdk.catalog import CatalogClient
from services.trainer.session import Session
from services.trainer.trainer import Published


class CatalogPublisher:
    def __init__(self, channel: grpc.Channel, service_key: str):
        self._channel = channel
        self._key = service_key

    def _client(self, tenant: str, on_behalf_of: str | None) -> CatalogClient:
        return CatalogClient(self._channel, self._key, tenant=tenant, on_behalf_of=on_behalf_of)

    def ensure_policy(self, tenant: str, policy: str, base_model: str, on_behalf_of: str | None) -> None:
        try:
            self._client(tenant, on_behalf_of).create_policy(f"{tenant}/{policy}", base_model)
        except MintError as err:
            if err.code is not Code.ALREADY_EXISTS:
                raise

    def publish(self, session: Session, weights: AdapterWeights, name: str, metrics: dict[str, float], on_behalf_of: str | None) -> Published:
        revision = self._client(session.tenant, on_behalf_of).publish(
            session.full_policy,
            weights,
            source=f"trainer:{session.session_id}/{name}"[:256],
            metrics=metrics,
            idempotency_key=name,
        )
        return Published(address=f"mint://{revision.address}", number=revision.number, adapter=adapter_ref(revision))
