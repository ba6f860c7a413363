"""The appliance image boots and serves: `cargo xtask appliance-image` (the test command
builds it from the debug binary before pytest) started in qemu under UEFI, software
emulation unless the CPU offers hardware virtualisation, with a NoCloud seed as a cloud
would hand over user-data.

The user-data brings what an operator would: the config (metrics on another port than the
image's default, so an answer proves the user-data config is the one running), and the
organisation CA and key. Checked through the serial console and a forwarded port only:
- `/readyz` answers 200 (Sluice runs in appliance mode under its hardened unit; its
  readiness needs the ledger, the capture and the CA);
- the CA in use is the one from user-data, not one made on first boot;
- nothing listens but Sluice (`ss` run by the user-data's runcmd, printed to the console);
- the service runs as the `sluice` user with CAP_NET_ADMIN only.

The guest's network is qemu's user mode with `restrict=on`: it reaches nothing but the
forwarded port on 127.0.0.1. The config names no provider host to resolve.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from netns import Proc, free_port, run, sluice_bin

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
METRICS = 15091


def image() -> Path:
    repo = Path(os.environ.get("SLUICE_REPO", Path(__file__).resolve().parents[1]))
    path = repo / "target/appliance/debug/sluice-appliance.qcow2"
    if not path.exists():
        why = f"{path} is missing: run `cargo xtask appliance-image --profile debug`"
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    for tool in ("qemu-system-x86_64", "mkfs.vfat", "mcopy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `cargo xtask setup` installs it", pytrace=False)
    return path


def user_data(ca_crt: str, ca_key: str) -> str:
    indent = lambda text: "\n".join("      " + line for line in text.strip().splitlines())  # noqa: E731
    return f"""#cloud-config
write_files:
  - path: /etc/sluice/sluice.yaml
    permissions: "0644"
    content: |
      listen: ["127.0.0.1:15443"]
      metrics_listen: "0.0.0.0:{METRICS}"
      state_dir: /var/lib/sluice
      ca: {{cert: /etc/sluice/ca/ca.crt, key: /etc/sluice/ca/ca.key}}
      providers: [{{host: "*.openai.azure.com"}}]
      redirect: {{prefixes: ["198.18.0.0/15"]}}
      appliance: {{enabled: true}}
      networks: [{{cidr: 10.0.2.0/24, name: qemu-lan, team: platform}}]
  - path: /etc/sluice/ca/ca.crt
    permissions: "0644"
    content: |
{indent(ca_crt)}
  - path: /etc/sluice/ca/ca.key
    owner: sluice:sluice
    permissions: "0600"
    content: |
{indent(ca_key)}
runcmd:
  - - sh
    - -c
    - >-
      until ss -Htln | grep -q ':{METRICS} '; do sleep 1; done; sleep 3;
      ss -Htlnu | awk '{{print "LISTENING " $1 " " $5}}' > /dev/ttyS0;
      echo "CA $(sluice ca show --config /etc/sluice/sluice.yaml | sha256sum | cut -c1-64)" > /dev/ttyS0;
      p=$(systemctl show -p MainPID --value sluice);
      echo "SERVICE user=$(ps -o user= -p $p) $(grep CapEff /proc/$p/status)" > /dev/ttyS0;
      echo "CHECKS-DONE" > /dev/ttyS0
"""


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_the_image_boots_takes_user_data_and_serves_readyz(tmp_path):
    disk = image()
    # The organisation CA the operator hands over in user-data.
    cfg = tmp_path / "ca.yaml"
    cfg.write_text(f'state_dir: "{tmp_path / "state"}"\n')
    run([str(sluice_bin()), "ca", "init", "--config", str(cfg)])
    ca_crt = (tmp_path / "state/ca/ca.crt").read_text()
    ca_key = (tmp_path / "state/ca/ca.key").read_text()
    shown = run([str(sluice_bin()), "ca", "show", "--config", str(cfg)]).stdout
    want_ca = hashlib.sha256(shown.encode()).hexdigest()

    seed = tmp_path / "seed.img"
    (tmp_path / "user-data").write_text(user_data(ca_crt, ca_key))
    (tmp_path / "meta-data").write_text("instance-id: sluice-test-1\nlocal-hostname: sluice-test\n")
    run(["mkfs.vfat", "-n", "CIDATA", "-C", str(seed), "2048"])
    run(["mcopy", "-i", str(seed), str(tmp_path / "user-data"), str(tmp_path / "meta-data"), "::/"])
    overlay = tmp_path / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)])
    vars_ = tmp_path / "OVMF_VARS.fd"
    shutil.copy(OVMF_VARS, vars_)

    kvm = os.access("/dev/kvm", os.W_OK) and re.search(r"\b(vmx|svm)\b", Path("/proc/cpuinfo").read_text())
    port = free_port()
    serial = tmp_path / "serial.log"
    started = time.monotonic()
    qemu = Proc(["qemu-system-x86_64", "-machine", "q35", "-accel", "kvm" if kvm else "tcg",
                 "-cpu", "host" if kvm else "max", "-smp", "2", "-m", "1024",
                 "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_}",
                 "-drive", f"if=virtio,format=qcow2,file={overlay}",
                 "-drive", f"if=virtio,format=raw,file={seed}",
                 "-nic", f"user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{METRICS}",
                 "-display", "none", "-monitor", "none", "-serial", f"file:{serial}"],
                tmp_path / "qemu.log")
    deadline = started + 600
    while readyz(port) != 200:
        assert qemu.poll() is None, qemu.tail()
        assert time.monotonic() < deadline, serial.read_text(errors="replace")[-4000:]
        time.sleep(1)
    boot = time.monotonic() - started
    while "CHECKS-DONE" not in serial.read_text(errors="replace"):
        assert time.monotonic() < deadline + 120, serial.read_text(errors="replace")[-4000:]
        time.sleep(1)
    console = serial.read_text(errors="replace")
    print(f"appliance image {disk.stat().st_size >> 20} MiB (qcow2); /readyz after {boot:.1f} s "
          f"({'kvm' if kvm else 'tcg'})")

    listening = sorted(set(re.findall(r"LISTENING (\w+) (\S+)", console)))
    # The DHCP client's own socket (systemd-networkd, bound to the NIC) is not a service.
    listening = [(proto, addr) for proto, addr in listening
                 if not (proto == "udp" and re.search(r"%eth0:(68|546)$", addr))]
    assert listening == sorted([("tcp", f"0.0.0.0:{METRICS}"), ("tcp", "127.0.0.1:15443"),
                                ("tcp", "127.0.0.1:15001"), ("tcp", "[::1]:15001")]), listening
    assert f"CA {want_ca}" in console, "the CA in use is not the user-data's"
    service = re.search(r"SERVICE user=(\S+) CapEff:\s+(\w+)", console)
    assert service, console[-3000:]
    # CAP_NET_ADMIN (12) and CAP_NET_BIND_SERVICE (10), nothing else.
    assert service.group(1) == "sluice" and int(service.group(2), 16) == (1 << 12) | (1 << 10), service
    qemu.stop()
