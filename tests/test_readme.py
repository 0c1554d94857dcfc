"""README.md's code blocks, run as written, in order, in a fresh directory: the shell blocks' commands for
real (`mint serve` as a child process), the Python blocks with exec against that server.

Three things differ from a reader's run, all named here: the server listens on free ports instead of
README_ADDRESS and README_HTTP_ADDRESS (which the blocks' text names, and which this test replaces), `mint train` runs TRAIN_STEPS steps, and `make demo` runs
`mint demo` on the tiny random base for TRAIN_STEPS steps (the SmolLM2 tour is the same code, slower).
The other `make` targets are checked elsewhere (MAKE_CHECKED_ELSEWHERE). A command this test does not know
fails it, so every block stays checked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from mint.procs import ServiceProcess
from mint.sdk import ServiceClient
from services.local_fleet import free_port
from tests.conftest import assert_clean_logs

ROOT = Path(__file__).resolve().parents[1]
README_ADDRESS = "127.0.0.1:50050"  # `mint serve`'s default address, as the README's commands spell it
README_HTTP_ADDRESS = "127.0.0.1:8080"  # its default HTTP (OpenAI API) address
TRAIN_STEPS = "2"
MAKE_CHECKED_ELSEWHERE = {
    "test": "this run itself",
    "lint": ".ci/run runs ruff",
    "protos": "tests/test_protos.py fails when mint/proto/ is stale",
    "schema": "tests/catalog/test_migrations.py compares migrations/schema.sql",
    "bench-quick": "the benchmarks, run by hand",
}
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block of README.md, in order."""
    return _BLOCK.findall((ROOT / "README.md").read_text())


def test_readme_blocks_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("MINT_ADDRESS", "MINT_API_KEY"):
        env.pop(name, None)
        monkeypatch.delenv(name, raising=False)
    servers: list[ServiceProcess] = []
    http_address = f"127.0.0.1:{free_port()}"
    ran: list[str] = []
    try:
        for number, (language, text) in enumerate(readme_blocks(), 1):
            if language == "python":
                for name, value in _mint_variables(env).items():
                    monkeypatch.setenv(name, value)
                text = text.replace(README_HTTP_ADDRESS, http_address)
                exec(compile(text, f"README.md python block {number}", "exec"), {"__name__": "readme"})
                ran.append("python")
                continue
            if language != "sh":
                continue
            for line in text.splitlines():
                args = shlex.split(line, comments=True)
                if not args or (args[0] == "make" and args[1:] and args[1] in MAKE_CHECKED_ELSEWHERE):
                    continue
                ran.append(args[0] if args[0] == "export" else " ".join(args[:2]))
                if args == ["make", "demo"]:
                    _mint(["demo", "--tiny", "--steps", TRAIN_STEPS, "--data-dir", str(tmp_path / "demo")], env, tmp_path)
                elif args[0] == "export":
                    env = _export(line, env, servers)
                elif args[:2] == ["mint", "serve"]:
                    servers.append(
                        ServiceProcess(
                            ["-m", "mint.cli", *args[1:], "--address", "127.0.0.1:0", "--http-address", http_address],
                            env,
                            log_path=str(tmp_path / "serve.log"),
                        )
                    )
                elif args[:2] == ["mint", "base"]:
                    _mint(args[1:], env, tmp_path)
                elif args[:2] == ["mint", "train"]:
                    _mint([*args[1:], "--steps", TRAIN_STEPS], env, tmp_path)
                else:
                    raise AssertionError(
                        f"README.md block {number} runs {line!r}, which this test does not know"
                    )

        assert {"make demo", "mint base", "mint serve", "export", "python", "mint train"} <= set(ran), ran
        # What the Python block's comments say it did: two revisions, and prod rolled back to the first.
        variables = _mint_variables(env)
        catalog = ServiceClient(variables["MINT_ADDRESS"], variables["MINT_API_KEY"]).catalog
        assert catalog.get_policy("support-bot").full_name == "local/support-bot"
        assert [r.number for r in catalog.list_revisions("local/support-bot")] == [1, 2]
        aliases = {a.name: a.revision_number for a in catalog.aliases("support-bot")}
        assert aliases["prod"] == 1, aliases
    finally:
        for server in servers:
            server.stop()
    assert_clean_logs(tmp_path.glob("*.log"))


def _mint_variables(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in ("MINT_ADDRESS", "MINT_API_KEY")}


def _export(line: str, env: dict[str, str], servers: list[ServiceProcess]) -> dict[str, str]:
    """The environment after bash runs `line`, with README_ADDRESS standing for the running server's."""
    assert servers, f"{line!r} comes before `mint serve` in README.md"
    script = line.replace(README_ADDRESS, servers[-1].address) + "\nenv -0"
    out = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _mint(args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / f"mint-{args[0]}-{len(list(tmp_path.glob('*.log')))}.log"
    with log.open("w") as stderr:
        result = subprocess.run(
            [sys.executable, "-m", "mint.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, (
        f"mint {' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{log.read_text()}"
    )
