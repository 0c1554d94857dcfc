"""A trainer on a tiny random base, and `mint train` run as a client process of its own."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from mint.models.presets import init_base
from services.trainer.config import TrainerConfig
from services.trainer.trainer import Trainer
from tests.conftest import assert_clean_logs


@pytest.fixture(scope="session")
def trainer_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("trainer") / "tiny"
    init_base(path, arch="llama", preset="tiny", seed=3)
    return path


@pytest.fixture
def make_trainer(trainer_base, tmp_path):
    trainers = []

    def make(**overrides) -> Trainer:
        settings = dict(model_path=str(trainer_base), state_dir=str(tmp_path / "state"), batch_window_s=0.2)
        settings.update(overrides)
        trainer = Trainer(TrainerConfig(**settings))
        trainers.append(trainer)
        return trainer

    yield make
    for trainer in trainers:
        trainer.close()


@dataclasses.dataclass(frozen=True, slots=True)
class Finished:
    code: int
    printed: str  # its stdout, the lines Rich wrapped to the terminal joined again


@pytest.fixture
def mint_train(tmp_path):
    """`mint_train(address, api_key, "sft", "--policy", ...)` runs `mint train` as a process against a running
    server; its stderr is a log, checked for errors when it exits."""
    runs = []

    def run(address: str, api_key: str, *args: str) -> Finished:
        log = tmp_path / f"mint-train-{len(runs)}.log"
        runs.append(log)
        env = {key: value for key, value in os.environ.items() if key not in ("MINT_ADDRESS", "MINT_API_KEY")}
        with open(log, "wb") as stderr:
            done = subprocess.run(
                [sys.executable, "-m", "mint.cli", "train", *args, "--address", address, "--api-key", api_key],
                stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, timeout=600,
            )
        assert_clean_logs([log])
        return Finished(done.returncode, " ".join(done.stdout.split()))

    return run
