//! Sluice: a transparent, governed and audited path for every LLM API call that leaves a
//! host, a Kubernetes node or a VPC, with no change to the clients.
//!
//! This crate is the proxy and everything the `sluice` binary does; the binary itself
//! only parses the command line. Modules, one concern each:
//!
//! | module | concern |
//! |---|---|
//! | [`app`] | wiring: starts the subsystems of a node in order |
//! | [`audit`] | the audit commands: events tail, verify, export, report |
//! | [`config`] | the one typed YAML configuration, validated once |
//! | [`ca`] | organisation CA and per-host leaf certificates |
//! | [`tls`] | ClientHello sniffing, downstream acceptor, upstream trust |
//! | [`original_dst`] | where an accepted connection was going; loop guard |
//! | [`redirect`] | the eBPF transparent redirect: probe lifecycle, provider addresses |
//! | [`identity`] | workload identity of a connection (process, cgroup, pod) |
//! | [`proxy`] | connection routing (inspect, relay, refuse) and the HTTP interceptor |
//! | [`providers`] | provider API formats behind one adapter trait |
//! | [`pricing`] | the price table and cost of an interaction |
//! | [`policy`] | governance: virtual keys, policy chain, decisions |
//! | [`guardrails`] | PII, secret and prompt-injection detectors; streaming redaction |
//! | [`readiness`] | `/readyz`: ledger writable, redirect attached, upstream trust loaded |
//! | [`record`] | the record types (the audit contract) |
//! | [`ledger`] | the tamper-evident audit ledger: WAL, hash chain, HMAC, checkpoints |
//! | [`tlog`] | transparency-log formats: RFC 6962 Merkle tree, C2SP notes and checkpoints |
//! | [`witness`] | `sluice witness`: cosigns checkpoints that extend what it holds |
//! | [`inject`] | `sluice inject`: the admission webhook that makes pods trust the org CA |
//! | [`http`] | the small HTTP/1.1 servers of the control side (witness, webhook) |
//! | [`inbox`] | admin records from CLI commands while the proxy holds the ledger |
//! | [`sink`] | handing records off the request path to a sink |
//! | [`metrics`] | every `sluice_*` Prometheus series |
//! | [`otel`] | OpenTelemetry export: GenAI spans and metrics over OTLP/HTTP |
//! | [`demo`] | the hermetic end-to-end demo (the mock provider comes from `sluice-mock`) |
//! | `testing` | fixtures for tests and the bench crate (`cfg(test)` or feature `testing`) |

pub mod alerts;
pub mod app;
pub mod appliance;
pub mod audit;
pub mod ca;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod evidence;
pub mod guardrails;
pub mod http;
pub mod identity;
pub mod inbox;
pub mod inject;
pub mod ledger;
pub mod metrics;
pub mod original_dst;
pub mod otel;
pub mod policy;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod readiness;
pub mod record;
pub mod redirect;
pub mod sink;
pub mod state_file;
pub mod systemd;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tlog;
pub mod tls;
pub mod witness;
