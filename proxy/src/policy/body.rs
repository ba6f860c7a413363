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

/// Categories found in every string of `raw`, read leniently: every occurrence of a
/// duplicated key, strings inside JSON the strict parser refuses (a lone surrogate
/// escape, a number out of range, invalid UTF-8, nesting past its limit) and — when
/// `raw` is not JSON at all — the text itself. What a provider's own, more forgiving
/// parser might read is never left unscanned.
pub fn scan_raw(raw: &[u8], strict_ok: bool, scanner: &Scanner) -> Vec<Category> {
    let mut found = Vec::new();
    let mut note = |text: &str| {
        for f in scanner.scan(text) {
            if !found.contains(&f.category) {
                found.push(f.category);
            }
        }
    };
    lenient_strings(raw, &mut |key, text| {
        if !key.is_some_and(|k| NOT_TEXT.contains(&k)) {
            note(text);
        }
    });
    if !strict_ok {
        note(&String::from_utf8_lossy(raw));
    }
    found
}

/// Deepest nesting tracked for keys; deeper containers inherit the last tracked key.
const MAX_DEPTH: usize = 256;

/// Calls `f(key, string)` for every JSON string value in `raw` (keys excluded), with the
/// object key it belongs to (inherited through arrays), tolerating anything: escapes
/// are decoded (`\uD800` alone becomes U+FFFD), invalid UTF-8 is replaced, structure
/// errors are skipped over. Never fails, never recurses.
pub(super) fn lenient_strings(raw: &[u8], f: &mut dyn FnMut(Option<&str>, &str)) {
    // Per open container: is it an object, and the key its values belong to.
    let mut stack: Vec<(bool, Option<String>)> = Vec::new();
    let mut overflow = 0usize;
    let mut expecting_key = false;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            open @ (b'{' | b'[') => {
                if stack.len() >= MAX_DEPTH {
                    overflow += 1;
                } else {
                    let inherited = stack.last().and_then(|(_, k)| k.clone());
                    let object = open == b'{';
                    stack.push((object, if object { None } else { inherited }));
                }
                expecting_key = open == b'{';
                i += 1;
            }
            b'}' | b']' => {
                if overflow > 0 {
                    overflow -= 1;
                } else {
                    stack.pop();
                }
                expecting_key = false;
                i += 1;
            }
            b',' => {
                expecting_key = stack.last().is_some_and(|(object, _)| *object);
                i += 1;
            }
            b':' => {
                expecting_key = false;
                i += 1;
            }
            b'"' => {
                let (text, next) = read_string(raw, i + 1);
                i = next;
                match stack.last_mut() {
                    Some((true, key)) if expecting_key => *key = Some(text),
                    Some((_, key)) => f(key.as_deref(), &text),
                    None => f(None, &text),
                }
            }
            _ => i += 1,
        }
    }
}

/// The string starting at `raw[start]` (just after its opening quote), decoded leniently,
/// and the index after its closing quote (or the end).
fn read_string(raw: &[u8], start: usize) -> (String, usize) {
    let mut out: Vec<u8> = Vec::new();
    let mut i = start;
    let mut pending_high: Option<u16> = None;
    let push_char = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    while i < raw.len() {
        let b = raw[i];
        if b == b'"' {
            i += 1;
            break;
        }
        if b != b'\\' {
            if let Some(_high) = pending_high.take() {
                push_char(&mut out, char::REPLACEMENT_CHARACTER);
            }
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else {
            i += 1;
            break;
        };
        i += 2;
        if e != b'u' {
            if pending_high.take().is_some() {
                push_char(&mut out, char::REPLACEMENT_CHARACTER);
            }
            out.push(match e {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 0x08,
                b'f' => 0x0c,
                other => other,
            });
            continue;
        }
        let unit = raw
            .get(i..i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok());
        let Some(unit) = unit else {
            out.extend_from_slice(b"\\u");
            continue;
        };
        i += 4;
        match (pending_high.take(), unit) {
            (Some(high), 0xDC00..=0xDFFF) => {
                let c = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                push_char(
                    &mut out,
                    char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER),
                );
            }
            (high, 0xD800..=0xDBFF) => {
                if high.is_some() {
                    push_char(&mut out, char::REPLACEMENT_CHARACTER);
                }
                pending_high = Some(unit);
            }
            (high, unit) => {
                if high.is_some() {
                    push_char(&mut out, char::REPLACEMENT_CHARACTER);
                }
                let c = char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER);
                push_char(&mut out, c);
            }
        }
    }
    if pending_high.is_some() {
        push_char(&mut out, char::REPLACEMENT_CHARACTER);
    }
    (String::from_utf8_lossy(&out).into_owned(), i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(raw: &[u8]) -> Vec<(Option<String>, String)> {
        let mut out = Vec::new();
        lenient_strings(raw, &mut |k, s| {
            out.push((k.map(str::to_owned), s.to_owned()))
        });
        out
    }

    #[test]
    fn every_string_is_read_whatever_the_json() {
        let dup = br#"{"messages":[{"role":"user","content":"first","content":"second"}]}"#;
        assert_eq!(
            strings(dup),
            [
                (Some("role".into()), "user".into()),
                (Some("content".into()), "first".into()),
                (Some("content".into()), "second".into()),
            ]
        );
        let odd = b"{\"a\":\"x\\ud800y\",\"t\":1e400,\"b\":\"caf\xff\\u00e9\\ud83d\\ude00\"}";
        assert_eq!(
            strings(odd),
            [
                (Some("a".into()), "x\u{fffd}y".into()),
                (Some("b".into()), "caf\u{fffd}\u{e9}\u{1f600}".into()),
            ]
        );
        let deep = format!("{}\"deep\"{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(strings(deep.as_bytes()), [(None, "deep".into())]);
        // Unterminated and garbage input ends without a panic.
        assert_eq!(
            strings(b"{\"k\":\"unterminated"),
            [(Some("k".into()), "unterminated".into())]
        );
        assert!(strings(b"\\\\\\u12").is_empty());
    }

    #[test]
    fn raw_scans_find_what_the_strict_parse_cannot() {
        let scanner = Scanner::all();
        let secret = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
        for body in [
            format!(r#"{{"messages":[{{"role":"user","content":"{secret}","content":"hi"}}]}}"#),
            format!(r#"{{"x":"\ud800","messages":[{{"role":"user","content":"{secret}"}}]}}"#),
            format!(r#"{{"temperature":1e400,"messages":[{{"content":"{secret}"}}]}}"#),
            format!("plain text, not JSON: {secret}"),
        ] {
            let strict_ok = serde_json::from_str::<serde_json::Value>(&body).is_ok();
            let found = scan_raw(body.as_bytes(), strict_ok, &scanner);
            assert!(found.contains(&Category::GithubToken), "{body}: {found:?}");
        }
    }
}
