"""A revoked key across processes: the catalog refuses it at once, and every gateway (two here, each with its
own key cache) stops accepting it within the cache's TTL; a gateway refuses a key without the scope a call
needs. The gateways answer ListEngines themselves, so the
call is authenticated by their own cache, not forwarded to the catalog."""

from __future__ import annotations

import time

import pytest

from mint.config import FleetConfig
from mint.errors import Code, MintError
from mint.sdk import CatalogClient, ServiceClient
from mint.server import channel
from services.local_fleet import TENANT

# The services' key cache TTL (MINT_KEY_CACHE_TTL_S, which every service gives its RemoteAuthenticator): shorter
# than the default, so a service that ignored the setting would fail this test.
TTL_S = 2.0
assert FleetConfig().key_cache_ttl_s > TTL_S
SLACK_S = 3.0


@pytest.fixture(autouse=True)
def short_key_cache(monkeypatch):
    """Set before the fleet starts (autouse fixtures come first): the service processes inherit it."""
    monkeypatch.setenv("MINT_KEY_CACHE_TTL_S", str(TTL_S))


def _refused_within(client: ServiceClient, deadline_s: float) -> float:
    """Seconds until `client`'s gateway refuses its key; fails past `deadline_s`."""
    start = time.monotonic()
    while True:
        try:
            client.engines()
        except MintError as err:
            assert err.code is Code.UNAUTHENTICATED and "revoked" in err.message, err
            return time.monotonic() - start
        elapsed = time.monotonic() - start
        assert elapsed < deadline_s, f"a gateway still accepts the revoked key {elapsed:.1f} s after revocation (TTL {TTL_S} s)"
        time.sleep(0.1)


def test_a_revoked_key_stops_working_on_every_gateway_within_the_ttl(two_gateways):
    fleet, second = two_gateways
    key = fleet.admin.create_api_key(TENANT, "rotating", scopes=["read", "sample"])
    trainer_only = fleet.admin.create_api_key(TENANT, "trainer-only", scopes=["train"])
    clients = [ServiceClient(gateway.address, key, timeout_s=30) for gateway in (fleet.gateway, second)]
    try:
        narrow = ServiceClient(second.address, trainer_only, timeout_s=30)
        clients.append(narrow)
        with pytest.raises(MintError) as err:
            narrow.engines()
        assert err.value.code is Code.PERMISSION_DENIED and "'read' or 'sample' scope" in err.value.message, err.value
        assert "'trainer-only'" in err.value.message
        for client in clients[:2]:
            assert client.engines() == []  # each gateway has the key in its cache now
        fleet.admin.revoke_api_key(TENANT, "rotating")
        revoked_at = time.monotonic()
        with pytest.raises(MintError) as err:
            CatalogClient(channel(fleet.catalog.address), key).whoami()
        assert err.value.code is Code.UNAUTHENTICATED and "revoked at" in err.value.message
        for client in clients[:2]:
            _refused_within(client, TTL_S + SLACK_S - (time.monotonic() - revoked_at))
    finally:
        for client in clients:
            client.close()

