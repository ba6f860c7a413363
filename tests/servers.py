"""Real servers the fleet tests share, started once per test run on loopback: Debian's
`redis-server` (and, with the central ledger, PostgreSQL). Each can be stopped and started
again on the same port, for the tests of what Sluice does while one is gone."""

from __future__ import annotations

import contextlib
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


class PostgresServer:
    """A PostgreSQL cluster made by `initdb` in a temporary directory (trust auth, loopback
    only), run as the `postgres` system user (the server refuses root), on a free port,
    with a `sluice` database."""

    def __init__(self):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert bins, "PostgreSQL is missing: `cargo xtask setup` installs Debian's postgresql"
        self.bin = bins[-1].parent
        self.port = free_port("127.0.0.1")
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        self.data = self.dir / "data"
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                           "-U", "postgres", "--no-sync"])
        self.start()
        self._as_postgres([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                           "-U", "postgres", "sluice"])

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/sluice"

    def _as_postgres(self, argv: list[str]) -> str:
        r = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                           text=True, timeout=60, cwd=self.dir)
        assert r.returncode == 0, f"{argv[0]} failed: {r.stdout}\n{r.stderr}"
        return r.stdout

    def start(self):
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                           str(self.dir / "server.log"), "-w", "-o",
                           f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off", "start"])
        wait_for_port("127.0.0.1", self.port, timeout=30)

    def stop(self):
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def sql(self, query: str, db: str = "sluice") -> str:
        """One statement through psql; its unaligned output."""
        return self._as_postgres([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                                  "-U", "postgres", "-d", db, "-At", "-c", query]).strip()

    def database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def close(self):
        with contextlib.suppress(AssertionError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
