"""Runs a rendered Kubernetes pod spec with docker, as the kubelet would on this node.

No kubelet can run on these machines, so the tests play its part: `DockerPod` translates
a pod spec field by field into `docker run` options — capabilities, host namespaces,
security context, mounts and their propagation, environment (the downward API included),
resources, probes — and refuses any field it does not understand, so a chart change that
adds one fails here until the translation says what it means. ConfigMaps and Secrets come
from the same render.

Where this stops (said by the errors, and in the README):
- `privileged` containers: this VM refuses them (docker cannot grant every capability);
- PersistentVolumeClaims: no storage provisioner;
- `imagePullPolicy: Always`: no registry;
- the pod network: dockerd runs without a bridge (it must not touch the host's iptables
  or sysctls); a pod that is not `hostNetwork` runs in the host network only when the
  caller says so (`pod_network="host"`), as the webhook's Deployment does here;
- `emptyDir` is a directory of the test, not a tmpfs; `requests` are ignored (no
  scheduler), `limits` become docker's `--cpus` and `--memory`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from netns import Proc, run


class PodSpecError(Exception):
    """A pod spec field this translation does not understand or this node cannot honour."""


POD_FIELDS = {
    "containers", "initContainers", "volumes", "hostNetwork", "hostPID", "dnsPolicy",
    "priorityClassName", "tolerations", "nodeSelector", "affinity", "serviceAccountName",
    "automountServiceAccountToken", "terminationGracePeriodSeconds", "imagePullSecrets",
    "securityContext",
}
# Scheduling and API-side fields: meaningful to the scheduler or the API server, not to
# the container runtime.
NOT_RUNTIME = {"priorityClassName", "tolerations", "nodeSelector", "affinity",
               "serviceAccountName", "automountServiceAccountToken", "imagePullSecrets",
               "dnsPolicy"}
CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "args", "command", "env", "ports", "livenessProbe",
    "readinessProbe", "startupProbe", "resources", "securityContext", "volumeMounts",
}
SECURITY_FIELDS = {
    "privileged", "runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
    "allowPrivilegeEscalation", "capabilities", "seccompProfile",
}
MOUNT_FIELDS = {"name", "mountPath", "readOnly", "mountPropagation", "subPath", "subPathExpr"}
PROBE_FIELDS = {"httpGet", "periodSeconds", "timeoutSeconds", "failureThreshold",
                "initialDelaySeconds", "successThreshold"}


def _check(fields: dict, known: set, where: str) -> None:
    unknown = set(fields) - known
    if unknown:
        raise PodSpecError(f"{where}: no translation for {sorted(unknown)}")


class Docker:
    """A dockerd of the test's own: vfs storage, no bridge, no iptables, no sysctl change;
    its data and socket under `root`, removed at close."""

    def __init__(self, root: Path, log: Path):
        self.root = root
        self.sock = root / "docker.sock"
        exec_root = Path(f"/tmp/sdx-{os.getpid()}")  # unix socket paths are short
        self.exec_root = exec_root
        self.proc = Proc(
            ["dockerd", "--storage-driver", "vfs", "--iptables=false", "--ip6tables=false",
             "--ip-forward=false", "--bridge=none", "--data-root", str(root / "data"),
             "--exec-root", str(exec_root), "--pidfile", str(root / "dockerd.pid"),
             "-H", f"unix://{self.sock}"],
            log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.docker(["info"], check=False).returncode == 0:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited:\n{self.proc.tail()}")
            time.sleep(0.3)
        raise AssertionError(f"dockerd did not answer:\n{self.proc.tail()}")

    def docker(self, argv: list[str], check: bool = True, timeout: float = 120):
        return run(["docker", "-H", f"unix://{self.sock}", *argv], check=check, timeout=timeout)

    def close(self) -> None:
        ids = self.docker(["ps", "-aq"], check=False).stdout.split()
        if ids:
            self.docker(["rm", "-f", *ids], check=False)
        self.proc.stop(timeout=20)
        # dockerd leaves mounts (netns/default, overlay of nothing) under its roots.
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith((str(self.exec_root), str(self.root))):
                run(["umount", "-l", target], check=False)
        for d in (self.root / "data", self.exec_root):
            # vfs layers may hold read-only directories.
            run(["rm", "-rf", "--one-file-system", str(d)], check=False)


def quantity_cpus(q: str) -> str:
    return str(int(q[:-1]) / 1000) if q.endswith("m") else str(float(q))


def quantity_bytes(q: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    for suffix, docker_unit in units.items():
        if q.endswith(suffix):
            return q[: -len(suffix)] + docker_unit
    if q.isdigit():
        return q
    raise PodSpecError(f"memory quantity {q!r}: no translation")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args, command and subPathExpr ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class DockerPod:
    """One pod of a rendered manifest set, run by `docker` on this node."""

    def __init__(self, docker: Docker, manifests: list[dict], pod_spec: dict, *, name: str,
                 namespace: str, node_ip: str, node_name: str, workdir: Path,
                 pod_network: str | None = None):
        _check(pod_spec, POD_FIELDS, "pod")
        self.docker, self.spec, self.name, self.namespace = docker, pod_spec, name, namespace
        self.node_ip, self.node_name, self.workdir = node_ip, node_name, workdir
        self.objects = {(m["kind"], m["metadata"]["name"]): m for m in manifests}
        if not pod_spec.get("hostNetwork") and pod_network != "host":
            raise PodSpecError("pod network: this node has no CNI; run it with pod_network='host'")
        pod_sc = pod_spec.get("securityContext", {})
        _check(pod_sc, {"runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile", "fsGroup"},
               "pod securityContext")
        self.pod_sc = pod_sc
        # The kubelet gives volume files the pod's fsGroup (and group read with it).
        self.fs_group = pod_sc.get("fsGroup")
        self.volumes = {v["name"]: self._volume(v) for v in pod_spec.get("volumes", [])}
        self.running: list[str] = []

    # --- volumes -------------------------------------------------------------------------

    def _volume(self, v: dict) -> dict:
        kinds = set(v) - {"name"}
        if len(kinds) != 1:
            raise PodSpecError(f"volume {v['name']}: exactly one source expected, got {kinds}")
        kind = kinds.pop()
        src = v[kind]
        if kind == "hostPath":
            path = Path(src["path"])
            kind_of = src.get("type", "")
            if kind_of == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind_of == "Directory":
                if not path.is_dir():
                    raise PodSpecError(f"volume {v['name']}: hostPath {path} is not a directory")
            elif kind_of not in ("", "File"):
                raise PodSpecError(f"volume {v['name']}: hostPath type {kind_of}: no translation")
            return {"host": path}
        if kind in ("configMap", "secret"):
            obj_kind = "ConfigMap" if kind == "configMap" else "Secret"
            obj_name = src["name"] if kind == "configMap" else src["secretName"]
            _check(src, {"name", "secretName", "items", "defaultMode", "optional"}, f"volume {v['name']}")
            obj = self.objects.get((obj_kind, obj_name))
            if obj is None:
                raise PodSpecError(f"volume {v['name']}: {obj_kind} {obj_name} is not in the render")
            data = obj.get("data", {})
            if kind == "secret":
                data = {k: base64.b64decode(val) for k, val in data.items()}
            else:
                data = {k: val.encode() for k, val in data.items()}
            items = src.get("items") or [{"key": k, "path": k} for k in data]
            d = self.workdir / f"vol-{self.name}-{v['name']}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            mode = src.get("defaultMode", 0o644)
            for item in items:
                f = d / item["path"]
                f.write_bytes(data[item["key"]])
                f.chmod(item.get("mode", mode))
                if self.fs_group is not None:
                    os.chown(f, 0, self.fs_group)
            return {"host": d}
        if kind == "emptyDir":
            _check(src, {"medium", "sizeLimit"}, f"volume {v['name']}")
            d = self.workdir / f"vol-{self.name}-{v['name']}"
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o1777)
            return {"host": d}
        raise PodSpecError(f"volume {v['name']}: {kind} cannot be provided on this node")

    # --- containers ----------------------------------------------------------------------

    def env_of(self, c: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            elif "valueFrom" in e:
                path = e["valueFrom"].get("fieldRef", {}).get("fieldPath")
                values = {"status.hostIP": self.node_ip, "spec.nodeName": self.node_name,
                          "metadata.name": self.name, "metadata.namespace": self.namespace,
                          "status.podIP": self.node_ip}
                if path not in values:
                    raise PodSpecError(f"env {e['name']}: valueFrom {e['valueFrom']}: no translation")
                env[e["name"]] = values[path]
            else:
                raise PodSpecError(f"env {e['name']}: neither value nor valueFrom")
        return env

    def docker_args(self, c: dict, detach: bool) -> list[str]:
        _check(c, CONTAINER_FIELDS, f"container {c['name']}")
        env = self.env_of(c)
        argv = ["run", "--name", f"{self.name}-{c['name']}", "--label", f"sluice-test={os.getpid()}"]
        argv += ["-d"] if detach else ["--rm"]
        policy = c.get("imagePullPolicy", "IfNotPresent")
        if policy == "Always":
            raise PodSpecError(f"container {c['name']}: imagePullPolicy Always, and no registry here")
        argv += ["--pull", "never" if policy == "Never" else "missing"]
        # hostNetwork, or a pod network the caller chose to stand in for (see __init__).
        argv += ["--network", "host"]
        if self.spec.get("hostPID"):
            argv += ["--pid", "host"]
        grace = self.spec.get("terminationGracePeriodSeconds")
        if grace is not None:
            argv += ["--stop-timeout", str(grace)]
        argv += self._security(c)
        limits = c.get("resources", {}).get("limits", {})
        _check(limits, {"cpu", "memory"}, f"container {c['name']} limits")
        if "cpu" in limits:
            argv += ["--cpus", quantity_cpus(str(limits["cpu"]))]
        if "memory" in limits:
            argv += ["--memory", quantity_bytes(str(limits["memory"]))]
        for m in c.get("volumeMounts", []):
            argv += self._mount(m, env)
        for k, v in env.items():
            argv += ["-e", f"{k}={v}"]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                _check(c[probe], PROBE_FIELDS, f"container {c['name']} {probe}")
        if "command" in c:
            argv += ["--entrypoint", c["command"][0]]
        argv.append(c["image"])
        argv += [expand(a, env) for a in c.get("command", [])[1:]]
        argv += [expand(a, env) for a in c.get("args", [])]
        return argv

    def _security(self, c: dict) -> list[str]:
        sc = {**{k: v for k, v in self.pod_sc.items() if k not in ("runAsNonRoot", "fsGroup")},
              **c.get("securityContext", {})}
        _check(sc, SECURITY_FIELDS, f"container {c['name']} securityContext")
        if sc.get("privileged"):
            raise PodSpecError(f"container {c['name']}: privileged, which this VM refuses")
        out = []
        user = sc.get("runAsUser")
        if user is not None:
            out += ["--user", f"{user}:{sc.get('runAsGroup', user)}"]
        if self.fs_group is not None:
            out += ["--group-add", str(self.fs_group)]
        if (self.pod_sc.get("runAsNonRoot") or sc.get("runAsNonRoot")) and user == 0:
            raise PodSpecError(f"container {c['name']}: runAsNonRoot with runAsUser 0")
        if sc.get("readOnlyRootFilesystem"):
            out.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            out += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities", {})
        _check(caps, {"add", "drop"}, f"container {c['name']} capabilities")
        for cap in caps.get("drop", []):
            out += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            out += ["--cap-add", cap]
        seccomp = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            out += ["--security-opt", "seccomp=unconfined"]
        elif seccomp != "RuntimeDefault":
            raise PodSpecError(f"container {c['name']}: seccomp {seccomp}: no translation")
        return out

    def _mount(self, m: dict, env: dict[str, str]) -> list[str]:
        _check(m, MOUNT_FIELDS, f"volumeMount {m['name']}")
        vol = self.volumes.get(m["name"])
        if vol is None:
            raise PodSpecError(f"volumeMount {m['name']}: no such volume")
        src = vol["host"]
        sub = m.get("subPath") or (expand(m["subPathExpr"], env) if "subPathExpr" in m else None)
        if sub:
            src = src / sub
            if not src.exists():
                src.mkdir(parents=True)
        prop = {"HostToContainer": "rslave", "Bidirectional": "rshared", "None": "rprivate",
                None: "rprivate"}[m.get("mountPropagation")]
        spec = f"type=bind,source={src},target={m['mountPath']},bind-propagation={prop}"
        return ["--mount", spec + (",readonly" if m.get("readOnly") else "")]

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Init containers one by one (each must exit 0), then the containers."""
        for c in self.spec.get("initContainers", []):
            r = self.docker.docker(self.docker_args(c, detach=False), check=False, timeout=120)
            if r.returncode != 0:
                raise AssertionError(f"init container {c['name']} failed: {r.stdout}{r.stderr}")
        for c in self.spec["containers"]:
            self.docker.docker(self.docker_args(c, detach=True))
            self.running.append(f"{self.name}-{c['name']}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period, as the kubelet does; removes them."""
        for name in self.running:
            self.docker.docker(["stop", name], check=False, timeout=120)
            self.docker.docker(["rm", "-f", name], check=False)
        self.running = []

    def logs(self, container: str) -> str:
        r = self.docker.docker(["logs", "--tail", "80", f"{self.name}-{container}"], check=False)
        return r.stdout + r.stderr

    def exec(self, container: str, argv: list[str], check: bool = True, timeout: float = 60):
        return self.docker.docker(["exec", f"{self.name}-{container}", *argv], check=check, timeout=timeout)

    def probe(self, container: str, kind: str) -> bool:
        """One httpGet probe of `kind` (readinessProbe, livenessProbe) as the kubelet sends it."""
        c = next(c for c in self.spec["containers"] if c["name"] == container)
        get = c[kind]["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in c.get("ports", []) if p["name"] == port)
        scheme = get.get("scheme", "HTTP").lower()
        host = self.node_ip if self.spec.get("hostNetwork") else "127.0.0.1"
        ctx = ssl._create_unverified_context() if scheme == "https" else None  # as the kubelet
        try:
            with urllib.request.urlopen(f"{scheme}://{host}:{port}{get['path']}",
                                        timeout=c[kind].get("timeoutSeconds", 1), context=ctx) as r:
                return 200 <= r.status < 400
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, container: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        name = f"{self.name}-{container}"
        while time.monotonic() < deadline:
            if self.probe(container, "readinessProbe"):
                return
            state = self.docker.docker(["inspect", "-f", "{{.State.Running}}", name], check=False)
            if state.stdout.strip() == "false":
                break
            time.sleep(0.2)
        raise AssertionError(f"{self.name}/{container} not ready:\n{self.logs(container)}")


def pod_spec_of(manifests: list[dict], kind: str) -> tuple[dict, dict]:
    """(workload object, its pod template spec) of the one `kind` in the render."""
    obj = next(m for m in manifests if m["kind"] == kind)
    return obj, obj["spec"]["template"]["spec"]


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
