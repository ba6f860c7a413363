//! Developer tasks for Sluice, run as `cargo xtask <command>`.
//!
//! xtask is the one entry point that developers and CI share: it installs what a fresh
//! Debian machine needs (`setup`), builds the workspace (`build`), runs the demo (`demo`)
//! and runs every test suite (`test`, which is what `.ci/run` calls). It is not part of the
//! product and builds nothing the product ships: the eBPF objects are compiled by
//! `probe-ebpf`'s build script. It depends on clap and anyhow only, so it builds in seconds
//! on a bare machine, and it drives every tool through `std::process::Command`.

mod setup;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{ensure, Context, Result};
use clap::Parser;

use setup::Venv;

#[derive(Parser)]
#[command(about = "Developer tasks for Sluice", bin_name = "cargo xtask")]
enum Cli {
    /// Install the apt packages and the Python test venv (.venv); idempotent.
    Setup,
    /// Build every crate and target of the workspace (debug profile).
    Build,
    /// Build `sluice` and run `sluice demo`; arguments after `--` are passed through.
    Demo {
        /// Arguments for `sluice demo`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark Sluice against direct, nginx, HAProxy, bare Pingora, LiteLLM, mitmproxy:
    /// builds sluice, sluice-mock and sluice-bench (release; debug with `--smoke`) and runs
    /// `sluice-bench suite ARGS` (`cargo xtask bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for `sluice-bench suite`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, run `cargo test`, then the pytest suite under tests/.
    Test {
        /// Only run the pytest tests matching this expression (pytest `-k`).
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    let root = repo_root();
    let result = match Cli::parse() {
        Cli::Setup => setup::run(&root, Venv::Install),
        Cli::Build => build(&root),
        Cli::Demo { args } => demo(&root, &args),
        Cli::Bench { args } => bench(&root, &args),
        Cli::Test { filter } => test(&root, filter.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask's manifest lives one level below it.
fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// Builds `sluice` and replaces this process with `sluice demo ARGS`, so the demo owns the
/// terminal (stdio, Ctrl-C) and its exit code is ours.
///
/// # Errors
/// When setup or the build fails, or the binary cannot be executed.
fn demo(root: &Path, args: &[String]) -> Result<()> {
    setup::run(root, Venv::Skip)?;
    run(cargo(root).args(["build", "-p", "sluice"]))?;
    let bin = root.join("target/debug/sluice");
    let err = Command::new(&bin).arg("demo").args(args).exec();
    Err(err).with_context(|| format!("cannot execute {}", bin.display()))
}

/// Builds the three binaries of a benchmark in one profile and replaces this process with
/// `sluice-bench suite ARGS`. `--smoke` (the test suite's quick check) uses the debug build
/// the tests share; every other run measures release binaries.
///
/// # Errors
/// When setup or the build fails, or the binary cannot be executed.
fn bench(root: &Path, args: &[String]) -> Result<()> {
    setup::run(root, Venv::Skip)?;
    let release = !args.iter().any(|a| a == "--smoke");
    if release {
        let packages = ["-p", "sluice", "-p", "sluice-mock", "-p", "sluice-bench"];
        run(cargo(root).args(["build", "--release"]).args(packages))?;
    } else {
        // The very build the test stage made (same packages, same features): a no-op there.
        build(root)?;
    }
    let bin = root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("sluice-bench");
    let err = Command::new(&bin).arg("suite").args(args).exec();
    Err(err).with_context(|| format!("cannot execute {}", bin.display()))
}

/// Builds all crates and targets in the debug profile, which the tests and the demo share.
///
/// # Errors
/// When the build fails.
fn build(root: &Path) -> Result<()> {
    run(cargo(root).args(["build", "--workspace", "--all-targets"]))
}

/// Runs every stage in order and stops at the first failure, whose error names the stage.
///
/// # Errors
/// When a stage fails.
fn test(root: &Path, filter: Option<&str>) -> Result<()> {
    stage("setup", || setup::run(root, Venv::Install))?;
    stage("build", || build(root))?;
    stage("cargo test", || {
        run(cargo(root).args(["test", "--workspace"]))
    })?;
    stage("pytest", || {
        let mut pytest = Command::new(setup::venv_python(root));
        pytest
            .current_dir(root)
            .args(["-m", "pytest", "tests", "-q", "-rs"])
            .env("SLUICE_BIN", root.join("target/debug/sluice"))
            .env("SLUICE_REPO", root);
        if let Some(expr) = filter {
            pytest.args(["-k", expr]);
        }
        // Any non-zero exit fails, including 5: a run that collected no test proves nothing.
        run(&mut pytest)
    })
}

/// Prints a header for the stage, runs it, and names the stage in its error.
fn stage(name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("==> {name}");
    body().with_context(|| format!("stage `{name}` failed"))
}

/// `cargo` (the one running us, when known) in the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Runs `cmd` with inherited stdio.
///
/// # Errors
/// When it cannot be started or exits unsuccessfully.
fn run(cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    ensure!(status.success(), "`{line}` failed ({status})");
    Ok(())
}

/// `cmd` as one would type it (arguments unquoted), for messages.
fn command_line(cmd: &Command) -> String {
    let words: Vec<_> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| word.to_string_lossy())
        .collect();
    words.join(" ")
}
