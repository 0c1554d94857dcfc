"""A trainer on a tiny random base."""

from __future__ import annotations

import pytest

from mint.models.presets import init_base
from services.trainer.config import TrainerConfig
from services.trainer.trainer import Trainer


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
