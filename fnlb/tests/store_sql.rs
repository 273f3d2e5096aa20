//! The node store on real database servers: several balancers sharing one PostgreSQL or
//! MySQL/MariaDB database, a table the Go original created, both MySQL DSN forms, a database
//! unreachable at start, and outages while running (a TCP relay between fnlb and the database
//! that the test cuts, silences and restores).
//!
//! Needs PostgreSQL at 127.0.0.1:5432 (user `postgres`, database `test`, trust auth) and
//! MySQL/MariaDB at 127.0.0.1:3306 (user `root`, no password, database `test`); other servers
//! through `FNLB_TEST_PG_URL=postgres://user:pw@host:5432/db` and
//! `FNLB_TEST_MYSQL_URL=mysql://user:pw@host:3306/db` (URL form). Each test works in a fresh
//! database `fnlb_t_*` that it drops afterwards, also when it fails. A test whose server is not
//! reachable prints `SKIPPED: ...` and passes, unless `FNLB_REQUIRE_DB=1` (CI), where it fails.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use sqlx::Connection;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long a change made through one balancer may take to be listed by another. The balancers
/// re-read the store every 0.2 s (`Fnlb::start`); the bound leaves room for a loaded machine.
const SEEN_WITHIN: Duration = Duration::from_secs(2);

/// Bound on any answer of the management API while the database is away.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Bound on catching up once the database is back.
const RECOVER_WITHIN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Test databases

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pg,
    My,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pg => "PostgreSQL",
            Kind::My => "MySQL",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Kind::Pg => "FNLB_TEST_PG_URL",
            Kind::My => "FNLB_TEST_MYSQL_URL",
        }
    }

    /// The server's URL, on a database that exists (to create the test's own from).
    fn server_url(self) -> url::Url {
        let default = match self {
            Kind::Pg => "postgres://postgres@127.0.0.1:5432/test",
            Kind::My => "mysql://root@127.0.0.1:3306/test",
        };
        let s = std::env::var(self.env()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| default.into());
        url::Url::parse(&s).unwrap_or_else(|e| panic!("{} is not a URL: {e}", self.env()))
    }
}

fn host_port(url: &url::Url) -> String {
    let port = url.port().unwrap_or(if url.scheme() == "mysql" { 3306 } else { 5432 });
    format!("{}:{port}", url.host_str().unwrap_or("localhost"))
}

/// One direct connection to a database, for the test's own reads and writes.
enum Sql {
    Pg(sqlx::PgConnection),
    My(sqlx::MySqlConnection),
}

impl Sql {
    async fn connect(kind: Kind, url: &str) -> Result<Sql, sqlx::Error> {
        Ok(match kind {
            Kind::Pg => Sql::Pg(sqlx::PgConnection::connect(url).await?),
            Kind::My => Sql::My(sqlx::MySqlConnection::connect(url).await?),
        })
    }

    async fn exec(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Sql::Pg(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Sql::My(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
        }
    }

    async fn close(self) {
        let _ = match self {
            Sql::Pg(c) => c.close().await,
            Sql::My(c) => c.close().await,
        };
    }

    async fn strings(&mut self, sql: &str) -> Vec<String> {
        let r = match self {
            Sql::Pg(c) => sqlx::query_scalar(sql).fetch_all(c).await,
            Sql::My(c) => sqlx::query_scalar(sql).fetch_all(c).await,
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn count(&mut self, sql: &str) -> i64 {
        let r = match self {
            Sql::Pg(c) => sqlx::query_scalar(sql).fetch_one(c).await,
            Sql::My(c) => sqlx::query_scalar(sql).fetch_one(c).await,
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The database's clock, in Unix seconds.
    async fn now(&mut self) -> i64 {
        let sql = match self {
            Sql::Pg(_) => "SELECT EXTRACT(EPOCH FROM now())::bigint",
            Sql::My(_) => "SELECT CAST(UNIX_TIMESTAMP() AS SIGNED)",
        };
        self.count(sql).await
    }

    async fn insert_node(&mut self, row: &str) {
        let sql = format!("INSERT INTO lb_nodes (address) VALUES ('{}')", row.replace('\'', "''"));
        self.exec(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn delete_node(&mut self, row: &str) {
        let sql = format!("DELETE FROM lb_nodes WHERE address = '{}'", row.replace('\'', "''"));
        self.exec(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn rows(&mut self) -> BTreeSet<String> {
        let sql = match self {
            Sql::Pg(_) => "SELECT address::text FROM lb_nodes",
            Sql::My(_) => "SELECT CAST(address AS CHAR) FROM lb_nodes",
        };
        self.strings(sql).await.into_iter().collect()
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh database on a real server, dropped with this value (also when the test panics:
/// declare it before the balancers, so they are stopped first).
struct TestDb {
    kind: Kind,
    /// The database's URL (the server's, with our database's name).
    url: url::Url,
    sql: Sql,
    _cleanup: DropDb,
}

impl TestDb {
    /// `None` (after saying SKIPPED) when the server is not reachable and skipping is allowed.
    async fn create(kind: Kind, test: &str) -> Option<TestDb> {
        let server = kind.server_url();
        let mut admin = match tokio::time::timeout(Duration::from_secs(5), Sql::connect(kind, server.as_str())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return skip(kind, &server, test, &e.to_string()),
            Err(_) => return skip(kind, &server, test, "no answer within 5s"),
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name =
            format!("fnlb_t_{}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst), nanos % 1_000_000);
        admin.exec(&format!("CREATE DATABASE {name}")).await.unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
        let cleanup = DropDb { kind, server: server.to_string(), name: name.clone() };
        admin.close().await;
        let mut url = server.clone();
        url.set_path(&format!("/{name}"));
        let sql = Sql::connect(kind, url.as_str()).await.unwrap_or_else(|e| panic!("connect to {name}: {e}"));
        Some(TestDb { kind, url, sql, _cleanup: cleanup })
    }

    /// `-db` for fnlb, URL form.
    fn db_url(&self) -> String {
        self.url.to_string()
    }

    /// `-db` for fnlb through a relay.
    fn db_url_via(&self, relay: SocketAddr) -> String {
        let mut url = self.url.clone();
        url.set_host(Some(&relay.ip().to_string())).unwrap();
        url.set_port(Some(relay.port())).unwrap();
        url.to_string()
    }

    /// The Go MySQL driver's form, `mysql://user[:pw]@tcp(host:port)/db[?params]`.
    fn go_mysql_dsn(&self, params: &str) -> String {
        let pw = self.url.password().map(|p| format!(":{p}")).unwrap_or_default();
        let q = if params.is_empty() { String::new() } else { format!("?{params}") };
        format!("mysql://{}{pw}@tcp({}){}{q}", self.url.username(), host_port(&self.url), self.url.path())
    }

    /// The server's address, for the relay.
    fn server_addr(&self) -> SocketAddr {
        host_port(&self.url).to_socket_addrs().unwrap().next().unwrap()
    }
}

fn skip(kind: Kind, server: &url::Url, test: &str, error: &str) -> Option<TestDb> {
    let what = format!(
        "{} not reachable at {} (start it, or set {}) [{test}: {error}]",
        kind.name(),
        host_port(server),
        kind.env()
    );
    if std::env::var("FNLB_REQUIRE_DB").is_ok_and(|v| v == "1") {
        panic!("{what}; FNLB_REQUIRE_DB=1 forbids skipping");
    }
    // Straight to the terminal: the test harness shows captured output only for failures.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
    None
}

/// Drops the test database, synchronously, on its own thread and runtime (a test's runtime may
/// be the one unwinding).
struct DropDb {
    kind: Kind,
    server: String,
    name: String,
}

impl Drop for DropDb {
    fn drop(&mut self) {
        let (kind, server, name) = (self.kind, self.server.clone(), self.name.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let sql = match kind {
                    // FORCE: a balancer killed a moment ago may still have a session open.
                    Kind::Pg => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    Kind::My => format!("DROP DATABASE IF EXISTS {name}"),
                };
                let work = async {
                    let mut admin = Sql::connect(kind, &server).await?;
                    admin.exec(&sql).await
                };
                match tokio::time::timeout(Duration::from_secs(20), work).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("no answer within 20s".into()),
                }
            })
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: could not drop test database {}: cleanup panicked", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Balancers

/// A balancer on `db` with plain consistent hashing (where a key goes depends only on the node
/// list, which is what sharing the store must make equal).
fn start_lb(db: &str) -> Fnlb {
    Fnlb::start(&["-db", db, "-policy", "ch"])
}

async fn put(lb: &Fnlb, node: &str) -> Answer {
    send("PUT", &lb.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{node}"}}"#)).await
}

async fn delete(lb: &Fnlb, node: &str) -> Answer {
    send("DELETE", &lb.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{node}"}}"#)).await
}

async fn listed(lb: &Fnlb) -> BTreeSet<String> {
    let r = send("GET", &lb.mgmt_url("/1/lb/nodes"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["nodes"].as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(std::string::ToString::to_string).collect()
}

/// Waits until the balancer lists exactly these nodes (in any state); returns how long it took.
async fn wait_listed(lb: &Fnlb, want: &[&str], limit: Duration) -> Duration {
    let want = set(want);
    let start = Instant::now();
    loop {
        let got = listed(lb).await;
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not listed within {limit:?}: want {want:?}, got {got:?}\n{}", lb.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the balancer's log has `needle`; returns how long it took.
async fn wait_log(lb: &Fnlb, needle: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while !lb.log().contains(needle) {
        assert!(start.elapsed() < limit, "{needle:?} not logged within {limit:?}:\n{}", lb.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// GET through the balancer: the status and the node that answered, or what went wrong.
async fn get(client: &HttpClient, url: &str) -> Result<(u16, String), String> {
    let req = http::Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let resp = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("{url}: {e}")),
        Err(_) => return Err(format!("{url}: no answer within 10s")),
    };
    let status = resp.status().as_u16();
    let node = resp.headers().get("x-node").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    resp.into_body().collect().await.map_err(|e| format!("{url}: body: {e}"))?;
    Ok((status, node))
}

/// Where each of `keys` paths goes through this balancer.
async fn routes(lb: &Fnlb, keys: usize) -> Vec<String> {
    let client = client();
    let mut out = Vec::with_capacity(keys);
    for i in 0..keys {
        let (status, node) = get(&client, &lb.url(&format!("/r/app{}/fn{i}", i % 7))).await.unwrap();
        assert_eq!(status, 200, "key {i}");
        out.push(node);
    }
    out
}

/// Calls through the balancer in a loop, in the background, counting answers.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Traffic {
    fn start(lb: &Fnlb) -> Traffic {
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let base = lb.url("/r/app/");
        let (s, o, e) = (stop.clone(), ok.clone(), Arc::clone(&errors));
        let task = tokio::spawn(async move {
            let client = client();
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                match get(&client, &format!("{base}fn{}", i % 50)).await {
                    Ok((200, _)) => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((status, _)) => e.lock().unwrap().push(format!("call {i}: status {status}")),
                    Err(err) => e.lock().unwrap().push(format!("call {i}: {err}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Traffic { stop, ok, errors, task }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits until `more` further calls succeeded (bounded).
    async fn wait_more(&self, more: usize) {
        let target = self.ok() + more;
        let start = Instant::now();
        while self.ok() < target {
            assert!(self.errors().is_empty(), "traffic failed: {:?}", self.errors());
            assert!(start.elapsed() < Duration::from_secs(20), "traffic stalled at {} calls", self.ok());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let errors = self.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "calls failed: {errors:?}");
        self.ok.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// A TCP relay between fnlb and the database

/// Forwards connections to the database until cut. `cut` closes the listener and every relayed
/// connection (a database that went away); `restore` listens on the same port again;
/// `silence_existing` makes the connections open now stop forwarding while staying open (packets
/// black-holed), and relays new ones normally (a failover the old sessions did not notice).
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    silence: watch::Sender<u64>,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (silence, _) = watch::channel(0);
        let mut relay = Relay { addr: listener.local_addr().unwrap(), target, silence, running: None };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop_tx, mut stop) = watch::channel(false);
        let target = self.target;
        let silence = self.silence.subscribe();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let mut silence = silence.clone();
                        let born = *silence.borrow_and_update();
                        conns.spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = async { silence.wait_for(|g| *g > born).await.map(drop) } => {
                                    // Both sockets stay open; nothing moves any more.
                                    std::future::pending::<()>().await;
                                }
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(listener);
            // Aborts every relayed connection and waits until their sockets are closed.
            conns.shutdown().await;
        });
        self.running = Some((stop_tx, task));
    }

    async fn cut(&mut self) {
        let (stop, task) = self.running.take().expect("relay is running");
        let _ = stop.send(true);
        task.await.unwrap();
    }

    async fn restore(&mut self) {
        assert!(self.running.is_none(), "relay is running");
        let start = Instant::now();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(start.elapsed() < Duration::from_secs(5), "rebind {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(listener);
    }

    fn silence_existing(&self) {
        self.silence.send_modify(|g| *g += 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Several balancers on one database

async fn balancers_share_nodes_and_routing(kind: Kind, test: &str) {
    let Some(mut db) = TestDb::create(kind, test).await else { return };
    let nodes = [FakeNode::start().await, FakeNode::start().await, FakeNode::start().await];
    let names: Vec<String> = nodes.iter().map(FakeNode::name).collect();
    let [a, b, c] = [names[0].as_str(), names[1].as_str(), names[2].as_str()];

    let lb1 = start_lb(&db.db_url());
    let lb2 = start_lb(&db.db_url());
    assert_eq!(put(&lb1, a).await.status, 200);
    let seen = wait_listed(&lb2, &[a], SEEN_WITHIN).await;
    eprintln!("{kind:?}: a PUT on one balancer was listed by another after {seen:?}");

    // A third balancer starts with the stored list, then every balancer's changes reach the others.
    let lb3 = start_lb(&db.db_url());
    let t = wait_listed(&lb3, &[a], SEEN_WITHIN).await;
    eprintln!("{kind:?}: a balancer started later listed the stored node {t:?} after it said ready");
    assert_eq!(put(&lb2, b).await.status, 200);
    assert_eq!(put(&lb3, c).await.status, 200);
    for lb in [&lb1, &lb2, &lb3] {
        let t = wait_listed(lb, &[a, b, c], SEEN_WITHIN).await;
        eprintln!("{kind:?}: two PUTs on other balancers listed after {t:?}");
    }
    assert_eq!(db.sql.rows().await, set(&[a, b, c]));
    for lb in [&lb1, &lb2, &lb3] {
        lb.wait_nodes(&[(a, "online"), (b, "online"), (c, "online")]).await;
    }

    // Same node list, same routing: 1,000 keys go to the same node through every balancer.
    const KEYS: usize = 1000;
    let (r1, r2, r3) = tokio::join!(routes(&lb1, KEYS), routes(&lb2, KEYS), routes(&lb3, KEYS));
    for (other, r) in [("lb2", &r2), ("lb3", &r3)] {
        let differ = (0..KEYS).filter(|&i| r1[i] != r[i]).count();
        assert_eq!(differ, 0, "{differ} of {KEYS} keys route differently on lb1 and {other}");
    }
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &r1 {
        *per_node.entry(n.as_str()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "keys spread over every node: {per_node:?}");
    assert!(per_node.values().all(|&n| n > KEYS / 6), "keys spread evenly: {per_node:?}");

    // A DELETE on one reaches the others; they agree again, and only the deleted node's keys moved.
    assert_eq!(delete(&lb3, a).await.status, 200);
    for lb in [&lb1, &lb2] {
        wait_listed(lb, &[b, c], SEEN_WITHIN).await;
    }
    let (s1, s2, s3) = tokio::join!(routes(&lb1, KEYS), routes(&lb2, KEYS), routes(&lb3, KEYS));
    assert_eq!(s1, s2, "lb1 and lb2 agree after the DELETE");
    assert_eq!(s1, s3, "lb1 and lb3 agree after the DELETE");
    for i in 0..KEYS {
        assert_ne!(s1[i], a, "key {i} still goes to the deleted node");
        if r1[i] != a {
            assert_eq!(s1[i], r1[i], "key {i} moved though its node stayed");
        }
    }
    assert_eq!(db.sql.rows().await, set(&[b, c]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_balancers_share_nodes_and_routing() {
    balancers_share_nodes_and_routing(Kind::Pg, "pg_balancers_share_nodes_and_routing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_balancers_share_nodes_and_routing() {
    balancers_share_nodes_and_routing(Kind::My, "mysql_balancers_share_nodes_and_routing").await;
}

// ---------------------------------------------------------------------------------------------
// Balancers count themselves

/// `GET /1/lb/cluster`: the balancer count and who counted it.
async fn count_of(lb: &Fnlb) -> (u64, String) {
    let r = send("GET", &lb.mgmt_url("/1/lb/cluster"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    (c["balancers"].as_u64().unwrap(), c["balancers_counted_by"].as_str().unwrap().to_string())
}

/// Waits until every balancer counts `want` balancers by heartbeats.
async fn wait_count(lbs: &[&Fnlb], want: u64) {
    let start = Instant::now();
    for lb in lbs {
        loop {
            let got = count_of(lb).await;
            if got == (want, "heartbeats".to_string()) {
                break;
            }
            assert!(start.elapsed() < RECOVER_WITHIN, "count {got:?}, want {want}\n{}", lb.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("{} balancers counted {want} within {:?}", lbs.len(), start.elapsed());
}

async fn balancers_count_themselves(kind: Kind, test: &str) {
    let Some(mut db) = TestDb::create(kind, test).await else { return };
    let node = FakeNode::start().await;
    let url = db.db_url();
    fn args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["-db", url];
        a.extend_from_slice(extra);
        a
    }
    let lb1 = Fnlb::start(&args(&url, &["-nodes", &node.name()]));
    wait_count(&[&lb1], 1).await;
    let mut lb2 = Fnlb::start(&args(&url, &[]));
    let lb3 = Fnlb::start(&args(&url, &[]));
    wait_count(&[&lb1, &lb2, &lb3], 3).await;
    assert_eq!(db.sql.count("SELECT COUNT(*) FROM lb_balancers").await, 3);
    // The original's table is as it was: one column, the node.
    assert_eq!(db.sql.rows().await, set(&[&node.name()]));

    // A clean shutdown removes the balancer's row: the others count one fewer at once.
    lb2.signal("TERM");
    assert_eq!(lb2.wait_exit(Duration::from_secs(10)), Some(0), "{}", lb2.log());
    assert!(lb2.log().contains("balancer heartbeat removed"), "{}", lb2.log());
    wait_count(&[&lb1, &lb3], 2).await;
    assert_eq!(db.sql.count("SELECT COUNT(*) FROM lb_balancers").await, 2);

    // A killed balancer is not counted once its row expires (the row stays until swept).
    drop(lb3);
    wait_count(&[&lb1], 1).await;

    // -balancers given: fixed, and no heartbeat of its own.
    let fixed = Fnlb::start(&args(&url, &["-balancers", "4"]));
    assert_eq!(count_of(&fixed).await, (4, "flag".to_string()));
    let since = db.sql.now().await;
    // Two seconds of lb1's heartbeats later (on the database's clock), only lb1 is alive.
    let start = Instant::now();
    while db.sql.count("SELECT COALESCE(MAX(seen), 0) FROM lb_balancers").await < since + 2 {
        assert!(start.elapsed() < RECOVER_WITHIN, "lb1 stopped its heartbeat\n{}", lb1.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = db.sql.now().await;
    let alive = db.sql.count(&format!("SELECT COUNT(*) FROM lb_balancers WHERE expires >= {now}")).await;
    assert_eq!(alive, 1, "only lb1 heartbeats");
    assert_eq!(count_of(&lb1).await, (1, "heartbeats".to_string()));
    assert!(!fixed.log().contains("counting balancers by heartbeats"), "{}", fixed.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_balancers_count_themselves() {
    balancers_count_themselves(Kind::Pg, "pg_balancers_count_themselves").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_balancers_count_themselves() {
    balancers_count_themselves(Kind::My, "mysql_balancers_count_themselves").await;
}

// ---------------------------------------------------------------------------------------------
// The Go original's table

async fn reads_the_go_originals_table(kind: Kind, test: &str) {
    let Some(mut db) = TestDb::create(kind, test).await else { return };
    let go_ddl = "CREATE TABLE lb_nodes (address text NOT NULL PRIMARY KEY)";
    match kind {
        Kind::Pg => db.sql.exec(go_ddl).await.unwrap(),
        Kind::My => {
            // The original's DDL fails on MySQL; its users created the table by hand.
            let e = db.sql.exec(go_ddl).await.expect_err("MySQL refuses a text primary key without a length");
            assert!(e.to_string().contains("BLOB/TEXT"), "{e}");
            db.sql.exec("CREATE TABLE lb_nodes (address VARCHAR(255) NOT NULL PRIMARY KEY)").await.unwrap();
        }
    }
    let (na, nb, nc, nd) =
        (FakeNode::start().await, FakeNode::start().await, FakeNode::start().await, FakeNode::start().await);
    let (a, b, c, d) = (na.name(), nb.name(), nc.name(), nd.name());
    // The original stored anything, "" and "{}" included, and crashed on "not a host".
    let junk = ["not a host", "", "{}"];
    for row in [a.as_str(), b.as_str()].into_iter().chain(junk) {
        db.sql.insert_node(row).await;
    }

    let lb = start_lb(&db.db_url());
    lb.wait_nodes(&[(&a, "online"), (&b, "online")]).await;
    assert_eq!(send("GET", &lb.url("/r/app/hello"), "").await.status, 200);

    // Rows written by another (old) balancer appear; each junk row is logged once, not every poll.
    db.sql.insert_node(&c).await;
    wait_listed(&lb, &[&a, &b, &c], SEEN_WITHIN).await;
    db.sql.delete_node(&b).await;
    wait_listed(&lb, &[&a, &c], SEEN_WITHIN).await;
    let log = lb.log();
    assert_eq!(count_lines(&log, "ignoring a stored node"), junk.len(), "one warning per junk row:\n{log}");
    assert_eq!(count_lines(&log, r#"row="not a host""#), 1, "{log}");

    // Changes through fnlb land in the same table, in the form the original reads.
    assert_eq!(put(&lb, &d).await.status, 200);
    assert_eq!(delete(&lb, &a).await.status, 200);
    let mut want = set(&[&c, &d]);
    want.extend(junk.iter().map(std::string::ToString::to_string));
    assert_eq!(db.sql.rows().await, want, "junk rows are left alone");
    let column_type = match kind {
        Kind::Pg => "SELECT data_type::text FROM information_schema.columns WHERE table_name = 'lb_nodes'",
        Kind::My => {
            "SELECT CAST(column_type AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = 'lb_nodes'"
        }
    };
    let want_type = if kind == Kind::Pg { "text" } else { "varchar(255)" };
    assert_eq!(db.sql.strings(column_type).await, vec![want_type.to_string()], "the table is not altered");
    lb.wait_nodes(&[(&c, "online"), (&d, "online")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_reads_the_go_originals_table() {
    reads_the_go_originals_table(Kind::Pg, "pg_reads_the_go_originals_table").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_reads_the_go_originals_table() {
    reads_the_go_originals_table(Kind::My, "mysql_reads_the_go_originals_table").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_both_dsn_forms_share_one_database() {
    let Some(mut db) = TestDb::create(Kind::My, "mysql_both_dsn_forms_share_one_database").await else { return };
    let (na, nb, nc) = (FakeNode::start().await, FakeNode::start().await, FakeNode::start().await);
    let (a, b, c) = (na.name(), nb.name(), nc.name());
    let go_form = db.go_mysql_dsn("");
    assert!(go_form.contains("@tcp("), "{go_form}");
    let lb_go = start_lb(&go_form);
    let lb_url = start_lb(&db.db_url());
    // The Go driver's parameters that mean nothing here are accepted; tls=false is honoured.
    let lb_go_params = start_lb(&db.go_mysql_dsn("parseTime=true&tls=false&charset=utf8mb4&timeout=5s"));

    assert_eq!(put(&lb_go, &a).await.status, 200);
    assert_eq!(put(&lb_url, &b).await.status, 200);
    assert_eq!(put(&lb_go_params, &c).await.status, 200);
    for lb in [&lb_go, &lb_url, &lb_go_params] {
        wait_listed(lb, &[&a, &b, &c], SEEN_WITHIN).await;
    }
    assert_eq!(db.sql.rows().await, set(&[&a, &b, &c]));
    assert_eq!(delete(&lb_url, &a).await.status, 200);
    wait_listed(&lb_go, &[&b, &c], SEEN_WITHIN).await;
}

// ---------------------------------------------------------------------------------------------
// Unreachable at start

/// Runs fnlb to its exit (killed after `limit`): exit code, stderr, time taken.
fn run_to_exit(db: &str, limit: Duration) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fnlb"))
        .args(["-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0", "-db", db])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, reader.join().unwrap(), start.elapsed())
}

#[test]
fn database_unreachable_at_start_is_exit_1_naming_the_url_without_password() {
    // A closed port (refused at once) and a server that accepts but never answers (a hang).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (port, db) in [
        (closed, format!("postgres://u:secretpw@127.0.0.1:{closed}/x?sslmode=disable")),
        (closed, format!("mysql://u:secretpw@127.0.0.1:{closed}/x")),
        (closed, format!("mysql://u:secretpw@tcp(127.0.0.1:{closed})/x")),
        (silent_port, format!("postgres://u:secretpw@127.0.0.1:{silent_port}/x")),
        (silent_port, format!("mysql://u:secretpw@tcp(127.0.0.1:{silent_port})/x")),
    ] {
        let (code, stderr, took) = run_to_exit(&db, Duration::from_secs(30));
        assert_eq!(code, Some(1), "{db}: exit code; stderr:\n{stderr}");
        assert!(took < Duration::from_secs(15), "{db}: took {took:?}");
        assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{db}: the message names the URL:\n{stderr}");
        assert!(stderr.contains("u:***@"), "{db}: the password is replaced:\n{stderr}");
        assert!(!stderr.contains("secretpw"), "{db}: the password leaked:\n{stderr}");
        eprintln!("{db}: exit 1 after {took:?}: {}", stderr.lines().last().unwrap_or_default());
    }
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// Outages while running

async fn outage_while_running(kind: Kind, test: &str) {
    let Some(mut db) = TestDb::create(kind, test).await else { return };
    let mut relay = Relay::start(db.server_addr()).await;
    let (na, nb, nc, nd) =
        (FakeNode::start().await, FakeNode::start().await, FakeNode::start().await, FakeNode::start().await);
    let (a, b, c, d) = (na.name(), nb.name(), nc.name(), nd.name());
    let lb = start_lb(&db.db_url_via(relay.addr));
    assert_eq!(put(&lb, &a).await.status, 200);
    assert_eq!(put(&lb, &b).await.status, 200);
    lb.wait_nodes(&[(&a, "online"), (&b, "online")]).await;
    let traffic = Traffic::start(&lb);
    traffic.wait_more(20).await;

    relay.cut().await;
    let cut = Instant::now();
    // Changes are refused quickly with a JSON 503, every time, while traffic goes on.
    let mut slowest = Duration::ZERO;
    for (method, node) in [("PUT", &c), ("DELETE", &a), ("PUT", &c)] {
        let t = Instant::now();
        let r = send(method, &lb.mgmt_url("/1/lb/nodes"), &format!(r#"{{"node":"{node}"}}"#)).await;
        let took = t.elapsed();
        slowest = slowest.max(took);
        assert_eq!(r.status, 503, "{method} during the outage: {}", r.text());
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.json()["msg"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.text());
        assert!(took < ANSWER_WITHIN, "{method} answered after {took:?}");
        traffic.wait_more(5).await;
    }
    wait_log(&lb, "node store unreachable", ANSWER_WITHIN).await;
    // The database changes meanwhile (an operator, or a balancer that still reaches it).
    db.sql.insert_node(&c).await;
    // The balancer keeps its last known list (and the API answers from it).
    assert_eq!(listed(&lb).await, set(&[&a, &b]));
    traffic.wait_more(20).await;
    let outage = cut.elapsed();

    relay.restore().await;
    let caught_up = wait_listed(&lb, &[&a, &b, &c], RECOVER_WITHIN).await;
    wait_log(&lb, "node store reachable again", RECOVER_WITHIN).await;
    db.sql.insert_node(&d).await;
    wait_listed(&lb, &[&a, &b, &c, &d], SEEN_WITHIN).await;
    let r = put(&lb, &d).await;
    assert_eq!(r.status, 200, "PUT after the outage: {}", r.text());
    assert_eq!(delete(&lb, &a).await.status, 200);
    assert_eq!(db.sql.rows().await, set(&[&b, &c, &d]));
    lb.wait_nodes(&[(&b, "online"), (&c, "online"), (&d, "online")]).await;
    let calls = traffic.finish().await;

    let log = lb.log();
    assert_eq!(count_lines(&log, "node store unreachable"), 1, "the outage is logged once:\n{log}");
    assert_eq!(count_lines(&log, "node store reachable again"), 1, "and its end once:\n{log}");
    eprintln!(
        "{kind:?} outage: {outage:?} long, slowest 503 {slowest:?}, list caught up {caught_up:?} after restore, \
         {calls} calls without error, {} WARN lines",
        count_lines(&log, "WARN")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_outage_while_running() {
    outage_while_running(Kind::Pg, "pg_outage_while_running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_while_running() {
    outage_while_running(Kind::My, "mysql_outage_while_running").await;
}

/// The open connections go silent (packets black-holed: a failover the old sessions did not
/// notice) while new connections work: the balancer must give up on the silent ones within its
/// timeout instead of hanging, and carry on with new ones.
async fn silent_connections_are_replaced(kind: Kind, test: &str) {
    let Some(mut db) = TestDb::create(kind, test).await else { return };
    let relay = Relay::start(db.server_addr()).await;
    let (na, nb, nc) = (FakeNode::start().await, FakeNode::start().await, FakeNode::start().await);
    let (a, b, c) = (na.name(), nb.name(), nc.name());
    let lb = start_lb(&db.db_url_via(relay.addr));
    assert_eq!(put(&lb, &a).await.status, 200);
    lb.wait_nodes(&[(&a, "online")]).await;
    let traffic = Traffic::start(&lb);

    relay.silence_existing();
    let silenced = Instant::now();
    db.sql.insert_node(&b).await;
    let caught_up = wait_listed(&lb, &[&a, &b], RECOVER_WITHIN).await;
    // Every answer comes within the bound, and PUT works again.
    loop {
        let t = Instant::now();
        let r = put(&lb, &c).await;
        assert!(t.elapsed() < ANSWER_WITHIN, "PUT answered after {:?}", t.elapsed());
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(silenced.elapsed() < RECOVER_WITHIN, "PUT still failing after {:?}", silenced.elapsed());
    }
    assert_eq!(db.sql.rows().await, set(&[&a, &b, &c]));
    lb.wait_nodes(&[(&a, "online"), (&b, "online"), (&c, "online")]).await;
    let calls = traffic.finish().await;
    let log = lb.log();
    let (down, up) = (count_lines(&log, "node store unreachable"), count_lines(&log, "node store reachable again"));
    assert!(down <= 1 && up == down, "logged once, with its end: {down} / {up}\n{log}");
    eprintln!("{kind:?} silent connections: list caught up after {caught_up:?}, {calls} calls without error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_silent_connections_are_replaced() {
    silent_connections_are_replaced(Kind::Pg, "pg_silent_connections_are_replaced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_silent_connections_are_replaced() {
    silent_connections_are_replaced(Kind::My, "mysql_silent_connections_are_replaced").await;
}

// ---------------------------------------------------------------------------------------------
// Starting together, and a user without CREATE rights

/// Balancers started at the same moment on a fresh database all come up (they race to create
/// the table).
async fn balancers_start_together_on_a_fresh_database(kind: Kind, test: &str) {
    let Some(mut db) = TestDb::create(kind, test).await else { return };
    let url = db.db_url();
    let lbs: Vec<Fnlb> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| start_lb(&url))).collect();
        handles.into_iter().map(|h| h.join().expect("every balancer starts")).collect()
    });
    let node = FakeNode::start().await;
    assert_eq!(put(&lbs[0], &node.name()).await.status, 200);
    for lb in &lbs {
        wait_listed(lb, &[&node.name()], SEEN_WITHIN).await;
    }
    assert_eq!(db.sql.rows().await, set(&[&node.name()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_balancers_start_together_on_a_fresh_database() {
    balancers_start_together_on_a_fresh_database(Kind::Pg, "pg_balancers_start_together_on_a_fresh_database").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_balancers_start_together_on_a_fresh_database() {
    balancers_start_together_on_a_fresh_database(Kind::My, "mysql_balancers_start_together_on_a_fresh_database").await;
}

/// An administrator created the table and gave the balancers' user only SELECT, INSERT and
/// DELETE on it (PostgreSQL 15 no longer lets every user create tables in `public`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_user_without_create_rights_uses_the_existing_table() {
    let Some(mut db) = TestDb::create(Kind::Pg, "pg_user_without_create_rights_uses_the_existing_table").await else {
        return;
    };
    let role = format!("{}_lb", db.url.path().trim_start_matches('/'));
    let _role = DropRole(db.kind, db.url.to_string(), role.clone());
    db.sql
        .exec(&format!(
            "CREATE ROLE {role} LOGIN; \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             CREATE TABLE lb_nodes (address text NOT NULL PRIMARY KEY); \
             GRANT SELECT, INSERT, DELETE ON lb_nodes TO {role};"
        ))
        .await
        .unwrap();
    let mut url = db.url.clone();
    url.set_username(&role).unwrap();
    url.set_password(None).unwrap();
    // The user cannot create tables here.
    let mut as_role = Sql::connect(Kind::Pg, url.as_str()).await.unwrap();
    assert!(as_role.exec("CREATE TABLE other (x int)").await.is_err());

    let node = FakeNode::start().await;
    let lb = start_lb(url.as_str());
    assert_eq!(put(&lb, &node.name()).await.status, 200);
    lb.wait_nodes(&[(&node.name(), "online")]).await;
    assert_eq!(db.sql.rows().await, set(&[&node.name()]));
}

/// Drops a role (cluster-wide on PostgreSQL) with the test; declared after the database guard,
/// so it runs first.
struct DropRole(Kind, String, String);

impl Drop for DropRole {
    fn drop(&mut self) {
        let (kind, url, role) = (self.0, self.1.clone(), self.2.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let work = async {
                    let mut sql = Sql::connect(kind, &url).await?;
                    sql.exec(&format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")).await
                };
                if let Ok(Err(e)) | Err(e) =
                    tokio::time::timeout(Duration::from_secs(20), work).await.map_err(|_| sqlx::Error::PoolTimedOut)
                {
                    eprintln!("warning: could not drop role {role}: {e}");
                }
            });
        })
        .join();
    }
}
