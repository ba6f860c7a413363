//! The raw `bpf(2)` calls aya 0.13 does not expose: cgroup links we can pin,
//! and a map update through a shared reference.
//!
//! Why not aya's `attach()`: aya 0.13 creates the same `BPF_LINK_CREATE` link
//! (with `CgroupAttachMode::Single`, i.e. flags 0; `AllowMultiple` passes
//! `BPF_F_ALLOW_MULTI`, which link_create rejects with EINVAL, aya#1078) but
//! its cgroup link types expose neither the fd nor a conversion to `FdLink`,
//! so they cannot be pinned. Pinning is what lets the redirect survive a
//! proxy restart, so we own the link fd here. A cgroup link is always
//! multi-attach in the kernel: other programs on the same cgroup keep running.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

// UAPI enum bpf_cmd / bpf_attach_type values (stable ABI, linux/bpf.h).
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Attach types used by the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum AttachType {
    SockOps = 3,
    Inet4Connect = 10,
    Inet6Connect = 11,
    Udp4Sendmsg = 14,
    Udp6Sendmsg = 15,
    Getsockopt = 21,
    Inet4Getpeername = 29,
    Inet6Getpeername = 30,
}

/// `bpf_attr` for BPF_LINK_CREATE, zero-padded: the kernel requires every
/// byte past the fields a command uses to be zero.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 6],
}

/// `bpf_attr` for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    _rest: [u64; 4],
}

/// `bpf_attr` for BPF_OBJ_PIN / BPF_OBJ_GET.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
    _rest: [u64; 4],
}

/// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
    _rest: [u64; 4],
}

/// Head of `struct bpf_link_info`: enough to identify a link.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _rest: [u32; 13],
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, correctly laid out and zero-padded bpf_attr
    // variant for `cmd`, and its size is passed along.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// A program attached to a cgroup. Dropping it closes the link fd: the
/// program detaches unless the link is pinned.
#[derive(Debug)]
pub(crate) struct CgroupLink {
    pub(crate) program: &'static str,
    pub(crate) cgroup_id: u64,
    fd: OwnedFd,
    pinned: Option<PathBuf>,
}

impl CgroupLink {
    /// BPF_LINK_CREATE with flags 0.
    ///
    /// Minimum kernel version: 5.7 (cgroup bpf links).
    pub(crate) fn create(
        program: &'static str,
        prog: BorrowedFd<'_>,
        cgroup: BorrowedFd<'_>,
        cgroup_id: u64,
        attach_type: AttachType,
    ) -> io::Result<Self> {
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: attach_type as u32,
            ..Default::default()
        };
        let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)?;
        // SAFETY: on success BPF_LINK_CREATE returns a new fd we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self {
            program,
            cgroup_id,
            fd,
            pinned: None,
        })
    }

    /// Pins the link at `path`, atomically replacing a link pinned there by
    /// an earlier run (pin under a temporary name, then rename over): the
    /// old link detaches only once the new one is in place.
    pub(crate) fn pin(&mut self, path: &Path) -> io::Result<()> {
        let tmp = tmp_pin_path(path);
        pin_fd(self.fd.as_fd(), &tmp)?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.pinned = Some(path.to_owned());
        Ok(())
    }

    /// Removes the pin, if it is still ours (a later run may have replaced
    /// it; that one must keep working). The link detaches on drop.
    pub(crate) fn unpin(&mut self) -> io::Result<()> {
        let Some(path) = self.pinned.take() else {
            return Ok(());
        };
        let pinned = match get_pinned(&path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if link_id(pinned.as_fd())? == link_id(self.fd.as_fd())? {
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }
}

/// Where to pin before renaming over `path`. No '.' in it: bpffs refuses
/// names with a dot (EPERM), they are reserved for its own files.
pub(crate) fn tmp_pin_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!("_new_{}", std::process::id()));
    path.with_file_name(name)
}

/// BPF_OBJ_PIN of any bpf fd (link, map, program) at `path` on bpffs.
pub(crate) fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let cpath = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// BPF_OBJ_GET: opens a pinned object.
fn get_pinned(path: &Path) -> io::Result<OwnedFd> {
    let cpath = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: cpath.as_ptr() as u64,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: on success BPF_OBJ_GET returns a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The kernel-wide id of a link, to tell our pin from a successor's.
fn link_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = LinkInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfoHead>() as u32,
        info: &mut info as *mut LinkInfoHead as u64,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.id)
}

/// BPF_MAP_UPDATE_ELEM (flags BPF_ANY). aya's typed maps want `&mut` for
/// updates; the kernel does not, and the heartbeat is written from `&self`.
pub(crate) fn map_update<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    key: &K,
    value: &V,
) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}
