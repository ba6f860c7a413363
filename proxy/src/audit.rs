//! The audit commands behind `sluice events tail`, `sluice audit verify`,
//! `sluice audit export` and `sluice report`: reading, checking and exporting the ledger
//! a node writes. They open the ledger read-only, so they work while `sluice run` is up.
//!
//! Exports are themselves audited: the command appends an admin record to the ledger
//! directly when no proxy holds it, or leaves it in the ledger inbox for the running
//! proxy to append ([`crate::inbox`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::config::Config;
use crate::ledger::{self, ExportFormat, Filter, LedgerError, ReportKind, VerifyOptions};
use crate::record::{Admin, AdminAction, AdminOutcome, Initiator, Target};

/// Parse a time bound: RFC 3339 (`2026-11-23T10:00:00Z`), a date (`2026-11-23`), or a
/// duration ago (`15m`, `2h`, `7d`).
///
/// # Errors
/// A message showing the accepted forms.
pub fn parse_time(s: &str) -> anyhow::Result<SystemTime> {
    let s = s.trim();
    if let Some((n, unit)) = s
        .char_indices()
        .last()
        .filter(|(_, c)| c.is_ascii_alphabetic())
        .map(|(i, c)| (&s[..i], c))
    {
        if let Ok(n) = n.parse::<u64>() {
            let secs = match unit {
                's' => n,
                'm' => n * 60,
                'h' => n * 3600,
                'd' => n * 86_400,
                _ => bail!("unknown unit in {s:?}; use s, m, h or d (e.g. 2h)"),
            };
            return Ok(SystemTime::now() - Duration::from_secs(secs));
        }
    }
    let rfc = time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &rfc) {
        return Ok(t.into());
    }
    if let Ok(t) = time::OffsetDateTime::parse(&format!("{s}T00:00:00Z"), &rfc) {
        return Ok(t.into());
    }
    bail!("cannot read the time {s:?}; use RFC 3339 (2026-11-23T10:00:00Z), a date (2026-11-23) or an age (15m, 2h, 7d)")
}

/// `sluice events tail`.
///
/// # Errors
/// The ledger cannot be read.
pub fn tail(config: &Config, filter: &Filter, json: bool, follow: bool) -> anyhow::Result<()> {
    let dir = config.ledger.dir.clone();
    let rows = read(&dir, || ledger::query(&dir, filter))?;
    let mut out = std::io::stdout().lock();
    let mut last = 0;
    // Oldest first, like `tail`.
    for r in rows.iter().rev() {
        last = last.max(r["seq"].as_u64().unwrap_or(0));
        print_row(&mut out, r, json)?;
    }
    if !json && rows.is_empty() {
        writeln!(out, "no records in {} match", dir.display())?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        for r in read(&dir, || ledger::tail_after(&dir, last))? {
            last = last.max(r["seq"].as_u64().unwrap_or(0));
            if matches(filter, &r) {
                print_row(&mut out, &r, json)?;
            }
        }
        out.flush()?;
    }
}

/// `events tail --central`: the fleet's records from the central ledger (PostgreSQL), with
/// the same filters and output as on a node, each also naming its `node_id`.
///
/// # Errors
/// No `ledger.central` in the config, or PostgreSQL cannot be read.
pub fn tail_central(config: &Config, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let mut client = central_client(config)?;
    let rows = ledger::central::query(&mut client, filter)?;
    let mut out = std::io::stdout().lock();
    for r in &rows {
        print_row(&mut out, r, json)?;
    }
    if !json && rows.is_empty() {
        writeln!(out, "no records in the central ledger match")?;
    }
    Ok(())
}

fn central_client(config: &Config) -> anyhow::Result<postgres::Client> {
    let c = config.ledger.central.as_ref().context(
        "no central ledger configured: set ledger.central.url to the fleet's PostgreSQL",
    )?;
    let mut client = ledger::central::connect(&c.url, Duration::from_secs(10))?;
    // A store no node has shipped to yet gets its schema here too (same migrations, same
    // lock), so reading it says "no records" rather than "no table".
    ledger::central::migrate(&mut client)?;
    Ok(client)
}

/// `audit prune-central`: central retention (see `ledger::central::prune`); prints what
/// was pruned per node.
///
/// # Errors
/// No `ledger.central`, or PostgreSQL refused.
pub fn prune_central(config: &Config, before: SystemTime) -> anyhow::Result<()> {
    let mut client = central_client(config)?;
    let pruned = ledger::central::prune(&mut client, before)?;
    let mut out = std::io::stdout().lock();
    for (node, n) in &pruned.nodes {
        writeln!(out, "node {node}: {n} records pruned")?;
    }
    if !pruned.partitions.is_empty() {
        writeln!(
            out,
            "{} day partitions dropped: {}",
            pruned.partitions.len(),
            pruned.partitions.join(", ")
        )?;
    }
    if pruned.nodes.is_empty() {
        writeln!(out, "nothing to prune")?;
    }
    Ok(())
}

/// `audit verify --central`: every node's chain (or `node`'s) checked from PostgreSQL
/// alone; HMACs too where this machine holds the key (`ledger.hmac_key_file`, the shared
/// key of the chart's `ledger.keysSecret`). Prints one verdict per node, each break by
/// node and seq; true when every node verifies.
///
/// # Errors
/// No `ledger.central`, or PostgreSQL cannot be read.
pub fn verify_central(config: &Config, node: Option<&str>) -> anyhow::Result<bool> {
    let mut client = central_client(config)?;
    let keys =
        ledger::load_hmac_keys(&config.ledger.dir, config.ledger.hmac_source()).unwrap_or_default();
    let reports = ledger::central::verify(&mut client, &keys, node)?;
    let mut out = std::io::stdout().lock();
    if reports.is_empty() {
        writeln!(
            out,
            "FAIL: the central ledger holds no records{}",
            node.map(|n| format!(" of node {n}")).unwrap_or_default()
        )?;
        return Ok(false);
    }
    let mut ok = true;
    for r in &reports {
        let hmac = if r.hmac_checked == r.records {
            "HMACs ok".to_string()
        } else if r.hmac_checked == 0 {
            "HMACs not checked (no key here)".to_string()
        } else {
            format!("{} of {} HMACs checked", r.hmac_checked, r.records)
        };
        let from = r
            .anchor
            .map(|a| format!(" (after the retention anchor at seq {a})"))
            .unwrap_or_default();
        if r.errors.is_empty() {
            writeln!(
                out,
                "ok: node {}: {} records, seq {}..{}{from}, chain intact, {hmac}",
                r.node, r.records, r.first_seq, r.last_seq
            )?;
        } else {
            ok = false;
            for e in &r.errors {
                writeln!(out, "FAIL: node {}: {e}", r.node)?;
            }
        }
    }
    Ok(ok)
}

fn read(
    dir: &Path,
    f: impl FnOnce() -> Result<Vec<Value>, LedgerError>,
) -> anyhow::Result<Vec<Value>> {
    f().with_context(|| {
        format!(
            "reading the ledger in {} (run `sluice demo` or `sluice run` first, or pass --config)",
            dir.display()
        )
    })
}

fn matches(f: &Filter, r: &Value) -> bool {
    let eq =
        |want: &Option<String>, v: &Value| want.as_deref().is_none_or(|w| v.as_str() == Some(w));
    eq(&f.provider, &r["provider"])
        && eq(&f.model, &r["model"])
        && eq(&f.decision, &r["decision"])
        && eq(&f.kind, &r["kind"])
        && f.identity
            .as_deref()
            .is_none_or(|i| r["identity"].to_string().contains(i))
}

fn print_row(out: &mut impl Write, r: &Value, json: bool) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{r}");
    }
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let ts = s(&r["ts"]);
    match r["kind"].as_str() {
        Some("interaction") => {
            let who = r["identity"]["user"]
                .as_str()
                .or(r["identity"]["process"].as_str())
                .or(r["identity"]["client_addr"].as_str())
                .unwrap_or("-");
            writeln!(
                out,
                "{ts}  {:<10} {:<22} {:<12} {:>4} {:<14} in={:<6} out={:<6} cost={:<10} {}",
                s(&r["provider"]),
                s(&r["model"]),
                s(&r["decision"]),
                r["status"].as_u64().unwrap_or(0),
                s(&r["outcome"]),
                r["usage"]["input_tokens"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string()),
                r["usage"]["output_tokens"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string()),
                r["cost_usd"]
                    .as_f64()
                    .map_or("-".into(), |c| format!("{c:.6}")),
                who
            )
        }
        Some("connection") => writeln!(
            out,
            "{ts}  connection {:<12} {:<24} sni={} up={} down={}",
            s(&r["outcome"]),
            s(&r["reason"]),
            s(&r["sni"]),
            r["bytes_up"],
            r["bytes_down"]
        ),
        _ => writeln!(
            out,
            "{ts}  admin      {:<8} {:<8} {}:{} by {}",
            s(&r["action"]),
            s(&r["outcome"]),
            s(&r["target"]["type"]),
            s(&r["target"]["id"]),
            s(&r["initiator"]["id"])
        ),
    }
}

/// What an auditor hands `sluice audit verify`.
#[derive(Debug, Default)]
pub struct VerifyArgs {
    /// Trusted copy of the checkpoint public key (SPKI PEM).
    pub public_key: Option<PathBuf>,
    /// Accept checks that could not run (still listed as not checked).
    pub allow_partial: bool,
    /// Witnesses to check against: `(url, cosigner vkey)`. Empty: the node's configured
    /// `ledger.witnesses` (not independent of the node; listed as such).
    pub witnesses: Vec<(String, String)>,
    /// How many witnesses must have answered with cosigned heads (default: all).
    pub quorum: Option<usize>,
}

/// A witness's answer, as `verify` reports it.
struct WitnessView {
    name: String,
    url: String,
    heads: Vec<ledger::WitnessedHead>,
    /// Refusals it kept for this ledger: `(received, reason)`.
    evidence: Vec<(String, String)>,
    /// Lines of its history that do not carry both the node's signature and its own
    /// cosignature (its store was edited, or another log's lines).
    unattributable: usize,
    error: Option<String>,
}

impl WitnessView {
    /// Count a stored head: attested for this ledger, or not.
    fn take(&mut self, head: Option<ledger::WitnessedHead>) {
        match head {
            Some(h) => self.heads.push(h),
            None => self.unattributable += 1,
        }
    }
}

/// The head a stored checkpoint `note` attests for the ledger `node` names: signed by
/// the node's key under its origin, with a time from `at` (a valid cosignature's, or the
/// store's); `None` when it attests nothing for this ledger.
fn attested_head(
    note: &str,
    node: &crate::tlog::note::NoteVerifier,
    witness: &str,
    at: impl FnOnce(&crate::tlog::note::Note) -> Option<u64>,
) -> Option<ledger::WitnessedHead> {
    use crate::tlog::note::{CheckpointText, Note};
    let n = Note::parse(note).ok()?;
    let at = at(&n)?;
    n.signed_by(node).then_some(())?;
    let cp = CheckpointText::parse(&n.text).ok()?;
    (cp.origin == node.name).then_some(ledger::WitnessedHead {
        witness: witness.to_owned(),
        size: cp.size,
        root: cp.root,
        cosigned_at: at,
    })
}

/// Fetch what `url` holds for the ledger `node` names, keeping only heads signed by the
/// node's trusted key and cosigned by `witness`.
fn fetch_witness(
    url: &str,
    witness: &crate::tlog::note::NoteVerifier,
    node: &crate::tlog::note::NoteVerifier,
) -> WitnessView {
    use crate::http::client;
    use crate::witness::{log_id, EvidenceEntry, HistoryEntry};
    let mut view = WitnessView {
        name: witness.name.clone(),
        url: url.to_owned(),
        heads: Vec::new(),
        evidence: Vec::new(),
        unattributable: 0,
        error: None,
    };
    let timeout = std::time::Duration::from_secs(10);
    let get = |file: &str| -> Result<String, String> {
        let a = client::exchange(
            url,
            "GET",
            &format!("/logs/{}/{file}", log_id(&node.name)),
            "",
            timeout,
        )
        .map_err(|e| e.to_string())?;
        if a.status != 200 {
            return Err(format!("{file}: HTTP {}: {}", a.status, a.body.trim()));
        }
        Ok(a.body)
    };
    match get("history") {
        Ok(text) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let head = serde_json::from_str::<HistoryEntry>(line)
                    .ok()
                    .and_then(|e| {
                        attested_head(&e.checkpoint, node, &witness.name, |n| {
                            n.cosigned_by(witness)
                        })
                    });
                view.take(head);
            }
        }
        Err(e) => view.error = Some(e),
    }
    match get("evidence") {
        Ok(text) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<EvidenceEntry>(line) {
                    Ok(e) => view.evidence.push((e.received, e.reason)),
                    Err(_) => view.evidence.push((String::new(), line.to_owned())),
                }
            }
        }
        Err(e) => {
            view.error.get_or_insert(e);
        }
    }
    view
}

/// What an Object Lock bucket holds for the ledger `node` names: every version of every
/// checkpoint object, kept when signed by the node's trusted key.
fn fetch_s3(
    cfg: &crate::witness::s3::S3Config,
    node: &crate::tlog::note::NoteVerifier,
) -> WitnessView {
    let mut view = WitnessView {
        name: cfg.name(),
        url: cfg.endpoint.clone(),
        heads: Vec::new(),
        evidence: Vec::new(),
        unattributable: 0,
        error: None,
    };
    match crate::witness::s3::list_checkpoints(cfg, &node.name) {
        Ok(stored) => {
            for o in stored {
                // The store's own time: the bucket checks nothing, it only keeps.
                let at = time::OffsetDateTime::parse(
                    &o.last_modified,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_or(0, |t| t.unix_timestamp().max(0) as u64);
                view.take(attested_head(&o.note, node, &cfg.name(), |_| Some(at)));
            }
        }
        Err(e) => view.error = Some(e),
    }
    view
}

/// `sluice audit verify`; returns whether the ledger verified. The output lists each
/// check that ran (with its key or witness) and each that could not; a check the ledger
/// calls for (records carry HMACs, checkpoints exist, witnesses were named) that could
/// not run fails the verification unless `allow_partial`.
///
/// # Errors
/// The ledger, its keys, the public key or a witness key cannot be read.
pub fn verify(config: &Config, args: &VerifyArgs) -> anyhow::Result<bool> {
    let dir = config.ledger.dir.clone();
    let public_key = args.public_key.as_deref();
    let pem = public_key
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let progress = |done: u64, total: u64| {
        if total >= 100_000 && done % 100_000 == 0 {
            eprintln!("verified {done} of {total} records");
        }
    };
    // The node's own key configuration (ledger.hmac_key_file, the environment, the
    // directory's archived keys), not only what lies in the directory.
    let hmac_keys = ledger::load_hmac_keys(&dir, config.ledger.hmac_source())
        .with_context(|| format!("loading the HMAC keys of {}", dir.display()))?;

    // Witnesses: the auditor's, else the configuration's (`--config` may be the auditor's
    // own, naming the node's ledger directory; S3 archives come from there).
    let from_config = args.witnesses.is_empty();
    let configured: Vec<ledger::WitnessKind> = config
        .ledger
        .witnesses
        .iter()
        .map(|w| {
            w.kind()
                .map_err(|e| anyhow::anyhow!("ledger.witnesses: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut named: Vec<ledger::WitnessKind> = if from_config {
        configured.clone()
    } else {
        args.witnesses
            .iter()
            .map(|(url, vkey)| {
                let key = crate::tlog::note::NoteVerifier::parse_vkey(vkey)
                    .with_context(|| format!("witness key for {url}"))?;
                Ok(ledger::WitnessKind::Tlog {
                    url: url.clone(),
                    key,
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if !from_config {
        // Object Lock archives have no key to pass on the command line: always read.
        named.extend(
            configured
                .into_iter()
                .filter(|w| matches!(w, ledger::WitnessKind::S3(_))),
        );
    }
    let mut views = Vec::new();
    if !named.is_empty() {
        let node = ledger::checkpoint_verifier(&config.ledger, pem.as_deref().zip(public_key))
            .context("the checkpoint key witnessed heads are checked with")?;
        for w in &named {
            views.push(match w {
                ledger::WitnessKind::Tlog { url, key } => fetch_witness(url, key, &node),
                ledger::WitnessKind::S3(s3) => fetch_s3(s3, &node),
            });
        }
    }
    let report = ledger::verify(
        &dir,
        &VerifyOptions {
            public_key_pem: pem,
            hmac_keys,
            progress: Some(&progress),
            cadence: Some((
                config.ledger.checkpoint_every,
                config.ledger.checkpoint_interval,
            )),
            origin: config.ledger.origin.clone(),
            now: None,
            witnessed: views.iter().flat_map(|v| v.heads.clone()).collect(),
        },
    )
    .with_context(|| format!("verifying the ledger in {}", dir.display()))?;
    let mut lines = verify_checklist(
        &report,
        public_key,
        (
            config.ledger.checkpoint_every,
            config.ledger.checkpoint_interval,
        ),
    );
    let mut refusals = Vec::new();
    let answered = witness_lines(&report, &views, from_config, &mut lines, &mut refusals);
    if !views.is_empty() {
        let quorum = args.quorum.unwrap_or(views.len()).min(views.len());
        lines.push((
            answered >= quorum,
            format!(
                "witness quorum: {answered} of {} answered with cosigned heads, {quorum} required",
                views.len()
            ),
        ));
    }
    let partial = lines.iter().any(|(ran, _)| !ran);
    let ok = report.ok && refusals.is_empty();
    match &report.first_error {
        None if !refusals.is_empty() => println!(
            "FAILED: {} — a witness refused checkpoints signed for this ledger",
            refusals[0]
        ),
        None if partial && !args.allow_partial => println!(
            "INCOMPLETE: {} records and {} checkpoints in {}: a check the ledger calls for could not run (--allow-partial accepts that)",
            report.records,
            report.checkpoints,
            dir.display()
        ),
        None => println!(
            "ok: {} records and {} checkpoints in {}",
            report.records,
            report.checkpoints,
            dir.display()
        ),
        Some(e) => {
            println!(
                "FAILED at record seq {}: {} — {}",
                e.seq,
                format!("{:?}", e.kind).to_lowercase(),
                e.detail
            );
            for e in report.errors.iter().skip(1).take(19) {
                println!(
                    "  also at seq {}: {} — {}",
                    e.seq,
                    format!("{:?}", e.kind).to_lowercase(),
                    e.detail
                );
            }
            if report.errors.len() > 1 {
                println!("({} problems in all)", report.errors.len());
            }
        }
    }
    for r in refusals
        .iter()
        .skip(usize::from(report.first_error.is_none()))
    {
        println!("  refused:    {r}");
    }
    for (ran, line) in &lines {
        println!(
            "  {} {line}",
            if *ran { "checked    " } else { "NOT checked" }
        );
    }
    Ok(ok && (args.allow_partial || !partial))
}

/// One checklist line per witness; refusals it kept go to `refusals`. Returns how many
/// witnesses answered with at least one head for this ledger.
fn witness_lines(
    report: &ledger::VerifyReport,
    views: &[WitnessView],
    from_config: bool,
    lines: &mut Vec<(bool, String)>,
    refusals: &mut Vec<String>,
) -> usize {
    let mut answered = 0;
    let source = if from_config {
        " (key from the node's own config, not independent: pass --witness and --witness-key)"
    } else {
        ""
    };
    for v in views {
        for (when, why) in &v.evidence {
            refusals.push(format!("witness {} at {when}: {why}", v.name));
        }
        if let Some(e) = &v.error {
            lines.push((false, format!("witness {} ({}): {e}", v.name, v.url)));
            continue;
        }
        let Some(wc) = report.witnesses.iter().find(|w| w.witness == v.name) else {
            lines.push((
                false,
                format!(
                    "witness {} ({}): holds no head for this ledger{}",
                    v.name,
                    v.url,
                    if v.unattributable > 0 {
                        format!(
                            " ({} lines not signed by the trusted keys)",
                            v.unattributable
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
            continue;
        };
        answered += 1;
        let source = if v.name.starts_with("s3://") {
            " (Object Lock bucket, every version read)"
        } else {
            source
        };
        let (size, at) = wc.newest.unwrap_or((0, 0));
        let pending = report.head_seq.unwrap_or(0).saturating_sub(size);
        lines.push((
            true,
            format!(
                "witness {}{source}: {} witnessed heads match the ledger ({} before the retention anchor), newest size {size} witnessed at {}; {pending} newer records not yet witnessed",
                v.name,
                wc.matched,
                wc.pruned,
                crate::record::rfc3339(
                    std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(at)
                ),
            ),
        ));
    }
    answered
}

/// What `verify` proved, one line a check: `(ran, what)`.
fn verify_checklist(
    r: &ledger::VerifyReport,
    public_key: Option<&Path>,
    cadence: (u64, std::time::Duration),
) -> Vec<(bool, String)> {
    let mut out = vec![(
        true,
        "hash chain: every record's hash and its link to the one before".to_owned(),
    )];
    if r.records > 0 {
        out.push(if r.hmac_checked {
            (true, format!("HMACs, with key ids {}", r.hmac_key_ids.join(", ")))
        } else {
            (
                false,
                "HMACs: no key available (ledger.hmac_key_file, $SLUICE_LEDGER_HMAC_KEY or the directory's hmac*.key)".to_owned(),
            )
        });
    }
    let origin = r
        .origin
        .as_deref()
        .map(|o| format!(" (origin {o})"))
        .unwrap_or_default();
    if r.checkpoints > 0 || r.signatures_checked {
        out.push(match (r.signatures_checked, public_key) {
            (true, _) if r.checkpoints == 0 => (
                false,
                "checkpoint signatures: the ledger holds no checkpoint to check (wiped, or new)"
                    .to_owned(),
            ),
            (true, Some(p)) => (
                true,
                format!(
                    "checkpoint signatures, with the public key {}{origin}",
                    p.display()
                ),
            ),
            (true, None) => (
                true,
                format!("checkpoint signatures, with the directory's own checkpoint.pub.pem{origin} (not independent of the ledger: pass --public-key with a trusted copy)"),
            ),
            (false, _) => (
                false,
                "checkpoint signatures: no public key (pass --public-key)".to_owned(),
            ),
        });
    }
    if r.checkpoints > 0 {
        out.push((
            true,
            format!(
                "Merkle tree heads (RFC 6962): {} checkpoints recomputed from the records",
                r.tree_heads_checked
            ),
        ));
    }
    out.push((
        true,
        format!(
            "checkpoint coverage: one at least every {} records, the head covered within {} s",
            cadence.0,
            cadence.1.as_secs()
        ),
    ));
    out
}

/// `sluice audit export`: to a file, stdout (`-`) or a syslog server (`tcp://host:port`);
/// with `with_proofs`, each record carries its inclusion proof (`sluice_proof`).
///
/// # Errors
/// Bad output target, unreadable ledger, write failures.
pub fn export(
    config: &Config,
    format: ExportFormat,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    out: &str,
    with_proofs: bool,
    central: bool,
) -> anyhow::Result<u64> {
    if with_proofs && format == ExportFormat::Syslog {
        bail!("--with-proofs needs --format json or jsonl: a syslog line has no room for a proof");
    }
    let lc = config.ledger.clone();
    let dir = &lc.dir;
    let mut sink: Box<dyn Write> = if out == "-" {
        Box::new(std::io::stdout().lock())
    } else if let Some(addr) = out.strip_prefix("tcp://") {
        // RFC 6587 non-transparent framing: one record per line.
        Box::new(std::io::BufWriter::new(
            std::net::TcpStream::connect(addr)
                .with_context(|| format!("connecting to the syslog server {addr}"))?,
        ))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(out).with_context(|| format!("creating {out}"))?,
        ))
    };
    if central {
        // Read from PostgreSQL; the node's own ledger is not touched (nor is there one
        // where an auditor runs this).
        let mut client = central_client(config)?;
        let n = ledger::central::export(&mut client, format, since, until, &mut sink)?;
        sink.flush()?;
        eprintln!("exported {n} records of the central ledger to {out}");
        return Ok(n);
    }
    let n = if with_proofs {
        ledger::export_with_proofs(dir, format, since, until, &mut sink)
    } else {
        ledger::export(dir, format, since, until, &mut sink)
    }
    .with_context(|| format!("exporting from {}", dir.display()))?;
    sink.flush()?;
    drop(sink);
    record_export(&lc, format, out, n)?;
    eprintln!("exported {n} records to {out}");
    Ok(n)
}

/// `sluice audit check-record`: check exported records offline against the node's
/// checkpoint key (`public_key`, SPKI PEM; origin `origin` or the key's default) and the
/// witnesses' vkeys, `quorum` of which must have cosigned. Reads a JSON Lines or JSON
/// array export; `seq` picks one record. Returns whether every record checked.
///
/// # Errors
/// Unreadable files or keys.
pub fn check_records(
    file: &Path,
    public_key: &Path,
    origin: Option<&str>,
    witness_keys: &[String],
    quorum: Option<usize>,
    seq: Option<u64>,
) -> anyhow::Result<bool> {
    let pem = std::fs::read_to_string(public_key)
        .with_context(|| format!("reading {}", public_key.display()))?;
    let lc = ledger::LedgerConfig {
        origin: origin.map(str::to_owned),
        ..ledger::LedgerConfig::default()
    };
    let node = ledger::checkpoint_verifier(&lc, Some((&pem, public_key)))?;
    let witnesses = witness_keys
        .iter()
        .map(|v| {
            crate::tlog::note::NoteVerifier::parse_vkey(v)
                .with_context(|| format!("--witness-key {v}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quorum = quorum.unwrap_or(witnesses.len());
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let records: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON array", file.display()))?
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{} line {}: not JSON", file.display(), i + 1))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut all_ok = true;
    let mut checked = 0;
    for (i, r) in records.iter().enumerate() {
        if seq.is_some() && r.get("seq").and_then(Value::as_u64) != seq {
            continue;
        }
        checked += 1;
        match ledger::check_exported(r, &node, &witnesses, quorum) {
            Ok(c) => println!(
                "ok: seq {} is in the tree of size {} signed by {}{}",
                c.seq,
                c.tree_size,
                node.name,
                if c.cosigned_by.is_empty() {
                    " (no witness cosignature checked)".to_owned()
                } else {
                    format!(", cosigned by {}", c.cosigned_by.join(", "))
                }
            ),
            Err(why) => {
                all_ok = false;
                println!(
                    "FAILED: record {} (seq {}): {why}",
                    i + 1,
                    r.get("seq").unwrap_or(&Value::Null)
                );
            }
        }
    }
    if checked == 0 {
        println!("FAILED: no record to check in {}", file.display());
        return Ok(false);
    }
    Ok(all_ok)
}

/// The export is an admin record.
fn record_export(
    lc: &ledger::LedgerConfig,
    format: ExportFormat,
    out: &str,
    n: u64,
) -> anyhow::Result<()> {
    record_admin(
        lc,
        Admin::new(
            AdminAction::Export,
            AdminOutcome::Success,
            local_initiator(),
            Target {
                kind: "ledger".into(),
                id: lc.dir.display().to_string(),
            },
            serde_json::json!({"format": format!("{format:?}").to_lowercase(), "destination": out, "records": n}),
        ),
    )
}

/// The local user running this command, as an admin initiator.
pub fn local_initiator() -> Initiator {
    Initiator {
        id: format!("uid:{}", nix::unistd::getuid()),
        role: "cli".into(),
        ip: None,
    }
}

/// Append an admin record: directly when no proxy holds the ledger, else through the
/// inbox for the running proxy to append. The ledger is opened with the node's own
/// settings (`lc`, from [`Config::ledger`]), so the record is signed with the configured
/// HMAC key (`ledger.hmac_key_file`, the environment), never with a key made up here.
///
/// # Errors
/// The ledger cannot be opened for another reason, or the inbox cannot be written.
pub fn record_admin(lc: &ledger::LedgerConfig, admin: Admin) -> anyhow::Result<()> {
    let dir = &lc.dir;
    match ledger::Ledger::open(lc) {
        Ok(l) => {
            l.append(&crate::record::Record::Admin(Box::new(admin)))?;
            l.close()?;
        }
        Err(LedgerError::Locked { .. }) => {
            crate::inbox::write(dir, &admin)
                .context("leaving the export record in the ledger inbox")?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `sluice ca init`: create the organisation CA and record its creation.
///
/// # Errors
/// The CA exists already or cannot be written, or the admin record cannot be appended.
pub fn ca_init(config: &Config, name: &str) -> anyhow::Result<()> {
    let (cert, key) = (config.ca_cert_path(), config.ca_key_path());
    crate::ca::init(&cert, &key, name)?;
    let admin = Admin::new(
        AdminAction::Create,
        AdminOutcome::Success,
        local_initiator(),
        Target {
            kind: "ca".into(),
            id: cert.display().to_string(),
        },
        serde_json::json!({ "common_name": name }),
    );
    record_admin(&config.ledger, admin)?;
    println!("CA certificate: {}", cert.display());
    println!("CA key (0600):  {}", key.display());
    println!("Distribute the certificate to clients (`sluice ca show`).");
    Ok(())
}

/// `sluice audit rotate-key`: a new HMAC key for new records, the old one kept for
/// verification, and an admin record of both key ids (never the keys).
///
/// # Errors
/// The key is configured elsewhere (file or environment) or cannot be written.
pub fn rotate_key(config: &Config) -> anyhow::Result<()> {
    let lc = config.ledger.clone();
    if let Some(f) = &lc.hmac_key_file {
        anyhow::bail!(
            "the HMAC key is configured as {} (ledger.hmac_key_file): put a new key there, keep the old one as {}/hmac-<id>.key for `sluice audit verify`, and restart",
            f.display(),
            lc.dir.display()
        );
    }
    let running = matches!(ledger::Ledger::open(&lc), Err(LedgerError::Locked { .. }));
    let r = ledger::rotate_hmac_key(&lc.dir)
        .with_context(|| format!("rotating the HMAC key of {}", lc.dir.display()))?;
    let admin = Admin::new(
        AdminAction::Update,
        AdminOutcome::Success,
        local_initiator(),
        Target {
            kind: "hmac_key".into(),
            id: r.new_key_id.clone(),
        },
        serde_json::json!({
            "event": "hmac_key_rotated",
            "old_key_id": r.old_key_id,
            "new_key_id": r.new_key_id,
            "archived_as": r.archived.display().to_string(),
            "effective": if running { "at the next start of the running proxy" } else { "now" },
        }),
    );
    record_admin(&lc, admin)?;
    println!(
        "HMAC key rotated: {} -> {} (old key kept as {}){}",
        r.old_key_id,
        r.new_key_id,
        r.archived.display(),
        if running {
            "; the running proxy signs with the old key until it restarts"
        } else {
            ""
        }
    );
    Ok(())
}

/// How `sluice report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
    /// One self-contained page.
    Html,
    /// The HTML printed by headless Chromium (Debian's `chromium`).
    Pdf,
}

/// One `sluice report` run.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    pub kind: ReportKind,
    /// `--type evidence`: the framework (then `kind` is not used).
    pub evidence: Option<crate::evidence::Framework>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub central: bool,
    pub options: ledger::ReportOptions,
    pub format: ReportFormat,
    /// Where HTML or PDF goes (stdout for HTML without it; PDF needs it).
    pub out: Option<PathBuf>,
}

/// `sluice report`.
///
/// # Errors
/// The ledger (or the central store) cannot be read, or the PDF cannot be made.
pub fn report(config: &Config, req: &ReportRequest) -> anyhow::Result<()> {
    let dir = config.ledger.dir.clone();
    let mut r = if let Some(framework) = req.evidence {
        anyhow::ensure!(
            !req.central,
            "--type evidence reads this node's ledger (its verification is local); run it on each node"
        );
        crate::evidence::evidence(&config.ledger, framework, req.since, req.until)
            .with_context(|| format!("reading the ledger in {}", dir.display()))?
    } else if req.central {
        ledger::central::report(
            &mut central_client(config)?,
            req.kind,
            req.since,
            req.until,
            &req.options,
        )?
    } else {
        ledger::report(&dir, req.kind, req.since, req.until, &req.options)
            .with_context(|| format!("reading the ledger in {}", dir.display()))?
    };
    if matches!(req.format, ReportFormat::Html | ReportFormat::Pdf) && req.evidence.is_none() {
        // What an auditor receives states the verification it ran, and shows the
        // period's interactions per day.
        decorate(config, req, &mut r)?;
    }
    match req.format {
        ReportFormat::Json => println!("{r}"),
        ReportFormat::Text => print!("{}", ledger::render_report_text(&r)),
        ReportFormat::Html => {
            let html = ledger::render_report_html(&r);
            match &req.out {
                Some(p) => {
                    std::fs::write(p, html).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{html}"),
            }
        }
        ReportFormat::Pdf => {
            let out = req
                .out
                .as_deref()
                .context("--format pdf needs --out FILE.pdf")?;
            pdf(&ledger::render_report_html(&r), out)?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}

/// Adds the integrity verification and the daily series to a report for HTML and PDF.
fn decorate(config: &Config, req: &ReportRequest, r: &mut serde_json::Value) -> anyhow::Result<()> {
    let keys =
        ledger::load_hmac_keys(&config.ledger.dir, config.ledger.hmac_source()).unwrap_or_default();
    if req.central {
        let reports = ledger::central::verify(&mut central_client(config)?, &keys, None)?;
        let errors: Vec<String> = reports
            .iter()
            .flat_map(|n| {
                n.errors
                    .iter()
                    .take(5)
                    .map(move |e| format!("node {}: {e}", n.node))
            })
            .collect();
        r["integrity"] = serde_json::json!({
            "verified": errors.is_empty() && !reports.is_empty(),
            "records_checked": reports.iter().map(|n| n.records).sum::<u64>(),
            "nodes": reports.len(),
            "hmac_checked": reports.iter().all(|n| n.hmac_checked == n.records),
            "errors": errors,
        });
    } else {
        let v = ledger::verify(
            &config.ledger.dir,
            &VerifyOptions {
                hmac_keys: keys,
                ..VerifyOptions::default()
            },
        )?;
        r["integrity"] = serde_json::json!({
            "verified": v.ok,
            "records_checked": v.records,
            "checkpoints_checked": v.checkpoints,
            "tree_heads_checked": v.tree_heads_checked,
            "hmac_checked": v.hmac_checked,
            "signatures_checked": v.signatures_checked,
            "head_seq": v.head_seq,
            "errors": v.errors.iter().take(5).map(|e| format!("seq {}: {}", e.seq, e.detail)).collect::<Vec<_>>(),
        });
        let interactions = ledger::query(
            &config.ledger.dir,
            &Filter {
                kind: Some("interaction".into()),
                since: req.since,
                until: req.until,
                limit: usize::MAX,
                ..Filter::default()
            },
        )?;
        r["series"] = crate::evidence::daily(&interactions);
    }
    Ok(())
}

/// Prints `html` to `out` as PDF with headless Chromium.
fn pdf(html: &str, out: &Path) -> anyhow::Result<()> {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| which(b))
        .context("--format pdf needs Chromium: install Debian's `chromium` package (or use --format html)")?;
    let work = std::env::temp_dir().join(format!("sluice-report-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let page = work.join("report.html");
    std::fs::write(&page, html)?;
    let out_abs = if out.is_absolute() {
        out.to_path_buf()
    } else {
        std::env::current_dir()?.join(out)
    };
    let result = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
        ])
        .arg(format!(
            "--user-data-dir={}",
            work.join("profile").display()
        ))
        .arg(format!("--print-to-pdf={}", out_abs.display()))
        .arg(format!("file://{}", page.display()))
        .output();
    let _ = std::fs::remove_dir_all(&work);
    let o = result.with_context(|| format!("running {}", chromium.display()))?;
    anyhow::ensure!(
        o.status.success() && out_abs.metadata().map(|m| m.len() > 0).unwrap_or(false),
        "Chromium could not print the PDF: {}",
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ")
    );
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds() {
        let t = parse_time("2026-11-23T10:00:00Z").unwrap();
        assert_eq!(crate::record::rfc3339(t), "2026-11-23T10:00:00.000Z");
        let d = parse_time("2026-11-23").unwrap();
        assert_eq!(crate::record::rfc3339(d), "2026-11-23T00:00:00.000Z");
        let ago = parse_time("2h").unwrap();
        let secs = SystemTime::now().duration_since(ago).unwrap().as_secs();
        assert!((7199..=7201).contains(&secs));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("5w").is_err());
    }

    /// `ca init` and `audit export` run without a proxy append their admin records with
    /// the node's configured ledger settings: the HMAC key from `ledger.hmac_key_file`,
    /// not a key generated in the ledger directory.
    #[test]
    fn cli_admin_records_use_the_configured_hmac_key() {
        let tmp = std::env::temp_dir().join(format!("sluice-audit-{}", crate::record::new_id()));
        std::fs::create_dir_all(tmp.join("keys")).unwrap();
        let key_file = tmp.join("keys/hmac.key");
        std::fs::write(&key_file, "0f".repeat(32)).unwrap();
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let yaml = format!(
            "state_dir: {}\nledger:\n  hmac_key_file: {}\n",
            tmp.join("state").display(),
            key_file.display()
        );
        let config = Config::from_yaml(&yaml, "test.yaml").unwrap();
        ca_init(&config, "Test CA").unwrap();
        let out = tmp.join("export.jsonl");
        export(
            &config,
            ExportFormat::Jsonl,
            None,
            None,
            out.to_str().unwrap(),
            false,
            false,
        )
        .unwrap();

        let dir = config.ledger.dir.clone();
        assert!(
            !dir.join("hmac.key").exists(),
            "a key was generated in the ledger directory beside the configured one"
        );
        let lines = ledger::query(
            &dir,
            &ledger::Filter {
                limit: 10,
                ..ledger::Filter::default()
            },
        )
        .unwrap();
        assert_eq!(lines.len(), 2, "ca init and the export are both recorded");
        // Every record verifies with the configured key (no key made up beside it): the
        // HMACs are checked, not skipped for want of a key.
        let r = ledger::verify(
            &dir,
            &VerifyOptions {
                hmac_keys: ledger::load_hmac_keys(&dir, Some(ledger::Secret::File(&key_file)))
                    .unwrap(),
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert!(r.ok && r.hmac_checked, "{r:?}");
        assert!(verify(&config, &VerifyArgs::default()).unwrap());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
