"""A real fleet in processes (services.local_fleet): Postgres catalog, a private Redis, engines, a gateway."""

from __future__ import annotations

import pytest

from mint.models.presets import init_base
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
