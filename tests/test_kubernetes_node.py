"""A Kubernetes node without a kubelet: the chart's pods run with docker, exactly as
rendered, and "pods" made as the kubelet makes them are governed and attributed.

    dockerd (the test's own: vfs, no bridge, no iptables)
      agent   = the rendered DaemonSet pod spec (podspec.DockerPod): host network and PID,
                its capability list, hostPath mounts of the test's "node" directories
      webhook = the rendered Deployment pod spec (in the host network: no CNI here)

    "pods"    = the client netns + cgroups named as the kubelet's systemd driver names
                them (<node root>/kubepods.slice/kubepods-besteffort.slice/
                kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope), with their
                /var/log/pods and /var/log/containers entries; the webhook's patch is
                applied to their spec, its init container run with docker, and its
                mounts and variables — nothing else — given to the app's processes
                (a private mount namespace binds the bundle over the system bundle).
      chat (team-a): the official openai and anthropic Python SDKs
      web  (team-b): Node's openai package

    provider netns: the mock provider on api.openai.com's "real" address (its /etc/hosts)

The node's cgroup root (`agent.cgroupRoot`) is a cgroup the test makes under the unified
hierarchy, so nothing outside the test is redirected; pins, the ledger and the kubelet
directories are the test's too. What no kubelet here means: see podspec.py.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import helm_python
import jsonpatch
import kubernetes_validate
import pytest
import yaml

from fake_kube_api import FakeKubeApi, pod_object
from netns import UNIFIED, Proc, Topology, free_port, mock_bin, require_privileges, run, wait_for_port
from podspec import Docker, DockerPod, PodSpecError, pod_spec_of

REPO = Path(os.environ.get("SLUICE_REPO", Path(__file__).resolve().parents[1]))
CHART = REPO / "helm" / "sluice"
NAMESPACE = "sluice-system"
NODE_NAME = "node-1"


def render(values: dict) -> list[dict]:
    chart = helm_python.Chart.load(CHART)
    try:
        out = chart.render(copy.deepcopy(values), name="sluice", namespace=NAMESPACE)
    finally:
        chart.close()
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def image_archive() -> Path:
    """The image `cargo xtask image --profile debug` makes (the test stage builds it; built
    here when the suite runs on its own)."""
    archive = REPO / "target" / "image" / "debug" / "sluice-image.tar"
    if not archive.exists() or os.environ.get("SLUICE_IMAGE_REBUILD") == "1":
        run(["cargo", "xtask", "image", "--profile", "debug"], timeout=1800)
    return archive


class Node:
    """dockerd, the loaded image, the topology, the mock provider and the node's
    directories; torn down at the end of the module."""

    def __init__(self, root: Path):
        self.root = root
        self.docker = Docker(root / "docker", root / "dockerd.log")
        loaded = self.docker.docker(["load", "-i", str(image_archive())], timeout=600).stdout
        name = loaded.strip().splitlines()[-1].split("Loaded image:")[-1].strip()
        self.docker.docker(["tag", name, "sluice:e2e"])
        self.topo = Topology("k8s-node")
        # Every Kubernetes node forwards (pods reach the world through it); until close.
        self.topo.enable_forwarding()
        self.node_ip = self.topo.client_gw
        ca_dir = root / "provider-ca"
        ca_dir.mkdir()
        self.mock = Proc(
            ["ip", "netns", "exec", self.topo.provider.name, mock_bin(),
             "--listen", f"{self.topo.provider_addr}:443",
             "--tls-hosts", "api.openai.com,api.anthropic.com",
             "--ca-out", str(ca_dir / "ca.pem")],
            root / "mock.log")
        wait_for_port(self.topo.provider_addr, 443, timeout=20, netns=self.topo.provider)
        self.provider_ca = ca_dir
        self.topo.client.hosts({"api.openai.com": self.topo.provider_addr,
                                "api.anthropic.com": self.topo.provider_addr})
        assert UNIFIED, "no cgroup2 mount on this machine"
        self.cgroup_root = UNIFIED / f"sluice-k8s-node-{os.getpid()}"
        self.cgroup_root.mkdir()
        self.pod_logs = root / "var-log-pods"
        self.container_logs = root / "var-log-containers"
        self.ledger = root / "var-lib-sluice"
        self.pins = Path(f"/sys/fs/bpf/sluice-k8s-{os.getpid()}")
        # A node booted by systemd has every mount shared, which a HostToContainer
        # (rslave) mount needs; this VM's are private: made shared as on a node, and put
        # back at close.
        self.bpffs_propagation = run(["findmnt", "-no", "PROPAGATION", "/sys/fs/bpf"]).stdout.strip()
        if self.bpffs_propagation == "private":
            run(["mount", "--make-shared", "/sys/fs/bpf"])
        self.port, self.metrics_port, self.webhook_port = (free_port() for _ in range(3))
        self.agent: DockerPod | None = None
        self.installed: dict | None = None
        # The API the agent's pod watch reads (labels, service accounts), via a kubeconfig.
        kube_dir = root / "kube"
        kube_dir.mkdir()
        self.api = FakeKubeApi(kube_dir)
        self.kube_dir = kube_dir

    def values(self, on_proxy_down: str) -> dict:
        return {
            "image": {"repository": "sluice", "tag": "e2e", "pullPolicy": "Never"},
            "agent": {
                "port": self.port, "metricsPort": self.metrics_port,
                "onProxyDown": on_proxy_down, "heartbeatTimeoutSeconds": 1,
                "cgroupRoot": str(self.cgroup_root),
                "podLogDir": str(self.pod_logs), "containerLogDir": str(self.container_logs),
                "extraVolumes": [
                    {"name": "provider-ca", "hostPath": {"path": str(self.provider_ca), "type": "Directory"}},
                    {"name": "kube", "hostPath": {"path": str(self.kube_dir), "type": "Directory"}},
                ],
                "extraVolumeMounts": [
                    {"name": "provider-ca", "mountPath": "/etc/sluice/provider-ca", "readOnly": True},
                    {"name": "kube", "mountPath": "/etc/sluice/kube", "readOnly": True},
                ],
                # In a cluster the service-account token; here a kubeconfig for the fake API.
                "extraEnv": [{"name": "KUBECONFIG", "value": "/etc/sluice/kube/kubeconfig"}],
                "terminationGracePeriodSeconds": 20,
            },
            "ledger": {"hostPath": str(self.ledger)},
            "webhook": {"port": self.webhook_port, "replicas": 1},
            "config": {
                # The mock's certificate is signed by its own CA, as a provider's by a public one.
                "upstream": {"ca_file": "/etc/sluice/provider-ca/ca.pem"},
                # The node's kubepods tree lives under the test's cgroup, not at the root.
                "kubernetes": {"cgroup_prefix": f"/{self.cgroup_root.name}"},
                # The test's provider address is not in DNS: named as a static prefix.
                "redirect": {"prefixes": [f"{self.topo.provider_addr}/32:443"],
                             "pin_dir": str(self.pins)},
                # Selected by pod label and service account, which only the API knows.
                "policy": {"policies": [{
                    "id": "chat-models",
                    "scope": {"pod_labels": {"app": "chat"}, "service_accounts": ["chat"]},
                    "models": {"allow": ["gpt-4o-mini", "claude-*"]},
                }]},
            },
        }

    def render(self, on_proxy_down: str) -> list[dict]:
        """The chart for this node. Secrets made at install (the org CA, the webhook's
        certificate and its caBundle) are carried over from the first render, as Helm's
        `lookup` carries them over from the cluster on every upgrade."""
        manifests = render(self.values(on_proxy_down))
        kept = ("Secret", "MutatingWebhookConfiguration")
        if self.installed is None:
            self.installed = {(m["kind"], m["metadata"]["name"]): m for m in manifests
                              if m["kind"] in kept or m["metadata"]["name"] == "sluice-ca"}
        return [self.installed.get((m["kind"], m["metadata"]["name"]), m) for m in manifests]

    def start_agent(self, manifests: list[dict]) -> DockerPod:
        _, spec = pod_spec_of(manifests, "DaemonSet")
        pod = DockerPod(self.docker, manifests, spec, name="sluice-agent", namespace=NAMESPACE,
                        node_ip=self.node_ip, node_name=NODE_NAME, workdir=self.root)
        pod.start()
        pod.wait_ready("agent", timeout=90)
        self.agent = pod
        return pod

    def interactions(self) -> list[dict]:
        assert self.agent
        out = self.agent.exec("agent", ["sluice", "events", "tail", "--json", "--limit", "100000",
                                        "--kind", "interaction", "--config",
                                        "/etc/sluice/config/sluice.yaml"]).stdout
        return [json.loads(x) for x in out.splitlines() if x.strip()]

    def metric(self, series: str) -> float:
        url = f"http://{self.node_ip}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.rpartition(" ")
                if name == series:
                    return float(value)
        return 0.0

    def close(self) -> None:
        if self.agent:
            self.agent.stop()
        self.docker.close()
        self.api.close()
        self.mock.stop()
        self.topo.close()
        remove_cgroup_tree(self.cgroup_root)
        shutil.rmtree(self.pins, ignore_errors=True)
        if self.bpffs_propagation == "private":
            run(["mount", "--make-private", "/sys/fs/bpf"], check=False)


def remove_cgroup_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _kill_and_rmdir(child)
    _kill_and_rmdir(path)


def _kill_and_rmdir(path: Path) -> None:
    for _ in range(50):
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"cannot remove {path}")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    require_privileges()
    n = Node(tmp_path_factory.mktemp("k8s-node"))
    try:
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def webhook(node):
    """The rendered webhook Deployment, running; yields (pod, manifests)."""
    manifests = node.render("fail_closed")
    _, spec = pod_spec_of(manifests, "Deployment")
    pod = DockerPod(node.docker, manifests, spec, name="sluice-webhook", namespace=NAMESPACE,
                    node_ip="127.0.0.1", node_name=NODE_NAME, workdir=node.root, pod_network="host")
    pod.start()
    pod.wait_ready("webhook", timeout=60)
    yield pod, manifests
    pod.stop()


def admission_review(pod: dict, namespace: str) -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE", "object": pod,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "dryRun": False,
        },
    }


def call_webhook(manifests: list[dict], port: int, review: dict, server_name: str | None = None) -> dict:
    """POSTs the review as the API server does: HTTPS to the Service's DNS name, the
    certificate checked against the configuration's caBundle."""
    hook = next(m for m in manifests if m["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    svc = hook["clientConfig"]["service"]
    ctx = ssl.create_default_context(cadata=base64.b64decode(hook["clientConfig"]["caBundle"]).decode())
    name = server_name or f"{svc['name']}.{svc['namespace']}.svc"
    body = json.dumps(review).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(
                f"POST {svc['path']} HTTP/1.1\r\nHost: {name}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(payload)


def patched(review_answer: dict, pod: dict) -> dict:
    response = review_answer["response"]
    assert response["allowed"] is True
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(pod, ops)


# --- pods as the kubelet makes them -------------------------------------------------------

TRUST_HOST_DIR = Path("/run/sluice-trust")


class KubeletPod:
    """A pod on this node: its uid, cgroups and kubelet files; its containers' processes
    run in the client netns, in their container's cgroup, with the patched spec's
    environment and mounts."""

    def __init__(self, node: Node, namespace: str, spec: dict):
        self.node, self.namespace, self.spec = node, namespace, spec
        self.name = spec["metadata"]["name"]
        self.uid = str(uuid.uuid4())
        slice_ = node.cgroup_root / "kubepods.slice" / "kubepods-besteffort.slice" / \
            f"kubepods-besteffort-pod{self.uid.replace('-', '_')}.slice"
        pod_dir = node.pod_logs / f"{namespace}_{self.name}_{self.uid}"
        self.containers: dict[str, tuple[str, Path]] = {}
        for c in spec["spec"]["containers"]:
            cid = uuid.uuid4().hex + uuid.uuid4().hex
            cg = slice_ / f"cri-containerd-{cid}.scope"
            cg.mkdir(parents=True)
            (pod_dir / c["name"]).mkdir(parents=True)
            (pod_dir / c["name"] / "0.log").touch()
            node.container_logs.mkdir(exist_ok=True)
            (node.container_logs / f"{self.name}_{namespace}_{c['name']}-{cid}.log").symlink_to(
                pod_dir / c["name"] / "0.log")
            self.containers[c["name"]] = (cid, cg)
        self.volumes: dict[str, Path] = {}

    def run_init_containers(self) -> None:
        """The patch's init containers (the bundle writer), with docker, their emptyDir a
        directory shared with the app's processes."""
        spec = {"initContainers": self.spec["spec"].get("initContainers", []), "containers": [],
                "volumes": self.spec["spec"].get("volumes", [])}
        ours = [c for c in spec["initContainers"] if c["image"] == "sluice:e2e"]
        assert ours, "the patch adds the bundle writer"
        spec["initContainers"] = ours
        pod = DockerPod(self.node.docker, [], spec, name=f"pod-{self.uid[:8]}", namespace=self.namespace,
                        node_ip=self.node.node_ip, node_name=NODE_NAME, workdir=self.node.root,
                        pod_network="host")
        pod.start()
        self.volumes = {name: v["host"] for name, v in pod.volumes.items()}

    def run(self, container: str, argv: list[str], cwd: Path | None = None, timeout: float = 90):
        """`argv` as container `container`'s process: its cgroup, the client netns, the
        patched env and mounts (mount targets absent on this host are skipped: a runtime
        would create them in the container's own root file system)."""
        c = next(c for c in self.spec["spec"]["containers"] if c["name"] == container)
        _, cg = self.containers[container]
        binds = []
        for m in c.get("volumeMounts", []):
            src = self.volumes[m["name"]] / m.get("subPath", "")
            target = Path(m["mountPath"])
            if m.get("subPath") and not target.exists():
                continue
            if not m.get("subPath"):
                target.mkdir(parents=True, exist_ok=True)
            binds.append(f'mount --bind "{src}" "{target}"')
        env = {"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8"}
        env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
        inside = " && ".join(binds + ['exec "$@"'])
        pod = self.node.topo.client.argv(["unshare", "--mount", "--propagation", "private",
                                          "sh", "-c", inside, "sh", *argv])
        # The cgroup first: `ip netns exec` mounts a sysfs of its own over /sys.
        argv = ["sh", "-c", f'echo $$ > "{cg}/cgroup.procs" && exec "$@"', "sh", *pod]
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


CHAT_POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "chat-7d9f6c5b4-x2lq8", "namespace": "team-a",
                 "labels": {"app": "chat", "pod-template-hash": "7d9f6c5b4"}},
    "spec": {
        "serviceAccountName": "chat",
        "initContainers": [{"name": "migrate", "image": "python:3.12-slim",
                            "command": ["python", "manage.py", "migrate"]}],
        "containers": [{"name": "app", "image": "python:3.12-slim",
                        "env": [{"name": "DJANGO_SETTINGS_MODULE", "value": "chat.settings"}],
                        "ports": [{"containerPort": 8000}]}],
    },
}
WEB_POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web-5c8d7f9b6-q4kzt", "namespace": "team-b", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "web", "image": "node:20-alpine",
                             "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
             "volumes": [{"name": "cache", "emptyDir": {}}]},
}

SDKS = """
import json, openai, anthropic, socket
o = openai.OpenAI(api_key="sk-pod-key", max_retries=0)
r = o.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "from pod chat"}])
a = anthropic.Anthropic(api_key="sk-ant-pod", max_retries=0)
m = a.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "anthropic from chat"}])
try:
    o.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "a model chat may not use"}])
    blocked = None
except openai.APIStatusError as e:
    blocked = e.status_code
print(json.dumps({"openai": r.choices[0].message.content, "anthropic": m.content[0].text,
                  "blocked": blocked}))
"""


def test_pods_on_a_node_without_kubelet_are_governed_and_attributed(node, webhook):
    hook_pod, hook_manifests = webhook
    manifests = node.render("fail_closed")
    agent = node.start_agent(manifests)
    try:
        doctor = agent.exec("agent", ["sluice", "doctor"], check=False)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr

        pods = {}
        for spec in (CHAT_POD, WEB_POD):
            ns = spec["metadata"]["namespace"]
            answer = call_webhook(hook_manifests, node.webhook_port, admission_review(spec, ns))
            out = patched(answer, copy.deepcopy(spec))
            kubernetes_validate.validate(out, "1.33.0", strict=True)
            pod = KubeletPod(node, ns, out)
            pod.run_init_containers()
            pods[ns] = pod
            # The scheduler's and kubelet's view, as the API serves it to the agent's watch.
            node.api.put(pod_object(
                pod.name, ns, pod.uid, NODE_NAME, spec["metadata"].get("labels", {}),
                spec["spec"].get("serviceAccountName", "default"),
                {c: cid for c, (cid, _) in pod.containers.items()}))
        deadline = time.monotonic() + 20
        while node.metric("sluice_kubernetes_pods") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert node.metric("sluice_kubernetes_pods") == 2, agent.logs("agent")
        # The agent watches its own node's pods only.
        assert any("fieldSelector=spec.nodeName%3Dnode-1" in r for r in node.api.requests), node.api.requests

        chat = pods["team-a"].run("app", [sys.executable, "-c", SDKS])
        assert chat.returncode == 0, chat.stdout + chat.stderr
        assert json.loads(chat.stdout) == {"openai": "Mock reply to: from pod chat",
                                           "anthropic": "Mock reply to: anthropic from chat",
                                           "blocked": 403}
        # The same model from a pod the policy does not select is allowed.
        web = pods["team-b"].run("web", ["node", "chat.mjs", "from pod web", "gpt-4o"],
                                 cwd=REPO / "tests" / "node")
        assert web.returncode == 0, web.stdout + web.stderr
        assert json.loads(web.stdout) == {"reply": "Mock reply to: from pod web"}

        deadline = time.monotonic() + 20
        while len(node.interactions()) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        records = node.interactions()
        by_pod = {}
        for r in records:
            k = r["identity"].get("kubernetes")
            assert k, f"unattributed record: {r['identity']}"
            by_pod.setdefault((k["namespace"], k["pod"], k["container"]), []).append(r)
        chat_key = ("team-a", CHAT_POD["metadata"]["name"], "app")
        web_key = ("team-b", WEB_POD["metadata"]["name"], "web")
        chat_records = sorted(by_pod[chat_key], key=lambda r: r["seq"])
        assert [(r["provider"], r["model"], r["decision"]) for r in chat_records] == [
            ("openai", "gpt-4o-mini", "allow"), ("anthropic", "claude-haiku-4-5", "allow"),
            ("openai", "gpt-4o", "block")]
        assert chat_records[2]["policy_id"].startswith("chat-models"), chat_records[2]
        assert [(r["provider"], r["model"], r["decision"]) for r in by_pod[web_key]] == [
            ("openai", "gpt-4o", "allow")]
        for key, rs in ((chat_key, chat_records), (web_key, by_pod[web_key])):
            for r in rs:
                assert r["identity"]["pod_uid"] == pods[key[0]].uid
        k = chat_records[0]["identity"]["kubernetes"]
        assert (k["service_account"], k["labels"]["app"]) == ("chat", "chat"), k
        assert by_pod[web_key][0]["identity"]["kubernetes"]["service_account"] == "default"
    finally:
        agent.stop()
        node.agent = None


# --- the webhook on its own ---------------------------------------------------------------

def test_webhook_patches_real_pod_specs_and_its_tls_is_what_the_api_server_checks(node, webhook):
    _, manifests = webhook
    port = node.webhook_port

    # A Deployment's pod with init containers: ours runs first, every container trusts.
    out = patched(call_webhook(manifests, port, admission_review(CHAT_POD, "team-a")), copy.deepcopy(CHAT_POD))
    kubernetes_validate.validate(out, kubernetes_validate.latest_version(), strict=True)
    init = out["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["sluice-trust", "migrate"]
    assert init[0]["securityContext"]["runAsNonRoot"] is True
    for c in init[1:] + out["spec"]["containers"]:
        env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"):
            assert env[var] == "/var/run/sluice-trust/ca-bundle.crt", (c["name"], var)
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/etc/ssl/certs/ca-certificates.crt" in mounts
    assert out["metadata"]["annotations"]["sluice.dev/injected"] == "trust"
    assert out["spec"]["containers"][0]["env"][0]["name"] == "DJANGO_SETTINGS_MODULE", "app env kept first"

    # A pod that sets SSL_CERT_FILE itself keeps it, and the operator is warned.
    own = copy.deepcopy(WEB_POD)
    own["spec"]["containers"][0]["env"] = [{"name": "SSL_CERT_FILE", "value": "/app/certs/ca.pem"}]
    answer = call_webhook(manifests, port, admission_review(own, "team-b"))
    out = patched(answer, copy.deepcopy(own))
    env = [e for e in out["spec"]["containers"][0]["env"] if e["name"] == "SSL_CERT_FILE"]
    assert env == [{"name": "SSL_CERT_FILE", "value": "/app/certs/ca.pem"}]
    assert any("SSL_CERT_FILE" in w for w in answer["response"]["warnings"])
    kubernetes_validate.validate(out, "1.30.0", strict=True)

    # Opted out, or in kube-system: allowed, untouched.
    opted_out = copy.deepcopy(WEB_POD)
    opted_out["metadata"]["annotations"] = {"sluice.dev/inject": "false"}
    system = copy.deepcopy(WEB_POD)
    system["metadata"]["namespace"] = "kube-system"
    for pod, ns in ((opted_out, "team-b"), (system, "kube-system")):
        answer = call_webhook(manifests, port, admission_review(pod, ns))
        assert answer["response"]["allowed"] is True and "patch" not in answer["response"]

    # The API server checks the certificate against the caBundle for the Service's name:
    # another name fails, and so does a client that trusts only the system roots.
    with pytest.raises(ssl.SSLCertVerificationError):
        call_webhook(manifests, port, admission_review(WEB_POD, "team-b"), server_name="evil.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="sluice-webhook.sluice-system.svc")


def test_the_translation_refuses_what_it_cannot_honour(node):
    manifests = render({**node.values("fail_open"), "agent": {**node.values("fail_open")["agent"],
                                                              "bpffsInit": True}})
    _, spec = pod_spec_of(manifests, "DaemonSet")
    pod = DockerPod(node.docker, manifests, spec, name="refused", namespace=NAMESPACE,
                    node_ip=node.node_ip, node_name=NODE_NAME, workdir=node.root)
    with pytest.raises(PodSpecError, match="privileged"):
        pod.start()
    strange = copy.deepcopy(spec)
    strange["shareProcessNamespace"] = True
    with pytest.raises(PodSpecError, match="shareProcessNamespace"):
        DockerPod(node.docker, manifests, strange, name="refused", namespace=NAMESPACE,
                  node_ip=node.node_ip, node_name=NODE_NAME, workdir=node.root)


# --- a rolling restart under load ---------------------------------------------------------

LOAD = """
import json, sys, time, openai
o = openai.OpenAI(api_key="sk-load", max_retries=0, timeout=10)
done, failed, i = [], 0, 0
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    i += 1
    try:
        r = o.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"load {i}"}])
        assert r.choices[0].message.content == f"Mock reply to: load {i}"
        done.append(i)
    except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError):
        failed += 1
        time.sleep(0.05)
print(json.dumps({"done": done, "failed": failed}))
"""


@pytest.mark.parametrize("on_proxy_down", ["fail_closed", "fail_open"])
def test_a_rolling_restart_under_load_loses_no_completed_interaction(node, webhook, on_proxy_down):
    _, hook_manifests = webhook
    manifests = node.render(on_proxy_down)
    agent = node.start_agent(manifests)
    spec = copy.deepcopy(CHAT_POD)
    spec["metadata"]["name"] = f"load-{on_proxy_down.replace('_', '-')}"
    out = patched(call_webhook(hook_manifests, node.webhook_port, admission_review(spec, "team-a")), spec)
    pod = KubeletPod(node, "team-a", out)
    pod.run_init_containers()
    before = {r["id"] for r in node.interactions()}

    result: dict = {}
    load = threading.Thread(target=lambda: result.update(
        proc=pod.run("app", [sys.executable, "-c", LOAD, "12"], timeout=60)))
    load.start()
    time.sleep(3)
    # The DaemonSet's rolling update on this node: SIGTERM, grace period, a new pod.
    agent.stop()
    time.sleep(2)  # past the 1 s heartbeat timeout: the probe sees the proxy down
    probe = pod.run("app", [sys.executable, "-c", (
        "import socket, json\n"
        "try:\n"
        f"    s = socket.create_connection(('{node.topo.provider_addr}', 443), timeout=3)\n"
        "    print(json.dumps({'connected': s.getpeername()[0]}))\n"
        "except OSError as e:\n"
        "    print(json.dumps({'refused': e.errno}))\n")])
    down = json.loads(probe.stdout)
    agent = node.start_agent(manifests)
    load.join(timeout=90)
    try:
        proc = result["proc"]
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outcome = json.loads(proc.stdout)
        if on_proxy_down == "fail_closed":
            assert "refused" in down, down
        else:
            assert down == {"connected": node.topo.provider_addr}, down
            deadline = time.monotonic() + 15
            while node.metric('sluice_redirect_events_total{event="fail_open"}') < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert node.metric('sluice_redirect_events_total{event="fail_open"}') >= 1
        assert outcome["done"], outcome
        # Every request the client saw complete is in the ledger, attributed to the pod.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            fresh = [r for r in node.interactions() if r["id"] not in before
                     and (r["identity"].get("kubernetes") or {}).get("pod") == spec["metadata"]["name"]]
            prompts = {r["request"]["messages"][-1]["content"] for r in fresh if r.get("status") == 200}
            if all(f"load {i}" in prompts for i in outcome["done"]):
                break
            time.sleep(0.3)
        missing = [i for i in outcome["done"] if f"load {i}" not in prompts]
        assert not missing, f"completed but not recorded: {missing}"
    finally:
        agent.stop()
        node.agent = None


def test_an_api_that_refuses_the_agent_leaves_the_names_from_the_kubelet_files(node, webhook):
    """RBAC refuses (here: the API answers 401 to the agent's token): the agent counts the
    errors, keeps serving, and records still name namespace, pod and container."""
    _, hook_manifests = webhook
    right = node.api.token
    node.api.token = "another-token"
    agent = node.start_agent(node.render("fail_closed"))
    try:
        spec = copy.deepcopy(WEB_POD)
        spec["metadata"]["name"] = "web-no-api"
        out = patched(call_webhook(hook_manifests, node.webhook_port, admission_review(spec, "team-b")), spec)
        pod = KubeletPod(node, "team-b", out)
        pod.run_init_containers()
        node.api.put(pod_object(pod.name, "team-b", pod.uid, NODE_NAME, {"app": "web"}, "default",
                                {c: cid for c, (cid, _) in pod.containers.items()}))
        deadline = time.monotonic() + 20
        while node.metric("sluice_kubernetes_api_errors_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert node.metric("sluice_kubernetes_api_errors_total") >= 1, agent.logs("agent")
        web = pod.run("web", ["node", "chat.mjs", "without the API"], cwd=REPO / "tests" / "node")
        assert web.returncode == 0, web.stdout + web.stderr
        deadline = time.monotonic() + 20
        mine = []
        while not mine and time.monotonic() < deadline:
            mine = [r for r in node.interactions()
                    if (r["identity"].get("kubernetes") or {}).get("pod") == "web-no-api"]
            time.sleep(0.2)
        assert mine, "recorded"
        k = mine[0]["identity"]["kubernetes"]
        assert (k["namespace"], k["container"]) == ("team-b", "web")
        assert "labels" not in k and "service_account" not in k, "nothing the API did not give"
    finally:
        node.api.token = right
        agent.stop()
        node.agent = None
