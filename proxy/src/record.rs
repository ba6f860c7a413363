//! The records Sluice emits: one module, one source of truth for their shape.
//!
//! The JSON contract (snake_case, RFC 3339 UTC timestamps) is the one in the design:
//! `kind: "interaction"` for every inspected request, `kind: "connection"` for every
//! connection relayed untouched or refused. Fields that later subsystems fill (the hash
//! chain, policy decisions) are present with neutral values so consumers can rely on
//! the shape from day one.

use serde::Serialize;

use crate::providers::{Message, Usage};

/// How an interaction or connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The provider answered with a 2xx and the client received all of it.
    Success,
    /// The provider answered with an error status (4xx/5xx), relayed to the client.
    UpstreamError,
    /// The client went away before the response was complete.
    Cancelled,
    /// Sluice could not reach or trust the provider, or the exchange broke.
    Failed,
    /// Sluice refused the connection (no known destination, not a provider, a loop).
    Refused,
    /// Relayed untouched (connection records only).
    Passthrough,
    /// Sluice ended a stream early: a budget ran out while it flowed.
    Cut,
}

impl Outcome {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Passthrough => "passthrough",
            Outcome::Cut => "cut",
        }
    }
}

/// Who made the call: the client address always; the workload when the eBPF probe
/// attributed the connection (see [`crate::identity`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Identity {
    /// Client address as seen by the proxy.
    pub client_addr: Option<String>,
    /// Process id (thread group) that opened the connection.
    pub pid: Option<u32>,
    /// Process name (`comm`) at connect time.
    pub process: Option<String>,
    /// Executable path, when the process was still running.
    pub exe: Option<String>,
    /// User id.
    pub uid: Option<u32>,
    /// cgroup v2 id.
    pub cgroup_id: Option<u64>,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
    /// Kubernetes pod UID, from the cgroup path.
    pub pod_uid: Option<String>,
    /// Container id, from the cgroup path.
    pub container_id: Option<String>,
    /// Namespace, pod and container names (and, from the API, labels and service
    /// account) of that pod; absent outside Kubernetes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<PodRef>,
    /// The configured network (`networks:`) the client address lies in: who that is when
    /// the caller is a host Sluice only sees on the wire (appliance mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRef>,
    /// Virtual-key user (the strongest identity, when a virtual key was presented).
    pub user: Option<String>,
    /// Virtual-key team.
    pub team: Option<String>,
    /// Virtual-key project.
    pub project: Option<String>,
    /// Fingerprint of the client's own provider key (`sha256:` + 16 hex), never the key.
    pub api_key_fingerprint: Option<String>,
}

/// What a record says of the pod that made a call (`identity.kubernetes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name, when the container's log link names it.
    pub container: Option<String>,
    /// Service account (from the API only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Pod labels (from the API only).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What a record says of the network a client address belongs to (`identity.network`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkRef {
    /// The network's name (its CIDR when the config gives none).
    pub name: String,
    /// The CIDR that matched (the longest configured prefix holding the address).
    pub cidr: String,
    /// Owning team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Environment (prod, staging, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Owner (a person or a group to contact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The request side of an interaction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestPart {
    /// HTTP method.
    pub method: String,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2) as the client sent it; compared with
    /// the connection's SNI (`upstream.sni`), which it must name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Request path (query included, credentials in it replaced by fingerprints).
    pub path: String,
    /// Model parameters (temperature, max tokens, tools, …).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Input messages.
    pub messages: Vec<Message>,
    /// Body bytes sent by the client.
    pub body_bytes: u64,
    /// The body exceeded `max_inspect_bytes`; only its start was inspected.
    pub truncated: bool,
    /// Why the body could not be understood, if it could not.
    pub parse_error: Option<String>,
}

/// The response side of an interaction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResponsePart {
    /// The model the provider says answered (often a dated version of the one asked for).
    pub model: Option<String>,
    /// The provider's id of this response (`chatcmpl-…`, `msg_…`, …), to find it in the
    /// provider's own logs.
    pub id: Option<String>,
    /// Assistant text.
    pub output: String,
    /// Tool calls the model made.
    pub tool_calls: Vec<serde_json::Value>,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Body bytes sent to the client.
    pub body_bytes: u64,
    /// SSE events seen (0 for a non-streaming response).
    pub events: u64,
    /// The body exceeded `max_inspect_bytes`.
    pub truncated: bool,
    /// Why the body could not be understood, or the provider's error message.
    pub error: Option<String>,
}

/// Where the request went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Upstream {
    /// Provider address (ip:port).
    pub addr: Option<String>,
    /// TLS server name used upstream (and presented by the client).
    pub sni: Option<String>,
}

/// One intercepted LLM API call.
#[derive(Debug, Clone, Serialize)]
pub struct Interaction {
    /// Time-ordered unique id (UUIDv7).
    pub id: String,
    /// Request start, RFC 3339 UTC.
    pub ts: String,
    /// Always `"interaction"`.
    pub kind: &'static str,
    /// Provider label (`openai`, `anthropic`, …).
    pub provider: String,
    /// Model requested (or answered, when the request named none).
    pub model: Option<String>,
    /// Endpoint name (`chat.completions`, `messages`, …), `null` when not an LLM endpoint.
    pub endpoint: Option<String>,
    /// Whether the response was streamed.
    pub stream: bool,
    /// HTTP status sent to the client (0 when none was sent).
    pub status: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// Policy decision: `allow`, `redact`, `block`, `shadow_block`, `shadow_redact`.
    pub decision: &'static str,
    /// Reasons for the decision (`model_denied`, `pii:email`, `secret:aws_key`, …).
    pub reason_codes: Vec<String>,
    /// Policy that decided, `id@vN`.
    pub policy_id: Option<String>,
    /// Detector categories that fired, whatever the action.
    pub triggered_categories: Vec<String>,
    /// Rollout mode of the deciding policy: `enforce` or `shadow`.
    pub policy_mode: Option<&'static str>,
    /// Who called.
    pub identity: Identity,
    /// What was asked.
    pub request: RequestPart,
    /// What was answered.
    pub response: ResponsePart,
    /// Token usage (reported by the provider, or estimated).
    pub usage: Usage,
    /// Cost in USD from the price table; `null` for an unknown model.
    pub cost_usd: Option<f64>,
    /// Request start to response end, milliseconds.
    pub latency_ms: f64,
    /// Request start to the first response body byte (streams), milliseconds.
    pub ttft_ms: Option<f64>,
    /// Where it went.
    pub upstream: Upstream,
    /// What went wrong, in words an operator can act on.
    pub error: Option<String>,
}

/// One connection that was relayed untouched or refused.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    /// Time-ordered unique id (UUIDv7).
    pub id: String,
    /// Connection start, RFC 3339 UTC.
    pub ts: String,
    /// Always `"connection"`.
    pub kind: &'static str,
    /// `passthrough` or `refused`.
    pub outcome: Outcome,
    /// Why it was refused, or why it was not inspected.
    pub reason: String,
    /// SNI the client sent, if any.
    pub sni: Option<String>,
    /// Who connected.
    pub identity: Identity,
    /// The original destination, when known.
    pub upstream: Upstream,
    /// Bytes client → provider.
    pub bytes_up: u64,
    /// Bytes provider → client.
    pub bytes_down: u64,
    /// Duration, milliseconds.
    pub duration_ms: f64,
    /// Error that ended the relay, if any.
    pub error: Option<String>,
}

/// Any record the sink accepts.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Record {
    /// An inspected request.
    Interaction(Box<Interaction>),
    /// A relayed or refused connection.
    Connection(Box<Connection>),
    /// An administrative change or access (config reload, export, retention run, …).
    Admin(Box<Admin>),
    /// A security alert fired or resolved by a rule over the record stream.
    Alert(Box<Alert>),
}

impl Record {
    /// `kind` label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Interaction(_) => "interaction",
            Record::Connection(_) => "connection",
            Record::Admin(_) => "admin",
            Record::Alert(_) => "alert",
        }
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Whether an alert starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

/// A security alert (`kind: "alert"`): a rule's threshold crossed over a window of
/// records for one group (a principal, a key, …), or its end.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Time-ordered unique id (UUIDv7).
    pub id: String,
    /// When it fired or resolved, RFC 3339 UTC.
    pub ts: String,
    /// Always `"alert"`.
    pub kind: &'static str,
    /// The rule's name.
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    /// The group it is about: each `per` dimension and its value.
    pub group: std::collections::BTreeMap<String, String>,
    /// One line for a person.
    pub summary: String,
    /// The rule's measure over the window when it fired (count, sum or distinct values).
    pub value: f64,
    pub threshold: f64,
    pub window_s: u64,
    /// The same for every alert of this rule and group: channels deduplicate on it
    /// (PagerDuty's `dedup_key`), the resolve carries it too.
    pub dedup_key: String,
    /// Ids of the newest records behind it (up to ten).
    pub records: Vec<String>,
    /// The identity of the newest record behind it.
    pub identity: Option<serde_json::Value>,
}

/// A new time-ordered record id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// `t` as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// What an administrative record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    /// Something was created (a key, a policy, a virtual key).
    Create,
    /// Something was changed (including removing record content at retention).
    Update,
    /// Something was deleted (including pruning records at retention).
    Delete,
    /// Someone proved who they are.
    Authenticate,
    /// Someone was granted or refused an operation.
    Authorize,
    /// Records left the ledger (export, report).
    Export,
    /// Records or configuration came in.
    Import,
    /// Configuration or policy was reloaded.
    Reload,
}

/// Whether an administrative action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminOutcome {
    /// It did what was asked.
    Success,
    /// It was refused or failed.
    Failure,
}

/// Who performed an administrative action.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Initiator {
    /// User, service account or subsystem (`sluice-ledger` for the ledger itself).
    pub id: String,
    /// Role the action was performed under (`admin`, `auditor`, `system`, …).
    pub role: String,
    /// Address the action came from, when it came over the network.
    pub ip: Option<String>,
}

/// What an administrative action acted on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Target {
    /// Kind of object (`ledger`, `policy`, `config`, `virtual_key`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its name or id.
    pub id: String,
}

/// One administrative change or access, recorded in the same chain as interactions.
#[derive(Debug, Clone, Serialize)]
pub struct Admin {
    /// Time-ordered unique id (UUIDv7).
    pub id: String,
    /// When it happened, RFC 3339 UTC.
    pub ts: String,
    /// Always `"admin"`.
    pub kind: &'static str,
    /// What was done.
    pub action: AdminAction,
    /// Whether it worked.
    pub outcome: AdminOutcome,
    /// Who did it.
    pub initiator: Initiator,
    /// What it was done to.
    pub target: Target,
    /// Action-specific facts (never secrets or prompt content).
    pub details: serde_json::Value,
}

impl Admin {
    /// A new admin record stamped now.
    pub fn new(
        action: AdminAction,
        outcome: AdminOutcome,
        initiator: Initiator,
        target: Target,
        details: serde_json::Value,
    ) -> Admin {
        Admin {
            id: new_id(),
            ts: rfc3339(std::time::SystemTime::now()),
            kind: "admin",
            action,
            outcome,
            initiator,
            target,
            details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn connection_record_shape() {
        let r = Record::Connection(Box::new(Connection {
            id: new_id(),
            ts: rfc3339(std::time::SystemTime::now()),
            kind: "connection",
            outcome: Outcome::Refused,
            reason: "no_destination".into(),
            sni: Some("example.com".into()),
            identity: Identity::default(),
            upstream: Upstream::default(),
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0.0,
            error: None,
        }));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "connection");
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["sni"], "example.com");
        assert_eq!(r.kind(), "connection");
    }
}
