"""Recipes end to end as SDK clients of a real server: SFT learns, GRPO raises reward, a killed trainer
resumes, and `mint train sft|grpo` runs them from a process of its own against a running server."""

from __future__ import annotations

import pytest

from mint import auth
from mint.models.tokenizer import Tokenizer
from mint.procs import ServiceProcess, embedded
from mint.recipes.grpo import GRPOConfig, run_grpo
from mint.recipes.sft import SFTConfig, run_sft
from mint.recipes.tasks import REWARDS, SFT_TASKS
from mint.sdk import CatalogClient, ServiceClient
from mint.server import channel


@pytest.fixture
def stack(trainer_base, tmp_path):
    stack = embedded(model_path=str(trainer_base), data_dir=str(tmp_path / "stack"), address="127.0.0.1:0")
    service = ServiceClient(stack.address, stack.admin_key)
    yield stack, service
    service.close()
    stack.stop()


@pytest.mark.parametrize(
    "completion, expected",
    [("19", 1.0), ("7 + 12 = 19", 1.0), ("The answer is 19.", 1.0), ("19? No, 18", 0.0), ("nineteen", 0.0), ("-19", 0.0)],
)
def test_exact_number_reads_the_final_number(completion, expected):
    assert REWARDS["exact_number"]("What is 7 + 12?", completion, "19") == expected


def test_sft_on_a_builtin_task_halves_the_loss_within_200_steps(stack):
    _, service = stack
    client = service.create_lora_training_client(stack[0].base_model, "echo", rank=8, seed=0)
    reports = run_sft(client, service.get_tokenizer(), SFT_TASKS["echo"], SFTConfig(steps=200, batch_size=4, learning_rate=3e-3))
    first, best = reports[0].metrics["loss"], min(r.metrics["loss"] for r in reports)
    assert best <= 0.5 * first, (first, best)
    assert reports[-1].published.startswith("mint://local/echo@")


def test_grpo_on_a_verifiable_task_raises_mean_reward(stack):
    _, service = stack
    client = service.create_lora_training_client(stack[0].base_model, "brief", rank=8, seed=0)
    config = GRPOConfig(task="brevity", steps=12, prompts_per_step=2, group_size=16, max_tokens=8, learning_rate=2e-2, kl_coef=0.01)
    reports = run_grpo(service, client, service.get_tokenizer(), config)
    rewards = [r.metrics["reward_mean"] for r in reports]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.05, rewards
    assert all(r.metrics["kl"] >= 0 for r in reports) and reports[-1].metrics["kl"] > 0
    # Every step sampled from the revision published by the step before it: the adapter-only handoff.
    assert service.catalog.get_policy("brief").head_number == config.steps + 1


def test_a_killed_trainer_resumes_from_its_state_and_publishes_nothing_twice(trainer_base, tmp_path, pg_url):
    admin_key = auth.generate_key().key
    catalog = ServiceProcess(
        ["-m", "services.catalog"],
        {"MINT_DATABASE_URL": pg_url, "MINT_BLOB_DIR": str(tmp_path / "blobs"), "MINT_ADMIN_KEY": admin_key, "MINT_CATALOG_ADDRESS": "127.0.0.1:0"},
    )
    admin = CatalogClient(channel(catalog.address), admin_key)
    admin.create_tenant("acme")
    member = admin.create_api_key("acme", "researcher")
    service_key = admin.create_api_key("admin", "trainer", "service")
    admin.register_base_dir(trainer_base, "tiny")
    env = {
        "MINT_MODEL_PATH": str(trainer_base), "MINT_BASE_MODEL": "tiny", "MINT_CATALOG_URL": catalog.address,
        "MINT_SERVICE_KEY": service_key, "MINT_TRAINER_ADDRESS": "127.0.0.1:0", "MINT_TRAINER_STATE_DIR": str(tmp_path / "state"),
    }
    config = SFTConfig(steps=15, batch_size=2, learning_rate=1e-3, publish_every=5)
    trainer = ServiceProcess(["-m", "services.trainer"], env)
    try:
        service = ServiceClient(trainer.address, member)
        client = service.create_lora_training_client("tiny", "resumable", rank=4)
        tokenizer = Tokenizer.from_dir(trainer_base)  # a trainer alone, no engine: the client reads the base's own files
        saved = {}

        def checkpoint(report) -> None:
            if report.step == 5:
                saved["path"] = client.save_state("step-5")
            if report.step == 10:  # published step 10, then died before saving its state
                trainer.kill()
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_sft(client, tokenizer, SFT_TASKS["echo"], config, checkpoint)
        service.close()

        trainer = ServiceProcess(["-m", "services.trainer"], env)
        service = ServiceClient(trainer.address, member)
        client = service.create_lora_training_client("tiny", "resumable", rank=4)
        session = client.load_state(saved["path"], with_optimizer=True)
        assert session.step == 5
        run_sft(client, tokenizer, SFT_TASKS["echo"], config, start_step=session.step)
        member_catalog = CatalogClient(channel(catalog.address), member)
        revisions = list(member_catalog.list_revisions("resumable"))
        assert [r.number for r in revisions] == [1, 2, 3]
        assert [r.source.rsplit("/", 1)[-1] for r in revisions] == ["sft-step-5", "sft-step-10", "sft-step-15"]
        # The trainer published with its service key on behalf of the member: the audit names the member.
        asked = f"key:{auth.parse_key(member)[0]}"
        assert {r.created_by for r in revisions} == {asked}
        assert {e.actor for e in member_catalog.audit_events(policy="resumable")} == {asked}
        service.close()
    finally:
        trainer.stop()
        catalog.stop()


def test_mint_train_sft_runs_the_recipe_as_a_client_and_reports_every_step(stack, mint_train):
    server, service = stack
    done = mint_train(
        server.address, server.admin_key, "sft", "--policy", "job", "--task", "echo", "--steps", "4", "--batch-size", "2", "--rank", "4",
        "--publish-every", "2",
    )
    assert done.code == 0, done.printed
    for step in range(1, 5):
        assert f"step {step} loss " in done.printed, done.printed
    assert "-> mint://local/job@1" in done.printed and "-> mint://local/job@2" in done.printed, done.printed
    assert [r.source.rsplit("/", 1)[-1] for r in service.catalog.list_revisions("job")] == ["sft-step-2", "sft-step-4"]


def test_mint_train_grpo_runs_the_recipe_as_a_client_and_publishes_every_step(stack, mint_train):
    server, service = stack
    done = mint_train(
        server.address, server.admin_key, "grpo", "--policy", "rl-job", "--task", "brevity", "--steps", "2", "--prompts", "2",
        "--group-size", "2", "--max-tokens", "4", "--rank", "4",
    )
    assert done.code == 0, done.printed
    assert "step 1 reward_mean " in done.printed and "step 2 reward_mean " in done.printed, done.printed
    # The revision it samples from first, then one a step: each step's rollouts come from the one before.
    sources = [r.source.rsplit("/", 1)[-1] for r in service.catalog.list_revisions("rl-job")]
    assert sources == ["grpo-step-0", "grpo-step-1", "grpo-step-2"], sources
