//! Fixtures shared by the tests of this crate and by the tools that exercise it (the
//! benchmark crate): built only with `cfg(test)` or the `testing` feature, so the product
//! binary carries none of it.

use std::time::SystemTime;

use crate::record::Record;

/// A realistic interaction record (two messages, an answer, usage, cost).
pub fn sample_interaction(i: u64) -> Record {
    use crate::providers::{Message, Usage};
    use crate::record::{Identity, Interaction, Outcome, RequestPart, ResponsePart, Upstream};
    let mut params = serde_json::Map::new();
    params.insert("temperature".into(), 0.2.into());
    params.insert("max_tokens".into(), 512.into());
    Record::Interaction(Box::new(Interaction {
        id: crate::record::new_id(),
        ts: crate::record::rfc3339(SystemTime::now()),
        kind: "interaction",
        provider: "openai".into(),
        model: Some("gpt-4o-mini".into()),
        endpoint: Some("chat.completions".into()),
        stream: true,
        status: 200,
        outcome: Outcome::Success,
        decision: "allow",
        reason_codes: vec![],
        policy_id: Some("default@1".into()),
        triggered_categories: Vec::new(),
        policy_mode: None,
        identity: Identity {
            client_addr: Some(format!("10.0.0.{}:51000", i % 250)),
            pid: Some(4242),
            process: Some("python3".into()),
            uid: Some(1000),
            ..Identity::default()
        },
        request: RequestPart {
            method: "POST".into(),
            host: Some("api.openai.com".into()),
            path: "/v1/chat/completions".into(),
            params,
            messages: vec![
                Message {
                    role: "system".into(),
                    content: "You are a helpful assistant that answers briefly.".into(),
                },
                Message {
                    role: "user".into(),
                    content: format!("Summarise the quarterly report, section {i}, in three bullet points. Mention revenue, costs and the outlook for next quarter."),
                },
            ],
            body_bytes: 412,
            truncated: false,
            parse_error: None,
        },
        response: ResponsePart {
            model: Some("gpt-4o-mini-2024-07-18".into()),
            id: Some(format!("chatcmpl-{i:08}")),
            output: "- Revenue grew 12% quarter over quarter.\n- Costs were flat thanks to cloud savings.\n- Outlook: steady growth, hiring in Q3.".into(),
            tool_calls: vec![],
            finish_reason: Some("stop".into()),
            body_bytes: 2048,
            events: 42,
            truncated: false,
            error: None,
        },
        usage: Usage {
            input_tokens: Some(58),
            output_tokens: Some(31),
            cached_tokens: Some(0),
            reasoning_tokens: None,
            estimated: false,
        },
        cost_usd: Some(0.000027),
        latency_ms: 812.5,
        ttft_ms: Some(210.25),
        upstream: Upstream {
            addr: Some("198.18.0.10:443".into()),
            sni: Some("api.openai.com".into()),
        },
        error: None,
    }))
}

/// A temporary directory, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory, named after `name`.
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "sluice-{name}-{}-{}",
            std::process::id(),
            crate::record::new_id()
        ));
        std::fs::create_dir_all(&p).expect("creating a temporary directory");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
