//! The ledger's section of the configuration (`ledger:`), typed and defaulted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// When the write-ahead segment is synced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` inside every `append`: no acknowledged record is lost on power loss,
    /// at the cost of one disk flush per record.
    Always,
    /// A background thread syncs at this interval: a power loss loses at most this much.
    Interval(Duration),
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(100))
    }
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::default()),
            other => parse_duration(other)
                .filter(|d| !d.is_zero())
                .map(FsyncPolicy::Interval)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "fsync: `{other}` is not `always`, `interval` or a duration such as `250ms`"
                    ))
                }),
        }
    }
}

/// What of a prompt and a response the ledger keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentMode {
    /// Everything the record carries.
    #[default]
    Full,
    /// As given: redaction already happened upstream (the policy engine).
    Redacted,
    /// No text: each message, parameter, output and tool-call argument is replaced by
    /// its SHA-256 (hex, of the UTF-8 text) so evidence can be matched later.
    Metadata,
}

impl ContentMode {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ContentMode::Full => "full",
            ContentMode::Redacted => "redacted",
            ContentMode::Metadata => "metadata",
        }
    }
}

/// `"250ms"`, `"10s"`, `"5m"`, `"1h"`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return None,
    })
}

pub(crate) fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{t}` is not a duration such as `500ms`, `10s`, `5m`, `1h` or `7d`"
            ))
        }),
    }
}

/// The `ledger:` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Directory holding the WAL segments, `ledger.sqlite` and the keys (created 0700).
    /// Default: `<state_dir>/ledger` (empty here; the node's `Config` resolves it once,
    /// so code that opens a ledger always gets the final path).
    pub dir: PathBuf,
    /// `interval` (sync every 100 ms in the background), `always` (sync in every
    /// append), or an interval such as `250ms`. Default: `interval`.
    pub fsync: FsyncPolicy,
    /// Write a signed checkpoint after this many records. Default: 1000.
    pub checkpoint_every: u64,
    /// …or after this long when records arrived since the last one (`10s`, `500ms`).
    /// Default: 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub checkpoint_interval: Duration,
    /// Records older than this many days are pruned (an anchor keeps the chain
    /// verifiable); 0 keeps records forever. Default: 90.
    pub retention_days: u32,
    /// After this many days the content fields (messages, params, output, tool calls)
    /// are removed; metadata and hashes stay. Default: none (kept as long as the record).
    pub content_retention_days: Option<u32>,
    /// `full`, `redacted` (stored as given) or `metadata` (digests instead of text).
    /// Default: `full`.
    pub content_mode: ContentMode,
    /// File holding the HMAC key (hex or raw). Default: `$SLUICE_LEDGER_HMAC_KEY`, else
    /// `<dir>/hmac.key`, generated at first open.
    pub hmac_key_file: Option<PathBuf>,
    /// A command that prints the HMAC key (a KMS or vault agent), e.g.
    /// `["vault", "kv", "get", "-field=key", "secret/sluice"]`; run once at open. Takes
    /// precedence over `hmac_key_file`.
    pub hmac_key_command: Option<Vec<String>>,
    /// File holding the checkpoint signing key (PKCS#8 PEM, or the 32-byte seed in hex),
    /// owner root or Sluice's user, mode 0600/0400. Default: `<dir>/checkpoint.key`,
    /// generated at first open.
    pub signing_key_file: Option<PathBuf>,
    /// A command that prints the signing key; takes precedence over `signing_key_file`.
    pub signing_key_command: Option<Vec<String>>,
    /// The ledger's name in its checkpoints (the C2SP checkpoint origin line, and the
    /// log a witness knows it by): no whitespace or `+`. Default:
    /// `sluice/<16 hex digits of the checkpoint public key's SHA-256>`.
    pub origin: Option<String>,
    /// Witnesses off the node that cosign each checkpoint (C2SP `tlog-witness`), each
    /// with the vkey its cosignatures are checked with. Checkpoints wait in a durable
    /// outbox until each witness holds them; records are pruned by retention only once
    /// every witness holds a checkpoint past them.
    pub witnesses: Vec<WitnessTarget>,
    /// The fleet's central ledger on PostgreSQL, which this node ships its records to
    /// (README "Running a fleet"). Default: none.
    pub central: Option<super::central::CentralConfig>,
}

impl LedgerConfig {
    /// Where the HMAC key is configured to come from (`None`: the environment or the
    /// directory).
    pub fn hmac_source(&self) -> Option<super::keys::Secret<'_>> {
        self.hmac_key_command
            .as_deref()
            .map(super::keys::Secret::Command)
            .or_else(|| self.hmac_key_file.as_deref().map(super::keys::Secret::File))
    }

    /// Where the signing key is configured to come from (`None`: the directory).
    pub fn signing_source(&self) -> Option<super::keys::Secret<'_>> {
        self.signing_key_command
            .as_deref()
            .map(super::keys::Secret::Command)
            .or_else(|| {
                self.signing_key_file
                    .as_deref()
                    .map(super::keys::Secret::File)
            })
    }
}

/// One witness: a `tlog-witness` service (`url` and `key`) or an Object Lock bucket
/// (`s3`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WitnessTarget {
    /// `http://host:port[/prefix]` (`sluice witness serve`, or any C2SP witness).
    #[serde(default)]
    pub url: Option<String>,
    /// Its cosigner vkey (`sluice witness key` prints it).
    #[serde(default)]
    pub key: Option<String>,
    /// An S3 bucket with Object Lock that keeps every checkpoint (see
    /// `crate::witness::s3`).
    #[serde(default)]
    pub s3: Option<crate::witness::s3::S3Config>,
}

/// What a [`WitnessTarget`] is, once checked.
#[derive(Debug, Clone)]
pub enum WitnessKind {
    /// A C2SP witness and its cosigner key.
    Tlog {
        url: String,
        key: crate::tlog::note::NoteVerifier,
    },
    /// An Object Lock bucket.
    S3(crate::witness::s3::S3Config),
}

impl WitnessTarget {
    /// The witness, or why the entry does not name one.
    ///
    /// # Errors
    /// The reason, for the configuration error.
    pub fn kind(&self) -> Result<WitnessKind, String> {
        match (&self.url, &self.key, &self.s3) {
            (Some(url), Some(key), None) => {
                crate::http::client::split_url(url).map_err(|e| e.to_string())?;
                let key = crate::tlog::note::NoteVerifier::parse_vkey(key)
                    .map_err(|e| format!("{e} (`sluice witness key` prints a witness's vkey)"))?;
                Ok(WitnessKind::Tlog {
                    url: url.clone(),
                    key,
                })
            }
            (None, None, Some(s3)) => {
                s3.check()?;
                Ok(WitnessKind::S3(s3.clone()))
            }
            _ => Err("a witness is either `url` and `key` (a tlog witness) or `s3`".into()),
        }
    }
}

impl WitnessKind {
    /// Its name in metrics, logs, `witnesses.json` and verify's output.
    pub fn name(&self) -> String {
        match self {
            WitnessKind::Tlog { key, .. } => key.name.clone(),
            WitnessKind::S3(c) => c.name(),
        }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            dir: PathBuf::new(),
            fsync: FsyncPolicy::default(),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            retention_days: 90,
            content_retention_days: None,
            content_mode: ContentMode::Full,
            hmac_key_file: None,
            hmac_key_command: None,
            signing_key_file: None,
            signing_key_command: None,
            origin: None,
            witnesses: Vec::new(),
            central: None,
        }
    }
}
