"""The part of the Kubernetes API a pod watch uses, over HTTPS with a bearer token.

No API server can run here. This one answers the two calls the agent's watch makes, as
the API reference documents them: `GET /api/v1/pods?fieldSelector=…` (a `PodList` with
its `resourceVersion`, pages of `limit` with `continue`) and the same with `watch=true`
(a chunked stream of `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": …}` lines from the
given `resourceVersion`). Field selectors on `spec.nodeName` are applied; anything else
gets 400, a wrong token 401 — so a client that watches more than its node, or without
credentials, fails here as it would on a cluster. It writes a kubeconfig for clients.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class FakeKubeApi:
    def __init__(self, workdir: Path, token: str = "sluice-test-token"):
        self.token = token
        self.pods: dict[str, dict] = {}
        self.history: list[tuple[int, str, dict]] = []  # (resourceVersion, type, pod)
        self.rv = 1
        self.requests: list[str] = []
        self.cond = threading.Condition()
        self.closing = False
        ca, cert, key = self._certificate(workdir)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "node",
            "clusters": [{"name": "fake", "cluster": {
                "server": f"https://127.0.0.1:{self.port}",
                "certificate-authority-data": base64.b64encode(Path(ca).read_bytes()).decode()}}],
            "users": [{"name": "agent", "user": {"token": token}}],
            "contexts": [{"name": "node", "context": {"cluster": "fake", "user": "agent"}}],
        }))

    @staticmethod
    def _certificate(workdir: Path) -> tuple[str, str, str]:
        """A CA and the server's certificate for 127.0.0.1 (webpki refuses a CA as a
        server certificate); returns (CA path, certificate path, key path)."""
        now = datetime.datetime.now(datetime.timezone.utc)

        def build(subject: str, issuer_name, issuer_key, key, ca: bool):
            b = (x509.CertificateBuilder()
                 .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                 .issuer_name(issuer_name).public_key(key.public_key())
                 .serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(minutes=5))
                 .not_valid_after(now + datetime.timedelta(days=1))
                 .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
            if not ca:
                b = b.add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            return b.sign(issuer_key, hashes.SHA256())

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake kubernetes CA")])
        ca = build("fake kubernetes CA", ca_name, ca_key, ca_key, True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build("kube-apiserver", ca_name, ca_key, key, False)
        paths = workdir / "ca.crt", workdir / "apiserver.crt", workdir / "apiserver.key"
        paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return tuple(str(p) for p in paths)

    def put(self, pod: dict) -> None:
        """Adds or updates a pod (as the scheduler and kubelet would)."""
        with self.cond:
            self.rv += 1
            pod = json.loads(json.dumps(pod))
            pod["metadata"]["resourceVersion"] = str(self.rv)
            kind = "MODIFIED" if pod["metadata"]["uid"] in self.pods else "ADDED"
            self.pods[pod["metadata"]["uid"]] = pod
            self.history.append((self.rv, kind, pod))
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": reason, "message": message, "code": code})

            def do_GET(self):
                api.requests.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._status(401, "Unauthorized", "Unauthorized")
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/api/v1/pods":
                    return self._status(404, "NotFound", f"{url.path}: not served here")
                q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
                node = None
                for term in filter(None, q.get("fieldSelector", "").split(",")):
                    field, _, value = term.partition("=")
                    if field != "spec.nodeName":
                        return self._status(400, "BadRequest", f"field selector {term!r} not supported here")
                    node = value.lstrip("=")

                def selected(pod: dict) -> bool:
                    return node is None or pod["spec"].get("nodeName") == node

                if q.get("watch") in ("true", "1"):
                    return self._watch(int(q.get("resourceVersion") or 0), selected,
                                       float(q.get("timeoutSeconds", 300)))
                with api.cond:
                    items = [p for p in api.pods.values() if selected(p)]
                    rv = api.rv
                self._json(200, {"kind": "PodList", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": str(rv)}, "items": items})

            def _watch(self, since: int, selected, timeout: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                deadline = threading.Event()
                timer = threading.Timer(timeout, deadline.set)
                timer.start()
                try:
                    while not deadline.is_set():
                        with api.cond:
                            fresh = [(rv, t, p) for rv, t, p in api.history if rv > since]
                            if not fresh:
                                api.cond.wait(timeout=0.5)
                                if api.closing:
                                    break
                                continue
                        for rv, kind, pod in fresh:
                            since = rv
                            if selected(pod):
                                line = json.dumps({"type": kind, "object": pod}).encode() + b"\n"
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                                self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass
                finally:
                    timer.cancel()

        return Handler


def pod_object(name: str, namespace: str, uid: str, node: str, labels: dict,
               service_account: str, containers: dict[str, str]) -> dict:
    """A pod as the API returns it, with its containers' ids in the status."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": service_account,
                 "containers": [{"name": c, "image": "app"} for c in containers]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": c, "containerID": f"containerd://{cid}", "image": "app", "imageID": "",
             "ready": True, "restartCount": 0} for c, cid in containers.items()]},
    }
