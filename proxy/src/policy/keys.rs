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

/// The API key a request carries and the header it came in.
pub fn presented_key(headers: &http::HeaderMap) -> Option<(&'static str, String)> {
    for name in ["authorization", "x-api-key", "x-goog-api-key", "api-key"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            let key = if name == "authorization" {
                match v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                {
                    Some(k) => k.trim(),
                    None => continue,
                }
            } else {
                v
            };
            if !key.is_empty() {
                return Some((name, key.to_string()));
            }
        }
    }
    None
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
        presented: Option<(&'static str, String)>,
        provider: &str,
        identity: &mut Identity,
    ) -> Result<Option<KeySwap>, (&'static str, Refusal)> {
        let Some((header, key)) = presented else {
            return Ok(None);
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
