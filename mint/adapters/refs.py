"""The AdapterRef message: what an engine needs to serve a revision, built wherever a revision is known
(the catalog answering a resolve, a trainer that just published)."""

from __future__ import annotations

from mint.proto import common_pb2


def adapter_ref(revision) -> common_pb2.AdapterRef:
    """From a catalog Revision, as an entity or as a mint.v1.Revision message (the same fields)."""
    return common_pb2.AdapterRef(
        address=revision.address,
        sha256=revision.sha256,
        size_bytes=revision.size_bytes,
        rank=revision.rank,
        alpha=revision.alpha,
        use_rslora=revision.use_rslora,
        target_modules=list(revision.target_modules),
        base_model=revision.base_model,
    )
