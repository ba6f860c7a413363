"""The audit trail against someone with write access to the node.

Real traffic goes through the proxy while `sluice witness` runs in another network
namespace and cosigns the ledger's checkpoints. Then the ledger directory is edited the
way node root could: tail cuts with and without their checkpoints, deleted checkpoints,
a wipe and re-create, index columns, and a full rewrite by someone holding every key of
the node. Each must make `sluice audit verify --public-key … --witness … --witness-key …`
exit non-zero naming the break; the untouched ledger verifies with every check run.

The checkpoint and cosignature bytes are parsed field by field here and their Ed25519
signatures checked with `cryptography`, and the Merkle roots recomputed with a Python
RFC 6962 implementation, so the formats are checked by code that shares nothing with
Sluice's. (A forged inbox file is tested in test_ledger.py.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (Encoding, PublicFormat,
                                                          load_pem_private_key,
                                                          load_pem_public_key)

from netns import Proc, run, sluice_bin, venv_python, wait_for_port
from sluice_stack import Stack

WITNESS = "witness.test/w1"
PORT = 7380
S3_PORT = 7381
BUCKET = "sluice-ledger"
EVERY = 4
CHAT = '{"model":"gpt-4o","messages":[{"role":"user","content":"audit me"}]}'


# --- RFC 6962 and C2SP, written from the texts -------------------------------------------

def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1 Merkle tree hash over raw leaf inputs."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def frontier(leaves: list[bytes]) -> list[str]:
    """Roots of the perfect subtrees tiling the tree, largest first (hex)."""
    out, start, n = [], 0, len(leaves)
    for bit in range(63, -1, -1):
        if n & (1 << bit):
            out.append(mth(leaves[start:start + (1 << bit)]).hex())
            start += 1 << bit
    return out


def key_id(name: str, alg: int, pub: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + pub).digest()[:4]


def parse_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    text, _, sigs = note.rpartition("\n\n")
    out = []
    for line in sigs.splitlines():
        assert line.startswith("\u2014 "), line
        name, b64 = line[2:].split(" ")
        out.append((name, base64.b64decode(b64)))
    return text + "\n", out


# --- the node, its witness, and helpers ---------------------------------------------------

class Node:
    """The stack with a witness in the provider namespace configured as its witness, and
    with `s3`, an S3-compatible server there (moto) whose Object Lock bucket keeps every
    checkpoint too. `extra_config` is appended to the config (other top-level sections)."""

    def __init__(self, topo, tmp_path: Path, s3: bool = False, extra_config: str = ""):
        self.topo, self.tmp = topo, tmp_path
        self.wdir = tmp_path / "witness"
        self.wkey = run([str(sluice_bin()), "witness", "key", "--dir", str(self.wdir),
                         "--name", WITNESS]).stdout.strip()
        self.url = f"http://{topo.provider_addr}:{PORT}"
        archive = ""
        self.moto = None
        if s3:
            self.s3_url = f"http://{topo.provider_addr}:{S3_PORT}"
            self.moto = Proc(["ip", "netns", "exec", topo.provider.name,
                              str(Path(venv_python()).parent / "moto_server"),
                              "-H", topo.provider_addr, "-p", str(S3_PORT)],
                             tmp_path / "moto.log")
            wait_for_port(topo.provider_addr, S3_PORT, timeout=30, netns=topo.provider)
            self.s3().create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
            archive = f"""    - s3:
        endpoint: "{self.s3_url}"
        bucket: "{BUCKET}"
        prefix: "node-a/"
        retention_days: 1
"""
        self.stack = Stack(topo, tmp_path, start=False, extra_config=f"""ledger:
  checkpoint_every: {EVERY}
  checkpoint_interval: 1s
  witnesses:
    - url: "{self.url}"
      key: "{self.wkey}"
{archive}{extra_config}""")
        self.ledger = self.stack.state / "ledger"
        self.vkey = self.stack.cli("audit", "checkpoint-key").stdout.strip()
        self.origin = self.vkey.split("+")[0]
        self.trusted = tmp_path / "trusted.pub.pem"
        shutil.copy(self.ledger / "checkpoint.pub.pem", self.trusted)
        self.witness = None
        self.start_witness()
        self.stack.start_proxy()

    def s3(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1")

    def archived(self) -> list[dict]:
        """Every version of every checkpoint object in the bucket."""
        return self.s3().list_object_versions(Bucket=BUCKET).get("Versions", [])

    def start_witness(self):
        self.witness = Proc(
            ["ip", "netns", "exec", self.topo.provider.name, sluice_bin(), "witness", "serve",
             "--dir", str(self.wdir), "--name", WITNESS, "--listen", f"{self.topo.provider_addr}:{PORT}",
             "--log", self.vkey],
            self.tmp / f"witness-{time.monotonic_ns()}.log")
        wait_for_port(self.topo.provider_addr, PORT, timeout=20, netns=self.topo.provider)

    def traffic(self, n: int):
        for _ in range(n):
            self.stack.curl("-o", "/dev/null", "-H", "content-type: application/json",
                            "--data-binary", CHAT, "https://api.openai.com/v1/chat/completions")

    def witness_file(self, name: str) -> list[dict]:
        log = hashlib.sha256(self.origin.encode()).hexdigest()[:32]
        with urllib.request.urlopen(f"{self.url}/logs/{log}/{name}", timeout=10) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def head(self) -> int:
        con = sqlite3.connect(self.ledger / "ledger.sqlite")
        (n,) = con.execute("select coalesce(max(seq), 0) from records").fetchone()
        con.close()
        return n

    def wait_witnessed(self, timeout: float = 30) -> int:
        """Until the witness holds the ledger's newest checkpoint; returns its size."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            con = sqlite3.connect(self.ledger / "ledger.sqlite")
            (cp,) = con.execute("select coalesce(max(seq), 0) from checkpoints").fetchone()
            con.close()
            held = self.witness_file("history")
            if cp and held and held[-1]["size"] == cp:
                return cp
            time.sleep(0.3)
        raise AssertionError(f"the witness never caught up: {self.witness.tail()}")

    def verify(self, *extra: str, tlog: bool = True, s3: bool = True):
        """`audit verify` as an auditor runs it: with the tlog witness's URL and key on the
        command line, and the config's Object Lock bucket if any. `tlog=False` leaves the
        witness out, `s3=False` the bucket (both: on the node alone)."""
        args = ["audit", "verify", "--public-key", str(self.trusted)]
        if tlog:
            args += ["--witness", self.url, "--witness-key", self.wkey]
        text = self.stack.config.read_text()
        head, _, block = text.partition("  witnesses:\n")
        entries = [e for e in block.split("    - ") if e.strip()]
        keep = [e for e in entries if (s3 if e.startswith("s3:") else tlog)]
        config = self.tmp / "verify.yaml"
        config.write_text(head + ("  witnesses:\n" + "".join("    - " + e for e in keep)
                                  if keep else ""))
        r = run([str(sluice_bin()), *args, *extra, "--config", str(config)], check=False,
                timeout=60)
        return r.returncode, r.stdout + r.stderr


def unpack(con, blob) -> str:
    if isinstance(blob, str):
        return blob
    (d,) = con.execute("select bytes from dictionaries where id = ?", (blob[0],)).fetchone()
    return zstandard.ZstdDecompressor(
        dict_data=zstandard.ZstdCompressionDict(d)).decompress(blob[1:]).decode()


def forge_with_every_key(ledger: Path, origin: str, seq: int, old: str, new: str) -> None:
    """What node root holding the HMAC and signing keys can do: edit one record, re-link
    the chain, re-MAC every record after it, rebuild the Merkle tree and re-sign every
    checkpoint. Nothing on the node can tell."""
    con = sqlite3.connect(ledger / "ledger.sqlite")
    text = (ledger / "hmac.key").read_bytes().strip()
    mac_key = bytes.fromhex(text.decode()) if len(text) >= 32 else text
    signer = load_pem_private_key((ledger / "checkpoint.key").read_bytes(), None)
    pub = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    rows = con.execute("select seq, meta, hash from records order by seq").fetchall()
    prev, leaves = b"\x00" * 32, []
    for s, blob, stored in rows:
        meta = unpack(con, blob)
        if s == seq:
            assert old in meta, meta
            meta = meta.replace(old, new)
        if s >= seq:
            meta = meta.replace(f'"prev_hash":"{json.loads(meta)["prev_hash"]}"',
                                f'"prev_hash":"{prev.hex()}"')
            h = hashlib.sha256(prev + meta.encode()).digest()
            mac = hmac.new(mac_key, h, hashlib.sha256).hexdigest()
            con.execute("update records set meta = ?, hash = ?, hmac = ? where seq = ?",
                        (meta, h.hex(), mac, s))
        else:
            h = bytes.fromhex(stored)
        prev = h
        leaves.append(h)
    con.execute("update records set model = 'gpt-4o-mini' where seq = ?", (seq,))
    for (s,) in con.execute("select seq from checkpoints").fetchall():
        body = f"{origin}\n{s}\n{base64.b64encode(mth(leaves[:s])).decode()}\n"
        sig = key_id(origin, 1, pub) + signer.sign(body.encode())
        note = f"{body}\n\u2014 {origin} {base64.b64encode(sig).decode()}\n"
        con.execute("update checkpoints set note = ?, hash = ?, frontier = ? where seq = ?",
                    (note, leaves[s - 1].hex(), json.dumps(frontier(leaves[:s])), s))
    con.commit()
    con.close()
    for seg in ledger.glob("wal-*.jsonl"):
        seg.unlink()


@pytest.fixture
def node(topo, tmp_path):
    n = Node(topo, tmp_path)
    yield n
    n.witness.stop()


@pytest.fixture
def archived_node(topo, tmp_path, monkeypatch):
    # The S3 credentials the node signs with (moto takes any).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSLUICETEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sluice-test-secret")
    n = Node(topo, tmp_path, s3=True)
    yield n
    n.witness.stop()
    n.moto.stop()


# --- the tests ----------------------------------------------------------------------------

def test_an_untouched_ledger_verifies_against_its_witness_with_every_check_run(node):
    node.traffic(6)
    node.stack.proxy.stop()
    size = node.wait_witnessed()
    assert size == node.head(), "the final checkpoint at a clean stop reaches the witness"
    code, out = node.verify()
    assert code == 0, out
    assert "NOT checked" not in out, out
    for line in ("hash chain", "HMACs, with key ids", f"public key {node.trusted}",
                 "Merkle tree heads (RFC 6962)", "checkpoint coverage",
                 f"witness {WITNESS}: ", "witness quorum: 1 of 1"):
        assert line in out, (line, out)

    # The cosigned checkpoint, field by field (C2SP tlog-checkpoint, signed-note,
    # tlog-cosignature), checked with keys and code that share nothing with Sluice.
    entry = node.witness_file("history")[-1]
    body, sigs = parse_note(entry["checkpoint"])
    origin, size_line, root_b64, rest = body.split("\n")
    assert (origin, rest) == (node.origin, "")
    assert size_line == str(size) and not size_line.startswith("0")
    root = base64.b64decode(root_b64, validate=True)
    assert len(root) == 32
    con = sqlite3.connect(node.ledger / "ledger.sqlite")
    hashes = [bytes.fromhex(h) for (h,) in con.execute("select hash from records order by seq")]
    con.close()
    assert root == mth(hashes[:size]), "the root is RFC 6962 over the records' chain hashes"
    node_pub = load_pem_public_key(node.trusted.read_bytes()).public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    (name, raw), (wname, wraw) = sigs
    assert name == node.origin and len(raw) == 4 + 64
    assert raw[:4] == key_id(node.origin, 0x01, node_pub)
    Ed25519PublicKey.from_public_bytes(node_pub).verify(raw[4:], body.encode())
    wpub = base64.b64decode(node.wkey.split("+", 2)[2])[1:]
    assert wname == WITNESS and len(wraw) == 4 + 8 + 64
    assert wraw[:4] == key_id(WITNESS, 0x04, wpub)
    ts = int.from_bytes(wraw[4:12], "big")
    assert abs(ts - time.time()) < 600
    Ed25519PublicKey.from_public_bytes(wpub).verify(
        wraw[12:], f"cosignature/v1\ntime {ts}\n".encode() + body.encode())

    # One record exported with its inclusion proof checks offline against the cosigned
    # checkpoint; edited, or held against another checkpoint, it does not.
    export = node.tmp / "proofs.jsonl"
    node.stack.cli("audit", "export", "--format", "jsonl", "--with-proofs", "--out", str(export))
    lines = [json.loads(l) for l in export.read_text().splitlines()]
    assert len(lines) == size and all("sluice_proof" in l for l in lines)

    def check(records, *extra):
        f = node.tmp / "check.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in records))
        r = run([str(sluice_bin()), "audit", "check-record", "--file", str(f), "--public-key",
                 str(node.trusted), "--witness-key", node.wkey, *extra], check=False)
        return r.returncode, r.stdout + r.stderr

    interaction = next(l for l in lines if l["kind"] == "interaction")
    code, out = check([interaction])
    assert code == 0 and f"cosigned by {WITNESS}" in out, out
    assert f"tree of size {size}" in out, out
    edited = json.loads(json.dumps(interaction))
    edited["model"] = "gpt-3.5-turbo"
    code, out = check([edited])
    assert code != 0 and "differ from the hashed metadata" in out, out
    older = next(e for e in node.witness_file("history") if e["size"] < size)
    other = json.loads(json.dumps(interaction))
    other["sluice_proof"]["checkpoint"] = older["checkpoint"]
    code, out = check([other])
    assert code != 0 and "FAILED" in out, out
    code, out = check(lines)
    assert code == 0 and out.count("ok: seq") == size, out


def test_every_tamper_fails_verify_naming_the_break(node, tmp_path):
    node.traffic(9)
    node.stack.proxy.stop()
    node.wait_witnessed()
    head = node.head()
    pristine = tmp_path / "pristine"
    shutil.copytree(node.ledger, pristine)

    def restore():
        shutil.rmtree(node.ledger)
        shutil.copytree(pristine, node.ledger)

    def sql(*stmts):
        con = sqlite3.connect(node.ledger / "ledger.sqlite")
        for s in stmts:
            con.execute(s)
        con.commit()
        con.close()

    def expect(kind: str, *words: str):
        """verify fails, with a problem of `kind` (first line or an `also` line)."""
        code, out = node.verify()
        assert code != 0, out
        assert out.startswith("FAILED"), out
        problems = [l for l in out.splitlines() if l.startswith(("FAILED", "  also at seq"))]
        assert any(f": {kind} — " in p or f"{kind} — " in p for p in problems), (kind, out)
        for w in words:
            assert w in out, (w, out)
        return out

    # The newest records and their checkpoint cut, as if the ledger ended earlier.
    cut = head - 3
    sql(f"delete from records where seq > {cut}", f"delete from checkpoints where seq > {cut}")
    for seg in node.ledger.glob("wal-*.jsonl"):
        seg.unlink()
    expect("truncated", f"records {cut + 1}..={head} are gone")
    # Records alone cut (their checkpoint kept): the chain's own checkpoint says so too.
    restore()
    sql(f"delete from records where seq > {cut}")
    for seg in node.ledger.glob("wal-*.jsonl"):
        seg.unlink()
    expect("deleted", f"chain ends at {cut}")
    expect("truncated", f"ledger ends at seq {cut}")
    # Every checkpoint deleted: missing from the cadence, and the witness still holds them.
    restore()
    sql("delete from checkpoints")
    for seg in node.ledger.glob("wal-*.jsonl"):
        seg.unlink()
    out = expect("missingcheckpoint")
    assert "truncated" not in out
    # Index columns that reports read, each edited.
    for stmt, column in (("update records set cost_usd = 999 where seq = 3", "cost_usd"),
                         ("update records set ts_ms = 0 where seq = 3", "ts_ms"),
                         ("update records set provider = 'evilcorp' where seq = 3", "provider")):
        restore()
        sql(stmt)
        expect("edited", f"column `{column}` of seq 3")
    # An answer's text edited in the write-ahead copy of a record also in the index.
    restore()
    segs = [p for p in node.ledger.glob("wal-*.jsonl") if "Mock reply to" in p.read_text()]
    assert segs, "the open segment keeps the records since it was started"
    segs[0].write_text(segs[0].read_text().replace("Mock reply to", "Mock reply by", 1))
    expect("edited", "differs between the index and WAL segment")
    # Wiped and re-created: a fresh ledger with new keys where the old one was.
    restore()
    shutil.rmtree(node.ledger)
    node.stack.start_proxy()
    node.stack.proxy.stop()
    out = expect("truncated", f"witness {WITNESS} cosigned tree size {head}")

    # A full rewrite by someone holding every key on the node: on the node alone nothing
    # shows it (the limit the README states), the witness does.
    restore()
    forge_with_every_key(node.ledger, node.origin, 4, '"model":"gpt-4o"', '"model":"gpt-4o-mini"')
    code, out = node.verify(tlog=False, s3=False)
    assert code == 0, "a rewrite with every key passes on the node alone:\n" + out
    expect("rewritten", f"tree head witness {WITNESS} cosigned")
    # The node carries on from the rewritten ledger: the witness refuses its next
    # checkpoint (not an extension of what it cosigned) and keeps it as evidence.
    node.stack.start_proxy()
    node.traffic(1)
    node.stack.proxy.stop()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not node.witness_file("evidence"):
        time.sleep(0.3)
    evidence = node.witness_file("evidence")
    assert evidence and "consistency proof" in evidence[0]["reason"], evidence
    out = expect("rewritten", "refused:", "consistency proof")


def test_a_witness_down_for_a_while_catches_up_and_the_lag_rises_and_falls(node):
    node.traffic(2)
    node.wait_witnessed()
    series = f'sluice_ledger_witness_lag_seconds{{witness="{WITNESS}"}}'
    assert node.stack.metric(series) == 0
    node.witness.stop()
    node.traffic(5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and node.stack.metric(series) < 2:
        time.sleep(0.3)
    assert node.stack.metric(series) >= 2, node.stack.metrics()
    assert node.stack.metric(
        f'sluice_ledger_witness_errors_total{{reason="unreachable",witness="{WITNESS}"}}') >= 1
    # The ledger alerts' series are live on this node (that every series any rule reads is
    # one Sluice exports is checked against the registry: metrics::catalogue's test).
    exported = {line.split("{")[0].split(" ")[0] for line in node.stack.metrics().splitlines()
                if line.startswith("sluice_")}
    ledger_series = {"sluice_ledger_witness_lag_seconds", "sluice_ledger_witness_errors_total",
                     "sluice_ledger_append_errors_total"}
    assert ledger_series <= exported, ledger_series - exported
    node.start_witness()
    size = node.wait_witnessed(timeout=90)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and node.stack.metric(series) != 0:
        time.sleep(0.3)
    assert node.stack.metric(series) == 0
    assert node.stack.metric(f'sluice_ledger_witness_cosigned_size{{witness="{WITNESS}"}}') == size
    node.stack.proxy.stop()
    node.wait_witnessed()
    code, out = node.verify()
    assert code == 0, out


def test_an_object_lock_bucket_keeps_every_checkpoint_and_catches_a_rewrite(archived_node):
    node = archived_node
    node.traffic(6)
    node.stack.proxy.stop()
    size = node.wait_witnessed()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        keys = {int(v["Key"].rsplit("/", 1)[1]) for v in node.archived()}
        if size in keys:
            break
        time.sleep(0.3)
    assert size in keys, node.archived()
    s3 = node.s3()
    # Object Lock is on, in compliance mode: a stored checkpoint cannot be deleted.
    newest = next(v for v in node.archived() if v["Key"].endswith(f"{size:020}"))
    head = s3.head_object(Bucket=BUCKET, Key=newest["Key"], VersionId=newest["VersionId"])
    assert head["ObjectLockMode"] == "COMPLIANCE", head
    with pytest.raises(Exception, match="AccessDenied"):
        s3.delete_object(Bucket=BUCKET, Key=newest["Key"], VersionId=newest["VersionId"])
    body = s3.get_object(Bucket=BUCKET, Key=newest["Key"])["Body"].read().decode()
    assert body.startswith(f"{node.origin}\n{size}\n"), body

    code, out = node.verify()
    assert code == 0, out
    assert f"witness s3://{BUCKET}/node-a/ (Object Lock bucket" in out, out
    assert "NOT checked" not in out, out

    # Root rewrites the ledger with every key and stores a matching checkpoint in the
    # bucket as well: the locked original still stands beside it.
    forge_with_every_key(node.ledger, node.origin, 3, '"model":"gpt-4o"', '"model":"gpt-4o-mini"')
    import sqlite3 as _sq
    con = _sq.connect(node.ledger / "ledger.sqlite")
    (note,) = con.execute("select note from checkpoints order by seq desc limit 1").fetchone()
    con.close()
    s3.put_object(Bucket=BUCKET, Key=newest["Key"], Body=note.encode())
    code, out = node.verify(tlog=False)
    assert code != 0, out
    assert f"rewritten — records" in out and f"s3://{BUCKET}/node-a/" in out, out
