//! Finding the cgroup v2 hierarchy and naming cgroups by id.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::ProbeError;

/// The mount point of the cgroup v2 (unified) hierarchy: `/sys/fs/cgroup` on
/// a pure v2 host, `/sys/fs/cgroup/unified` in the hybrid layout.
///
/// # Errors
/// [`ProbeError::NoCgroup2`] when no cgroup2 file system is mounted;
/// [`ProbeError::Sys`] when `/proc/self/mountinfo` cannot be read.
pub fn unified_cgroup_root() -> Result<PathBuf, ProbeError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| ProbeError::Sys {
            what: "reading /proc/self/mountinfo",
            source,
        })?;
    cgroup2_mount(&mountinfo).ok_or(ProbeError::NoCgroup2)
}

/// First cgroup2 mount point in a mountinfo text (proc(5)): the file system
/// type follows the ` - ` separator; the mount point is field 5 with spaces
/// etc. octal-escaped.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape(p)))
    })
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')));
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The id of a cgroup v2 directory, as `bpf_get_current_cgroup_id()` reports
/// it for its processes: the kernfs inode number (64-bit kernels ≥ 5.5).
///
/// # Errors
/// [`ProbeError::Cgroup`] when the path cannot be stat'ed.
pub fn cgroup_id(path: &Path) -> Result<u64, ProbeError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| ProbeError::Cgroup {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_unified_mount() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_pure_v2_mount_and_unescapes() {
        let mountinfo =
            "35 24 0:30 / /sys/fs/my\\040cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/my cgroup"))
        );
        assert_eq!(
            cgroup2_mount("25 30 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"),
            None
        );
    }
}
