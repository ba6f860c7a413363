//! The bodies of Sluice's fuzz targets, one public function per target.
//!
//! `fuzz/fuzz_targets/<target>.rs` hands libFuzzer's input to the function of the same
//! name (`cargo fuzz run <target>`, or `cargo xtask fuzz`); the tests at the bottom run
//! each function over its seed corpus `fuzz/corpus/<target>/` as an ordinary test, so
//! `cargo test --workspace` checks the seeds (and every crash kept there as a regression
//! input) without nightly or a sanitizer build.
//!
//! Every function must return normally on any input: a panic is a bug in `sluice`. Some
//! also check a property of the result (a stream parsed whole and parsed in pieces says
//! the same thing; a rewritten body is JSON).

use std::sync::{Arc, OnceLock};

use sluice::config::Config;
use sluice::policy::{Counters, Engine, Facts, PolicyConfig};
use sluice::providers::registry::{adapter_by_name, PROVIDERS};
use sluice::providers::{Adapter, Endpoint, ParsedResponse};
use sluice::record::Identity;

/// Request paths tried on every adapter: [`endpoints`] keeps those it parses.
const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/chat/completions",
    "/beta/chat/completions",
    "/openai/v1/chat/completions",
    "/openai/v1/responses",
    "/openai/v1/embeddings",
    "/api/v1/chat/completions",
    "/inference/v1/chat/completions",
    "/openai/deployments/dep/chat/completions",
    "/openai/deployments/dep/responses",
    "/openai/deployments/dep/completions",
    "/openai/deployments/dep/embeddings",
    "/v1beta/models/m:generateContent",
    "/v1beta/models/m:streamGenerateContent?alt=sse",
    "/v1beta/tunedModels/t:generateContent",
    "/v1beta/tunedModels/t:streamGenerateContent",
    "/model/m/converse",
    "/model/m/converse-stream",
    "/model/m/invoke",
    "/model/m/invoke-with-response-stream",
];

/// Every (adapter, endpoint) pair the built-in providers know, endpoints deduplicated per
/// adapter.
fn endpoints() -> &'static [(&'static dyn Adapter, Endpoint)] {
    static ALL: OnceLock<Vec<(&'static dyn Adapter, Endpoint)>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = Vec::new();
        for p in PROVIDERS {
            let mut seen: Vec<Endpoint> = Vec::new();
            for path in PATHS {
                if let Some(ep) = p.adapter.endpoint("POST", path) {
                    if !seen.contains(&ep) {
                        seen.push(ep.clone());
                        all.push((p.adapter, ep));
                    }
                }
            }
            assert!(
                !seen.is_empty(),
                "{} parses none of PATHS",
                p.adapter.name()
            );
        }
        all
    })
}

/// The (adapter, endpoint) of a named adapter for `path`.
fn endpoint(adapter: &str, path: &str) -> (&'static dyn Adapter, Endpoint) {
    let a = adapter_by_name(adapter).expect("built-in adapter");
    let ep = a.endpoint("POST", path).expect("endpoint it parses");
    (a, ep)
}

/// Splits the input into chunk boundaries and a body: the first byte says how many cuts
/// (0–3), the next bytes where (each a fraction of the body length).
fn split(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = usize::from(first % 4).min(rest.len());
    let (cuts, body) = rest.split_at(n);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * body.len() / 255)
        .collect();
    at.sort_unstable();
    (at, body)
}

/// Streams `body` to a fresh parser in the chunks `cuts` make, then finishes.
fn stream(adapter: &dyn Adapter, ep: &Endpoint, body: &[u8], cuts: &[usize]) -> ParsedResponse {
    let mut p = adapter.stream_parser(ep);
    let mut from = 0;
    for &to in cuts {
        p.feed(&body[from..to]);
        from = to;
    }
    p.feed(&body[from..]);
    p.finish()
}

/// Streams `body` whole and in the chunks `cuts` make; both must say the same thing.
fn stream_both_ways(adapter: &dyn Adapter, ep: &Endpoint, body: &[u8], cuts: &[usize]) {
    let whole = stream(adapter, ep, body, &[]);
    let pieces = stream(adapter, ep, body, cuts);
    let (whole, pieces) = (json(&whole), json(&pieces));
    assert_eq!(
        whole,
        pieces,
        "{} {}: the stream parsed whole and cut at {cuts:?} differ",
        adapter.name(),
        ep.name
    );
}

fn json(r: &ParsedResponse) -> serde_json::Value {
    serde_json::to_value(r).expect("ParsedResponse serialises")
}

/// `sluice::tls::sniff`, the ClientHello reader, on the first bytes of a connection, and
/// on every prefix a slow client could have sent so far (a prefix of a ClientHello never
/// parses as a different one).
pub fn sniff(data: &[u8]) {
    use sluice::tls::{sniff, Sniffed};
    let full = sniff(data);
    if let Sniffed::Tls(info) = &full {
        if let Some(sni) = &info.sni {
            assert!(!sni.ends_with('.'), "SNI keeps a trailing dot: {sni:?}");
        }
    }
    // A prefix either needs more bytes, or already decides the same way.
    let cut = data.len() / 2;
    match sniff(&data[..cut]) {
        Sniffed::NeedMore => {}
        Sniffed::Tls(info) => assert_eq!(full, Sniffed::Tls(info)),
        Sniffed::NotTls => assert_eq!(full, Sniffed::NotTls),
        Sniffed::Malformed(_) => assert!(matches!(full, Sniffed::Malformed(_))),
    }
}

/// Every adapter's request parser, response parser and stream parser (fed the input in
/// up to four chunks, then finished), for every endpoint it knows.
pub fn adapters(data: &[u8]) {
    let (cuts, body) = split(data);
    for (adapter, ep) in endpoints() {
        let req = adapter.parse_request(ep, body);
        let _ = adapter.max_output_tokens(&req);
        let _ = adapter.parse_response(ep, body);
        let _ = stream(*adapter, ep, body, &cuts);
    }
}

/// The SSE decoder (private to `sluice`) through the stream parsers of the SSE-speaking
/// formats: OpenAI Chat Completions and Responses, Anthropic Messages, Gemini. Whole and
/// cut, the stream must parse the same.
pub fn sse(data: &[u8]) {
    static EPS: OnceLock<Vec<(&'static dyn Adapter, Endpoint)>> = OnceLock::new();
    let eps = EPS.get_or_init(|| {
        vec![
            endpoint("openai", "/v1/chat/completions"),
            endpoint("openai", "/v1/responses"),
            endpoint("anthropic", "/v1/messages"),
            endpoint("gemini", "/v1beta/models/m:streamGenerateContent"),
        ]
    });
    let (cuts, body) = split(data);
    for (adapter, ep) in eps {
        stream_both_ways(*adapter, ep, body, &cuts);
    }
}

/// Bedrock's AWS event-stream decoder through the bedrock adapter's stream parsers
/// (Converse and InvokeModel). Whole and cut, the stream must parse the same.
pub fn eventstream(data: &[u8]) {
    static EPS: OnceLock<Vec<(&'static dyn Adapter, Endpoint)>> = OnceLock::new();
    let eps = EPS.get_or_init(|| {
        vec![
            endpoint("bedrock", "/model/m/converse-stream"),
            endpoint("bedrock", "/model/m/invoke-with-response-stream"),
        ]
    });
    let (cuts, body) = split(data);
    for (adapter, ep) in eps {
        stream_both_ways(*adapter, ep, body, &cuts);
    }
}

/// The config loader: parse and validate any text.
pub fn config(data: &[u8]) {
    let _ = Config::from_yaml(&String::from_utf8_lossy(data), "fuzz.yaml");
}

/// `sluice witness` takes requests from the network: `add-checkpoint` on any body, and
/// the note, checkpoint and vkey parsers on the same text, must answer and never panic;
/// the witness's answer is one of the protocol's statuses. The store is a directory under
/// the system's temporary directory, one for the process.
pub fn witness(data: &[u8]) {
    use sluice::tlog::note::{CheckpointText, Note, NoteVerifier};
    use sluice::witness::Witness;
    static W: OnceLock<Witness> = OnceLock::new();
    let text = String::from_utf8_lossy(data);
    let _ = NoteVerifier::parse_vkey(&text);
    if let Ok(n) = Note::parse(&text) {
        let _ = CheckpointText::parse(&n.text);
    }
    let w = W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-witness-{}", std::process::id()));
        let log = NoteVerifier::parse_vkey(FUZZ_LOG_VKEY).expect("the fuzz log's vkey parses");
        Witness::open(&dir, "fuzz.example/witness", vec![log]).expect("the fuzz witness opens")
    });
    let r = w.add_checkpoint(&text);
    assert!(
        matches!(r.status, 200 | 400 | 403 | 404 | 409 | 422 | 500),
        "not a tlog-witness status: {r:?}"
    );
}

/// The log the fuzz witness knows (Ed25519 seed [7; 32]); the seed corpus holds a
/// checkpoint it signed.
const FUZZ_LOG_VKEY: &str =
    "fuzz.example/log+44c33050+AepKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs";

/// The policy engine's prompt guardrails on an arbitrary request body (the lenient scan
/// of every string, redaction of the strictly parsed body), once refusing and once
/// allowing what it cannot judge. The first byte picks the provider format and whether
/// the body counts as truncated; a rewritten body must be JSON.
pub fn lenient_json(data: &[u8]) {
    static ENGINES: OnceLock<[Engine; 2]> = OnceLock::new();
    static EPS: OnceLock<Vec<(&'static dyn Adapter, Endpoint)>> = OnceLock::new();
    let engines = ENGINES.get_or_init(|| {
        ["refuse", "allow"].map(|on| {
            let yaml = format!(
                "policy:\n  policies:\n    - id: fuzz\n      prompt: {{secrets: block, pii: redact}}\n      on_uninspectable: {on}\n"
            );
            let cfg: PolicyConfig = Config::from_yaml(&yaml, "fuzz.yaml")
                .expect("the fuzz policy is valid")
                .policy;
            Engine::new(&cfg, Arc::new(Counters::memory())).expect("engine")
        })
    });
    let eps = EPS.get_or_init(|| {
        vec![
            endpoint("openai", "/v1/chat/completions"),
            endpoint("openai", "/v1/responses"),
            endpoint("anthropic", "/v1/messages"),
            endpoint("gemini", "/v1beta/models/m:generateContent"),
            endpoint("bedrock", "/model/m/converse"),
            endpoint("bedrock", "/model/m/invoke"),
        ]
    });
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let (adapter, ep) = &eps[usize::from(first & 0x7f) % eps.len()];
    let truncated = first & 0x80 != 0;
    let identity = Identity::default();
    for engine in engines {
        let facts = Facts::of(*adapter, Some(ep), &identity, body, truncated);
        let verdict = engine.evaluate(&facts);
        if let Some(rewritten) = &verdict.rewritten_body {
            assert!(
                serde_json::from_slice::<serde_json::Value>(rewritten).is_ok(),
                "the rewritten body is not JSON"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each target over its seed corpus (and the crashes kept there as regressions).

    use std::path::{Path, PathBuf};

    fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no seeds", dir.display());
        files
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).expect("seed readable");
                (p, bytes)
            })
            .collect()
    }

    fn run_seeds(target: &str, f: fn(&[u8])) {
        for (path, bytes) in seeds(target) {
            eprintln!("{target}: {}", path.display());
            f(&bytes);
            // Also every prefix cut at a few points: cheap, and closer to what a fuzzer
            // tries first.
            for n in [0, 1, bytes.len() / 3, bytes.len() / 2] {
                f(&bytes[..n.min(bytes.len())]);
            }
        }
    }

    #[test]
    fn sniff_seeds() {
        run_seeds("sniff", super::sniff);
    }

    #[test]
    fn adapters_seeds() {
        run_seeds("adapters", super::adapters);
    }

    #[test]
    fn sse_seeds() {
        run_seeds("sse", super::sse);
    }

    #[test]
    fn eventstream_seeds() {
        run_seeds("eventstream", super::eventstream);
    }

    #[test]
    fn config_seeds() {
        run_seeds("config", super::config);
    }

    #[test]
    fn lenient_json_seeds() {
        run_seeds("lenient_json", super::lenient_json);
    }

    #[test]
    fn witness_seeds() {
        run_seeds("witness", super::witness);
    }

    #[test]
    fn every_adapter_has_endpoints() {
        let eps = super::endpoints();
        for p in sluice::providers::registry::PROVIDERS {
            assert!(eps.iter().any(|(a, _)| a.name() == p.adapter.name()));
        }
    }
}
