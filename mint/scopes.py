"""What each public RPC needs a key to hold, and the one check of it.

A key holds a set of scopes: `read` (look at policies, revisions, aliases, the audit log), `sample` (sample
and score with policies), `train` (training sessions), `publish` (make and change revisions: publish,
aliases, retraction, metrics) and `admin` (keys of its tenant; with the admin role also tenants, base
models and the bulk path). Roles stay what they were and give a key its default scopes (`Role.scopes`).

`REQUIRED` maps every public RPC, by full method name, to the scopes any one of which lets a key call it
(empty: any valid key). `check` runs in the server interceptor right after authentication, on every
service, so a call is refused at the first service it reaches. EngineService is internal: engines accept
only service and admin keys (their authenticator's roles), which hold every scope they use.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mint.errors import Code, MintError, invalid

if TYPE_CHECKING:
    from mint.auth import Principal


class Scope(enum.Enum):
    READ = "read"
    SAMPLE = "sample"
    TRAIN = "train"
    PUBLISH = "publish"
    ADMIN = "admin"


ALL = frozenset(Scope)
NON_ADMIN = ALL - {Scope.ADMIN}
_ANY_KEY: frozenset[Scope] = frozenset()
_READ, _SAMPLE, _TRAIN, _PUBLISH, _ADMIN = ({s} for s in (Scope.READ, Scope.SAMPLE, Scope.TRAIN, Scope.PUBLISH, Scope.ADMIN))


def _service(name: str, methods: dict[str, set[Scope] | frozenset[Scope]]) -> dict[str, frozenset[Scope]]:
    return {f"/mint.v1.{name}/{method}": frozenset(scopes) for method, scopes in methods.items()}


REQUIRED: dict[str, frozenset[Scope]] = {
    **_service("CatalogService", {
        "WhoAmI": _ANY_KEY,
        "CreateTenant": _ADMIN,
        "CreateApiKey": _ADMIN,
        "RevokeApiKey": _ADMIN,
        "ListApiKeys": _ADMIN,
        "RegisterBaseModel": _ADMIN,
        "SetTenantLimits": _ADMIN,
        "GetTenantLimits": _READ | _ADMIN,
        "GetBaseModel": _READ,
        "ListBaseModels": _READ,
        "CreatePolicy": _PUBLISH | _TRAIN,  # a training session creates its policy too
        "GetPolicy": _READ,
        "ListPolicies": _READ,
        "PublishRevision": _PUBLISH,
        "Resolve": _READ | _SAMPLE,  # the gateway resolves a sample's model with the caller's key
        "GetRevision": _READ,
        "ListRevisions": _READ,
        "DownloadRevision": _READ,
        "DownloadBlob": _READ,
        "RetractRevision": _PUBLISH,
        "RecordMetrics": _PUBLISH,
        "SetAlias": _PUBLISH,
        "Rollback": _PUBLISH,
        "ListAliases": _READ,
        "ListAliasHistory": _READ,
        "ListAuditEvents": _READ,
        "UploadBlob": _ADMIN,
        "ImportRevisions": _ADMIN,
    }),
    **_service("SamplingService", {
        "Sample": _SAMPLE,
        "ComputeLogprobs": _SAMPLE,
        "ActivateWave": _SAMPLE,
        "GetWave": _SAMPLE | _READ,
        "ListEngines": _SAMPLE | _READ,
        "GetTokenizer": _SAMPLE | _READ,
    }),
    **_service("TrainerService", {
        "CreateSession": _TRAIN,
        "GetSession": _TRAIN,
        "CloseSession": _TRAIN,
        "ForwardBackward": _TRAIN,
        "Forward": _TRAIN,
        "OptimStep": _TRAIN,
        "SaveWeightsForSampler": _PUBLISH,  # it publishes a revision
        "SaveState": _TRAIN,
        "LoadState": _TRAIN,
        "GetTokenizer": _TRAIN | _READ,
    }),
}
PUBLIC_SERVICES = ("mint.v1.CatalogService", "mint.v1.SamplingService", "mint.v1.TrainerService")
INTERNAL_SERVICES = ("mint.v1.EngineService",)


def parse(names: Iterable[str]) -> frozenset[Scope]:
    """Scope names as a set; INVALID_ARGUMENT naming the unknown one and the valid ones."""
    scopes = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            raise invalid(f"unknown scope {name[:40]!r}; scopes are {', '.join(s.value for s in Scope)}") from None
    return frozenset(scopes)


def names(scopes: Iterable[Scope]) -> list[str]:
    """Scope names in the canonical order (read, sample, train, publish, admin)."""
    held = set(scopes)
    return [s.value for s in Scope if s in held]


def check(principal: Principal, method: str) -> None:
    """PERMISSION_DENIED unless `principal`'s key holds a scope `method` accepts."""
    if method.startswith(tuple(f"/{s}/" for s in INTERNAL_SERVICES)):
        return
    needed = REQUIRED.get(method)
    if needed is None:
        raise MintError(Code.PERMISSION_DENIED, f"{method} is not a public MinT method (mint.scopes.REQUIRED has no entry for it)")
    if needed and not needed & principal.scopes:
        raise MintError(
            Code.PERMISSION_DENIED,
            f"{method.rpartition('/')[2]} needs the {' or '.join(repr(n) for n in names(needed))} scope; "
            f"key {principal.key_label} holds {', '.join(names(principal.scopes)) or 'none'}",
        )
