"""CatalogService over gRPC: messages in, `Catalog` calls, messages out. No logic of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator

from mint import scopes
from mint.adapters.refs import adapter_ref
from mint.errors import invalid
from mint.proto import catalog_pb2 as pb
from mint.proto import catalog_pb2_grpc
from services.catalog import convert
from services.catalog.catalog import Catalog
from services.catalog.store import ImportRecord


def _page(request) -> tuple[str, int]:
    return request.page.page_token, request.page.page_size


def _upload_chunks(requests: Iterator, field: str) -> Iterator[bytes]:
    for request in requests:
        if request.WhichOneof("part") != field:
            raise invalid("only chunks may follow the header of an upload")
        yield getattr(request, field)


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def WhoAmI(self, request, context):
        return convert.principal_pb(self.catalog.who_am_i())

    def CreateTenant(self, request, context):
        tenant = self.catalog.create_tenant(request.name)
        return convert.tenant_pb(tenant)

    def CreateApiKey(self, request, context):
        role = convert.ROLE_FROM_PB.get(request.role or pb.ROLE_MEMBER)
        if role is None:
            raise invalid(f"unknown role {request.role}")
        if request.ttl_s < 0:
            raise invalid(f"ttl_s must be a positive number of seconds (0: not given), got {request.ttl_s}")
        key, info = self.catalog.create_api_key(
            request.tenant,
            request.name,
            role,
            scopes=scopes.parse(request.scopes) if request.scopes else None,
            expires_at=convert.datetime_of(request.expires_at, "expires_at") if request.HasField("expires_at") else None,
            ttl_s=request.ttl_s or None,
        )
        return pb.CreateApiKeyResponse(key=key, key_id=info.key_id, tenant=info.tenant, role=convert.ROLE_TO_PB[role], info=convert.api_key_pb(info))

    def RevokeApiKey(self, request, context):
        return convert.api_key_pb(self.catalog.revoke_api_key(request.tenant, request.name))

    def ListApiKeys(self, request, context):
        page = self.catalog.list_api_keys(request.tenant, *_page(request))
        return pb.ListApiKeysResponse(keys=[convert.api_key_pb(k) for k in page.items], next_page_token=page.next_token)

    def SetTenantLimits(self, request, context):
        limits = self.catalog.set_tenant_limits(request.tenant, convert.limit_values(request.limits), request.clear)
        return convert.tenant_limits_pb(limits)

    def GetTenantLimits(self, request, context):
        return convert.tenant_limits_pb(self.catalog.get_tenant_limits(request.tenant, with_usage=request.with_usage))

    def RegisterBaseModel(self, request, context):
        try:
            config = json.loads(request.config_json or "{}")
        except ValueError as err:
            raise invalid(f"config_json is not valid JSON: {err}") from None
        model = self.catalog.register_base_model(
            name=request.name,
            architecture=request.architecture,
            config=config,
            weights_sha256=request.weights_sha256,
            module_shapes={k: (v.in_features, v.out_features) for k, v in request.module_shapes.items()},
            num_layers=request.num_layers,
        )
        return convert.base_model_pb(model)

    def GetBaseModel(self, request, context):
        return convert.base_model_pb(self.catalog.get_base_model(request.name))

    def ListBaseModels(self, request, context):
        page = self.catalog.list_base_models(*_page(request))
        return pb.ListBaseModelsResponse(base_models=[convert.base_model_pb(m) for m in page.items], next_page_token=page.next_token)

    def CreatePolicy(self, request, context):
        return convert.policy_pb(self.catalog.create_policy(request.name, request.base_model, request.description))

    def GetPolicy(self, request, context):
        return convert.policy_pb(self.catalog.get_policy(request.name))

    def ListPolicies(self, request, context):
        page = self.catalog.list_policies(request.name_prefix, *_page(request))
        return pb.ListPoliciesResponse(policies=[convert.policy_pb(p) for p in page.items], next_page_token=page.next_token)

    def PublishRevision(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("a publish stream must start with a header message")
        header = first.header
        revision = self.catalog.publish(
            header.policy,
            header.adapter_config_json,
            _upload_chunks(request_iterator, "chunk"),
            parent_number=header.parent_number or None,
            source=header.source,
            metrics=dict(header.metrics),
            size_bytes=header.size_bytes,
            sha256=header.sha256,
            idempotency_key=header.idempotency_key,
        )
        return convert.revision_pb(revision)

    def Resolve(self, request, context):
        revision = self.catalog.resolve(request.ref)
        return pb.ResolveResponse(revision=convert.revision_pb(revision), adapter=adapter_ref(revision))

    def GetRevision(self, request, context):
        return convert.revision_pb(self.catalog.get_revision(request.ref))

    def ListRevisions(self, request, context):
        page = self.catalog.list_revisions(request.policy, newest_first=request.newest_first, page_token=request.page.page_token, limit=request.page.page_size)
        return pb.ListRevisionsResponse(revisions=[convert.revision_pb(r) for r in page.items], next_page_token=page.next_token)

    def DownloadRevision(self, request, context):
        revision, chunks = self.catalog.download_revision(request.ref)
        yield pb.DownloadChunk(revision=convert.revision_pb(revision))
        for chunk in chunks:
            yield pb.DownloadChunk(chunk=chunk)

    def DownloadBlob(self, request, context):
        for chunk in self.catalog.download_blob(request.sha256):
            yield pb.DownloadChunk(chunk=chunk)

    def RetractRevision(self, request, context):
        return convert.revision_pb(self.catalog.retract(request.ref, request.reason))

    def RecordMetrics(self, request, context):
        return convert.revision_pb(self.catalog.record_metrics(request.ref, dict(request.metrics)))

    def SetAlias(self, request, context):
        return convert.alias_pb(self.catalog.set_alias(request.policy, request.alias, request.revision_number, request.reason))

    def Rollback(self, request, context):
        return convert.alias_pb(self.catalog.rollback(request.policy, request.alias, request.to_revision_number, request.reason))

    def ListAliases(self, request, context):
        return pb.ListAliasesResponse(aliases=[convert.alias_pb(a) for a in self.catalog.list_aliases(request.policy)])

    def ListAliasHistory(self, request, context):
        page = self.catalog.alias_history(request.policy, request.alias, *_page(request))
        return pb.ListAliasHistoryResponse(moves=[convert.alias_move_pb(m) for m in page.items], next_page_token=page.next_token)

    def ListAuditEvents(self, request, context):
        page = self.catalog.list_audit_events(request.policy, request.action, *_page(request))
        return pb.ListAuditEventsResponse(events=[convert.audit_event_pb(e) for e in page.items], next_page_token=page.next_token)

    def UploadBlob(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None:
            raise invalid("an upload stream needs at least one chunk")

        def chunks() -> Iterator[bytes]:
            yield first.data
            for request in request_iterator:
                yield request.data

        sha, size = self.catalog.upload_blob(first.base_model, first.adapter_config_json, chunks(), first.sha256)
        return pb.BlobInfo(sha256=sha, size_bytes=size)

    def ImportRevisions(self, request_iterator, context):
        def batches() -> Iterator[Iterator[ImportRecord]]:
            # Records are converted as the importer reads them, so a fault in one is reported with its index.
            for request in request_iterator:
                yield map(convert.import_record, request.records)

        result = self.catalog.import_revisions(batches())
        return pb.ImportRevisionsResponse(revisions=result.revisions, policies_created=result.policies_created)
