"""Revisions a trainer publishes are audited as the key that asked for them, not as the trainer's service
key: the trainer publishes on behalf of the caller of SaveWeightsForSampler (and creates the policy on
behalf of the session's creator), and so are a recipe's, run by `mint train` with a member's key. Over the
real embedded stack, with member keys."""

from __future__ import annotations

import pytest

from mint import auth
from mint.params import AdamParams
from mint.procs import embedded
from mint.sdk import CatalogClient, ServiceClient, next_token_datum
from services.embedded import TENANT, EmbeddedStack


@pytest.fixture(scope="module")
def stack(trainer_base, tmp_path_factory):
    stack = embedded(model_path=str(trainer_base), data_dir=str(tmp_path_factory.mktemp("stack")), address="127.0.0.1:0")
    yield stack
    stack.stop()


def member_key(stack: EmbeddedStack, name: str) -> str:
    admin = CatalogClient(ServiceClient(stack.address, stack.admin_key).channel, stack.admin_key)
    return admin.create_api_key(TENANT, name, "member")


def member(stack: EmbeddedStack, name: str) -> tuple[ServiceClient, str]:
    """A member key's client, and the key's id."""
    key = member_key(stack, name)
    return ServiceClient(stack.address, key), auth.parse_key(key)[0]


def actors(client: ServiceClient, policy: str) -> dict[tuple[str, int], str]:
    return {(e.action, e.revision_number): e.actor for e in client.catalog.audit_events(policy=policy)}


def test_a_revision_is_audited_as_the_key_that_published_it(stack):
    alice, alice_id = member(stack, "alice")
    bob, bob_id = member(stack, "bob")
    training = alice.create_lora_training_client(stack.base_model, "audited", rank=4)
    datum = next_token_datum([1, 2, 3], [4, 5])
    training.forward_backward([datum])
    training.optim_step(AdamParams(learning_rate=1e-2))
    assert training.save_weights_for_sampler("by-alice").revision_number == 1
    # Bob, of the same tenant, publishes from Alice's session: the audit names Bob.
    bobs_view = bob.create_lora_training_client(stack.base_model, "other", rank=4)
    bobs_view.session_id = training.session_id
    assert bobs_view.save_weights_for_sampler("by-bob").revision_number == 2

    assert alice.catalog.get_policy("audited").created_by == f"key:{alice_id}"
    assert alice.catalog.get_revision("audited@1").created_by == f"key:{alice_id}"
    assert alice.catalog.get_revision("audited@2").created_by == f"key:{bob_id}"
    events = actors(alice, "audited")
    assert events[("publish", 1)] == f"key:{alice_id}" and events[("publish", 2)] == f"key:{bob_id}", events
    assert not [actor for actor in events.values() if actor == "key:trainer"], events


def test_a_recipes_revisions_are_audited_as_the_key_that_ran_it(stack, mint_train):
    key = member_key(stack, "carol")
    carol, carol_id = ServiceClient(stack.address, key), auth.parse_key(key)[0]
    done = mint_train(stack.address, key, "sft", "--policy", "job", "--task", "echo", "--steps", "1", "--batch-size", "2", "--rank", "4")
    assert done.code == 0 and "-> mint://local/job@1" in done.printed, done.printed
    assert carol.catalog.get_policy("job").created_by == f"key:{carol_id}"
    assert carol.catalog.get_revision("job@1").created_by == f"key:{carol_id}"
    assert actors(carol, "job")[("publish", 1)] == f"key:{carol_id}"
