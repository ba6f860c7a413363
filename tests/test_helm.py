"""The Helm chart, offline: rendered by Helm's own Go library (helm-python-sdk) for the
default values and every documented option, linted, and each manifest validated against
the Kubernetes OpenAPI schemas (kubernetes-validate --strict) for 1.30, 1.33 and the
newest the validator ships. No cluster runs here: what the API server alone checks
(admission, quota, the real webhook call) is not covered; test_kubernetes_node.py runs
the rendered pod spec itself on a node without a kubelet."""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

REPO = Path(os.environ.get("SLUICE_REPO", Path(__file__).resolve().parents[1]))
CHART = REPO / "helm" / "sluice"
GOLDEN = Path(__file__).parent / "golden" / "helm-default.yaml"
RELEASE, NAMESPACE = "sluice", "sluice-system"
KUBE_VERSIONS = ["1.30.0", "1.33.0", kubernetes_validate.latest_version()]

# Every documented option, in combinations that exercise each template branch.
OPTIONS = {
    "default": {},
    "existing-secrets-and-shared-claim": {
        "ca": {"existingSecret": "corp-ca"},
        "fleet": {"redis": {"urlSecret": "sluice-redis", "timeoutMs": 80}, "nodes": 20,
                  "central": {"urlSecret": "sluice-postgres"}},
        "ledger": {"keysSecret": "sluice-ledger-keys", "existingClaim": "sluice-ledger"},
    },
    "webhook-and-service-off": {
        "webhook": {"enabled": False},
        "dashboards": {"enabled": False},
        "metrics": {"service": {"enabled": False}},
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "fullnameOverride": "ai-governance",
    },
    "monitoring-on": {
        "monitoring": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
                       "serviceMonitor": {"enabled": True, "interval": "15s"}},
        "dashboards": {"annotations": {"grafana_folder": "Sluice"}},
    },
    "hardened-and-tuned": {
        "agent": {
            "onProxyDown": "fail_closed",
            "capabilitiesModern": True,
            "podMetadataFromAPI": False,
            "bpffsInit": True,
            "threads": 4,
            "maxUnavailable": "20%",
            "cgroupRoot": "/sys/fs/cgroup/unified",
            "extraEnv": [{"name": "RUST_LOG", "value": "debug"},
                         {"name": "HEC_TOKEN", "valueFrom": {"secretKeyRef": {"name": "splunk-hec", "key": "token"}}}],
            "podAnnotations": {"example.com/team": "platform"},
            "podLabels": {"example.com/tier": "node"},
            "extraVolumes": [{"name": "egress-ca", "configMap": {"name": "egress-ca"}}],
            "extraVolumeMounts": [{"name": "egress-ca", "mountPath": "/etc/egress-ca", "readOnly": True}],
        },
        "ledger": {
            "retentionDays": 365,
            "contentMode": "metadata",
            "witnesses": [{"url": "https://witness.example.com", "key": "witness.example.com/w1+073f274a+BGcWLMYnbChi9BntgzY1083h8pUBTjbIlqoRPYXbjHC6"}],
        },
        "webhook": {
            "replicas": 1,
            "failurePolicy": "Fail",
            "bundlePaths": ["/etc/ssl/certs/ca-certificates.crt"],
        },
        "networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.0/24"]},
        "config": {
            "policy": {"policies": [{"id": "models", "models": {"allow": ["gpt-4o*"]}}]},
            "upstream": {"ca_file": "/etc/egress-ca/ca.crt"},
            # A SIEM sink whose token comes from a Secret through the environment, an
            # alert channel, and a rule of one's own.
            "sinks": [{"name": "splunk", "content": "metadata",
                       "splunk_hec": {"url": "https://splunk.example.com:8088", "token": {"value": "${HEC_TOKEN}"}}},
                      {"name": "pager", "filter": {"severities": ["critical"]},
                       "pagerduty": {"routing_key": {"value": "${HEC_TOKEN}"}}}],
            "alerts": {"disable": ["new_caller"],
                       "rules": [{"name": "team_spend", "per": ["team"], "measure": "cost_usd",
                                  "window": "1h", "threshold": 50}]},
        },
        "image": {"repository": "registry.example.com/sluice", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
    },
}


def render(values: dict) -> dict[str, str]:
    chart = helm_python.Chart.load(CHART)
    try:
        return chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()


def manifests(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {name: manifests(render(values)) for name, values in OPTIONS.items()}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_manifest_validates_strictly(renders, option, kube):
    docs = renders[option]
    assert docs, option
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's CRDs: test_monitoring_objects
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{option}: {doc['kind']}/{doc['metadata']['name']} on {kube}: {e}")


@pytest.mark.parametrize("kube", ["v1.30.0", "v1.33.0"])
def test_lint_is_clean(kube):
    for values in OPTIONS.values():
        report = helm_python.lint(
            CHART, copy.deepcopy(values), strict=True, namespace=NAMESPACE, kube_version=kube
        )
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], report


@pytest.mark.parametrize(
    "values, field",
    [
        ({"agent": {"onProxyDown": "maybe"}}, "onProxyDown"),
        ({"agent": {"capabilities": ["CAP_BPF"]}}, "capabilities"),
        ({"ledger": {"contentMode": "everything"}}, "contentMode"),
        ({"webhook": {"failurePolicy": "Sometimes"}}, "failurePolicy"),
        ({"agent": {"prot": 1}}, "prot"),
        ({"agent": {"cgroupRoot": "sys/fs/cgroup"}}, "cgroupRoot"),
    ],
)
def test_the_schema_refuses_bad_values_by_name(values, field):
    with pytest.raises(helm_python.HelmError) as e:
        render(values)
    assert field in str(e.value)


def test_the_default_render_matches_the_golden_file(renders):
    """What changes in the chart's output shows in review. Generated keys and
    certificates (new at each render) and their checksums are replaced by placeholders;
    regenerate with SLUICE_UPDATE_GOLDEN=1."""
    text = normalise(render({}))
    if os.environ.get("SLUICE_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "run with SLUICE_UPDATE_GOLDEN=1 and review the diff"


def normalise(rendered: dict[str, str]) -> str:
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("dashboards.yaml"):
            # The dashboards' own test checks their content (test_dashboards.py).
            text = "# the dashboards ConfigMap: test_dashboards_ship_in_a_sidecar_configmap checks it"
        text = re.sub(r"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", r"<\1>", text, flags=re.S)
        text = re.sub(r"((?:tls\.crt|tls\.key|ca\.crt|caBundle): )[A-Za-z0-9+/=]{40,}", r"\1<base64>", text)
        text = re.sub(r"(checksum/tls: )[0-9a-f]{64}", r"\1<sha256>", text)
        out.append(f"# {path}\n{text.rstrip()}\n")
    return "\n".join(out)


def test_agent_pod_spec_is_what_the_readme_promises(renders):
    ds = by_kind(renders["default"], "DaemonSet")[0]
    pod = ds["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"]["add"] == [
        "SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"
    ]
    assert pod["hostNetwork"] and pod["hostPID"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    for path in ("/sys/fs/bpf", "/run/sluice/cgroup", "/var/lib/sluice", "/etc/sluice/ca"):
        assert path in mounts, path
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/sluice"
    # Read-only on pods, for the pod watch; nothing else.
    role = by_kind(renders["default"], "ClusterRole")[0]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert pod["automountServiceAccountToken"] is True
    off = by_kind(renders["hardened-and-tuned"], "DaemonSet")[0]["spec"]["template"]["spec"]
    assert off["automountServiceAccountToken"] is False
    assert not by_kind(renders["hardened-and-tuned"], "ClusterRole"), "no API access, no RBAC"

    modern = by_kind(renders["hardened-and-tuned"], "DaemonSet")[0]["spec"]["template"]["spec"]
    caps = modern["containers"][0]["securityContext"]["capabilities"]["add"]
    assert "SYS_ADMIN" not in caps and {"BPF", "PERFMON"} <= set(caps)
    assert modern["initContainers"][0]["securityContext"]["privileged"] is True


def test_the_rendered_config_is_valid_sluice_config(renders, tmp_path):
    """`sluice policy lint` checks the ConfigMap's sluice.yaml as the agent will read it,
    with NODE_IP as the downward API sets it."""
    for option in ("default", "hardened-and-tuned", "existing-secrets-and-shared-claim"):
        cm = next(
            d for d in by_kind(renders[option], "ConfigMap") if d["metadata"]["name"].endswith("-config")
        )
        path = tmp_path / f"{option}.yaml"
        path.write_text(cm["data"]["sluice.yaml"])
        env = {**os.environ, "NODE_IP": "10.1.2.3", "NODE_NAME": "node-1",
               "REDIS_URL": "redis://:secret@redis.sluice-system:6379/0",
               "DATABASE_URL": "postgres://sluice:secret@pg.sluice-system:5432/sluice",
               "HEC_TOKEN": "0123-hec-token"}
        lint = subprocess.run(
            [os.environ["SLUICE_BIN"], "policy", "lint", "--file", str(path)],
            capture_output=True, text=True, env=env,
        )
        assert lint.returncode == 0, (option, lint.stdout, lint.stderr)


def test_webhook_is_ignore_on_failure_and_never_touches_system_namespaces(renders):
    docs = renders["default"]
    hook = by_kind(docs, "MutatingWebhookConfiguration")[0]["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    exprs = {e["key"]: e for e in hook["namespaceSelector"]["matchExpressions"]}
    assert exprs["sluice.dev/inject"] == {"key": "sluice.dev/inject", "operator": "In", "values": ["enabled"]}
    assert {"kube-system", NAMESPACE} <= set(exprs["kubernetes.io/metadata.name"]["values"])
    # The caBundle is the CA that signed the serving certificate the webhook presents.
    secret = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-webhook-tls"))
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == base64.b64decode(secret["data"]["ca.crt"])
    deploy = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    org_ca = next(v for v in deploy["volumes"] if v["name"] == "org-ca")
    assert org_ca["secret"]["items"] == [{"key": "tls.crt", "path": "ca.crt"}], "never the CA key"
    assert deploy["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_dashboards_ship_in_a_sidecar_configmap(renders):
    cm = next(d for d in by_kind(renders["default"], "ConfigMap") if d["metadata"]["name"].endswith("-dashboards"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name in ("sluice-overview.json", "sluice-operations.json"):
        assert cm["data"][name] == (REPO / "deploy" / "dashboards" / name).read_text()
    assert not any(d["metadata"]["name"].endswith("-dashboards")
                   for d in by_kind(renders["webhook-and-service-off"], "ConfigMap"))


def test_monitoring_objects(renders):
    """The PrometheusRule carries deploy/prometheus/sluice-rules.yml as is (the chart's copy
    is kept equal); the ServiceMonitor scrapes the metrics Service's port."""
    deploy_rules = REPO / "deploy" / "prometheus" / "sluice-rules.yml"
    assert (CHART / "rules" / "sluice-rules.yml").read_text() == deploy_rules.read_text(), \
        "copy deploy/prometheus/sluice-rules.yml to helm/sluice/rules/"
    docs = renders["monitoring-on"]
    rule = by_kind(docs, "PrometheusRule")[0]
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"]["groups"] == yaml.safe_load(deploy_rules.read_text())["groups"]
    monitor = by_kind(docs, "ServiceMonitor")[0]
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-metrics"))
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert not by_kind(renders["default"], "PrometheusRule"), "off unless the CRDs are there"


def test_the_fleets_redis_url_comes_from_a_secret_never_the_configmap(renders):
    """With fleet.redis.urlSecret (and fleet.central.urlSecret) the agent reads REDIS_URL
    (DATABASE_URL) from the Secret, and the config names only the variable (a password in
    it stays out of the ConfigMap)."""
    docs = renders["existing-secrets-and-shared-claim"]
    agent = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in agent["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sluice-redis", "key": "url"}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sluice-postgres", "key": "url"}
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config"))
    fleet = yaml.safe_load(cm["data"]["sluice.yaml"])["fleet"]
    assert fleet == {"node_id": "${NODE_NAME}", "nodes": 20,
                     "redis": {"url": "${REDIS_URL}", "timeout_ms": 80, "lease_ttl_ms": 30000,
                               "connections": 16}}
    assert yaml.safe_load(cm["data"]["sluice.yaml"])["ledger"]["central"] == {"url": "${DATABASE_URL}"}
    default = next(d for d in by_kind(renders["default"], "ConfigMap") if d["metadata"]["name"].endswith("-config"))
    assert "fleet" not in yaml.safe_load(default["data"]["sluice.yaml"])
