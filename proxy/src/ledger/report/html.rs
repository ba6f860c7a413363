//! A report as one self-contained HTML page (inline CSS and SVG, nothing fetched): what
//! an auditor receives, and what `--format pdf` prints with headless Chromium. Title,
//! period, the integrity verification that was run, totals, a chart of interactions per
//! day by decision, and the report's table.

use std::fmt::Write as _;

use serde_json::Value;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.6}"),
            _ => n.to_string(),
        },
        v => v.to_string(),
    }
}

const COLORS: &[(&str, &str)] = &[
    ("allow", "#2e7d32"),
    ("redact", "#f9a825"),
    ("block", "#c62828"),
    ("shadow", "#6a1b9a"),
];

/// Stacked bars: interactions per day by decision.
fn chart(series: &serde_json::Map<String, Value>) -> String {
    let days: Vec<(&String, &Value)> = series.iter().collect();
    if days.is_empty() {
        return "<p class=\"muted\">No interactions in the period.</p>".into();
    }
    let total = |d: &Value| {
        d.as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>())
    };
    let max = days.iter().map(|(_, d)| total(d)).max().unwrap_or(1).max(1) as f64;
    let (w, h, pad) = (720.0, 220.0, 30.0);
    let bar = ((w - 2.0 * pad) / days.len() as f64).min(60.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"Interactions per day by decision\">",
        h + 40.0
    );
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{h}\" x2=\"{}\" y2=\"{h}\" stroke=\"#999\"/>",
        w - pad
    );
    for (i, (day, d)) in days.iter().enumerate() {
        let x = pad + i as f64 * bar + 4.0;
        let mut y = h;
        let m = d.as_object().cloned().unwrap_or_default();
        for (decision, n) in &m {
            let n = n.as_u64().unwrap_or(0) as f64;
            let height = (h - pad) * n / max;
            y -= height;
            let color = COLORS
                .iter()
                .find(|(k, _)| k == decision)
                .map_or("#546e7a", |(_, c)| c);
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{color}\"><title>{} {}: {n}</title></rect>",
                bar - 8.0,
                esc(day),
                esc(decision)
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x + (bar - 8.0) / 2.0,
            h + 14.0,
            esc(day.get(5..).unwrap_or(day)),
            x + (bar - 8.0) / 2.0,
            y - 4.0,
            total(d)
        );
    }
    let mut lx = pad;
    for (k, c) in COLORS {
        let _ = write!(
            svg,
            "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{k}</text>",
            h + 22.0,
            lx + 14.0,
            h + 31.0
        );
        lx += 80.0;
    }
    svg.push_str("</svg>");
    svg
}

/// The report as an HTML page.
pub fn render_report_html(report: &Value) -> String {
    let name = report["report"].as_str().unwrap_or("report");
    let title = match report["framework"].as_str() {
        Some(f) => format!("Compliance evidence — {f}"),
        None => format!("Sluice {name} report"),
    };
    let mut h = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>
body{{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:28px;color:#1a1a1a;font-size:12px}}
h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:15px;margin:22px 0 8px;border-bottom:1px solid #ccc}}
table{{border-collapse:collapse;width:100%}} th,td{{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}}
th{{background:#eef2f5}} .muted{{color:#666}} .ok{{color:#2e7d32;font-weight:bold}} .bad{{color:#c62828;font-weight:bold}}
.partial{{color:#b26a00;font-weight:bold}} dl{{display:grid;grid-template-columns:max-content auto;gap:2px 14px}} dt{{color:#555}}
</style></head><body>",
        esc(&title)
    );
    let _ = write!(
        h,
        "<h1>{}</h1><p class=\"muted\">Period: {} — {} · generated {}</p>",
        esc(&title),
        esc(report["since"].as_str().unwrap_or("the beginning")),
        esc(report["until"].as_str().unwrap_or("now")),
        esc(report["generated_at"].as_str().unwrap_or("-"))
    );
    if let Some(i) = report.get("integrity").filter(|i| i.is_object()) {
        let ok = i["verified"] == true;
        let _ = write!(
            h,
            "<h2>Integrity verification</h2><p class=\"{}\">{}</p><dl>",
            if ok { "ok" } else { "bad" },
            if ok {
                "The ledger verified: every record's hash chain, HMAC and signed checkpoint checked when this report was made."
            } else {
                "The ledger did NOT verify: see the errors below."
            }
        );
        for (k, label) in [
            ("records_checked", "Records checked"),
            ("checkpoints_checked", "Signed checkpoints checked"),
            ("tree_heads_checked", "Merkle tree heads recomputed"),
            ("hmac_checked", "HMACs checked"),
            ("signatures_checked", "Checkpoint signatures checked"),
            ("head_seq", "Newest record (seq)"),
            ("nodes", "Nodes (central ledger)"),
        ] {
            if let Some(v) = i.get(k) {
                let _ = write!(h, "<dt>{label}</dt><dd>{}</dd>", esc(&text(v)));
            }
        }
        h.push_str("</dl>");
        if let Some(errs) = i["errors"].as_array().filter(|e| !e.is_empty()) {
            h.push_str("<ul>");
            for e in errs {
                let _ = write!(h, "<li class=\"bad\">{}</li>", esc(&text(e)));
            }
            h.push_str("</ul>");
        }
        if let Some(ws) = report["witnesses"].as_array() {
            if ws.is_empty() {
                h.push_str("<p class=\"partial\">No witness is configured: the node's own root could rewrite the ledger unseen.</p>");
            }
            for w in ws {
                let _ = write!(
                    h,
                    "<p>Witness <b>{}</b>: cosigned up to {} of {} records ({}).</p>",
                    esc(&text(&w["witness"])),
                    text(&w["cosigned_size"]),
                    text(&w["newest_checkpoint"]),
                    if w["up_to_date"] == true {
                        "up to date"
                    } else {
                        "behind"
                    }
                );
            }
        }
        if let Some(p) = report["policies_in_force"].as_array() {
            let _ = write!(
                h,
                "<p>Policies in force: {}. Ledger retention: {} days.</p>",
                if p.is_empty() {
                    "none".to_owned()
                } else {
                    esc(&p.iter().map(text).collect::<Vec<_>>().join(", "))
                },
                text(&report["retention_days"])
            );
        }
    }
    if let Some(t) = report["totals"].as_object() {
        h.push_str("<h2>Totals</h2><dl>");
        for (k, v) in t {
            let _ = write!(
                h,
                "<dt>{}</dt><dd>{}</dd>",
                esc(&k.replace('_', " ")),
                esc(&text(v))
            );
        }
        h.push_str("</dl>");
    }
    if let Some(s) = report["series"].as_object() {
        h.push_str("<h2>Interactions per day, by decision</h2>");
        h.push_str(&chart(s));
    }
    let cols: Vec<&str> = report["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    let _ = write!(
        h,
        "<h2>{} ({} rows)</h2><table><tr>",
        esc(&title),
        rows.len()
    );
    for c in &cols {
        let _ = write!(h, "<th>{}</th>", esc(&c.replace('_', " ")));
    }
    h.push_str("</tr>");
    for r in &rows {
        h.push_str("<tr>");
        for c in &cols {
            let v = text(&r[*c]);
            let class = match (*c, v.as_str()) {
                ("status", "evidenced") => " class=\"ok\"",
                ("status", "failed") => " class=\"bad\"",
                ("status", "partial") => " class=\"partial\"",
                _ => "",
            };
            let _ = write!(h, "<td{class}>{}</td>", esc(&v));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></body></html>\n");
    h
}
