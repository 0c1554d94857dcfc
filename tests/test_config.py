"""One fleet config (mint.config): shared fields declared once, each service's config extending it, read
from the environment once, with refusals that name the variable, the value and what would be valid."""

from __future__ import annotations

import dataclasses
import queue
import uuid

import pytest

from mint import auth
from mint.bus import EVERY_POLICY, RedisPolicyBus
from mint.config import FleetConfig, ModelHostConfig
from mint.errors import MintError
from mint.models.config import ModelConfig
from mint.models.loading import base_description
from mint.models.presets import init_base
from services.catalog.config import CatalogConfig
from services.catalog.main import open_catalog
from services.engine.config import EngineConfig
from services.gateway.config import GatewayConfig
from services.trainer.config import TrainerConfig
from tests.conftest import TEST_REDIS_URL
from tests.engine.conftest import random_adapter

SERVICES = [CatalogConfig, GatewayConfig, EngineConfig, TrainerConfig]


@pytest.mark.parametrize("config", SERVICES)
def test_every_service_reads_the_shared_fields_the_same_way(config):
    env = {"MINT_REDIS_URL": "redis://r:6379/1", "MINT_REDIS_PREFIX": "blue:", "MINT_HEARTBEAT_S": "0.5",
           "MINT_SERVICE_KEY": "mint_0123456789ab_s", "MINT_MODEL_PATH": "/models/base", "MINT_LIMIT_MAX_TEXT_BYTES": "100"}
    read = config.from_env(env)
    assert issubclass(config, FleetConfig)
    assert (read.redis_url, read.redis_prefix, read.heartbeat_s, read.service_key) == ("redis://r:6379/1", "blue:", 0.5, env["MINT_SERVICE_KEY"])
    assert read.request_limits.max_text_bytes == 100
    shared = {f.name for f in dataclasses.fields(FleetConfig)}
    own = {f.name for f in dataclasses.fields(config)} - shared
    assert not own & shared


@pytest.mark.parametrize("config", [EngineConfig, TrainerConfig])
def test_model_hosts_share_device_and_dtype(config):
    assert issubclass(config, ModelHostConfig)
    read = config.from_env({"MINT_MODEL_PATH": "/m", "MINT_DTYPE": "bfloat16", "MINT_DEVICE": "cuda:1"})
    assert (read.model_path, read.device, read.dtype, str(read.torch_dtype)) == ("/m", "cuda:1", "bfloat16", "torch.bfloat16")


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        (EngineConfig, {"MINT_MODEL_PATH": "/m", "MINT_DTYPE": "fp8"}, "dtype \\(MINT_DTYPE\\) is 'fp8'.*use one of float32, bfloat16, float16"),
        (GatewayConfig, {"MINT_HEARTBEAT_S": "soon"}, "MINT_HEARTBEAT_S='soon' is not a number"),
        (GatewayConfig, {"MINT_HEARTBEAT_S": "0"}, "heartbeat_s \\(MINT_HEARTBEAT_S\\) is 0.0; it must be a positive"),
        (EngineConfig, {"MINT_MODEL_PATH": "/m", "MINT_MAX_LORA_RANK": "64.5"}, "MINT_MAX_LORA_RANK='64.5' is not an integer"),
        (CatalogConfig, {"MINT_MIGRATE": "maybe"}, "MINT_MIGRATE='maybe' is not a yes/no value"),
        (TrainerConfig, {"MINT_MODEL_PATH": "/m", "MINT_LIMIT_MAX_JSON_DEPTH": "deep"}, "MINT_LIMIT_MAX_JSON_DEPTH='deep' is not an integer"),
    ],
)
def test_bad_values_name_the_variable_the_value_and_what_is_valid(config, env, message):
    with pytest.raises(MintError, match=message):
        config.from_env(env)


def test_the_dataclass_and_the_environment_agree_on_defaults():
    assert CatalogConfig.from_env({}).address == CatalogConfig().address
    assert GatewayConfig.from_env({}).address == GatewayConfig().address


def test_the_catalog_announces_policy_changes_under_the_fleets_prefix(tmp_path):
    """Gateways listen for alias moves under MINT_REDIS_PREFIX: the catalog must announce them there."""
    prefix = f"mint-test:{uuid.uuid4().hex[:8]}:"
    init_base(tmp_path / "tiny", arch="llama", preset="tiny", seed=1)
    catalog = open_catalog(CatalogConfig(database_url=f"sqlite:///{tmp_path / 'c.db'}", blob_dir=str(tmp_path / "blobs"),
                                         redis_url=TEST_REDIS_URL, redis_prefix=prefix))
    notices: queue.Queue[str] = queue.Queue()
    listener = RedisPolicyBus(TEST_REDIS_URL, prefix)
    listener.subscribe(notices.put)
    assert notices.get(timeout=10) == EVERY_POLICY  # subscribed
    weights = random_adapter(ModelConfig.from_name("tiny"), rank=2, seed=1, modules=("q_proj",))
    with auth.acting(auth.Principal(tenant="acme", key_id="000000000000", role=auth.Role.ADMIN)):
        catalog.create_tenant("acme")
        catalog.register_base_model(name="tiny", **base_description(str(tmp_path / "tiny")))
        catalog.create_policy("bot", "tiny")
        catalog.publish("bot", weights.config.to_json(), weights.safetensors_chunks())
        assert notices.get(timeout=10) == "acme/bot"  # latest moved
        catalog.set_alias("bot", "prod", 1)
        assert notices.get(timeout=10) == "acme/bot"
    listener.close()
    catalog.store.close()
