"""Why adapters could not be loaded: `LoadFailed` (a code and a reason about the adapter's bytes and config,
naming no address), and the `FailureCache` that remembers each for a while, so requests for an adapter that
just failed fail at once instead of loading it again; a later request, after the failure expires, tries
again.

Reasons name no address because one adapter can be published under many: each caller's error names its own
(`LoadFailed.error`).
"""

from __future__ import annotations

import time

from mint.errors import Code, MintError


class LoadFailed(Exception):
    def __init__(self, code: Code, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def error(self, address: str) -> MintError:
        """The failure as the error of a caller who asked for the adapter under `address`."""
        return MintError(self.code, f"adapter {address} cannot be loaded: {self.reason}")


class FailureCache:
    """Failures by adapter key, each remembered for `ttl_s`. Not thread-safe: the residency calls it under
    its lock."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._failed: dict[str, tuple[float, LoadFailed]] = {}

    def __contains__(self, key: str) -> bool:
        """A failure recorded for `key`, expired or not (an expired one still says its load ended)."""
        return key in self._failed

    def get(self, key: str) -> LoadFailed | None:
        """The failure of `key`'s last load while it is remembered, else None."""
        entry = self._failed.get(key)
        if entry is not None and time.monotonic() - entry[0] < self.ttl_s:
            return entry[1]
        return None

    def record(self, key: str, failure: LoadFailed) -> None:
        self._failed[key] = (time.monotonic(), failure)

    def forget(self, key: str) -> None:
        self._failed.pop(key, None)
