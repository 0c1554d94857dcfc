"""Training in a fleet: the gateway forwards training calls to a trainer process, the trainer publishes to
the catalog, and an engine serves the new revision by address: the adapter-only handoff across processes.
The engine reads the catalog's blob directory, as one on the catalog's host does (the failover tests'
engines download blobs from the catalog)."""

from __future__ import annotations

import os

from mint import auth
from mint.blobs import LocalBlobStore
from mint.params import AdamParams, SamplingParams
from mint.sdk import next_token_datum
from services.local_fleet import LocalFleet
from tests.fleet.conftest import HEARTBEAT_S


def test_train_publish_and_sample_across_processes(tmp_path, pg_url, fleet_base):
    fleet = LocalFleet(tmp_path, pg_url, fleet_base, engines=1, heartbeat_s=HEARTBEAT_S, trainer=True, shared_blobs=True)
    try:
        fleet.wait_for_engines(1)
        service = fleet.client
        tokenizer = service.get_tokenizer()
        trainer = service.create_lora_training_client("tiny", "fleet-bot", rank=4)
        datum = next_token_datum(tokenizer.encode("ping"), tokenizer.encode(" pong"))
        losses = []
        for _ in range(5):
            losses.append(trainer.forward_backward([datum]).metrics["loss"])
            trainer.optim_step(AdamParams(learning_rate=1e-2))
        assert losses[-1] < losses[0]
        sampler = trainer.save_weights_and_get_sampling_client("step-5")
        assert sampler.model == "acme/fleet-bot@1"
        answer = sampler.sample(tokenizer.encode("ping"), 1, SamplingParams(max_tokens=4, temperature=0.0, logprobs=True))
        # The engine's logprobs of what it sampled equal the trainer's: the same adapter, handed off by address.
        scored = trainer.forward([next_token_datum(tokenizer.encode("ping"), answer.sequences[0].tokens)])
        trained = scored.loss_fn_outputs[0]["logprobs"][-len(answer.sequences[0].tokens):]
        assert max(abs(a - b) for a, b in zip(trained, answer.sequences[0].logprobs, strict=True)) < 1e-4
        revision = service.catalog.get_revision("fleet-bot@1")
        # Published by the trainer's service key on behalf of the member: the audit names the member.
        asked = f"key:{auth.parse_key(fleet.member_key)[0]}"
        assert revision.source.endswith("/step-5") and revision.created_by == asked
        assert {e.actor for e in service.catalog.audit_events(policy="fleet-bot")} == {asked}
        # The engine's cached copy is the catalog's file, linked: nothing was downloaded or copied.
        cached = tmp_path / "engine-0" / "adapters" / f"{revision.sha256}.safetensors"
        stored = LocalBlobStore(fleet.blob_dir, create=False).path(revision.sha256)
        assert os.stat(cached).st_ino == os.stat(stored).st_ino
    finally:
        fleet.stop()
