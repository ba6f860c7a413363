//! `sluice-bench`: the benchmark harness of Sluice and the tools it drives.
//!
//! `cargo xtask bench` builds `sluice`, `sluice-mock` and this binary in one profile and
//! runs `sluice-bench suite`, which measures Sluice next to a direct connection, nginx,
//! HAProxy, a bare Pingora proxy, LiteLLM and mitmproxy ([`suite`]). The other verbs are
//! the pieces the suite starts as separate, CPU-pinned processes:
//!
//! | verb | what |
//! |---|---|
//! | `run` | the load generator ([`loadgen`]) |
//! | `hold` | many idle connections or open streams, for memory figures |
//! | `components` | ledger appends/s, ledger queries, guardrail MB/s, connect-hook cost |
//! | `minimal-proxy` | the bare Pingora baseline ([`minimal`]) |
//!
//! What it is **not**: part of the product. `sluice` depends on none of it.

mod components;
mod loadgen;
mod minimal;
mod suite;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice-bench", version, about = "Sluice's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole benchmark (what `cargo xtask bench` runs).
    Suite(suite::Options),
    /// Send load to one listener and print the figures as one JSON object.
    Run(loadgen::RunArgs),
    /// Open many connections (or streams) and keep them open until stdin closes: what
    /// they cost the listener's process in memory is read by the harness meanwhile.
    Hold {
        #[command(flatten)]
        run: loadgen::RunArgs,
        /// Start one stream per connection (`--sse-chunks` sets its length) instead of one
        /// plain request.
        #[arg(long)]
        stream: bool,
        /// Longest hold, seconds, if stdin never closes.
        #[arg(long, default_value_t = 60.0)]
        hold_secs: f64,
    },
    /// Component figures as one JSON object: ledger appends/s, filtered ledger queries on
    /// a large ledger, guardrail scan MB/s and the connect hook's cost against no hook
    /// and an iptables REDIRECT (root).
    Components(components::Options),
    /// Bare Pingora reverse proxy: the baseline of what Sluice adds.
    MinimalProxy(minimal::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Suite(opts) => suite::run(&opts),
        Command::Run(args) => loadgen::run_blocking(args),
        Command::Hold {
            run,
            stream,
            hold_secs,
        } => loadgen::hold_blocking(run, stream, hold_secs),
        Command::Components(opts) => {
            println!("{}", components::run(&opts));
            Ok(())
        }
        Command::MinimalProxy(opts) => minimal::run(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_arguments_parse() {
        let cli = Cli::try_parse_from([
            "sluice-bench",
            "run",
            "--connect",
            "127.0.0.1:1",
            "--rate",
            "100",
            "--sse-chunks",
            "200",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.rate, Some(100.0));
        assert_eq!(a.sse_chunks, Some(200));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
