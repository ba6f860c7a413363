//! Requests to an S3-compatible API, path-style (`<endpoint>/<bucket>/<key>`, so any
//! S3-compatible server works), signed with AWS Signature Version 4 by `aws-sigv4` (the
//! AWS SDK's own signer). Credentials come from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and, for temporary ones, `AWS_SESSION_TOKEN`. Used by the
//! S3 witness (checkpoints under Object Lock) and the S3 sink (the ledger as
//! compressed JSON Lines).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;

use super::client::{self, Answer};

/// A bucket on an S3 API.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// `http[s]://host[:port]`.
    pub endpoint: String,
    pub bucket: String,
    /// For the signature.
    pub region: String,
}

/// Why a bucket name is not one.
///
/// # Errors
/// The reason.
pub fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(ok) {
        return Err(format!(
            "bucket `{bucket}` is not an S3 bucket name (3-63 lowercase letters, digits, `-`, `.`)"
        ));
    }
    Ok(())
}

/// RFC 3986 encoding as S3 wants it (`/` kept in keys).
pub fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn credentials() -> Result<aws_credential_types::Credentials, String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Ok(aws_credential_types::Credentials::new(
        var("AWS_ACCESS_KEY_ID").ok_or("AWS_ACCESS_KEY_ID is not set")?,
        var("AWS_SECRET_ACCESS_KEY").ok_or("AWS_SECRET_ACCESS_KEY is not set")?,
        var("AWS_SESSION_TOKEN"),
        None,
        "environment",
    ))
}

impl Bucket {
    /// Signs and sends one request for `key` (empty: the bucket) with `query` pairs and
    /// extra `headers` (lowercase names).
    ///
    /// # Errors
    /// No credentials, or why the server could not be reached.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Answer, String> {
        let ep = client::split_url(&self.endpoint).map_err(|e| e.to_string())?;
        let path = encode(&format!("{}/{}/{key}", ep.prefix, self.bucket), true);
        let path = path.trim_end_matches('/').to_owned() + if key.is_empty() { "/" } else { "" };
        let query_text = query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k, false), encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let target = if query_text.is_empty() {
            path
        } else {
            format!("{path}?{query_text}")
        };
        let url = format!("{}{target}", ep.base());
        let identity = credentials()?.into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("signing: {e}"))?
            .into();
        let signable = SignableRequest::new(
            method,
            url.as_str(),
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("signing: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing: {e}"))?
            .into_parts();
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        all.extend(
            instructions
                .headers()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned())),
        );
        client::exchange_raw(tls, &ep.base(), method, &target, &all, body, timeout)
            .map_err(|e| e.to_string())
    }
}
