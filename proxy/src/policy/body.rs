//! Guardrails over a JSON request body, whatever the provider format.
//!
//! Every string leaf of the body is scanned (message contents, system prompts, tool
//! results, Gemini parts, Responses API input…), except values under keys that name
//! things rather than carry text (`model`, `role`, `type`, ids). This keeps one code path
//! for every provider and cannot miss a new text field a provider adds.

use crate::guardrails::{self, Category, Scanner};

/// Keys whose string values are identifiers, not text.
const NOT_TEXT: &[&str] = &[
    "model",
    "role",
    "type",
    "id",
    "tool_call_id",
    "object",
    "stop",
];

/// Categories found anywhere in `body`, in first-seen order, without duplicates.
pub fn scan(body: &serde_json::Value, scanner: &Scanner) -> Vec<Category> {
    let mut found = Vec::new();
    walk(body, None, &mut |text| {
        for f in scanner.scan(text) {
            if !found.contains(&f.category) {
                found.push(f.category);
            }
        }
        None
    });
    found
}

/// Replace the spans of `cats` in every text leaf with their markers.
pub fn redact(body: &mut serde_json::Value, scanner: &Scanner, cats: &[Category]) {
    walk_mut(body, None, &mut |text| {
        let findings: Vec<_> = scanner
            .scan(text)
            .into_iter()
            .filter(|f| cats.contains(&f.category))
            .collect();
        (!findings.is_empty()).then(|| guardrails::redact(text, &findings))
    });
}

/// Replace everything `scanner` finds in every text leaf with its marker; the categories
/// found are added to `found` (without duplicates).
pub fn redact_all(body: &mut serde_json::Value, scanner: &Scanner, found: &mut Vec<Category>) {
    walk_mut(body, None, &mut |text| {
        let findings = scanner.scan(text);
        for f in &findings {
            if !found.contains(&f.category) {
                found.push(f.category);
            }
        }
        (!findings.is_empty()).then(|| guardrails::redact(text, &findings))
    });
}

fn walk(v: &serde_json::Value, key: Option<&str>, f: &mut dyn FnMut(&str) -> Option<String>) {
    match v {
        serde_json::Value::String(s) if !key.is_some_and(|k| NOT_TEXT.contains(&k)) => {
            f(s);
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, key, f)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, i)| walk(i, Some(k), f)),
        _ => {}
    }
}

fn walk_mut(
    v: &mut serde_json::Value,
    key: Option<&str>,
    f: &mut dyn FnMut(&str) -> Option<String>,
) {
    match v {
        serde_json::Value::String(s) if !key.is_some_and(|k| NOT_TEXT.contains(&k)) => {
            if let Some(new) = f(s) {
                *s = new;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk_mut(i, key, f)),
        serde_json::Value::Object(map) => map
            .iter_mut()
            .for_each(|(k, i)| walk_mut(i, Some(k.as_str()), f)),
        _ => {}
    }
}
