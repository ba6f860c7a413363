//! Loading the embedded object, attaching it to cgroups and operating its
//! maps: the [`Probe`] handle.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{CgroupSockAddr, CgroupSockopt, SockOps};
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info};

use crate::cgroup::cgroup_id;
use crate::maps::{self, name, ConfigValue, OrigValue, PortsValue, StatSlot, TargetValue};
use crate::sys::{self, AttachType, CgroupLink};
use crate::{Original, ProbeConfig, ProbeError, ProviderPrefix, ProxyDownPolicy, Stats};

/// The object built by build.rs from `bpf/redirect.bpf.c`. Aligned: the ELF
/// parser rejects a misaligned buffer, and plain `include_bytes!` gives
/// alignment 1.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// Which aya program type to load a function as.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    SockAddr,
    SockOps,
    Sockopt,
}

/// Every program in the object: function name, how to load it, where it
/// attaches. `attach()` takes all but the getsockopt program.
pub(crate) const PROGRAMS: [(&str, Kind, AttachType); 8] = [
    ("sluice_connect4", Kind::SockAddr, AttachType::Inet4Connect),
    ("sluice_connect6", Kind::SockAddr, AttachType::Inet6Connect),
    ("sluice_sockops", Kind::SockOps, AttachType::SockOps),
    (
        "sluice_getpeername4",
        Kind::SockAddr,
        AttachType::Inet4Getpeername,
    ),
    (
        "sluice_getpeername6",
        Kind::SockAddr,
        AttachType::Inet6Getpeername,
    ),
    ("sluice_sendmsg4", Kind::SockAddr, AttachType::Udp4Sendmsg),
    ("sluice_sendmsg6", Kind::SockAddr, AttachType::Udp6Sendmsg),
    ("sluice_getsockopt", Kind::Sockopt, AttachType::Getsockopt),
];

/// Parses the embedded object, creates its maps and loads (verifies) every
/// program. Shared with `doctor`.
pub(crate) fn load_object() -> Result<Ebpf, ProbeError> {
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    for (program, kind, _) in PROGRAMS {
        load_program(&mut ebpf, program, kind)?;
    }
    Ok(ebpf)
}

pub(crate) fn load_program(
    ebpf: &mut Ebpf,
    program: &'static str,
    kind: Kind,
) -> Result<(), ProbeError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| ProbeError::Missing(format!("program `{program}`")))?;
    let wrap = |source| ProbeError::Program { program, source };
    match kind {
        Kind::SockAddr => <&mut CgroupSockAddr>::try_from(prog).map_err(wrap)?.load(),
        Kind::SockOps => <&mut SockOps>::try_from(prog).map_err(wrap)?.load(),
        Kind::Sockopt => <&mut CgroupSockopt>::try_from(prog).map_err(wrap)?.load(),
    }
    .map_err(wrap)
}

/// The loaded redirect programs and their maps.
///
/// Dropping a `Probe` detaches its programs unless [`ProbeConfig::pin_dir`]
/// was set; [`Probe::detach`] always detaches and unpins.
#[derive(Debug)]
pub struct Probe {
    ebpf: Ebpf,
    config: ConfigValue,
    links: Vec<CgroupLink>,
    pin_dir: Option<PathBuf>,
    pinned_maps: Vec<PathBuf>,
    /// The previous run's pinned counters: everything its programs counted, up to this
    /// load replacing them — the fail-open connections while no proxy ran included — so
    /// the counters run on across restarts.
    carried: Stats,
}

// === impl Probe ===

impl Probe {
    /// Loads and verifies all programs, creates the maps, writes the
    /// configuration and a first heartbeat. Nothing is attached yet.
    ///
    /// The calling process's network namespace is taken as the host's:
    /// callers in any other netns are sent to the pod-facing addresses.
    ///
    /// # Errors
    /// [`ProbeError::Object`] / [`ProbeError::Program`] when the kernel
    /// refuses the maps or a program (the verifier log is included);
    /// [`ProbeError::Sys`] when the netns cookie or clock cannot be read;
    /// [`ProbeError::Pin`] when `pin_dir` is not on bpffs.
    ///
    /// # Minimum kernel version
    /// 6.1: `bpf_get_current_comm` and `bpf_get_current_pid_tgid` reach
    /// cgroup sock_addr programs through `cgroup_current_func_proto` (6.1);
    /// `SO_NETNS_COOKIE` needs 5.14, `bpf_get_netns_cookie` in sock_addr 5.7.
    /// Tested on 6.18.
    pub fn load(cfg: &ProbeConfig) -> Result<Probe, ProbeError> {
        let ebpf = load_object()?;
        let config = ConfigValue {
            host_netns_cookie: host_netns_cookie()?,
            heartbeat_timeout_ns: u64::try_from(cfg.heartbeat_timeout.as_nanos())
                .unwrap_or(u64::MAX),
            proxy_cgroup_id: 0,
            mark: cfg.mark,
            on_proxy_down: match cfg.on_proxy_down {
                ProxyDownPolicy::FailOpen => 0,
                ProxyDownPolicy::FailClosed => 1,
            },
            host_v4: TargetValue::from_addr(Some(cfg.proxy_v4.into())),
            host_v6: TargetValue::from_addr(cfg.proxy_v6.map(Into::into)),
            pod_v4: TargetValue::from_addr(cfg.pod_facing_v4.map(Into::into)),
            pod_v6: TargetValue::from_addr(cfg.pod_facing_v6.map(Into::into)),
        };
        let mut probe = Probe {
            ebpf,
            config,
            links: Vec::new(),
            pin_dir: cfg.pin_dir.clone(),
            pinned_maps: Vec::new(),
            carried: Stats::default(),
        };
        probe.write_config()?;
        probe.heartbeat()?;
        if let Some(dir) = cfg.pin_dir.clone() {
            // Read before the new pins replace them: the old programs counted into these.
            probe.carried = pinned_stats(&dir.join(format!("map_{}", name::STATS)));
            probe.pin_maps(&dir)?;
        }
        info!(proxy = %cfg.proxy_v4, host_netns_cookie = config.host_netns_cookie, "redirect probe loaded");
        Ok(probe)
    }

    /// Attaches connect4/6, sockops, getpeername4/6 and sendmsg4/6 to a
    /// cgroup v2 directory: every process in it and its descendants is then
    /// redirected. All or nothing: on error nothing stays attached.
    ///
    /// # Errors
    /// [`ProbeError::Cgroup`] when the directory cannot be opened,
    /// [`ProbeError::Attach`] when the kernel refuses a link,
    /// [`ProbeError::Pin`] when pinning fails.
    ///
    /// # Minimum kernel version
    /// 5.7 (cgroup bpf links); getpeername hooks 5.8.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), ProbeError> {
        let mut new = Vec::new();
        for (program, kind, attach_type) in PROGRAMS {
            if matches!(kind, Kind::Sockopt) {
                continue; // proxy cgroup only: attach_getsockopt
            }
            // On error `new` drops, closing (detaching) what was attached.
            new.push(self.link(program, attach_type, cgroup)?);
        }
        self.keep(new)?;
        info!(cgroup = %cgroup.display(), "redirect programs attached");
        Ok(())
    }

    /// Attaches the `cgroup/getsockopt` program, which answers
    /// `SO_ORIGINAL_DST` (SOL_IP) and `IP6T_SO_ORIGINAL_DST` (SOL_IPV6) on
    /// the proxy's accepted sockets, to the proxy's own cgroup. It runs after
    /// every getsockopt() of sockets created there, so never attach it
    /// higher up. Also stops connect4/6 from redirecting that cgroup.
    ///
    /// # Errors
    /// As [`Probe::attach`]; [`ProbeError::Map`] when the config update fails.
    ///
    /// # Minimum kernel version
    /// 5.7 (cgroup bpf links; cgroup sockopt programs 5.3).
    pub fn attach_getsockopt(&mut self, proxy_cgroup: &Path) -> Result<(), ProbeError> {
        let link = self.link("sluice_getsockopt", AttachType::Getsockopt, proxy_cgroup)?;
        let proxy_cgroup_id = link.cgroup_id;
        self.keep(vec![link])?;
        self.config.proxy_cgroup_id = proxy_cgroup_id;
        self.write_config()
    }

    /// Replaces the provider set. New entries are inserted before stale ones
    /// are removed, so a prefix present in both sets is never missing.
    ///
    /// # Errors
    /// [`ProbeError::InvalidPrefix`] for more than 8 ports on a prefix or
    /// port 0;
    /// [`ProbeError::Map`] when the trie is full (16384 entries per family).
    pub fn set_providers(&mut self, prefixes: &[ProviderPrefix]) -> Result<(), ProbeError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for p in prefixes {
            let invalid = |reason| ProbeError::InvalidPrefix {
                prefix: p.net.to_string(),
                reason,
            };
            if p.ports.len() > maps::MAX_PORTS {
                return Err(invalid("more than 8 ports"));
            }
            if p.ports.contains(&0) {
                // 0 marks an unused slot in the map value.
                return Err(invalid("port 0; leave the list empty for every port"));
            }
            let mut value = PortsValue::default();
            value.ports[..p.ports.len()].copy_from_slice(&p.ports);
            match (p.net.addr(), p.net.len()) {
                (IpAddr::V4(a), len) => {
                    v4.push((Key::new(len.into(), maps::masked_v4(a, len)), value))
                }
                // ::ffff:0:0/96 and longer denote IPv4 addresses, which
                // connect6 looks up in the v4 trie.
                (IpAddr::V6(a), len) => match a.to_ipv4_mapped() {
                    Some(a4) if len >= 96 => {
                        v4.push((
                            Key::new((len - 96).into(), maps::masked_v4(a4, len - 96)),
                            value,
                        ));
                    }
                    _ => v6.push((Key::new(len.into(), maps::masked_v6(a, len)), value)),
                },
            }
        }
        replace_trie(&mut self.ebpf, name::PROVIDER_V4, &v4)?;
        replace_trie(&mut self.ebpf, name::PROVIDER_V6, &v6)?;
        debug!(v4 = v4.len(), v6 = v6.len(), "provider prefixes replaced");
        Ok(())
    }

    /// Records that the proxy is alive (`CLOCK_MONOTONIC`, the clock of
    /// `bpf_ktime_get_ns`). Call it at least every
    /// [`ProbeConfig::heartbeat_timeout`].
    ///
    /// # Errors
    /// [`ProbeError::Sys`] when the clock or the map update fails.
    pub fn heartbeat(&self) -> Result<(), ProbeError> {
        let now = monotonic_ns()?;
        let aya::maps::Map::Array(data) = self.map(name::HEARTBEAT)? else {
            return Err(ProbeError::Missing("array map `heartbeat`".into()));
        };
        sys::map_update(data.fd().as_fd(), &0u32, &now).map_err(|source| ProbeError::Sys {
            what: "writing the heartbeat map",
            source,
        })
    }

    /// The original destination and attribution of a connection the proxy
    /// accepted: `peer` and `local` are the accepted socket's peer and local
    /// addresses. `None` if the connection was not redirected by this probe
    /// or its entry was evicted (LRU, 65536 entries).
    pub fn original(&self, peer: SocketAddr, local: SocketAddr) -> Option<Original> {
        let map = self.map(name::ORIG_BY_TUPLE).ok()?;
        let tuples: HashMap<&MapData, maps::TupleKey, OrigValue> = HashMap::try_from(map).ok()?;
        let v = tuples.get(&maps::tuple_key(peer, local), 0).ok()?;
        Some(Original {
            dst: v.dst(),
            pid: v.pid,
            tgid: v.tgid,
            uid: v.uid,
            comm: v.comm(),
            cgroup_id: v.cgroup_id,
            netns_cookie: v.netns_cookie,
        })
    }

    /// Counters summed over CPUs, plus what the previous run's pinned programs counted
    /// (see [`pinned_stats`]); zeros if the map cannot be read.
    pub fn stats(&self) -> Stats {
        let Ok(map) = self.map(name::STATS) else {
            return self.carried;
        };
        let Ok(array) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return self.carried;
        };
        stats_of(&array).plus(&self.carried)
    }

    /// Detaches every program and removes this probe's pins (links, maps,
    /// and the pin directory if it is then empty).
    ///
    /// # Errors
    /// [`ProbeError::Pin`] when a pin cannot be removed; the programs are
    /// detached from this process's side regardless.
    pub fn detach(mut self) -> Result<(), ProbeError> {
        let mut first_err = None;
        for link in &mut self.links {
            if let Err(source) = link.unpin() {
                first_err.get_or_insert(ProbeError::Pin {
                    path: self.pin_dir.clone().unwrap_or_default(),
                    source,
                });
            }
        }
        for path in self.pinned_maps.drain(..) {
            if let Err(source) = std::fs::remove_file(&path) {
                first_err.get_or_insert(ProbeError::Pin { path, source });
            }
        }
        if let Some(dir) = &self.pin_dir {
            // Only succeeds when empty: another run's pins stay.
            let _ = std::fs::remove_dir(dir);
        }
        // Closing the last fd of an unpinned link detaches it.
        self.links.clear();
        info!("redirect programs detached");
        first_err.map_or(Ok(()), Err)
    }

    // --- internals ---

    fn map(&self, map: &'static str) -> Result<&aya::maps::Map, ProbeError> {
        self.ebpf
            .map(map)
            .ok_or_else(|| ProbeError::Missing(format!("map `{map}`")))
    }

    fn write_config(&mut self) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(name::CONFIG)
            .ok_or_else(|| ProbeError::Missing(format!("map `{}`", name::CONFIG)))?;
        let mut array: Array<&mut MapData, ConfigValue> =
            Array::try_from(map).map_err(map_err(name::CONFIG))?;
        // Single-entry array: index 0 is the only slot.
        array.set(0, self.config, 0).map_err(map_err(name::CONFIG))
    }

    fn link(
        &mut self,
        program: &'static str,
        attach_type: AttachType,
        cgroup: &Path,
    ) -> Result<CgroupLink, ProbeError> {
        let cgroup_err = |source| ProbeError::Cgroup {
            path: cgroup.to_owned(),
            source,
        };
        let dir = File::open(cgroup).map_err(cgroup_err)?;
        let id = cgroup_id(cgroup)?;
        let prog = self
            .ebpf
            .program(program)
            .ok_or_else(|| ProbeError::Missing(format!("program `{program}`")))?;
        let fd = prog
            .fd()
            .map_err(|source| ProbeError::Program { program, source })?;
        CgroupLink::create(program, fd.as_fd(), dir.as_fd(), id, attach_type).map_err(|source| {
            ProbeError::Attach {
                program,
                cgroup: cgroup.to_owned(),
                source,
            }
        })
    }

    /// Pins (if configured) and keeps newly created links. On a pin error
    /// the new links are dropped, i.e. detached again.
    fn keep(&mut self, mut new: Vec<CgroupLink>) -> Result<(), ProbeError> {
        if let Some(dir) = &self.pin_dir {
            ensure_dir(dir)?;
            for i in 0..new.len() {
                let link = &mut new[i];
                let path = dir.join(format!("link_{}_{}", link.program, link.cgroup_id));
                if let Err(source) = link.pin(&path) {
                    // All or nothing: drop the pins already made, so the
                    // links close (detach) with `new`.
                    for done in &mut new[..i] {
                        let _ = done.unpin();
                    }
                    return Err(ProbeError::Pin { path, source });
                }
            }
        }
        self.links.extend(new);
        Ok(())
    }

    fn pin_maps(&mut self, dir: &Path) -> Result<(), ProbeError> {
        ensure_dir(dir)?;
        for map_name in name::ALL {
            let map = self.map(map_name)?;
            let path = dir.join(format!("map_{map_name}"));
            let tmp = sys::tmp_pin_path(&path);
            map.pin(&tmp).map_err(|e| ProbeError::Pin {
                path: tmp.clone(),
                source: std::io::Error::other(e),
            })?;
            // Replace a previous run's pin atomically (see CgroupLink::pin).
            std::fs::rename(&tmp, &path).map_err(|source| ProbeError::Pin {
                path: path.clone(),
                source,
            })?;
            self.pinned_maps.push(path);
        }
        Ok(())
    }
}

/// The counters of a stats array, summed over CPUs.
fn stats_of<T: std::borrow::Borrow<MapData>>(array: &PerCpuArray<T, u64>) -> Stats {
    let read = |slot: StatSlot| -> u64 {
        array
            .get(&(slot as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    };
    Stats {
        redirected: read(StatSlot::Redirected),
        skipped_marked: read(StatSlot::SkippedMarked),
        skipped_proxy_cgroup: read(StatSlot::SkippedProxyCgroup),
        fail_open: read(StatSlot::FailOpen),
        fail_closed: read(StatSlot::FailClosed),
        quic_refused: read(StatSlot::QuicRefused),
        getpeername_rewritten: read(StatSlot::GetpeernameRewritten),
        no_proxy_addr: read(StatSlot::NoProxyAddr),
        tuple_recorded: read(StatSlot::TupleRecorded),
        original_dst_answered: read(StatSlot::OriginalDstAnswered),
    }
}

/// The counters a previous run left pinned at `path` (zeros when there is none): its
/// programs kept counting — fail-open connections above all — until this run replaced
/// them.
fn pinned_stats(path: &Path) -> Stats {
    let Ok(data) = MapData::from_pin(path) else {
        return Stats::default();
    };
    match PerCpuArray::<MapData, u64>::try_from(aya::maps::Map::PerCpuArray(data)) {
        Ok(array) => stats_of(&array),
        Err(_) => Stats::default(),
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { map, source }
}

/// Inserts every entry of `want`, then removes entries not in it.
fn replace_trie<K: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    map: &'static str,
    want: &[(Key<K>, PortsValue)],
) -> Result<(), ProbeError> {
    let m = ebpf
        .map_mut(map)
        .ok_or_else(|| ProbeError::Missing(format!("map `{map}`")))?;
    let mut trie: LpmTrie<&mut MapData, K, PortsValue> =
        LpmTrie::try_from(m).map_err(map_err(map))?;
    for (key, value) in want {
        trie.insert(key, value, 0).map_err(map_err(map))?;
    }
    // Collect first: deleting while walking get_next_key restarts the walk.
    let existing: Vec<Key<K>> = trie
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(map))?;
    for key in existing {
        let wanted = want
            .iter()
            .any(|(k, _)| k.prefix_len() == key.prefix_len() && k.data() == key.data());
        if !wanted {
            trie.remove(&key).map_err(map_err(map))?;
        }
    }
    Ok(())
}

fn ensure_dir(dir: &Path) -> Result<(), ProbeError> {
    crate::doctor::ensure_bpffs(dir).map_err(|source| ProbeError::Pin {
        path: dir.to_owned(),
        source,
    })
}

/// `SO_NETNS_COOKIE` of a socket created here: the cookie
/// `bpf_get_netns_cookie()` reports for sockets in this netns.
fn host_netns_cookie() -> Result<u64, ProbeError> {
    let sys = |source| ProbeError::Sys {
        what: "reading SO_NETNS_COOKIE (kernel >= 5.14)",
        source,
    };
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(sys)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length for an 8-byte option.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if ret != 0 {
        return Err(sys(std::io::Error::last_os_error()));
    }
    Ok(cookie)
}

fn monotonic_ns() -> Result<u64, ProbeError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(ProbeError::Sys {
            what: "clock_gettime(CLOCK_MONOTONIC)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}
