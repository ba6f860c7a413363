//! This node's pods from the Kubernetes API: labels, service account and container names,
//! kept current by a watch (`spec.nodeName=<node>`) on a thread of its own.
//!
//! The client is the `kube` crate's, configured as every in-cluster client is (the pod's
//! service-account token and CA, or `$KUBECONFIG`). RBAC needs `get`, `list` and `watch`
//! on pods (the chart's ClusterRole; RBAC cannot narrow a role to one node's pods, the
//! field selector narrows what is sent). Errors are logged and retried with backoff and
//! never touch the request path: lookups then use the kubelet's files alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};

use super::{ApiMode, PodDirectory};

/// What the API says of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiPod {
    pub namespace: String,
    pub name: String,
    pub service_account: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Container id (without the `containerd://` scheme) → container name.
    pub containers: HashMap<String, String>,
}

impl ApiPod {
    /// The parts of `pod` attribution needs, with its UID.
    pub fn of(pod: &Pod) -> Option<(String, ApiPod)> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let mut containers = HashMap::new();
        if let Some(status) = &pod.status {
            let lists = [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ];
            for s in lists.into_iter().flatten().flatten() {
                if let Some(id) = &s.container_id {
                    let id = id.rsplit_once("://").map_or(id.as_str(), |(_, id)| id);
                    containers.insert(id.to_string(), s.name.clone());
                }
            }
        }
        Some((
            uid,
            ApiPod {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                service_account: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone()),
                labels: meta.labels.clone().unwrap_or_default(),
                containers,
            },
        ))
    }
}

/// The node to watch, when `kubernetes.api` and the environment call for a watch.
fn node_to_watch(dir: &PodDirectory) -> Option<String> {
    let config = dir.config();
    if config.api == ApiMode::Off {
        return None;
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some();
    let node = config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty());
    match (in_cluster, node) {
        (true, Some(node)) => Some(node),
        (true, None) => {
            tracing::warn!("kubernetes.api: this node's name is unknown (set $NODE_NAME or kubernetes.node_name): pod labels and service accounts are not watched");
            None
        }
        (false, _) => None,
    }
}

/// Starts the watch on a thread of its own when `kubernetes.api` and the environment
/// call for it.
pub fn start(dir: Arc<PodDirectory>) {
    let Some(node) = node_to_watch(&dir) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("sluice-kube-watch".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(watch(dir, node)),
                Err(e) => {
                    tracing::error!(error = %e, "kubernetes.api: cannot start the watch's runtime");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "kubernetes.api: cannot start the watch thread");
    }
}

/// Watches the pods of `node` until the process ends.
async fn watch(dir: Arc<PodDirectory>, node: String) {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "kubernetes.api: no client: pod labels and service accounts are not watched");
            return;
        }
    };
    tracing::info!(%node, "kubernetes.api: watching this node's pods");
    let pods: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(pods, config).default_backoff().boxed();
    let mut buffer: HashMap<String, ApiPod> = HashMap::new();
    while let Some(event) = events.next().await {
        let table = match event {
            Ok(watcher::Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(pod)) => {
                buffer.extend(ApiPod::of(&pod));
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let mut table = dir.api.write();
                *table = std::mem::take(&mut buffer);
                table
            }
            Ok(watcher::Event::Apply(pod)) => {
                let mut table = dir.api.write();
                table.extend(ApiPod::of(&pod));
                table
            }
            Ok(watcher::Event::Delete(pod)) => {
                let mut table = dir.api.write();
                if let Some(uid) = &pod.metadata.uid {
                    table.remove(uid);
                }
                table
            }
            Err(e) => {
                crate::metrics::KUBERNETES_API_ERRORS.inc();
                tracing::warn!(error = %e, "kubernetes.api: watch error (retried with backoff; lookups use the kubelet's files meanwhile)");
                continue;
            }
        };
        crate::metrics::KUBERNETES_PODS.set(i64::try_from(table.len()).unwrap_or(i64::MAX));
        drop(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_from_the_api_gives_labels_service_account_and_container_names() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-1", "namespace": "team-a", "uid": "u-1",
                         "labels": {"app": "chat"}},
            "spec": {"serviceAccountName": "chat", "containers": [{"name": "app"}]},
            "status": {"containerStatuses": [{
                "name": "app", "containerID": "containerd://abc123", "image": "i", "imageID": "",
                "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        let (uid, p) = ApiPod::of(&pod).unwrap();
        assert_eq!(uid, "u-1");
        assert_eq!(p.service_account.as_deref(), Some("chat"));
        assert_eq!(p.labels.get("app").map(String::as_str), Some("chat"));
        assert_eq!(p.containers.get("abc123").map(String::as_str), Some("app"));

        let dir = PodDirectory::new(super::super::KubernetesConfig {
            pod_logs: "/nonexistent".into(),
            container_logs: "/nonexistent".into(),
            ..Default::default()
        });
        dir.api.write().insert(uid, p);
        let found = dir.lookup("u-1", Some("abc123")).unwrap();
        assert_eq!(
            (
                found.namespace.as_str(),
                found.pod.as_str(),
                found.container.as_deref()
            ),
            ("team-a", "chat-1", Some("app"))
        );
        assert_eq!(found.service_account.as_deref(), Some("chat"));
    }
}
