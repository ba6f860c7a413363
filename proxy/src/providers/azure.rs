//! Azure OpenAI: the OpenAI wire format behind Azure's routes.
//!
//! - `POST /openai/deployments/{deployment}/{endpoint}?api-version=…` (chat completions,
//!   completions, embeddings, responses): the **deployment names the model**. Azure
//!   serves whatever the deployment runs and ignores the body's `model`, so policies,
//!   budgets and the record use the deployment name; a different body `model` is kept
//!   in `params.model` for the record.
//! - `POST /openai/v1/{endpoint}` and `/openai/{endpoint}` (the v1 API): the body's
//!   `model` names the deployment.
//!
//! Clients authenticate with `api-key: …` or `Authorization: Bearer …`; both are
//! credentials (fingerprinted, never stored; see `policy::presented_key`). Errors share
//! OpenAI's shape. A model without an Azure price of its own costs what OpenAI's model
//! of the same name does.

use serde_json::Value;

use super::openai::{exact_endpoint, plain, OpenAi};
use super::{Adapter, Endpoint, LaneEnd, ParsedRequest, ParsedResponse, StreamParser};

/// The Azure OpenAI adapter.
#[derive(Debug)]
pub(crate) struct Azure;

pub(crate) static AZURE_OPENAI: Azure = Azure;

/// Bodies and streams are OpenAI's.
static FORMAT: OpenAi = OpenAi::any_path("azure_openai");

impl Adapter for Azure {
    fn name(&self) -> &'static str {
        "azure_openai"
    }

    fn endpoint(&self, method: &str, path: &str) -> Option<Endpoint> {
        if !method.eq_ignore_ascii_case("POST") {
            return None;
        }
        let path = super::path_only(path);
        let path = path.strip_suffix('/').unwrap_or(path);
        if let Some(rest) = path.strip_prefix("/openai/deployments/") {
            let (deployment, _) = rest.split_once('/')?;
            if deployment.is_empty() {
                return None;
            }
            let name = exact_endpoint(&rest[deployment.len()..])?;
            return Some(Endpoint {
                name,
                streaming_hint: false,
                model_from_path: Some(percent_decoded(deployment)),
            });
        }
        let rest = path
            .strip_prefix("/openai/v1")
            .or_else(|| path.strip_prefix("/openai"))?;
        exact_endpoint(rest).map(plain)
    }

    fn parse_request(&self, ep: &Endpoint, body: &[u8]) -> ParsedRequest {
        let mut req = FORMAT.parse_request(ep, body);
        if let Some(deployment) = &ep.model_from_path {
            if let Some(sent) = req.model.take().filter(|m| m != deployment) {
                req.params.insert("model".into(), Value::String(sent));
            }
            req.model = Some(deployment.clone());
        }
        req
    }

    fn parse_response(&self, ep: &Endpoint, body: &[u8]) -> ParsedResponse {
        FORMAT.parse_response(ep, body)
    }

    fn stream_parser(&self, ep: &Endpoint) -> Box<dyn StreamParser> {
        FORMAT.stream_parser(ep)
    }

    fn stream_deltas<'v>(
        &self,
        ep: &Endpoint,
        event: &str,
        data: &'v mut Value,
    ) -> Vec<(u32, &'v mut String)> {
        FORMAT.stream_deltas(ep, event, data)
    }

    fn stream_lane_end(&self, ep: &Endpoint, event: &str, data: &Value) -> LaneEnd {
        FORMAT.stream_lane_end(ep, event, data)
    }

    fn price_fallback(&self) -> Option<&'static str> {
        Some("openai")
    }
}

/// A path segment with `%XX` escapes decoded (the SDK escapes deployment names); an
/// invalid escape or non-UTF-8 result leaves the segment as sent.
pub(super) fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_routes_name_the_model() {
        let ep = AZURE_OPENAI
            .endpoint(
                "POST",
                "/openai/deployments/prod%2Dgpt4o/chat/completions?api-version=2024-10-21",
            )
            .unwrap();
        assert_eq!(ep.name, "chat.completions");
        assert_eq!(ep.model_from_path.as_deref(), Some("prod-gpt4o"));
        let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        let req = AZURE_OPENAI.parse_request(&ep, body);
        assert_eq!(req.model.as_deref(), Some("prod-gpt4o"));
        assert_eq!(req.params["model"], "gpt-4o-mini");
        assert_eq!(req.messages[0].content, "hi");

        let v1 = AZURE_OPENAI
            .endpoint("POST", "/openai/v1/chat/completions")
            .unwrap();
        assert_eq!(v1.model_from_path, None);
        assert_eq!(
            AZURE_OPENAI.parse_request(&v1, body).model.as_deref(),
            Some("gpt-4o-mini")
        );
        for other in [
            "/openai/deployments//chat/completions",
            "/openai/deployments/d/images/generations",
            "/v1/chat/completions",
        ] {
            assert!(AZURE_OPENAI.endpoint("POST", other).is_none(), "{other}");
        }
        assert!(AZURE_OPENAI
            .endpoint("GET", "/openai/deployments/d/chat/completions")
            .is_none());
    }

    #[test]
    fn escapes_decode_or_stay() {
        assert_eq!(percent_decoded("a%20b"), "a b");
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz"), "%zz");
        assert_eq!(percent_decoded("%ff"), "%ff");
    }
}
