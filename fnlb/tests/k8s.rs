//! Kubernetes mode (`-db=k8s`) end to end, against a fake API server that speaks the real protocol
//! (PodList with a resourceVersion; `watch=true` streams of newline-delimited events; `410 Gone`
//! as an `ERROR` event or as the HTTP status), with fake Fn nodes on their own loopback "pod IPs"
//! (127.0.0.2, 127.0.0.3, ...). Also: the manifests in deploy/kubernetes are valid Kubernetes
//! objects whose arguments fnlb accepts.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::{send, Fnlb};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const SELECTOR: &str = "app=fn,role=fn-service";
const FN_LABELS: &[(&str, &str)] = &[("app", "fn"), ("role", "fn-service")];
const READ_ONLY: &str = "nodes are discovered from Kubernetes; add or remove pods instead";

// ---------------------------------------------------------------------------------------------
// Fake Fn nodes, one per pod IP, all on the same port (fnlb's -target-port).

struct PodNode {
    stop: watch::Sender<bool>,
}

impl Drop for PodNode {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn serve_pod_node(listener: TcpListener) -> PodNode {
    let me = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut stop_accept = stop_rx.clone();
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = stop_accept.changed() => return,
            };
            let mut stop_conn = stop_rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/version" {
                        r#"{"version":"0.3.753"}"#.to_string()
                    } else {
                        format!("{me} {}\n", req.uri())
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-node", me.to_string())
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop_conn.changed() => {}
                }
            });
        }
    });
    PodNode { stop }
}

/// Fake Fn nodes on each of `ips`, all on one free port, which is returned.
async fn pod_nodes(ips: &[&str]) -> (u16, Vec<PodNode>) {
    'attempt: for _ in 0..50 {
        let first = TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'attempt,
            }
        }
        return (port, listeners.into_iter().map(serve_pod_node).collect());
    }
    panic!("no common free port on {ips:?}");
}

// ---------------------------------------------------------------------------------------------
// The fake Kubernetes API server.

#[derive(Clone, Copy, Debug)]
enum Gone {
    /// `200` and one `{"type":"ERROR","object":{Status 410}}` line, then the stream ends.
    Event,
    /// `410 Gone` with a Status body instead of a stream.
    Http,
}

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    auth: Option<String>,
}

impl Req {
    fn is_watch(&self) -> bool {
        self.query.get("watch").map(|v| v == "true" || v == "1").unwrap_or(false)
    }
}

struct OpenWatch {
    namespace: String,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct ApiState {
    rv: u64,
    /// (namespace, name) -> pod object as last stored.
    pods: BTreeMap<(String, String), Value>,
    /// Every change: (resourceVersion, namespace, type, object).
    history: Vec<(u64, String, &'static str, Value)>,
    /// Watches from a resourceVersion below this are answered 410 Gone.
    compacted: u64,
    gone: Option<Gone>,
    watches: Vec<OpenWatch>,
    requests: Vec<Req>,
    forbidden: BTreeSet<&'static str>,
}

impl ApiState {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores a pod (ADDED or MODIFIED); `notify` false changes it behind the watchers' back (as if
    /// the events were compacted away).
    fn put(&mut self, ns: &str, mut pod: Value, notify: bool) {
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        let rv = self.bump();
        pod["metadata"]["namespace"] = json!(ns);
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (ns.to_string(), name);
        let kind = if self.pods.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        self.pods.insert(key, pod.clone());
        if notify {
            self.emit(rv, ns, kind, pod);
        }
    }

    fn delete(&mut self, ns: &str, name: &str, notify: bool) {
        let Some(mut pod) = self.pods.remove(&(ns.to_string(), name.to_string())) else { return };
        let rv = self.bump();
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        if notify {
            self.emit(rv, ns, "DELETED", pod);
        }
    }

    fn emit(&mut self, rv: u64, ns: &str, kind: &'static str, pod: Value) {
        self.history.push((rv, ns.to_string(), kind, pod.clone()));
        let line = event_line(kind, &pod);
        self.watches.retain(|w| {
            if w.namespace != ns || !matches(&w.selector, &pod) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn parse_selector(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (k, v) = t.split_once("==").or_else(|| t.split_once('=')).expect("equality selector");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn matches(selector: &[(String, String)], pod: &Value) -> bool {
    selector.iter().all(|(k, v)| pod["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A watch response body: whatever the server pushes, until it drops the sender.
struct ChanBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

type ApiBody = Either<Full<Bytes>, ChanBody>;

fn json_response(code: u16, body: &Value) -> Response<ApiBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Either::Left(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}

fn handle(req: &Request<Incoming>, state: &Mutex<ApiState>) -> Response<ApiBody> {
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let recorded = Req {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: query.clone(),
        auth: req.headers().get("authorization").map(|v| v.to_str().unwrap().to_string()),
    };
    let mut st = state.lock().unwrap();
    st.requests.push(recorded.clone());
    let parts: Vec<&str> = recorded.path.trim_matches('/').split('/').collect();
    // One pod by name (a balancer reading its own pod for its labels).
    if let ["api", "v1", "namespaces", ns, "pods", name] = parts[..] {
        if st.forbidden.contains("get") {
            return json_response(403, &status(403, "Forbidden", "pods is forbidden: cannot get resource \"pods\""));
        }
        return match st.pods.get(&(ns.to_string(), name.to_string())) {
            Some(pod) => json_response(200, pod),
            None => json_response(404, &status(404, "NotFound", &format!("pods \"{name}\" not found"))),
        };
    }
    let ["api", "v1", "namespaces", ns, "pods"] = parts[..] else {
        return json_response(404, &status(404, "NotFound", "the server could not find the requested resource"));
    };
    let ns = ns.to_string();
    let selector = parse_selector(query.get("labelSelector").map(String::as_str).unwrap_or(""));
    let verb = if recorded.is_watch() { "watch" } else { "list" };
    if st.forbidden.contains(verb) {
        let msg = format!(
            "pods is forbidden: User \"system:serviceaccount:{ns}:fn-lb\" cannot {verb} resource \"pods\" in API \
             group \"\" in the namespace \"{ns}\""
        );
        return json_response(403, &status(403, "Forbidden", &msg));
    }
    if verb == "list" {
        let items: Vec<Value> =
            st.pods.iter().filter(|((n, _), p)| *n == ns && matches(&selector, p)).map(|(_, p)| p.clone()).collect();
        let list = json!({"kind": "PodList", "apiVersion": "v1",
                          "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        return json_response(200, &list);
    }
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if from < st.compacted {
        let gone = status(410, "Expired", &format!("too old resource version: {from} ({})", st.compacted));
        match st.gone.unwrap_or(Gone::Event) {
            Gone::Http => return json_response(410, &gone),
            Gone::Event => {
                // The stream ends after this one line: the sender is dropped here.
                tx.send(event_line("ERROR", &gone)).unwrap();
            }
        }
    } else {
        for (rv, n, kind, pod) in &st.history {
            if *rv > from && *n == ns && matches(&selector, pod) {
                tx.send(event_line(kind, pod)).unwrap();
            }
        }
        st.watches.push(OpenWatch { namespace: ns, selector, tx });
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Either::Right(ChanBody(rx)))
        .unwrap()
}

struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    stop: Mutex<Option<watch::Sender<bool>>>,
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ApiState::default()));
        let stop = Self::serve(listener, state.clone());
        FakeApi { addr, state, stop: Mutex::new(Some(stop)) }
    }

    fn serve(listener: TcpListener, state: Arc<Mutex<ApiState>>) -> watch::Sender<bool> {
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut stop_accept = stop_rx.clone();
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_accept.changed() => return,
                };
                let state = state.clone();
                let mut stop_conn = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let response = handle(&req, &state);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    // Going down drops every connection, open watches included, like a killed process.
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        stop
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API server goes away: connections are cut and new ones refused.
    fn down(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(true);
        }
        self.state.lock().unwrap().watches.clear();
    }

    /// Back on the same address, with everything it stored.
    async fn up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        *self.stop.lock().unwrap() = Some(Self::serve(listener, self.state.clone()));
    }

    fn put_pod(&self, ns: &str, pod: Value) {
        self.state.lock().unwrap().put(ns, pod, true);
    }

    fn delete_pod(&self, ns: &str, name: &str) {
        self.state.lock().unwrap().delete(ns, name, true);
    }

    /// A BOOKMARK at the current resourceVersion on every open watch.
    fn bookmark(&self) -> u64 {
        let mut st = self.state.lock().unwrap();
        let rv = st.rv;
        let line = event_line(
            "BOOKMARK",
            &json!({"kind": "Pod", "apiVersion": "v1",
                                                  "metadata": {"resourceVersion": rv.to_string()}}),
        );
        st.watches.retain(|w| w.tx.send(line.clone()).is_ok());
        rv
    }

    /// Ends every open watch stream cleanly (the API server's timeout, a restarted proxy...).
    fn drop_watches(&self) {
        self.state.lock().unwrap().watches.clear();
    }

    /// Changes pods without telling the watchers and forgets the history up to now: watches from
    /// an older resourceVersion get 410 Gone (in the given style) and must re-list.
    fn expire(&self, style: Gone, change: impl FnOnce(&mut ApiState)) {
        let mut st = self.state.lock().unwrap();
        change(&mut st);
        st.compacted = st.rv;
        st.gone = Some(style);
        let gone = status(410, "Expired", "too old resource version");
        let line = event_line("ERROR", &gone);
        let watches = std::mem::take(&mut st.watches);
        if let Gone::Event = style {
            for w in &watches {
                let _ = w.tx.send(line.clone());
            }
        }
        // Dropping the senders ends the streams.
    }

    fn forbid(&self, verb: &'static str) {
        self.state.lock().unwrap().forbidden.insert(verb);
    }

    /// The lists and watches of pods (what the node set comes from, and balancer counting).
    fn requests(&self) -> Vec<Req> {
        self.all_requests().into_iter().filter(|r| r.path.ends_with("/pods")).collect()
    }

    /// Every request, reads of one pod included.
    fn all_requests(&self) -> Vec<Req> {
        self.state.lock().unwrap().requests.clone()
    }

    fn lists(&self) -> usize {
        self.requests().iter().filter(|r| !r.is_watch()).count()
    }

    /// Waits until a request satisfying `pred` has been made; returns it.
    async fn wait_request(&self, what: &str, pred: impl Fn(&Req) -> bool) -> Req {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return r;
            }
            if Instant::now() > deadline {
                panic!("no {what} request; requests: {:#?}", self.requests());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A kubeconfig pointing at this server (plain HTTP, a bearer token), with an optional
    /// namespace in its context.
    fn kubeconfig(&self, dir: &Path, namespace: Option<&str>) -> PathBuf {
        let ns = namespace.map(|n| format!("\n    namespace: {n}")).unwrap_or_default();
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {}
contexts:
- name: fake
  context:
    cluster: fake
    user: tester{ns}
current-context: fake
users:
- name: tester
  user:
    token: test-token
",
            self.url()
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn pod(name: &str, labels: &[(&str, &str)], phase: &str, ip: Option<&str>, ready: bool) -> Value {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let mut status = json!({
        "phase": phase,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{ "ip": ip }]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "fn", "image": "fnproject/fnserver"}]},
        "status": status,
    })
}

fn fn_pod(name: &str, ip: &str) -> Value {
    pod(name, FN_LABELS, "Running", Some(ip), true)
}

// ---------------------------------------------------------------------------------------------
// fnlb helpers.

fn start_lb(kubeconfig: &Path, args: &[&str]) -> Fnlb {
    let mut all =
        vec!["-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0", "-hc-interval", "0.2", "-hc-timeout", "1"];
    all.extend_from_slice(&["-db", "k8s"]);
    all.extend_from_slice(args);
    Fnlb::start_raw(&all, &[("KUBECONFIG", kubeconfig.to_str().unwrap())])
}

/// Runs fnlb expecting it to exit; returns its exit code and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fnlb"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (code, err)
}

async fn nodes_of(lb: &Fnlb) -> Vec<(String, String)> {
    let r = send("GET", &lb.mgmt_url("/1/lb/nodes"), "").await;
    assert_eq!(r.status, 200);
    let mut got: Vec<(String, String)> = r.json()["nodes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    got.sort();
    got
}

/// Waits (up to 40 s: the watch retries with backoff) until the nodes are exactly `want`, online.
async fn wait_online(lb: &Fnlb, want: &[String]) {
    let mut want: Vec<(String, String)> = want.iter().map(|a| (a.clone(), "online".to_string())).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = nodes_of(lb).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nodes never became {want:?}; last {last:?}; log:\n{}", lb.log());
}

async fn wait_log(lb: &Fnlb, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if lb.log().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("log never said {needle:?}:\n{}", lb.log());
}

fn node(ip: &str, port: u16) -> String {
    format!("{ip}:{port}")
}

// ---------------------------------------------------------------------------------------------
// Tests against the fake API server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_and_go_as_nodes() {
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let (port, _nodes) = pod_nodes(&ips).await;
    let n = |i: usize| node(ips[i], port);
    let api = FakeApi::start().await;
    api.put_pod("fn", fn_pod("fn-a", ips[0]));
    api.put_pod("fn", fn_pod("fn-b", ips[1]));
    api.put_pod("fn", pod("fn-c", FN_LABELS, "Pending", None, false));
    // Not selected: another app's pod, and an Fn pod of another namespace.
    api.put_pod("fn", pod("other", &[("app", "other")], "Running", Some("127.0.0.9"), true));
    api.put_pod("elsewhere", fn_pod("fn-x", "127.0.0.8"));
    let dir = tempfile::tempdir().unwrap();
    // The context's namespace is overridden by -namespace.
    let kubeconfig = api.kubeconfig(dir.path(), Some("not-this-one"));
    let port_s = port.to_string();
    let lb = start_lb(&kubeconfig, &["-namespace", "fn", "-label-selector", SELECTOR, "-target-port", &port_s]);

    // Known from the start: no waiting for the watch.
    wait_online(&lb, &[n(0), n(1)]).await;
    let r = send("GET", &lb.url("/r/app/hello"), "").await;
    assert_eq!(r.status, 200);
    assert!([n(0), n(1)].contains(&r.node()), "{}", r.node());

    // What was asked: the namespace and the selector as configured, with the kubeconfig's token.
    let reqs = api.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/api/v1/namespaces/fn/pods"), "{r:?}");
        assert_eq!(r.query.get("labelSelector").map(String::as_str), Some(SELECTOR), "{r:?}");
        assert_eq!(r.auth.as_deref(), Some("Bearer test-token"), "{r:?}");
    }
    let w = api
        .wait_request("watch", |r| {
            r.is_watch() && r.query.contains_key("timeoutSeconds") && r.query["timeoutSeconds"] != "1"
        })
        .await;
    assert!(w.query.contains_key("resourceVersion"), "{w:?}");

    // A pending pod starts running: it becomes a node.
    api.put_pod("fn", fn_pod("fn-c", ips[2]));
    wait_online(&lb, &[n(0), n(1), n(2)]).await;

    // A pod turns not-ready: it leaves; ready again: it is back.
    api.put_pod("fn", pod("fn-a", FN_LABELS, "Running", Some(ips[0]), false));
    wait_online(&lb, &[n(1), n(2)]).await;
    for i in 0..20 {
        assert_ne!(send("GET", &lb.url(&format!("/r/app/{i}")), "").await.node(), n(0));
    }
    api.put_pod("fn", fn_pod("fn-a", ips[0]));
    wait_online(&lb, &[n(0), n(1), n(2)]).await;

    // Terminating (deletionTimestamp set) leaves at once; then the pod is deleted.
    let mut terminating = fn_pod("fn-b", ips[1]);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:05:00Z");
    api.put_pod("fn", terminating);
    wait_online(&lb, &[n(0), n(2)]).await;
    api.delete_pod("fn", "fn-b");

    // Failed, then deleted.
    api.put_pod("fn", pod("fn-c", FN_LABELS, "Failed", Some(ips[2]), false));
    wait_online(&lb, &[n(0)]).await;
    api.delete_pod("fn", "fn-c");

    // A new pod.
    api.put_pod("fn", fn_pod("fn-d", ips[3]));
    wait_online(&lb, &[n(0), n(3)]).await;
    // Changes outside the selection change nothing.
    api.put_pod("fn", pod("other-2", &[("app", "other")], "Running", Some("127.0.0.7"), true));
    api.put_pod("elsewhere", fn_pod("fn-y", "127.0.0.6"));
    api.delete_pod("fn", "fn-a");
    wait_online(&lb, &[n(3)]).await;

    // The management API cannot change the nodes in this mode.
    for method in ["PUT", "DELETE"] {
        let r = send(method, &lb.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{}"}}"#, n(0))).await;
        assert_eq!(r.status, 409, "{method}: {}", r.text());
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.json(), json!({ "msg": READ_ONLY }));
    }
    wait_online(&lb, &[n(3)]).await;
    let log = lb.log();
    assert!(log.contains("Kubernetes: pod is a node"), "{log}");
    assert!(log.contains("Kubernetes: pod left the nodes"), "{log}");
    assert!(log.contains("Kubernetes: pod deleted; node left"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_resumes_and_expired_watch_relists() {
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let (port, _nodes) = pod_nodes(&ips).await;
    let n = |i: usize| node(ips[i], port);
    let api = FakeApi::start().await;
    api.put_pod("fn", fn_pod("fn-a", ips[0]));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), Some("fn"));
    let port_s = port.to_string();
    let lb = start_lb(&kubeconfig, &["-label-selector", SELECTOR, "-target-port", &port_s]);
    wait_online(&lb, &[n(0)]).await;
    let watching = |api: &FakeApi| api.requests().iter().filter(|r| r.is_watch()).count();
    api.wait_request("watch", |r| r.is_watch() && r.query.get("timeoutSeconds").map(String::as_str) != Some("1")).await;

    // A bookmark moves the resume point; a dropped watch resumes from it without a re-list. The
    // change before it is not selected, so only the bookmark tells fnlb of the newer version.
    api.put_pod("fn", pod("other", &[("app", "other")], "Running", Some("127.0.0.9"), true));
    let bookmark = api.bookmark();
    let lists = api.lists();
    let before = watching(&api);
    // Ending the stream still delivers what was sent before (the bookmark).
    api.drop_watches();
    let want = bookmark.to_string();
    api.wait_request("resumed watch", |r| r.is_watch() && r.query.get("resourceVersion") == Some(&want)).await;
    api.put_pod("fn", fn_pod("fn-b", ips[1]));
    wait_online(&lb, &[n(0), n(1)]).await;
    assert!(watching(&api) > before);
    assert_eq!(api.lists(), lists, "a dropped watch resumes; it does not re-list");

    // Expired, told by an ERROR event: fnlb re-lists and learns what it missed.
    let lists = api.lists();
    api.expire(Gone::Event, |st| {
        st.delete("fn", "fn-a", false);
        st.put("fn", fn_pod("fn-c", "127.0.0.4"), false);
    });
    wait_online(&lb, &[n(1), n(2)]).await;
    assert!(api.lists() > lists, "a 410 makes fnlb re-list");
    wait_log(&lb, "410 Gone").await;

    // Expired, told by the HTTP status of the next watch: the same.
    let lists = api.lists();
    api.expire(Gone::Http, |st| {
        st.delete("fn", "fn-b", false);
        st.put("fn", fn_pod("fn-a", "127.0.0.2"), false);
    });
    wait_online(&lb, &[n(0), n(2)]).await;
    assert!(api.lists() > lists, "an HTTP 410 makes fnlb re-list");
    // And the watch goes on after the re-list.
    api.delete_pod("fn", "fn-c");
    wait_online(&lb, &[n(0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_keeps_the_nodes_and_catches_up_when_back() {
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let (port, _nodes) = pod_nodes(&ips).await;
    let n = |i: usize| node(ips[i], port);
    let api = FakeApi::start().await;
    api.put_pod("fn", fn_pod("fn-a", ips[0]));
    api.put_pod("fn", fn_pod("fn-b", ips[1]));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), None);
    let port_s = port.to_string();
    let lb = start_lb(&kubeconfig, &["-namespace", "fn", "-label-selector", SELECTOR, "-target-port", &port_s]);
    wait_online(&lb, &[n(0), n(1)]).await;
    api.wait_request("watch", |r| r.is_watch() && r.query.get("timeoutSeconds").map(String::as_str) != Some("1")).await;

    api.down();
    wait_log(&lb, "Kubernetes watch failed").await;
    // Routing goes on with the last known pods.
    assert_eq!(nodes_of(&lb).await, vec![(n(0), "online".into()), (n(1), "online".into())]);
    for i in 0..10 {
        assert_eq!(send("GET", &lb.url(&format!("/r/app/{i}")), "").await.status, 200);
    }
    // Meanwhile the cluster changes; the API server will tell when it is back.
    api.delete_pod("fn", "fn-a");
    api.put_pod("fn", fn_pod("fn-c", ips[2]));
    api.up().await;
    wait_online(&lb, &[n(1), n(2)]).await;
    wait_log(&lb, "Kubernetes watch working again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_defaults_to_the_kubeconfig_context_then_default() {
    let ips = ["127.0.0.6"];
    let (port, _nodes) = pod_nodes(&ips).await;
    let api = FakeApi::start().await;
    api.put_pod("team-a", fn_pod("fn-a", ips[0]));
    let port_s = port.to_string();
    let dir = tempfile::tempdir().unwrap();

    let kubeconfig = api.kubeconfig(dir.path(), Some("team-a"));
    let lb = start_lb(&kubeconfig, &["-label-selector", SELECTOR, "-target-port", &port_s]);
    wait_online(&lb, &[node(ips[0], port)]).await;
    assert!(api.requests().iter().all(|r| r.path == "/api/v1/namespaces/team-a/pods"));
    drop(lb);

    let kubeconfig = api.kubeconfig(dir.path(), None);
    let before = api.requests().len();
    let lb = start_lb(&kubeconfig, &["-label-selector", SELECTOR, "-target-port", &port_s]);
    assert!(api.requests()[before..].iter().all(|r| r.path == "/api/v1/namespaces/default/pods"));
    assert_eq!(nodes_of(&lb).await, vec![]);
    // No selector: every pod of the namespace, with a warning.
    drop(lb);
    let lb = start_lb(&kubeconfig, &["-namespace", "team-a", "-target-port", &port_s]);
    wait_online(&lb, &[node(ips[0], port)]).await;
    assert!(lb.log().contains("-label-selector is empty"), "{}", lb.log());
    let last = api.requests().pop().unwrap();
    assert!(!last.query.contains_key("labelSelector") || last.query["labelSelector"].is_empty(), "{last:?}");
}

/// A balancer started as pod `pod_name` (`POD_NAME`, as the manifests set it from the downward API).
fn start_lb_as(kubeconfig: &Path, pod_name: &str, args: &[&str]) -> Fnlb {
    let mut all =
        vec!["-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0", "-hc-interval", "0.2", "-hc-timeout", "1"];
    all.extend_from_slice(&["-db", "k8s"]);
    all.extend_from_slice(args);
    Fnlb::start_raw(&all, &[("KUBECONFIG", kubeconfig.to_str().unwrap()), ("POD_NAME", pod_name)])
}

/// `GET /1/lb/cluster`: the balancer count and who counted it.
async fn count_of(lb: &Fnlb) -> (u64, String) {
    let c = send("GET", &lb.mgmt_url("/1/lb/cluster"), "").await.json();
    (c["balancers"].as_u64().unwrap(), c["balancers_counted_by"].as_str().unwrap().to_string())
}

async fn wait_count(lb: &Fnlb, want: u64, by: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        last = count_of(lb).await;
        if last == (want, by.to_string()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("count never became {want} by {by}; last {last:?}; log:\n{}", lb.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_count_their_ready_pods() {
    let ips = ["127.0.0.2"];
    let (port, _nodes) = pod_nodes(&ips).await;
    let port_s = port.to_string();
    let api = FakeApi::start().await;
    api.put_pod("fn", fn_pod("fn-a", ips[0]));
    // A Deployment's balancer pods: the same app label, a per-revision pod-template-hash.
    let lb_pod = |name: &str, hash: &str, ready: bool| {
        pod(name, &[("app", "fnlb"), ("pod-template-hash", hash)], "Running", Some("10.0.0.1"), ready)
    };
    api.put_pod("fn", lb_pod("fnlb-a", "r1", true));
    api.put_pod("fn", lb_pod("fnlb-b", "r1", true));
    api.put_pod("fn", lb_pod("fnlb-c", "r2", true));
    // Not counted: not Ready, Pending, another namespace, another app.
    api.put_pod("fn", lb_pod("fnlb-d", "r1", false));
    api.put_pod("fn", pod("fnlb-e", &[("app", "fnlb"), ("pod-template-hash", "r2")], "Pending", None, false));
    api.put_pod("elsewhere", lb_pod("fnlb-x", "r1", true));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), Some("fn"));
    let args = ["-label-selector", SELECTOR, "-target-port", &port_s];

    // No -balancers, no -balancer-selector: the own pod's labels, without pod-template-hash.
    let lb = start_lb_as(&kubeconfig, "fnlb-a", &args);
    wait_count(&lb, 3, "pods").await;
    let reqs = api.all_requests();
    assert!(reqs.iter().any(|r| r.path == "/api/v1/namespaces/fn/pods/fnlb-a"), "{reqs:#?}");
    assert!(
        reqs.iter().any(|r| r.query.get("labelSelector").map(String::as_str) == Some("app=fnlb")),
        "the balancers' selector: {reqs:#?}"
    );
    // Pods come and go: the count follows.
    api.put_pod("fn", lb_pod("fnlb-d", "r1", true));
    wait_count(&lb, 4, "pods").await;
    api.delete_pod("fn", "fnlb-c");
    wait_count(&lb, 3, "pods").await;
    let mut terminating = lb_pod("fnlb-b", "r1", true);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:05:00Z");
    api.put_pod("fn", terminating);
    api.put_pod("fn", lb_pod("fnlb-d", "r1", false));
    wait_count(&lb, 1, "pods").await;
    // The API server away: the last count stays.
    api.down();
    wait_log(&lb, "cannot count balancer pods; keeping the last count").await;
    assert_eq!(count_of(&lb).await, (1, "pods".to_string()));
    api.up().await;
    api.put_pod("fn", lb_pod("fnlb-f", "r3", true));
    wait_count(&lb, 2, "pods").await;
    drop(lb);

    // An explicit selector.
    let lb = start_lb_as(&kubeconfig, "fnlb-a", &[&args[..], &["-balancer-selector", "pod-template-hash=r3"]].concat());
    wait_count(&lb, 1, "pods").await;
    api.put_pod("fn", lb_pod("fnlb-g", "r3", true));
    wait_count(&lb, 2, "pods").await;
    drop(lb);

    // -balancers given: fixed, nothing counted.
    let lb = start_lb_as(&kubeconfig, "fnlb-a", &[&args[..], &["-balancers", "5"]].concat());
    assert_eq!(count_of(&lb).await, (5, "flag".to_string()));
    assert!(!lb.log().contains("counting balancers"), "{}", lb.log());
    drop(lb);

    // The own pod cannot be read: said once, at start, with the flag to set; the count stays 1.
    let lb = start_lb_as(&kubeconfig, "not-a-pod", &args);
    assert!(lb.log().contains("set -balancer-selector"), "{}", lb.log());
    assert!(lb.log().contains("not-a-pod"), "{}", lb.log());
    assert_eq!(count_of(&lb).await, (1, "flag".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0", "-db=k8s", "-namespace=fn"];

    // A missing RBAC rule names the verb, the namespace and the rule to add.
    for verb in ["list", "watch"] {
        let api = FakeApi::start().await;
        api.forbid(verb);
        let kubeconfig = api.kubeconfig(dir.path(), None);
        let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
        let (code, err) = tokio::task::block_in_place(|| run_to_exit(&args, &env));
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&format!("forbidden to {verb} pods in namespace \"fn\"")), "{err}");
        assert!(err.contains(r#"resources: ["pods"], verbs: ["get", "list", "watch"]"#), "{err}");
        assert!(err.contains("RoleBinding"), "{err}");
    }

    // Nobody listening at the configured server.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let kubeconfig = dir.path().join("closed");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{closed}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
             users:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let (code, err) = tokio::task::block_in_place(|| run_to_exit(&args, &env));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unreachable") && err.contains(&closed.to_string()), "{err}");

    // No configuration at all: not in a cluster, no kubeconfig.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let missing = dir.path().join("missing");
    let env = [("KUBECONFIG", missing.to_str().unwrap()), ("HOME", home.to_str().unwrap())];
    let (code, err) = tokio::task::block_in_place(|| run_to_exit(&args, &env));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no Kubernetes configuration"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("fnlb: ")).count(), 1, "one line: {err}");
}

// ---------------------------------------------------------------------------------------------
// The manifests and the image.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every document of every YAML file under deploy/kubernetes, as JSON, with its file.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![repo().join("deploy/kubernetes")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(!files.is_empty());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.strip_prefix(repo()).unwrap().display().to_string();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

/// Parses into the k8s-openapi type and back: a field the type does not know (a typo) would be
/// lost on the way and show up as a difference.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(strip_nulls(back), strip_nulls(v.clone()), "{file}: fields lost in parsing (typo?)");
    t
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        v => v,
    }
}

#[test]
fn manifests_are_valid_objects_that_fit_together() {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    let (mut daemonsets, mut services, mut accounts, mut roles, mut bindings, mut namespaces) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut deployments: Vec<Deployment> = vec![];
    for (file, v) in manifests() {
        let kind = (v["apiVersion"].as_str().unwrap_or(""), v["kind"].as_str().unwrap_or(""));
        match kind {
            ("apps/v1", "DaemonSet") => daemonsets.push(typed::<DaemonSet>(&file, &v)),
            ("apps/v1", "Deployment") => deployments.push(typed(&file, &v)),
            ("v1", "Service") => services.push(typed::<Service>(&file, &v)),
            ("v1", "ServiceAccount") => accounts.push(typed::<ServiceAccount>(&file, &v)),
            ("v1", "Namespace") => namespaces.push(typed::<Namespace>(&file, &v)),
            ("rbac.authorization.k8s.io/v1", "Role") => roles.push(typed::<Role>(&file, &v)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => bindings.push(typed::<RoleBinding>(&file, &v)),
            other => panic!("{file}: unexpected {other:?}"),
        }
    }
    let ns = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.namespace.clone().unwrap();
    assert_eq!(namespaces.len(), 1);
    let namespace = namespaces[0].metadata.name.clone().unwrap();
    assert_eq!(namespace, "fn", "the original's namespace");

    // The DaemonSet: apps/v1 with a selector that matches its pods.
    assert_eq!(daemonsets.len(), 1);
    let ds = &daemonsets[0];
    assert_eq!(ns(&ds.metadata), namespace);
    let spec = ds.spec.as_ref().unwrap();
    let pod_labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let selector = spec.selector.match_labels.clone().unwrap();
    assert!(
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "selector {selector:?} vs labels {pod_labels:?}"
    );
    let pod_spec = spec.template.spec.as_ref().unwrap();
    let container = &pod_spec.containers[0];

    // Its arguments are flags fnlb takes, meaning Kubernetes mode with the original's selector.
    let args = container.args.clone().unwrap();
    let mut argv = vec!["fnlb".to_string()];
    argv.extend(args.iter().cloned());
    let cfg = fnlb::config::parse_args(argv.into_iter().map(Into::into).collect())
        .unwrap_or_else(|e| panic!("DaemonSet args {args:?}: {e}"));
    assert_eq!(cfg.db, fnlb::discovery::db_url::DbUrl::K8s);
    assert_eq!(cfg.label_selector, SELECTOR);
    assert!(container.command.is_none(), "the image's entrypoint is fnlb; args only");

    // Ports: the container serves on -listen; the probes ask the management listener.
    let ports = container.ports.clone().unwrap();
    let port_of = |name_or_number: &IntOrString| match name_or_number {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no port {name}"))
                .container_port
        }
    };
    assert!(ports.iter().any(|p| p.container_port == i32::from(cfg.listen.port())));
    for (what, probe) in [("readiness", &container.readiness_probe), ("liveness", &container.liveness_probe)] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{what} probe: httpGet"));
        assert_eq!(get.path.as_deref(), Some("/1/lb/nodes"), "{what}");
        assert_eq!(port_of(&get.port), i32::from(cfg.mgmt_listen.port()), "{what} probe port");
    }

    // The service account exists and may get/list/watch pods in the namespace.
    let sa = pod_spec.service_account_name.clone().expect("serviceAccountName");
    assert!(accounts.iter().any(|a| a.metadata.name.as_deref() == Some(&sa) && ns(&a.metadata) == namespace));
    let binding = bindings
        .iter()
        .find(|b| {
            b.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(namespace.as_str())
            })
        })
        .expect("a RoleBinding for the service account");
    assert_eq!(ns(&binding.metadata), namespace);
    assert_eq!(binding.role_ref.kind, "Role");
    let role =
        roles.iter().find(|r| r.metadata.name.as_deref() == Some(&binding.role_ref.name)).expect("the bound Role");
    assert_eq!(ns(&role.metadata), namespace);
    let rules = role.rules.clone().unwrap();
    let allowed: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r.api_groups.iter().flatten().any(std::string::String::is_empty))
        .filter(|r| r.resources.iter().flatten().any(|x| x == "pods"))
        .flat_map(|r| r.verbs.iter().map(String::as_str))
        .collect();
    assert_eq!(allowed, BTreeSet::from(["get", "list", "watch"]));

    // The Service sends to the balancers' pods, on the traffic port.
    let lb_service = services
        .iter()
        .find(|s| {
            let sel = s.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
            !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
        })
        .expect("a Service selecting the fnlb pods");
    assert_eq!(ns(&lb_service.metadata), namespace);
    let sp = &lb_service.spec.as_ref().unwrap().ports.clone().unwrap()[0];
    let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
    assert_eq!(port_of(&target), i32::from(cfg.listen.port()));

    // The example Fn servers carry the labels the balancer selects.
    for d in &deployments {
        let labels = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
        for (k, v) in FN_LABELS {
            assert_eq!(labels.get(*k).map(String::as_str), Some(*v), "{:?}", d.metadata.name);
        }
        assert_eq!(ns(&d.metadata), namespace);
    }
}

#[test]
fn the_originals_sample_daemonset_args_still_work() {
    let args = ["fnlb", "-db=k8s", "-label-selector=app=fn,role=fn-service", "-listen=:8080", "-mgmt-listen=:8080"];
    let cfg = fnlb::config::parse_args(args.iter().map(std::ffi::OsString::from).collect()).unwrap();
    assert_eq!(cfg.db, fnlb::discovery::db_url::DbUrl::K8s);
    assert_eq!(cfg.label_selector, SELECTOR);
    assert_eq!(cfg.namespace, None, "its own namespace");
    assert_eq!(cfg.target_port, 8080);
    assert!(cfg.shares_listener());
}

#[test]
fn dockerfile_runs_fnlb_as_non_root_with_args() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    assert!(lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    let final_stage = &lines[last_from..];
    let entrypoint = final_stage.iter().find(|l| l.starts_with("ENTRYPOINT")).expect("ENTRYPOINT");
    assert!(entrypoint.contains('[') && entrypoint.contains("fnlb\"]"), "exec form, the binary alone: {entrypoint}");
    assert!(!final_stage.iter().any(|l| l.starts_with("CMD")), "no CMD: docker run IMAGE --nodes ... passes args");
    assert!(final_stage.contains(&"EXPOSE 8081"));
    let user = final_stage.iter().rev().find(|l| l.starts_with("USER ")).expect("USER");
    assert!(!user.contains("root") || user.contains("nonroot"), "{user}");
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim_matches('/') == "target"), "target/ stays out of the build context");
}
