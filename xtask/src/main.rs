//! Developer tasks for Sluice, run as `cargo xtask <command>`.
//!
//! xtask is the one entry point that developers and CI share: it installs what a fresh
//! Debian machine needs (`setup`), builds the workspace (`build`), runs the demo (`demo`),
//! every test suite (`test`, which is what `.ci/run` calls) and the fuzz targets (`fuzz`).
//! It is not part of the product and builds nothing the product ships: the eBPF objects
//! are compiled by `probe-ebpf`'s build script. It depends on clap and anyhow only, so it
//! builds in seconds on a bare machine, and it drives every tool through
//! `std::process::Command`.

mod appliance;
mod image;
mod setup;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

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
    /// Run every cargo-fuzz target under fuzz/ (installing cargo-fuzz when missing) for
    /// SECONDS each, from its seed corpus; fails if any target crashes.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Only these targets (default: every one in fuzz/Cargo.toml).
        targets: Vec<String>,
    },
    /// Build the OCI image of `sluice` from scratch (binary, its shared libraries, CA
    /// roots, a non-root user): target/image/<profile>/sluice-image.tar, for `docker load`.
    Image {
        /// `release` (what users run) or `debug` (the tests' build, stripped).
        #[arg(long, default_value = "release", value_parser = ["release", "debug"])]
        profile: String,
        /// The image's name and tag.
        #[arg(long, default_value = concat!("sluice:", env!("CARGO_PKG_VERSION")))]
        tag: String,
    },
    /// Build the in-VPC appliance's bootable disk image (Debian, Sluice, a hardened unit,
    /// cloud-init): target/appliance/<profile>/sluice-appliance.{raw,qcow2}. Needs root.
    ApplianceImage {
        /// `release` (what users run) or `debug` (the tests' build, stripped).
        #[arg(long, default_value = "release", value_parser = ["release", "debug"])]
        profile: String,
    },
    /// Draw the overview dashboard from a real Prometheus scraping Sluice under SDK
    /// traffic (the README's picture): deploy/dashboards/overview.png.
    DashboardPicture,
    /// Set up, build, run `cargo test` (which runs every fuzz target over its seed corpus,
    /// fuzz/harness), build the debug OCI image and appliance disk image, run the pytest
    /// suite under tests/, then every fuzz target for a few seconds (`fuzz`).
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
        Cli::Fuzz { seconds, targets } => fuzz(&root, seconds, &targets),
        Cli::Test { filter } => test(&root, filter.as_deref()),
        Cli::DashboardPicture => dashboard_picture(&root),
        Cli::ApplianceImage { profile } => appliance::ApplianceImage {
            root: &root,
            profile: &profile,
        }
        .build()
        .map(drop),
        Cli::Image { profile, tag } => image::Image {
            root: &root,
            profile: &profile,
            tag: &tag,
        }
        .build()
        .map(drop),
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
    stage(root, "setup", || setup::run(root, Venv::Install))?;
    stage(root, "build", || build(root))?;
    stage(root, "cargo test", || {
        run(cargo(root).args(["test", "--workspace"]))
    })?;
    // The image the Kubernetes node test runs (the debug build, stripped: a no-op build).
    stage(root, "image", || {
        image::Image {
            root,
            profile: "debug",
            tag: "sluice:e2e",
        }
        .build()
        .map(drop)
    })?;
    // The appliance's disk image (the debug build, stripped), booted by its test.
    stage(root, "appliance image", || {
        appliance::ApplianceImage {
            root,
            profile: "debug",
        }
        .build()
        .map(drop)
    })?;
    stage(root, "pytest", || {
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
    })?;
    // A short run of every fuzz target (the seeds alone ran in `cargo test` already).
    stage(root, "fuzz", || fuzz(root, TEST_FUZZ_SECONDS, &[]))
}

/// Runs the dashboards' Prometheus test with more traffic, writing its picture of the
/// overview into the repo.
///
/// # Errors
/// When setup, the build or the test fails.
fn dashboard_picture(root: &Path) -> Result<()> {
    setup::run(root, Venv::Install)?;
    build(root)?;
    let out = root.join("deploy/dashboards/overview.png");
    run(Command::new(setup::venv_python(root))
        .current_dir(root)
        .args([
            "-m",
            "pytest",
            "tests/test_dashboards.py",
            "-q",
            "-k",
            "real_prometheus",
        ])
        .args(["-o", "timeout=900"])
        .env("SLUICE_BIN", root.join("target/debug/sluice"))
        .env("SLUICE_REPO", root)
        .env("SLUICE_DASHBOARD_ROUNDS", "25")
        .env("SLUICE_DASHBOARD_PNG", &out))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const TEST_FUZZ_SECONDS: u64 = 5;

/// `cargo fuzz SUB` with the options `build` and `run` must share (so a run does not
/// rebuild): no sanitizer (works on the stable toolchain) and 16 codegen units (the build
/// CI pays cold on two cores, at some cost to the runs).
fn cargo_fuzz(root: &Path, sub: &str) -> Command {
    let mut cmd = cargo(root);
    cmd.args(["fuzz", sub, "-s", "none", "--codegen-units", "16"]);
    cmd
}

/// The fuzz targets of fuzz/Cargo.toml, in the order they run.
const FUZZ_TARGETS: &[&str] = &[
    "sniff",
    "adapters",
    "sse",
    "eventstream",
    "config",
    "lenient_json",
    "witness",
];

/// Builds every fuzz target with cargo-fuzz (installed when missing) and runs each for
/// `seconds` on its seed corpus `fuzz/corpus/<target>` plus a working corpus under
/// `fuzz/target/corpus/<target>` (where new inputs go, so the committed seeds stay as
/// they are). No sanitizer (`-s none`): the stable toolchain has none, and the code under
/// test is safe Rust; panics, overflow and debug assertions are what is caught. Prints
/// the executions of each target; a crash input is left in `fuzz/artifacts/<target>/`.
///
/// # Errors
/// When cargo-fuzz cannot be installed, a target does not build, or one crashes.
fn fuzz(root: &Path, seconds: u64, only: &[String]) -> Result<()> {
    for t in only {
        ensure!(
            FUZZ_TARGETS.contains(&t.as_str()),
            "no fuzz target `{t}` (there are: {})",
            FUZZ_TARGETS.join(", ")
        );
    }
    let installed = cargo(root)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        run(cargo(root).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    run(&mut cargo_fuzz(root, "build"))?;
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for target in FUZZ_TARGETS
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == *t))
    {
        let work = root.join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        let seeds = root.join("fuzz/corpus").join(target);
        let mut cmd = cargo_fuzz(root, "run");
        cmd.arg(target)
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-timeout=30", "-print_final_stats=1"]);
        println!("==> fuzz {target} ({seconds} s)");
        let line = command_line(&cmd);
        let out = cmd
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot start `{line}`"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let execs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map_or("?", str::trim);
        if out.status.success() {
            summary.push(format!("{target}: {execs} executions, no crash"));
        } else {
            // The whole libFuzzer log: the panic, the stack and where the input went.
            eprintln!("{log}");
            summary.push(format!("{target}: CRASHED after {execs} executions"));
            failed.push(*target);
        }
    }
    println!("==> fuzz summary ({seconds} s per target)");
    for line in &summary {
        println!("    {line}");
    }
    ensure!(
        failed.is_empty(),
        "fuzz targets crashed: {} (inputs in fuzz/artifacts/<target>/; reproduce with \
         `cargo fuzz run -s none <target> <input>`)",
        failed.join(", ")
    );
    Ok(())
}

/// Prints a header for the stage (with the disk left where the build goes, so a log that
/// ends in "No space left on device" says how much there was), runs it, and names the
/// stage in its error.
fn stage(root: &Path, name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    match disk_free(root) {
        Some(bytes) => println!("==> {name} ({:.1} GB free on the build's disk)", gb(bytes)),
        None => println!("==> {name}"),
    }
    body().with_context(|| match disk_free(root) {
        Some(bytes) if bytes < LOW_DISK => format!(
            "stage `{name}` failed with {:.2} GB left on the build's disk: free some (a whole \
             `cargo xtask test` from a clean clone takes about 7 GB: target/, fuzz/target/, \
             .venv/)",
            gb(bytes)
        ),
        _ => format!("stage `{name}` failed"),
    })
}

/// Under this much free disk a failed stage is reported as likely out of space.
const LOW_DISK: u64 = 1 << 30;

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

/// Bytes available to us on the filesystem holding `path` (`df`; None when it cannot tell).
fn disk_free(path: &Path) -> Option<u64> {
    let out = Command::new("df")
        .args(["-Pk"])
        .arg(path)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `cargo` (the one running us, when known) in the workspace root. Under CI (`CI` set) no
/// incremental build: a clean build never reuses it, and it doubles what the workspace's
/// own crates keep on disk.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    if std::env::var_os("CI").is_some() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
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

/// Runs `cmd` with `input` on its stdin (other stdio inherited).
///
/// # Errors
/// When it cannot be started or exits unsuccessfully.
fn run_with_input(cmd: &mut Command, input: &str) -> Result<()> {
    use std::io::Write as _;
    let line = command_line(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    child
        .stdin
        .take()
        .context("stdin was piped")?
        .write_all(input.as_bytes())?;
    let status = child.wait()?;
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

#[cfg(test)]
mod tests {
    /// Every `[[bin]]` of fuzz/Cargo.toml runs in `cargo xtask fuzz`, and nothing else.
    #[test]
    fn the_fuzz_target_list_is_fuzz_cargo_toml_s() {
        let toml = include_str!("../../fuzz/Cargo.toml");
        let bins: Vec<&str> = toml
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "sluice-fuzz")
            .collect();
        let mut want = bins.clone();
        want.sort_unstable();
        let mut have = super::FUZZ_TARGETS.to_vec();
        have.sort_unstable();
        assert_eq!(have, want, "fuzz/Cargo.toml's [[bin]]s: {bins:?}");
    }
}
