"""Start MinT services as child processes and learn the port each bound (they bind port 0 and print
`mint.server.READY_LINE`). Used by multi-process tests, benchmarks and `mint serve`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from mint.errors import Code, MintError

_READY = re.compile(r"mint (\S+) listening on port (\d+)")


class ServiceProcess:
    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, *, timeout_s: float = 120.0, log_path: str | None = None):
        self.args = list(args)
        self._log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *self.args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=self._log or subprocess.DEVNULL,
            text=True,
        )
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
                    raise MintError(Code.UNAVAILABLE, f"{' '.join(self.args)} exited with {self.proc.returncode} before it was ready")
                continue
            match = _READY.search(line)
            if match:
                return int(match.group(2))
        self.proc.kill()
        raise MintError(Code.DEADLINE_EXCEEDED, f"{' '.join(self.args)} was not ready within {timeout_s}s")

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
