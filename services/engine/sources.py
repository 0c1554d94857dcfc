"""Where an engine gets adapter blobs it does not have (`AdapterSource`): the catalog over gRPC, or a blob
store in-process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import grpc

from mint.blobs import BlobStore
from mint.sdk.catalog import CatalogClient


class AdapterSource(Protocol):
    """Where blobs come from when they are not in the disk cache (the catalog, or a local blob store)."""

    def fetch(self, sha256: str) -> Iterable[bytes]: ...

    def local_path(self, sha256: str) -> Path | None:
        """A file on this machine already holding the verified blob, or None (then `fetch` it)."""
        ...


class CatalogBlobSource:
    """DownloadBlob from the catalog with a service key (sha256-verified again by the disk cache)."""

    def __init__(self, channel: grpc.Channel, api_key: str):
        self._client = CatalogClient(channel, api_key)

    def fetch(self, sha256: str) -> Iterator[bytes]:
        return self._client.download_blob(sha256)

    def local_path(self, sha256: str) -> Path | None:
        return None


class BlobStoreSource:
    """Reads the catalog's blob store directly: the embedded process's own, or an engine's view of it on the
    same host or a shared volume. A local store's files were verified when they were published, so the disk
    cache links them; bytes it must copy it verifies itself, so the store need not hash them as well.

    A blob the store does not hold (a replica not yet in sync, a misconfigured directory) comes from
    `fallback` when there is one: an engine then downloads it from the catalog as it would without a store.
    """

    def __init__(self, store: BlobStore, fallback: AdapterSource | None = None):
        self._store = store
        self._fallback = fallback

    def fetch(self, sha256: str) -> Iterator[bytes]:
        if self._fallback is not None and not self._store.exists(sha256):
            return iter(self._fallback.fetch(sha256))
        return self._store.read_chunks(sha256, verify=False)

    def local_path(self, sha256: str) -> Path | None:
        return self._store.local_path(sha256)
