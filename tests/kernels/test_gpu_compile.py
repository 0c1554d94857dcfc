"""The Triton kernels lower to GPU code, checked without a GPU in a process without the interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_for_nvidia_gpus_in_bf16(arch, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    result = subprocess.run(
        [sys.executable, "-m", "tests.kernels.compile_for_gpu", "--arch", str(arch), "--dtypes", "bf16"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled 5 kernel variants" in result.stdout
