//! The health probe: `GET http://<node><path>`, healthy when it answers 2xx with JSON
//! `{"version":"x.y.z"}` at least the minimum API version, within the timeout.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::node::NodeAddr;

/// A version answer is a few dozen bytes; anything past this is not a version answer.
const MAX_BODY: usize = 16 * 1024;

#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
    path: String,
    timeout: Duration,
    min_version: semver::Version,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("answered status {0}")]
    Status(u16),
    #[error("answer is not version JSON: {0}")]
    Body(String),
    #[error("version {found} is below the minimum {min}")]
    TooOld { found: String, min: String },
}

impl Prober {
    pub fn new(path: String, timeout: Duration, min_version: semver::Version) -> Prober {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Prober { client, path, timeout, min_version }
    }

    /// Checks one node; Ok carries the version it reported.
    pub(crate) async fn check(&self, node: &NodeAddr) -> Result<semver::Version, ProbeError> {
        match tokio::time::timeout(self.timeout, self.request(node)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(self.timeout)),
        }
    }

    async fn request(&self, node: &NodeAddr) -> Result<semver::Version, ProbeError> {
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(node.authority())
            .path_and_query(self.path.as_str())
            .build()
            .map_err(|e| ProbeError::Request(e.to_string()))?;
        let req = http::Request::get(uri)
            .header(http::header::USER_AGENT, "fnlb-health")
            .body(Empty::new())
            .map_err(|e| ProbeError::Request(e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| ProbeError::Request(error_chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| ProbeError::Body(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(ProbeError::Status(status.as_u16()));
        }
        check_version(&body, &self.min_version)
    }
}

/// Parses a version answer and compares it with the minimum.
pub(crate) fn check_version(body: &[u8], min: &semver::Version) -> Result<semver::Version, ProbeError> {
    #[derive(serde::Deserialize)]
    struct VersionAnswer {
        version: String,
    }
    let answer: VersionAnswer = serde_json::from_slice(body).map_err(|e| ProbeError::Body(e.to_string()))?;
    let found = semver::Version::parse(answer.version.trim())
        .map_err(|e| ProbeError::Body(format!("version {:?}: {e}", answer.version)))?;
    if found < *min {
        return Err(ProbeError::TooOld { found: found.to_string(), min: min.to_string() });
    }
    Ok(found)
}

/// hyper-util's errors hide the cause (connection refused, ...) in their source chain.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    #[test]
    fn version_at_or_above_minimum_passes() {
        assert_eq!(check_version(br#"{"version":"0.3.753"}"#, &v("0.0.235")), Ok(v("0.3.753")));
        assert_eq!(check_version(br#"{"version":"0.0.235"}"#, &v("0.0.235")), Ok(v("0.0.235")));
    }

    #[test]
    fn version_below_minimum_fails() {
        assert!(matches!(check_version(br#"{"version":"0.0.234"}"#, &v("0.0.235")), Err(ProbeError::TooOld { .. })));
    }

    #[test]
    fn non_semver_version_fails() {
        assert!(matches!(check_version(br#"{"version":"banana"}"#, &v("0.0.1")), Err(ProbeError::Body(_))));
        assert!(matches!(check_version(br#"{"version":"1.2"}"#, &v("0.0.1")), Err(ProbeError::Body(_))));
    }

    #[test]
    fn non_json_answer_fails() {
        assert!(matches!(check_version(b"OK", &v("0.0.1")), Err(ProbeError::Body(_))));
        assert!(matches!(check_version(br#"{"v":"1.0.0"}"#, &v("0.0.1")), Err(ProbeError::Body(_))));
    }
}
