//! The Zipkin exporter: spans go into a bounded queue without waiting, and one background task
//! posts them in batches (a JSON array of Zipkin v2 spans) to the collector. A slow, failing or
//! dead collector never slows or fails a call: when the queue is full the span is dropped, and a
//! failed post drops its batch; both are counted (`fnlb_trace_spans_total`), and the outage is
//! logged once, with its end.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::trace::{Kind, Remote, Span};

/// Spans waiting for export; past this they are dropped.
pub(crate) const QUEUE: usize = 8192;
/// Spans per post.
pub(crate) const MAX_BATCH: usize = 512;
/// How long the exporter gathers spans before posting a batch that is not full.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A post that takes longer is abandoned (its spans dropped).
pub(crate) const POST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    queue_full: AtomicU64,
    export_failed: AtomicU64,
}

/// What happened to the spans so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SpanCounts {
    pub exported: u64,
    pub queue_full: u64,
    pub export_failed: u64,
}

/// The sending side, held by the proxy. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Tracer {
    tx: mpsc::Sender<Span>,
    counters: Arc<Counters>,
}

impl Tracer {
    /// Starts the exporter task posting to `url` (an `http://` URL); must run inside a runtime.
    pub(crate) fn spawn(url: &str) -> Result<Tracer, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("-zipkin {url}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("-zipkin {url}: only http:// collectors are supported"));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        tokio::spawn(export(rx, uri, counters.clone()));
        Ok(Tracer { tx, counters })
    }

    /// Queues a finished span; never waits. A full queue drops it.
    pub(crate) fn emit(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn counts(&self) -> SpanCounts {
        SpanCounts {
            exported: self.counters.exported.load(Ordering::Relaxed),
            queue_full: self.counters.queue_full.load(Ordering::Relaxed),
            export_failed: self.counters.export_failed.load(Ordering::Relaxed),
        }
    }
}

async fn export(mut rx: mpsc::Receiver<Span>, uri: http::Uri, counters: Arc<Counters>) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut failing = false;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return; // every sender is gone: the balancer is stopping
        }
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let body = Value::Array(batch.iter().map(to_json).collect()).to_string();
        let n = batch.len() as u64;
        match post(&client, &uri, body).await {
            Ok(()) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
                if std::mem::take(&mut failing) {
                    info!(collector = %uri, "zipkin collector reachable again");
                }
            }
            Err(error) => {
                counters.export_failed.fetch_add(n, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    warn!(collector = %uri, %error, "cannot export spans to zipkin; dropping them until it answers");
                }
            }
        }
    }
}

async fn post(client: &Client<HttpConnector, Full<Bytes>>, uri: &http::Uri, body: String) -> Result<(), String> {
    let req = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let send = async {
        let resp = client.request(req).await.map_err(|e| crate::health::probe::error_chain(&e))?;
        let status = resp.status();
        // Read the (small) answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    };
    tokio::time::timeout(POST_TIMEOUT, send).await.map_err(|_| format!("no answer within {POST_TIMEOUT:?}"))?
}

/// A span in Zipkin's v2 JSON (`POST /api/v2/spans`).
pub(crate) fn to_json(s: &Span) -> Value {
    let mut o = Map::new();
    o.insert("traceId".into(), s.trace.hex().into());
    o.insert("id".into(), format!("{:016x}", s.id).into());
    if let Some(p) = s.parent {
        o.insert("parentId".into(), format!("{p:016x}").into());
    }
    o.insert("name".into(), s.name.into());
    if let Some(k) = s.kind {
        o.insert("kind".into(), (if k == Kind::Server { "SERVER" } else { "CLIENT" }).into());
    }
    o.insert("timestamp".into(), s.timestamp_us.into());
    o.insert("duration".into(), s.duration_us.into());
    o.insert("localEndpoint".into(), json!({ "serviceName": "fnlb" }));
    if let Some(r) = &s.remote {
        o.insert("remoteEndpoint".into(), remote(r));
    }
    if !s.tags.is_empty() {
        let tags: Map<String, Value> = s.tags.iter().map(|(k, v)| ((*k).to_string(), v.clone().into())).collect();
        o.insert("tags".into(), tags.into());
    }
    Value::Object(o)
}

fn remote(r: &Remote) -> Value {
    let (host, port) = match r {
        Remote::Client(a) => (a.ip().to_string(), a.port()),
        Remote::Node(n) => (n.host().trim_start_matches('[').trim_end_matches(']').to_string(), n.port()),
    };
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => json!({ "ipv4": ip.to_string(), "port": port }),
        Ok(std::net::IpAddr::V6(ip)) => json!({ "ipv6": ip.to_string(), "port": port }),
        Err(_) => json!({ "serviceName": host, "port": port }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::TraceId;

    #[test]
    fn spans_are_zipkin_v2_json() {
        let s = Span {
            trace: TraceId { hi: 0, lo: 0xabc, wide: false },
            id: 0x12,
            parent: Some(0x34),
            name: "upstream",
            kind: Some(Kind::Client),
            timestamp_us: 1_700_000_000_000_000,
            duration_us: 1500,
            remote: Some(Remote::Node(crate::node::NodeAddr::parse("[::1]:8080").unwrap())),
            tags: vec![("http.status_code", "200".into())],
        };
        assert_eq!(
            to_json(&s),
            json!({
                "traceId": "0000000000000abc",
                "id": "0000000000000012",
                "parentId": "0000000000000034",
                "name": "upstream",
                "kind": "CLIENT",
                "timestamp": 1_700_000_000_000_000u64,
                "duration": 1500,
                "localEndpoint": {"serviceName": "fnlb"},
                "remoteEndpoint": {"ipv6": "::1", "port": 8080},
                "tags": {"http.status_code": "200"},
            })
        );
    }
}
