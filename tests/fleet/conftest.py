"""A real fleet in processes (services.local_fleet): Postgres catalog, a private Redis, engines, a gateway."""

from __future__ import annotations

import pytest

from mint.models.presets import init_base
from mint.procs import ServiceProcess
from services.local_fleet import LocalFleet
from tests.conftest import assert_clean_logs

HEARTBEAT_S = 0.5


@pytest.fixture(scope="session")
def fleet_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("fleet") / "tiny"
    init_base(path, arch="llama", preset="tiny", seed=5)
    return path


@pytest.fixture
def fleet(tmp_path, pg_url, fleet_base):
    fleet = LocalFleet(tmp_path, pg_url, fleet_base, engines=2, heartbeat_s=HEARTBEAT_S)
    try:
        fleet.wait_for_engines(2)
        yield fleet
    finally:
        fleet.stop()  # also when the engines never registered: no process outlives its test
    assert_clean_logs(fleet.workdir.glob("*.log"))


@pytest.fixture
def two_gateways(tmp_path, pg_url, fleet_base):
    """A fleet without engines and a second gateway process on the same catalog and Redis: (fleet, second)."""
    fleet = LocalFleet(tmp_path, pg_url, fleet_base, engines=0)
    second = None
    try:
        second = ServiceProcess(
            ["-m", "services.gateway"],
            {"MINT_CATALOG_URL": fleet.catalog.address, "MINT_REDIS_URL": fleet.redis.url, "MINT_SERVICE_KEY": fleet.service_key,
             "MINT_GATEWAY_ADDRESS": "127.0.0.1:0", "MINT_GATEWAY_HTTP_ADDRESS": "off"},
            log_path=str(tmp_path / "gateway-2.log"),
        )
        yield fleet, second
    finally:
        if second is not None:
            second.stop()
        fleet.stop()
    assert_clean_logs(fleet.workdir.glob("*.log"))
