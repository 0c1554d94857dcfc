"""The engine: one resident base model serving many LoRA adapters (DESIGN.md). Modules by what they own:

- engine.py: the step loop and the requests' way in; planner.py: which tokens join each step;
  sequences.py: requests, their sequences and events; sampling.py: token sampling; attention.py and
  kv_cache.py: the paged KV cache and attention over it; lora.py: the LoRA layers and their slot tensors.
- Adapters, vLLM's three concerns: the adapter as data (mint/adapters: spec, identity, packing), the slot
  manager (slots.py) and the policy every tier uses (eviction.py); the host and disk tiers (tiers.py);
  residency.py decides what moves where, loader.py loads one, load_pool.py runs loads, failures.py
  remembers why one failed; sources.py: where blobs come from.
- servicer.py (gRPC), fleet.py (the fleet scheduler's view), config.py and main.py (running one).
"""
