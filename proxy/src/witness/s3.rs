//! An S3 bucket with Object Lock as a witness: each checkpoint the node signs is stored as
//! an object `<prefix><log id>/<size, 20 digits>` under a COMPLIANCE-mode retention, which
//! nobody (not the node's root, not the bucket's owner) can shorten or delete before it
//! ends; a later `PUT` of the same key makes a new version beside the locked one. The
//! bucket checks nothing itself: its worth is that every head the node ever published
//! stays readable, so `audit verify` finds a rewritten or truncated ledger by comparing
//! it with all of them (every version of every key).
//!
//! Requests are signed with AWS Signature Version 4 (path-style URLs, so any
//! S3-compatible server works); credentials come from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and, for temporary ones, `AWS_SESSION_TOKEN`.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::Digest;

use crate::http::client::{self, Answer};

/// Where the archive lives (`ledger.witnesses[].s3`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http[s]://host[:port]` of the S3 API (path-style requests).
    pub endpoint: String,
    /// A bucket created with Object Lock enabled.
    pub bucket: String,
    /// Region for the signature. Default: `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Key prefix, e.g. `node-a/`. Default: none.
    #[serde(default)]
    pub prefix: String,
    /// COMPLIANCE retention of each checkpoint object, in days. Default: 400.
    #[serde(default = "default_retention")]
    pub retention_days: u32,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_retention() -> u32 {
    400
}

impl S3Config {
    /// The name this archive goes by in metrics, logs and verify's output.
    pub fn name(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Why the settings cannot work, if they cannot.
    ///
    /// # Errors
    /// The reason.
    pub fn check(&self) -> Result<(), String> {
        client::split_url(&self.endpoint).map_err(|e| e.to_string())?;
        crate::http::s3::check_bucket(&self.bucket)?;
        if self.prefix.chars().any(|c| c.is_control() || c == '\\') {
            return Err("prefix holds control characters".into());
        }
        if self.retention_days == 0 {
            return Err("retention_days must be at least 1".into());
        }
        Ok(())
    }

    fn key(&self, origin: &str, size: u64) -> String {
        format!("{}{}/{size:020}", self.prefix, super::log_id(origin))
    }
}

/// Sign and send one request; `query` is `(name, value)` pairs, `headers` extra ones.
fn send(
    cfg: &S3Config,
    method: &str,
    key: &str,
    query: &[(&str, &str)],
    headers: &[(&str, String)],
    body: &str,
) -> Result<Answer, String> {
    let bucket = crate::http::s3::Bucket {
        endpoint: cfg.endpoint.clone(),
        bucket: cfg.bucket.clone(),
        region: cfg.region.clone(),
    };
    bucket.request(
        &client::system_tls(),
        method,
        key,
        query,
        headers,
        body.as_bytes(),
        Duration::from_secs(10),
    )
}

/// Store the checkpoint `note` (tree `size` of `origin`) under COMPLIANCE retention.
///
/// # Errors
/// What the server answered, or why it could not be reached.
pub fn put_checkpoint(cfg: &S3Config, origin: &str, size: u64, note: &str) -> Result<(), String> {
    let now = SystemTime::now();
    // Whole seconds: ISO 8601 as S3's examples write it (some servers parse no more).
    let u = time::OffsetDateTime::from(
        now + Duration::from_secs(u64::from(cfg.retention_days) * 86_400),
    );
    let until = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        u.year(),
        u8::from(u.month()),
        u.day(),
        u.hour(),
        u.minute(),
        u.second()
    );
    let md5 = B64.encode(md5::Md5::digest(note.as_bytes()));
    let headers = [
        ("content-md5", md5),
        ("content-type", "text/plain; charset=utf-8".to_owned()),
        ("x-amz-object-lock-mode", "COMPLIANCE".to_owned()),
        ("x-amz-object-lock-retain-until-date", until),
    ];
    let a = send(cfg, "PUT", &cfg.key(origin, size), &[], &headers, note)?;
    if a.status == 200 {
        Ok(())
    } else {
        Err(format!("PUT answered {}: {}", a.status, a.body.trim()))
    }
}

/// One stored checkpoint version.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object key.
    pub key: String,
    /// The note as stored.
    pub note: String,
    /// When it was stored (as the server says, RFC 3339 text).
    pub last_modified: String,
}

fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Every version of every checkpoint object of `origin`, oldest key first.
///
/// # Errors
/// What the server answered, or why it could not be reached.
pub fn list_checkpoints(cfg: &S3Config, origin: &str) -> Result<Vec<Stored>, String> {
    let prefix = format!("{}{}/", cfg.prefix, super::log_id(origin));
    let mut versions: Vec<(String, String, String)> = Vec::new();
    let (mut key_marker, mut version_marker) = (String::new(), String::new());
    loop {
        let mut q = vec![("versions", ""), ("prefix", prefix.as_str())];
        if !key_marker.is_empty() {
            q.push(("key-marker", key_marker.as_str()));
            q.push(("version-id-marker", version_marker.as_str()));
        }
        let a = send(cfg, "GET", "", &q, &[], "")?;
        if a.status != 200 {
            return Err(format!("listing answered {}: {}", a.status, a.body.trim()));
        }
        for v in a.body.split("<Version>").skip(1) {
            let v = v.split("</Version>").next().unwrap_or("");
            if let (Some(k), Some(id)) = (tag(v, "Key"), tag(v, "VersionId")) {
                let when = tag(v, "LastModified").unwrap_or("").to_owned();
                versions.push((unescape(k), unescape(id), when));
            }
        }
        if tag(&a.body, "IsTruncated") != Some("true") {
            break;
        }
        key_marker = tag(&a.body, "NextKeyMarker")
            .map(unescape)
            .unwrap_or_default();
        version_marker = tag(&a.body, "NextVersionIdMarker")
            .map(unescape)
            .unwrap_or_default();
        if key_marker.is_empty() {
            break;
        }
    }
    versions.sort();
    let mut out = Vec::new();
    for (key, id, when) in versions {
        let a = send(cfg, "GET", &key, &[("versionId", id.as_str())], &[], "")?;
        if a.status != 200 {
            return Err(format!(
                "GET {key} answered {}: {}",
                a.status,
                a.body.trim()
            ));
        }
        out.push(Stored {
            key,
            note: a.body,
            last_modified: when,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_settings_are_checked() {
        let c = S3Config {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "sluice-ledger".into(),
            region: default_region(),
            prefix: "node-a/".into(),
            retention_days: 1,
        };
        assert!(c.check().is_ok());
        assert!(c.key("o", 42).ends_with("/00000000000000000042"));
        assert_eq!(crate::http::s3::encode("a b/c~", true), "a%20b/c~");
        for bad in [
            S3Config {
                bucket: "B".into(),
                ..c.clone()
            },
            S3Config {
                endpoint: "s3.example".into(),
                ..c.clone()
            },
            S3Config {
                retention_days: 0,
                ..c.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
