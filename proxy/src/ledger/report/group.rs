//! ReportOptions the usage and access reports by what people ask about (`--by`): the store
//! sums per identity, provider and model; here those sums are folded into the groups
//! asked for, sorted by requests, cut to a top N (the rest folded into one `(others)`
//! row) and totalled.
//!
//! The default group is the **principal**: the strongest identity that stays the same
//! across requests — the virtual key's user, else the provider key's fingerprint, else the
//! Kubernetes workload (namespace and app label, service account or pod), else the
//! process (executable and uid), else the client's address without its port. Never a
//! connection's port or a pid, which change with every request.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Map, Value};

/// One dimension of `--by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum By {
    /// The strongest stable identity (see the module's doc).
    Principal,
    User,
    Team,
    Project,
    /// The provider key's fingerprint.
    Key,
    /// The executable (or the process name).
    Process,
    Namespace,
    Pod,
    /// The client network's name (`networks:`; appliance callers).
    Network,
    /// The client network's environment.
    Environment,
    /// A pod label's value, `label:<name>`.
    Label(String),
    Model,
    Provider,
    /// The node (central reports; a node's own report has one).
    Node,
    /// The principal without the user and key: the pod's workload, else the process,
    /// else the client address (which machine or workload a key is used from).
    Workload,
}

impl By {
    /// Parses one `--by` value.
    ///
    /// # Errors
    /// What is accepted, when it is not.
    pub fn parse(s: &str) -> Result<By, String> {
        Ok(match s.trim() {
            "principal" => By::Principal,
            "user" => By::User,
            "team" => By::Team,
            "project" => By::Project,
            "key" => By::Key,
            "process" => By::Process,
            "namespace" => By::Namespace,
            "pod" => By::Pod,
            "network" => By::Network,
            "environment" => By::Environment,
            "model" => By::Model,
            "provider" => By::Provider,
            "node" => By::Node,
            "workload" => By::Workload,
            other => match other.strip_prefix("label:") {
                Some(l) if !l.is_empty() => By::Label(l.to_owned()),
                _ => {
                    return Err(format!(
                        "`{other}` is not a grouping: use principal, user, team, project, key, process, namespace, pod, network, environment, label:<name>, model, provider, node or workload"
                    ))
                }
            },
        })
    }

    /// The column's name.
    pub fn column(&self) -> String {
        match self {
            By::Principal => "principal".into(),
            By::User => "user".into(),
            By::Team => "team".into(),
            By::Project => "project".into(),
            By::Key => "key".into(),
            By::Process => "process".into(),
            By::Namespace => "namespace".into(),
            By::Pod => "pod".into(),
            By::Network => "network".into(),
            By::Environment => "environment".into(),
            By::Label(l) => format!("label:{l}"),
            By::Model => "model".into(),
            By::Provider => "provider".into(),
            By::Node => "node".into(),
            By::Workload => "workload".into(),
        }
    }
}

/// What a report is narrowed and grouped by: `--by`, `--top`, `--who`.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Empty: the report's default (usage: principal; access: principal, provider, model).
    pub by: Vec<By>,
    /// Keep the N groups with the most requests; the rest become one `(others)` row.
    pub top: Option<usize>,
    /// The activity report's subject: a principal (`user:alice`, `key:sha256:…`,
    /// `process:/usr/bin/python3 uid=1000`, `client:10.0.0.5`, `k8s:ns/app=x`), a workload,
    /// or a bare user name.
    pub who: Option<String>,
}

/// Whether a displayed record is `who`'s (see [`ReportOptions::who`]): its identity's
/// principal, workload or user; an admin record's initiator id.
pub fn concerns(r: &Value, who: &str) -> bool {
    let id = r
        .get("identity")
        .and_then(Value::as_object)
        .or_else(|| r.get("initiator").and_then(Value::as_object));
    let Some(id) = id else { return false };
    if r.get("kind").and_then(Value::as_str) == Some("admin") {
        return id.get("id").and_then(Value::as_str) == Some(who);
    }
    principal(id) == who
        || workload(id) == who
        || id.get("user").and_then(Value::as_str) == Some(who)
}

/// The store's sums for one identity, provider, model (and node).
#[derive(Debug, Default)]
pub struct Sums {
    /// The identity as JSON text.
    pub identity: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub node: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

/// The principal of an identity (see the module's doc).
pub fn principal(id: &Map<String, Value>) -> String {
    let s = |k: &str| id.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    if let Some(u) = s("user") {
        return format!("user:{u}");
    }
    if let Some(k) = s("api_key_fingerprint") {
        return format!("key:{k}");
    }
    workload(id)
}

/// The principal without the user and the key: which workload or machine it was.
pub fn workload(id: &Map<String, Value>) -> String {
    let s = |k: &str| id.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    if let Some(k) = id.get("kubernetes").and_then(Value::as_object) {
        let ks = |f: &str| k.get(f).and_then(Value::as_str).filter(|v| !v.is_empty());
        let label = |l: &str| {
            k.get("labels")
                .and_then(|m| m.get(l))
                .and_then(Value::as_str)
        };
        let workload = label("app.kubernetes.io/name")
            .or_else(|| label("app"))
            .map(|a| format!("app={a}"))
            .or_else(|| ks("service_account").map(|a| format!("sa={a}")))
            .or_else(|| ks("pod").map(|p| format!("pod={p}")))
            .unwrap_or_else(|| "-".into());
        return format!("k8s:{}/{workload}", ks("namespace").unwrap_or("-"));
    }
    if let Some(p) = s("exe").or_else(|| s("process")) {
        return match id.get("uid").and_then(Value::as_u64) {
            Some(uid) => format!("process:{p} uid={uid}"),
            None => format!("process:{p}"),
        };
    }
    if let Some(a) = s("client_addr") {
        let ip = a
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| a.to_owned(), |a| a.ip().to_string());
        return format!("client:{ip}");
    }
    "unknown".into()
}

pub(crate) fn value_of(by: &By, id: &Map<String, Value>, s: &Sums) -> String {
    let f = |k: &str| id.get(k).and_then(Value::as_str).map(str::to_owned);
    let k8s = |k: &str| {
        id.get("kubernetes")
            .and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let net = |k: &str| {
        id.get("network")
            .and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match by {
        By::Principal => Some(principal(id)),
        By::User => f("user"),
        // The virtual key's team, else the client network's (as policy scopes read it).
        By::Team => f("team").or_else(|| net("team")),
        By::Project => f("project"),
        By::Key => f("api_key_fingerprint"),
        By::Process => f("exe").or_else(|| f("process")),
        By::Namespace => k8s("namespace"),
        By::Pod => k8s("pod"),
        By::Network => net("name"),
        By::Environment => net("environment"),
        By::Label(l) => id
            .get("kubernetes")
            .and_then(|p| p.get("labels"))
            .and_then(|m| m.get(l))
            .and_then(Value::as_str)
            .map(str::to_owned),
        By::Model => s.model.clone(),
        By::Provider => s.provider.clone(),
        By::Node => s.node.clone(),
        By::Workload => Some(workload(id)),
    }
    .unwrap_or_else(|| "-".into())
}

#[derive(Default)]
struct Group {
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    first_seen: Option<String>,
    last_seen: Option<String>,
    providers: BTreeSet<String>,
    models: BTreeSet<String>,
    /// Virtual keys' users seen.
    users: BTreeSet<String>,
    /// Own provider keys (fingerprints) seen.
    keys: BTreeSet<String>,
}

impl Group {
    fn add_identity(&mut self, id: &Map<String, Value>) {
        let s = |k: &str| id.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
        match (s("user"), s("api_key_fingerprint")) {
            (Some(u), _) => {
                self.users.insert(u.to_owned());
            }
            (None, Some(k)) => {
                self.keys.insert(k.to_owned());
            }
            _ => {}
        }
    }

    fn add(&mut self, s: &Sums) {
        self.requests += s.requests;
        self.input_tokens += s.input_tokens;
        self.output_tokens += s.output_tokens;
        self.cost_usd += s.cost_usd;
        if let Some(f) = &s.first_seen {
            if self.first_seen.as_ref().is_none_or(|x| f < x) {
                self.first_seen = Some(f.clone());
            }
        }
        if let Some(l) = &s.last_seen {
            if self.last_seen.as_ref().is_none_or(|x| l > x) {
                self.last_seen = Some(l.clone());
            }
        }
        self.providers.extend(s.provider.clone());
        self.models.extend(s.model.clone());
    }

    fn merge(&mut self, o: &Group) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cost_usd += o.cost_usd;
        for (mine, theirs) in [(&mut self.first_seen, &o.first_seen)] {
            if theirs.is_some() && (mine.is_none() || theirs < mine) {
                mine.clone_from(theirs);
            }
        }
        if o.last_seen > self.last_seen {
            self.last_seen.clone_from(&o.last_seen);
        }
        self.providers.extend(o.providers.iter().cloned());
        self.models.extend(o.models.iter().cloned());
        self.users.extend(o.users.iter().cloned());
        self.keys.extend(o.keys.iter().cloned());
    }

    fn fields(&self, m: &mut Map<String, Value>, with_providers: bool, with_models: bool) {
        m.insert("requests".into(), json!(self.requests));
        m.insert("input_tokens".into(), json!(self.input_tokens));
        m.insert("output_tokens".into(), json!(self.output_tokens));
        m.insert(
            "cost_usd".into(),
            json!((self.cost_usd * 1e9).round() / 1e9),
        );
        let join =
            |s: &BTreeSet<String>| Value::String(s.iter().cloned().collect::<Vec<_>>().join(","));
        if with_providers {
            m.insert("providers".into(), join(&self.providers));
        }
        if with_models {
            m.insert("models".into(), join(&self.models));
        }
        m.insert("first_seen".into(), json!(self.first_seen));
        m.insert("last_seen".into(), json!(self.last_seen));
    }
}

/// The report's columns, rows and totals for `sums` grouped by `by` (already defaulted).
pub fn group(sums: &[Sums], by: &[By], top: Option<usize>) -> (Vec<String>, Vec<Value>, Value) {
    group_as(sums, by, top, false)
}

/// The AI inventory: every workload (pod, process, machine) that called a provider, how
/// (the virtual keys' users it used, or how many provider keys of its own), where to,
/// how much, first and last seen.
pub fn inventory(sums: &[Sums], top: Option<usize>) -> (Vec<String>, Vec<Value>, Value) {
    group_as(sums, &[By::Workload], top, true)
}

fn group_as(
    sums: &[Sums],
    by: &[By],
    top: Option<usize>,
    keys: bool,
) -> (Vec<String>, Vec<Value>, Value) {
    let mut groups: HashMap<Vec<String>, Group> = HashMap::new();
    let mut parsed: HashMap<&str, Map<String, Value>> = HashMap::new();
    let empty = Map::new();
    for s in sums {
        let id = match s.identity.as_deref() {
            Some(text) => parsed.entry(text).or_insert_with(|| {
                serde_json::from_str::<Map<String, Value>>(text).unwrap_or_default()
            }),
            None => &empty,
        };
        let key: Vec<String> = by.iter().map(|b| value_of(b, id, s)).collect();
        let g = groups.entry(key).or_default();
        g.add(s);
        g.add_identity(id);
    }
    let mut sorted: Vec<(Vec<String>, Group)> = groups.into_iter().collect();
    sorted.sort_by(|a, b| {
        b.1.requests
            .cmp(&a.1.requests)
            .then(b.1.cost_usd.total_cmp(&a.1.cost_usd))
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut total = Group::default();
    for (_, g) in &sorted {
        total.merge(g);
    }
    let groups_n = sorted.len();
    let mut others: Option<Group> = None;
    if let Some(n) = top {
        if sorted.len() > n {
            let mut o = Group::default();
            for (_, g) in sorted.drain(n..) {
                o.merge(&g);
            }
            others = Some(o);
        }
    }
    let with_providers = !by.contains(&By::Provider);
    let with_models = !by.contains(&By::Model);
    let mut columns: Vec<String> = by.iter().map(By::column).collect();
    if keys {
        columns.push("virtual_key_users".into());
        columns.push("own_keys".into());
    }
    columns.extend(
        ["requests", "input_tokens", "output_tokens", "cost_usd"]
            .iter()
            .map(|c| (*c).to_owned()),
    );
    if with_providers {
        columns.push("providers".into());
    }
    if with_models {
        columns.push("models".into());
    }
    columns.push("first_seen".into());
    columns.push("last_seen".into());
    let row = |key: &[String], g: &Group| {
        let mut m = Map::new();
        for (b, v) in by.iter().zip(key) {
            m.insert(b.column(), Value::String(v.clone()));
        }
        if keys {
            m.insert(
                "virtual_key_users".into(),
                Value::String(g.users.iter().cloned().collect::<Vec<_>>().join(",")),
            );
            m.insert("own_keys".into(), json!(g.keys.len()));
        }
        g.fields(&mut m, with_providers, with_models);
        Value::Object(m)
    };
    let mut rows: Vec<Value> = sorted.iter().map(|(k, g)| row(k, g)).collect();
    if let Some(o) = &others {
        let label = vec!["(others)".to_owned(); by.len()];
        rows.push(row(&label, o));
    }
    let mut t = Map::new();
    t.insert("groups".into(), json!(groups_n));
    total.fields(&mut t, with_providers, with_models);
    (columns, rows, Value::Object(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(identity: Value, provider: &str, requests: i64, cost: f64) -> Sums {
        Sums {
            identity: Some(identity.to_string()),
            provider: Some(provider.into()),
            model: Some("m".into()),
            requests,
            input_tokens: requests * 10,
            output_tokens: requests,
            cost_usd: cost,
            first_seen: Some("2026-01-01T00:00:00.000Z".into()),
            last_seen: Some("2026-01-02T00:00:00.000Z".into()),
            ..Sums::default()
        }
    }

    #[test]
    fn the_principal_never_keys_on_a_port_or_a_pid() {
        let a = json!({"client_addr": "10.0.0.5:40001", "pid": 11, "exe": "/usr/bin/python3", "uid": 1000});
        let b = json!({"client_addr": "10.0.0.5:40002", "pid": 12, "exe": "/usr/bin/python3", "uid": 1000});
        let (cols, rows, totals) = group(
            &[sums(a, "openai", 2, 0.5), sums(b, "openai", 3, 0.25)],
            &[By::Principal],
            None,
        );
        assert_eq!(cols[0], "principal");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["principal"], "process:/usr/bin/python3 uid=1000");
        assert_eq!(rows[0]["requests"], 5);
        assert_eq!(totals["requests"], 5);
        let bare = json!({"client_addr": "10.0.0.9:5555", "pid": 3});
        assert_eq!(principal(bare.as_object().unwrap()), "client:10.0.0.9");
        let pod = json!({"pid": 3, "kubernetes": {"namespace": "ml", "pod": "x-7d9-abc", "labels": {"app": "chat"}}});
        assert_eq!(principal(pod.as_object().unwrap()), "k8s:ml/app=chat");
        let user = json!({"user": "alice", "exe": "/bin/x"});
        assert_eq!(principal(user.as_object().unwrap()), "user:alice");
    }

    #[test]
    fn top_n_folds_the_rest_and_totals_cover_everything() {
        let s: Vec<Sums> = (0..5)
            .map(|i| {
                sums(
                    json!({"user": format!("u{i}"), "team": "t"}),
                    "openai",
                    i + 1,
                    0.1,
                )
            })
            .collect();
        let (_, rows, totals) = group(&s, &[By::User], Some(2));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["user"], "u4");
        assert_eq!(rows[1]["user"], "u3");
        assert_eq!(rows[2]["user"], "(others)");
        assert_eq!(rows[2]["requests"], 1 + 2 + 3);
        assert_eq!(totals["requests"], 15);
        assert_eq!(totals["groups"], 5);
        let (cols, rows, _) = group(&s, &[By::Team, By::Provider], None);
        assert_eq!(rows.len(), 1);
        assert!(!cols.contains(&"providers".to_owned()) && cols.contains(&"models".to_owned()));
        assert!(By::parse("pid").unwrap_err().contains("label:<name>"));
        assert_eq!(By::parse("label:app").unwrap(), By::Label("app".into()));
    }
}
