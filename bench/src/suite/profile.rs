//! What a run measures and how much: the command-line options, the size profiles
//! (full, `--quick`, `--smoke`) and the scenarios with the load generator's arguments for
//! each.

use std::path::PathBuf;

/// Command-line options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Fewer and shorter runs (under 2 minutes once the peers are installed).
    #[arg(long)]
    pub quick: bool,
    /// Tiny counts and a debug build: proves every path runs (the smoke test uses it).
    #[arg(long, conflicts_with = "quick")]
    pub smoke: bool,
    /// Only these scenarios (comma-separated): sat_1k, sat_100k, lat1_1k, lat1_100k,
    /// open_1k, open_100k, sse, newconn, `hold` (memory with many idle connections and
    /// open streams), `components` (ledger records/s, guardrail MB/s, connect-hook
    /// cost), `phases` (the governed path's instructions per request by phase and by
    /// component, under callgrind; only when named) and `soak` (the governed path at half
    /// its saturation with plain, streamed, refused and cancelled requests: 10 minutes,
    /// 60 s with --quick, 6 s in the smoke run where it always runs; only when named
    /// otherwise).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub scenario: Vec<String>,
    /// Only these paths (comma-separated; `direct` is always measured, as the baseline).
    #[arg(long, value_delimiter = ',', value_name = "PATH")]
    pub paths: Vec<String>,
    /// Where to write the JSON results. Default: target/bench/results.json.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Sizes of a run.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: &'static str,
    /// Repetitions of each scenario; the figure is their median.
    pub reps: usize,
    /// Measured seconds of one run, and its unmeasured warm-up.
    pub duration: f64,
    pub warmup: f64,
    /// Unmeasured load sent to each path once before its runs.
    pub path_warmup: f64,
    /// Open-loop rates, requests/s, for 1 KB and 100 KB prompts.
    pub rate_1k: f64,
    pub rate_100k: f64,
    /// Connection pool of the open loop.
    pub open_pool: usize,
    /// Connections of the saturation runs, and of the rig's ceiling.
    pub sat_conns: usize,
    pub ceiling_conns: usize,
    /// SSE: chunks per stream, pause between frames at the mock, connections.
    pub sse_chunks: usize,
    pub sse_delay_ms: u64,
    pub sse_conns: usize,
    /// Connections of the new-TLS-connection run.
    pub newconn_conns: usize,
    pub release: bool,
    /// Whether the PyPI peers (litellm, mitmproxy) are installed and measured.
    pub pypi_peers: bool,
    /// Components: ledger records per repetition, guardrail MiB scanned, connects per mode.
    pub comp_records: usize,
    /// Records in the ledger the query figure is taken on.
    pub comp_query_records: usize,
    pub comp_scan_mb: usize,
    pub comp_connects: usize,
    /// Seconds of the paced (10 records/s) ledger disk figure.
    pub comp_paced_seconds: usize,
    /// Connections held open for the memory figures (idle keep-alive, open streams).
    pub hold_conns: usize,
    /// Seconds of the soak (`--scenario soak`).
    pub soak_secs: f64,
}

impl Profile {
    pub(super) fn of(opts: &Options) -> Profile {
        let full = Profile {
            name: "full",
            reps: 3,
            duration: 2.5,
            warmup: 0.3,
            path_warmup: 2.0,
            rate_1k: 1000.0,
            rate_100k: 200.0,
            open_pool: 64,
            sat_conns: 16,
            ceiling_conns: 64,
            sse_chunks: 200,
            sse_delay_ms: 1,
            sse_conns: 4,
            newconn_conns: 8,
            release: true,
            pypi_peers: true,
            comp_records: 200_000,
            comp_query_records: 1_000_000,
            comp_scan_mb: 64,
            comp_connects: 5_000,
            comp_paced_seconds: 20,
            hold_conns: 1_000,
            soak_secs: 600.0,
        };
        if opts.smoke {
            Profile {
                name: "smoke",
                reps: 1,
                duration: 0.25,
                warmup: 0.05,
                path_warmup: 0.3,
                rate_1k: 50.0,
                rate_100k: 20.0,
                open_pool: 8,
                sat_conns: 4,
                ceiling_conns: 8,
                sse_chunks: 20,
                sse_delay_ms: 0,
                sse_conns: 1,
                newconn_conns: 2,
                release: false,
                pypi_peers: false,
                comp_records: 2_000,
                comp_query_records: 2_000,
                comp_scan_mb: 1,
                comp_connects: 200,
                comp_paced_seconds: 1,
                hold_conns: 10,
                soak_secs: 6.0,
            }
        } else if opts.quick {
            Profile {
                name: "quick",
                reps: 2,
                duration: 0.4,
                warmup: 0.1,
                path_warmup: 0.3,
                rate_1k: 300.0,
                rate_100k: 100.0,
                open_pool: 32,
                sat_conns: 16,
                ceiling_conns: 64,
                sse_chunks: 200,
                sse_delay_ms: 1,
                sse_conns: 2,
                newconn_conns: 8,
                comp_records: 50_000,
                comp_query_records: 200_000,
                comp_scan_mb: 16,
                comp_connects: 2_000,
                comp_paced_seconds: 10,
                hold_conns: 50,
                soak_secs: 60.0,
                ..full
            }
        } else {
            full
        }
    }
}

/// One kind of run of the load generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Closed loop at saturation: req/s.
    Throughput,
    /// Latency percentiles (one connection, or open loop).
    Latency,
    /// Streams: time to first event, gaps, fidelity.
    Sse,
    /// New connection per request: TLS handshakes/s.
    NewConn,
}

/// A named scenario.
pub struct Scenario {
    pub name: &'static str,
    pub kind: Kind,
    pub what: &'static str,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "sat_1k",
        kind: Kind::Throughput,
        what: "closed loop, 1 KB prompt",
    },
    Scenario {
        name: "sat_100k",
        kind: Kind::Throughput,
        what: "closed loop, 100 KB prompt",
    },
    Scenario {
        name: "lat1_1k",
        kind: Kind::Latency,
        what: "1 connection, 1 KB prompt",
    },
    Scenario {
        name: "lat1_100k",
        kind: Kind::Latency,
        what: "1 connection, 100 KB prompt",
    },
    Scenario {
        name: "open_1k",
        kind: Kind::Latency,
        what: "open loop at a fixed rate, 1 KB prompt",
    },
    Scenario {
        name: "open_100k",
        kind: Kind::Latency,
        what: "open loop at a fixed rate, 100 KB prompt",
    },
    Scenario {
        name: "sse",
        kind: Kind::Sse,
        what: "SSE stream, checked against the mock",
    },
    Scenario {
        name: "newconn",
        kind: Kind::NewConn,
        what: "new TCP + full TLS handshake per request",
    },
];

pub(super) fn loadgen_args(p: &Profile, name: &str) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>();
    let n = |x: usize| x.to_string();
    let f = |x: f64| x.to_string();
    match name {
        "sat_1k" => s(&["--connections", &n(p.sat_conns), "--prompt-bytes", "1024"]),
        "sat_100k" => s(&["--connections", &n(p.sat_conns), "--prompt-bytes", "102400"]),
        "lat1_1k" => s(&["--connections", "1", "--prompt-bytes", "1024"]),
        "lat1_100k" => s(&["--connections", "1", "--prompt-bytes", "102400"]),
        "open_1k" => s(&[
            "--connections",
            &n(p.open_pool),
            "--rate",
            &f(p.rate_1k),
            "--prompt-bytes",
            "1024",
        ]),
        "open_100k" => s(&[
            "--connections",
            &n(p.open_pool),
            "--rate",
            &f(p.rate_100k),
            "--prompt-bytes",
            "102400",
        ]),
        "sse" => s(&[
            "--connections",
            &n(p.sse_conns),
            "--sse-chunks",
            &n(p.sse_chunks),
            "--reply-bytes",
            &n(p.sse_chunks * 20),
            "--mock-delay-ms",
            &p.sse_delay_ms.to_string(),
        ]),
        "newconn" => s(&[
            "--connections",
            &n(p.newconn_conns),
            "--new-conn",
            "--prompt-bytes",
            "1024",
        ]),
        _ => Vec::new(),
    }
}

pub(super) fn scenario_names() -> String {
    SCENARIOS
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn set_arg(args: &mut [String], flag: &str, value: &str) {
    if let Some(i) = args.iter().position(|a| a == flag) {
        if let Some(v) = args.get_mut(i + 1) {
            *v = value.to_string();
        }
    }
}
