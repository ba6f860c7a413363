//! `--scenario phases`: where the full path's CPU goes, per request, phase by phase.
//!
//! The governed path (`sluice-budget`: TLS interception, the OpenAI adapter, a policy with
//! a budget and a rate limit, the default guardrails, the ledger with chain and HMAC) runs
//! under `valgrind --tool=callgrind` while one connection sends 1 KB prompts for a fixed
//! time. Callgrind counts instructions, not seconds: the figures repeat for the same binary
//! and inputs whatever else the machine does, so a change's effect can be read off two runs.
//! Instrumentation starts after a warm-up (lazily built tables, the minted leaf, the pools
//! are not per-request costs); every count is divided by the answers the load generator
//! received while it was on (the interaction records written meanwhile are the check).
//!
//! Two views of one profile:
//! - **phases**: inclusive instructions of the functions that are a phase's entry point
//!   (a function's callees count with it), or a crate's exclusive instructions (TLS, the
//!   hashes). Only entry points the release build keeps as functions can be named: async
//!   state machines are folded into their callers.
//! - **by component**: exclusive instructions by the crate (or library) of the function that
//!   executed them — every instruction in exactly one row, summing to the total.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};

use super::loadgen::Loadgen;
use super::peers::{self, Rig};
use super::profile::{loadgen_args, Profile};

/// A phase: its name, what it covers, and its entry points (function names, matched
/// whole after the crate path), whose inclusive costs add up (they do not call each other).
struct Phase {
    name: &'static str,
    what: &'static str,
    entries: &'static [&'static str],
}

/// The phases whose entry points survive inlining in the release build (async state
/// machines and small helpers are folded into their callers and cannot be told apart; the
/// by-component view covers them).
const PHASES: &[Phase] = &[
    Phase {
        name: "tls",
        what: "TLS both sides: handshakes (rare on kept-alive connections), record encryption",
        entries: &["rustls::", "ring::"],
    },
    Phase {
        name: "request_head",
        what: "HTTP/1.1 request head read and parsed (Pingora)",
        entries: &["pingora_core::protocols::http::v1::server::HttpSession::read_request"],
    },
    Phase {
        name: "adapter_request",
        what: "the provider adapter parses the request (model, messages, parameters)",
        entries: &["<sluice::providers::openai::OpenAi as sluice::providers::Adapter>::parse_request"],
    },
    Phase {
        name: "token_count",
        what: "the tokenizer over the prompt (budget worst case)",
        entries: &["sluice::providers::estimate_tokens"],
    },
    Phase {
        name: "guardrails",
        what: "PII / secrets / injection scans",
        entries: &["sluice::guardrails::"],
    },
    Phase {
        name: "limits",
        what: "rate limits admitted (this node's limiter; a fleet's Redis call is made on the \
               counters' own I/O thread)",
        entries: &["sluice::policy::limits::Limiter::admit"],
    },
    Phase {
        name: "budget_store",
        what: "budget counters read and settled (memory), and their SQLite writes (batched, \
               own thread)",
        entries: &[
            "<sluice::policy::budget::SqliteCounters as sluice::policy::budget::CounterStore>::add",
            "<sluice::policy::budget::SqliteCounters as sluice::policy::budget::CounterStore>::spent",
            "sluice::policy::budget::SqliteInner::write_pending",
        ],
    },
    Phase {
        name: "adapter_response",
        what: "the provider adapter parses the answer (text, usage, finish reason)",
        entries: &["<sluice::providers::openai::OpenAi as sluice::providers::Adapter>::parse_response"],
    },
    Phase {
        name: "record_serialise",
        what: "the interaction record serialised for the ledger (canonical JSON)",
        entries: &["sluice::record::_::<impl serde_core::ser::Serialize for sluice::record::Record>::serialize"],
    },
    Phase {
        name: "ledger_append",
        what: "the record prepared (canonical form, chain hash, HMAC) and appended to the WAL",
        entries: &["sluice::ledger::writer::Inner::append_counted"],
    },
    Phase {
        name: "ledger_index",
        what: "the indexer's row for the record: zstd-packed copy, SQLite insert (own thread)",
        entries: &["sluice::ledger::index::Inserter::record"],
    },
    Phase {
        name: "alerts",
        what: "the alert rules over the record stream (their own thread, on by default)",
        entries: &["sluice::alerts::run"],
    },
];

/// Runs the profile; returns its figures (also printed as a table by the caller).
///
/// # Errors
/// valgrind or callgrind_annotate missing or failing, no records.
pub fn run(rig: &Rig, lg: &Loadgen, p: &Profile) -> Result<Json> {
    for tool in ["valgrind", "callgrind_annotate"] {
        if !peers::which(tool) {
            peers::ensure_apt(&["valgrind"])?;
            if !peers::which(tool) {
                bail!("{tool} is not installed (apt-get install valgrind)");
            }
        }
    }
    let out = rig.work.join("phases.callgrind");
    let _ = std::fs::remove_file(&out);
    // Instrumentation off until the path is warm: lazily built tables (the tokenizer's, the
    // leaf certificate, the pools) are not per-request costs.
    let wrapper = [
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", out.display()),
        "--dump-instr=no".to_string(),
        "--collect-jumps=no".to_string(),
        "--separate-recs=1".to_string(),
        "--instr-atstart=no".to_string(),
    ];
    // A fresh state (the measured runs may have used the path's directory).
    let _ = std::fs::remove_dir_all(rig.work.join("sluice-budget"));
    let mut running = peers::start_with(rig, "sluice-budget", &wrapper)?;
    let args = loadgen_args(p, "lat1_1k");
    let (warm, seconds) = if p.release { (5.0, 40.0) } else { (3.0, 8.0) };
    lg.run_for(running.addr, &running.client_ca, &args, warm, 0.0, 300.0)?;
    // Interaction records written so far. (`audit` reads at most twice its expected count:
    // a generous one, to read them all.)
    let recorded = |running: &peers::Running| {
        let all = super::Seen {
            responses: 1e6,
            connections: 0.0,
        };
        super::audit(&rig.sluice, running, &all)["records"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let before = recorded(&running);
    let pid = running.pid().context("the profiled path has a process")?;
    let on = Command::new("callgrind_control")
        .args(["-i", "on", &pid.to_string()])
        .output()
        .context("running callgrind_control")?;
    if !on.status.success() {
        running.stop();
        bail!(
            "callgrind_control -i on failed: {}",
            String::from_utf8_lossy(&on.stderr).trim()
        );
    }
    let load = lg.run_for(running.addr, &running.client_ca, &args, seconds, 0.0, 300.0);
    running.stop();
    let load = load?;
    let after = recorded(&running);
    // Per request: the answers the load generator received while instrumentation was on
    // (the records written meanwhile are the check: one per answer).
    let requests = load["responses_total"].as_f64().unwrap_or(0.0);
    if requests < 1.0 || load["errors"].as_f64().unwrap_or(1.0) > 0.0 {
        bail!(
            "the profiled run did not answer cleanly: {} answers, errors {}",
            load["responses_total"],
            load["error_samples"]
        );
    }
    let inclusive = annotate(&out, true)?;
    let exclusive = annotate(&out, false)?;
    let total = exclusive.get("PROGRAM TOTALS").copied().unwrap_or(0) as f64;
    let mut phases = Vec::new();
    for ph in PHASES {
        // Crate prefixes (`sha2::`) take the exclusive costs of the crate; named functions
        // their inclusive cost.
        let ir: u64 = ph
            .entries
            .iter()
            .map(|e| {
                if e.ends_with("::") && !e.contains('<') && e.matches("::").count() == 1 {
                    exclusive
                        .iter()
                        .filter(|(f, _)| f.trim_start_matches('<').starts_with(e))
                        .map(|(_, ir)| *ir)
                        .sum()
                } else {
                    inclusive
                        .iter()
                        .filter(|(f, _)| f.as_str() == *e || f.starts_with(e))
                        .map(|(_, ir)| *ir)
                        .max()
                        .unwrap_or(0)
                }
            })
            .sum();
        phases.push(json!({
            "phase": ph.name,
            "what": ph.what,
            "instructions_per_request": (ir as f64 / requests).round(),
            "share": ir as f64 / total.max(1.0),
        }));
    }
    // The heaviest functions of Sluice's own code, inclusive: what to look at next.
    let mut own: Vec<(&String, &u64)> = inclusive
        .iter()
        .filter(|(f, _)| f.contains("sluice::") && !f.starts_with("core::ptr::drop_in_place"))
        .collect();
    own.sort_by_key(|(_, ir)| std::cmp::Reverse(**ir));
    let top: Vec<Json> = own
        .into_iter()
        .take(15)
        .map(|(f, ir)| json!({"function": f, "instructions_per_request": (*ir as f64 / requests).round()}))
        .collect();
    let mut by_component: BTreeMap<String, u64> = BTreeMap::new();
    for (f, ir) in &exclusive {
        if f == "PROGRAM TOTALS" {
            continue;
        }
        *by_component.entry(component(f)).or_default() += ir;
    }
    let mut components: Vec<(String, u64)> = by_component.into_iter().collect();
    components.sort_by_key(|c| std::cmp::Reverse(c.1));
    let components: Vec<Json> = components
        .into_iter()
        .map(|(c, ir)| {
            json!({
                "component": c,
                "instructions_per_request": (ir as f64 / requests).round(),
                "share": ir as f64 / total.max(1.0),
            })
        })
        .collect();
    Ok(json!({
        "available": true,
        "path": "sluice-budget",
        "requests": requests,
        "records_written": after - before,
        "load": {
            "responses": load["responses_total"].clone(),
            "connections": load["connections_total"].clone(),
            "errors": load["errors"].clone(),
            "error_samples": load["error_samples"].clone(),
        },
        "instructions_per_request": (total / requests).round(),
        "phases": phases,
        "by_component": components,
        "top_functions": top,
        "command": "cargo xtask bench --scenario phases --paths sluice-budget",
        "callgrind_out": out.display().to_string(),
    }))
}

/// The figures as two Markdown tables (phases, then components).
pub fn markdown(r: &Json) -> String {
    let n = |v: &Json| format!("{:.0}", v.as_f64().unwrap_or(0.0));
    let mut t = format!(
        "### Where the CPU goes ({} requests under callgrind, {} instructions per request)\n\n\
         | phase | instructions / request | share | what |\n|---|---|---|---|\n",
        n(&r["requests"]),
        n(&r["instructions_per_request"])
    );
    let pct = |v: &Json| format!("{:.1} %", v.as_f64().unwrap_or(0.0) * 100.0);
    for ph in r["phases"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            ph["phase"].as_str().unwrap_or(""),
            n(&ph["instructions_per_request"]),
            pct(&ph["share"]),
            ph["what"].as_str().unwrap_or("")
        ));
    }
    t.push_str("\n| Sluice function (inclusive) | instructions / request |\n|---|---|\n");
    for f in r["top_functions"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "| `{}` | {} |\n",
            f["function"].as_str().unwrap_or("").replace('|', "\\|"),
            n(&f["instructions_per_request"])
        ));
    }
    t.push_str("\n| component (exclusive) | instructions / request | share |\n|---|---|---|\n");
    for c in r["by_component"].as_array().into_iter().flatten().take(20) {
        t.push_str(&format!(
            "| {} | {} | {} |\n",
            c["component"].as_str().unwrap_or(""),
            n(&c["instructions_per_request"]),
            pct(&c["share"])
        ));
    }
    t
}

/// `callgrind_annotate` of `file`: function (as `file:function`'s function part) →
/// instructions, inclusive or exclusive; `PROGRAM TOTALS` too.
fn annotate(file: &Path, inclusive: bool) -> Result<BTreeMap<String, u64>> {
    let out = Command::new("callgrind_annotate")
        .arg(format!(
            "--inclusive={}",
            if inclusive { "yes" } else { "no" }
        ))
        .args(["--threshold=100", "--auto=no"])
        .arg(file)
        .output()
        .context("running callgrind_annotate")?;
    if !out.status.success() {
        bail!(
            "callgrind_annotate failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_annotate(
        &String::from_utf8_lossy(&out.stdout),
        inclusive,
    ))
}

/// Lines like `1,234 (12.3%)  src/x.rs:sluice::a::b [/path/bin]` and
/// `5,678 (100.0%)  PROGRAM TOTALS`. A function listed under several files: its exclusive
/// costs are split between them (summed), its inclusive cost is repeated (the largest).
fn parse_annotate(text: &str, inclusive: bool) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(ir) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('(') {
            Some(r) => r.split_once(')').map_or(r, |(_, after)| after).trim_start(),
            None => rest,
        };
        let rest = rest.rsplit_once(" [").map_or(rest, |(f, _)| f);
        let function = if rest == "PROGRAM TOTALS" {
            rest
        } else {
            // The file part ends at the first single ':' (function names have `::`).
            let bytes = rest.as_bytes();
            let cut = (0..bytes.len()).find(|&i| {
                bytes[i] == b':'
                    && bytes.get(i + 1) != Some(&b':')
                    && (i == 0 || bytes[i - 1] != b':')
            });
            cut.map_or(rest, |i| &rest[i + 1..])
        };
        let entry = out.entry(function.to_string()).or_default();
        *entry = if inclusive {
            (*entry).max(ir)
        } else {
            *entry + ir
        };
    }
    out
}

/// The crate (or library) a function belongs to, for the by-component view.
fn component(function: &str) -> String {
    let f = function.trim_start_matches('<').trim_start_matches('&');
    let head = f.split("::").next().unwrap_or(f);
    let head = head.split(' ').next().unwrap_or(head);
    if f.starts_with("0x") || head.is_empty() {
        return "(unknown)".into();
    }
    if !f.contains("::") {
        // C symbols: libc, the kernel boundary, the allocator, SQLite, zstd.
        return match head {
            h if h.starts_with("mi_") || h.starts_with("_mi_") => "mimalloc".into(),
            h if h.starts_with("sqlite3") => "sqlite".into(),
            h if h.starts_with("ZSTD") || h.starts_with("HUF_") || h.starts_with("FSE_") => {
                "zstd".into()
            }
            _ => "libc and other C".into(),
        };
    }
    head.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_lines_parse_into_functions() {
        let text = "\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
12,000 (100.0%)  PROGRAM TOTALS
 3,000 (25.00%)  /rustc/abc/library/core/src/x.rs:sluice::proxy::sniff [/t/sluice]
 1,000 ( 8.33%)  ???:<sluice::a::B as core::ops::Drop>::drop [/t/sluice]
   500 ( 4.17%)  ???:mi_malloc [/t/sluice]
   400 ( 3.33%)  src/y.rs:sluice::proxy::sniff [/t/sluice]
";
        let m = parse_annotate(text, false);
        assert_eq!(m["PROGRAM TOTALS"], 12_000);
        assert_eq!(m["sluice::proxy::sniff"], 3_400);
        assert_eq!(parse_annotate(text, true)["sluice::proxy::sniff"], 3_000);
        assert_eq!(m["<sluice::a::B as core::ops::Drop>::drop"], 1_000);
        assert_eq!(
            component("<sluice::a::B as core::ops::Drop>::drop"),
            "sluice"
        );
        assert_eq!(component("mi_malloc"), "mimalloc");
        assert_eq!(component("rustls::conn::ConnectionCommon::x"), "rustls");
    }
}
