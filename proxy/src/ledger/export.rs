//! `sluice audit export`: records as a JSON array, JSON Lines, or RFC 5424 syslog lines.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;

use super::index::{self, Unpacker};
use super::query::{where_clause, Filter};
use super::{Ledger, LedgerError};
use crate::record::{AdminAction, AdminOutcome, Initiator, Target};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// RFC 5424 syslog, one record per line (facility local0).
    Syslog,
}

/// Private enterprise number used as the SD-ID suffix (`sluice@32473`, the number RFC
/// 5612 reserves for documentation examples).
const SD_ID: &str = "sluice@32473";
const FACILITY_LOCAL0: u8 = 16;
const SEVERITY_WARNING: u8 = 4;
const SEVERITY_INFO: u8 = 6;

fn out_err(e: std::io::Error) -> LedgerError {
    LedgerError::io("write export to", Path::new("the output"), e)
}

/// Write the records with `since <= ts < until` (by seq) to `out`; returns how many.
///
/// # Errors
/// The index cannot be read or `out` cannot be written.
pub fn export(
    dir: &Path,
    format: ExportFormat,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    out: &mut dyn Write,
) -> Result<u64, LedgerError> {
    write_records(dir, format, since, until, out, false)
}

/// [`export`] with each record's inclusion proof (`sluice_proof`, see `proof`), for
/// `json` and `jsonl`.
///
/// # Errors
/// As [`export`]; [`LedgerError::Format`] for syslog, which has no room for proofs.
pub fn export_with_proofs(
    dir: &Path,
    format: ExportFormat,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    out: &mut dyn Write,
) -> Result<u64, LedgerError> {
    if format == ExportFormat::Syslog {
        return Err(LedgerError::Format {
            path: dir.to_path_buf(),
            detail: "inclusion proofs are exported with --format json or jsonl, not syslog".into(),
        });
    }
    write_records(dir, format, since, until, out, true)
}

fn write_records(
    dir: &Path,
    format: ExportFormat,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    out: &mut dyn Write,
    proofs: bool,
) -> Result<u64, LedgerError> {
    let conn = index::open_ro(dir)?;
    let db = index::db_path(dir);
    let e = index::sql_err(&db);
    let prover = proofs
        .then(|| super::proof::Prover::open(dir, &conn))
        .transpose()?;
    let (w, params) = where_clause(&Filter {
        since,
        until,
        ..Filter::default()
    });
    let mut u = Unpacker::new(&conn).map_err(&e)?;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT meta, content, hash, hmac, seq FROM records {w} ORDER BY seq"
        ))
        .map_err(&e)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params)).map_err(&e)?;
    let host = hostname();
    let mut w = RecordWriter::new(format, out)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let mut rec = u.display_row(r).map_err(&e)?;
        if let (Some(p), Value::Object(m)) = (&prover, &mut rec) {
            let meta = u.text(r, 0).map_err(&e)?.unwrap_or_default();
            let content = u.text(r, 1).map_err(&e)?;
            let seq = r.get::<_, i64>(4).map_err(&e)? as u64;
            m.insert(
                "sluice_proof".into(),
                p.proof(seq, &meta, content.as_deref()),
            );
        }
        w.record(&rec, &host)?;
    }
    w.finish()
}

/// Writes records one at a time in an export format (a JSON array's brackets included),
/// so a node's ledger and the central one export the same bytes for the same records.
pub(crate) struct RecordWriter<'a> {
    format: ExportFormat,
    out: &'a mut dyn Write,
    n: u64,
    pid: u32,
}

impl<'a> RecordWriter<'a> {
    pub(crate) fn new(format: ExportFormat, out: &'a mut dyn Write) -> Result<Self, LedgerError> {
        if format == ExportFormat::Json {
            out.write_all(b"[").map_err(out_err)?;
        }
        Ok(RecordWriter {
            format,
            out,
            n: 0,
            pid: std::process::id(),
        })
    }

    /// One record; `host` is the syslog HOSTNAME (the node it was recorded on).
    pub(crate) fn record(&mut self, rec: &Value, host: &str) -> Result<(), LedgerError> {
        let line = match self.format {
            ExportFormat::Json => {
                let sep = if self.n == 0 { "\n" } else { ",\n" };
                format!("{sep}{}", serde_json::to_string(rec)?)
            }
            ExportFormat::Jsonl => format!("{}\n", serde_json::to_string(rec)?),
            ExportFormat::Syslog => format!("{}\n", syslog_line(rec, host, self.pid)),
        };
        self.out.write_all(line.as_bytes()).map_err(out_err)?;
        self.n += 1;
        Ok(())
    }

    /// Closes the array (JSON), flushes; returns how many records were written.
    pub(crate) fn finish(self) -> Result<u64, LedgerError> {
        if self.format == ExportFormat::Json {
            self.out.write_all(b"\n]\n").map_err(out_err)?;
        }
        self.out.flush().map_err(out_err)?;
        Ok(self.n)
    }
}

/// [`export`] from an open ledger, recording the export itself as an admin record
/// (action `export`, outcome success or failure) made by `initiator`.
///
/// # Errors
/// As [`export`]; also when the admin record cannot be appended.
pub fn export_with_audit(
    ledger: &Ledger,
    initiator: Initiator,
    format: ExportFormat,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    out: &mut dyn Write,
) -> Result<u64, LedgerError> {
    ledger.flush();
    let result = export(ledger.dir(), format, since, until, out);
    let ts = |t: Option<SystemTime>| t.map(crate::record::rfc3339);
    let details = serde_json::json!({
        "format": format!("{format:?}").to_lowercase(),
        "since": ts(since),
        "until": ts(until),
        "records": result.as_ref().ok(),
        "error": result.as_ref().err().map(ToString::to_string),
    });
    let admin = crate::record::Admin::new(
        AdminAction::Export,
        if result.is_ok() {
            AdminOutcome::Success
        } else {
            AdminOutcome::Failure
        },
        initiator,
        Target {
            kind: "ledger".into(),
            id: ledger.dir().display().to_string(),
        },
        details,
    );
    ledger.append(&crate::record::Record::Admin(Box::new(admin)))?;
    result
}

/// The host name for syslog (`-`, the NILVALUE, when unknown).
fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h: String = h
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if h.is_empty() {
        "-".into()
    } else {
        h
    }
}

/// Warning for blocks, errors, refusals and failed admin actions; info otherwise.
fn severity(rec: &Value) -> u8 {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    let warn = match s("kind") {
        Some("interaction") => {
            s("decision").is_some_and(|d| d != "allow") || s("outcome") != Some("success")
        }
        Some("connection") => s("outcome") == Some("refused") || !rec["error"].is_null(),
        Some("admin") => s("outcome") == Some("failure"),
        _ => false,
    };
    if warn {
        SEVERITY_WARNING
    } else {
        SEVERITY_INFO
    }
}

/// Escape a PARAM-VALUE (RFC 5424 §6.3.3: `"`, `\` and `]` take a backslash) and
/// newlines (as `\n`, `\r`) so the record stays on one line.
pub(crate) fn escape_param(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '"' | '\\' | ']' => {
                s.push('\\');
                s.push(c);
            }
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            c => s.push(c),
        }
    }
    s
}

/// A PARAM-NAME: printable US-ASCII except `=`, space, `]`, `"`; at most 32 characters.
fn param_name(k: &str) -> String {
    k.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"'))
        .take(32)
        .collect()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        Value::Array(_) | Value::Object(_) => Some(v.to_string()),
    }
}

/// One record as an RFC 5424 line:
/// `<PRI>1 TIMESTAMP HOSTNAME sluice PROCID MSGID [sluice@32473 k="v" …] MSG`.
/// The SD-PARAMs carry the record's scalar fields (objects flattened one level as
/// `identity.pid`, content left out); MSG is the whole record as compact JSON.
pub(crate) fn syslog_line(rec: &Value, host: &str, pid: u32) -> String {
    let pri = FACILITY_LOCAL0 * 8 + severity(rec);
    let ts = rec
        .get("ts")
        .and_then(Value::as_str)
        .filter(|t| super::index::ts_millis(t) != 0 && t.is_ascii() && !t.contains(' '))
        .unwrap_or("-");
    let msgid: String = rec
        .get("kind")
        .and_then(Value::as_str)
        .map(param_name)
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "-".into());
    let mut sd = format!("[{SD_ID}");
    if let Value::Object(m) = rec {
        for (k, v) in m {
            if matches!(k.as_str(), "request" | "response" | "details") {
                continue;
            }
            match v {
                Value::Object(inner) => {
                    for (k2, v2) in inner {
                        if let Some(val) = scalar(v2) {
                            sd.push_str(&format!(
                                " {}=\"{}\"",
                                param_name(&format!("{k}.{k2}")),
                                escape_param(&val)
                            ));
                        }
                    }
                }
                _ => {
                    if let Some(val) = scalar(v) {
                        sd.push_str(&format!(" {}=\"{}\"", param_name(k), escape_param(&val)));
                    }
                }
            }
        }
    }
    sd.push(']');
    let msg = rec.to_string().replace('\n', "\\n").replace('\r', "\\r");
    format!("<{pri}>1 {ts} {host} sluice {pid} {msgid} {sd} {msg}")
}
