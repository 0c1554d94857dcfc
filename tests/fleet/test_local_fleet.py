"""LocalFleet leaves nothing running when a service of it will not start (a leaked catalog or engine outlives
its test, holds CPU and ports, and makes later tests slow and flaky)."""

from __future__ import annotations

import pytest

from mint.errors import MintError
from mint.procs import ServiceProcess
from services import local_fleet
from services.local_fleet import LocalFleet, RedisServer


def test_a_fleet_that_cannot_start_stops_what_it_started(tmp_path, pg_url, fleet_base, monkeypatch):
    started: list[ServiceProcess] = []
    redis_servers: list[RedisServer] = []

    class Recorded(ServiceProcess):
        def __init__(self, *args, **kwargs):
            started.append(self)
            super().__init__(*args, **kwargs)

    class RecordedRedis(RedisServer):
        def __init__(self, *args, **kwargs):
            redis_servers.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(local_fleet, "ServiceProcess", Recorded)
    monkeypatch.setattr(local_fleet, "RedisServer", RecordedRedis)
    with pytest.raises(MintError, match="services.engine exited"):
        LocalFleet(tmp_path, pg_url, fleet_base, engines=1, engine_env={"MINT_HEARTBEAT_S": "soon"})  # engines refuse it
    assert len(started) == 2 and redis_servers  # the catalog came up, the engine did not
    assert all(process.proc.poll() is not None for process in started)
    assert all(server.proc.poll() is not None for server in redis_servers)


def test_a_redis_server_that_exits_at_start_fails_at_once_saying_so(tmp_path):
    with pytest.raises(RuntimeError, match="redis-server exited with status"):
        RedisServer(tmp_path / "missing")  # redis-server refuses a --dir that does not exist
