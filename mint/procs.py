"""Start MinT services: as child processes, learning the port each bound (they bind port 0 and print
`mint.server.READY_LINE`), for multi-process tests, benchmarks and `mint serve`; or all of them in this
process (`embedded`). `mint/` is the ground floor and imports no service module: services are loaded by
module name."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mint.errors import Code, MintError


def load_service(module: str):
    """A module of `services/` by name, e.g. "embedded" or "gateway.main"."""
    return importlib.import_module(f"services.{module}")


def embedded(**config):
    """The embedded stack (services/embedded.py: catalog, scheduler, engine, trainer and the public API in
    this process), started; `config` holds EmbeddedConfig's fields. Call `.stop()` when done."""
    module = load_service("embedded")
    return module.EmbeddedStack(module.EmbeddedConfig(**config)).start()


_READY = re.compile(r"mint (\S+) listening on port (\d+)(?: \((\w+)\))?")


class ServiceProcess:
    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, *, timeout_s: float = 120.0, log_path: str | None = None):
        self.args = list(args)
        self._log_path = log_path
        self._log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *self.args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=self._log or subprocess.DEVNULL,
            text=True,
        )
        self.security = "plaintext"  # what its port serves, as its ready line says: plaintext, TLS or mTLS
        self.port = self._await_ready(timeout_s)
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _await_ready(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise MintError(Code.UNAVAILABLE, f"{' '.join(self.args)} exited with {self.proc.returncode} before it was ready{self._log_tail()}")
                continue
            match = _READY.search(line)
            if match:
                self.security = match.group(3) or self.security
                return int(match.group(2))
        self.proc.kill()
        raise MintError(Code.DEADLINE_EXCEEDED, f"{' '.join(self.args)} was not ready within {timeout_s}s")

    def _log_tail(self, lines: int = 20) -> str:
        if not self._log_path:
            return ""
        self._log.flush()
        tail = Path(self._log_path).read_text(errors="replace").splitlines()[-lines:]
        return f"; the end of {self._log_path}:\n" + "\n".join(tail) if tail else ""

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def kill(self) -> None:
        """SIGKILL: the process dies without cleanup, as in a crash."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
