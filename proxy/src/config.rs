//! The one typed configuration of a Sluice node, read from a single YAML file.
//!
//! Every field has a default, so an empty file is a valid configuration that listens on
//! loopback and inspects the well-known providers. [`Config::from_yaml`] parses *and*
//! validates; nothing else in the process re-checks what is checked here. Errors carry
//! the file line where YAML gives one, and name the key, the value and why it is wrong.
//!
//! This module does not open sockets or files other than the config itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML syntax, an unknown key or a wrong type.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed but unusable values; one entry per problem.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// `${NAME}` (letters, digits and `_`) replaced by `var(NAME)`, the value of an
/// environment variable when the node reads its config, so one file serves every node:
/// e.g. `pod_facing_v4: "${NODE_IP}:15443"` with `NODE_IP` from the Kubernetes downward
/// API. `$${` stands for a literal `${`; any other `$`, and comment lines, are left alone
/// (regexes keep their anchors).
///
/// # Errors
/// [`ConfigError::Syntax`] at the reference, for a variable that is not set.
pub fn expand_env(
    text: &str,
    file: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        // Comment lines are left as they are.
        let offset = text.len() - tail.len();
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        if text[line_start..offset].trim_start().starts_with('#') {
            let end = tail.find('\n').unwrap_or(tail.len());
            out.push_str(&tail[..end]);
            rest = &tail[end..];
            continue;
        }
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let name_len = tail.strip_prefix("${").and_then(|t| {
            let n = t
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(t.len());
            (n > 0 && t[n..].starts_with('}') && !t.starts_with(|c: char| c.is_ascii_digit()))
                .then_some(n)
        });
        let Some(n) = name_len else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let name = &tail[2..2 + n];
        match var(name) {
            Some(v) => out.push_str(&v),
            None => {
                let offset = text.len() - tail.len();
                let line = text[..offset].matches('\n').count() + 1;
                let column = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
                return Err(ConfigError::Syntax {
                    file: file.to_string(),
                    line,
                    column,
                    message: format!(
                        "${{{name}}} is not set in the environment (set it, or write $${{ for a literal ${{)"
                    ),
                });
            }
        }
        rest = &tail[3 + n..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One semantic problem in a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `file:line` when the key could be located in the source text.
    pub location: String,
    /// Dotted key path, e.g. `providers[2].host`.
    pub key: String,
    /// What is wrong and what to do instead.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.key, self.message)
    }
}

/// The whole configuration of one node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default = "Config::unresolved")]
pub struct Config {
    /// Data-plane listeners. Each accepts TLS and plain HTTP (told apart by the first byte).
    /// Default: `["127.0.0.1:15443"]`.
    pub listen: Vec<SocketAddr>,
    /// Prometheus `/metrics` listener; `null` disables it. Default: `127.0.0.1:15090`.
    pub metrics_listen: Option<SocketAddr>,
    /// Directory for the CA, records and other state. Default: `$SLUICE_STATE_DIR`, else
    /// `/var/lib/sluice` for root and `~/.local/state/sluice` for other users.
    pub state_dir: PathBuf,
    /// The organisation CA used to mint per-host leaf certificates.
    pub ca: CaConfig,
    /// Destinations whose traffic is inspected. Default: the well-known LLM API hosts on 443.
    pub providers: Vec<ProviderConfig>,
    /// Hosts (SNI, or `Host` for plain HTTP; exact or a pattern like `providers[].host`)
    /// whose captured connections are relayed untouched, with a connection record. Every
    /// other captured connection that is not an inspected provider — an unknown SNI, no
    /// SNI, not TLS or HTTP — is refused and recorded: captured traffic is inspected or
    /// refused, never passed through by default. Default: none.
    pub passthrough: Vec<String>,
    /// How the real destination of an accepted connection is found.
    pub original_dst: crate::original_dst::OriginalDstConfig,
    /// Connections to the providers.
    pub upstream: UpstreamConfig,
    /// Connections from clients.
    pub downstream: DownstreamConfig,
    /// Hand-off of records to the ledger.
    pub records: RecordsConfig,
    /// The tamper-evident audit ledger. Default directory: `<state_dir>/ledger`.
    pub ledger: crate::ledger::LedgerConfig,
    /// When the ledger cannot be written (disk full, unwritable path): `fail_closed`
    /// (default: requests are refused with a clear error, nothing goes unrecorded) or
    /// `fail_open` (requests pass; each lost record is logged with its metadata and
    /// counted in `sluice_ledger_append_errors_total`).
    pub on_ledger_failure: OnLedgerFailure,
    /// The eBPF transparent redirect (off by default).
    pub redirect: crate::redirect::RedirectConfig,
    /// The in-VPC appliance: routed capture with TPROXY (off by default; see
    /// [`crate::appliance`]). Its provider set is `redirect.prefixes`/`ports`/`refresh_secs`.
    pub appliance: crate::appliance::ApplianceConfig,
    /// Who a client address is: CIDR → name, team, environment, owner (longest prefix
    /// wins). Records carry it as `identity.network`; policies scope on it.
    pub networks: Vec<crate::identity::networks::NetworkConfig>,
    /// Where the kubelet's files name the node's pods (for attribution).
    pub kubernetes: crate::identity::pods::KubernetesConfig,
    /// OpenTelemetry export (off unless `otel.endpoint` is set).
    pub otel: crate::otel::OtelConfig,
    /// What the nodes of a fleet share: budgets and rate limits in Redis.
    pub fleet: crate::policy::FleetConfig,
    /// Governance: virtual keys and the policy chain (empty: everything is allowed).
    pub policy: crate::policy::PolicyConfig,
    /// Continuous delivery of the ledger to SIEMs and webhooks (see [`crate::delivery`]).
    pub sinks: Vec<crate::delivery::SinkConfig>,
    /// Security alert rules over the record stream (see [`crate::alerts`]).
    pub alerts: crate::alerts::AlertsConfig,
    /// Bytes of each request and response body kept for inspection and records.
    /// Beyond it the record says `truncated: true`; the request itself is not affected.
    /// Default: 8 MiB.
    pub max_inspect_bytes: usize,
    /// Worker threads of the data plane. Default: the number of CPUs.
    pub threads: usize,
    /// What `policy lint` warns about: valid, but not doing what it seems to (see
    /// [`crate::policy::lint`]). Logged at start and on reload.
    #[serde(skip)]
    pub warnings: Vec<Problem>,
}

/// Where the organisation CA lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// CA certificate (PEM). Default: `<state_dir>/ca/ca.crt`.
    pub cert: Option<PathBuf>,
    /// CA private key (PEM, mode 0600). Default: `<state_dir>/ca/ca.key`.
    pub key: Option<PathBuf>,
    /// Validity of minted leaf certificates, in hours. Default: 24.
    pub leaf_validity_hours: u32,
    /// Leaf certificates kept in memory (LRU). Default: 1024.
    pub leaf_cache_size: usize,
}

/// One inspected destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Host name as sent in SNI / `Host` (exact, or `*.suffix` for a wildcard).
    pub host: String,
    /// Whether the destination speaks TLS. Default: true.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// Adapter name (`openai`, `anthropic`, `gemini`, `openai_compatible`, …).
    /// Default: chosen from the built-in host table.
    #[serde(default)]
    pub adapter: Option<String>,
}

/// Upstream (provider-facing) connection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Extra trusted roots (PEM bundle), added to the system store. Default: none.
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS connect timeout, milliseconds. Default: 10000.
    pub connect_timeout_ms: u64,
    /// Longest silence while reading a response, milliseconds. Long enough for slow
    /// reasoning models that pause inside a stream. Default: 600000.
    pub read_timeout_ms: u64,
    /// Offer HTTP/2 upstream (ALPN h2, falling back to http/1.1). Default: true.
    pub http2: bool,
}

/// Client-facing (downstream) limits. A client that stalls its request body gets
/// `408 Request Timeout` in its provider's error format, and the exchange is recorded
/// (`body_timeout`). A request head (HTTP/1.1) that is not complete within
/// `header_timeout_ms` of its first byte, or grows past `max_header_bytes`, gets `408` /
/// `431` and the connection is closed, recorded as a refused connection
/// (`request_head_timeout`, `request_head_too_large`): a client cannot hold a connection
/// by trickling its head a byte at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamConfig {
    /// Longest silence while reading a request body, milliseconds. Default: 30000.
    pub body_idle_timeout_ms: u64,
    /// Longest time from the request's arrival to the end of its body, however it
    /// trickles in (one byte every few seconds included), milliseconds. Default: 300000.
    pub body_deadline_ms: u64,
    /// How long a connection may wait for its next request (a new one for its first),
    /// milliseconds. Default: 60000.
    pub keepalive_idle_ms: u64,
    /// Longest time from a request head's first byte to its end, milliseconds.
    /// Default: 10000.
    pub header_timeout_ms: u64,
    /// Largest request head, bytes (1024 to 1048575). Default: 65536.
    pub max_header_bytes: usize,
    /// Longest downstream TLS handshake once its ClientHello is in, milliseconds; a client
    /// that stalls it is disconnected (`sluice_tls_handshakes_total{result="timeout"}`).
    /// Default: 10000.
    pub tls_handshake_timeout_ms: u64,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        DownstreamConfig {
            body_idle_timeout_ms: 30_000,
            body_deadline_ms: 300_000,
            keepalive_idle_ms: 60_000,
            header_timeout_ms: 10_000,
            max_header_bytes: 65_536,
            tls_handshake_timeout_ms: 10_000,
        }
    }
}

impl DownstreamConfig {
    /// The largest head Pingora's HTTP/1 parser takes.
    pub const HEADER_BYTES_CEILING: usize = 1_048_575;

    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (key, ms) in [
            ("body_idle_timeout_ms", self.body_idle_timeout_ms),
            ("body_deadline_ms", self.body_deadline_ms),
            ("keepalive_idle_ms", self.keepalive_idle_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
        ] {
            if ms == 0 {
                out.push((key, "must be at least 1 (milliseconds)".to_owned()));
            }
        }
        if !(1024..=Self::HEADER_BYTES_CEILING).contains(&self.max_header_bytes) {
            out.push((
                "max_header_bytes",
                format!(
                    "{} is out of range: use 1024 to {} (default 65536)",
                    self.max_header_bytes,
                    Self::HEADER_BYTES_CEILING
                ),
            ));
        }
        out
    }
}

/// What to do when the ledger cannot be written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnLedgerFailure {
    /// Refuse requests until the ledger works again.
    #[default]
    FailClosed,
    /// Let requests through; log and count what could not be recorded.
    FailOpen,
}

/// Hand-off of connection and admin records (off the request path) to the ledger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    /// Records buffered between the request path and the writer. When full, requests wait
    /// for room rather than drop a record. Default: 8192.
    pub channel_capacity: usize,
}

/// The state directory used when the config names none (see [`Config::state_dir`]).
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/sluice");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/sluice"),
        None => PathBuf::from(".sluice"),
    }
}

fn default_true() -> bool {
    true
}

impl Default for Config {
    /// The built-in defaults, with every path resolved.
    fn default() -> Self {
        let mut config = Config::unresolved();
        config.resolve_paths();
        config
    }
}

impl Config {
    /// The defaults before paths that follow `state_dir` are resolved: what a YAML file's
    /// missing keys take, so that `ledger.dir` follows the file's own `state_dir`.
    fn unresolved() -> Config {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 15443))],
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 15090))),
            state_dir: default_state_dir(),
            ca: CaConfig::default(),
            providers: crate::providers::registry::default_hosts()
                .map(|h| ProviderConfig {
                    host: h.to_string(),
                    tls: true,
                    adapter: None,
                })
                .collect(),
            passthrough: Vec::new(),
            original_dst: crate::original_dst::OriginalDstConfig::default(),
            upstream: UpstreamConfig::default(),
            downstream: DownstreamConfig::default(),
            records: RecordsConfig::default(),
            ledger: crate::ledger::LedgerConfig::default(),
            on_ledger_failure: OnLedgerFailure::FailClosed,
            redirect: crate::redirect::RedirectConfig::default(),
            appliance: crate::appliance::ApplianceConfig::default(),
            networks: Vec::new(),
            kubernetes: crate::identity::pods::KubernetesConfig::default(),
            otel: crate::otel::OtelConfig::default(),
            fleet: crate::policy::FleetConfig::default(),
            policy: crate::policy::PolicyConfig::default(),
            sinks: Vec::new(),
            alerts: crate::alerts::AlertsConfig::default(),
            max_inspect_bytes: 8 << 20,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            warnings: Vec::new(),
        }
    }

    /// Resolves, once, the paths whose default depends on another key: an empty
    /// `ledger.dir` becomes `<state_dir>/ledger`. Every section handed down from here
    /// carries final paths.
    fn resolve_paths(&mut self) {
        if self.ledger.dir.as_os_str().is_empty() {
            self.ledger.dir = self.state_dir.join("ledger");
        }
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            cert: None,
            key: None,
            leaf_validity_hours: 24,
            leaf_cache_size: 1024,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            ca_file: None,
            connect_timeout_ms: 10_000,
            read_timeout_ms: 600_000,
            http2: true,
        }
    }
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            channel_capacity: 8192,
        }
    }
}

impl Config {
    /// Read, parse and validate a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line, key and reason.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml(&text, &path.display().to_string())
    }

    /// Parse and validate YAML text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for YAML, unknown keys and types, with line and column;
    /// [`ConfigError::Invalid`] listing every semantic problem found.
    pub fn from_yaml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let expanded = expand_env(text, file, |name| std::env::var(name).ok())?;
        let text = expanded.as_str();
        // An empty document is a valid, all-defaults config.
        let mut config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                ConfigError::Syntax {
                    file: file.to_string(),
                    line,
                    column,
                    message: e.to_string(),
                }
            })?
        };
        config.resolve_paths();
        let problems = config.problems(text, file);
        if problems.is_empty() {
            let teams: Vec<&str> = config
                .networks
                .iter()
                .filter_map(|n| n.team.as_deref())
                .collect();
            config.warnings = crate::policy::lint(&config.policy, &teams)
                .into_iter()
                .map(|f| {
                    let p = &config.policy.policies[f.index];
                    Problem {
                        location: locate(text, file, &format!("id: {}", p.id)),
                        key: format!("policy.policies[{}].{}", f.index, f.key),
                        message: f.message,
                    }
                })
                .collect();
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn problems(&self, text: &str, file: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: String, needle: &str, message: String| {
            out.push(Problem {
                location: locate(text, file, needle),
                key,
                message,
            })
        };
        if self.listen.is_empty() {
            bad(
                "listen".into(),
                "listen",
                "at least one listener address is needed, e.g. [\"127.0.0.1:15443\"]".into(),
            );
        }
        if self.max_inspect_bytes < 1024 {
            bad(
                "max_inspect_bytes".into(),
                "max_inspect_bytes",
                format!(
                    "{} is too small to hold a request; use at least 1024 (default 8388608)",
                    self.max_inspect_bytes
                ),
            );
        }
        if self.threads == 0 {
            bad("threads".into(), "threads", "must be at least 1".into());
        }
        if self.fleet.nodes == 0 {
            bad("fleet.nodes".into(), "nodes", "must be at least 1".into());
        }
        for (key, message) in self.downstream.problems() {
            bad(format!("downstream.{key}"), key, message);
        }
        if let Some(c) = &self.ledger.central {
            for (key, message) in c.problems() {
                bad(format!("ledger.central.{key}"), key, message);
            }
        }
        if let Err(errs) = self.alerts.rules() {
            for (key, message) in errs {
                let leaf = key.rsplit('.').next().unwrap_or(&key).to_owned();
                bad(format!("alerts.{key}"), &leaf, message);
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            for (key, message) in sink.problems() {
                let leaf = key.rsplit('.').next().unwrap_or(&key).to_owned();
                bad(format!("sinks[{i}].{key}"), &leaf, message);
            }
            if !names.insert(sink.name.as_str()) {
                bad(
                    format!("sinks[{i}].name"),
                    "name",
                    format!("`{}` is used by another sink; each needs its own (its cursor is named after it)", sink.name),
                );
            }
        }
        for (key, message) in self.appliance.problems(&self.redirect) {
            bad(format!("appliance.{key}"), key, message);
        }
        for (i, n) in self.networks.iter().enumerate() {
            if let Err(message) = n.net() {
                bad(format!("networks[{i}].cidr"), &n.cidr, message);
            }
        }
        if let Some(r) = &self.fleet.redis {
            for (key, message) in r.problems() {
                bad(format!("fleet.redis.{key}"), key, message);
            }
        }
        if self.records.channel_capacity == 0 {
            bad(
                "records.channel_capacity".into(),
                "channel_capacity",
                "must be at least 1".into(),
            );
        }
        if self.ca.leaf_validity_hours == 0 || self.ca.leaf_validity_hours > 24 * 30 {
            bad(
                "ca.leaf_validity_hours".into(),
                "leaf_validity_hours",
                format!(
                    "{} is out of range; leaf certificates should live between 1 hour and 30 days",
                    self.ca.leaf_validity_hours
                ),
            );
        }
        if self.ca.leaf_cache_size == 0 {
            bad(
                "ca.leaf_cache_size".into(),
                "leaf_cache_size",
                "must be at least 1".into(),
            );
        }
        if self.upstream.connect_timeout_ms == 0 || self.upstream.read_timeout_ms == 0 {
            bad(
                "upstream".into(),
                "timeout_ms",
                "timeouts must be above 0 milliseconds".into(),
            );
        }
        for (i, p) in self.redirect.prefixes.iter().enumerate() {
            if let Err(e) = crate::redirect::parse_prefix(p) {
                bad(format!("redirect.prefixes[{i}]"), p, e.to_string());
            }
        }
        if self.redirect.enabled && !self.listen.iter().any(|a| a.is_ipv4()) {
            bad(
                "redirect.enabled".into(),
                "enabled",
                "the redirect sends connections to an IPv4 listener; add one to `listen`".into(),
            );
        }
        if self.redirect.ports.contains(&0) || self.redirect.ports.len() > 8 {
            bad(
                "redirect.ports".into(),
                "ports",
                "between 1 and 8 non-zero ports".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for (i, p) in self.policy.policies.iter().enumerate() {
            if p.id.trim().is_empty() || !ids.insert(p.id.as_str()) {
                bad(
                    format!("policy.policies[{i}].id"),
                    &p.id,
                    format!("policy id {:?} must be non-empty and unique", p.id),
                );
            }
            if let Some(g) = &p.response {
                for (group, action) in [("pii", g.pii), ("secrets", g.secrets)] {
                    if action == crate::policy::Action::Block {
                        bad(
                            format!("policy.policies[{i}].response.{group}"),
                            "response:",
                            "responses can be redacted or alerted on, not blocked: the status line has already gone to the client when the answer arrives; use `redact`".into(),
                        );
                    }
                }
            }
            if let Some(g) = &p.prompt {
                if !(0.0..=1.0).contains(&g.injection_threshold) {
                    bad(
                        format!("policy.policies[{i}].prompt.injection_threshold"),
                        "injection_threshold",
                        "must be between 0 and 1".into(),
                    );
                }
            }
        }
        for (i, k) in self.policy.virtual_keys.iter().enumerate() {
            if let Some(key) = &k.key {
                if !key.starts_with(crate::policy::VIRTUAL_KEY_PREFIX) {
                    bad(
                        format!("policy.virtual_keys[{i}].key"),
                        "key:",
                        format!(
                            "virtual keys start with {:?}",
                            crate::policy::VIRTUAL_KEY_PREFIX
                        ),
                    );
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            if let Err(why) = validate_host_pattern(&p.host) {
                bad(format!("providers[{i}].host"), &p.host, why);
            }
            if !seen.insert(p.host.to_ascii_lowercase()) {
                bad(
                    format!("providers[{i}].host"),
                    &p.host,
                    format!("{} is listed twice; keep one entry", p.host),
                );
            }
            if let Some(name) = &p.adapter {
                if crate::providers::adapter_by_name(name).is_none() {
                    bad(
                        format!("providers[{i}].adapter"),
                        name,
                        format!(
                            "unknown adapter {name:?}; known: {}",
                            crate::providers::registry::adapter_names().join(", ")
                        ),
                    );
                }
            } else if crate::providers::adapter_for_host(&p.host).is_none() {
                bad(
                    format!("providers[{i}].adapter"),
                    &p.host,
                    format!(
                        "{} is not in the built-in host table; name its API format with `adapter:` (e.g. openai_compatible)",
                        p.host
                    ),
                );
            }
        }
        for (i, host) in self.passthrough.iter().enumerate() {
            if let Err(why) = validate_host_pattern(host) {
                bad(format!("passthrough[{i}]"), host, why);
            }
            if self
                .providers
                .iter()
                .any(|p| p.host.eq_ignore_ascii_case(host))
            {
                bad(
                    format!("passthrough[{i}]"),
                    host,
                    format!("{host} is also an inspected provider; a host is either inspected or passed through"),
                );
            }
        }
        for (host, addr) in &self.original_dst.static_map {
            if let Err(why) = validate_host_pattern(host) {
                bad(format!("original_dst.static.{host}"), host, why);
            }
            if host.contains('*') {
                bad(
                    format!("original_dst.static.{host}"),
                    host,
                    "static destinations need an exact host name, not a wildcard".into(),
                );
            }
            if addr.parse::<SocketAddr>().is_err() {
                bad(
                    format!("original_dst.static.{host}"),
                    addr,
                    format!("{addr:?} is not an ip:port address (e.g. \"198.18.0.2:443\" or \"[2001:db8::2]:443\")"),
                );
            }
        }
        if let Some(origin) = &self.ledger.origin {
            if let Err(why) = crate::tlog::note::check_origin(origin) {
                bad("ledger.origin".into(), origin, why.to_string());
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.ledger.witnesses.iter().enumerate() {
            match w.kind() {
                Ok(k) if !names.insert(k.name()) => bad(
                    format!("ledger.witnesses[{i}]"),
                    &k.name(),
                    format!("witness `{}` is listed twice", k.name()),
                ),
                Ok(_) => {}
                Err(why) => bad(format!("ledger.witnesses[{i}]"), &format!("{w:?}"), why),
            }
        }
        out
    }

    /// Path of the CA certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.ca
            .cert
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ca").join("ca.crt"))
    }

    /// Path of the CA private key.
    pub fn ca_key_path(&self) -> PathBuf {
        self.ca
            .key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ca").join("ca.key"))
    }
}

fn validate_host_pattern(host: &str) -> Result<(), String> {
    crate::providers::HostPattern::parse(host).map(|_| ())
}

/// `file:line` of the first line mentioning `needle`, or `file` alone.
fn locate(text: &str, file: &str, needle: &str) -> String {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| format!("{file}:{}", i + 1))
        .unwrap_or_else(|| file.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_references_expand_and_a_missing_one_is_named() {
        let var = |n: &str| (n == "NODE_IP").then(|| "10.1.2.3".to_string());
        let text = "redirect:\n  pod_facing_v4: \"${NODE_IP}:15443\"\nx: \"$${LITERAL} ^a$ $5 ${1X}\"\n  # ${UNSET} in a comment\n";
        let out = expand_env(text, "x.yaml", var).unwrap();
        assert!(out.contains("\"10.1.2.3:15443\""), "{out}");
        assert!(out.contains("x: \"${LITERAL} ^a$ $5 ${1X}\""), "{out}");
        assert!(out.contains("  # ${UNSET} in a comment"), "{out}");
        let e = expand_env("a: 1\nb: \"${MISSING_VAR}\"\n", "x.yaml", var).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("x.yaml:2:5: ${MISSING_VAR} is not set"),
            "{msg}"
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_yaml("", "x.yaml").unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:15443".parse().unwrap()]);
        assert_eq!(c.max_inspect_bytes, 8 << 20);
        assert!(c.providers.iter().any(|p| p.host == "api.anthropic.com"));
        assert_eq!(c.ledger.dir, default_state_dir().join("ledger"));
    }

    /// The ledger directory follows the file's own `state_dir` unless the file names one,
    /// whatever else the `ledger:` section says; resolved once, at load.
    #[test]
    fn ledger_dir_follows_state_dir_unless_named() {
        let dir = |yaml: &str| Config::from_yaml(yaml, "x.yaml").unwrap().ledger.dir;
        assert_eq!(dir("state_dir: /s\n"), Path::new("/s/ledger"));
        assert_eq!(
            dir("state_dir: /s\nledger: {retention_days: 3}\n"),
            Path::new("/s/ledger")
        );
        assert_eq!(
            dir("state_dir: /s\nledger: {dir: /elsewhere}\n"),
            Path::new("/elsewhere")
        );
        assert_eq!(dir("ledger: {dir: /l}\n"), Path::new("/l"));
    }

    #[test]
    fn unknown_key_names_the_line() {
        let err =
            Config::from_yaml("listen: [\"127.0.0.1:1\"]\nlisten_typo: 3\n", "c.yaml").unwrap_err();
        match err {
            ConfigError::Syntax { line, message, .. } => {
                assert_eq!(line, 2);
                assert!(message.contains("listen_typo"), "{message}");
            }
            other => panic!("expected a syntax error, got {other}"),
        }
    }

    #[test]
    fn wrong_type_names_the_line() {
        let err =
            Config::from_yaml("state_dir: /tmp\nmax_inspect_bytes: lots\n", "c.yaml").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{err}");
    }

    #[test]
    fn semantic_problems_are_all_listed_with_lines() {
        let text = "providers:\n  - host: vllm.internal\n    tls: false\n  - host: \"bad host\"\n    adapter: openai\noriginal_dst:\n  static:\n    api.openai.com: nowhere\n";
        let err = Config::from_yaml(text, "c.yaml").unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("expected semantic problems");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "providers[0].adapter",
                "providers[1].host",
                "original_dst.static.api.openai.com"
            ]
        );
        assert_eq!(problems[0].location, "c.yaml:2");
        assert_eq!(problems[1].location, "c.yaml:4");
        assert_eq!(problems[2].location, "c.yaml:8");
    }

    #[test]
    fn connection_limits_out_of_range_are_named() {
        let text = "downstream:\n  header_timeout_ms: 0\n  max_header_bytes: 10\n  tls_handshake_timeout_ms: 0\nfleet:\n  redis:\n    url: redis://127.0.0.1:6379\n    connections: 0\n";
        let ConfigError::Invalid(problems) = Config::from_yaml(text, "c.yaml").unwrap_err() else {
            panic!("expected semantic problems");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "downstream.header_timeout_ms",
                "downstream.tls_handshake_timeout_ms",
                "downstream.max_header_bytes",
                "fleet.redis.connections"
            ]
        );
        assert_eq!(problems[2].location, "c.yaml:3");
        assert!(problems[2].message.contains("1024 to 1048575"));
    }

    #[test]
    fn plain_http_provider_with_an_adapter() {
        let c = Config::from_yaml(
            "providers:\n  - host: ollama.local\n    tls: false\n    adapter: openai_compatible\n",
            "c.yaml",
        )
        .unwrap();
        assert!(!c.providers[0].tls);
        assert_eq!(c.providers[0].adapter.as_deref(), Some("openai_compatible"));
    }
}

#[cfg(test)]
mod example_tests {
    /// The shipped example must always be a valid configuration.
    #[test]
    fn example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sluice.yaml");
        let c = super::Config::load(std::path::Path::new(path)).unwrap();
        assert_eq!(c.providers.len(), 7);
        assert!(!c.providers[6].tls);
        assert_eq!(c.downstream.body_deadline_ms, 300_000);
        assert_eq!(
            c.original_dst
                .static_map
                .get("vllm.internal")
                .map(String::as_str),
            Some("10.20.0.15:8000")
        );
    }
}
