use super::*;

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn config() -> InjectConfig {
    InjectConfig::new(CA.into(), "sluice:test".into()).unwrap()
}

fn review(namespace: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    })
}

fn bare_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "app", "image": "python:3.12"}]}})
}

fn ops(answer: &Value) -> Vec<Value> {
    let patch = answer["response"]["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_bare_pod_gets_lists_created_once_then_appended() {
    let answer = config().review(&review("team-a", bare_pod())).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    let ops = ops(&answer);
    let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
    // Each list is created by its first addition and appended to after.
    assert_eq!(
        paths
            .iter()
            .filter(|p| **p == "/spec/containers/0/env")
            .count(),
        1
    );
    assert_eq!(
        paths
            .iter()
            .filter(|p| **p == "/spec/containers/0/env/-")
            .count(),
        ENV_VARS.len() - 1
    );
    assert_eq!(
        paths
            .iter()
            .filter(|p| **p == "/spec/containers/0/volumeMounts")
            .count(),
        1
    );
    assert!(paths.contains(&"/spec/volumes"));
    assert!(paths.contains(&"/spec/initContainers"));
    assert!(paths.contains(&"/metadata/annotations"));
}

#[test]
fn pods_left_alone() {
    let c = config();
    let mut opted_out = bare_pod();
    opted_out["metadata"]["annotations"] = json!({OPT_OUT: "false"});
    let mut patched = bare_pod();
    patched["metadata"]["annotations"] = json!({INJECTED: "trust"});
    for (ns, pod) in [
        ("kube-system", bare_pod()),
        ("team-a", opted_out),
        ("team-a", patched),
    ] {
        let answer = c.review(&review(ns, pod)).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{ns}");
    }
}

#[test]
fn a_variable_the_app_sets_is_kept_and_warned_about() {
    let mut pod = bare_pod();
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "SSL_CERT_FILE", "value": "/app/ca.pem"}]);
    let answer = config().review(&review("team-a", pod)).unwrap();
    let ops = ops(&answer);
    assert!(!ops.iter().any(|o| o["value"]["name"] == "SSL_CERT_FILE"));
    let warnings = answer["response"]["warnings"].as_array().unwrap();
    assert!(warnings[0].as_str().unwrap().contains("SSL_CERT_FILE"));
}

#[test]
fn bad_reviews_and_bad_bundle_inputs_get_clear_errors() {
    let c = config();
    assert!(c.review(&json!({"kind": "Pod"})).is_err());
    assert!(c
        .review(&json!({"kind": "AdmissionReview", "request": {}}))
        .is_err());
    assert_eq!(c.handle("POST", "/mutate", "not json").status, 400);
    assert_eq!(c.handle("GET", "/elsewhere", "").status, 404);
    assert!(InjectConfig::new("-----BEGIN PRIVATE KEY-----".into(), "i".into()).is_err());

    let dir = crate::testing::TempDir::new("inject");
    let roots = dir.path().join("roots.pem");
    let out = dir.path().join("bundle.pem");
    std::fs::write(&roots, CA.repeat(3)).unwrap();
    assert!(matches!(
        write_bundle(&roots, "", &out),
        Err(InjectError::NoOrgCa)
    ));
    assert!(matches!(
        write_bundle(&roots, "-----BEGIN EC PRIVATE KEY-----", &out),
        Err(InjectError::NoCertificate { .. })
    ));
    assert!(matches!(
        write_bundle(&dir.path().join("missing"), CA, &out),
        Err(InjectError::Read { .. })
    ));
    assert!(!out.exists(), "nothing is written on error");
    assert_eq!(write_bundle(&roots, CA, &out).unwrap(), 4);
    assert!(std::fs::read_to_string(&out).unwrap().ends_with(CA));
}
