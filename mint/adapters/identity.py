"""What makes two adapters the same adapter when serving: their bytes and the config they are packed with.

An engine packs an adapter's tensors with its rank, scale (lora_alpha, use_rslora) and target modules, so
the same blob published with two configs is two adapters: its packed copies (host tier, device slots), the
scheduler's placements, load queues, waves and load failures are all keyed by `adapter_key`. Only the
disk tier, which holds raw bytes, is keyed by the blob's sha256 alone.

It imports nothing heavy: the gateway, the engines and the scheduler all derive keys with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def adapter_key(sha256: str, rank: int, alpha: float, use_rslora: bool, target_modules: Iterable[str]) -> str:
    """`<sha256>:<16 hex digits of the packing config>`: the blob's hash first, so logs that show a key's
    first characters still show which blob it is. Defined for any field values (an absurd config still has a
    key, under which its failure is remembered)."""
    config = f"{int(rank)}|{float(alpha)!r}|{bool(use_rslora):d}|{','.join(sorted(set(target_modules)))}"
    return f"{sha256}:{hashlib.blake2b(config.encode(), digest_size=8).hexdigest()}"


def blob_of(key: str) -> str:
    """The sha256 of the blob an adapter key was made from."""
    return key.partition(":")[0]


def ref_key(adapter) -> str:
    """The key of a mint.v1.AdapterRef."""
    return adapter_key(adapter.sha256, adapter.rank, adapter.alpha, adapter.use_rslora, adapter.target_modules)
