"""Engines on tiny random bases, with adapters served from an in-memory blob source."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
import torch

from mint.adapters import LORA_MODULES, AdapterConfig, AdapterWeights
from mint.adapters.spec import AdapterSpec
from mint.models.config import ModelConfig
from mint.models.presets import init_base
from services.engine.config import EngineConfig
from services.engine.engine import Engine


class MemorySource:
    """Blobs by sha256 from a dict; `gate` (when set) blocks fetches until released, `broken` fails them."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.gate: threading.Event | None = None
        self.broken: set[str] = set()
        self.fetches = 0

    def fetch(self, sha256: str):
        self.fetches += 1
        if self.gate is not None:
            self.gate.wait(30)
        if sha256 in self.broken:
            raise OSError(f"blob {sha256[:12]} is unreachable")
        yield self.blobs[sha256]

    def local_path(self, sha256: str):
        return None  # bytes held in memory: the engine copies and verifies them


def random_adapter(config: ModelConfig, *, rank: int, seed: int, modules=LORA_MODULES, use_rslora=False, alpha=None, scale=0.05) -> AdapterWeights:
    gen = torch.Generator().manual_seed(seed)
    shapes = config.module_shapes()
    adapter_config = AdapterConfig(r=rank, lora_alpha=alpha or 2 * rank, target_modules=tuple(modules), use_rslora=use_rslora)
    tensors = {
        (layer, m): (torch.randn(rank, shapes[m][0], generator=gen) * scale, torch.randn(shapes[m][1], rank, generator=gen) * scale)
        for layer in range(config.num_layers)
        for m in adapter_config.target_modules
    }
    return AdapterWeights(config=adapter_config, tensors=tensors)


def publish(source: MemorySource, weights: AdapterWeights, name: str = "t/p@1") -> AdapterSpec:
    data = weights.to_safetensors()
    sha = hashlib.sha256(data).hexdigest()
    source.blobs[sha] = data
    c = weights.config
    return AdapterSpec(sha256=sha, address=name, rank=c.r, alpha=c.lora_alpha, use_rslora=c.use_rslora, target_modules=c.target_modules)


def wait_resident(engine: Engine, spec: AdapterSpec, timeout_s: float = 30) -> None:
    engine.residency.prefetch(spec).result(timeout_s)
    deadline = time.monotonic() + timeout_s
    while engine.residency.tier_of(spec.key) != "device":
        assert time.monotonic() < deadline, f"{spec.address} never reached a slot"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bases") / "tiny-llama"
    init_base(path, arch="llama", preset="tiny", seed=0)
    return path


@pytest.fixture
def source():
    return MemorySource()


@pytest.fixture
def make_engine(tmp_path, source):
    engines = []

    def make(model_path, **overrides) -> Engine:
        settings = dict(model_path=str(model_path), cache_dir=str(tmp_path / f"cache{len(engines)}"), max_lora_rank=64,
                        device_budget_bytes=256 * 1024**2, kv_cache_bytes=32 * 1024**2)
        settings.update(overrides)
        engine = Engine(EngineConfig(**settings), source).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()
