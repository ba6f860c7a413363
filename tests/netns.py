"""Harness for privileged end-to-end tests: network namespaces, a routed test topology and
background processes, all removed again when the test ends, whether it passed or not.

Layout of a `Topology` (n is a subnet index, 0-255, free on this machine; hex in IPv6)::

    client netns            root netns (the proxy runs here)          provider netns
    eth0 198.18.n.2/30 ──── <client>  198.18.n.1/30
         2001:2:0:n::2/64             2001:2:0:n::1/64
                                      <provider> 198.19.n.1/30 ──── eth0 198.19.n.2/30
                                                 2001:2:0:1nn::1/64      2001:2:0:1nn::2/64

All addresses come from the benchmarking ranges (198.18.0.0/15, 2001:2::/48), so nothing a
test sends can reach a real host. The root-side veth carries its namespace's name.

This module needs root and iproute2; fixtures in conftest.py wrap it for tests. It is not a
sandbox: the namespaces share the root's filesystem, processes and cgroups.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

# Interface names are at most 15 bytes (IFNAMSIZ - 1); namespace names double as the names
# of their root-side veths, so they must fit too.
IFNAMSIZ_MAX = 15

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Serialises subnet choice across concurrent tests and sessions on this machine.
_SUBNET_LOCK = Path("/run/sluice-netns.lock")


class CommandFailed(subprocess.CalledProcessError):
    """A `CalledProcessError` whose message carries the command's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


def run(argv: list[str], env=None, timeout: float = 30, check: bool = True):
    """Runs `argv` to completion with text output captured; raises `CommandFailed` on a
    non-zero exit when `check` is set."""
    # Checked below, to raise with stderr in the message.
    proc = subprocess.run(
        argv, env=env, timeout=timeout, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def require_privileges() -> None:
    """Skips the calling test without root or `ip`, except under CI (env `CI` set), where it
    fails instead: CI must never pass by skipping."""
    if os.geteuid() != 0:
        reason = "needs root to create network namespaces"
    elif shutil.which("ip") is None:
        reason = "needs `ip` from iproute2 (cargo xtask setup installs it)"
    else:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this privileged test may not skip", pytrace=False)
    pytest.skip(reason)


def unique_name(seed: str) -> str:
    """`sl` + 4 hex digits hashed from `seed` + our pid, free as both a namespace name and a
    root-netns interface name; at most 13 characters."""
    for attempt in itertools.count():  # the next attempt when a name is taken
        digest = hashlib.sha256(f"{seed}#{attempt}".encode()).hexdigest()[:4]
        name = f"sl{digest}{os.getpid()}"
        assert len(name) <= IFNAMSIZ_MAX, name
        if not Path("/run/netns", name).exists() and not Path("/sys/class/net", name).exists():
            return name


# === impl Netns ===


class Netns:
    """A network namespace with `lo` up, deleted by `close()` (or on leaving a `with` block)
    together with its /etc/netns/<name>/ overlay.

    Commands run through `ip netns exec`, which mounts each file of that overlay over its
    namesake in /etc. The overlay starts with a resolv.conf naming 127.0.0.1, where nothing
    listens: DNS lookups inside fail at once instead of timing out, and no query can be
    routed off this machine once forwarding is on.
    """

    def __init__(self, name: str):
        self.name = name
        self.etc = Path("/etc/netns", name)
        run(["ip", "netns", "add", name])
        try:
            self._write_etc("resolv.conf", ["nameserver 127.0.0.1"])
            self.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def close(self) -> None:
        """Deletes the namespace (and so every interface in it) and its /etc overlay."""
        shutil.rmtree(self.etc, ignore_errors=True)
        run(["ip", "netns", "delete", self.name], check=False)

    def argv(self, argv: list[str]) -> list[str]:
        """`argv` prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], env=None, timeout: float = 30, check: bool = True):
        """Runs `argv` inside the namespace; see the module-level `run`."""
        return run(self.argv(argv), env=env, timeout=timeout, check=check)

    def popen(self, argv: list[str], env=None, **kw) -> subprocess.Popen:
        """Starts `argv` inside the namespace; keyword arguments go to `subprocess.Popen`."""
        return subprocess.Popen(self.argv(argv), env=env, **kw)

    def hosts(self, mapping: dict[str, str]) -> None:
        """Gives the namespace its own /etc/hosts mapping each name to an address, plus the
        localhost lines, for every command started afterwards; the root's is untouched."""
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{addr} {name}" for name, addr in mapping.items()]
        self._write_etc("hosts", lines)

    def _write_etc(self, file: str, lines: list[str]) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / file).write_text("\n".join(lines) + "\n")


# === impl Topology ===


class Topology:
    """Two namespaces, `client` and `provider`, each joined to the root netns by a veth pair
    and routed through it (see the module docs for addresses). Traffic between them crosses
    the root netns only once `enable_forwarding()` is called.

    Attributes: `client`, `provider` (Netns); per family, the root-side address facing each
    namespace (`client_gw`, `provider_gw`, `client_gw6`, `provider_gw6`) and the
    namespace's own address (`client_addr`, `provider_addr`, `client_addr6`,
    `provider_addr6`), all as strings without prefix length.
    """

    def __init__(self, seed: str):
        self._cleanup = contextlib.ExitStack()
        try:
            self.client = self._cleanup.enter_context(Netns(unique_name(f"{seed}/client")))
            self.provider = self._cleanup.enter_context(Netns(unique_name(f"{seed}/provider")))
            with _locked(_SUBNET_LOCK):
                client4, client6, provider4, provider6 = _subnets(_free_subnet_index(seed))
                self.client_gw, self.client_addr, self.client_gw6, self.client_addr6 = self._link(
                    self.client, client4, client6
                )
                self.provider_gw, self.provider_addr, self.provider_gw6, self.provider_addr6 = (
                    self._link(self.provider, provider4, provider6)
                )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Restores forwarding and removes the veths and namespaces; safe to call twice."""
        self._cleanup.close()

    def enable_forwarding(self) -> None:
        """Turns IPv4 forwarding on in the root netns until `close()`, which restores the
        previous value. The setting is machine-wide: tests running concurrently see it too."""
        self.set_forwarding(True)

    def set_forwarding(self, on: bool) -> None:
        """Sets IPv4 forwarding in the root netns until `close()`, which restores the
        previous value. A Kubernetes node (and any host after dockerd starts) has it on, a
        fresh VM off: tests that depend on either say which."""
        sysctl = Path("/proc/sys/net/ipv4/ip_forward")
        previous = sysctl.read_text()
        self._cleanup.callback(sysctl.write_text, previous)
        sysctl.write_text("1\n" if on else "0\n")

    def _link(self, ns: Netns, net4: Network, net6: Network) -> tuple[str, str, str, str]:
        """Joins `ns` to the root netns by a veth (root side named like `ns`, `eth0` inside):
        the root side takes the first host of each network, `ns` the second and a default
        route via the first. Returns (gw, addr, gw6, addr6)."""
        gw4, addr4 = _first_two_hosts(net4)
        gw6, addr6 = _first_two_hosts(net6)
        run(
            ["ip", "link", "add", ns.name, "type", "veth", "peer", "name", "eth0", "netns", ns.name]
        )
        # Deleting one end of a veth deletes both, at once (deleting a netns does it later).
        self._cleanup.callback(run, ["ip", "link", "delete", ns.name], check=False)
        inside = ["ip", "-n", ns.name]
        for ip, dev, a4, a6 in ((["ip"], ns.name, gw4, gw6), (inside, "eth0", addr4, addr6)):
            run([*ip, "addr", "add", f"{a4}/{net4.prefixlen}", "dev", dev])
            # nodad: usable at once instead of after duplicate address detection.
            run([*ip, "-6", "addr", "add", f"{a6}/{net6.prefixlen}", "dev", dev, "nodad"])
            run([*ip, "link", "set", dev, "up"])
        run([*inside, "route", "add", "default", "via", gw4])
        run([*inside, "-6", "route", "add", "default", "via", gw6])
        return gw4, addr4, gw6, addr6


def _subnets(n: int) -> tuple[Network, Network, Network, Network]:
    """The client's IPv4 and IPv6 networks, then the provider's, for subnet index n."""
    return tuple(
        ipaddress.ip_network(net)
        for net in (
            f"198.18.{n}.0/30",
            f"2001:2:0:{n:x}::/64",
            f"198.19.{n}.0/30",
            f"2001:2:0:{0x100 + n:x}::/64",
        )
    )


def _first_two_hosts(net: Network) -> tuple[str, str]:
    hosts = net.hosts()
    return str(next(hosts)), str(next(hosts))


def _free_subnet_index(seed: str) -> int:
    """The first index n, probing from one derived from `seed`, whose subnets overlap no
    address in the root netns. Hold `_SUBNET_LOCK` from this call until the addresses are set."""
    taken = []
    for line in run(["ip", "-o", "addr", "show"]).stdout.splitlines():
        fields = line.split()
        if fields[2] in ("inet", "inet6"):
            taken.append(ipaddress.ip_interface(fields[3]).network)
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    for i in range(256):
        n = (start + i) % 256
        if not any(w.overlaps(t) for w in _subnets(n) for t in taken if w.version == t.version):
            return n
    raise RuntimeError("no free subnet index for a Topology: too many alive on this machine?")


@contextlib.contextmanager
def _locked(path: Path):
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# === helpers ===

# Both helpers below run this little program, so they work the same in the root netns and
# inside any namespace (Python 3.11 has no os.setns).
_SOCKET_PROBE = """
import socket, sys, time
mode, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
if mode == "bind":
    with socket.socket(family) as s:
        s.bind((host, 0))
        print(s.getsockname()[1])
    sys.exit(0)
deadline = time.monotonic() + timeout
while True:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        if time.monotonic() >= deadline:
            sys.exit(1)
        time.sleep(0.05)
"""


def _probe(netns: Netns | None, mode: str, host: str, port: int, timeout: float, *, check: bool):
    argv = [sys.executable, "-c", _SOCKET_PROBE, mode, host, str(port), str(timeout)]
    # The probe bounds itself; the margin covers interpreter start-up.
    return run(netns.argv(argv) if netns else argv, timeout=timeout + 10, check=check)


def free_port(host: str = "127.0.0.1", netns: Netns | None = None) -> int:
    """A TCP port free on `host` right now, in the root netns or in `netns`. Prefer binding
    port 0 in the server itself; use this only for programs that must be told a port."""
    return int(_probe(netns, "bind", host, 0, 0, check=True).stdout)


def wait_for_port(host: str, port: int, timeout: float = 10, netns: Netns | None = None) -> None:
    """Waits until a TCP connect to host:port succeeds, from the root netns or from `netns`;
    raises `TimeoutError` after `timeout` seconds."""
    if _probe(netns, "connect", host, port, timeout, check=False).returncode != 0:
        where = f" in netns {netns.name}" if netns else ""
        raise TimeoutError(f"nothing accepted connections on {host}:{port}{where} in {timeout}s")


def venv_python() -> str:
    """The repo venv's Python: the interpreter running pytest (`cargo xtask test` uses it)."""
    return sys.executable


def sluice_bin() -> Path:
    """The `sluice` binary under test, from env `SLUICE_BIN`; fails the test clearly when it
    is unset or not built."""
    value = os.environ.get("SLUICE_BIN")
    if not value:
        pytest.fail("SLUICE_BIN is not set: run the tests with `cargo xtask test`", pytrace=False)
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"SLUICE_BIN={path} does not exist: run `cargo xtask build`", pytrace=False)
    return path


def mock_bin() -> Path:
    """The mock provider, `sluice-mock`, built beside `sluice` by the same workspace build."""
    path = sluice_bin().with_name("sluice-mock")
    if not path.is_file():
        pytest.fail(f"{path} does not exist: run `cargo xtask build`", pytrace=False)
    return path


# === impl Proc ===


class Proc:
    """A background process with stdout and stderr appended to one log file, in its own
    process group so that `stop()` also ends its children.

    Every Proc not yet stopped is listed in `Proc.running`; the suite's autouse fixture
    stops those left at the end of each test and shows their log tails if it failed.
    """

    running: ClassVar[list[Proc]] = []

    def __init__(self, argv: list, log: Path, env=None, netns: Netns | None = None):
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                netns.argv(argv) if netns else argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        Proc.running.append(self)

    def __repr__(self) -> str:
        return f"Proc(pid={self.pid}, log={str(self.log)!r})"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs (negative: killed by that signal)."""
        return self.popen.poll()

    def stop(self, timeout: float = 5) -> int:
        """SIGTERM to the process group, SIGKILL after `timeout` seconds; returns the exit
        code."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ValueError):
            Proc.running.remove(self)
        return self.popen.wait(timeout)

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# Where the cgroup v2 hierarchy is mounted (None without one).
UNIFIED = next(
    (Path(line.split(" - ")[0].split()[4]) for line in Path("/proc/self/mountinfo").read_text().splitlines()
     if " - cgroup2 " in line),
    None,
)


class Cgroup:
    """A child cgroup of the unified hierarchy, removed (after its processes) at close."""

    def __init__(self, name: str):
        assert UNIFIED, "no cgroup2 mount on this machine"
        self.path = UNIFIED / name
        self.path.mkdir()

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run as a process that first joins this cgroup."""
        return ["sh", "-c", f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"', "sh", *argv]

    def close(self):
        for _ in range(50):
            procs = (self.path / "cgroup.procs").read_text().split()
            for pid in procs:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"cannot remove {self.path}")


# === impl Vpc ===


class Vpc:
    """A small VPC of three namespaces routed through the middle one, with no address in
    the root netns (so fixed addresses are safe beside other tests)::

        client  eth0 CLIENT/24, CLIENT6/64 ── default route via the appliance
        appliance  eth0 APPLIANCE_C (client side) ── eth1 APPLIANCE_P (provider side)
        provider  eth0 PROVIDER, OTHER (a host that is not a provider), MOVED /24, PROVIDER6/64;
                  no route back to the client subnet: only masqueraded traffic is answered

    All addresses come from the benchmarking ranges (198.18.0.0/15, 2001:2::/48).
    """

    CLIENT, APPLIANCE_C, CLIENT_NET = "198.18.77.10", "198.18.77.1", "198.18.77.0/24"
    CLIENT6, APPLIANCE_C6, CLIENT_NET6 = "2001:2:77::10", "2001:2:77::1", "2001:2:77::/64"
    APPLIANCE_P, PROVIDER, OTHER = "198.19.77.1", "198.19.77.2", "198.19.77.3"
    MOVED = "198.19.77.4"  # where the provider's name points after a DNS change
    APPLIANCE_P6, PROVIDER6 = "2001:2:78::1", "2001:2:78::2"

    def __init__(self, seed: str):
        self._cleanup = contextlib.ExitStack()
        try:
            self.client = self._cleanup.enter_context(Netns(unique_name(f"{seed}/client")))
            self.appliance = self._cleanup.enter_context(Netns(unique_name(f"{seed}/appliance")))
            self.provider = self._cleanup.enter_context(Netns(unique_name(f"{seed}/provider")))
            self._wire(self.client, "eth0", [f"{self.CLIENT}/24", f"{self.CLIENT6}/64"],
                       self.appliance, "eth0", [f"{self.APPLIANCE_C}/24", f"{self.APPLIANCE_C6}/64"])
            self._wire(self.appliance, "eth1", [f"{self.APPLIANCE_P}/24", f"{self.APPLIANCE_P6}/64"],
                       self.provider, "eth0",
                       [f"{self.PROVIDER}/24", f"{self.OTHER}/24", f"{self.MOVED}/24",
                        f"{self.PROVIDER6}/64"])
            self.client.run(["ip", "route", "add", "default", "via", self.APPLIANCE_C])
            self.client.run(["ip", "-6", "route", "add", "default", "via", self.APPLIANCE_C6])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Vpc:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._cleanup.close()

    @staticmethod
    def _wire(a: Netns, a_dev: str, a_addrs: list[str], b: Netns, b_dev: str,
              b_addrs: list[str]) -> None:
        """A veth pair between `a` and `b`, named `a_dev` / `b_dev` inside, addressed."""
        tmp_a, tmp_b = f"{a.name}x", f"{b.name}y"
        run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
        for ns, tmp, dev, addrs in ((a, tmp_a, a_dev, a_addrs), (b, tmp_b, b_dev, b_addrs)):
            run(["ip", "link", "set", tmp, "netns", ns.name])
            ns.run(["ip", "link", "set", tmp, "name", dev])
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                ns.run(["ip", "addr", "add", addr, "dev", dev, *extra])
            ns.run(["ip", "link", "set", dev, "up"])
