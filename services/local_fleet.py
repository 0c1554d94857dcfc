"""A MinT fleet as local processes on loopback: catalog (Postgres), a Redis of its own, engines and a
gateway. For multi-process tests, fleet benchmarks and trying the stack shape without containers.

    fleet = LocalFleet(workdir, database_url, base_dir, engines=2)
    fleet.client.create_sampling_client("acme/bot@prod").sample("hi")
    fleet.stop()
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis

from mint import auth
from mint.procs import ServiceProcess
from mint.sdk import CatalogClient, ServiceClient
from mint.server import channel
from mint.tls import TLSConfig

BASE_MODEL = "tiny"
TENANT = "acme"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the fleet's own, so that it can be killed and restarted."""

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
        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        for _ in range(200):
            if self.proc.poll() is not None:  # e.g. its --dir is missing, or the port was taken meanwhile
                raise RuntimeError(f"redis-server exited with status {self.proc.returncode} at start (port {self.port}, dir {self.workdir})")
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LocalFleet:
    def __init__(
        self,
        workdir: Path,
        database_url: str,
        base_dir: Path,
        *,
        engines: int = 2,
        heartbeat_s: float = 0.5,
        engine_env: dict[str, str] | None = None,
        trainer: bool = False,
        shared_blobs: bool = False,
        tls: TLSConfig | None = None,
    ):
        """`shared_blobs`: engines read adapter blobs from the catalog's blob directory (as on one host or a
        shared volume) instead of downloading them from the catalog. `tls`: every service's MINT_TLS_* (one
        certificate for all, valid for 127.0.0.1): with a CA, services talk mTLS and the gateway serves TLS."""
        self.workdir = Path(workdir)
        self.tls = tls or TLSConfig()
        tls_env = self.tls.env()
        self.base_dir = Path(base_dir)
        self.heartbeat_s = heartbeat_s
        self.engine_env = engine_env or {}
        self.blob_dir = self.workdir / "blobs"
        if shared_blobs:
            self.engine_env = {"MINT_BLOB_DIR": str(self.blob_dir), **self.engine_env}
        self.catalog = self.trainer = self.gateway = self.client = None
        self.http_port = free_port()  # the gateway's HTTP door (OpenAI API, status page): chosen here, so it is known
        self.engines: list[ServiceProcess] = []
        self.redis = RedisServer(self.workdir)
        try:
            self._start(database_url, engines, heartbeat_s, trainer, tls_env)
        except BaseException:  # a service that would not start: stop the ones that did, leave nothing running
            self.stop()
            raise

    def _start(self, database_url: str, engines: int, heartbeat_s: float, trainer: bool, tls_env: dict[str, str]) -> None:
        self.admin_key = auth.generate_key().key
        self.catalog = ServiceProcess(
            ["-m", "services.catalog"],
            {"MINT_DATABASE_URL": database_url, "MINT_BLOB_DIR": str(self.blob_dir), "MINT_ADMIN_KEY": self.admin_key,
             "MINT_CATALOG_ADDRESS": "127.0.0.1:0", "MINT_REDIS_URL": self.redis.url, **tls_env},
            log_path=str(self.workdir / "catalog.log"),
        )
        self.admin = CatalogClient(channel(self.catalog.address, self.tls), self.admin_key, timeout_s=3600)
        self.admin.create_tenant(TENANT)
        self.member_key = self.admin.create_api_key(TENANT, "member", "member")
        self.service_key = self.admin.create_api_key("admin", "fleet", "service")
        self.admin.register_base_dir(self.base_dir, BASE_MODEL)
        self.engines = [self.start_engine(i) for i in range(engines)]
        self.trainer = ServiceProcess(
            ["-m", "services.trainer"],
            {"MINT_MODEL_PATH": str(self.base_dir), "MINT_BASE_MODEL": BASE_MODEL, "MINT_CATALOG_URL": self.catalog.address,
             "MINT_SERVICE_KEY": self.service_key, "MINT_TRAINER_ADDRESS": "127.0.0.1:0",
             "MINT_TRAINER_STATE_DIR": str(self.workdir / "trainer"), **tls_env},
            log_path=str(self.workdir / "trainer.log"),
        ) if trainer else None
        gateway_env = {
            "MINT_CATALOG_URL": self.catalog.address, "MINT_REDIS_URL": self.redis.url, "MINT_SERVICE_KEY": self.service_key,
            "MINT_HEARTBEAT_S": str(heartbeat_s), "MINT_GATEWAY_ADDRESS": "127.0.0.1:0",
            "MINT_GATEWAY_HTTP_ADDRESS": f"127.0.0.1:{self.http_port}", **tls_env,
        }
        if self.trainer is not None:
            gateway_env["MINT_TRAINER_URL"] = self.trainer.address
        self.gateway = ServiceProcess(["-m", "services.gateway"], gateway_env, log_path=str(self.workdir / "gateway.log"))
        self.client = ServiceClient(self.gateway.address, self.member_key, ca_file=self.tls.ca_file or None, timeout_s=600)

    @property
    def http_url(self) -> str:
        """The gateway's HTTP door (plain HTTP: it serves no TLS)."""
        return f"http://127.0.0.1:{self.http_port}"

    def start_engine(self, index: int) -> ServiceProcess:
        env = {
            "MINT_MODEL_PATH": str(self.base_dir), "MINT_BASE_MODEL": BASE_MODEL, "MINT_ENGINE_ID": f"engine-{index}",
            "MINT_ENGINE_ADDRESS": "127.0.0.1:0", "MINT_ENGINE_CACHE_DIR": str(self.workdir / f"engine-{index}"),
            "MINT_CATALOG_URL": self.catalog.address, "MINT_SERVICE_KEY": self.service_key, "MINT_REDIS_URL": self.redis.url,
            "MINT_HEARTBEAT_S": str(self.heartbeat_s), "MINT_DEVICE_BUDGET_BYTES": str(64 * 1024**2),
            "MINT_KV_CACHE_BYTES": str(32 * 1024**2), **self.tls.env(), **self.engine_env,
        }
        return ServiceProcess(["-m", "services.engine"], env, log_path=str(self.workdir / f"engine-{index}.log"))

    def wait_for_engines(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.client.engines()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.client.engines())} of {count} engines registered")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for process in [self.gateway, *self.engines, self.trainer, self.catalog]:
            if process is not None:
                process.stop()
        self.redis.kill()
