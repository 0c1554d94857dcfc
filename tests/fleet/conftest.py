"""A real fleet in processes: Postgres catalog, a private Redis, engines and a gateway, all on loopback."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from mint import auth
from mint.models.loading import read_config, weights_sha256
from mint.models.presets import init_base
from mint.procs import ServiceProcess
from mint.sdk import CatalogClient, ServiceClient
from mint.server import channel

HEARTBEAT_S = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, so it can be killed and restarted."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


class Fleet:
    def __init__(self, workdir: Path, database_url: str, base_dir: Path, engines: int):
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        self.admin_key = auth.generate_key().key
        self.catalog = ServiceProcess(
            ["-m", "services.catalog"],
            {"MINT_DATABASE_URL": database_url, "MINT_BLOB_DIR": str(workdir / "blobs"), "MINT_ADMIN_KEY": self.admin_key,
             "MINT_CATALOG_ADDRESS": "127.0.0.1:0", "MINT_REDIS_URL": self.redis.url},
            log_path=str(workdir / "catalog.log"),
        )
        admin = CatalogClient(channel(self.catalog.address), self.admin_key)
        admin.create_tenant("acme")
        self.member_key = admin.create_api_key("acme", "ci", "member")
        self.service_key = admin.create_api_key("admin", "fleet", "service")
        config = read_config(base_dir)
        admin.register_base_model(
            "tiny", architecture=config.architecture, config=config.to_hf(), weights_sha256=weights_sha256(base_dir),
            module_shapes=config.module_shapes(), num_layers=config.num_layers,
        )
        self.base_dir = base_dir
        self.engines = [self.start_engine(i) for i in range(engines)]
        self.gateway = ServiceProcess(
            ["-m", "services.gateway"],
            {"MINT_CATALOG_URL": self.catalog.address, "MINT_REDIS_URL": self.redis.url, "MINT_SERVICE_KEY": self.service_key,
             "MINT_HEARTBEAT_S": str(HEARTBEAT_S), "MINT_GATEWAY_ADDRESS": "127.0.0.1:0"},
            log_path=str(workdir / "gateway.log"),
        )
        self.client = ServiceClient(self.gateway.address, self.member_key, timeout_s=120)

    def start_engine(self, index: int) -> ServiceProcess:
        return ServiceProcess(
            ["-m", "services.engine"],
            {"MINT_MODEL_PATH": str(self.base_dir), "MINT_BASE_MODEL": "tiny", "MINT_ENGINE_ID": f"engine-{index}",
             "MINT_ENGINE_ADDRESS": "127.0.0.1:0", "MINT_ENGINE_CACHE_DIR": str(self.workdir / f"engine-{index}"),
             "MINT_CATALOG_URL": self.catalog.address, "MINT_SERVICE_KEY": self.service_key, "MINT_REDIS_URL": self.redis.url,
             "MINT_HEARTBEAT_S": str(HEARTBEAT_S), "MINT_DEVICE_BUDGET_BYTES": str(64 * 1024**2), "MINT_KV_CACHE_BYTES": str(32 * 1024**2)},
            log_path=str(self.workdir / f"engine-{index}.log"),
        )

    def wait_for_engines(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.client.engines()) < count:
            assert time.monotonic() < deadline, f"only {len(self.client.engines())} of {count} engines registered"
            time.sleep(0.1)

    def stop(self) -> None:
        self.client.close()
        for process in [self.gateway, *self.engines, self.catalog]:
            process.stop()
        if self.redis.proc and self.redis.proc.poll() is None:
            self.redis.kill()


@pytest.fixture(scope="session")
def fleet_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("fleet") / "tiny"
    init_base(path, arch="llama", preset="tiny", seed=5)
    return path


@pytest.fixture
def fleet(tmp_path, pg_url, fleet_base):
    fleet = Fleet(tmp_path, pg_url, fleet_base, engines=2)
    fleet.wait_for_engines(2)
    yield fleet
    fleet.stop()
