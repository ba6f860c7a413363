//! `cargo xtask image`: an OCI image of `sluice`, built from nothing.
//!
//! No base image can be pulled on the build machines, and none is needed: the root file
//! system holds the binary, exactly the shared libraries `ldd` names (with the dynamic
//! loader at the path the binary asks for), Debian's CA roots (the proxy's upstream trust
//! and the webhook's bundle), `/etc/passwd` and `/etc/group` with the non-root user the
//! image runs as by default (65532, `sluice`), and an empty `/tmp`. No shell, no package
//! manager. The pod spec adds the capabilities the node agent needs.
//!
//! The result is one uncompressed layer in an OCI image layout archive that also carries
//! Docker's `manifest.json`, so `docker load`, `podman load` and `skopeo copy
//! oci-archive:` all read it. Timestamps and owners are fixed: the same binary gives the
//! same image digest.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// The user the image runs as unless the pod spec says otherwise.
pub const USER: u32 = 65532;

/// What `cargo xtask image` makes, and from which build.
pub struct Image<'a> {
    pub root: &'a Path,
    /// `release` (what users run) or `debug` (the build the tests share; stripped).
    pub profile: &'a str,
    /// The image's name, e.g. `sluice:0.1.0`.
    pub tag: &'a str,
}

impl Image<'_> {
    /// Builds the image; returns the archive's path.
    ///
    /// # Errors
    /// The build, `ldd`, `tar` or `sha256sum` fails, or a file cannot be written.
    pub fn build(&self) -> Result<PathBuf> {
        if self.profile == "release" {
            super::run(super::cargo(self.root).args(["build", "--release", "-p", "sluice"]))?;
        } else {
            // The very build the tests share (a no-op after it).
            super::build(self.root)?;
        }
        let binary = self.root.join("target").join(self.profile).join("sluice");
        let out = self.root.join("target/image").join(self.profile);
        let rootfs = out.join("rootfs");
        if rootfs.exists() {
            fs::remove_dir_all(&rootfs)
                .with_context(|| format!("removing {}", rootfs.display()))?;
        }
        fs::create_dir_all(rootfs.join("usr/local/bin"))?;
        let bin = rootfs.join("usr/local/bin/sluice");
        super::run(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&bin)
                .arg(&binary),
        )?;
        for lib in shared_libraries(&binary)? {
            let to = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
            fs::create_dir_all(to.parent().context("library path has a parent")?)?;
            // The file itself, not the symlink ldd names.
            fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
        }
        let roots = Path::new("/etc/ssl/certs/ca-certificates.crt");
        ensure!(
            roots.exists(),
            "{} is missing: `apt-get install ca-certificates` (cargo xtask setup does)",
            roots.display()
        );
        fs::create_dir_all(rootfs.join("etc/ssl/certs"))?;
        fs::copy(roots, rootfs.join("etc/ssl/certs/ca-certificates.crt"))?;
        fs::write(
            rootfs.join("etc/passwd"),
            format!("root:x:0:0:root:/root:/sbin/nologin\nsluice:x:{USER}:{USER}:sluice:/var/lib/sluice:/sbin/nologin\n"),
        )?;
        fs::write(
            rootfs.join("etc/group"),
            format!("root:x:0:\nsluice:x:{USER}:\n"),
        )?;
        for dir in ["tmp", "var/lib/sluice", "root"] {
            fs::create_dir_all(rootfs.join(dir))?;
        }
        let archive = out.join("sluice-image.tar");
        self.archive(&rootfs, &out.join("oci"), &archive)?;
        Ok(archive)
    }

    /// Writes the layer, config, manifest and index, and packs them into `archive`.
    fn archive(&self, rootfs: &Path, layout: &Path, archive: &Path) -> Result<()> {
        if layout.exists() {
            fs::remove_dir_all(layout)?;
        }
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;
        let layer = layout.join("layer.tar");
        // One layer, reproducible: sorted, owned by root, mtime 0; /tmp sticky and open.
        super::run(Command::new("chmod").arg("1777").arg(rootfs.join("tmp")))?;
        super::run(
            reproducible_tar()
                .args([
                    "--format=posix",
                    "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                ])
                .arg("-C")
                .arg(rootfs)
                .arg("-cf")
                .arg(&layer)
                .arg("."),
        )?;
        let (layer_digest, layer_size) = store(&blobs, &layer)?;
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{"User":"{USER}:{USER}","Entrypoint":["/usr/local/bin/sluice"],"Cmd":["--help"],"Env":["PATH=/usr/local/bin","SLUICE_STATE_DIR=/var/lib/sluice"],"WorkingDir":"/","Labels":{{"org.opencontainers.image.title":"sluice","org.opencontainers.image.source":"https://github.com/sluice-dev/sluice"}}}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_digest}"]}},"history":[{{"created_by":"cargo xtask image --profile {profile}"}}]}}"#,
            arch = oci_arch()?,
            profile = self.profile,
        );
        let (config_digest, config_size) = store_bytes(&blobs, config.as_bytes())?;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer_digest}","size":{layer_size}}}]}}"#
        );
        let (manifest_digest, manifest_size) = store_bytes(&blobs, manifest.as_bytes())?;
        let name = if self.tag.contains(':') {
            self.tag.to_string()
        } else {
            format!("{}:latest", self.tag)
        };
        fs::write(
            layout.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
                tag = name.rsplit_once(':').map_or("latest", |(_, t)| t),
            ),
        )?;
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        // Docker's own index, so `docker load` of any version reads the archive.
        fs::write(
            layout.join("manifest.json"),
            format!(
                r#"[{{"Config":"blobs/sha256/{config_digest}","RepoTags":["{name}"],"Layers":["blobs/sha256/{layer_digest}"]}}]"#
            ),
        )?;
        super::run(
            reproducible_tar()
                .arg("-C")
                .arg(layout)
                .arg("-cf")
                .arg(archive)
                .arg("."),
        )?;
        let mut report = String::new();
        writeln!(report, "image {name}: {}", archive.display())?;
        writeln!(report, "  manifest sha256:{manifest_digest}")?;
        writeln!(
            report,
            "  layer {:.1} MiB uncompressed (binary {:.1} MiB)",
            layer_size as f64 / 1048576.0,
            fs::metadata(rootfs.join("usr/local/bin/sluice"))?.len() as f64 / 1048576.0
        )?;
        writeln!(report, "  load it: docker load -i {}", archive.display())?;
        print!("{report}");
        Ok(())
    }
}

/// The shared objects `ldd` says `binary` loads, the dynamic loader included.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    ensure!(
        out.status.success(),
        "ldd {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).context("ldd printed non-UTF-8")?;
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("linux-vdso") || line.is_empty() {
            continue;
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or("");
        if path == "not" {
            bail!("ldd: a library is missing: {line}");
        }
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    ensure!(
        !libs.is_empty(),
        "ldd named no library: is {} static?",
        binary.display()
    );
    Ok(libs)
}

/// Moves `file` into `blobs` under its SHA-256; returns (hex digest, size).
fn store(blobs: &Path, file: &Path) -> Result<(String, u64)> {
    let digest = super::setup::sha256(file)?;
    let size = fs::metadata(file)?.len();
    fs::rename(file, blobs.join(&digest))?;
    Ok((digest, size))
}

/// Writes `bytes` as a blob; returns (hex digest, size).
fn store_bytes(blobs: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let incoming = blobs.join("incoming");
    fs::write(&incoming, bytes)?;
    store(blobs, &incoming)
}

/// `tar` writing the same archive for the same files: sorted, root-owned, mtime 0.
fn reproducible_tar() -> Command {
    let mut tar = Command::new("tar");
    tar.args([
        "--sort=name",
        "--mtime=@0",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
    ]);
    tar
}

fn oci_arch() -> Result<&'static str> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no OCI architecture name for {other}"),
    })
}
