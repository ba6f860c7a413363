//! `cargo xtask setup`: what a fresh Debian machine needs to build and test Sluice.
//!
//! Every step checks before it changes anything, so a second run only checks; each step
//! prints one line. Root is needed only when apt packages are missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// Debian packages for the build and the tests: clang, llvm and libbpf-dev compile the eBPF
/// programs; cmake and pkg-config serve `-sys` crates; iproute2, curl and procps drive the
/// network-namespace tests; rsyslog (with its GnuTLS driver) is the real syslog server the
/// export and the syslog sink (TCP and TLS) are tested against;
/// iptables drives the REDIRECT fallback test and the connect-hook benchmark; nftables is
/// what the appliance mode installs its TPROXY capture with (and its test runs); prometheus
/// brings `promtool`, which checks and unit-tests the alerting rules; docker.io runs the
/// Kubernetes DaemonSet's pod spec on a node without a kubelet, from the image built with
/// Debian's ca-certificates as its roots; redis-server and postgresql are the fleet's shared
/// counter store and central ledger, started by the tests on loopback; chromium prints the
/// PDF reports and poppler-utils turns a page back into an image and text for the test.
const APT_PACKAGES: &[&str] = &[
    "clang",
    "llvm",
    "libbpf-dev",
    "cmake",
    "pkg-config",
    "iproute2",
    "curl",
    "procps",
    "rsyslog",
    "rsyslog-gnutls",
    "iptables",
    "nftables",
    "prometheus",
    "docker.io",
    "ca-certificates",
    "redis-server",
    "postgresql",
    "chromium",
    "poppler-utils",
];

/// The Node.js clients of the tests (`npm ci` there), relative to the repo root.
const NODE_CLIENTS: &str = "tests/node";

/// Pinned Python packages of the test suite, relative to the repo root.
const REQUIREMENTS: &str = "tests/requirements.txt";

/// Whether setup also provides the Python venv (the demo does not need it).
pub enum Venv {
    Install,
    Skip,
}

/// Installs the missing apt packages and, when asked, the test venv.
///
/// # Errors
/// When a package manager fails or a file of the venv cannot be read or written.
pub fn run(root: &Path, venv: Venv) -> Result<()> {
    apt_packages()?;
    match venv {
        Venv::Install => {
            python_venv(root)?;
            node_clients(root)
        }
        Venv::Skip => Ok(()),
    }
}

/// The Python interpreter of the repo's venv.
pub fn venv_python(root: &Path) -> PathBuf {
    root.join(".venv/bin/python")
}

fn apt_packages() -> Result<()> {
    apt_install(APT_PACKAGES)?;
    qemu_system()
}

/// Installs those of `packages` that are missing.
///
/// # Errors
/// When apt-get fails.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for package in packages {
        if !dpkg_installed(package)? {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        println!("setup: apt packages present: {}", packages.join(" "));
        return Ok(());
    }
    println!("setup: apt-get update");
    super::run(apt_get().args(["-qq", "update"]))?;
    println!("setup: apt-get install {}", missing.join(" "));
    super::run(
        apt_get()
            .args(["-qq", "install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

/// qemu-system-x86 and the OVMF firmware, which boot the appliance image in its test.
/// The machines' qemu-utils comes from bookworm-backports, which Debian's own
/// qemu-system-x86 conflicts with: the emulator is then taken from backports too, through
/// private apt sources and lists (nothing under /etc/apt or /var/lib/apt/lists changes).
fn qemu_system() -> Result<()> {
    const WANT: [&str; 2] = ["qemu-system-x86", "ovmf"];
    if WANT.iter().all(|p| dpkg_installed(p).unwrap_or(false)) {
        println!("setup: apt packages present: {}", WANT.join(" "));
        return Ok(());
    }
    let utils = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "qemu-utils"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !utils.contains("bpo") {
        return apt_install(&WANT);
    }
    super::run(backports_apt().args(["update"]))?;
    println!("setup: apt-get install qemu-system-x86/bookworm-backports ovmf");
    super::run(
        backports_apt()
            .args(["install", "-y", "--no-install-recommends"])
            .args([
                "qemu-system-x86/bookworm-backports",
                "qemu-system-common/bookworm-backports",
                "qemu-system-data/bookworm-backports",
                "seabios/bookworm-backports",
                "ovmf",
            ]),
    )
}

/// apt-get over Debian bookworm with its backports, from a private sources and lists
/// directory: the machine's own apt configuration and package lists stay as they are.
fn backports_apt() -> Command {
    let dir = std::env::temp_dir().join("sluice-apt-backports");
    let sources = dir.join("sources.list.d");
    let lists = dir.join("lists");
    let made = std::fs::create_dir_all(&sources)
        .and_then(|()| std::fs::create_dir_all(lists.join("partial")))
        .and_then(|()| {
            std::fs::write(
                sources.join("debian.sources"),
                "Types: deb\nURIs: http://deb.debian.org/debian\n\
                 Suites: bookworm bookworm-updates bookworm-backports\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                 Types: deb\nURIs: http://deb.debian.org/debian-security\n\
                 Suites: bookworm-security\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            )
        });
    if let Err(e) = made {
        eprintln!("setup: cannot write {}: {e}", dir.display());
    }
    let mut cmd = apt_get();
    cmd.arg("-qq")
        .arg("-o")
        .arg("Dir::Etc::SourceList=/dev/null")
        .arg("-o")
        .arg(format!("Dir::Etc::SourceParts={}", sources.display()))
        .arg("-o")
        .arg(format!("Dir::State::Lists={}", lists.display()));
    cmd
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Whether dpkg has `package` installed; `dpkg -s` also succeeds for packages that were
/// removed with their config files left, hence the status line check.
fn dpkg_installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg")
        .args(["-s", package])
        .output()
        .context("cannot run dpkg: setup supports Debian-based machines only")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && stdout.lines().any(|l| l == "Status: install ok installed"))
}

/// Creates `.venv` if absent and installs the requirements when their hash differs from the
/// one recorded by the last successful install.
fn python_venv(root: &Path) -> Result<()> {
    let python = venv_python(root);
    if python.exists() {
        println!("setup: venv present: .venv");
    } else {
        println!("setup: python3 -m venv .venv");
        super::run(
            Command::new("python3")
                .current_dir(root)
                .args(["-m", "venv", ".venv"]),
        )?;
    }

    let hash = sha256(&root.join(REQUIREMENTS))?;
    let stamp = root.join(".venv/.req-hash");
    if fs::read_to_string(&stamp).is_ok_and(|recorded| recorded == hash) {
        println!("setup: python packages match {REQUIREMENTS}");
        return Ok(());
    }
    println!("setup: pip install -r {REQUIREMENTS}");
    super::run(Command::new(&python).current_dir(root).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        REQUIREMENTS,
    ]))?;
    // Recorded only after pip succeeded, so an interrupted install is retried.
    fs::write(&stamp, hash).with_context(|| format!("cannot write {}", stamp.display()))
}

/// Installs the Node.js clients from their lock file when it changed since the last
/// install (Debian's nodejs and npm when the machine has no npm).
fn node_clients(root: &Path) -> Result<()> {
    let dir = root.join(NODE_CLIENTS);
    let hash = sha256(&dir.join("package-lock.json"))?;
    let stamp = dir.join("node_modules/.lock-hash");
    if fs::read_to_string(&stamp).is_ok_and(|recorded| recorded == hash) {
        println!("setup: node packages match {NODE_CLIENTS}/package-lock.json");
        return Ok(());
    }
    if Command::new("npm").arg("--version").output().is_err() {
        println!("setup: apt-get install nodejs npm");
        super::run(apt_get().args(["-qq", "install", "-y", "nodejs", "npm"]))?;
    }
    println!("setup: npm ci in {NODE_CLIENTS}");
    super::run(Command::new("npm").current_dir(&dir).args([
        "ci",
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
    ]))?;
    fs::write(&stamp, hash).with_context(|| format!("cannot write {}", stamp.display()))
}

/// Hex SHA-256 of a file, from coreutils' `sha256sum` (keeps xtask free of hash crates).
pub fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("cannot run sha256sum")?;
    ensure!(
        out.status.success(),
        "sha256sum {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8(out.stdout).context("sha256sum printed non-UTF-8")?;
    stdout
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}
