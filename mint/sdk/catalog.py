"""CatalogClient: the catalog's API in Python (against the catalog or the gateway, which forwards it).

Errors arrive as `MintError` with the server's code and message; listings are iterators that follow
`next_page_token`; uploads and downloads stream in 1 MiB chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from mint import auth
from mint.adapters import CONFIG_NAME, WEIGHTS_NAME, AdapterWeights, read_adapter_dir
from mint.errors import Code, MintError
from mint.proto import catalog_pb2 as pb
from mint.proto import catalog_pb2_grpc, common_pb2

CHUNK = 4 * 1024 * 1024  # bytes per upload message: fewer, larger messages cost less


def rpc(fn, request, **kwargs):
    """Call a unary (or client-streaming) RPC, turning gRPC errors into MintError."""
    try:
        return fn(request, **kwargs)
    except grpc.RpcError as err:
        raise MintError.from_rpc_error(err) from None


def rpc_stream(fn, request, **kwargs) -> Iterator:
    try:
        yield from fn(request, **kwargs)
    except grpc.RpcError as err:
        raise MintError.from_rpc_error(err) from None


class CatalogClient:
    def __init__(
        self, channel: grpc.Channel, api_key: str, *, tenant: str | None = None, on_behalf_of: str | None = None, timeout_s: float = 60.0,
    ):
        """`tenant` and `on_behalf_of` (a key id) are for service keys: acting for that tenant, doing work that
        key asked for (the audit log then names that key)."""
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._md = auth.call_metadata(api_key, tenant, on_behalf_of)
        self._timeout = timeout_s

    def _call(self, name: str, request, *, timeout: float | None = None):
        return rpc(getattr(self._stub, name), request, metadata=self._md, timeout=timeout or self._timeout)

    def _pages(self, name: str, field: str, request, page_size: int = 0) -> Iterator:
        token = ""
        while True:
            request.page.CopyFrom(common_pb2.PageRequest(page_size=page_size, page_token=token))
            response = self._call(name, request)
            yield from getattr(response, field)
            token = response.next_page_token
            if not token:
                return

    # --- identity and administration -----------------------------------------------------------------

    def whoami(self) -> pb.Principal:
        return self._call("WhoAmI", pb.WhoAmIRequest())

    def create_tenant(self, name: str) -> pb.Tenant:
        return self._call("CreateTenant", pb.CreateTenantRequest(name=name))

    def create_api_key(
        self, tenant: str, name: str, role: str = "member", *, scopes: Iterable[str] | None = None, expires_in_s: int | None = None,
    ) -> str:
        """A new key (shown only now). `scopes`: some of read, sample, train, publish, admin (default: the
        role's that this client's key holds); `expires_in_s`: seconds it lives (default: as long as this
        client's key)."""
        return self.create_api_key_info(tenant, name, role, scopes=scopes, expires_in_s=expires_in_s).key

    def create_api_key_info(
        self, tenant: str, name: str, role: str = "member", *, scopes: Iterable[str] | None = None, expires_in_s: int | None = None,
    ) -> pb.CreateApiKeyResponse:
        """`create_api_key`, answering the key with its record (`.info`: scopes, expiry)."""
        roles = {"member": pb.ROLE_MEMBER, "service": pb.ROLE_SERVICE, "admin": pb.ROLE_ADMIN}
        if role not in roles:
            raise MintError(Code.INVALID_ARGUMENT, f"unknown role {role!r}; roles are {', '.join(roles)}")
        request = pb.CreateApiKeyRequest(tenant=tenant, name=name, role=roles[role], scopes=list(scopes or ()), ttl_s=expires_in_s or 0)
        return self._call("CreateApiKey", request)

    def revoke_api_key(self, tenant: str, name: str) -> pb.ApiKey:
        """Revoke the key `name` of `tenant` ("" for this client's own): the catalog refuses it at once, other
        services within their key cache's TTL (MINT_KEY_CACHE_TTL_S)."""
        return self._call("RevokeApiKey", pb.RevokeApiKeyRequest(tenant=tenant, name=name))

    def list_api_keys(self, tenant: str = "", page_size: int = 0) -> Iterator[pb.ApiKey]:
        """The tenant's keys by name (revoked and expired ones too), never their secrets."""
        return self._pages("ListApiKeys", "keys", pb.ListApiKeysRequest(tenant=tenant), page_size)

    def set_tenant_limits(self, tenant: str, *, clear: Iterable[str] = (), **limits: int | float) -> pb.TenantLimits:
        """Set some of `tenant`'s limits (max_stored_bytes, max_revisions, max_policies, requests_per_second,
        burst, max_concurrent_sequences, max_concurrent_sessions) and remove those named in `clear`, keeping the
        rest (a global admin key)."""
        try:
            message = pb.TenantLimits(**limits)
        except (ValueError, TypeError) as err:
            raise MintError(Code.INVALID_ARGUMENT, f"bad limit: {err}") from None
        return self._call("SetTenantLimits", pb.SetTenantLimitsRequest(tenant=tenant, limits=message, clear=list(clear)))

    def get_tenant_limits(self, tenant: str = "", *, with_usage: bool = False) -> pb.TenantLimits:
        """`tenant`'s limits (an unset field is no limit); `with_usage`: with what it stores now (`.usage`)."""
        return self._call("GetTenantLimits", pb.GetTenantLimitsRequest(tenant=tenant, with_usage=with_usage))

    def register_base_model(
        self, name: str, *, architecture: str, config: dict[str, Any], weights_sha256: str,
        module_shapes: dict[str, tuple[int, int]], num_layers: int,
    ) -> pb.BaseModel:
        request = pb.RegisterBaseModelRequest(
            name=name,
            architecture=architecture,
            config_json=json.dumps(config),
            weights_sha256=weights_sha256,
            module_shapes={k: pb.ModuleShape(in_features=i, out_features=o) for k, (i, o) in module_shapes.items()},
            num_layers=num_layers,
        )
        return self._call("RegisterBaseModel", request)

    def register_base_dir(self, path: str | os.PathLike, name: str = "") -> pb.BaseModel:
        """Register a Hugging Face model directory as a base model (idempotent for the same weights)."""
        from mint.models.loading import base_description

        return self.register_base_model(name or Path(path).name, **base_description(path))

    def get_base_model(self, name: str) -> pb.BaseModel:
        return self._call("GetBaseModel", pb.GetBaseModelRequest(name=name))

    # --- policies and revisions -------------------------------------------------------------------------

    def create_policy(self, name: str, base_model: str, description: str = "") -> pb.Policy:
        return self._call("CreatePolicy", pb.CreatePolicyRequest(name=name, base_model=base_model, description=description))

    def get_policy(self, name: str) -> pb.Policy:
        return self._call("GetPolicy", pb.GetPolicyRequest(name=name))

    def list_policies(self, name_prefix: str = "", page_size: int = 0) -> Iterator[pb.Policy]:
        return self._pages("ListPolicies", "policies", pb.ListPoliciesRequest(name_prefix=name_prefix), page_size)

    def publish(
        self,
        policy: str,
        adapter: AdapterWeights | str | os.PathLike | tuple[str, bytes],
        *,
        parent_number: int = 0,
        source: str = "",
        metrics: dict[str, float] | None = None,
        idempotency_key: str = "",
    ) -> pb.Revision:
        """Publish an adapter (in-memory weights, a PEFT directory, or (config json, safetensors bytes))
        as the policy's next revision. Retrying with the same idempotency_key returns the first one."""
        if isinstance(adapter, AdapterWeights):
            config_json, data = adapter.config.to_json(), adapter.to_safetensors()
        elif isinstance(adapter, tuple):
            config_json, data = adapter
        else:
            _, weights_path = read_adapter_dir(adapter)  # checks both files are there and the config parses
            config_json, data = Path(adapter, CONFIG_NAME).read_text(), weights_path.read_bytes()
        header = pb.PublishRevisionHeader(
            policy=policy,
            adapter_config_json=config_json,
            parent_number=parent_number,
            source=source,
            metrics=metrics or {},
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            idempotency_key=idempotency_key,
        )

        def messages() -> Iterator[pb.PublishRevisionRequest]:
            yield pb.PublishRevisionRequest(header=header)
            for i in range(0, len(data), CHUNK):
                yield pb.PublishRevisionRequest(chunk=data[i : i + CHUNK])

        return self._call("PublishRevision", messages())

    def resolve(self, ref: str) -> pb.ResolveResponse:
        return self._call("Resolve", pb.ResolveRequest(ref=ref))

    def get_revision(self, ref: str) -> pb.Revision:
        return self._call("GetRevision", pb.GetRevisionRequest(ref=ref))

    def list_revisions(self, policy: str = "", *, newest_first: bool = False, page_size: int = 0) -> Iterator[pb.Revision]:
        return self._pages("ListRevisions", "revisions", pb.ListRevisionsRequest(policy=policy, newest_first=newest_first), page_size)

    def list_revisions_page(self, policy: str = "", *, page_token: str = "", page_size: int = 0) -> pb.ListRevisionsResponse:
        page = common_pb2.PageRequest(page_size=page_size, page_token=page_token)
        return self._call("ListRevisions", pb.ListRevisionsRequest(policy=policy, page=page))

    def download(self, ref: str, directory: str | os.PathLike) -> pb.Revision:
        """Write the revision as a PEFT directory (adapter_config.json + adapter_model.safetensors)."""
        stream = rpc_stream(self._stub.DownloadRevision, pb.DownloadRevisionRequest(ref=ref), metadata=self._md, timeout=self._timeout)
        revision = next(stream).revision
        digest = hashlib.sha256()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / WEIGHTS_NAME, "wb") as f:
            for message in stream:
                digest.update(message.chunk)
                f.write(message.chunk)
        if digest.hexdigest() != revision.sha256:
            raise MintError(Code.DATA_LOSS, f"downloaded bytes of {revision.address} do not hash to {revision.sha256}")
        (path / CONFIG_NAME).write_text(revision.adapter_config_json)
        return revision

    def download_blob(self, sha256: str) -> Iterator[bytes]:
        stream = rpc_stream(self._stub.DownloadBlob, pb.DownloadBlobRequest(sha256=sha256), metadata=self._md, timeout=self._timeout)
        for message in stream:
            yield message.chunk

    def retract(self, ref: str, reason: str) -> pb.Revision:
        return self._call("RetractRevision", pb.RetractRevisionRequest(ref=ref, reason=reason))

    def record_metrics(self, ref: str, metrics: dict[str, float]) -> pb.Revision:
        return self._call("RecordMetrics", pb.RecordMetricsRequest(ref=ref, metrics=metrics))

    # --- aliases and audit -----------------------------------------------------------------------------

    def set_alias(self, policy: str, alias: str, revision_number: int, reason: str = "") -> pb.Alias:
        return self._call("SetAlias", pb.SetAliasRequest(policy=policy, alias=alias, revision_number=revision_number, reason=reason))

    def rollback(self, policy: str, alias: str, to_revision_number: int = 0, reason: str = "") -> pb.Alias:
        return self._call("Rollback", pb.RollbackRequest(policy=policy, alias=alias, to_revision_number=to_revision_number, reason=reason))

    def aliases(self, policy: str) -> list[pb.Alias]:
        return list(self._call("ListAliases", pb.ListAliasesRequest(policy=policy)).aliases)

    def alias_history(self, policy: str, alias: str = "") -> Iterator[pb.AliasMove]:
        return self._pages("ListAliasHistory", "moves", pb.ListAliasHistoryRequest(policy=policy, alias=alias))

    def audit_events(self, policy: str = "", action: str = "") -> Iterator[pb.AuditEvent]:
        return self._pages("ListAuditEvents", "events", pb.ListAuditEventsRequest(policy=policy, action=action))

    # --- bulk path ---------------------------------------------------------------------------------------

    def upload_blob(self, base_model: str, config_json: str, data: bytes) -> pb.BlobInfo:
        def chunks() -> Iterator[pb.BlobChunk]:
            yield pb.BlobChunk(data=data[:CHUNK], base_model=base_model, adapter_config_json=config_json, sha256=hashlib.sha256(data).hexdigest())
            for i in range(CHUNK, len(data), CHUNK):
                yield pb.BlobChunk(data=data[i : i + CHUNK])

        return self._call("UploadBlob", chunks())

    def import_revisions(self, records: Iterable[pb.RevisionRecord], batch_size: int = 20_000, timeout_s: float = 3600) -> pb.ImportRevisionsResponse:
        def batches() -> Iterator[pb.ImportRevisionsRequest]:
            batch: list[pb.RevisionRecord] = []
            for record in records:
                batch.append(record)
                if len(batch) == batch_size:
                    yield pb.ImportRevisionsRequest(records=batch)
                    batch = []
            if batch:
                yield pb.ImportRevisionsRequest(records=batch)

        return self._call("ImportRevisions", batches(), timeout=timeout_s)
