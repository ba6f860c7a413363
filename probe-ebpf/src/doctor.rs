//! Preflight checks for the redirect probe (`sluice doctor`), and mounting
//! bpffs when pinning needs it.

use std::io;
use std::path::Path;

use crate::loader::{load_program, PROGRAMS};

/// bpffs `statfs` magic (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Capabilities bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// One preflight check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether the probe can rely on it.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when `ok` is false.
    pub fix: Option<String>,
}

impl Check {
    fn new(
        name: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
        fix: Option<&str>,
    ) -> Self {
        Self {
            name: name.into(),
            ok,
            detail: detail.into(),
            fix: if ok { None } else { fix.map(str::to_owned) },
        }
    }
}

/// Checks what the probe needs on this host: privileges, the bpf syscall,
/// BTF, the cgroup v2 mount, bpffs, and that the kernel loads (verifies)
/// every program. Has no lasting effect: loaded programs are not attached
/// and are freed before returning.
pub fn doctor() -> Vec<Check> {
    let mut checks = vec![privileges()];

    let object = crate::loader::OBJECT;
    let mut ebpf = match aya::EbpfLoader::new().load(object) {
        Ok(ebpf) => {
            checks.push(Check::new(
                "bpf syscall",
                true,
                "object parsed, maps created",
                None,
            ));
            Some(ebpf)
        }
        Err(e) => {
            checks.push(Check::new(
                "bpf syscall",
                false,
                e.to_string(),
                Some("run as root or with CAP_BPF+CAP_NET_ADMIN; the kernel needs CONFIG_BPF_SYSCALL"),
            ));
            None
        }
    };

    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    checks.push(Check::new(
        "kernel BTF",
        btf,
        if btf { "/sys/kernel/btf/vmlinux present" } else { "/sys/kernel/btf/vmlinux missing" },
        Some("not needed by the probe (no CO-RE) but by bpftool and debugging; use a kernel with CONFIG_DEBUG_INFO_BTF"),
    ));

    checks.push(match crate::unified_cgroup_root() {
        Ok(root) => Check::new(
            "cgroup v2",
            true,
            format!("mounted at {}", root.display()),
            None,
        ),
        Err(e) => Check::new(
            "cgroup v2",
            false,
            e.to_string(),
            Some("mount -t cgroup2 none /sys/fs/cgroup/unified"),
        ),
    });

    let bpffs = is_bpffs(Path::new(BPFFS_ROOT)).unwrap_or(false);
    checks.push(Check::new(
        "bpffs",
        bpffs,
        if bpffs {
            "mounted at /sys/fs/bpf"
        } else {
            "/sys/fs/bpf is not bpffs"
        },
        Some("mount -t bpf bpf /sys/fs/bpf (needed only with pin_dir)"),
    ));

    for (program, kind, _) in PROGRAMS {
        let name = format!("program {program} loads");
        checks.push(
            match ebpf.as_mut().map(|e| load_program(e, program, kind)) {
                Some(Ok(())) => Check::new(name, true, "verifier accepted it", None),
                Some(Err(e)) => Check::new(
                    name,
                    false,
                    e.to_string(),
                    Some("kernel >= 6.1 needed; see the verifier log"),
                ),
                None => Check::new(
                    name,
                    false,
                    "not tried: the object did not load",
                    Some("fix `bpf syscall` first"),
                ),
            },
        );
    }
    checks
}

fn privileges() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    let ok = (has(CAP_BPF) || has(CAP_SYS_ADMIN)) && has(CAP_NET_ADMIN);
    Check::new(
        "privileges",
        ok,
        format!("CapEff={cap_eff:#x}"),
        Some("run as root, or grant CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels < 5.8)"),
    )
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: zeroed statfs is a valid out-buffer; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 or u32 depending on the libc target"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Creates `dir` on bpffs, mounting bpffs at /sys/fs/bpf first when `dir`
/// is under it and nothing is mounted there yet (systemd usually does it;
/// minimal hosts and containers often do not).
///
/// # Errors
/// When `dir`'s parent is not on bpffs, or the mount or mkdir fails.
pub(crate) fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    if dir.starts_with(BPFFS_ROOT) {
        mount_bpffs()?;
    }
    std::fs::create_dir_all(dir)?;
    if !is_bpffs(dir)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not on bpffs", dir.display()),
        ));
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf (mode 0700) unless it is mounted there already, as
/// `sluice run` does before pinning; `sluice demo` does it so `sluice doctor`'s checks
/// pass on a fresh host.
///
/// # Errors
/// The mount fails (not root, or no bpffs in this kernel).
pub fn mount_bpffs() -> io::Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if !is_bpffs(root).unwrap_or(false) {
        std::fs::create_dir_all(root)?;
        // SAFETY: NUL-terminated string literals.
        let ret = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    Ok(())
}
