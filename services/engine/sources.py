"""Where an engine gets adapter blobs it does not have: the catalog over gRPC, or a blob store in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from mint.sdk.catalog import CatalogClient
from services.catalog.blobs import BlobStore


class CatalogBlobSource:
    """DownloadBlob from the catalog with a service key (sha256-verified again by the disk cache)."""

    def __init__(self, channel: grpc.Channel, api_key: str):
        self._client = CatalogClient(channel, api_key)

    def fetch(self, sha256: str) -> Iterator[bytes]:
        return self._client.download_blob(sha256)

    def local_path(self, sha256: str) -> Path | None:
        return None


class BlobStoreSource:
    """Reads a blob store directly, for the embedded process that holds the catalog itself. A local store's
    files were verified when they were published, so the disk cache links them; bytes it must copy it
    verifies itself, so the store need not hash them as well."""

    def __init__(self, store: BlobStore):
        self._store = store

    def fetch(self, sha256: str) -> Iterator[bytes]:
        return self._store.read_chunks(sha256, verify=False)

    def local_path(self, sha256: str) -> Path | None:
        return self._store.local_path(sha256)
