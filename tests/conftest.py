"""Fixtures of the end-to-end suite; the machinery behind them lives in netns.py.

- `privileged`: skips without root (fails under CI instead).
- `make_netns(role="ns")`: a fresh `Netns`, deleted at teardown.
- `topo`: a `Topology` (client and provider namespaces routed via the root netns).
- every test: `Proc`s it left running are stopped at teardown, and if the test failed
  their log tails are printed, which pytest shows with the failure.
"""

from __future__ import annotations

import contextlib

import pytest

from netns import Netns, Proc, Topology, require_privileges, unique_name

# Set on a test item when any of its phases failed, for fixtures to read at teardown.
_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture(autouse=True)
def _stop_procs(request):
    """Stops the `Proc`s this test started and left running."""
    before = list(Proc.running)
    yield
    failed = request.node.stash.get(_FAILED, False)
    for proc in [p for p in reversed(Proc.running) if p not in before]:
        code = proc.stop()
        if failed:
            print(f"--- {proc.log.name}: pid {proc.pid} exited with {code}; last lines ---")
            print(proc.tail())


@pytest.fixture
def privileged() -> None:
    require_privileges()


@pytest.fixture
def make_netns(privileged, request):
    """Factory: `make_netns(role="ns") -> Netns`, named after the test and the role."""
    with contextlib.ExitStack() as stack:

        def make(role: str = "ns") -> Netns:
            return stack.enter_context(Netns(unique_name(f"{request.node.nodeid}/{role}")))

        yield make


@pytest.fixture
def topo(privileged, request):
    with Topology(request.node.nodeid) as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_server():
    """One real `redis-server` for the whole run (tests isolate by key prefix)."""
    from servers import RedisServer

    server = RedisServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL for the whole run (tests isolate by node ids)."""
    from servers import PostgresServer

    server = PostgresServer()
    yield server
    server.close()
