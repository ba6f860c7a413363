//! Exports (syslog, JSON, JSONL) and reports.

use super::*;

/// A strict RFC 5424 parser: `(pri, timestamp, msgid, sd params, msg)`.
type Parsed = (u8, String, String, Vec<(String, String)>, String);

fn parse_rfc5424(line: &str) -> Result<Parsed, String> {
    let b = line.as_bytes();
    if b.iter().any(|&c| c == b'\n' || c == b'\r') {
        return Err("line break inside a record".into());
    }
    let rest = line.strip_prefix('<').ok_or("no PRI")?;
    let close = rest.find('>').ok_or("PRI not closed")?;
    let pri: u8 = rest[..close].parse().map_err(|_| "PRI not a number")?;
    if close == 0 || close > 3 || pri > 191 {
        return Err("bad PRI".into());
    }
    let rest = rest[close + 1..]
        .strip_prefix("1 ")
        .ok_or("VERSION is not 1")?;
    let mut parts = rest.splitn(6, ' ');
    let ts = parts.next().ok_or("no TIMESTAMP")?.to_owned();
    if ts != "-" {
        time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("TIMESTAMP {ts}: {e}"))?;
    }
    let field = |s: Option<&str>, max: usize, what: &str| -> Result<String, String> {
        let s = s.ok_or(format!("no {what}"))?;
        if s.is_empty() || s.len() > max || !s.bytes().all(|c| (33..=126).contains(&c)) {
            return Err(format!("bad {what}: {s:?}"));
        }
        Ok(s.to_owned())
    };
    field(parts.next(), 255, "HOSTNAME")?;
    field(parts.next(), 48, "APP-NAME")?;
    field(parts.next(), 128, "PROCID")?;
    let msgid = field(parts.next(), 32, "MSGID")?;
    let sd = parts.next().ok_or("no STRUCTURED-DATA")?;
    // SD-ELEMENT: "[" SD-ID *(SP PARAM-NAME "=" %d34 PARAM-VALUE %d34) "]"
    let mut chars = sd.char_indices().peekable();
    let mut params = Vec::new();
    if chars.next().map(|c| c.1) != Some('[') {
        return Err("STRUCTURED-DATA does not start with [".into());
    }
    let name_char = |c: char| c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"');
    let mut id = String::new();
    while let Some(&(_, c)) = chars.peek() {
        if !name_char(c) {
            break;
        }
        id.push(c);
        chars.next();
    }
    if id != "sluice@32473" {
        return Err(format!("SD-ID {id}"));
    }
    let end;
    loop {
        match chars.next() {
            Some((i, ']')) => {
                end = i + 1;
                break;
            }
            Some((_, ' ')) => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((_, c)) if name_char(c) => name.push(c),
                        other => return Err(format!("bad PARAM-NAME char {other:?}")),
                    }
                }
                if name.is_empty() || name.len() > 32 {
                    return Err(format!("PARAM-NAME {name:?}"));
                }
                if chars.next().map(|c| c.1) != Some('"') {
                    return Err("PARAM-VALUE not quoted".into());
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, c @ ('"' | '\\' | ']'))) => value.push(c),
                            Some((_, c)) => {
                                value.push('\\');
                                value.push(c);
                            }
                            None => return Err("dangling backslash".into()),
                        },
                        Some((_, '"')) => break,
                        Some((_, ']')) => return Err("unescaped ] in PARAM-VALUE".into()),
                        Some((_, c)) => value.push(c),
                        None => return Err("PARAM-VALUE not closed".into()),
                    }
                }
                params.push((name, value));
            }
            other => return Err(format!("unexpected {other:?} in SD-ELEMENT")),
        }
    }
    let msg = sd[end..]
        .strip_prefix(' ')
        .ok_or("no SP before MSG")?
        .to_owned();
    Ok((pri, ts, msgid, params, msg))
}

#[test]
fn syslog_escapes_and_every_line_parses() {
    let t = TempDir::new("syslog");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    let nasty = "a]b\"c\\d\ne\rf";
    l.append(&with(interaction(1), |x| {
        x.decision = "block";
        x.reason_codes = vec![nasty.into()];
        x.identity.process = Some(nasty.into());
        x.request.messages[1].content = nasty.into();
    }))
    .unwrap();
    l.append(&interaction(2)).unwrap();
    l.append(&Record::Connection(Box::new(ConnRecord {
        id: crate::record::new_id(),
        ts: rfc3339(SystemTime::now()),
        kind: "connection",
        outcome: Outcome::Refused,
        reason: "loop".into(),
        sni: Some("x]y".into()),
        identity: Default::default(),
        upstream: Upstream::default(),
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0.5,
        error: None,
    })))
    .unwrap();
    let mut out = Vec::new();
    let n = export_with_audit(
        &l,
        Initiator {
            id: "alice".into(),
            role: "auditor".into(),
            ip: Some("10.1.1.1".into()),
        },
        ExportFormat::Syslog,
        None,
        None,
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 3);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    let parsed: Vec<Parsed> = lines
        .iter()
        .map(|l| parse_rfc5424(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(parsed[0].0, 16 * 8 + 4, "a block is a warning");
    assert_eq!(parsed[1].0, 16 * 8 + 6, "an allowed success is info");
    assert_eq!(parsed[2].0, 16 * 8 + 4, "a refused connection is a warning");
    assert_eq!(parsed[0].2, "interaction");
    let param = |p: &Parsed, k: &str| p.3.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    // `]`, `"` and `\` round-trip; newlines are written as `\n` / `\r`.
    assert_eq!(
        param(&parsed[0], "identity.process").unwrap(),
        "a]b\"c\\d\\ne\\rf"
    );
    assert_eq!(param(&parsed[2], "sni").unwrap(), "x]y");
    assert_eq!(param(&parsed[0], "seq").unwrap(), "1");
    let msg: Value = serde_json::from_str(&parsed[0].4).unwrap();
    assert_eq!(msg["request"]["messages"][1]["content"], nasty);
    // The export itself is on record.
    l.flush();
    let admin = admins(&dir);
    assert_eq!(admin[0]["action"], "export");
    assert_eq!(admin[0]["initiator"]["id"], "alice");
    assert_eq!(admin[0]["details"]["records"], 3);
    l.close().unwrap();
}

#[test]
fn json_and_jsonl_exports_hold_every_record_in_the_window() {
    let t = TempDir::new("export");
    let dir = t.ledger();
    fill(&dir, 4);
    let mut out = Vec::new();
    assert_eq!(
        export(&dir, ExportFormat::Json, None, None, &mut out).unwrap(),
        4
    );
    let arr: Vec<Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(arr.len(), 4);
    assert_eq!(arr[0]["seq"], 1);
    let mut out = Vec::new();
    let future = SystemTime::now() + Duration::from_secs(60);
    assert_eq!(
        export(&dir, ExportFormat::Jsonl, Some(future), None, &mut out).unwrap(),
        0
    );
    let mut out = Vec::new();
    export(&dir, ExportFormat::Jsonl, None, Some(future), &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 4);
}

// === reports ===

#[test]
fn reports_group_and_render() {
    let t = TempDir::new("report");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    for i in 0..6u64 {
        l.append(&with(interaction(i), |x| {
            x.identity.process = Some(if i < 4 { "python3" } else { "curl" }.into());
            // Every request from its own port and process: the reports must not split
            // on them.
            x.identity.client_addr = Some(format!("10.0.0.7:{}", 40000 + i));
            x.identity.pid = Some(1000 + i as u32);
            if i == 5 {
                x.decision = "redact";
                x.reason_codes = vec!["pii.email".into()];
            }
        }))
        .unwrap();
    }
    l.append(&Record::Admin(Box::new(crate::record::Admin::new(
        AdminAction::Reload,
        AdminOutcome::Success,
        Initiator {
            id: "ops".into(),
            role: "admin".into(),
            ip: None,
        },
        Target {
            kind: "policy".into(),
            id: "default".into(),
        },
        serde_json::json!({"version": 2}),
    ))))
    .unwrap();
    l.close().unwrap();
    let access = report(&dir, ReportKind::Access, None, None, &Default::default()).unwrap();
    let rows = access["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["requests"], 4);
    assert_eq!(rows[0]["input_tokens"], 4 * 58);
    assert!(rows[0]["principal"].as_str().unwrap().contains("python3"));
    assert_eq!(access["totals"]["requests"], 6);
    let usage = report(&dir, ReportKind::Usage, None, None, &Default::default()).unwrap();
    assert_eq!(usage["rows"].as_array().unwrap().len(), 2, "{usage}");
    assert_eq!(usage["rows"][1]["requests"], 2);
    assert!(usage["rows"][0]["first_seen"].is_string());
    let by_model = crate::ledger::ReportOptions {
        by: vec![crate::ledger::By::Model],
        top: Some(1),
        who: None,
    };
    let models = report(&dir, ReportKind::Usage, None, None, &by_model).unwrap();
    assert_eq!(models["rows"][0]["model"], "gpt-4o-mini");
    assert_eq!(models["totals"]["requests"], 6);
    let security = report(&dir, ReportKind::Security, None, None, &Default::default()).unwrap();
    assert_eq!(security["rows"].as_array().unwrap().len(), 1);
    assert_eq!(security["rows"][0]["reason"], "pii.email");
    let change = report(&dir, ReportKind::Change, None, None, &Default::default()).unwrap();
    assert_eq!(change["rows"][0]["action"], "reload");
    let text = render_report_text(&access);
    assert!(text.starts_with("access report"), "{text}");
    assert!(
        text.contains("PRINCIPAL")
            && text.contains("gpt-4o-mini")
            && text.contains("total: 6 requests"),
        "{text}"
    );
    assert!(render_report_text(&change).contains("policy:default"));
}

#[test]
fn an_exported_record_with_its_proof_checks_offline_and_an_edit_does_not() {
    let t = TempDir::new("proofs");
    let dir = t.ledger();
    fill(&dir, 25);
    let mut out = Vec::new();
    assert_eq!(
        export_with_proofs(&dir, ExportFormat::Jsonl, None, None, &mut out).unwrap(),
        25
    );
    let pem = std::fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap();
    let node = checkpoint_verifier(&cfg(&dir), Some((&pem, dir.as_path()))).unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for l in &lines {
        let c = check_exported(l, &node, &[], 0).unwrap();
        assert_eq!(c.tree_size, 25, "proved under the newest checkpoint");
    }
    let mut edited = lines[6].clone();
    edited["model"] = Value::String("evil-model".into());
    let e = check_exported(&edited, &node, &[], 0).unwrap_err();
    assert!(e.contains("differ from the hashed metadata"), "{e}");
    // The same edit carried into the proof's metadata: no longer the hashed record.
    let mut forged = lines[6].clone();
    let meta = forged["sluice_proof"]["meta"].as_str().unwrap().to_owned();
    let model = forged["model"].as_str().unwrap().to_owned();
    forged["sluice_proof"]["meta"] =
        Value::String(meta.replace(&format!("\"{model}\""), "\"evil-model\""));
    forged["model"] = Value::String("evil-model".into());
    let e = check_exported(&forged, &node, &[], 0).unwrap_err();
    assert!(e.contains("does not hash"), "{e}");
    // The proof held against another (older) checkpoint.
    let older: String = rw(&dir)
        .query_row("SELECT note FROM checkpoints WHERE seq = 10", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut other = lines[3].clone();
    other["sluice_proof"]["checkpoint"] = Value::String(older);
    let e = check_exported(&other, &node, &[], 0).unwrap_err();
    assert!(e.contains("not leaf 3 of the checkpoint's size 10"), "{e}");
    other["sluice_proof"]["tree_size"] = Value::from(10);
    let e = check_exported(&other, &node, &[], 0).unwrap_err();
    assert!(e.contains("does not lead to the checkpoint's root"), "{e}");
    // Witnesses asked for but none cosigned.
    let w = crate::tlog::note::NoteVerifier {
        name: "w".into(),
        key: ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key(),
    };
    let e = check_exported(&lines[0], &node, &[w], 1).unwrap_err();
    assert!(
        e.contains("cosigned by 0 of the witnesses given, 1 required"),
        "{e}"
    );
    // Syslog has no room for proofs.
    let mut sink = Vec::new();
    assert!(export_with_proofs(&dir, ExportFormat::Syslog, None, None, &mut sink).is_err());
}
