//! Builds the eBPF object with clang and measures the shared struct layout.
//!
//! 1. `bpf/redirect.bpf.c` → `$OUT_DIR/redirect.bpf.o` (`clang -target bpf`),
//!    embedded by `src/loader.rs` with `include_bytes!`.
//! 2. `bpf/layout.c` (host program) → `$OUT_DIR/layout.rs`: sizes and offsets of
//!    every struct in `bpf/redirect.h`, compared with the Rust mirrors by a test.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SETUP_HINT: &str = "run `cargo xtask setup` (or `apt-get install clang llvm libbpf-dev`)";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let bpf_dir = manifest.join("bpf");
    for f in ["redirect.bpf.c", "redirect.h", "layout.c"] {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    if Command::new(&clang).arg("--version").output().is_err() {
        fail(&format!(
            "`{clang}` not found: the eBPF programs are C built with clang; {SETUP_HINT}"
        ));
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(&format!(
            "/usr/include/bpf/bpf_helpers.h not found; {SETUP_HINT}"
        ));
    }

    // linux/types.h pulls in asm/types.h, which lives in the multiarch dir of
    // the *host* (clang -target bpf has no sysroot of its own).
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");

    let object = out.join("redirect.bpf.o");
    run(Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .arg(format!("-I{}", bpf_dir.display()))
        .arg("-c")
        .arg(bpf_dir.join("redirect.bpf.c"))
        .arg("-o")
        .arg(&object));

    let layout_bin = out.join("layout");
    run(Command::new(&clang)
        .args(["-O0", "-Wall", "-Werror"])
        .arg(format!("-I{}", bpf_dir.display()))
        .arg(bpf_dir.join("layout.c"))
        .arg("-o")
        .arg(&layout_bin));
    let printed = Command::new(&layout_bin)
        .output()
        .unwrap_or_else(|e| fail(&format!("running {}: {e}", layout_bin.display())));
    if !printed.status.success() {
        fail(&format!("{} failed", layout_bin.display()));
    }
    std::fs::write(out.join("layout.rs"), printed.stdout)
        .unwrap_or_else(|e| fail(&format!("writing layout.rs: {e}")));
}

fn run(cmd: &mut Command) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("{cmd:?}: {e}; {SETUP_HINT}")));
    if !output.status.success() {
        fail(&format!(
            "{cmd:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
}

fn fail(msg: &str) -> ! {
    // A panic in a build script prints the message with the crate name; an
    // `error:` line alone would be easy to miss between the warnings.
    panic!("sluice-probe build: {msg}");
}
