"""Fuzzing the public RPCs of a live embedded server: the world a fuzz run starts from, what it remembers of
the server's state, and the referee that sends one case and judges the answer.

A case is one call of one RPC: the method, the request bodies (one; several for client-streaming calls),
and whose key sends them. The referee's judgement, for every case:

- the answer is OK or a status a client can act on; never INTERNAL, UNKNOWN or DATA_LOSS (a server fault),
  and never DEADLINE_EXCEEDED (every call has a deadline far past what an honest answer takes: a hang);
- a refused call stores nothing: the catalog's rows (counted, and summed where rows change in place),
  the blob directory and its staging files, the trainer's state files and its open sessions are the same
  after the call as before. Calls that may write run alone (an exclusive lock), so a change during one is
  that call's; calls that never write run together, and any change while only they ran is a finding too;
- the server stays healthy (`healthy`: the health service and an authenticated call answer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf import descriptor as _descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from mint import auth, procs
from mint.limits import RequestLimits
from mint.models.config import ModelConfig
from mint.models.presets import init_base
from mint.proto import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    engine_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from mint.server import channel
from services.catalog.catalog import StoreAuthenticator
from services.catalog.store.entities import LIMIT_FIELDS
from tests.engine.conftest import random_adapter
from tests.fuzz import strategies as fs

SERVICES = [
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
    gateway_pb2.DESCRIPTOR.services_by_name["SamplingService"],
    trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
# Methods that never change what the catalog, the blob store or the trainer keeps (they may read it, run the
# model, or change a scheduler's or a session's memory); every other method runs alone.
NON_WRITING = frozenset({
    "WhoAmI", "GetBaseModel", "ListBaseModels", "GetPolicy", "ListPolicies", "Resolve", "GetRevision", "ListRevisions",
    "DownloadRevision", "DownloadBlob", "ListAliases", "ListAliasHistory", "ListAuditEvents",
    "Sample", "ComputeLogprobs", "ActivateWave", "GetWave", "ListEngines", "GetTokenizer",
    "GetSession", "Forward", "ForwardBackward", "OptimStep",
})
FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
CALL_TIMEOUT_S = 60.0
MAX_STREAM_CHUNKS = 256  # a sample stream is read this far, then cancelled (as a client that has enough does)
TINY = ModelConfig.from_name("tiny")
# Who sends a method's valid requests (World.seeds), where a member's key may not: the rest are acme's member.
HARNESS_TENANTS = ("local", "acme", "other")  # the tenants of World's callers
SEED_CALLERS = {"CreateTenant": "admin", "RegisterBaseModel": "admin", "UploadBlob": "admin", "ImportRevisions": "admin", "DownloadBlob": "service"}


@dataclasses.dataclass(frozen=True, slots=True)
class Case:
    service: _descriptor.ServiceDescriptor
    method: _descriptor.MethodDescriptor
    bodies: tuple[bytes, ...]
    caller: str  # a key of World.callers
    origin: str  # generated | mutated | valid (a valid request, its fields in any order) | raw

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        shown = [b[:200] for b in self.bodies]
        return f"Case({self.method.name}, caller={self.caller}, origin={self.origin}, bodies={shown!r})"


@dataclasses.dataclass(slots=True)
class Verdict:
    status: grpc.StatusCode
    details: str
    elapsed_s: float
    stored: list[str]  # what changed although the call was refused

    @property
    def fault(self) -> bool:
        return self.status in FAULTS

    @property
    def hang(self) -> bool:
        return self.status is grpc.StatusCode.DEADLINE_EXCEEDED


class World:
    """An embedded server with two tenants, keys of every role, a served policy, a policy to publish into, a
    training session with a saved state and a wave; `vocabulary` and `seeds` describe it to the strategies."""

    def __init__(self, root: Path, limits: RequestLimits = RequestLimits()):
        self.root, self.limits = root, limits
        init_base(root / "tiny", arch="llama", preset="tiny", seed=11)
        self.data = root / "data"
        self.stack = procs.embedded(model_path=str(root / "tiny"), data_dir=str(self.data), address="127.0.0.1:0", request_limits=limits)
        self.channel = channel(self.stack.address)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self.channel)
        self.sampling = gateway_pb2_grpc.SamplingServiceStub(self.channel)
        admin = auth.call_metadata(self.stack.admin_key)
        for tenant in ("acme", "other"):
            self.catalog.CreateTenant(catalog_pb2.CreateTenantRequest(name=tenant), metadata=admin)
        key = lambda tenant, role=catalog_pb2.ROLE_MEMBER: self.catalog.CreateApiKey(  # noqa: E731
            catalog_pb2.CreateApiKeyRequest(tenant=tenant, name=f"fuzz-{role}", role=role), metadata=admin).key
        service_key = key("local", catalog_pb2.ROLE_SERVICE)
        self.callers: dict[str, tuple] = {
            "admin": admin,
            "acme": auth.call_metadata(key("acme")),
            "other": auth.call_metadata(key("other")),
            "service": auth.call_metadata(service_key, tenant="acme"),
            "anonymous": (),
            "forged": ((auth.AUTH_HEADER, "Bearer mint_000000000000_forged"),),
        }
        member = self.callers["acme"]
        self.base = self.stack.base_model
        adapter = random_adapter(TINY, rank=2, seed=1, modules=("q_proj",))
        self.config_json, self.adapter_bytes = adapter.config.to_json(), adapter.to_safetensors()
        self.sha256 = hashlib.sha256(self.adapter_bytes).hexdigest()
        other_adapter = random_adapter(TINY, rank=4, seed=2, modules=("q_proj", "v_proj"))
        self.valid_adapters = [self.adapter_bytes, other_adapter.to_safetensors()]
        self.other_config_json = other_adapter.config.to_json()
        for policy in ("served", "p0", "p1"):
            self.catalog.CreatePolicy(catalog_pb2.CreatePolicyRequest(name=policy, base_model=self.base), metadata=member)
        for policy in ("served", "p0"):
            self.catalog.PublishRevision(iter(self.publish_stream(policy)), metadata=member)
        self.catalog.SetAlias(catalog_pb2.SetAliasRequest(policy="p0", alias="prod", revision_number=1), metadata=member)
        self.wave_id = self.sampling.ActivateWave(gateway_pb2.ActivateWaveRequest(refs=["acme/served@1"], name="w"), metadata=member).wave_id
        self.session_id = self.state_path = ""
        self._lock = _SharedExclusive()
        self._local = threading.local()  # a read-only catalog connection per thread
        self._reopen_session()
        self._last_state = self.state()

    def close(self) -> None:
        self.channel.close()
        self.stack.stop()

    def publish_stream(self, policy: str, data: bytes | None = None, config_json: str = "") -> list[catalog_pb2.PublishRevisionRequest]:
        data = self.adapter_bytes if data is None else data
        header = catalog_pb2.PublishRevisionHeader(policy=policy, adapter_config_json=config_json or self.config_json, size_bytes=len(data))
        return [catalog_pb2.PublishRevisionRequest(header=header), catalog_pb2.PublishRevisionRequest(chunk=data)]

    def refresh(self) -> None:
        """Lift the limits cases set on the harness's tenants, and open a training session again when a case
        closed it (so later cases still reach a live one)."""
        with self._lock.exclusive():
            self._lift_limits()
            self._reopen_session()
            self._last_state = self.state()

    def _lift_limits(self) -> None:
        """Admin cases may set any tenant's quotas (SetTenantLimits): a request rate of 1/s on acme refuses the
        harness's own calls and starves later cases. Cleared in-process, as the request rate may have spent the
        admin's own tenant too."""
        admin = StoreAuthenticator(self.stack.catalog.store).authenticate(self.stack.admin_key)
        with auth.acting(admin):
            for tenant in HARNESS_TENANTS:
                self.stack.catalog.set_tenant_limits(tenant, {}, clear=LIMIT_FIELDS)

    def _reopen_session(self) -> None:
        member = self.callers["acme"]
        if self.session_id:
            try:
                if not self.trainer.GetSession(trainer_pb2.GetSessionRequest(session_id=self.session_id), metadata=member).closed:
                    return
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.NOT_FOUND:
                    raise
        session = self.trainer.CreateSession(
            trainer_pb2.CreateSessionRequest(base_model=self.base, policy="p0", rank=2, train_attn=True), metadata=member
        )
        self.session_id = session.session_id
        self.state_path = self.trainer.SaveState(trainer_pb2.SaveStateRequest(session_id=self.session_id, name="start"), metadata=member).path
        self.vocabulary = fs.Vocabulary(self._vocabulary())
        self.seeds = self._seeds()

    def _vocabulary(self) -> dict[str, list]:
        tokens = [5, 6, 7, 8, 9]
        target = common_pb2.TensorData(int_data=[6, 7, 8, 9, 10], shape=[5])
        ones = common_pb2.TensorData(float_data=[1.0] * 5, shape=[5])
        return {
            "ref": ["acme/p0@1", "p0@1", "acme/p0@prod", "acme/p0", "p0", "mint://acme/p0@1", "p1", "other/p0@1", "p0@2"],
            "refs": [["acme/served@1"], ["acme/served@1", "acme/p0@1"], ["p0@prod"]],
            "model": ["acme/served@1", "served@1", "mint://acme/served@1", "other/x@1"],
            "policy": ["p0", "acme/p0", "p1", "acme/p1", "p2", "acme/p3", "other/p0"],
            "name": ["p2", "acme", "newcomer", "k1", "p0", "w", "save1"],
            "name_prefix": ["p", "acme/p", ""],
            "tenant": ["acme", "other", "local", "newcomer"],
            "base_model": [self.base, self.base + "x"],
            "sha256": [self.sha256, self.sha256[:-1] + "0"],
            "weights_sha256": [self.sha256],
            "adapter_config_json": [self.config_json, self.config_json.replace('"r": 2', '"r": 3')],
            "config_json": ['{"hidden_size": 256}'],
            "architecture": ["llama"],
            "alias": ["prod", "staging", "latest"],
            "action": ["publish", "set_alias", "create_policy"],
            "session_id": [self.session_id, self.session_id + "x"],
            "path": [self.state_path],
            "wave_id": [self.wave_id],
            "loss_fn": ["cross_entropy", "importance_sampling", "ppo"],
            "mint.v1.ChatMessage.role": ["user", "assistant", "system"],
            "content": ["hello", "<|im_start|>assistant\nsure<|im_end|>"],
            "text": ["hello", "<|im_end|>"],
            "stop": ["\n", "o"],
            "source": ["upload"],
            "chunk": [self.adapter_bytes, *self.valid_adapters],
            "data": [self.adapter_bytes],
            "tokens": [tokens],
            "ids": [tokens, [0, 1, 2]],
            "max_tokens": [1, 2, 4],
            "rank": [2, 4],
            "number": [1, 2],
            "revision_number": [1, 2],
            "to_revision_number": [1, 0],
            "page_size": [1, 2, 100],
            "target_modules": [["q_proj"], ["q_proj", "v_proj"]],
            "loss_fn_inputs": [{"target_tokens": target, "weights": ones}],
            "metrics": [{"acc": 0.5}],
        }

    def _seeds(self) -> dict[str, list[list]]:
        """Valid requests of each method (a stream of them for client-streaming methods), to mutate."""
        b, sid = self.base, self.session_id
        prompt = common_pb2.Prompt(text="hello")
        chat = common_pb2.Prompt(chat=common_pb2.ChatPrompt(messages=[common_pb2.ChatMessage(role="user", content="hi")]))
        params = common_pb2.SamplingParams(max_tokens=2)
        target = common_pb2.TensorData(int_data=[6, 7, 8, 9, 10], shape=[5])
        datum = trainer_pb2.Datum(tokens=[5, 6, 7, 8, 9], loss_fn_inputs={"target_tokens": target, "weights": common_pb2.TensorData(float_data=[1.0] * 5, shape=[5])})
        record = catalog_pb2.RevisionRecord(policy="acme/imported", base_model=b, number=1, sha256=self.sha256, rank=2, alpha=4.0, target_modules=["q_proj"])
        one = lambda *messages: [list(messages)]  # noqa: E731
        return {
            "WhoAmI": one(catalog_pb2.WhoAmIRequest()),
            "CreateTenant": one(catalog_pb2.CreateTenantRequest(name="newcomer")),
            "CreateApiKey": one(catalog_pb2.CreateApiKeyRequest(tenant="acme", name="k1", role=catalog_pb2.ROLE_MEMBER)),
            "RegisterBaseModel": one(catalog_pb2.RegisterBaseModelRequest(
                name="tiny2", architecture="llama", config_json='{"hidden_size": 256}', weights_sha256=self.sha256, num_layers=4,
                module_shapes={"q_proj": catalog_pb2.ModuleShape(in_features=256, out_features=256)},
            )),
            "GetBaseModel": one(catalog_pb2.GetBaseModelRequest(name=b)),
            "ListBaseModels": one(catalog_pb2.ListBaseModelsRequest(page=common_pb2.PageRequest(page_size=1))),
            "CreatePolicy": one(catalog_pb2.CreatePolicyRequest(name="p2", base_model=b, description="d")),
            "GetPolicy": one(catalog_pb2.GetPolicyRequest(name="p0")),
            "ListPolicies": one(catalog_pb2.ListPoliciesRequest(name_prefix="p")),
            "PublishRevision": [self.publish_stream("p0"), self.publish_stream("p1", self.valid_adapters[1], self.other_config_json)],
            "Resolve": [[catalog_pb2.ResolveRequest(ref="acme/served@1")], [catalog_pb2.ResolveRequest(ref="acme/p0@prod")]],
            "GetRevision": one(catalog_pb2.GetRevisionRequest(ref="served@1")),
            "ListRevisions": one(catalog_pb2.ListRevisionsRequest(policy="p0", newest_first=True)),
            "DownloadRevision": one(catalog_pb2.DownloadRevisionRequest(ref="served@1")),
            "DownloadBlob": one(catalog_pb2.DownloadBlobRequest(sha256=self.sha256)),
            "RetractRevision": one(catalog_pb2.RetractRevisionRequest(ref="p0@2", reason="bad")),
            "RecordMetrics": one(catalog_pb2.RecordMetricsRequest(ref="p0@1", metrics={"acc": 0.5})),
            "SetAlias": one(catalog_pb2.SetAliasRequest(policy="p0", alias="staging", revision_number=1)),
            "Rollback": one(catalog_pb2.RollbackRequest(policy="p0", alias="prod")),
            "ListAliases": one(catalog_pb2.ListAliasesRequest(policy="p0")),
            "ListAliasHistory": one(catalog_pb2.ListAliasHistoryRequest(policy="p0")),
            "ListAuditEvents": one(catalog_pb2.ListAuditEventsRequest(policy="p0")),
            "UploadBlob": one(catalog_pb2.BlobChunk(data=self.adapter_bytes, base_model=b, adapter_config_json=self.config_json)),
            "ImportRevisions": one(catalog_pb2.ImportRevisionsRequest(records=[record])),
            "Sample": [
                [gateway_pb2.SampleRequest(model="acme/served@1", prompt=prompt, params=params)],
                [gateway_pb2.SampleRequest(base_model=b, prompt=chat, params=params)],
                [gateway_pb2.SampleRequest(base_model=b, prompt=common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=[1, 2])), params=params)],
            ],
            "ComputeLogprobs": one(gateway_pb2.LogprobsRequest(base_model=b, sequences=[common_pb2.TokenIds(ids=[1, 2, 3])])),
            "ActivateWave": one(gateway_pb2.ActivateWaveRequest(refs=["acme/served@1"])),
            "ListEngines": one(gateway_pb2.ListEnginesRequest()),
            "GetTokenizer": [[engine_pb2.GetBaseTokenizerRequest(base_model=b)], [trainer_pb2.GetTokenizerRequest()]],
            "GetWave": one(gateway_pb2.GetWaveRequest(wave_id=self.wave_id)),
            "CreateSession": one(trainer_pb2.CreateSessionRequest(base_model=b, policy="p0", rank=2, train_attn=True)),
            "GetSession": one(trainer_pb2.GetSessionRequest(session_id=sid)),
            "CloseSession": one(trainer_pb2.CloseSessionRequest(session_id=sid)),
            "ForwardBackward": one(trainer_pb2.ForwardBackwardRequest(session_id=sid, data=[datum], loss_fn="cross_entropy")),
            "Forward": one(trainer_pb2.ForwardRequest(session_id=sid, data=[datum], loss_fn="cross_entropy")),
            "OptimStep": one(trainer_pb2.OptimStepRequest(session_id=sid, adam_params=trainer_pb2.AdamParams(learning_rate=1e-4))),
            "SaveWeightsForSampler": one(trainer_pb2.SaveWeightsForSamplerRequest(session_id=sid, name="w1")),
            "SaveState": one(trainer_pb2.SaveStateRequest(session_id=sid, name="s1")),
            "LoadState": one(trainer_pb2.LoadStateRequest(session_id=sid, path=self.state_path)),
        }

    # --- what the server keeps -------------------------------------------------------------------------------

    def state(self) -> dict[str, float]:
        """Row counts of every catalog table (and sums of the columns that change in place), files in the blob
        store, its staging directory and the trainer's state directory, and the trainer's open sessions."""
        conn = getattr(self._local, "db", None)
        if conn is None:
            conn = self._local.db = sqlite3.connect(f"file:{self.data / 'catalog.db'}?mode=ro", uri=True)
        queries = {
            "tenants": "SELECT count(*) FROM tenants",
            "api_keys": "SELECT count(*) FROM api_keys",
            "revoked_keys": "SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL",
            "base_models": "SELECT count(*) FROM base_models",
            "policies": "SELECT count(*) FROM policies",
            "policy_heads": "SELECT total(head_number) FROM policies",
            "blobs": "SELECT count(*) FROM blobs",
            "revisions": "SELECT count(*) FROM revisions",
            "retracted": "SELECT count(*) FROM revisions WHERE status = 'retracted'",
            "revision_metrics": "SELECT total(length(metrics)) FROM revisions",
            "aliases": "SELECT count(*) FROM aliases",
            "alias_targets": "SELECT total(revision_number) FROM aliases",
            "alias_moves": "SELECT count(*) FROM alias_moves",
            "audit_events": "SELECT count(*) FROM audit_events",
        }
        row = conn.execute("SELECT " + ", ".join(f"({q})" for q in queries.values())).fetchone()
        state = dict(zip(queries, row, strict=True))
        blobs = self.data / "blobs"
        state["blob_files"] = sum(1 for _ in _files(blobs, skip="staging"))
        state["staging_files"] = sum(1 for _ in _files(blobs / "staging"))
        state["trainer_files"] = sum(1 for _ in _files(self.data / "trainer"))
        state["sessions"] = len(self.stack.trainer.sessions)
        return state

    # --- judging one case ----------------------------------------------------------------------------------------

    def judge(self, case: Case) -> Verdict:
        writing = case.method.name not in NON_WRITING
        if writing:
            with self._lock.exclusive():
                before = self.state()
                unexplained = _changes(self._last_state, before)  # what the non-writing calls before it changed
                verdict = self._call(case)
                if case.method.name == "CloseSession" and verdict.status is grpc.StatusCode.OK:
                    self._reopen_session()  # later cases should still reach a live session
                after = self.state()
                self._last_state = after
            stored = _changes(before, after) if verdict.status is not grpc.StatusCode.OK else []
            verdict.stored = stored + [f"while only non-writing calls ran: {c}" for c in unexplained]
            return verdict
        with self._lock.shared():
            return self._call(case)

    def settle(self) -> list[str]:
        """What changed since the last writing call while only non-writing calls ran (empty when nothing did)."""
        with self._lock.exclusive():
            now = self.state()
            changed, self._last_state = _changes(self._last_state, now), now
        return changed

    def _call(self, case: Case) -> Verdict:
        method = case.method
        path = f"/{case.service.full_name}/{method.name}"
        kinds = {(False, False): self.channel.unary_unary, (False, True): self.channel.unary_stream,
                 (True, False): self.channel.stream_unary, (True, True): self.channel.stream_stream}
        stub = kinds[(method.client_streaming, method.server_streaming)](path)
        request = iter(case.bodies) if method.client_streaming else case.bodies[0]
        start = time.perf_counter()
        try:
            answer = stub(request, metadata=self.callers[case.caller], timeout=CALL_TIMEOUT_S)
            if method.server_streaming:
                for i, _ in enumerate(answer):
                    if i + 1 >= MAX_STREAM_CHUNKS:
                        answer.cancel()
                        break
        except grpc.RpcError as err:
            code = err.code()
            if code is grpc.StatusCode.CANCELLED and method.server_streaming:
                code = grpc.StatusCode.OK  # we cancelled it
            return Verdict(code, err.details() or "", time.perf_counter() - start, [])
        return Verdict(grpc.StatusCode.OK, "", time.perf_counter() - start, [])

    def healthy(self) -> bool:
        try:
            status = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        except grpc.RpcError:
            return False
        try:
            self.catalog.WhoAmI(catalog_pb2.WhoAmIRequest(), metadata=self.callers["acme"], timeout=10)
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:  # a quota a case set on acme is an answer
                return False
        return status == health_pb2.HealthCheckResponse.SERVING


def _files(root: Path, skip: str = "") -> Iterator[str]:
    for _, dirnames, filenames in os.walk(root):
        if skip in dirnames:
            dirnames.remove(skip)
        yield from filenames


def _changes(before: dict, after: dict) -> list[str]:
    return [f"{key} {before[key]:g} -> {after[key]:g}" for key in before if before[key] != after[key]]


class _SharedExclusive:
    """A readers-writer lock: many holders in shared mode, or one in exclusive mode (writers first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    def shared(self):
        return _Held(self, exclusive=False)

    def exclusive(self):
        return _Held(self, exclusive=True)


class _Held:
    def __init__(self, lock: _SharedExclusive, *, exclusive: bool):
        self.lock, self.is_exclusive = lock, exclusive

    def __enter__(self):
        lock = self.lock
        with lock._cond:
            if self.is_exclusive:
                lock._waiting += 1
                lock._cond.wait_for(lambda: not lock._exclusive and lock._shared == 0)
                lock._waiting -= 1
                lock._exclusive = True
            else:
                lock._cond.wait_for(lambda: not lock._exclusive and lock._waiting == 0)
                lock._shared += 1

    def __exit__(self, *exc):
        lock = self.lock
        with lock._cond:
            if self.is_exclusive:
                lock._exclusive = False
            else:
                lock._shared -= 1
            lock._cond.notify_all()


# --- cases -----------------------------------------------------------------------------------------------------


@st.composite
def cases(draw, world: World, methods=METHODS) -> Case:
    """One call of a public RPC: a request generated from the method's descriptor, a mutation of a valid one,
    or bodies that are not the message at all; sent by any caller, with its fields in any order."""
    service, method = draw(st.sampled_from(methods))
    vocab, limits = world.vocabulary, world.limits
    seeds = [seed for seed in world.seeds.get(method.name, []) if seed[0].DESCRIPTOR is method.input_type]
    origin = draw(st.sampled_from(("generated", "mutated", "mutated", "valid", "raw") if seeds else ("generated", "raw")))
    caller = draw(st.sampled_from(("acme", "acme", "acme", "acme", "admin", "admin", "other", "service", "anonymous", "forged")))
    if origin == "valid" or (origin == "mutated" and draw(st.booleans())):
        caller = SEED_CALLERS.get(method.name, "acme")
    if origin == "generated":
        count = draw(st.integers(1, 4)) if method.client_streaming else 1
        messages = [draw(fs.messages(method.input_type, vocab, limits)) for _ in range(count)]
    elif not seeds:
        messages = [draw(fs.messages(method.input_type, vocab, limits))]
    else:
        messages = list(draw(st.sampled_from(seeds)))
        if origin == "mutated":
            messages = draw(_mutated_stream(messages, vocab, limits)) if method.client_streaming else [draw(fs.mutations(messages[0], vocab, limits))]
    bodies = [draw(fs.encodings(m)) for m in messages]
    if origin == "raw":
        i = draw(st.integers(0, len(bodies) - 1))
        bodies[i] = draw(fs.broken_bodies(bodies[i]))
    if method.name == "PublishRevision" and origin != "generated" and draw(st.booleans()):
        bodies = bodies[:1] + [draw(_chunk(world)) for _ in range(draw(st.integers(1, 2)))]
    return Case(service=service, method=method, bodies=tuple(bodies), caller=caller, origin=origin)


@st.composite
def _mutated_stream(draw, messages: list, vocab, limits) -> list:
    edit = draw(st.sampled_from(("message", "message", "drop", "duplicate", "reverse", "empty")))
    if edit == "message":
        i = draw(st.integers(0, len(messages) - 1))
        return [*messages[:i], draw(fs.mutations(messages[i], vocab, limits)), *messages[i + 1 :]]
    if edit == "drop":
        i = draw(st.integers(0, len(messages) - 1))
        return messages[:i] + messages[i + 1 :] or messages[:1]
    if edit == "duplicate":
        return [*messages, *messages]
    if edit == "reverse":
        return messages[::-1]
    return [type(messages[0])()]


@st.composite
def _chunk(draw, world: World) -> bytes:
    data = draw(fs.adapter_files(world.valid_adapters))
    return catalog_pb2.PublishRevisionRequest(chunk=data).SerializeToString()
