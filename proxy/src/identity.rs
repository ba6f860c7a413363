//! Who is calling: the workload identity of a connection, from the eBPF probe's
//! attribution (pid, uid, task name, cgroup) completed from `/proc`.
//!
//! `/proc` is read once per connection, not per request. A process that has already
//! exited keeps the attribution the probe captured at connect time; only the executable
//! path and cgroup path are then unknown. Kubernetes pod UID and container id are parsed
//! from the cgroup path (systemd and cgroupfs drivers, containerd/CRI-O/docker).
//!
//! Namespace, pod and container names come from the kubelet's files on the node
//! ([`pods`]).
//!
//! Virtual keys and API-key fingerprints belong to the policy layer, not here.

pub mod networks;
pub mod pods;

use std::net::SocketAddr;

use crate::original_dst::Attribution;
use crate::record::Identity;

/// The identity of a connection from `peer`, with the probe's attribution if any and the
/// configured network its address lies in.
pub fn of_connection(
    peer: SocketAddr,
    attribution: Option<&Attribution>,
    pods: &pods::PodDirectory,
    networks: &networks::Networks,
) -> Identity {
    let mut id = Identity {
        client_addr: Some(peer.to_string()),
        network: networks.lookup(peer.ip()).cloned(),
        ..Identity::default()
    };
    let Some(a) = attribution else {
        return id;
    };
    id.pid = Some(a.tgid);
    id.uid = Some(a.uid);
    id.process = Some(a.comm.clone());
    id.cgroup_id = Some(a.cgroup_id);
    let proc_dir = format!("/proc/{}", a.tgid);
    id.exe = std::fs::read_link(format!("{proc_dir}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    id.cgroup = std::fs::read_to_string(format!("{proc_dir}/cgroup"))
        .ok()
        .and_then(|text| unified_path(&text).map(str::to_string));
    if let Some(path) = id.cgroup.as_deref() {
        let (pod, container) = kubernetes(path, &pods.config().cgroup_prefix);
        id.kubernetes = pod
            .as_deref()
            .and_then(|uid| pods.lookup(uid, container.as_deref()));
        id.pod_uid = pod;
        id.container_id = container;
    }
    id
}

/// The cgroup v2 path from `/proc/<pid>/cgroup` (the `0::` line).
fn unified_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Pod UID and container id from a kubelet cgroup path, e.g.
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-abcd.scope`
/// or `/kubepods/besteffort/pod1234-5678/abcd`.
///
/// Only the kubelet's own subtree counts: after `prefix` (the node's cgroup root as the
/// probe sees it, `kubernetes.cgroup_prefix`, usually empty) and the `..` a cgroup
/// namespace puts in front, the first segment must be `kubepods…`. A user with a
/// delegated cgroup (systemd gives every login one) can name a sub-cgroup
/// `kubepods-x.slice/pod<uid>.slice` under `user.slice`; that is not a pod, and must not
/// borrow one's identity.
pub fn kubernetes(cgroup: &str, prefix: &str) -> (Option<String>, Option<String>) {
    let Some(rest) = cgroup.strip_prefix(prefix.trim_end_matches('/')) else {
        return (None, None);
    };
    let first = rest.split('/').find(|s| !s.is_empty() && *s != "..");
    if !first.is_some_and(|s| s.starts_with("kubepods")) {
        return (None, None);
    }
    let mut pod = None;
    let mut container = None;
    for seg in rest.split('/') {
        let seg = seg.strip_suffix(".slice").unwrap_or(seg);
        if let Some(i) = seg.rfind("pod") {
            let uid = &seg[i + 3..];
            if uid.len() >= 32
                && uid
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == '_' || c == '-')
            {
                // The systemd driver escapes '-' in the UID as '_'.
                pod = Some(uid.replace('_', "-"));
                continue;
            }
        }
        if pod.is_some() {
            let seg = seg.strip_suffix(".scope").unwrap_or(seg);
            let id = seg.rsplit('-').next().unwrap_or(seg);
            if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                container = Some(id.to_string());
            }
        }
    }
    (pod, container)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4f6d8a1c2b3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90";

    #[test]
    fn systemd_driver_paths() {
        let path = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b5c7c9e_1c2d_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-{CID}.scope");
        let (pod, c) = kubernetes(&path, "");
        assert_eq!(pod.as_deref(), Some("0b5c7c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert_eq!(c.as_deref(), Some(CID));
    }

    /// The attack: an unprivileged user names cgroups in the subtree systemd delegated to
    /// them after a pod, to be attributed (and governed, and rate-limited, and billed) as
    /// that pod. Not a pod; nor a look-alike outside the configured node root.
    #[test]
    fn a_user_cgroup_dressed_as_a_pod_is_not_one() {
        let uid = "0b5c7c9e_1c2d_4e5f_8a9b_0c1d2e3f4a5b";
        for path in [
            format!("/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{CID}.scope"),
            format!("/system.slice/evil.service/kubepods/besteffort/pod{uid}/{CID}"),
            format!("/elsewhere/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{CID}.scope"),
        ] {
            assert_eq!(kubernetes(&path, ""), (None, None), "{path}");
            assert_eq!(kubernetes(&path, "/node-root"), (None, None), "{path}");
        }
        // A private cgroup namespace puts `..` in front; a configured node root is honoured.
        let real = format!("/../../kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{CID}.scope");
        assert!(kubernetes(&real, "").0.is_some());
        let rooted =
            format!("/node-root/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{CID}.scope");
        assert!(kubernetes(&rooted, "/node-root").0.is_some());
        assert_eq!(kubernetes(&rooted, "").0, None);
    }

    #[test]
    fn cgroupfs_driver_paths() {
        let path = format!("/kubepods/besteffort/pod0b5c7c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b/{CID}");
        let (pod, c) = kubernetes(&path, "");
        assert_eq!(pod.as_deref(), Some("0b5c7c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert_eq!(c.as_deref(), Some(CID));
    }

    #[test]
    fn non_kubernetes_paths() {
        assert_eq!(
            kubernetes("/user.slice/user-0.slice/session-1.scope", ""),
            (None, None)
        );
        assert_eq!(
            unified_path("12:pids:/x\n0::/system.slice/sluice.service\n"),
            Some("/system.slice/sluice.service")
        );
    }

    #[test]
    fn own_process_is_attributed_from_proc() {
        let me = std::process::id();
        let a = Attribution {
            pid: me,
            tgid: me,
            uid: 0,
            comm: "test".into(),
            cgroup_id: 1,
        };
        let pods = pods::PodDirectory::new(pods::KubernetesConfig::default());
        let id = of_connection(
            "127.0.0.1:1".parse().unwrap(),
            Some(&a),
            &pods,
            &networks::Networks::default(),
        );
        assert_eq!(id.pid, Some(me));
        assert!(id.exe.is_some(), "our own executable is readable");
        assert_eq!(id.process.as_deref(), Some("test"));
    }
}
