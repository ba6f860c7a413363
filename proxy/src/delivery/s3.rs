//! Amazon S3 (or any S3-compatible store): the ledger as gzip-compressed JSON Lines
//! objects, partitioned by the records' date and hour —
//! `<prefix><node>/dt=YYYY-MM-DD/hour=HH/<first seq, 20 digits>.jsonl.gz` — the layout
//! Athena, Glue, Splunk's and Elastic's S3 inputs read as partitions. A batch spanning
//! hours becomes one object per hour.
//!
//! An object's key is its first record's seq: a batch sent again after a crash (from the
//! same cursor) writes the same keys, so the bucket's current objects hold every record
//! once; with versioning or Object Lock, earlier versions stay beside them. With
//! `object_lock` each object is stored under a retention (COMPLIANCE or GOVERNANCE) until
//! `retention_days` from now, with the `Content-MD5` S3 requires for it.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use md5::Digest as _;
use serde_json::Value;

use super::config::S3SinkConfig;
use super::{http_outcome, Destination, Failure, Item, Sent};
use crate::http::s3::Bucket;

pub(super) struct S3 {
    bucket: Bucket,
    prefix: String,
    node: String,
    lock: Option<(String, u32)>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl S3 {
    pub(super) fn new(
        c: &S3SinkConfig,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> S3 {
        S3 {
            bucket: Bucket {
                endpoint: c.endpoint.clone(),
                bucket: c.bucket.clone(),
                region: c.region.clone(),
            },
            prefix: c.prefix.clone(),
            node: node.to_owned(),
            lock: c
                .object_lock
                .as_ref()
                .map(|l| (l.mode.to_uppercase(), l.retention_days)),
            tls,
            timeout,
        }
    }

    fn key(&self, first: &Item) -> String {
        let ts = first.record.get("ts").and_then(Value::as_str).unwrap_or("");
        let (date, hour) = partition(ts);
        format!(
            "{}{}/dt={date}/hour={hour}/{:020}.jsonl.gz",
            self.prefix, self.node, first.seq
        )
    }

    fn put(&self, items: &[Item]) -> Result<(), Failure> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in items {
            let line = i.record.to_string();
            gz.write_all(line.as_bytes())
                .and_then(|()| gz.write_all(b"\n"))
                .map_err(|e| Failure::Retry(format!("gzip: {e}")))?;
        }
        let body = gz
            .finish()
            .map_err(|e| Failure::Retry(format!("gzip: {e}")))?;
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let mut headers = vec![
            ("content-type", "application/x-ndjson".to_owned()),
            ("content-encoding", "gzip".to_owned()),
            ("content-md5", md5),
        ];
        if let Some((mode, days)) = &self.lock {
            let until = time::OffsetDateTime::from(
                SystemTime::now() + Duration::from_secs(u64::from(*days) * 86_400),
            );
            headers.push(("x-amz-object-lock-mode", mode.clone()));
            headers.push((
                "x-amz-object-lock-retain-until-date",
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    until.year(),
                    u8::from(until.month()),
                    until.day(),
                    until.hour(),
                    until.minute(),
                    until.second()
                ),
            ));
        }
        let key = self.key(&items[0]);
        let answer = self
            .bucket
            .request(&self.tls, "PUT", &key, &[], &headers, &body, self.timeout)
            .map_err(Failure::Retry)?;
        http_outcome(&answer).map_err(|f| match f {
            Failure::Reject(r) if r.contains("InvalidBucketName") || r.contains("NoSuchBucket") => {
                Failure::Retry(format!("{r} (check the sink's bucket)"))
            }
            other => other,
        })
    }
}

/// `("YYYY-MM-DD", "HH")` of an RFC 3339 UTC timestamp (`"unknown"` when it is not one).
fn partition(ts: &str) -> (String, String) {
    match (ts.get(..10), ts.get(11..13)) {
        (Some(d), Some(h)) if ts.as_bytes().get(10) == Some(&b'T') => (d.to_owned(), h.to_owned()),
        _ => ("unknown".into(), "00".into()),
    }
}

impl Destination for S3 {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        // Contiguous runs of one hour, an object each.
        let mut start = 0;
        while start < items.len() {
            let hour =
                |i: &Item| partition(i.record.get("ts").and_then(Value::as_str).unwrap_or(""));
            let h = hour(&items[start]);
            let end = items[start..]
                .iter()
                .position(|i| hour(i) != h)
                .map_or(items.len(), |n| start + n);
            match self.put(&items[start..end]) {
                Ok(()) => start = end,
                Err(Failure::Retry(_)) if start > 0 => {
                    return Ok(Sent {
                        rejected: Vec::new(),
                        consumed: Some(start),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Sent::default())
    }
}
