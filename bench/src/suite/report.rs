//! From load-generator runs to figures (median, min–max), the derived figures (latency
//! added over `direct`, rig-bound flags, ratios) and the markdown tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::json::JsonExt;
use super::peers::PATHS;
use super::{Kind, Profile, SCENARIOS};
use serde_json::Value as Json;

/// Error rate above which a figure is marked.
pub const ERROR_MARK: f64 = 0.001;
/// A throughput at or above this share of the rig's ceiling measures the rig.
pub const RIG_SHARE: f64 = 0.9;

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// `{median, min, max, n}` of the values.
pub fn stat(v: &[f64]) -> Json {
    let mut o = Json::obj();
    if v.is_empty() {
        return Json::Null;
    }
    o.set("median", median(v))
        .set("min", v.iter().copied().fold(f64::INFINITY, f64::min))
        .set("max", v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .set("n", v.len());
    o
}

/// Figures of each scenario from its repetitions.
pub fn figures(runs: &BTreeMap<&str, Vec<Json>>) -> Json {
    let mut out = Json::obj();
    for (name, reps) in runs {
        let Some(kind) = SCENARIOS.iter().find(|s| s.name == *name).map(|s| s.kind) else {
            continue;
        };
        let each =
            |path: &str| -> Vec<f64> { reps.iter().filter_map(|r| r.at(path).num()).collect() };
        let mut f = Json::obj();
        let errors: f64 = each("errors").iter().sum();
        let requests: f64 = each("requests").iter().sum();
        let error_rate = if requests > 0.0 {
            errors / requests
        } else {
            1.0
        };
        f.set("error_rate", error_rate)
            .set("requests", requests)
            .set("error_samples", first_samples(reps));
        match kind {
            Kind::Throughput | Kind::NewConn => {
                f.set("rps", stat(&each("rps")));
            }
            Kind::Latency => {
                for q in ["p50", "p90", "p99", "p999"] {
                    f.set(q, stat(&each(&format!("latency_us/{q}"))));
                }
            }
            Kind::Sse => {
                for (k, p) in [
                    ("ttfe_p50", "ttfe_us/p50"),
                    ("ttfe_p99", "ttfe_us/p99"),
                    ("gap_p50", "gap_us/p50"),
                    ("gap_p99", "gap_us/p99"),
                    ("latency_p50", "latency_us/p50"),
                ] {
                    f.set(k, stat(&each(p)));
                }
                let ok: f64 = each("ok").iter().sum();
                let bad: f64 = each("fidelity_failures").iter().sum();
                f.set(
                    "fidelity",
                    if ok > 0.0 {
                        Json::from(1.0 - bad / ok)
                    } else {
                        Json::Null
                    },
                )
                .set(
                    "reference",
                    reps.first()
                        .map_or(Json::Null, |r| r.member("sse_reference").clone()),
                );
            }
        }
        out.set(name, f);
    }
    out
}

fn first_samples(reps: &[Json]) -> Json {
    let mut seen: Vec<Json> = Vec::new();
    for r in reps {
        if let Json::Array(a) = r.member("error_samples") {
            for s in a {
                if seen.len() < 3 && !seen.contains(s) {
                    seen.push(s.clone());
                }
            }
        }
    }
    Json::Array(seen)
}

fn med(v: &Json, path: &str) -> Option<f64> {
    v.at(path).member("median").num().filter(|n| n.is_finite())
}

/// Adds `added_*` (over `direct`) and `rig_bound` into each path's figures and returns
/// the ratios.
pub fn derive(out: &mut Json) -> Json {
    let direct = out.at("paths/direct/scenarios").clone();
    // The rig's ceiling is the best it did: at high concurrency, or direct at the
    // saturation concurrency (one load-generator thread can do better with fewer).
    let mut ceiling = out.member("rig_ceiling").clone();
    for name in ceiling.keys() {
        if let (Some(top), Some(d)) = (med(&ceiling, &name), med(&direct, &format!("{name}/rps"))) {
            if d > top {
                let own = direct.at(&format!("{name}/rps")).clone();
                ceiling.set(&name, own);
            }
        }
    }
    if let Some(c) = out.at_mut("rig_ceiling") {
        *c = ceiling.clone();
    }
    for path in out.at("paths").keys() {
        let Some(sc) = out.at_mut(&format!("paths/{path}/scenarios")) else {
            continue;
        };
        for name in sc.keys() {
            let Some(f) = sc.at_mut(&name) else { continue };
            let added = |f: &Json, key: &str, dkey: &str| -> Json {
                match (med(f, key), med(&direct, &format!("{name}/{dkey}"))) {
                    (Some(a), Some(b)) => Json::from(a - b),
                    _ => Json::Null,
                }
            };
            let mut adds = Vec::new();
            for q in [
                "p50", "p90", "p99", "p999", "ttfe_p50", "ttfe_p99", "gap_p50", "gap_p99",
            ] {
                if !matches!(f.member(q), Json::Null) {
                    adds.push((format!("added_{q}"), added(f, q, q)));
                }
            }
            for (k, v) in adds {
                f.set(&k, v);
            }
            if let (Some(rps), Some(top)) = (med(f, "rps"), med(&ceiling, &name)) {
                f.set("rig_bound", rps >= RIG_SHARE * top);
            }
        }
    }
    ratios(out)
}

fn ratios(out: &Json) -> Json {
    let fig = |path: &str, key: &str| med(out.at(&format!("paths/{path}/scenarios")), key);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Json::from(a / b),
        _ => Json::Null,
    };
    let pair = |a: &str, b: &str| {
        let mut o = Json::obj();
        o.set(
            "throughput_1k",
            ratio(fig(a, "sat_1k/rps"), fig(b, "sat_1k/rps")),
        )
        .set(
            "throughput_100k",
            ratio(fig(a, "sat_100k/rps"), fig(b, "sat_100k/rps")),
        )
        .set(
            "added_p50_1k",
            ratio(
                num_at(out, a, "lat1_1k/added_p50"),
                num_at(out, b, "lat1_1k/added_p50"),
            ),
        )
        .set(
            "added_p99_1k",
            ratio(
                num_at(out, a, "lat1_1k/added_p99"),
                num_at(out, b, "lat1_1k/added_p99"),
            ),
        )
        .set(
            "p50_1k",
            ratio(fig(a, "lat1_1k/p50"), fig(b, "lat1_1k/p50")),
        )
        .set(
            "new_tls_conns",
            ratio(fig(a, "newconn/rps"), fig(b, "newconn/rps")),
        );
        o
    };
    let mut r = Json::obj();
    r.set("sluice/nginx", pair("sluice", "nginx"))
        .set("sluice/haproxy", pair("sluice", "haproxy"))
        .set("sluice/pingora-minimal", pair("sluice", "pingora-minimal"))
        .set("sluice/direct", pair("sluice", "direct"));
    // What sharing budgets and rate limits through Redis costs the request path, against
    // the same policy counted on the node.
    let available = |p: &str| out.at(&format!("paths/{p}/available")) == &Json::Bool(true);
    if available("sluice-fleet") && available("sluice-budget") {
        r.set(
            "sluice-fleet/sluice-budget",
            pair("sluice-fleet", "sluice-budget"),
        );
    }
    // Five sinks whose destinations are all down, against none.
    if available("sluice-deadsink") {
        r.set("sluice-deadsink/sluice", pair("sluice-deadsink", "sluice"));
    }
    for peer in PATHS {
        if *peer == "sluice" || *peer == "direct" || *peer == "sluice-deadsink" {
            continue;
        }
        if out.at(&format!("paths/{peer}/available")) == &Json::Bool(true) {
            r.set(&format!("{peer}/sluice"), pair(peer, "sluice"));
        }
    }
    r
}

fn num_at(out: &Json, path: &str, key: &str) -> Option<f64> {
    out.at(&format!("paths/{path}/scenarios/{key}")).num()
}

// === markdown ===

/// `median (min–max)` with marks: `⚠x%` errors above 0.1%, `‡` rig-bound.
fn cell(f: &Json, key: &str, scale: f64, digits: usize) -> String {
    let s = f.member(key);
    let Some(m) = s.member("median").num().filter(|n| n.is_finite()) else {
        return "—".into();
    };
    let lo = s.member("min").num().unwrap_or(m);
    let hi = s.member("max").num().unwrap_or(m);
    let mut text = if (hi - lo).abs() < f64::EPSILON {
        format!("{:.*}", digits, m / scale)
    } else {
        format!(
            "{:.*} ({:.*}–{:.*})",
            digits,
            m / scale,
            digits,
            lo / scale,
            digits,
            hi / scale
        )
    };
    text.push_str(&marks(f));
    text
}

fn marks(f: &Json) -> String {
    let mut m = String::new();
    if let Some(e) = f.member("error_rate").num() {
        if e > ERROR_MARK {
            let _ = write!(m, " ⚠{:.1}% err", e * 100.0);
        }
    }
    if f.member("rig_bound") == &Json::Bool(true) {
        m.push_str(" ‡");
    }
    m
}

fn plain(v: &Json, scale: f64, digits: usize, sign: bool) -> String {
    match v.num() {
        Some(n) if n.is_finite() && sign => format!("{:+.*}", digits, n / scale),
        Some(n) if n.is_finite() => format!("{:.*}", digits, n / scale),
        _ => "—".into(),
    }
}

/// The tables, in reading order; ratios last.
pub fn markdown(out: &Json, p: &Profile) -> String {
    let mut t = String::new();
    let meta = out.member("meta");
    let _ = writeln!(
        t,
        "Sluice benchmark — {} ({} profile, {} build, {} rep(s) × {} s), {} × {}, kernel {}",
        meta.member("date").str().unwrap_or("?"),
        p.name,
        if p.release { "release" } else { "debug" },
        p.reps,
        p.duration,
        plain(meta.at("machine/nproc"), 1.0, 0, false),
        meta.at("machine/cpu_model").str().unwrap_or("?"),
        meta.at("machine/kernel").str().unwrap_or("?"),
    );
    let _ = writeln!(
        t,
        "Placement: {}",
        meta.member("placement").str().unwrap_or("?")
    );
    let _ = writeln!(
        t,
        "Cells: median (min–max) over repetitions. ⚠ = errors above 0.1%. ‡ = within 10% of the rig's ceiling (measures the load generator, not the path).\n"
    );
    let ceiling = out.member("rig_ceiling");
    let _ = writeln!(
        t,
        "Rig ceiling (load generator → mock; median = best of {} connections and direct's own run): 1 KB {} req/s, 100 KB {} req/s, new TLS {} conn/s\n",
        p.ceiling_conns,
        cell(ceiling, "sat_1k", 1.0, 0),
        cell(ceiling, "sat_100k", 1.0, 0),
        cell(ceiling, "newconn", 1.0, 0),
    );
    let paths: Vec<(&str, &Json)> = PATHS
        .iter()
        .map(|p| (*p, out.at(&format!("paths/{p}"))))
        .filter(|(_, v)| v.member("available") == &Json::Bool(true))
        .collect();
    let sc = |v: &Json, name: &str| v.at(&format!("scenarios/{name}")).clone();

    let _ = writeln!(t, "### Throughput and resources\n");
    let _ = writeln!(t, "| path | req/s 1 KB ({c} conns) | req/s 100 KB | new TLS conn/s | CPU s / 10k req (1 KB) | RSS idle → peak MB | MB per 1000 idle keep-alive conns | MB with {h} open streams (+ per 1000) | audit records |", c = p.sat_conns, h = p.hold_conns);
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for (name, v) in &paths {
        let rss = match (v.member("rss_idle_kb").num(), v.member("rss_peak_kb").num()) {
            (Some(a), Some(b)) => format!("{:.1} → {:.1}", a / 1024.0, b / 1024.0),
            _ => "—".into(),
        };
        let audit = match v.member("audit") {
            Json::Null => "—".to_string(),
            a => format!(
                "{}/{} {}{}",
                plain(a.member("records"), 1.0, 0, false),
                plain(a.member("expected"), 1.0, 0, false),
                a.member("kind").str().unwrap_or(""),
                if a.member("complete") == &Json::Bool(true) {
                    " ✓"
                } else {
                    " ✗"
                }
            ),
        };
        let held = |mode: &str| -> String {
            let h = v.at(&format!("hold/{mode}"));
            if let Some(e) = h.member("error").str() {
                return format!("failed: {}", e.replace('|', "/"));
            }
            let (Some(per), Some(held), Some(asked)) = (
                h.member("kb_per_1000").num(),
                h.member("held").num(),
                h.member("asked").num(),
            ) else {
                return "—".into();
            };
            let partial = if held < asked {
                format!(" (held {held:.0} of {asked:.0})")
            } else {
                String::new()
            };
            if mode == "idle" {
                format!("{:.1}{partial}", per / 1024.0)
            } else {
                let during = h.member("rss_held_kb").num().unwrap_or(0.0);
                format!("{:.1} (+{:.1}){partial}", during / 1024.0, per / 1024.0)
            }
        };
        let (idle, streams) = (held("idle"), held("streams"));
        let mut cpu = Json::obj();
        cpu.set("x", v.member("cpu_s_per_10k_requests").clone());
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} | {} | {rss} | {idle} | {streams} | {audit} |",
            cell(&sc(v, "sat_1k"), "rps", 1.0, 0),
            cell(&sc(v, "sat_100k"), "rps", 1.0, 0),
            cell(&sc(v, "newconn"), "rps", 1.0, 0),
            cell(&cpu, "x", 1.0, 2),
        );
    }

    for (size, one, open, rate) in [
        ("1 KB", "lat1_1k", "open_1k", p.rate_1k),
        ("100 KB", "lat1_100k", "open_100k", p.rate_100k),
    ] {
        let _ = writeln!(
            t,
            "\n### Latency, {size} prompt (µs; added = over direct, medians)\n"
        );
        let _ = writeln!(t, "| path | 1 conn p50 | p90 | p99 | p99.9 | added p50 / p99 | {rate:.0} req/s p50 | p99 | p99.9 | added p50 / p99 |");
        let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|");
        for (name, v) in &paths {
            let a = sc(v, one);
            let b = sc(v, open);
            let _ = writeln!(
                t,
                "| {name} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} / {} |",
                cell(&a, "p50", 1.0, 0),
                cell(&a, "p90", 1.0, 0),
                cell(&a, "p99", 1.0, 0),
                cell(&a, "p999", 1.0, 0),
                plain(a.member("added_p50"), 1.0, 0, true),
                plain(a.member("added_p99"), 1.0, 0, true),
                cell(&b, "p50", 1.0, 0),
                cell(&b, "p99", 1.0, 0),
                cell(&b, "p999", 1.0, 0),
                plain(b.member("added_p50"), 1.0, 0, true),
                plain(b.member("added_p99"), 1.0, 0, true),
            );
        }
    }

    let _ = writeln!(
        t,
        "\n### SSE, {} chunks, {} ms apart at the mock (µs)\n",
        p.sse_chunks, p.sse_delay_ms
    );
    let _ = writeln!(t, "| path | TTFT p50 | added | TTFT p99 | gap p50 | gap p99 | added gap p99 | fidelity (events+bytes = mock's) |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|");
    for (name, v) in &paths {
        let s = sc(v, "sse");
        let fidelity = match s.member("fidelity").num() {
            Some(f) => format!("{:.1}%", f * 100.0),
            None => "—".into(),
        };
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} | {} | {} | {} | {fidelity} |",
            cell(&s, "ttfe_p50", 1.0, 0),
            plain(s.member("added_ttfe_p50"), 1.0, 0, true),
            cell(&s, "ttfe_p99", 1.0, 0),
            cell(&s, "gap_p50", 1.0, 0),
            cell(&s, "gap_p99", 1.0, 0),
            plain(s.member("added_gap_p99"), 1.0, 0, true),
        );
    }

    let missing: Vec<(&str, &Json)> = PATHS
        .iter()
        .map(|p| (*p, out.at(&format!("paths/{p}"))))
        .filter(|(_, v)| v.member("available") == &Json::Bool(false))
        .collect();
    components_table(&mut t, out.member("components"));

    if !missing.is_empty() {
        let _ = writeln!(t, "\n### Paths that did not run\n");
        let _ = writeln!(t, "| path | reason |");
        let _ = writeln!(t, "|---|---|");
        for (name, v) in missing {
            let reason = v.member("reason").str().unwrap_or("?").replace('|', "/");
            let _ = writeln!(t, "| {name} | {reason} |");
        }
    }

    let _ = writeln!(t, "\n### Versions\n");
    for p in PATHS {
        if let Some(v) = out.at(&format!("paths/{p}/version")).str() {
            let _ = writeln!(t, "- {p}: {v}");
        }
    }

    let _ = writeln!(
        t,
        "\n### Ratios (A/B; throughput > 1: A serves more; added latency < 1: A adds less)\n"
    );
    let _ = writeln!(t, "| A/B | req/s 1 KB | req/s 100 KB | new TLS conn/s | p50 1 conn 1 KB | added p50 1 KB | added p99 1 KB |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    let mut keys = out.member("ratios").keys();
    // Sluice against each reference first, then each peer against Sluice.
    keys.sort_by_key(|k| (!k.starts_with("sluice/"), k.clone()));
    for key in keys {
        let r = out.at("ratios").member(&key);
        let _ = writeln!(
            t,
            "| {key} | {} | {} | {} | {} | {} | {} |",
            plain(r.member("throughput_1k"), 1.0, 2, false),
            plain(r.member("throughput_100k"), 1.0, 2, false),
            plain(r.member("new_tls_conns"), 1.0, 2, false),
            plain(r.member("p50_1k"), 1.0, 2, false),
            plain(r.member("added_p50_1k"), 1.0, 2, false),
            plain(r.member("added_p99_1k"), 1.0, 2, false),
        );
    }
    t
}

/// Ledger, guardrails and connect hook, each `median (min–max)` over repetitions.
fn components_table(t: &mut String, c: &Json) {
    if c == &Json::Null {
        return;
    }
    let _ = writeln!(t, "\n### Components (not pinned: both CPUs)\n");
    if c.member("available") == &Json::Bool(false) {
        let reason = c.member("reason").str().unwrap_or("?");
        let _ = writeln!(t, "Not measured: {reason}");
        return;
    }
    let _ = writeln!(t, "| component | figure |");
    let _ = writeln!(t, "|---|---|");
    let _ = writeln!(
        t,
        "| ledger append, hash chain + HMAC, {} records × 2 threads, sustained | {} records/s |",
        plain(c.at("raw/ledger/records"), 1.0, 0, false),
        cell(c, "ledger_records_per_s", 1.0, 0)
    );
    match c.at("raw/central_ingest/records_per_s") {
        Json::Array(_) => {
            let _ = writeln!(
                t,
                "| central ledger ingest: those records shipped to PostgreSQL on loopback, 1000 per transaction | {} records/s |",
                cell(c, "central_records_per_s", 1.0, 0)
            );
        }
        _ => {
            let why = c
                .at("raw/central_ingest/reason")
                .str()
                .unwrap_or("not measured");
            let _ = writeln!(t, "| central ledger ingest | — ({why}) |");
        }
    }
    for (key, what) in [
        ("paced_10_per_s", "at 10 records/s"),
        ("paced_10_per_s_fsync_1s", "at 10 records/s, `fsync: 1s`"),
        ("saturated", "saturated (2 threads)"),
    ] {
        let d = c.at(&format!("raw/ledger_disk/{key}"));
        let target = c.at(&format!("raw/ledger_disk/targets/{key}"));
        if d.member("write_bytes_per_record") == &Json::Null {
            let why = d.member("reason").str().unwrap_or("not measured");
            let _ = writeln!(
                t,
                "| ledger disk writes per record {what} | not measured: {} |",
                why.replace('|', "/")
            );
            continue;
        }
        let _ = writeln!(
            t,
            "| ledger disk writes per record {what}, {} records (target ≤ {} B; with the clean close; SQLite WAL left after it: {} B) | {} B ({} B) |",
            plain(d.member("records"), 1.0, 0, false),
            plain(target, 1.0, 0, false),
            plain(d.member("sqlite_wal_bytes_after_close"), 1.0, 0, false),
            plain(d.member("write_bytes_per_record_before_close"), 1.0, 0, false),
            plain(d.member("write_bytes_per_record"), 1.0, 0, false),
        );
    }
    let queries = c.member("ledger_query");
    if queries.keys().is_empty() {
        let reason = c
            .at("raw/ledger_query/reason")
            .str()
            .unwrap_or("not measured");
        let _ = writeln!(
            t,
            "| ledger query | not measured: {} |",
            reason.replace('|', "/")
        );
    }
    for (name, what) in [
        ("provider_model", "provider + model"),
        ("decision", "decision"),
        ("identity", "identity substring"),
        ("time_window", "time window"),
        ("decision_identity", "decision + identity"),
    ] {
        let q = queries.member(name);
        if q == &Json::Null {
            continue;
        }
        let _ = writeln!(
            t,
            "| `events tail` query on {} records: {what} (newest 100; {} rows) | {} ms |",
            plain(c.at("raw/ledger_query/records"), 1.0, 0, false),
            plain(q.member("rows"), 1.0, 0, false),
            cell(q, "ms", 1.0, 1)
        );
    }
    let _ = writeln!(
        t,
        "| guardrail scan, every detector, typical prompt text | {} MB/s |",
        cell(c, "guardrail_mb_per_s", 1.0, 1)
    );
    let connect = c.member("connect");
    if connect.keys().is_empty() {
        let reason = c.at("raw/connect/reason").str().unwrap_or("not measured");
        let _ = writeln!(t, "\nConnect hook: not measured: {reason}");
        return;
    }
    let _ = writeln!(
        t,
        "\nConnect latency on loopback, {} connects per mode and repetition (µs; added = over `none`, medians):\n",
        plain(c.at("raw/connect/connects"), 1.0, 0, false)
    );
    let _ = writeln!(t, "| mode | p50 | p99 | mean | added p50 | added mean |");
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    let base = |fig: &str| connect.at(&format!("none/{fig}/median")).num();
    for (mode, what) in [
        ("none", "no hook (floor)"),
        ("hook_miss", "hook attached, destination not a provider"),
        (
            "hook_redirect",
            "hook attached, provider destination redirected",
        ),
        ("iptables_miss", "iptables nat REDIRECT rule, not matching"),
        (
            "iptables_redirect",
            "iptables nat REDIRECT rule, redirected",
        ),
    ] {
        let m = connect.member(mode);
        if m == &Json::Null {
            continue;
        }
        let added = |fig: &str| match (m.at(&format!("{fig}/median")).num(), base(fig)) {
            (Some(a), Some(b)) => format!("{:+.1}", a - b),
            _ => "—".into(),
        };
        let _ = writeln!(
            t,
            "| `{mode}`: {what} | {} | {} | {} | {} | {} |",
            cell(m, "p50_us", 1.0, 1),
            cell(m, "p99_us", 1.0, 1),
            cell(m, "mean_us", 1.0, 1),
            added("p50_us"),
            added("mean_us"),
        );
    }
    if let Some(reason) = c.at("raw/connect/iptables/reason").str() {
        let _ = writeln!(t, "\niptables: not measured: {reason}");
    }
}
