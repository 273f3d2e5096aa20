//! A fake of Fn's v2 API, as much as the balancer reads of it: `GET /v2/apps`, `GET /v2/triggers?app_id=`
//! and `GET /v2/fns?app_id=`, paginated the way Fn paginates (`per_page`, default 30, at most
//! 100; `next_cursor` set when a page is full; `?cursor=` resumes after it), in Fn's JSON shapes
//! (api/models/app.go, trigger.go, fn.go). Served by [`super::FakeNode`] when its
//! [`super::NodeOpts::fn_api`] is set.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct FakeTrigger {
    pub id: String,
    pub name: String,
    pub app_id: String,
    pub fn_id: String,
    pub source: String,
}

#[derive(Default)]
struct Data {
    /// (id, name), in id order as Fn lists them.
    apps: Vec<(String, String)>,
    /// (id, name, app_id).
    fns: Vec<(String, String, String)>,
    triggers: Vec<FakeTrigger>,
}

/// The API's content, shared by every node that serves it (Fn servers share one database).
#[derive(Clone, Default)]
pub struct FakeFnApi {
    data: Arc<Mutex<Data>>,
    /// Answer 503 to every API request (a database outage behind Fn).
    pub failing: Arc<AtomicBool>,
    /// API requests answered.
    pub requests: Arc<AtomicUsize>,
}

impl FakeFnApi {
    pub fn new() -> FakeFnApi {
        FakeFnApi::default()
    }

    /// Adds an app; returns its id.
    pub fn app(&self, name: &str) -> String {
        let mut d = self.data.lock().unwrap();
        let id = format!("01APP{:021}", d.apps.len());
        d.apps.push((id.clone(), name.to_string()));
        id
    }

    /// Adds a function to an app; returns its id.
    pub fn function(&self, app_id: &str, name: &str) -> String {
        let mut d = self.data.lock().unwrap();
        let id = format!("01FN{:022}", d.fns.len());
        d.fns.push((id.clone(), name.to_string(), app_id.to_string()));
        id
    }

    /// Adds an HTTP trigger with this source (`/hello`) to a function.
    pub fn trigger(&self, app_id: &str, fn_id: &str, name: &str, source: &str) {
        let mut d = self.data.lock().unwrap();
        let id = format!("01TR{:022}", d.triggers.len());
        d.triggers.push(FakeTrigger {
            id,
            name: name.into(),
            app_id: app_id.into(),
            fn_id: fn_id.into(),
            source: source.into(),
        });
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The answer to an API path and query: status and JSON body.
    pub fn answer(&self, path: &str, query: Option<&str>, host: &str) -> (u16, String) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return (503, json!({"message": "Service temporarily unavailable"}).to_string());
        }
        let q: Vec<(String, String)> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let per_page = get("per_page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(30).clamp(1, 100);
        let cursor = get("cursor");
        let d = self.data.lock().unwrap();
        let items: Vec<(String, Value)> = match path {
            "/v2/apps" => d
                .apps
                .iter()
                .map(|(id, name)| {
                    (
                        id.clone(),
                        json!({"id": id, "name": name, "annotations": {}, "config": {},
                        "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z"}),
                    )
                })
                .collect(),
            "/v2/triggers" | "/v2/fns" => {
                let Some(app_id) = get("app_id") else {
                    return (400, json!({"message": "Missing App ID"}).to_string());
                };
                if path == "/v2/fns" {
                    d.fns
                        .iter()
                        .filter(|f| f.2 == app_id)
                        .map(|(id, name, app)| {
                            (
                                id.clone(),
                                json!({"id": id, "name": name, "app_id": app, "image": "fnproject/hello",
                                "memory": 128, "timeout": 30, "idle_timeout": 30}),
                            )
                        })
                        .collect()
                } else {
                    let app_name = d.apps.iter().find(|a| a.0 == app_id).map(|a| a.1.clone()).unwrap_or_default();
                    d.triggers
                        .iter()
                        .filter(|t| t.app_id == app_id)
                        .map(|t| {
                            let endpoint = format!("http://{host}/t/{app_name}{}", t.source);
                            (
                                t.id.clone(),
                                json!({"id": t.id, "name": t.name, "app_id": t.app_id, "fn_id": t.fn_id,
                                "type": "http", "source": t.source,
                                "annotations": {"fnproject.io/trigger/httpEndpoint": endpoint},
                                "created_at": "2026-01-01T00:00:00.000Z"}),
                            )
                        })
                        .collect()
                }
            }
            _ => return (404, json!({"message": "Path not found"}).to_string()),
        };
        // Fn's cursor is the last item's id, base64 (RawURLEncoding); items sort by id.
        let after = cursor.map(|c| String::from_utf8(b64_decode(&c)).unwrap_or_default());
        let page: Vec<&(String, Value)> =
            items.iter().filter(|(id, _)| after.as_ref().is_none_or(|a| id > a)).take(per_page).collect();
        let mut body = json!({"items": page.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()});
        if page.len() == per_page {
            body["next_cursor"] = json!(b64_encode(page.last().unwrap().0.as_bytes()));
        }
        (200, body.to_string())
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64_decode(s: &str) -> Vec<u8> {
    let vals: Vec<u32> = s.bytes().filter_map(|c| B64.iter().position(|b| *b == c).map(|p| p as u32)).collect();
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        let n = chunk.iter().fold(0u32, |acc, v| (acc << 6) | v) << (6 * (4 - chunk.len()));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
