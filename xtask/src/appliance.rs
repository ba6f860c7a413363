//! `cargo xtask appliance-image`: the in-VPC appliance as a bootable disk image (raw and
//! qcow2), built from nothing on this machine without mounting anything.
//!
//! 1. A minimal Debian bookworm root file system by `mmdebstrap --variant=minbase`: the
//!    cloud kernel, systemd, udev, iproute2 and nftables (the capture), ca-certificates
//!    (upstream trust), cloud-init (user-data: config, CA, keys). No SSH server, no
//!    package timers: nothing listens but Sluice.
//! 2. Sluice (stripped) and the files of `deploy/appliance/`: the hardened unit, the
//!    default config, sysctls, journald limits, cloud-init settings; a system user
//!    `sluice`; DHCP on the first NIC (systemd-networkd); a serial console on ttyS0; root
//!    locked.
//! 3. The disk: GPT with an EFI system partition (FAT, built with mtools) holding one
//!    standalone GRUB EFI binary whose embedded config boots the root partition's
//!    `/vmlinuz` and `/initrd.img` (so kernel upgrades in the guest need no ESP change),
//!    and an ext4 root made by `mkfs.ext4 -d` from the directory; partitions laid out by
//!    `sfdisk` on the file and written in with `dd`. UEFI boot, as every big cloud offers.
//! 4. `qemu-img convert` to a compressed qcow2.
//!
//! Identifiers (partition and file-system UUIDs) are fixed, so the boot config is static;
//! the same inputs give the same layout (package versions follow the Debian mirror).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// Fixed identifiers: the kernel command line and fstab name them.
const ROOT_PARTUUID: &str = "5e1c0000-0000-4000-8000-000000000002";
const ESP_PARTUUID: &str = "5e1c0000-0000-4000-8000-000000000001";
const ROOT_FSUUID: &str = "5e1c0000-0000-4000-8000-0000000000f2";
const DISK_GUID: &str = "5e1c0000-0000-4000-8000-0000000000d1";
/// EFI system partition size, MiB.
const ESP_MIB: u64 = 64;
/// Free space on the root file system beyond what the packages use, MiB (the ledger
/// lives there; `growpart`/`resizefs` in cloud-init grow it to the cloud disk's size).
const ROOT_FREE_MIB: u64 = 768;

/// Debian packages of the image.
const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "nftables",
    "ca-certificates",
    "cloud-init",
    "cloud-guest-utils",
    "e2fsprogs",
];

/// Runs of mmdebstrap before the build gives up (the Debian mirror is the one thing of
/// the build not on this machine).
const ROOTFS_ATTEMPTS: u32 = 3;

/// Host tools the build needs (Debian packages), besides e2fsprogs and util-linux.
pub const HOST_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "grub-efi-amd64-bin",
    "mtools",
    "dosfstools",
    "fdisk",
    "qemu-utils",
];

/// What `cargo xtask appliance-image` makes, and from which build.
pub struct ApplianceImage<'a> {
    pub root: &'a Path,
    /// `release` (what users run) or `debug` (the build the tests share; stripped).
    pub profile: &'a str,
}

/// The image files.
pub struct Built {
    pub raw: PathBuf,
    pub qcow2: PathBuf,
}

impl ApplianceImage<'_> {
    /// Where the images go: `target/appliance/<profile>/`.
    pub fn out_dir(&self) -> PathBuf {
        self.root.join("target/appliance").join(self.profile)
    }

    /// Builds the image.
    ///
    /// # Errors
    /// The build, mmdebstrap or a disk tool fails (the message names the step).
    pub fn build(&self) -> Result<Built> {
        ensure!(
            is_root(),
            "building the appliance image needs root (mmdebstrap, chroot)"
        );
        super::setup::apt_install(HOST_PACKAGES)?;
        if self.profile == "release" {
            super::run(super::cargo(self.root).args(["build", "--release", "-p", "sluice"]))?;
        } else {
            super::build(self.root)?;
        }
        let out = self.out_dir();
        let work = out.join("work");
        if work.exists() {
            fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
        }
        fs::create_dir_all(&work)?;
        let rootfs = work.join("rootfs");
        let started = std::time::Instant::now();
        self.rootfs(&rootfs)?;
        println!(
            "appliance-image: root file system in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        self.install(&rootfs)?;
        let built = self.disk(&rootfs, &work, &out)?;
        fs::remove_dir_all(&work)?;
        println!(
            "appliance-image: {} and {} in {:.0} s",
            built.raw.display(),
            built.qcow2.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(built)
    }

    /// Debian by mmdebstrap, without docs, man pages or locales. Every download is retried
    /// by apt, and the whole run up to [`ROOTFS_ATTEMPTS`] times (a mirror in the middle of
    /// a sync answers hash mismatches for a minute or two).
    fn rootfs(&self, rootfs: &Path) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.rootfs_once(rootfs) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < ROOTFS_ATTEMPTS => {
                    let pause = std::time::Duration::from_secs(20 * u64::from(attempt));
                    eprintln!(
                        "appliance-image: mmdebstrap failed ({e:#}); attempt {} of {ROOTFS_ATTEMPTS} in {} s",
                        attempt + 1,
                        pause.as_secs()
                    );
                    std::thread::sleep(pause);
                    if rootfs.exists() {
                        fs::remove_dir_all(rootfs)
                            .with_context(|| format!("removing {}", rootfs.display()))?;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn rootfs_once(&self, rootfs: &Path) -> Result<()> {
        let fstab = format!(
            "PARTUUID={ROOT_PARTUUID} / ext4 rw,errors=remount-ro 0 1\n\
             PARTUUID={ESP_PARTUUID} /boot/efi vfat umask=0077,nofail 0 2\n"
        );
        let work = rootfs.parent().context("rootfs has a parent")?;
        fs::write(work.join("fstab"), fstab)?;
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--variant=minbase", "--quiet", "--aptopt=Acquire::Retries \"3\""])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .args([
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--dpkgopt=path-include=/usr/share/locale/locale.alias",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            ])
            // fstab before the kernel's initramfs is made; ext4 named for it, as the
            // build host's root is not the image's.
            .arg(format!(
                "--essential-hook=cp {} \"$1/etc/fstab\" && mkdir -p \"$1/etc/initramfs-tools/conf.d\" && echo FSTYPE=ext4 > \"$1/etc/initramfs-tools/conf.d/fstype\"",
                work.join("fstab").display()
            ))
            .arg("bookworm")
            .arg(rootfs)
            .arg("deb http://deb.debian.org/debian bookworm main")
            .arg("deb http://deb.debian.org/debian bookworm-updates main")
            .arg("deb http://deb.debian.org/debian-security bookworm-security main");
        super::run(&mut cmd).context("mmdebstrap (the Debian root file system)")
    }

    /// Sluice, its unit and settings, the user, networking, console, hardening.
    fn install(&self, rootfs: &Path) -> Result<()> {
        let deploy = self.root.join("deploy/appliance");
        let put = |from: &str, to: &str, mode: u32| -> Result<()> {
            let dest = rootfs.join(to);
            fs::create_dir_all(dest.parent().context("a parent")?)?;
            fs::copy(deploy.join(from), &dest)
                .with_context(|| format!("copying {from} into the image"))?;
            set_mode(&dest, mode)
        };
        put("sluice.service", "etc/systemd/system/sluice.service", 0o644)?;
        put("ca-init", "usr/local/lib/sluice/ca-init", 0o755)?;
        put("sluice.yaml", "etc/sluice/sluice.yaml", 0o644)?;
        put("sysctl.conf", "etc/sysctl.d/90-sluice.conf", 0o644)?;
        put(
            "journald.conf",
            "etc/systemd/journald.conf.d/90-sluice.conf",
            0o644,
        )?;
        put("cloud.cfg", "etc/cloud/cloud.cfg.d/90-sluice.cfg", 0o644)?;
        let binary = self.root.join("target").join(self.profile).join("sluice");
        super::run(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(rootfs.join("usr/bin/sluice"))
                .arg(&binary),
        )?;
        let write = |to: &str, text: &str| -> Result<()> {
            let dest = rootfs.join(to);
            fs::create_dir_all(dest.parent().context("a parent")?)?;
            fs::write(&dest, text).with_context(|| format!("writing {to} into the image"))
        };
        write("etc/hostname", "sluice-appliance\n")?;
        write(
            "etc/hosts",
            "127.0.0.1 localhost\n127.0.1.1 sluice-appliance\n::1 localhost ip6-localhost ip6-loopback\n",
        )?;
        write(
            "etc/systemd/network/20-wired.network",
            "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\nIPv6AcceptRA=yes\n",
        )?;
        // A fresh machine id on first boot (each appliance its own).
        write("etc/machine-id", "")?;
        let _ = fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
        let chroot = |args: &[&str]| -> Result<()> {
            super::run(Command::new("chroot").arg(rootfs).args(args))
        };
        chroot(&[
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            "/var/lib/sluice",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "sluice",
        ])?;
        chroot(&["usermod", "--password", "!*", "root"])?;
        chroot(&[
            "systemctl",
            "enable",
            "sluice.service",
            "systemd-networkd.service",
            "serial-getty@ttyS0.service",
        ])?;
        // An appliance changes by image, not by unattended package runs.
        chroot(&[
            "systemctl",
            "mask",
            "apt-daily.timer",
            "apt-daily-upgrade.timer",
        ])?;
        chroot(&["systemctl", "set-default", "multi-user.target"])?;
        Ok(())
    }

    /// The GPT disk (ESP + ext4 root) as raw and qcow2.
    fn disk(&self, rootfs: &Path, work: &Path, out: &Path) -> Result<Built> {
        // The root file system, from the directory, sized to its content plus room.
        let used = du_mib(rootfs)?;
        let root_mib = (used * 12 / 10 + ROOT_FREE_MIB).div_ceil(64) * 64;
        let root_img = work.join("root.ext4");
        super::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "sluice-root", "-U", ROOT_FSUUID])
                .arg("-E")
                .arg(format!("root_owner=0:0,hash_seed={ROOT_FSUUID}"))
                .arg("-d")
                .arg(rootfs)
                .arg(&root_img)
                .arg(format!("{root_mib}M")),
        )
        .context("mkfs.ext4 (the root file system)")?;
        // GRUB, one EFI binary with its config inside.
        let cmdline = format!(
            "root=PARTUUID={ROOT_PARTUUID} ro rootwait console=tty0 console=ttyS0,115200n8 net.ifnames=0"
        );
        let grub_cfg = work.join("grub.cfg");
        fs::write(
            &grub_cfg,
            format!(
                "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\n\
                 terminal_input serial console\nterminal_output serial console\n\
                 search --no-floppy --fs-uuid --set=root {ROOT_FSUUID}\n\
                 menuentry \"Sluice appliance\" {{\n  linux /vmlinuz {cmdline}\n  initrd /initrd.img\n}}\n"
            ),
        )?;
        let efi = work.join("BOOTX64.EFI");
        super::run(
            Command::new("grub-mkstandalone")
                .args(["-O", "x86_64-efi", "-o"])
                .arg(&efi)
                .arg("--modules=part_gpt ext2 fat search search_fs_uuid linux normal serial terminal echo")
                .args(["--locales=", "--themes=", "--fonts="])
                .arg(format!("boot/grub/grub.cfg={}", grub_cfg.display())),
        )
        .context("grub-mkstandalone (the boot loader)")?;
        let esp = work.join("esp.img");
        super::run(
            Command::new("mkfs.vfat")
                .args(["-F", "32", "-n", "ESP", "--invariant", "-C"])
                .arg(&esp)
                .arg((ESP_MIB * 1024).to_string()),
        )?;
        super::run(
            Command::new("mmd")
                .arg("-i")
                .arg(&esp)
                .args(["::/EFI", "::/EFI/BOOT"]),
        )?;
        super::run(
            Command::new("mcopy")
                .arg("-i")
                .arg(&esp)
                .arg(&efi)
                .arg("::/EFI/BOOT/BOOTX64.EFI"),
        )?;
        // The GPT layout on the file itself, then the partitions written in.
        fs::create_dir_all(out)?;
        let raw = out.join("sluice-appliance.raw");
        let _ = fs::remove_file(&raw);
        let root_start = 1 + ESP_MIB;
        let disk_mib = root_start + root_mib + 1;
        fs::File::create(&raw)?.set_len(disk_mib << 20)?;
        let layout = format!(
            "label: gpt\nlabel-id: {DISK_GUID}\nunit: sectors\n\
             start=2048, size={esp}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={ESP_PARTUUID}, name=\"esp\"\n\
             start={rs}, size={rsz}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid={ROOT_PARTUUID}, name=\"root\"\n",
            esp = ESP_MIB * 2048,
            rs = root_start * 2048,
            rsz = root_mib * 2048,
        );
        super::run_with_input(Command::new("sfdisk").arg("-q").arg(&raw), &layout)
            .context("sfdisk (the partition table)")?;
        for (img, at) in [(&esp, 1), (&root_img, root_start)] {
            super::run(
                Command::new("dd")
                    .arg(format!("if={}", img.display()))
                    .arg(format!("of={}", raw.display()))
                    .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
                    .arg(format!("seek={at}")),
            )?;
        }
        let qcow2 = out.join("sluice-appliance.qcow2");
        let _ = fs::remove_file(&qcow2);
        super::run(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2", "-c"])
                .arg(&raw)
                .arg(&qcow2),
        )?;
        Ok(Built { raw, qcow2 })
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Disk use of a directory, MiB.
fn du_mib(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-s", "--block-size=1M"])
        .arg(dir)
        .output()
        .context("running du")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}
