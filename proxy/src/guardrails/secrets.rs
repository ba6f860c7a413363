//! Secret detectors: provider tokens, private keys, JWTs, connection strings.
//!
//! Every detector starts from a *literal* that real credentials carry (`AKIA`, `ghp_`,
//! `-----BEGIN `, `eyJ`, `postgres://`, …). One Aho-Corasick automaton finds all of them in
//! a single pass; only at a hit do we check the shape. That is what keeps UUIDs, git SHAs
//! and hashes out: they have no such prefix, and we never flag "random-looking" strings
//! on entropy alone. Where a prefix is short or a common word fragment (`sk-`, `AKIA`),
//! the body must also stand alone as a word and look random (upper, lower and digit),
//! which rejects placeholders like `ghp_xxxx…` and prose like `sk-learn-compatible-…`.
//!
//! Not detected: generic `password=…` assignments, AWS secret keys with no AWS keyword in
//! the preceding 96 bytes, Stripe test keys, provider keys with no published prefix.

use aho_corasick::{AhoCorasick, Input, MatchKind};

use super::{is_word, looks_random, Category, Finding};

/// What an Aho-Corasick hit means.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    AwsKeyId,
    AwsSecretKeyword,
    Github,
    GithubPat,
    Gitlab,
    SkDash,
    Stripe,
    Google,
    Slack,
    PrivateKey,
    Jwt,
    Connection,
}

const TRIGGERS: &[(&str, Trigger)] = &[
    ("AKIA", Trigger::AwsKeyId),
    ("ASIA", Trigger::AwsKeyId),
    ("aws_secret_access_key", Trigger::AwsSecretKeyword),
    ("AWS_SECRET_ACCESS_KEY", Trigger::AwsSecretKeyword),
    ("aws_secret", Trigger::AwsSecretKeyword),
    ("AWS_SECRET", Trigger::AwsSecretKeyword),
    ("aws secret", Trigger::AwsSecretKeyword),
    ("AWS secret", Trigger::AwsSecretKeyword),
    ("AWS Secret", Trigger::AwsSecretKeyword),
    ("SecretAccessKey", Trigger::AwsSecretKeyword),
    ("secretAccessKey", Trigger::AwsSecretKeyword),
    ("secret_access_key", Trigger::AwsSecretKeyword),
    ("SECRET_ACCESS_KEY", Trigger::AwsSecretKeyword),
    ("ghp_", Trigger::Github),
    ("gho_", Trigger::Github),
    ("ghu_", Trigger::Github),
    ("ghs_", Trigger::Github),
    ("ghr_", Trigger::Github),
    ("github_pat_", Trigger::GithubPat),
    ("glpat-", Trigger::Gitlab),
    ("sk-", Trigger::SkDash),
    ("sk_live_", Trigger::Stripe),
    ("rk_live_", Trigger::Stripe),
    ("AIza", Trigger::Google),
    ("xoxb-", Trigger::Slack),
    ("xoxa-", Trigger::Slack),
    ("xoxp-", Trigger::Slack),
    ("xoxr-", Trigger::Slack),
    ("xoxs-", Trigger::Slack),
    ("-----BEGIN ", Trigger::PrivateKey),
    ("eyJ", Trigger::Jwt),
    ("postgres://", Trigger::Connection),
    ("postgresql://", Trigger::Connection),
    ("mysql://", Trigger::Connection),
    ("mariadb://", Trigger::Connection),
    ("mongodb://", Trigger::Connection),
    ("mongodb+srv://", Trigger::Connection),
    ("redis://", Trigger::Connection),
    ("rediss://", Trigger::Connection),
    ("amqp://", Trigger::Connection),
    ("amqps://", Trigger::Connection),
];

#[derive(Debug)]
pub(super) struct Detector {
    ac: AhoCorasick,
}

impl Detector {
    pub(super) fn new() -> Self {
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(TRIGGERS.iter().map(|(p, _)| p))
            .expect("secret triggers compile");
        Detector { ac }
    }

    pub(super) fn scan(&self, text: &str, on: &dyn Fn(Category) -> bool, out: &mut Vec<Finding>) {
        if !super::Category::ALL
            .iter()
            .any(|c| c.group() == super::Group::Secret && on(*c))
        {
            return;
        }
        let b = text.as_bytes();
        let mut at = 0;
        while let Some(m) = self.ac.find(Input::new(text).span(at..text.len())) {
            at = m.end();
            let s = m.start();
            let trigger = TRIGGERS[m.pattern().as_usize()].1;
            // Prefixes made of word bytes must begin a word: `task-…` is not `sk-…`.
            let word_start = s == 0 || !is_word(b[s - 1]);
            let hit =
                match trigger {
                    Trigger::AwsSecretKeyword => aws_secret_after(b, m.end()),
                    Trigger::PrivateKey => private_key(text, s),
                    Trigger::Connection => connection_string(text, s, m.end()),
                    _ if !word_start => None,
                    Trigger::AwsKeyId => aws_key_id(b, s),
                    Trigger::Github => token(b, s, 4, |c| c.is_ascii_alphanumeric(), 36, 255, true)
                        .map(|e| (Category::GithubToken, s, e)),
                    Trigger::GithubPat => token(b, s, 11, is_word, 60, 255, true)
                        .map(|e| (Category::GithubToken, s, e)),
                    Trigger::Gitlab => token(b, s, 6, is_token, 20, 64, false)
                        .map(|e| (Category::GitlabToken, s, e)),
                    Trigger::SkDash => provider_key(b, s),
                    Trigger::Stripe => token(b, s, 8, |c| c.is_ascii_alphanumeric(), 24, 255, true)
                        .map(|e| (Category::StripeKey, s, e)),
                    Trigger::Google => token(b, s, 4, is_token, 35, 35, false)
                        .map(|e| (Category::GoogleApiKey, s, e)),
                    Trigger::Slack => slack(b, s),
                    Trigger::Jwt => jwt(b, s),
                };
            if let Some((category, start, end)) = hit {
                if on(category) {
                    out.push(Finding {
                        category,
                        start,
                        end,
                    });
                }
                at = at.max(end);
            }
        }
    }
}

/// `[A-Za-z0-9_-]`: the body alphabet of most modern tokens (and base64url).
fn is_token(c: u8) -> bool {
    is_word(c) || c == b'-'
}

/// A token at `s`: `prefix_len` literal bytes, then a body of `min..=max` bytes from
/// `body`, ending at a byte outside the body alphabet. `random` demands mixed classes.
fn token(
    b: &[u8],
    s: usize,
    prefix_len: usize,
    body: impl Fn(u8) -> bool,
    min: usize,
    max: usize,
    random: bool,
) -> Option<usize> {
    let start = s + prefix_len;
    let len = b[start..].iter().take_while(|&&c| body(c)).count();
    let body_str = std::str::from_utf8(&b[start..start + len]).ok()?;
    let shape = (min..=max).contains(&len);
    // Without `random`, still reject obvious placeholders (`xxxx`, `0000`, `your-key-here`).
    let plausible = if random {
        looks_random(body_str)
    } else {
        classes(body_str) >= 2 && !body_str.contains("xxxx") && !body_str.contains("XXXX")
    };
    (shape && plausible).then_some(start + len)
}

/// How many of {upper, lower, digit} occur.
fn classes(s: &str) -> usize {
    let b = s.as_bytes();
    usize::from(b.iter().any(u8::is_ascii_uppercase))
        + usize::from(b.iter().any(u8::is_ascii_lowercase))
        + usize::from(b.iter().any(u8::is_ascii_digit))
}

/// `AKIA`/`ASIA` + 16 base32 (`[A-Z2-7]`), standing alone. AWS's documentation key
/// `AKIAIOSFODNN7EXAMPLE` (and any `…EXAMPLE`) is not a credential.
fn aws_key_id(b: &[u8], s: usize) -> Option<(Category, usize, usize)> {
    let body = b.get(s + 4..s + 20)?;
    let ok = body
        .iter()
        .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(c))
        && b.get(s + 20).is_none_or(|&c| !is_word(c))
        && !b[s..s + 20].ends_with(b"EXAMPLE");
    ok.then_some((Category::AwsKey, s, s + 20))
}

/// After an AWS secret keyword: the first standalone run of exactly 40 `[A-Za-z0-9/+]`
/// within 96 bytes that looks random. The keyword is what makes a 40-char base64 string
/// an AWS secret; on its own it could be any hash.
fn aws_secret_after(b: &[u8], kw_end: usize) -> Option<(Category, usize, usize)> {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'/' || c == b'+';
    let limit = (kw_end + 96).min(b.len());
    let mut i = kw_end;
    while i < limit {
        if !b64(b[i]) {
            i += 1;
            continue;
        }
        let s = i;
        while i < b.len() && b64(b[i]) {
            i += 1;
        }
        let cand = std::str::from_utf8(&b[s..i]).ok()?;
        if i - s == 40 && looks_random(cand) && !cand.contains("EXAMPLE") {
            return Some((Category::AwsKey, s, i));
        }
    }
    None
}

/// `sk-ant-…` (Anthropic) or `sk-…`/`sk-proj-…` (OpenAI): at least 32 body bytes of
/// `[A-Za-z0-9_-]` that look random.
fn provider_key(b: &[u8], s: usize) -> Option<(Category, usize, usize)> {
    let e = token(b, s, 3, is_token, 32, 400, true)?;
    Some((Category::ProviderApiKey, s, e))
}

/// `xox[baprs]-` + dash-separated groups, at least one digit group, 24+ bytes in all.
fn slack(b: &[u8], s: usize) -> Option<(Category, usize, usize)> {
    let body = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    let e = s + 5 + b[s + 5..].iter().take_while(|&&c| body(c)).count();
    let t = &b[s..e];
    (e - s >= 24 && t.iter().filter(|c| c.is_ascii_digit()).count() >= 6).then_some((
        Category::SlackToken,
        s,
        e,
    ))
}

// === private keys ===

/// `-----BEGIN [TYPE ]PRIVATE KEY[ BLOCK]-----` (PKCS#1/#8, EC, OpenSSH, encrypted, PGP),
/// through its END line; a truncated block runs to the end of its body. Public keys and
/// certificates are not secrets and have no `PRIVATE KEY` in the header.
fn private_key(text: &str, s: usize) -> Option<(Category, usize, usize)> {
    let rest = &text[s + "-----BEGIN ".len()..];
    let close = rest.find("-----").filter(|&k| k <= 80)?;
    let label = &rest[..close];
    let label_ok = (label.ends_with("PRIVATE KEY") || label.ends_with("PRIVATE KEY BLOCK"))
        && label
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' ');
    if !label_ok {
        return None;
    }
    let body_start = s + "-----BEGIN ".len() + close + 5;
    let (len, _open) = private_key_body(&text[body_start..]);
    Some((Category::PrivateKey, s, body_start + len))
}

/// Length of a private-key body (base64 lines, `Proc-Type:`-style headers, literal `\n`
/// escapes from JSON) including its END line if present; `true` if the body runs to the
/// end of `t`, i.e. a stream may still be delivering it.
pub(super) fn private_key_body(t: &str) -> (usize, bool) {
    let b = t.as_bytes();
    let body = |c: u8| c.is_ascii_alphanumeric() || b"+/=:,- \t\r\n\\".contains(&c);
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"-----END ") {
            let rest = &t[i + 9..];
            return match rest.find("-----") {
                Some(k) => (i + 9 + k + 5, false),
                // The END line is still arriving: stop before it so a stream keeps it
                // (and the state it carries) for the next piece.
                None if rest.len() < 40 => (i, true),
                None => (i, false),
            };
        }
        if b"-----END ".starts_with(&b[i..]) {
            return (i, true); // a partial END marker at the very end
        }
        if !body(b[i]) {
            return (i, false);
        }
        i += 1;
    }
    (i, true)
}

// === JWT ===

/// `header.payload.signature` in base64url whose header decodes to a JSON object with
/// an `"alg"` member. The `eyJ` trigger is base64 of `{"`, so random base64 rarely gets
/// here, and the decode check drops the rest (and `eyJ…` JSON blobs that are not JWTs).
///
/// A token cut off by the end of the text after a valid header (`header.payl`) counts
/// too: the header alone proves what it is, and a [`super::StreamRedactor`] must be able
/// to recognise a JWT longer than its window before the signature arrives.
fn jwt(b: &[u8], s: usize) -> Option<(Category, usize, usize)> {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let run = |from: usize| from + b[from..].iter().take_while(|&&c| b64(c)).count();
    let h_end = run(s);
    let truncated = |end: usize| {
        (end == b.len() && jwt_header_ok(&b[s..h_end])).then_some((Category::Jwt, s, end))
    };
    if b.get(h_end) != Some(&b'.') {
        return None;
    }
    let p_end = run(h_end + 1);
    if p_end == b.len() && p_end > h_end + 1 {
        return truncated(p_end);
    }
    if p_end == h_end + 1 || b.get(p_end) != Some(&b'.') {
        return None;
    }
    let end = run(p_end + 1);
    if end < b.len() && (is_word(b[end]) || b[end] == b'.') {
        return None;
    }
    jwt_header_ok(&b[s..h_end]).then_some((Category::Jwt, s, end))
}

/// Does this base64url segment decode to a JSON object with `"alg"`?
pub(super) fn jwt_header_ok(seg: &[u8]) -> bool {
    let Some(raw) = base64url_decode(seg) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&raw)
        .is_ok_and(|m| m.get("alg").is_some_and(serde_json::Value::is_string))
}

/// Unpadded base64url (RFC 4648 §5) as used by JWS compact serialisation.
fn base64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 || s.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// === connection strings ===

/// `scheme://[user]:password@host[/path][?query]` with a non-empty password. Templated
/// passwords (`${DB_PASS}`, `<password>`, `{{pw}}`, `****`) are configuration, not
/// credentials, and are not reported; neither are URLs without a password.
fn connection_string(text: &str, s: usize, auth_start: usize) -> Option<(Category, usize, usize)> {
    let b = text.as_bytes();
    if s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'+') {
        return None;
    }
    let stop = |c: u8| c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'<' | b'>' | b'`');
    let end = auth_start + b[auth_start..].iter().take_while(|&&c| !stop(c)).count();
    let url = &text[auth_start..end];
    let at = url.find('@')?;
    let userinfo = &url[..at];
    // `?`, `/` or `#` before the `@` means the `@` is in the path or query, not userinfo.
    if userinfo.contains(['/', '?', '#']) {
        return None;
    }
    let (_user, pass) = userinfo.split_once(':')?;
    let templated = pass.starts_with(['$', '<', '{', '%']) || pass.bytes().all(|c| c == b'*');
    let host = url[at + 1..].split(['/', '?', '#']).next().unwrap_or("");
    if pass.is_empty() || templated || host.is_empty() {
        return None;
    }
    let trimmed = url.trim_end_matches(['.', ',', ';', ')', ']', '}']);
    Some((Category::ConnectionString, s, auth_start + trimmed.len()))
}

/// How far a finding of `category` that reached the end of a stream buffer continues
/// into the next text `t`, and whether it may continue further still. Used by
/// [`super::StreamRedactor`] to swallow the tail of a secret longer than its window.
pub(super) fn continuation(category: Category, t: &str) -> (usize, bool) {
    let b = t.as_bytes();
    let body: fn(u8) -> bool = match category {
        Category::PrivateKey => return private_key_body(t),
        Category::Jwt => |c| is_token(c) || c == b'.',
        Category::ConnectionString => {
            |c| !c.is_ascii_whitespace() && !matches!(c, b'"' | b'\'' | b'<' | b'>' | b'`')
        }
        Category::AwsKey => |c| c.is_ascii_alphanumeric() || c == b'/' || c == b'+',
        c if c.group() == super::Group::Secret => is_token,
        _ => return (0, false),
    };
    let n = b.iter().take_while(|&&c| body(c)).count();
    (n, n == b.len())
}
