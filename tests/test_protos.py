"""The committed generated code in mint/proto/ matches protos/mint/v1/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_protos_are_fresh():
    result = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_in_the_contracts():
    from mint.proto import catalog_pb2, engine_pb2, gateway_pb2, trainer_pb2

    services = {
        name
        for module in (catalog_pb2, engine_pb2, gateway_pb2, trainer_pb2)
        for name in module.DESCRIPTOR.services_by_name
    }
    assert services == {"CatalogService", "EngineService", "SamplingService", "TrainerService"}
