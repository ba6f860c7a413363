//! `sluice report`: access, change, security and usage reports over a time window, as
//! JSON (`{"report", "since", "until", "columns", "rows"}`) and as text tables.

use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::index::{self, Unpacker};
use super::query::{where_clause, Filter};
use super::LedgerError;

mod group;
mod html;
pub(crate) use group::value_of;
pub use group::{concerns, principal, workload, By, ReportOptions, Sums};
pub use html::render_report_html;

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Who (identity) used which provider and model: requests, tokens, cost.
    Access,
    /// Every administrative record.
    Change,
    /// Every non-`allow` decision (block, redact, shadow, …) and refused connection.
    Security,
    /// Per identity: requests, tokens, cost, first and last seen.
    Usage,
    /// Every workload that called a provider: how, where to, how much, since when.
    Inventory,
    /// Everything one identity (`--who`) did.
    Activity,
}

impl ReportKind {
    fn name(self) -> &'static str {
        match self {
            ReportKind::Access => "access",
            ReportKind::Change => "change",
            ReportKind::Security => "security",
            ReportKind::Usage => "usage",
            ReportKind::Inventory => "inventory",
            ReportKind::Activity => "activity",
        }
    }
}

/// `{"a":1,"b":"x"}` → `a=1 b=x` (compact identity for tables).
fn identity_text(json: Option<String>) -> Value {
    match json.and_then(|j| serde_json::from_str::<Map<String, Value>>(&j).ok()) {
        Some(m) => Value::String(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    v => format!("{k}={v}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        None => Value::String("-".into()),
    }
}

/// Build a report over `since <= ts < until`.
///
/// # Errors
/// The index cannot be read.
pub fn report(
    dir: &Path,
    kind: ReportKind,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    grouping: &ReportOptions,
) -> Result<Value, LedgerError> {
    let conn = index::open_ro(dir)?;
    let db = index::db_path(dir);
    let e = index::sql_err(&db);
    let (w, params) = where_clause(&Filter {
        since,
        until,
        ..Filter::default()
    });
    let and = |cond: &str| {
        if w.is_empty() {
            format!("WHERE {cond}")
        } else {
            format!("{w} AND ({cond})")
        }
    };
    let p = || rusqlite::params_from_iter(params.clone());
    let (columns, rows, totals) = match kind {
        ReportKind::Access | ReportKind::Usage | ReportKind::Inventory => {
            let sql = format!(
                "SELECT (SELECT json FROM identities WHERE id = identity_id), provider, model,
                        count(*), sum(input_tokens), sum(output_tokens), sum(cost_usd),
                        min(ts), max(ts)
                 FROM records {} GROUP BY identity_id, provider, model",
                and("kind = 'interaction'"),
            );
            let mut stmt = conn.prepare(&sql).map_err(&e)?;
            let sums = stmt
                .query_map(p(), |r| {
                    Ok(Sums {
                        identity: r.get(0)?,
                        provider: r.get(1)?,
                        model: r.get(2)?,
                        node: None,
                        requests: r.get(3)?,
                        input_tokens: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                        output_tokens: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                        cost_usd: r.get::<_, Option<f64>>(6)?.unwrap_or(0.0),
                        first_seen: r.get(7)?,
                        last_seen: r.get(8)?,
                    })
                })
                .map_err(&e)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&e)?;
            grouped(kind, &sums, grouping)
        }
        ReportKind::Activity => {
            let who = grouping.who.as_deref().unwrap_or("");
            let sql = format!("SELECT meta, NULL, hash, hmac FROM records {w} ORDER BY seq");
            let mut u = Unpacker::new(&conn).map_err(&e)?;
            let mut stmt = conn.prepare(&sql).map_err(&e)?;
            let recs = stmt
                .query_map(p(), |r| u.display_row(r))
                .map_err(&e)?
                .filter_map(Result::ok)
                .filter(|r| group::concerns(r, who));
            activity(recs)
        }
        ReportKind::Change | ReportKind::Security => {
            let cond = if kind == ReportKind::Change {
                "kind = 'admin'"
            } else {
                "(kind = 'interaction' AND decision IS NOT NULL AND decision != 'allow')
                 OR (kind = 'connection' AND outcome = 'refused')"
            };
            let sql = format!(
                "SELECT meta, NULL, hash, hmac FROM records {} ORDER BY seq",
                and(cond)
            );
            let mut u = Unpacker::new(&conn).map_err(&e)?;
            let mut stmt = conn.prepare(&sql).map_err(&e)?;
            let recs = stmt
                .query_map(p(), |r| u.display_row(r))
                .map_err(&e)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&e)?;
            let (columns, rows) = record_rows(kind, recs);
            (
                columns.iter().map(|c| (*c).to_owned()).collect(),
                rows,
                None,
            )
        }
    };
    Ok(assemble(kind, since, until, &columns, rows, totals))
}

/// The usage or access report's columns, rows and totals from the store's sums, by
/// `grouping` (default: usage by principal; access by principal, provider and model).
pub(crate) fn grouped(
    kind: ReportKind,
    sums: &[Sums],
    grouping: &ReportOptions,
) -> (Vec<String>, Vec<Value>, Option<Value>) {
    if kind == ReportKind::Inventory {
        let (columns, rows, totals) = group::inventory(sums, grouping.top);
        return (columns, rows, Some(totals));
    }
    let by = if !grouping.by.is_empty() {
        grouping.by.clone()
    } else if kind == ReportKind::Access {
        vec![By::Principal, By::Provider, By::Model]
    } else {
        vec![By::Principal]
    };
    let (columns, rows, totals) = group::group(sums, &by, grouping.top);
    (columns, rows, Some(totals))
}

/// A report's JSON.
pub(crate) fn assemble(
    kind: ReportKind,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    columns: &[String],
    rows: Vec<Value>,
    totals: Option<Value>,
) -> Value {
    let ts = |t: Option<SystemTime>| t.map(crate::record::rfc3339);
    let mut r = json!({
        "report": kind.name(),
        "since": ts(since),
        "until": ts(until),
        "generated_at": crate::record::rfc3339(SystemTime::now()),
        "columns": columns,
        "rows": rows,
    });
    if let Some(t) = totals {
        r["totals"] = t;
    }
    r
}

/// The activity report from one identity's records (as displayed, in order).
pub(crate) fn activity(
    recs: impl Iterator<Item = Value>,
) -> (Vec<String>, Vec<Value>, Option<Value>) {
    let columns = [
        "seq",
        "ts",
        "kind",
        "provider",
        "model",
        "decision",
        "reasons",
        "status",
        "input_tokens",
        "output_tokens",
        "cost_usd",
    ];
    let (mut n, mut interactions, mut tin, mut tout, mut cost) = (0u64, 0u64, 0i64, 0i64, 0.0f64);
    let rows = recs
        .map(|r| {
            n += 1;
            let inp = r["usage"]["input_tokens"].as_i64().unwrap_or(0);
            let out = r["usage"]["output_tokens"].as_i64().unwrap_or(0);
            let c = r["cost_usd"].as_f64().unwrap_or(0.0);
            if r["kind"] == "interaction" {
                interactions += 1;
            }
            tin += inp;
            tout += out;
            cost += c;
            let reasons = r["reason_codes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let status = if r["kind"] == "admin" {
                format!(
                    "{} {}",
                    r["action"].as_str().unwrap_or(""),
                    r["outcome"].as_str().unwrap_or("")
                )
            } else if r["kind"] == "alert" {
                format!(
                    "{} {}",
                    r["rule"].as_str().unwrap_or(""),
                    r["state"].as_str().unwrap_or("")
                )
            } else {
                r.get("status").map_or_else(
                    || r["outcome"].as_str().unwrap_or("-").to_owned(),
                    |s| {
                        if s.is_null() {
                            r["outcome"].as_str().unwrap_or("-").to_owned()
                        } else {
                            s.to_string()
                        }
                    },
                )
            };
            json!({
                "seq": r["seq"], "ts": r["ts"], "kind": r["kind"], "provider": r["provider"],
                "model": r["model"], "decision": r["decision"], "reasons": reasons,
                "status": status, "input_tokens": inp, "output_tokens": out, "cost_usd": c,
            })
        })
        .collect();
    let totals = json!({
        "records": n, "requests": interactions, "input_tokens": tin, "output_tokens": tout,
        "cost_usd": (cost * 1e9).round() / 1e9, "groups": 1,
    });
    (
        columns.iter().map(|c| (*c).to_owned()).collect(),
        rows,
        Some(totals),
    )
}

/// The change or security report's rows from its records (as displayed).
pub(crate) fn record_rows(kind: ReportKind, recs: Vec<Value>) -> (Vec<&'static str>, Vec<Value>) {
    if kind == ReportKind::Change {
        let rows = recs
            .into_iter()
            .map(|r| {
                json!({
                    "seq": r["seq"], "ts": r["ts"], "action": r["action"],
                    "outcome": r["outcome"],
                    "initiator": identity_text(Some(r["initiator"].to_string())),
                    "target": format!("{}:{}", r["target"]["type"].as_str().unwrap_or("-"), r["target"]["id"].as_str().unwrap_or("-")),
                    "details": r["details"],
                })
            })
            .collect();
        (
            vec![
                "seq",
                "ts",
                "action",
                "outcome",
                "initiator",
                "target",
                "details",
            ],
            rows,
        )
    } else {
        let rows = recs
            .into_iter()
            .map(|r| {
                let reason = match r.get("reason_codes").and_then(Value::as_array) {
                    Some(codes) if !codes.is_empty() => Value::String(
                        codes
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    _ => r.get("reason").cloned().unwrap_or(Value::Null),
                };
                json!({
                    "seq": r["seq"], "ts": r["ts"], "kind": r["kind"],
                    "identity": identity_text(Some(r["identity"].to_string())),
                    "provider": r.get("provider").cloned().unwrap_or(Value::Null),
                    "model": r.get("model").cloned().unwrap_or(Value::Null),
                    "decision": r.get("decision").cloned().unwrap_or(Value::Null),
                    "outcome": r["outcome"],
                    "reason": reason,
                })
            })
            .collect();
        (
            vec![
                "seq", "ts", "kind", "identity", "provider", "model", "decision", "outcome",
                "reason",
            ],
            rows,
        )
    }
}

fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.6}"),
            _ => n.to_string(),
        },
        v => v.to_string(),
    };
    let s = s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() > 60 {
        let mut t: String = s.chars().take(59).collect();
        t.push('…');
        t
    } else {
        s
    }
}

/// A report as a readable text table (title, window, one aligned row per entry).
pub fn render_report_text(report: &Value) -> String {
    let cols: Vec<&str> = report["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = report["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| cols.iter().map(|c| cell(&r[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = cols.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let window = |k: &str| report[k].as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "{} report  since {}  until {}  ({} rows)\n\n",
        report["report"].as_str().unwrap_or("?"),
        window("since"),
        window("until"),
        rows.len()
    );
    let line = |cells: &[String]| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    out.push_str(&line(
        &cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>(),
    ));
    out.push_str(&line(
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    ));
    for r in &rows {
        out.push_str(&line(r));
    }
    if let Some(t) = report.get("totals").filter(|t| t.is_object()) {
        out.push_str(&format!(
            "\ntotal: {} requests in {} groups, {} input and {} output tokens, {} USD\n",
            t["requests"],
            t["groups"],
            t["input_tokens"],
            t["output_tokens"],
            cell(&t["cost_usd"]),
        ));
    }
    out
}
