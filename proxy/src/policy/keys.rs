//! Step 1 of the governance order: who is calling. Virtual keys and key fingerprints.
//!
//! A client configured with a virtual key (`sk-sluice-…`) never holds a provider key:
//! Sluice maps the virtual key to a user, team and project, and swaps in the real provider
//! key it holds. Virtual keys are stored as SHA-256 digests in config (`key_sha256`); a
//! plain `key` is accepted for tests and demos. A client's own provider key is never
//! stored or logged anywhere: only [`fingerprint`] of it is.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::verdict::Refusal;
use crate::record::Identity;

/// The prefix that marks a Sluice virtual key.
pub const VIRTUAL_KEY_PREFIX: &str = "sk-sluice-";

/// One virtual key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualKey {
    /// SHA-256 (hex) of the key the client presents.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// The key itself (tests and demos; prefer `key_sha256`).
    #[serde(default)]
    pub key: Option<String>,
    /// The person or service the key belongs to.
    pub user: String,
    /// Team, for scopes and shared budgets.
    #[serde(default)]
    pub team: Option<String>,
    /// Project.
    #[serde(default)]
    pub project: Option<String>,
    /// Real provider keys Sluice sends instead, by provider label.
    #[serde(default)]
    pub provider_keys: BTreeMap<String, Secret>,
}

/// Where a provider key comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Secret {
    /// An environment variable.
    Env {
        /// Its name.
        env: String,
    },
    /// A file (its trimmed content).
    File {
        /// Its path.
        file: PathBuf,
    },
    /// Inline (tests only).
    Value {
        /// The value.
        value: String,
    },
}

/// A virtual key that could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The provider key source is empty or missing.
    #[error("virtual key of user {user:?}: provider key for {provider} is unavailable ({why}); set it or remove the entry")]
    Secret {
        /// Key owner.
        user: String,
        /// Provider label.
        provider: String,
        /// What was missing.
        why: String,
    },
    /// Neither `key` nor a valid `key_sha256`.
    #[error("virtual key of user {0:?}: give `key_sha256` (64 hex chars) or `key`")]
    NoKey(String),
}

/// A presented virtual key, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    /// Owner.
    pub user: String,
    /// Team.
    pub team: Option<String>,
    /// Project.
    pub project: Option<String>,
    /// Real provider keys by provider label.
    provider_keys: BTreeMap<String, String>,
}

impl ResolvedKey {
    /// The real key to send to `provider`, if Sluice holds one.
    pub fn provider_key(&self, provider: &str) -> Option<&str> {
        self.provider_keys.get(provider).map(String::as_str)
    }
}

/// The virtual-key table, by digest.
#[derive(Debug, Default)]
pub struct VirtualKeys {
    by_digest: BTreeMap<String, ResolvedKey>,
}

impl VirtualKeys {
    /// Resolve every key's provider secrets now, so a missing one fails start-up.
    ///
    /// # Errors
    /// [`KeyError`] naming the user and provider.
    pub fn new(keys: &[VirtualKey]) -> Result<VirtualKeys, KeyError> {
        let mut by_digest = BTreeMap::new();
        for k in keys {
            let digest = match (&k.key_sha256, &k.key) {
                (Some(d), _) if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    d.to_ascii_lowercase()
                }
                (_, Some(key)) => hex::encode(Sha256::digest(key.as_bytes())),
                _ => return Err(KeyError::NoKey(k.user.clone())),
            };
            let mut provider_keys = BTreeMap::new();
            for (provider, secret) in &k.provider_keys {
                let fail = |why: String| KeyError::Secret {
                    user: k.user.clone(),
                    provider: provider.clone(),
                    why,
                };
                let value = match secret {
                    Secret::Env { env } => {
                        std::env::var(env).map_err(|_| fail(format!("${env} is not set")))?
                    }
                    Secret::File { file } => std::fs::read_to_string(file)
                        .map_err(|e| fail(format!("{}: {e}", file.display())))?
                        .trim()
                        .to_string(),
                    Secret::Value { value } => value.clone(),
                };
                if value.is_empty() {
                    return Err(fail("it is empty".into()));
                }
                provider_keys.insert(provider.clone(), value);
            }
            by_digest.insert(
                digest,
                ResolvedKey {
                    user: k.user.clone(),
                    team: k.team.clone(),
                    project: k.project.clone(),
                    provider_keys,
                },
            );
        }
        Ok(VirtualKeys { by_digest })
    }

    /// Whether any virtual key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Look up a presented key; `None` when it is not a known virtual key.
    pub fn resolve(&self, presented: &str) -> Option<&ResolvedKey> {
        self.by_digest
            .get(&hex::encode(Sha256::digest(presented.as_bytes())))
    }
}

/// `sha256:` and the first 16 hex digits of the key's SHA-256: enough to tell keys apart
/// in an audit, useless for recovering the key.
pub fn fingerprint(key: &str) -> String {
    let d = hex::encode(Sha256::digest(key.as_bytes()));
    format!("sha256:{}", &d[..16])
}

// === credential carriers ===
//
// Every place a client can put a provider credential, in one list: the request headers
// and the query parameters below. `presented_key` finds the key (for the identity's
// fingerprint and the virtual-key swap); `scrub_path` takes it out of the path before a
// record, a log line or an error message can hold it.

/// Headers that carry a provider credential. `authorization` holds `Bearer <key>` or an
/// AWS SigV4 `Credential=<access key id>/…` (the access key id is fingerprinted, the
/// signature never kept).
pub const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "x-api-key", "x-goog-api-key", "api-key"];

/// Query parameters that carry a credential (Gemini's `?key=`, presigned AWS URLs, the
/// `api_key`/`access_token` conventions of OpenAI-compatible servers).
pub const CREDENTIAL_PARAMS: &[&str] = &[
    "key",
    "api_key",
    "api-key",
    "apikey",
    "access_token",
    "token",
    "x-amz-credential",
    "x-amz-signature",
    "x-amz-security-token",
];

/// Where a presented key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// This request header.
    Header(&'static str),
    /// This query parameter.
    Query(&'static str),
}

/// The provider key a request carries and where: the first credential header, else the
/// first credential query parameter of `path`.
pub fn presented_key(headers: &http::HeaderMap, path: &str) -> Option<(Carrier, String)> {
    for &name in CREDENTIAL_HEADERS {
        let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let v = v.trim();
        let key = if name == "authorization" {
            let bearer = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "));
            match bearer.or_else(|| sigv4_access_key(v)) {
                Some(k) => k.trim(),
                None => continue,
            }
        } else {
            v
        };
        if !key.is_empty() {
            return Some((Carrier::Header(name), key.to_string()));
        }
    }
    query_credentials(path)
        .next()
        .map(|(name, value)| (Carrier::Query(name), value))
}

/// The access key id of an AWS SigV4 `Authorization` value.
fn sigv4_access_key(v: &str) -> Option<&str> {
    let rest = v.strip_prefix("AWS4-HMAC-SHA256")?;
    let cred = rest
        .split([',', ' '])
        .find_map(|p| p.trim().strip_prefix("Credential="))?;
    cred.split('/').next()
}

/// The credential parameters of `path`'s query, with their (percent-decoded) values.
fn query_credentials(path: &str) -> impl Iterator<Item = (&'static str, String)> + '_ {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    query.split('&').filter_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let carrier = CREDENTIAL_PARAMS
            .iter()
            .find(|c| c.eq_ignore_ascii_case(name))?;
        let value = percent_decode(value);
        (!value.is_empty()).then_some((*carrier, value))
    })
}

/// `path` with the value of every credential query parameter replaced by its
/// [`fingerprint`] (borrowed unchanged when there is none): what records, logs and error
/// messages may hold.
pub fn scrub_path(path: &str) -> std::borrow::Cow<'_, str> {
    let Some((base, query)) = path.split_once('?') else {
        return path.into();
    };
    if query_credentials(path).next().is_none() {
        return path.into();
    }
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let secret = CREDENTIAL_PARAMS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name));
            if secret && !value.is_empty() {
                format!("{name}={}", fingerprint(&percent_decode(value)))
            } else {
                pair.to_owned()
            }
        })
        .collect();
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out.into()
}

/// `%XX` escapes and `+` decoded; invalid escapes kept as sent.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The real provider key sent upstream in place of a virtual key, in the header the
/// client used.
#[derive(Clone)]
pub struct KeySwap {
    /// `authorization`, `x-api-key`, `x-goog-api-key` or `api-key`.
    pub header: &'static str,
    /// The provider key.
    pub key: String,
}

impl std::fmt::Debug for KeySwap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself, not even in a debug log.
        f.debug_struct("KeySwap")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl KeySwap {
    /// The header value to send: `Bearer <key>` for `authorization`, the key otherwise.
    pub fn header_value(&self) -> String {
        if self.header == "authorization" {
            format!("Bearer {}", self.key)
        } else {
            self.key.clone()
        }
    }
}

impl VirtualKeys {
    /// Step 1 of the governance order: who is calling. A virtual key (`sk-sluice-…`)
    /// names the user, team and project in `identity` and is swapped for the real
    /// `provider` key Sluice holds; any other key is recorded only as its fingerprint.
    /// On refusal (an unknown virtual key, 401; no provider key for it, 403): the reason
    /// code and the answer (`identity` keeps what was learnt).
    pub fn identify(
        &self,
        presented: Option<(Carrier, String)>,
        provider: &str,
        identity: &mut Identity,
    ) -> Result<Option<KeySwap>, (&'static str, Refusal)> {
        let Some((carrier, key)) = presented else {
            return Ok(None);
        };
        // A virtual key is swapped in the header it came in; one in a query parameter
        // (or any other key) is only fingerprinted.
        let header = match carrier {
            Carrier::Header(h) if key.starts_with(VIRTUAL_KEY_PREFIX) => h,
            _ => {
                identity.api_key_fingerprint = Some(fingerprint(&key));
                return Ok(None);
            }
        };
        if !key.starts_with(VIRTUAL_KEY_PREFIX) {
            identity.api_key_fingerprint = Some(fingerprint(&key));
            return Ok(None);
        }
        let refused = |status, message: String| Refusal {
            status,
            message,
            retry_after: None,
        };
        let Some(vk) = self.resolve(&key) else {
            let message = "Sluice does not know this virtual key (sk-sluice-…); ask your administrator for a valid one.";
            return Err(("invalid_virtual_key", refused(401, message.into())));
        };
        identity.user = Some(vk.user.clone());
        identity.team = vk.team.clone();
        identity.project = vk.project.clone();
        let Some(real) = vk.provider_key(provider) else {
            let message = format!("Sluice holds no {provider} key for this virtual key.");
            return Err(("no_provider_key", refused(403, message)));
        };
        let swap = KeySwap {
            header,
            key: real.to_owned(),
        };
        Ok(Some(swap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn every_carrier_is_found() {
        let none = headers(&[]);
        for (h, want) in [
            (headers(&[("authorization", "Bearer sk-a")]), "sk-a"),
            (headers(&[("x-api-key", "sk-ant-b")]), "sk-ant-b"),
            (headers(&[("x-goog-api-key", "AIzaC")]), "AIzaC"),
            (headers(&[("api-key", "azure-d")]), "azure-d"),
            (
                headers(&[(
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261206/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=abc",
                )]),
                "AKIAEXAMPLE",
            ),
        ] {
            assert_eq!(presented_key(&h, "/v1/x").unwrap().1, want);
        }
        let (carrier, key) = presented_key(
            &none,
            "/v1beta/models/m:generateContent?alt=sse&key=AIza%2Bq",
        )
        .unwrap();
        assert_eq!((carrier, key.as_str()), (Carrier::Query("key"), "AIza+q"));
        assert!(presented_key(&none, "/v1/chat/completions?stream=true").is_none());
        assert!(presented_key(&headers(&[("authorization", "Basic eA==")]), "/").is_none());
    }

    #[test]
    fn scrubbed_paths_keep_everything_but_the_secrets() {
        let p = "/v1beta/models/m:streamGenerateContent?alt=sse&key=AIzaSECRET&Key=second#frag";
        let s = scrub_path(p);
        assert!(!s.contains("SECRET") && !s.contains("second"), "{s}");
        assert!(s.starts_with("/v1beta/models/m:streamGenerateContent?alt=sse&key=sha256:"));
        assert!(s.contains("&Key=sha256:") && s.ends_with("#frag"), "{s}");
        assert_eq!(
            scrub_path("/v1/chat/completions?x=1"),
            "/v1/chat/completions?x=1"
        );
        let presigned = "/model/m/invoke?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef&X-Amz-Security-Token=tok";
        let s = scrub_path(presigned);
        assert!(
            !s.contains("deadbeef") && !s.contains("tok") && !s.contains("AKIA"),
            "{s}"
        );
    }
}
