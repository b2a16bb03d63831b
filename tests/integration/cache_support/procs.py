"""Start and drive :mod:`tests.integration.cache_support.worker` processes from tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


class Worker:
    """One worker process (a real, separate OS process with its own L1)."""

    def __init__(self, redis_url: str, l1_timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.cache_support.worker", redis_url,
             str(l1_timeout)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self._read()
        assert "ready" in ready, ready
        self.pid = ready["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait(5)}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, op: str, **kw: Any) -> None:
        """Send a command without waiting for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        """The answer to the oldest command sent."""
        return self._read()

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        self.send(op, **kw)
        return self._read()

    def close(self) -> None:
        """Stop the process (even when it hangs)."""
        try:
            if self.proc.poll() is None:
                self.call("quit")
                self.proc.wait(5)
        except Exception:  # noqa: BLE001 - make sure it dies
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
