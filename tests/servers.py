"""Real servers the fleet tests share, started once per test run on loopback: Debian's
`redis-server` (and, with the central ledger, PostgreSQL). Each can be stopped and started
again on the same port, for the tests of what Sluice does while one is gone."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from netns import free_port, wait_for_port


class RedisServer:
    """`redis-server` on a free loopback port, its append-only file in a temporary
    directory (so a restart keeps the counters, as a production Redis would)."""

    def __init__(self):
        self.binary = shutil.which("redis-server")
        assert self.binary, "redis-server is missing: `cargo xtask setup` installs Debian's redis-server"
        self.port = free_port("127.0.0.1")
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-redis-"))
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, timeout=20)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def cli(self, *args: str) -> str:
        """One command through redis-cli; its output."""
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                           text=True, timeout=10, check=True)
        return r.stdout.strip()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(predicate, timeout: float = 15, what: str = "the condition"):
    """Polls `predicate` until it is truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
