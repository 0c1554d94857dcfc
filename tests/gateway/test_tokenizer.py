"""A base's tokenizer comes from an engine serving that base, through the gateway: the gateway finds the
engine with the real (Redis) scheduler, and no trainer is in the fleet. Catalog, engines and gateway are
real servers on port 0, talking over gRPC."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
import redis

from mint import auth
from mint.errors import Code, MintError
from mint.models.presets import init_base
from mint.models.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer, no_tokenizer
from mint.proto import engine_pb2, engine_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from mint.sdk import CatalogClient, ServiceClient
from mint.server import channel
from services.catalog.config import CatalogConfig
from services.catalog.main import create_server as create_catalog_server
from services.engine.config import EngineConfig
from services.engine.engine import Engine
from services.engine.fleet import FleetAgent
from services.engine.main import create_server as create_engine_server
from services.gateway.config import GatewayConfig
from services.gateway.main import create_server as create_gateway_server
from services.scheduler import open_scheduler
from tests.conftest import TEST_REDIS_URL
from tests.engine.conftest import MemorySource
from tests.scheduler.factories import delete_prefix

HEARTBEAT_S = 0.5
CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Engines for base `tiny` (with its tokenizer) and base `bare` (without one), a catalog and a gateway."""
    root = tmp_path_factory.mktemp("tokenizer-fleet")
    init_base(root / "tiny", preset="tiny", seed=3)
    init_base(root / "bare", preset="tiny", seed=4)
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        (root / "bare" / name).unlink()
    prefix = f"mint-test:{uuid.uuid4().hex[:12]}:"
    admin_key = auth.generate_key().key
    catalog_config = CatalogConfig(database_url=f"sqlite:///{root / 'catalog.db'}", blob_dir=str(root / "blobs"), admin_key=admin_key,
                                   address="127.0.0.1:0")
    catalog, catalog_port = create_catalog_server(catalog_config)
    catalog.start()
    catalog_address = f"127.0.0.1:{catalog_port}"
    admin = CatalogClient(channel(catalog_address), admin_key)
    admin.create_tenant("acme")
    member_key = admin.create_api_key("acme", "member")
    service_key = admin.create_api_key("admin", "fleet", "service")

    scheduler = open_scheduler(TEST_REDIS_URL, prefix=prefix, heartbeat_s=HEARTBEAT_S)
    running = []  # (server, agent, engine)
    for base in ("tiny", "bare"):
        config = EngineConfig(model_path=str(root / base), base_model=base, engine_id=f"engine-{base}", cache_dir=str(root / f"cache-{base}"),
                              catalog_address=catalog_address, service_key=service_key, device_budget_bytes=64 * 1024**2,
                              kv_cache_bytes=16 * 1024**2)
        engine = Engine(config, MemorySource()).start()
        server, port = create_engine_server(config, engine)
        server.start()
        running.append((server, FleetAgent(engine, scheduler, f"127.0.0.1:{port}").start(), engine))

    gateway, gateway_port = create_gateway_server(GatewayConfig(
        address="127.0.0.1:0", catalog_address=catalog_address, redis_url=TEST_REDIS_URL, redis_prefix=prefix, service_key=service_key,
        heartbeat_s=HEARTBEAT_S,
    ))
    gateway.start()
    client = ServiceClient(f"127.0.0.1:{gateway_port}", member_key)
    deadline = time.monotonic() + 30
    while sorted(e.base_model for e in client.engines()) != ["bare", "tiny"]:
        assert time.monotonic() < deadline, "the engines never registered"
        time.sleep(0.05)
    yield root, client, service_key, running
    client.close()
    gateway.stop(None)
    for server, agent, engine in running:
        agent.stop()
        server.stop(None)
        engine.stop()
    catalog.stop(None)
    delete_prefix(redis.Redis.from_url(TEST_REDIS_URL), prefix)


def error_of(fn, *args) -> MintError:
    with pytest.raises(MintError) as info:
        fn(*args)
    return info.value


def test_the_sdk_gets_the_bases_tokenizer_through_the_gateway_with_no_trainer(fleet):
    root, client, _, _ = fleet
    served = client.get_tokenizer("tiny")
    own = Tokenizer.from_dir(root / "tiny")
    assert served.backend.to_str() == own.backend.to_str()
    assert served.special_tokens == own.special_tokens and served.chat_template == own.chat_template
    assert served.eos_token_ids == own.eos_token_ids and served.bos_token_id == own.bos_token_id
    assert served.encode_chat(CHAT, add_generation_prompt=True) == own.encode_chat(CHAT, add_generation_prompt=True)
    # There is no trainer behind this gateway: its TrainerService is not even served.
    with pytest.raises(grpc.RpcError) as no_trainer:
        trainer_pb2_grpc.TrainerServiceStub(client.channel).GetTokenizer(trainer_pb2.GetTokenizerRequest(), metadata=client.metadata)
    assert no_trainer.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_base_without_tokenizer_json_is_failed_precondition_naming_the_file(fleet):
    root, client, _, _ = fleet
    error = error_of(client.get_tokenizer, "bare")
    assert error.code is Code.FAILED_PRECONDITION
    assert error.message == no_tokenizer("bare", root / "bare").message
    assert "tokenizer.json" in error.message


def test_an_unknown_base_is_not_found_naming_the_bases_served(fleet):
    _, client, _, _ = fleet
    error = error_of(client.get_tokenizer, "nope")
    assert error.code is Code.NOT_FOUND
    assert error.message == "no engine serves base model 'nope'; the engines serve ['bare', 'tiny']"


def test_no_base_named_is_the_one_base_served_else_invalid(fleet):
    _, client, _, _ = fleet
    error = error_of(client.get_tokenizer)
    assert error.code is Code.INVALID_ARGUMENT
    assert error.message == "name the base_model whose tokenizer you want: the engines serve ['bare', 'tiny']"


def test_an_engine_answers_for_its_own_base_only(fleet):
    root, _, service_key, running = fleet
    server, agent, engine = running[0]
    ch = channel(agent.info.address)
    try:
        stub = engine_pb2_grpc.EngineServiceStub(ch)
        own = stub.GetTokenizer(engine_pb2.GetBaseTokenizerRequest(), metadata=auth.call_metadata(service_key))
        assert own.base_model == "tiny" and own.files[TOKENIZER_FILE] == (root / "tiny" / TOKENIZER_FILE).read_text()
        assert set(own.files) == {"tokenizer.json", "tokenizer_config.json", "config.json"}
        with pytest.raises(grpc.RpcError) as other:
            stub.GetTokenizer(engine_pb2.GetBaseTokenizerRequest(base_model="bare"), metadata=auth.call_metadata(service_key))
        assert other.value.code() == grpc.StatusCode.NOT_FOUND
        assert other.value.details() == "this engine serves base model 'tiny', not 'bare'"
    finally:
        ch.close()
