//! Kubernetes pod metadata for attribution, read from the kubelet's files on the node.
//!
//! The cgroup path gives a connection's pod UID and container id (see
//! [`super::kubernetes`]); this module turns them into names a person reads — namespace,
//! pod, container — with no API access at all, from what every kubelet writes:
//!
//! - `/var/log/pods/<namespace>_<pod>_<uid>/` — one directory a pod;
//! - `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` — one symlink a
//!   container.
//!
//! Names in both are DNS-1123 (no `_`), so the separators are unambiguous. Lookups hit an
//! in-memory table; a miss rescans the two directories at most once per
//! [`RESCAN_EVERY`], so a connection from an unknown cgroup never costs more than one
//! `readdir` pair a second.
//!
//! Labels and the service account are not in these files: they come from the Kubernetes
//! API when it is reachable and RBAC allows (`kubernetes.api: auto`): a watch of this
//! node's pods (`spec.nodeName`), on a thread of its own, off the request path, fills a
//! second table the lookup merges ([`api`]). Without it, records still name namespace,
//! pod and container, and scopes on labels or service accounts match no pod.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::Deserialize;

pub use crate::record::PodRef;

pub mod api;

/// How often a lookup miss may rescan the kubelet's directories.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Where the kubelet's files are (`kubernetes:` in the config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// The kubelet's pod log directory. Default: `/var/log/pods`. In the DaemonSet it is
    /// the host's, mounted read-only.
    pub pod_logs: PathBuf,
    /// The kubelet's container log symlinks. Default: `/var/log/containers`.
    pub container_logs: PathBuf,
    /// Watch this node's pods in the Kubernetes API for labels and service accounts:
    /// `auto` (when running in a cluster, or with `$KUBECONFIG`, and the node's name is
    /// known) or `off`. Default: auto.
    pub api: ApiMode,
    /// This node's name (the watch's `spec.nodeName`). Default: `$NODE_NAME`.
    pub node_name: Option<String>,
    /// The node's cgroup root as processes' `/proc/<pid>/cgroup` names it, when the
    /// kubelet's `kubepods` tree is not at the root of the hierarchy. Only cgroups under
    /// `<prefix>/kubepods…` are pods. Default: empty (the root).
    pub cgroup_prefix: String,
}

/// Whether the Kubernetes API is watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiMode {
    /// When a cluster is reachable and the node's name known.
    #[default]
    Auto,
    /// Never: the kubelet's files only.
    Off,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            pod_logs: PathBuf::from("/var/log/pods"),
            container_logs: PathBuf::from("/var/log/containers"),
            api: ApiMode::Auto,
            node_name: None,
            cgroup_prefix: String::new(),
        }
    }
}

#[derive(Default)]
struct Table {
    /// Pod UID → (namespace, pod).
    pods: HashMap<String, (String, String)>,
    /// Container id → container name.
    containers: HashMap<String, String>,
    scanned: Option<Instant>,
}

/// The node's pods, by UID.
pub struct PodDirectory {
    config: KubernetesConfig,
    table: Mutex<Table>,
    /// Pods as the API describes them, by UID (filled by [`api::watch`]).
    api: RwLock<HashMap<String, api::ApiPod>>,
}

impl PodDirectory {
    /// A directory over the kubelet files `config` names; nothing is read until a lookup.
    pub fn new(config: KubernetesConfig) -> Self {
        PodDirectory {
            config,
            table: Mutex::new(Table::default()),
            api: RwLock::new(HashMap::new()),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// The pod with `uid` (and its container `container_id`), if the kubelet's files or the
    /// API watch name it; labels and service account from the API. A miss in the files
    /// rescans them at most once per [`RESCAN_EVERY`].
    pub fn lookup(&self, uid: &str, container_id: Option<&str>) -> Option<PodRef> {
        let from_files = self.in_files(uid, container_id);
        let api = self.api.read();
        let Some(pod) = api.get(uid) else {
            return from_files;
        };
        let mut found = from_files.unwrap_or_else(|| PodRef {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            ..PodRef::default()
        });
        if found.container.is_none() {
            found.container = container_id.and_then(|c| pod.containers.get(c).cloned());
        }
        found.service_account = pod.service_account.clone();
        found.labels = pod.labels.clone();
        Some(found)
    }

    fn in_files(&self, uid: &str, container_id: Option<&str>) -> Option<PodRef> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let known = |t: &Table| {
            t.pods.contains_key(uid) && container_id.is_none_or(|c| t.containers.contains_key(c))
        };
        if !known(&table) && table.scanned.is_none_or(|at| at.elapsed() >= RESCAN_EVERY) {
            table.pods = scan_pods(&self.config.pod_logs);
            table.containers = scan_containers(&self.config.container_logs);
            table.scanned = Some(Instant::now());
        }
        let (namespace, pod) = table.pods.get(uid)?.clone();
        Some(PodRef {
            namespace,
            pod,
            container: container_id.and_then(|c| table.containers.get(c).cloned()),
            ..PodRef::default()
        })
    }
}

/// `<namespace>_<pod>_<uid>` directories.
fn scan_pods(dir: &Path) -> HashMap<String, (String, String)> {
    names(dir)
        .filter_map(|name| {
            let mut parts = name.splitn(3, '_');
            let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
            (!ns.is_empty() && !pod.is_empty() && !uid.is_empty())
                .then(|| (uid.to_string(), (ns.to_string(), pod.to_string())))
        })
        .collect()
}

/// `<pod>_<namespace>_<container>-<64 hex>.log` links.
fn scan_containers(dir: &Path) -> HashMap<String, String> {
    names(dir)
        .filter_map(|name| {
            let stem = name.strip_suffix(".log")?;
            let (front, id) = stem.rsplit_once('-')?;
            if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let container = front.splitn(3, '_').nth(2)?;
            (!container.is_empty()).then(|| (id.to_string(), container.to_string()))
        })
        .collect()
}

fn names(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5c7c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    const CID: &str = "4f6d8a1c2b3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90";

    fn kubelet(dir: &Path) -> KubernetesConfig {
        let config = KubernetesConfig {
            pod_logs: dir.join("pods"),
            container_logs: dir.join("containers"),
            ..KubernetesConfig::default()
        };
        std::fs::create_dir_all(&config.pod_logs).unwrap();
        std::fs::create_dir_all(&config.container_logs).unwrap();
        config
    }

    #[test]
    fn names_pod_and_container_from_kubelet_files() {
        let dir = crate::testing::TempDir::new("pods");
        let config = kubelet(dir.path());
        std::fs::create_dir(config.pod_logs.join(format!("team-a_chat-7d9f_{UID}"))).unwrap();
        std::fs::write(
            config
                .container_logs
                .join(format!("chat-7d9f_team-a_app-{CID}.log")),
            "",
        )
        .unwrap();
        // Files that are not the kubelet's are ignored.
        std::fs::write(config.container_logs.join("README"), "").unwrap();
        std::fs::write(config.container_logs.join("x_y_z-short.log"), "").unwrap();

        let pods = PodDirectory::new(config);
        let found = pods.lookup(UID, Some(CID)).unwrap();
        assert_eq!(found.namespace, "team-a");
        assert_eq!(found.pod, "chat-7d9f");
        assert_eq!(found.container.as_deref(), Some("app"));
        assert_eq!(pods.lookup("no-such-uid", None), None);
    }

    #[test]
    fn a_pod_started_later_is_found_after_the_rescan_interval() {
        let dir = crate::testing::TempDir::new("pods");
        let config = kubelet(dir.path());
        let pods = PodDirectory::new(config.clone());
        assert_eq!(pods.lookup(UID, None), None);
        std::fs::create_dir(config.pod_logs.join(format!("ns_p_{UID}"))).unwrap();
        // Within the interval a miss does not rescan …
        assert_eq!(pods.lookup(UID, None), None);
        // … after it, it does.
        pods.table.lock().unwrap().scanned = Some(Instant::now() - RESCAN_EVERY);
        assert_eq!(pods.lookup(UID, None).unwrap().pod, "p");
    }

    #[test]
    fn missing_directories_are_no_error() {
        let pods = PodDirectory::new(KubernetesConfig {
            pod_logs: "/nonexistent/pods".into(),
            container_logs: "/nonexistent/containers".into(),
            ..KubernetesConfig::default()
        });
        assert_eq!(pods.lookup(UID, None), None);
    }
}
