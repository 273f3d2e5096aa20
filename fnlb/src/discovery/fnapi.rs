//! Function keys: one routing key per Fn function, whichever URL calls it.
//!
//! Fn reaches one function by `/invoke/<fn id>` and by each of its HTTP triggers,
//! `/t/<app name><trigger source>`; Fn's own balancer (`api/runnerpool/ch_placer.go`) keys on the
//! function ID. Keyed by the path, the two URLs of one function would be warm on two nodes. So
//! the balancer learns the trigger-to-function map from the nodes' own API (`GET /v2/apps`, then
//! `GET /v2/triggers?app_id=` for each app, both paginated by `next_cursor`) and keys a trigger's
//! path by the hash of the canonical `/invoke/<fn id>`: `/invoke/<fn id>` itself needs no lookup.
//! Fn's older routes (`/r/<app>/<path>`) were each their own function with no other URL, and
//! Fn's v2 API no longer lists them: their path is already the function's key.
//!
//! The map is learned in the background ([`refresh`]: at start, then every
//! [`Refresh::interval`], from one healthy node, every request bounded by a timeout), never on a
//! call's path. It is immutable once built and swapped in whole ([`ArcSwap`]), so
//! [`FunctionKeys::key`] is lock-free: one SipHash of the path, which the path key needs anyway,
//! and one probe of a hash table. Bounded: at most [`Refresh::max_paths`] trigger paths (beyond
//! that, the remaining triggers keep their path as key, logged once); unknown paths keep their
//! path as key. When the API cannot be read, the last map keeps routing until it is
//! [`Refresh::ttl`] old, then keys fall back to paths until the API answers again (each change
//! logged once).
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::health::probe::error_chain;
use crate::node::manager::NodesHandle;
use crate::node::table::key_hash;
use crate::node::NodeAddr;

/// Items per page asked of the Fn API (its maximum).
const PER_PAGE: u32 = 100;
/// One page of 100 triggers is some 50 KB; anything past this is not an API answer.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Requests one refresh may make (pages of apps and of triggers), so an API that hands out
/// cursors forever cannot keep a refresh going.
const MAX_REQUESTS: usize = 5_000;
/// Nodes one refresh tries before it counts as failed.
const NODES_PER_REFRESH: usize = 3;
/// The annotation Fn puts on an HTTP trigger: its full URL.
const ENDPOINT_ANNOTATION: &str = "fnproject.io/trigger/httpEndpoint";

/// How the map is kept.
#[derive(Clone, Copy, Debug)]
pub struct Refresh {
    pub interval: Duration,
    /// A map older than this (no successful refresh since) is dropped: keys are paths again.
    pub ttl: Duration,
    /// Bound on each request to the API.
    pub timeout: Duration,
    /// Trigger paths kept at most.
    pub max_paths: usize,
}

impl Default for Refresh {
    fn default() -> Refresh {
        Refresh {
            interval: Duration::from_secs(30),
            ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
            max_paths: 100_000,
        }
    }
}

/// The keys are SipHash values already: hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in rather than panic.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Path hash → function key.
type KeyMap = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

/// One learned map, immutable.
#[derive(Default)]
pub(crate) struct FunctionMap {
    keys: KeyMap,
    functions: usize,
    /// More triggers existed than [`Refresh::max_paths`].
    truncated: bool,
    /// When and from where it was learned (`None`: nothing learned, or expired).
    learned: Option<(Instant, NodeAddr)>,
}

impl FunctionMap {
    /// Trigger paths known.
    pub(crate) fn paths(&self) -> usize {
        self.keys.len()
    }

    /// Distinct functions those paths call.
    pub(crate) fn functions(&self) -> usize {
        self.functions
    }
}

/// What `/1/lb/cluster` shows of the map.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct Status {
    pub enabled: bool,
    pub paths: usize,
    pub functions: usize,
    pub truncated: bool,
    /// Seconds since the map was learned; `None` when no map is in use.
    pub age_seconds: Option<f64>,
    pub learned_from: Option<String>,
}

/// The routing key of a call's path: its function's when known, else the path's.
pub struct FunctionKeys {
    enabled: bool,
    map: ArcSwap<FunctionMap>,
}

impl FunctionKeys {
    /// `enabled` false (`-function-keys=false`): keys are paths, nothing is learned.
    pub fn new(enabled: bool) -> Arc<FunctionKeys> {
        Arc::new(FunctionKeys { enabled, map: ArcSwap::from_pointee(FunctionMap::default()) })
    }

    /// The key of a call to `path` (no query string): the hash of `/invoke/<fn id>` when `path`
    /// is a known trigger of that function, else the hash of `path` (so `/invoke/<fn id>` is its
    /// function's key without a lookup). Lock-free, no allocation.
    #[inline]
    pub fn key(&self, path: &str) -> u64 {
        let hash = key_hash(path.as_bytes());
        if !self.enabled {
            return hash;
        }
        self.map.load().keys.get(&hash).copied().unwrap_or(hash)
    }

    /// The map in use now.
    pub(crate) fn map(&self) -> Arc<FunctionMap> {
        self.map.load_full()
    }

    pub fn status(&self) -> Status {
        let m = self.map.load();
        Status {
            enabled: self.enabled,
            paths: m.paths(),
            functions: m.functions(),
            truncated: m.truncated,
            age_seconds: m.learned.as_ref().map(|(at, _)| (at.elapsed().as_secs_f64() * 10.0).round() / 10.0),
            learned_from: m.learned.as_ref().map(|(_, node)| node.to_string()),
        }
    }

    fn install(&self, map: FunctionMap) {
        self.map.store(Arc::new(map));
    }
}

/// The canonical key of a function: the hash of the path that calls it by ID.
pub(crate) fn function_key(fn_id: &str) -> u64 {
    let mut path = String::with_capacity(8 + fn_id.len());
    path.push_str("/invoke/");
    path.push_str(fn_id);
    key_hash(path.as_bytes())
}

/// Why the API could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ApiError {
    #[error("no healthy node to ask")]
    NoNode,
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: {1}")]
    Request(String, String),
    #[error("{0}: answered status {1}")]
    Status(String, u16),
    #[error("{0}: not an Fn API answer: {1}")]
    Body(String, String),
    #[error("more than {MAX_REQUESTS} pages in one refresh")]
    TooManyPages,
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
    #[serde(default)]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct App {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct Trigger {
    #[serde(default)]
    fn_id: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    annotations: Option<HashMap<String, serde_json::Value>>,
}

/// Reads the map from one node's API.
pub(crate) struct Learner {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    max_paths: usize,
}

impl Learner {
    pub(crate) fn new(timeout: Duration, max_paths: usize) -> Learner {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1)
            .build(connector);
        Learner { client, timeout, max_paths }
    }

    /// Every HTTP trigger of every app on `node`, as a map.
    pub(crate) async fn learn(&self, node: &NodeAddr) -> Result<FunctionMap, ApiError> {
        let mut requests = 0;
        let mut apps = Vec::new();
        self.pages(node, "/v2/apps?", &mut requests, |page: Vec<App>| {
            apps.extend(page);
            true
        })
        .await?;
        let mut keys = KeyMap::default();
        let mut functions = std::collections::HashSet::new();
        let mut truncated = false;
        for app in &apps {
            if truncated {
                break;
            }
            let base = format!("/v2/triggers?app_id={}&", encode(&app.id));
            self.pages(node, &base, &mut requests, |page: Vec<Trigger>| {
                for t in page {
                    if t.kind != "http" || t.fn_id.is_empty() {
                        continue;
                    }
                    let key = function_key(&t.fn_id);
                    for path in trigger_paths(&app.name, &t) {
                        if keys.len() >= self.max_paths && !keys.contains_key(&key_hash(path.as_bytes())) {
                            truncated = true;
                            return false;
                        }
                        keys.insert(key_hash(path.as_bytes()), key);
                    }
                    functions.insert(key);
                }
                true
            })
            .await?;
        }
        Ok(FunctionMap { keys, functions: functions.len(), truncated, learned: Some((Instant::now(), node.clone())) })
    }

    /// Follows `next_cursor` from `base` (ending in `?` or `&`), handing each page's items to
    /// `each` until it returns false or the pages end.
    async fn pages<T: DeserializeOwned>(
        &self,
        node: &NodeAddr,
        base: &str,
        requests: &mut usize,
        mut each: impl FnMut(Vec<T>) -> bool,
    ) -> Result<(), ApiError> {
        let mut cursor: Option<String> = None;
        loop {
            *requests += 1;
            if *requests > MAX_REQUESTS {
                return Err(ApiError::TooManyPages);
            }
            let mut path = format!("{base}per_page={PER_PAGE}");
            if let Some(c) = &cursor {
                path.push_str("&cursor=");
                path.push_str(&encode(c));
            }
            let page: Page<T> = self.get(node, &path).await?;
            let empty = page.items.is_empty();
            if !each(page.items) {
                return Ok(());
            }
            match page.next_cursor.filter(|c| !c.is_empty()) {
                // A page without items, or a cursor that does not move, ends the listing.
                Some(next) if !empty && cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
                _ => return Ok(()),
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, node: &NodeAddr, path: &str) -> Result<T, ApiError> {
        let what = || format!("GET http://{node}{path}");
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(node.authority())
            .path_and_query(path)
            .build()
            .map_err(|e| ApiError::Request(what(), e.to_string()))?;
        let req = http::Request::get(uri)
            .header(http::header::USER_AGENT, "fnlb-function-keys")
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| ApiError::Request(what(), e.to_string()))?;
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| ApiError::Request(what(), error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ApiError::Body(what(), e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(ApiError::Status(what(), status.as_u16()));
            }
            serde_json::from_slice(&body).map_err(|e| ApiError::Body(what(), e.to_string()))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout(what(), self.timeout)),
        }
    }
}

/// The paths that call a trigger: `/t/<app><source>` as Fn routes it, and the path of the
/// endpoint Fn announces in the trigger's annotations when that differs (a server configured
/// with another public URL).
fn trigger_paths(app: &str, t: &Trigger) -> Vec<String> {
    let source = if t.source.starts_with('/') { t.source.clone() } else { format!("/{}", t.source) };
    let mut paths = vec![format!("/t/{app}{source}")];
    let endpoint = t.annotations.as_ref().and_then(|a| a.get(ENDPOINT_ANNOTATION)).and_then(|v| v.as_str());
    if let Some(path) = endpoint.and_then(|e| url::Url::parse(e).ok()).map(|u| u.path().to_owned()) {
        if path.starts_with("/t/") && !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Keeps `keys` learned from the nodes' API, forever: at once, then every `cfg.interval`. Each
/// refresh asks one healthy node (the next one on failure, up to [`NODES_PER_REFRESH`]). A
/// failure keeps the last map until it is `cfg.ttl` old; then keys are paths until the API
/// answers again. The outage, the expiry and the recovery are each logged once.
pub async fn refresh(keys: Arc<FunctionKeys>, nodes: NodesHandle, cfg: Refresh) {
    if !keys.enabled {
        return;
    }
    let learner = Learner::new(cfg.timeout, cfg.max_paths);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = Outage::default();
    let mut start = 0usize;
    loop {
        tick.tick().await;
        let snap = nodes.load_full();
        let healthy: Vec<&NodeAddr> =
            (0..snap.len()).filter(|&i| snap.is_healthy(i)).map(|i| &snap.nodes()[i].addr).collect();
        let mut result = Err(ApiError::NoNode);
        for k in 0..healthy.len().min(NODES_PER_REFRESH) {
            let node = healthy[(start + k) % healthy.len()];
            result = learner.learn(node).await;
            if result.is_ok() {
                break;
            }
            debug!(node = %node, error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(),
                   "function keys: cannot read the Fn API");
        }
        start = start.wrapping_add(1);
        match result {
            Ok(map) => state.learned(&keys, map),
            Err(error) => state.failed(&keys, &error, cfg.ttl),
        }
    }
}

/// What has been said about the API, so each change is logged once.
#[derive(Default)]
struct Outage {
    down: bool,
    expired: bool,
    warned_truncated: bool,
    last: Option<(usize, usize)>,
}

impl Outage {
    fn learned(&mut self, keys: &FunctionKeys, map: FunctionMap) {
        let node = map.learned.as_ref().map(|(_, n)| n.to_string()).unwrap_or_default();
        if self.down {
            info!(node = %node, paths = map.paths(), "function keys: the Fn API answers again");
        }
        if map.truncated && !self.warned_truncated {
            warn!(
                paths = map.paths(),
                "function keys: more HTTP triggers than the map holds; the others are keyed by their path"
            );
            self.warned_truncated = true;
        }
        let counts = (map.paths(), map.functions());
        if self.last != Some(counts) {
            info!(paths = counts.0, functions = counts.1, node = %node, "function keys: trigger map learned");
            self.last = Some(counts);
        }
        *self = Outage { last: self.last, warned_truncated: self.warned_truncated, ..Outage::default() };
        keys.install(map);
    }

    fn failed(&mut self, keys: &FunctionKeys, error: &ApiError, ttl: Duration) {
        let current = keys.map();
        let age = current.learned.as_ref().map(|(at, _)| at.elapsed());
        if !self.down {
            match age {
                Some(age) => warn!(
                    %error,
                    age_seconds = age.as_secs(),
                    ttl_seconds = ttl.as_secs(),
                    "function keys: the Fn API cannot be read; routing with the last trigger map until it expires"
                ),
                None => warn!(%error, "function keys: the Fn API cannot be read; calls are keyed by their path"),
            }
            self.down = true;
        }
        if age.is_some_and(|a| a >= ttl) && !self.expired {
            warn!(
                ttl_seconds = ttl.as_secs(),
                "function keys: the trigger map expired; calls are keyed by their path until the Fn API answers"
            );
            self.expired = true;
            self.last = None;
            keys.install(FunctionMap::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(fn_id: &str, source: &str, endpoint: Option<&str>) -> Trigger {
        Trigger {
            fn_id: fn_id.into(),
            kind: "http".into(),
            source: source.into(),
            annotations: endpoint
                .map(|e| HashMap::from([(ENDPOINT_ANNOTATION.to_string(), serde_json::Value::from(e))])),
        }
    }

    #[test]
    fn trigger_paths_follow_fn_routing() {
        assert_eq!(trigger_paths("app", &trigger("f", "/hello", None)), vec!["/t/app/hello"]);
        assert_eq!(trigger_paths("app", &trigger("f", "hello", None)), vec!["/t/app/hello"]);
        assert_eq!(
            trigger_paths("app", &trigger("f", "/hello", Some("http://fn.example:8080/t/app/hello"))),
            vec!["/t/app/hello"]
        );
        assert_eq!(
            trigger_paths("app", &trigger("f", "/hello", Some("https://public.example/t/other/hello"))),
            vec!["/t/app/hello", "/t/other/hello"]
        );
    }

    #[test]
    fn key_is_the_functions_when_known_else_the_paths() {
        let keys = FunctionKeys::new(true);
        let fid = "01CQV4NEMNNG8G00GZJ0000002";
        assert_eq!(keys.key("/t/app/hello"), key_hash(b"/t/app/hello"));
        let mut map = FunctionMap::default();
        map.keys.insert(key_hash(b"/t/app/hello"), function_key(fid));
        map.functions = 1;
        keys.install(map);
        assert_eq!(keys.key("/t/app/hello"), keys.key(&format!("/invoke/{fid}")));
        assert_eq!(keys.key(&format!("/invoke/{fid}")), key_hash(format!("/invoke/{fid}").as_bytes()));
        assert_eq!(keys.key("/t/app/other"), key_hash(b"/t/app/other"));
        assert_eq!(keys.status().paths, 1);

        let off = FunctionKeys::new(false);
        off.install(keys.map.load_full().as_ref().clone_keys());
        assert_eq!(off.key("/t/app/hello"), key_hash(b"/t/app/hello"));
    }

    impl FunctionMap {
        fn clone_keys(&self) -> FunctionMap {
            FunctionMap { keys: self.keys.clone(), functions: self.functions, ..FunctionMap::default() }
        }
    }

    #[test]
    fn pages_parse_the_fn_api_shapes() {
        let apps: Page<App> = serde_json::from_str(
            r#"{"items":[{"id":"01A","name":"myapp","annotations":{},"created_at":"2018-06-11T16:26:34.000Z"}],
                "next_cursor":"MDFB"}"#,
        )
        .unwrap();
        assert_eq!(apps.items[0].name, "myapp");
        assert_eq!(apps.next_cursor.as_deref(), Some("MDFB"));
        let last: Page<App> = serde_json::from_str(r#"{"items":[]}"#).unwrap();
        assert!(last.items.is_empty() && last.next_cursor.is_none());
        let t: Page<Trigger> = serde_json::from_str(
            r#"{"items":[{"id":"01T","name":"hello","app_id":"01A","fn_id":"01F","type":"http","source":"/hello",
                "annotations":{"fnproject.io/trigger/httpEndpoint":"http://localhost:8080/t/myapp/hello"}}]}"#,
        )
        .unwrap();
        assert_eq!(t.items[0].fn_id, "01F");
        assert_eq!(trigger_paths("myapp", &t.items[0]), vec!["/t/myapp/hello"]);
    }
}
