//! The hashing scheme: canonical JSON, the content/metadata split, the chain hash, the
//! HMAC, the WAL line layout and checkpoint signatures. Everything that must be
//! computed the same way when writing and when verifying lives here, once.

use std::fmt::Write as _;

use hmac::Mac;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::ContentMode;
use crate::tlog::merkle::Frontier;
use crate::tlog::note::{CheckpointText, Note, NoteSigner, NoteVerifier};

/// `prev_hash` of the first record of a ledger: 32 zero bytes.
pub(crate) const GENESIS: [u8; 32] = [0u8; 32];

pub(crate) type HmacSha256 = hmac::Hmac<Sha256>;

/// SHA-256 of `bytes`, hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex_string(&Sha256::digest(bytes))
}

/// Append `bytes` as lowercase hex (what `hex::encode` gives, without its per-character
/// iterator).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
}

/// `bytes` as lowercase hex.
pub(crate) fn hex_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Decode a 64-hex-digit hash.
pub(crate) fn decode_hash(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

// === canonical JSON ===

/// Append the canonical form of `v` to `out`: object keys sorted by their UTF-8 bytes at
/// every depth, no insignificant whitespace, strings and numbers as serde_json writes
/// them. Sorting is done here rather than relying on serde_json's map type, so the form
/// does not change if some dependency turns on `preserve_order`.
pub(crate) fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Object(m) => {
            out.push('{');
            for (i, (k, v)) in sorted_entries(m).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_canonical(out, v);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, x);
            }
            out.push(']');
        }
        Value::String(s) => write_str(out, s),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

/// The entries of `m` in key order (UTF-8 bytes). serde_json's default map already
/// iterates in that order, which is checked (cheaply, without allocating) rather than
/// assumed; otherwise the keys are sorted here.
fn sorted_entries(m: &Map<String, Value>) -> SortedEntries<'_> {
    if m.keys().is_sorted() {
        SortedEntries::InOrder(m.iter())
    } else {
        let mut entries: Vec<(&String, &Value)> = m.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        SortedEntries::Sorted(entries.into_iter())
    }
}

enum SortedEntries<'a> {
    InOrder(serde_json::map::Iter<'a>),
    Sorted(std::vec::IntoIter<(&'a String, &'a Value)>),
}

impl<'a> Iterator for SortedEntries<'a> {
    type Item = (&'a String, &'a Value);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SortedEntries::InOrder(it) => it.next(),
            SortedEntries::Sorted(it) => it.next(),
        }
    }
}

pub(crate) fn write_str(out: &mut String, s: &str) {
    // serde_json's string escaping (RFC 8259, control characters as \uXXXX or short forms).
    // It escapes only `"`, `\\` and bytes below 0x20, so a string without those is
    // written as is, without serde_json's intermediate allocation.
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // Serialising a &str into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Whether `s` holds a byte serde_json escapes: `"`, `\\` or one below 0x20.
///
/// This scan was the appenders' largest single cost after SHA-256. Long strings (message
/// text) go through a fold without an early exit, which the compiler checks 16 bytes at a
/// time (`any` went byte by byte); short ones (keys, most values) eight bytes per step in
/// a `u64`, as the fold would take them a byte at a time below 16.
fn needs_escape(s: &[u8]) -> bool {
    if s.len() >= 32 {
        return s
            .iter()
            .fold(false, |e, &b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    }
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A high bit set where a byte of `w` is below `n` (n <= 0x80; exact as a yes/no).
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let special = |w: u64| {
        below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
    };
    let mut found = 0;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        found |= special(u64::from_ne_bytes(w));
    }
    // The tail, padded with spaces (which need no escape).
    let rest = chunks.remainder();
    let mut w = [b' '; 8];
    w[..rest.len()].copy_from_slice(rest);
    found |= special(u64::from_ne_bytes(w));
    found != 0
}

/// The canonical form of `v` as a new string.
pub(crate) fn canonical(v: &Value) -> String {
    let mut s = String::with_capacity(256);
    write_canonical(&mut s, v);
    s
}

// === content / metadata split ===

/// Content fields of an interaction record: `(object, field)`.
pub(crate) const CONTENT_FIELDS: [(&str, &str); 4] = [
    ("request", "messages"),
    ("request", "params"),
    ("response", "output"),
    ("response", "tool_calls"),
];

/// Move the content fields of an interaction out of `record` into a content object
/// `{"request": {...}, "response": {...}}`, applying `mode`. Other kinds have no content.
pub(crate) fn split_content(record: &mut Map<String, Value>, mode: ContentMode) -> Option<Value> {
    if record.get("kind").and_then(Value::as_str) != Some("interaction") {
        return None;
    }
    let mut content = Map::new();
    for (obj, field) in CONTENT_FIELDS {
        if let Some(Value::Object(part)) = record.get_mut(obj) {
            if let Some(v) = part.remove(field) {
                let entry = content
                    .entry(obj.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(e) = entry {
                    e.insert(field.to_string(), v);
                }
            }
        }
    }
    let mut content = Value::Object(content);
    if mode == ContentMode::Metadata {
        digest_content(&mut content);
    }
    Some(content)
}

/// Metadata mode: replace every text with its SHA-256 (hex of the UTF-8 bytes) so the
/// evidence can be matched later without the ledger holding the text.
fn digest_content(content: &mut Value) {
    let text_digest = |s: &str| Value::String(sha256_hex(s.as_bytes()));
    if let Some(Value::Array(msgs)) = content.pointer_mut("/request/messages") {
        for m in msgs.iter_mut() {
            if let Value::Object(m) = m {
                if let Some(c) = m.remove("content") {
                    let text = c
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| canonical(&c));
                    m.insert("content_chars".into(), text.chars().count().into());
                    m.insert("content_sha256".into(), text_digest(&text));
                }
            }
        }
    }
    if let Some(Value::Object(params)) = content.pointer_mut("/request/params") {
        for v in params.values_mut() {
            let digest = match v {
                Value::String(s) => text_digest(s),
                Value::Array(_) | Value::Object(_) => text_digest(&canonical(v)),
                _ => continue,
            };
            *v = serde_json::json!({ "sha256": digest });
        }
    }
    if let Some(Value::Object(resp)) = content.get_mut("response") {
        if let Some(out) = resp.remove("output") {
            let text = out
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| canonical(&out));
            resp.insert("output_chars".into(), text.chars().count().into());
            resp.insert("output_sha256".into(), text_digest(&text));
        }
        if let Some(Value::Array(calls)) = resp.get_mut("tool_calls") {
            for c in calls.iter_mut() {
                if let Value::Object(c) = c {
                    if let Some(a) = c.remove("arguments") {
                        let text = a
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| canonical(&a));
                        c.insert("arguments_sha256".into(), text_digest(&text));
                    }
                }
            }
        }
    }
}

/// Put the content fields back into a metadata object (for display and export).
pub(crate) fn merge_content(meta: &mut Map<String, Value>, content: Value) {
    if let Value::Object(c) = content {
        for (obj, fields) in c {
            if let Value::Object(fields) = fields {
                let entry = meta.entry(obj).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(e) = entry {
                    e.extend(fields);
                }
            }
        }
    }
}

// === metadata prepared outside the writer lock ===

/// A record's metadata in canonical form, with the two fields only known under the
/// writer lock (`prev_hash`, `seq`) left as holes. Keys sort `… < "prev_hash" < … <
/// "seq" < …`, so the canonical text is `{before "prev_hash":…,middle "seq":N after}`.
pub(crate) struct PreMeta {
    before: String,
    middle: String,
    after: String,
}

impl PreMeta {
    fn empty() -> PreMeta {
        PreMeta {
            before: String::with_capacity(512),
            middle: String::with_capacity(128),
            after: String::with_capacity(512),
        }
    }

    /// Append the `"key":value` piece `write` produces to the part `key` sorts into,
    /// with the comma that joins it to its neighbours.
    fn push(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        let (out, comma_after) = if key < "prev_hash" {
            (&mut self.before, true)
        } else if key < "seq" {
            (&mut self.middle, true)
        } else {
            (&mut self.after, false)
        };
        if !comma_after {
            out.push(',');
        }
        write(out);
        if comma_after {
            out.push(',');
        }
    }

    /// Split the canonical text of `meta` (which must not hold `prev_hash` or `seq`).
    pub(crate) fn new(meta: &Map<String, Value>) -> PreMeta {
        let mut p = PreMeta::empty();
        for (k, v) in sorted_entries(meta) {
            p.push(k, |out| {
                write_str(out, k);
                out.push(':');
                write_canonical(out, v);
            });
        }
        p
    }

    /// The same from the `"key":value` pieces of the metadata, in key order (keys other
    /// than `prev_hash` and `seq`).
    pub(crate) fn from_pieces<'a>(pieces: impl Iterator<Item = (&'a str, &'a str)>) -> PreMeta {
        let mut p = PreMeta::empty();
        for (k, piece) in pieces {
            p.push(k, |out| out.push_str(piece));
        }
        p
    }

    /// The canonical metadata text with `prev_hash` and `seq` filled in.
    pub(crate) fn finish(&self, prev_hash: &[u8; 32], seq: u64) -> String {
        let mut s =
            String::with_capacity(self.before.len() + self.middle.len() + self.after.len() + 100);
        s.push('{');
        s.push_str(&self.before);
        s.push_str("\"prev_hash\":\"");
        push_hex(&mut s, prev_hash);
        s.push_str("\",");
        s.push_str(&self.middle);
        let _ = write!(s, "\"seq\":{seq}");
        s.push_str(&self.after);
        s.push('}');
        s
    }
}

/// `hash = SHA-256(prev_hash (32 raw bytes) ‖ canonical metadata text)`.
pub(crate) fn chain_hash(prev_hash: &[u8; 32], meta: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(meta.as_bytes());
    h.finalize().into()
}

/// `hmac = HMAC-SHA256(key, hash (32 raw bytes))`, hex.
pub(crate) fn hmac_hex(keyed: &HmacSha256, hash: &[u8; 32]) -> String {
    let mut m = keyed.clone();
    m.update(hash);
    hex_string(&m.finalize().into_bytes())
}

/// A keyed HMAC ready to be cloned per record.
pub(crate) fn hmac_for(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// The id naming an HMAC key: 16 hex digits of SHA-256("sluice-ledger-hmac-key" ‖ key).
/// Derived from the key, so an auditor given a set of keys can name them without a
/// side table, and rotating the key changes the id.
pub(crate) fn hmac_key_id(key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"sluice-ledger-hmac-key");
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

// === WAL lines ===

/// Build the WAL line of a record: `{"meta":M,"content":C,"hash":"…","hmac":"…"}\n`.
/// `M` and `C` are the exact canonical texts that were hashed, so a verifier hashes
/// bytes, never a re-serialisation.
pub(crate) fn record_line(meta: &str, content: Option<&str>, hash: &str, hmac: &str) -> Vec<u8> {
    let mut l = String::with_capacity(meta.len() + content.map_or(4, str::len) + 180);
    l.push_str("{\"meta\":");
    l.push_str(meta);
    l.push_str(",\"content\":");
    l.push_str(content.unwrap_or("null"));
    l.push_str(",\"hash\":\"");
    l.push_str(hash);
    l.push_str("\",\"hmac\":\"");
    l.push_str(hmac);
    l.push_str("\"}\n");
    l.into_bytes()
}

/// One record as read back from a WAL line or an index row.
#[derive(Debug, Clone)]
pub(crate) struct StoredRecord {
    pub meta: String,
    pub content: Option<String>,
    pub hash: String,
    pub hmac: String,
}

/// A checkpoint: the tree head over records `1..=seq`, as a signed C2SP checkpoint note.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Checkpoint {
    /// The tree size: the seq of the last record covered.
    pub seq: u64,
    /// That record's chain hash (hex), to name the record a broken head points at.
    pub hash: String,
    /// When it was written (RFC 3339; not signed: witnesses' cosignatures carry the
    /// time that counts).
    pub ts: String,
    /// The signed note: origin, size, base64 root, blank line, the node's signature.
    pub note: String,
    /// The Merkle frontier at `seq` (hex subtree roots), so the writer continues the
    /// tree without reading every record back; checked against the note's root.
    pub frontier: Vec<String>,
}

impl Checkpoint {
    /// The frontier, when it is well-formed and matches the signed root.
    pub(crate) fn frontier(&self) -> Option<Frontier> {
        let roots = self
            .frontier
            .iter()
            .map(|h| decode_hash(h))
            .collect::<Option<Vec<_>>>()?;
        let f = Frontier::from_parts(self.seq, roots)?;
        let text = Note::parse(&self.note).ok()?.text;
        (CheckpointText::parse(&text).ok()?.root == f.root()).then_some(f)
    }
}

/// Sign the tree head `tree` (whose last record has chain hash `hash`).
pub(crate) fn sign_checkpoint(
    signer: &NoteSigner,
    tree: &Frontier,
    hash: &str,
    ts: String,
) -> Checkpoint {
    let text = CheckpointText {
        origin: signer.name.clone(),
        size: tree.size(),
        root: tree.root(),
    }
    .render();
    let note = Note {
        signatures: vec![signer.sign(&text)],
        text,
    };
    Checkpoint {
        seq: tree.size(),
        hash: hash.to_owned(),
        ts,
        note: note.render(),
        frontier: tree.roots().iter().map(|r| hex_string(r)).collect(),
    }
}

/// The signed text of `cp`, when its note parses, names its own size, and (with `key`)
/// carries a valid signature by `key` under the note's origin.
pub(crate) fn checkpoint_text(
    cp: &Checkpoint,
    key: Option<&ed25519_dalek::VerifyingKey>,
) -> Result<CheckpointText, String> {
    let note = Note::parse(&cp.note).map_err(|e| format!("its note does not parse: {e}"))?;
    let text = CheckpointText::parse(&note.text).map_err(|e| e.to_string())?;
    if text.size != cp.seq {
        return Err(format!("its note is for tree size {}", text.size));
    }
    if let Some(key) = key {
        let v = NoteVerifier {
            name: text.origin.clone(),
            key: *key,
        };
        if !note.signed_by(&v) {
            return Err(format!(
                "no valid signature by the trusted key under origin `{}`",
                text.origin
            ));
        }
    }
    Ok(text)
}

/// A parsed WAL line.
pub(crate) enum WalLine {
    Record(StoredRecord),
    Checkpoint(Checkpoint),
}

/// Span of the JSON value starting at `bytes[0]`: its length.
fn value_len(bytes: &[u8]) -> Option<usize> {
    let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    match it.next() {
        Some(Ok(_)) => Some(it.byte_offset()),
        _ => None,
    }
}

/// Parse one WAL line (without its newline). `None` when it is not a well-formed line.
pub(crate) fn parse_line(line: &[u8]) -> Option<WalLine> {
    if let Some(rest) = line.strip_prefix(b"{\"meta\":") {
        let m = value_len(rest)?;
        let meta = std::str::from_utf8(&rest[..m]).ok()?.to_owned();
        let rest = rest[m..].strip_prefix(b",\"content\":")?;
        let c = value_len(rest)?;
        let content_text = std::str::from_utf8(&rest[..c]).ok()?;
        let content = (content_text != "null").then(|| content_text.to_owned());
        let rest = rest[c..].strip_prefix(b",\"hash\":\"")?;
        let (hash, rest) = rest.split_at_checked(64)?;
        let rest = rest.strip_prefix(b"\",\"hmac\":\"")?;
        let (hmac, rest) = rest.split_at_checked(64)?;
        if rest != b"\"}" {
            return None;
        }
        return Some(WalLine::Record(StoredRecord {
            meta,
            content,
            hash: std::str::from_utf8(hash).ok()?.to_owned(),
            hmac: std::str::from_utf8(hmac).ok()?.to_owned(),
        }));
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CpLine {
        checkpoint: Checkpoint,
    }
    let cp: CpLine = serde_json::from_slice(line).ok()?;
    Some(WalLine::Checkpoint(cp.checkpoint))
}

/// The WAL line of a checkpoint.
pub(crate) fn checkpoint_line(cp: &Checkpoint) -> Vec<u8> {
    let mut l = serde_json::to_vec(&serde_json::json!({ "checkpoint": cp })).unwrap_or_default();
    l.push(b'\n');
    l
}
