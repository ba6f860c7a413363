//! `sluice inject`: a mutating admission webhook that makes pods trust the organisation
//! CA without changing their images.
//!
//! For a pod in a namespace that opted in (the chart's `namespaceSelector`; never
//! `kube-system`, refused here too) and not annotated `sluice.dev/inject: "false"`, the
//! patch:
//!
//! 1. adds an in-memory `emptyDir` volume and, first among the init containers, a small
//!    container of the Sluice image that writes the bundle into it: the image's system
//!    roots (Debian's Mozilla set) followed by the org CA ([`write_bundle`]);
//! 2. mounts the bundle, read-only, over the usual bundle paths of every container and
//!    init container ([`InjectConfig::bundle_paths`]), so programs that read the system
//!    store (Go, OpenSSL, curl, Python's `ssl`) trust it with no setting at all;
//! 3. sets the variables the runtimes that bring their own store read: `SSL_CERT_FILE`,
//!    `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`, `AWS_CA_BUNDLE`,
//!    `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`. A variable the container already sets is left
//!    as it is, with an admission warning: the app chose its trust, the operator decides.
//!
//! Why an init container and not a ConfigMap: a ConfigMap is namespaced, so publishing the
//! bundle into every opted-in namespace needs cluster-wide write access to ConfigMaps; the
//! init container needs no API access at all, and the org CA certificate (public) travels
//! in the patch. The chart still publishes the bundle as a ConfigMap in its own namespace
//! for those who distribute it by other means.
//!
//! The webhook never refuses a pod (`allowed: true` always; the chart sets
//! `failurePolicy: Ignore`): a broken webhook must not stop a cluster from scheduling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::http::{reply, Reply};

/// The annotation that opts a pod out (`"false"`) and the one that marks it patched.
pub const OPT_OUT: &str = "sluice.dev/inject";
pub const INJECTED: &str = "sluice.dev/injected";
/// The volume, the init container, and where the bundle is inside them.
pub const VOLUME: &str = "sluice-trust";
pub const MOUNT_DIR: &str = "/var/run/sluice-trust";
pub const BUNDLE_FILE: &str = "ca-bundle.crt";
/// The environment variable carrying the org CA to the init container.
pub const ORG_CA_ENV: &str = "SLUICE_ORG_CA";
/// Namespaces never patched, whatever their labels.
pub const NEVER: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];
/// Request bodies larger than this are refused (the API server sends a pod, not a list).
pub const MAX_BODY: usize = 3 << 20;

/// The variables set to the bundle's path.
pub const ENV_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];

/// The system bundle paths mounted over by default: Debian/Ubuntu/Alpine, RHEL/Fedora
/// (two layouts), and the OpenSSL default of Alpine and others.
pub const DEFAULT_BUNDLE_PATHS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// What a bad webhook configuration or bundle input is.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} holds no PEM certificate; give the CA certificate (not the key)")]
    NoCertificate { what: String },
    #[error("the org CA is not set: put its PEM in ${ORG_CA_ENV}")]
    NoOrgCa,
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How pods are patched.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// The org CA certificate (PEM) pods must trust.
    pub org_ca_pem: String,
    /// The Sluice image the init container runs.
    pub image: String,
    /// Its pull policy (`IfNotPresent` unless told).
    pub image_pull_policy: String,
    /// Paths the bundle is mounted over in every container.
    pub bundle_paths: Vec<String>,
}

impl InjectConfig {
    /// A configuration with the default bundle paths; checks the CA is a certificate.
    ///
    /// # Errors
    /// `org_ca_pem` holds no certificate.
    pub fn new(org_ca_pem: String, image: String) -> Result<Self, InjectError> {
        if count_certificates(&org_ca_pem) == 0 {
            return Err(InjectError::NoCertificate {
                what: "the org CA".into(),
            });
        }
        Ok(InjectConfig {
            org_ca_pem,
            image,
            image_pull_policy: "IfNotPresent".into(),
            bundle_paths: DEFAULT_BUNDLE_PATHS.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Answers one request to the webhook's HTTP server.
    pub fn handle(&self, method: &str, path: &str, body: &str) -> Reply {
        match (method, path) {
            ("GET", "/healthz") => reply(200, "ok\n"),
            ("POST", "/mutate") => match serde_json::from_str::<Value>(body) {
                Ok(review) => match self.review(&review) {
                    Ok(answer) => Reply {
                        status: 200,
                        content_type: "application/json",
                        body: answer.to_string(),
                    },
                    Err(why) => reply(400, format!("{why}\n")),
                },
                Err(e) => reply(400, format!("the body is not JSON: {e}\n")),
            },
            _ => reply(404, "POST an AdmissionReview to /mutate\n"),
        }
    }

    /// The `AdmissionReview` answering `review` (admission.k8s.io/v1).
    ///
    /// # Errors
    /// The review is not an `AdmissionReview` with a request uid.
    pub fn review(&self, review: &Value) -> Result<Value, String> {
        if review["kind"] != "AdmissionReview" {
            return Err("expected kind AdmissionReview (admission.k8s.io/v1)".into());
        }
        let request = &review["request"];
        let uid = request["uid"]
            .as_str()
            .ok_or("the AdmissionReview has no request.uid")?;
        let namespace = request["namespace"]
            .as_str()
            .or_else(|| request["object"]["metadata"]["namespace"].as_str())
            .unwrap_or("");
        let mut response = json!({"uid": uid, "allowed": true});
        let pod = &request["object"];
        let is_pod = request["kind"]["kind"] == "Pod" || pod["kind"] == "Pod";
        let skip = if !is_pod {
            Some("not a pod")
        } else if NEVER.contains(&namespace) {
            Some("system namespace")
        } else {
            skip_reason(pod)
        };
        match skip {
            Some(why) => {
                tracing::debug!(uid, namespace, why, "pod left alone");
            }
            None => {
                let (patch, warnings) = self.patch(pod);
                let patch = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
                if !warnings.is_empty() {
                    response["warnings"] = json!(warnings);
                }
                tracing::info!(
                    uid,
                    namespace,
                    pod = pod_name(pod),
                    "pod patched to trust the org CA"
                );
            }
        }
        Ok(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }))
    }

    /// The JSON patch (RFC 6902) for `pod`, and the warnings for the operator.
    pub fn patch(&self, pod: &Value) -> (Vec<Value>, Vec<String>) {
        let spec = &pod["spec"];
        let mut ops = Vec::new();
        let mut warnings = Vec::new();

        let volume = json!({"name": VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}});
        push_to_list(&mut ops, "/spec/volumes", &spec["volumes"], volume);

        // Mounts and variables of the app's own containers, before ours is added.
        for list in ["initContainers", "containers"] {
            let Some(containers) = spec[list].as_array() else {
                continue;
            };
            for (i, c) in containers.iter().enumerate() {
                let base = format!("/spec/{list}/{i}");
                let mut mounts = c["volumeMounts"].clone();
                for m in self.mounts(c) {
                    push_to_list(&mut ops, &format!("{base}/volumeMounts"), &mounts, m);
                    mounts = json!([]);
                }
                let set: BTreeMap<&str, Option<&str>> = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str())))
                    .collect();
                let bundle = format!("{MOUNT_DIR}/{BUNDLE_FILE}");
                let mut env = c["env"].clone();
                for var in ENV_VARS {
                    if let Some(value) = set.get(var) {
                        if *value != Some(bundle.as_str()) {
                            warnings.push(format!(
                                "container {:?} sets {var} itself; left as it is, so it may not trust the Sluice CA",
                                c["name"].as_str().unwrap_or("?")
                            ));
                        }
                        continue;
                    }
                    let var = json!({"name": var, "value": bundle});
                    push_to_list(&mut ops, &format!("{base}/env"), &env, var);
                    // The list exists after the first addition.
                    env = json!([]);
                }
            }
        }

        // The bundle writer runs first, so the app's own init containers trust the CA too.
        let writer = self.init_container();
        match spec["initContainers"].as_array() {
            Some(list) if !list.is_empty() => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": writer}))
            }
            _ => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [writer]})),
        }

        let annotation = json!("trust");
        if pod["metadata"]["annotations"].is_object() {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", INJECTED.replace('~', "~0").replace('/', "~1")), "value": annotation}));
        } else {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED: annotation}}));
        }
        (ops, warnings)
    }

    /// The mounts for a container: the directory, and the file over each bundle path the
    /// container does not already mount something at.
    fn mounts(&self, container: &Value) -> Vec<Value> {
        let taken: Vec<&str> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        let mut mounts = Vec::new();
        if !taken.contains(&MOUNT_DIR) {
            mounts.push(json!({"name": VOLUME, "mountPath": MOUNT_DIR, "readOnly": true}));
        }
        for path in &self.bundle_paths {
            if !taken.iter().any(|t| path.starts_with(t)) {
                mounts.push(json!({"name": VOLUME, "mountPath": path, "subPath": BUNDLE_FILE, "readOnly": true}));
            }
        }
        mounts
    }

    fn init_container(&self) -> Value {
        json!({
            "name": VOLUME,
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "args": ["inject", "bundle", "--out", format!("{MOUNT_DIR}/{BUNDLE_FILE}")],
            "env": [{"name": ORG_CA_ENV, "value": self.org_ca_pem}],
            "volumeMounts": [{"name": VOLUME, "mountPath": MOUNT_DIR}],
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"cpu": "100m", "memory": "32Mi"},
            },
            // Passes the "restricted" Pod Security Standard.
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        })
    }
}

/// Why a pod is left alone, judged from its own metadata: opted out, or patched already.
fn skip_reason(pod: &Value) -> Option<&'static str> {
    let annotations = &pod["metadata"]["annotations"];
    if annotations[OPT_OUT] == "false" || annotations[OPT_OUT] == "disabled" {
        return Some("opted out by annotation");
    }
    if annotations[INJECTED].is_string() {
        return Some("patched already");
    }
    None
}

fn pod_name(pod: &Value) -> &str {
    pod["metadata"]["name"]
        .as_str()
        .or_else(|| pod["metadata"]["generateName"].as_str())
        .unwrap_or("")
}

/// Adds `value` to the JSON list at `path`, creating the list when `current` is absent.
fn push_to_list(ops: &mut Vec<Value>, path: &str, current: &Value, value: Value) {
    if current.as_array().is_some() {
        ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": value}));
    } else {
        ops.push(json!({"op": "add", "path": path, "value": [value]}));
    }
}

fn count_certificates(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// Writes `system roots + org CA` to `out` (0644, replaced atomically): what the init
/// container runs. The org CA comes from `org_ca_pem` (the init container's
/// `$SLUICE_ORG_CA`).
///
/// # Errors
/// The system roots cannot be read or hold no certificate, the org CA is empty, or `out`
/// cannot be written.
pub fn write_bundle(
    system_roots: &Path,
    org_ca_pem: &str,
    out: &Path,
) -> Result<usize, InjectError> {
    if org_ca_pem.trim().is_empty() {
        return Err(InjectError::NoOrgCa);
    }
    if count_certificates(org_ca_pem) == 0 {
        return Err(InjectError::NoCertificate {
            what: format!("${ORG_CA_ENV}"),
        });
    }
    let roots = std::fs::read_to_string(system_roots).map_err(|source| InjectError::Read {
        path: system_roots.into(),
        source,
    })?;
    if count_certificates(&roots) == 0 {
        return Err(InjectError::NoCertificate {
            what: system_roots.display().to_string(),
        });
    }
    let mut bundle = roots;
    if !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str("# Sluice organisation CA\n");
    bundle.push_str(org_ca_pem.trim_end());
    bundle.push('\n');
    let tmp = out.with_extension("tmp");
    let write = |path: &Path| std::fs::write(path, &bundle);
    write(&tmp)
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|source| InjectError::Write {
            path: out.into(),
            source,
        })?;
    Ok(count_certificates(&bundle))
}

#[cfg(test)]
mod tests;
