"""The server scaffolding every MinT service shares (mint.server, mint.limits, mint.auth), against real
servers: the embedded stack (catalog, sampling, trainer on one port) and a catalog over real Postgres.

Request checks are swept over every RPC of every public service and every string field a request can
carry, so a field added later is covered without anyone remembering to add it here.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from mint import auth
from mint.errors import MintError
from mint.limits import RequestLimits, json_depth
from mint.models.config import ModelConfig
from mint.models.presets import init_base
from mint.models.tokenizer import Tokenizer
from mint.proto import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from mint.server import build_server, channel
from services.catalog.catalog import StoreAuthenticator
from services.catalog.config import CatalogConfig
from services.catalog.main import catalog_service, open_catalog
from services.embedded import EmbeddedConfig, EmbeddedStack
from tests.engine.conftest import random_adapter
from tests.factories import varint

FD = _descriptor.FieldDescriptor
SERVICES = [
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
    gateway_pb2.DESCRIPTOR.services_by_name["SamplingService"],
    trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
]
LIMITS = RequestLimits(upload_idle_s=2.0)
EMBEDDED_WORKERS = 128
METHODS = [(service, method) for service in SERVICES for method in service.methods]


ADAPTER = random_adapter(ModelConfig.from_name("tiny"), rank=2, seed=1, modules=("q_proj",))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    init_base(root / "tiny", arch="llama", preset="tiny", seed=11)
    stack = EmbeddedStack(
        EmbeddedConfig(model_path=str(root / "tiny"), data_dir=str(root / "data"), address="127.0.0.1:0", request_limits=LIMITS)
    ).start()
    ch = channel(stack.address)
    catalog = catalog_pb2_grpc.CatalogServiceStub(ch)
    admin = auth.call_metadata(stack.admin_key)
    catalog.CreateTenant(catalog_pb2.CreateTenantRequest(name="acme"), metadata=admin)
    keys = [catalog.CreateApiKey(catalog_pb2.CreateApiKeyRequest(tenant="acme", name=f"k{i}"), metadata=admin).key for i in range(12)]
    for policy in ("silent", "steady"):
        catalog.CreatePolicy(catalog_pb2.CreatePolicyRequest(name=policy, base_model=stack.base_model), metadata=auth.call_metadata(keys[0]))
    yield {"stack": stack, "channel": ch, "admin": admin, "members": [auth.call_metadata(k) for k in keys], "keys": keys}
    ch.close()
    stack.stop()


@pytest.fixture
def pg_catalog(pg_url, tmp_path):
    """A catalog server over real Postgres (NUL characters are where Postgres differs from SQLite)."""
    admin_key = auth.generate_key().key
    catalog = open_catalog(CatalogConfig(database_url=pg_url, blob_dir=str(tmp_path / "blobs"), admin_key=admin_key))
    server, port = build_server([catalog_service(catalog)], authenticator=StoreAuthenticator(catalog.store), limits=LIMITS)
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    yield ch, auth.call_metadata(admin_key)
    ch.close()
    server.stop(0).wait()
    catalog.store.close()


def call(ch: grpc.Channel, service, method, body: bytes, metadata, timeout: float = 20.0) -> tuple[grpc.StatusCode, str]:
    """Call `method` with a raw request body (a stream of that one message, for client-streaming methods)."""
    path = f"/{service.full_name}/{method.name}"
    kind = {(False, False): ch.unary_unary, (False, True): ch.unary_stream, (True, False): ch.stream_unary, (True, True): ch.stream_stream}
    stub = kind[(method.client_streaming, method.server_streaming)](path)
    try:
        answer = stub(iter([body]) if method.client_streaming else body, metadata=metadata, timeout=timeout)
        if method.server_streaming:
            list(answer)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def string_paths(message: _descriptor.Descriptor, depth: int = 0, prefix: tuple = ()):
    """Every path of fields from `message` to a string field (through sub-messages, repeated or not)."""
    for field in message.fields:
        if field.type == FD.TYPE_STRING:
            yield (*prefix, field)
        elif field.type == FD.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry and depth < 3:
            yield from string_paths(field.message_type, depth + 1, (*prefix, field))


def with_value(cls, path, value):
    message = cls()
    target = message
    for field in path[:-1]:
        target = getattr(target, field.name).add() if field.is_repeated else getattr(target, field.name)
    last = path[-1]
    if last.is_repeated:
        getattr(target, last.name).append(value)
    else:
        setattr(target, last.name, value)
    return message


def request_class(method):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(method.input_type)


def string_cases():
    for service, method in METHODS:
        for path in string_paths(method.input_type):
            yield pytest.param(service, method, path, id=f"{method.name}.{'.'.join(f.name for f in path)}")


STRING_CASES = list(string_cases())


def limit_of(path, limits: RequestLimits) -> tuple[int, str]:
    last = path[-1]
    if last.full_name in ("mint.v1.Prompt.text", "mint.v1.ChatMessage.content"):
        return limits.max_prompt_bytes, "max_prompt_bytes"
    if last.name.endswith("_json"):
        return limits.max_json_bytes, "max_json_bytes"
    return limits.max_text_bytes, "max_text_bytes"


# --- items 14, 20: NUL characters and over-long text, in every string field of every RPC ----------------


@pytest.mark.parametrize(("service", "method", "path"), STRING_CASES)
def test_every_string_field_refuses_nul_and_over_long_text(stack, service, method, path):
    body = with_value(request_class(method), path, "ok\x00no").SerializeToString()
    code, details = call(stack["channel"], service, method, body, stack["admin"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in details, (code, details)

    limit, name = limit_of(path, LIMITS)
    body = with_value(request_class(method), path, "x" * (limit + 1)).SerializeToString()
    code, details = call(stack["channel"], service, method, body, stack["admin"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and name in details, (code, details)


@pytest.mark.parametrize(("service", "method", "path"), STRING_CASES)
def test_every_string_field_at_its_limit_gets_a_client_answer(stack, service, method, path):
    """Values just within the limits reach the handlers: whatever they answer is a client's status with a
    readable message (an error echoing a long value still fits its trailer)."""
    limit, _ = limit_of(path, LIMITS)
    value = "Z" * min(limit, LIMITS.max_text_bytes)
    body = with_value(request_class(method), path, value).SerializeToString()
    code, details = call(stack["channel"], service, method, body, stack["admin"])
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (code, details)
    assert code == grpc.StatusCode.OK or (details and "Stream removed" not in details), (code, details)
    assert len(details.encode()) <= LIMITS.max_error_bytes


def test_nul_characters_reach_no_postgres_column(pg_catalog):
    ch, admin = pg_catalog
    stub = catalog_pb2_grpc.CatalogServiceStub(ch)
    before = len(stub.ListAuditEvents(catalog_pb2.ListAuditEventsRequest(), metadata=admin).events)
    service = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]
    for method in service.methods:
        for path in string_paths(method.input_type):
            body = with_value(request_class(method), path, "a\x00b").SerializeToString()
            code, details = call(ch, service, method, body, admin)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in details, (method.name, path[-1].name, code, details)
    # map keys too: metric names
    code, details = call(ch, service, service.methods_by_name["RecordMetrics"],
                         catalog_pb2.RecordMetricsRequest(ref="p@1", metrics={"a\x00b": 1.0}).SerializeToString(), admin)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in details
    assert len(stub.ListAuditEvents(catalog_pb2.ListAuditEventsRequest(), metadata=admin).events) == before


def test_large_reasons_and_metric_counts_name_their_limit(stack):
    stub = catalog_pb2_grpc.CatalogServiceStub(stack["channel"])
    with pytest.raises(grpc.RpcError) as err:
        stub.SetAlias(catalog_pb2.SetAliasRequest(policy="p", alias="prod", revision_number=1, reason="r" * 10_000_000), metadata=stack["admin"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_text_bytes" in err.value.details()
    metrics = {f"m{i}": float(i) for i in range(200_000)}
    with pytest.raises(grpc.RpcError) as err:
        stub.RecordMetrics(catalog_pb2.RecordMetricsRequest(ref="p@1", metrics=metrics), metadata=stack["admin"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_map_entries" in err.value.details()


# --- item 15: deeply nested JSON ------------------------------------------------------------------------

JSON_CASES = [case for case in STRING_CASES if case.values[2][-1].name.endswith("_json")]


@pytest.mark.parametrize(("service", "method", "path"), JSON_CASES)
@pytest.mark.parametrize("text", ["[" * 5000, "{\"a\":" * 2000 + "1" + "}" * 2000, "[" * 33 + "]" * 33])
def test_every_json_field_refuses_deep_nesting(stack, service, method, path, text):
    body = with_value(request_class(method), path, text).SerializeToString()
    code, details = call(stack["channel"], service, method, body, stack["admin"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_json_depth" in details, (code, details)


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth('{"a": "[[[[", "b": [1, {"c": "\\"]]]"}]}') == 3
    assert json_depth("3") == 0
    assert json_depth("[" * 100_000, stop_above=32) == 33


# --- item 18: bodies that are not messages ----------------------------------------------------------------


def _invalid_utf8_body(message: _descriptor.Descriptor) -> bytes | None:
    """A body whose first reachable string field holds bytes that are not UTF-8."""
    for path in string_paths(message):
        data = b"\xff\xfeok"
        for field in reversed(path):
            data = varint((field.number << 3) | 2) + varint(len(data)) + data
        return data
    return None


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _, m in METHODS])
def test_every_rpc_refuses_bodies_that_are_not_its_message(stack, service, method):
    truncated = b"\x0a\x05ab"  # field 1, 5 bytes announced, 2 sent
    code, details = call(stack["channel"], service, method, truncated, stack["admin"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in details, (code, details)
    body = _invalid_utf8_body(method.input_type)
    if body is not None:
        code, details = call(stack["channel"], service, method, body, stack["admin"])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in details, (code, details)


# --- item 4: prompts are measured before they are tokenized -------------------------------------------------


def test_oversized_prompts_are_refused_before_tokenizing(stack, monkeypatch):
    tokenized: list[int] = []
    for method in ("encode", "encode_chat"):
        original = getattr(Tokenizer, method)
        monkeypatch.setattr(Tokenizer, method, lambda self, *a, _original=original, **k: tokenized.append(1) or _original(self, *a, **k))
    sampling = gateway_pb2_grpc.SamplingServiceStub(stack["channel"])
    member = stack["members"][0]
    base = stack["stack"].base_model
    params = common_pb2.SamplingParams(max_tokens=1)
    prompts = [
        (common_pb2.Prompt(text="word " * (16 * 1024 * 1024 // 5)), "max_prompt_bytes"),
        (common_pb2.Prompt(chat=common_pb2.ChatPrompt(messages=[common_pb2.ChatMessage(role="user", content="x" * 100_000)] * 20)), "max_prompt_bytes"),
        (common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=[1] * 200_000)), "max_prompt_tokens"),
    ]
    for prompt, limit in prompts:
        with pytest.raises(grpc.RpcError) as err:
            list(sampling.Sample(gateway_pb2.SampleRequest(base_model=base, prompt=prompt, params=params), metadata=member, timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and limit in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        sampling.ComputeLogprobs(gateway_pb2.LogprobsRequest(base_model=base, sequences=[common_pb2.TokenIds(ids=[1] * 200_000)]), metadata=member)
    assert "max_prompt_tokens" in err.value.details()
    assert tokenized == []  # refused before any tokenizer saw the text
    answer = list(sampling.Sample(gateway_pb2.SampleRequest(base_model=base, prompt=common_pb2.Prompt(text="hello"), params=params), metadata=member))
    assert answer and answer[0].token_ids
    assert tokenized  # the spy does see what is tokenized


# --- item 3: silent uploads cannot take the server's workers ------------------------------------------------


class SilentUpload:
    """A PublishRevision stream that sends its header and then nothing, until released."""

    def __init__(self, stub: catalog_pb2_grpc.CatalogServiceStub, metadata):
        self.release = threading.Event()
        config_json = ADAPTER.config.to_json()
        header = catalog_pb2.PublishRevisionRequest(header=catalog_pb2.PublishRevisionHeader(policy="silent", adapter_config_json=config_json))

        def messages():
            yield header
            self.release.wait(60)

        self.future = stub.PublishRevision.future(messages(), metadata=metadata)

    def outcome(self, timeout: float = 30) -> tuple[grpc.StatusCode, str]:
        try:
            self.future.result(timeout=timeout)
        except grpc.RpcError as err:
            return err.code(), err.details()
        return grpc.StatusCode.OK, ""


def test_silent_uploads_leave_the_server_answering(stack):
    ch = stack["channel"]
    stub = catalog_pb2_grpc.CatalogServiceStub(ch)
    limits = dataclasses.replace(LIMITS, max_uploads=EMBEDDED_WORKERS // 2)  # build_server's default share
    # 130 silent uploads from 10 keys: as many as the server allows are held, the rest refused at once
    uploads = [SilentUpload(stub, stack["members"][i % 10]) for i in range(130)]
    time.sleep(0.5)
    health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert stub.ListPolicies(catalog_pb2.ListPoliciesRequest(), metadata=stack["members"][11], timeout=10) is not None
    sampling = gateway_pb2_grpc.SamplingServiceStub(ch)
    request = gateway_pb2.SampleRequest(
        base_model=stack["stack"].base_model, prompt=common_pb2.Prompt(text="hi"), params=common_pb2.SamplingParams(max_tokens=2)
    )
    assert list(sampling.Sample(request, metadata=stack["members"][11], timeout=30))
    outcomes = [upload.outcome() for upload in uploads]
    refused = [d for c, d in outcomes if c == grpc.StatusCode.RESOURCE_EXHAUSTED and "(max_uploads)" in d]
    idle = [d for c, d in outcomes if c == grpc.StatusCode.RESOURCE_EXHAUSTED and "upload_idle_s" in d]
    assert len(idle) == limits.max_uploads and len(refused) == 130 - limits.max_uploads, outcomes[:3]
    # one key alone is held to its own share
    uploads = [SilentUpload(stub, stack["members"][10]) for _ in range(limits.max_uploads_per_key + 3)]
    outcomes = [upload.outcome() for upload in uploads]
    assert sum("max_uploads_per_key" in d for _, d in outcomes) == 3
    assert sum("upload_idle_s" in d for _, d in outcomes) == limits.max_uploads_per_key


def test_an_upload_that_keeps_sending_is_not_idle(stack):
    """The idle limit is per message, not per call: a slow but steady upload completes."""
    stub = catalog_pb2_grpc.CatalogServiceStub(stack["channel"])
    config_json, data = ADAPTER.config.to_json(), ADAPTER.to_safetensors()

    def messages():
        yield catalog_pb2.PublishRevisionRequest(header=catalog_pb2.PublishRevisionHeader(policy="steady", adapter_config_json=config_json))
        for i in range(0, len(data), len(data) // 3 + 1):
            time.sleep(LIMITS.upload_idle_s * 0.6)
            yield catalog_pb2.PublishRevisionRequest(chunk=data[i : i + len(data) // 3 + 1])

    revision = stub.PublishRevision(messages(), metadata=stack["members"][0], timeout=60)
    assert (revision.policy, revision.number) == ("acme/steady", 1)


# --- item 11: headers that appear twice ------------------------------------------------------------------


def test_a_repeated_authorization_or_tenant_header_is_refused(stack):
    stub = catalog_pb2_grpc.CatalogServiceStub(stack["channel"])
    right = (auth.AUTH_HEADER, f"Bearer {stack['keys'][0]}")
    wrong = (auth.AUTH_HEADER, "Bearer mint_000000000000_nope")
    for metadata in [(right, wrong), (wrong, right), (right, right), (right, (auth.TENANT_HEADER, "acme"), (auth.TENANT_HEADER, "local"))]:
        with pytest.raises(grpc.RpcError) as err:
            stub.WhoAmI(catalog_pb2.WhoAmIRequest(), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "send exactly one" in err.value.details()
    assert stub.WhoAmI(catalog_pb2.WhoAmIRequest(), metadata=(right,)).tenant == "acme"


def test_only_service_keys_act_on_behalf_of_another_key(stack):
    stub = catalog_pb2_grpc.CatalogServiceStub(stack["channel"])
    member_id = stack["keys"][0].split("_")[1]
    for key in (stack["keys"][1], stack["stack"].admin_key):
        with pytest.raises(grpc.RpcError) as err:
            stub.WhoAmI(catalog_pb2.WhoAmIRequest(), metadata=auth.call_metadata(key, on_behalf_of=member_id))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- item 21: reflection under both protocol names ------------------------------------------------------


@pytest.mark.parametrize("package", ["grpc.reflection.v1", "grpc.reflection.v1alpha"])
def test_reflection_lists_and_describes_services(stack, package):
    info = stack["channel"].stream_stream(
        f"/{package}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="mint.v1.SamplingService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    ]
    listed, sampling, v1 = list(info(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"mint.v1.CatalogService", "mint.v1.SamplingService", "mint.v1.TrainerService", "grpc.reflection.v1.ServerReflection"} <= names
    assert sampling.file_descriptor_response.file_descriptor_proto
    assert v1.file_descriptor_response.file_descriptor_proto, v1.error_response


# --- the limits table -----------------------------------------------------------------------------------


def test_limits_come_from_the_environment_and_name_bad_values():
    limits = RequestLimits.from_env({"MINT_LIMIT_MAX_PROMPT_BYTES": "2048", "MINT_LIMIT_UPLOAD_IDLE_S": "1.5"})
    assert (limits.max_prompt_bytes, limits.upload_idle_s, limits.max_text_bytes) == (2048, 1.5, RequestLimits().max_text_bytes)
    with pytest.raises(MintError, match="MINT_LIMIT_MAX_TEXT_BYTES='lots' is not an integer"):
        RequestLimits.from_env({"MINT_LIMIT_MAX_TEXT_BYTES": "lots"})
    with pytest.raises(MintError, match="max_json_depth must be positive"):
        RequestLimits(max_json_depth=0)


# --- item 13 through the gateway: a ref outside the ASCII grammar is refused on every RPC that takes one ----------

BAD_SELECTORS = ["²", "３", "١", "3\n", " 3", "+3", "03", "2147483648", "pr\u043ed"]  # `p@３` once meant revision 3


def _gateway_ref_calls(sampling, base: str):
    params = common_pb2.SamplingParams(max_tokens=1)
    return {
        "Sample": lambda ref, md: list(sampling.Sample(gateway_pb2.SampleRequest(model=ref, base_model=base, prompt=common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=[1, 2])), params=params), metadata=md, timeout=20)),
        "ComputeLogprobs": lambda ref, md: sampling.ComputeLogprobs(gateway_pb2.LogprobsRequest(model=ref, base_model=base, sequences=[common_pb2.TokenIds(ids=[1, 2])]), metadata=md, timeout=20),
        "ActivateWave": lambda ref, md: sampling.ActivateWave(gateway_pb2.ActivateWaveRequest(refs=[ref], name="w"), metadata=md, timeout=20),
    }


@pytest.mark.parametrize("selector", BAD_SELECTORS)
def test_every_gateway_rpc_taking_a_ref_refuses_refs_outside_the_ascii_grammar(stack, selector):
    sampling = gateway_pb2_grpc.SamplingServiceStub(stack["channel"])
    for name, send in _gateway_ref_calls(sampling, stack["stack"].base_model).items():
        with pytest.raises(grpc.RpcError) as err:
            send(f"acme/steady@{selector}", stack["members"][0])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, selector, err.value.details())


# --- item 6's neighbour: LoadState opens only the calling tenant's own saved states ---------------------------------


def test_load_state_opens_only_the_tenants_own_saved_states(stack):
    trainer = trainer_pb2_grpc.TrainerServiceStub(stack["channel"])
    member = stack["members"][0]
    session = trainer.CreateSession(
        trainer_pb2.CreateSessionRequest(base_model=stack["stack"].base_model, policy="states", rank=2, train_attn=True), metadata=member
    )
    saved = trainer.SaveState(trainer_pb2.SaveStateRequest(session_id=session.session_id, name="s1"), metadata=member).path
    tenant_root = Path(saved).parents[1]  # <state dir>/acme
    hostile = [
        "/etc/passwd", "/etc/shadow", "/proc/self/environ", "../../../../../../etc/passwd", "relative/s1.safetensors", "",
        str(tenant_root / ".." / ".." / "admin.key"),  # the server's admin key, beside the state directory
        str(tenant_root.parent / "local" / "states" / "s1.safetensors"),  # another tenant's
        str(tenant_root), str(tenant_root / "states"),  # directories
        str(tenant_root / "states" / "missing.safetensors"),
        saved + "/..", saved + "/../../../admin.key",
    ]
    for path in hostile:
        with pytest.raises(grpc.RpcError) as err:
            trainer.LoadState(trainer_pb2.LoadStateRequest(session_id=session.session_id, path=path, with_optimizer=True), metadata=member)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (path, err.value.code(), err.value.details())
    loaded = trainer.LoadState(trainer_pb2.LoadStateRequest(session_id=session.session_id, path=saved, with_optimizer=True), metadata=member)
    assert loaded.session_id == session.session_id
