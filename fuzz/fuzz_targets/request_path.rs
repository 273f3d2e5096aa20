//! The request path without the network: raw bytes from a client are parsed by hyper's HTTP/1
//! server (as in fnlb's accept loop), then each request goes through what `Proxy::forward` does
//! before it dials: the management-path check, the header rules, the routing key and every
//! routing policy's pick (and observe, with a wait taken from the request, as if a node said it).
//!
//! Checks: never panics and never hangs (each input must finish in 2 s of simulated time); picks
//! are nodes of the snapshot, and successive picks for one call never repeat a node.
#![no_main]
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fnlb::node::{Node, NodeAddr, Snapshot};
use fnlb::proxy::headers;
use fnlb::route::goduration::parse_go_duration_bytes;
use fnlb::node::table::{key_hash, Table};
use fnlb::route::{policy_by_name, Policy, PolicyConfig, POLICIES};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    /// The same nodes, all healthy and with the second one down.
    snaps: [Snapshot; 2],
    policies: Vec<Box<dyn Policy>>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let addrs: Vec<NodeAddr> = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
            .iter()
            .map(|a| NodeAddr::parse(a).unwrap())
            .collect();
        let total = Arc::new(AtomicU32::new(0));
        let nodes: Arc<[Arc<Node>]> = addrs.iter().map(|a| Node::new(a.clone(), total.clone())).collect();
        let table = Arc::new(Table::build(&addrs));
        let snap = |healthy: [bool; 3]| Snapshot::new(nodes.clone(), table.clone(), Box::new(healthy), total.clone());
        let cfg = PolicyConfig { node_capacity: 8, balancers: 1.into(), load_factor: 1.25, late_binding: false };
        World {
            rt,
            snaps: [snap([true; 3]), snap([true, false, true])],
            policies: POLICIES.iter().map(|p| policy_by_name(p, cfg.clone()).unwrap()).collect(),
        }
    })
}

async fn handle(req: Request<Incoming>, w: &'static World) -> Response<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if fnlb::mgmt::is_mgmt_path(&path) {
        return Response::new(Full::new(Bytes::from_static(b"mgmt")));
    }
    headers::request(&mut parts.headers, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let hash = key_hash(path.as_bytes());
    let wait = parts.headers.get("xxx-fxlb-wait").and_then(|v| parse_go_duration_bytes(v.as_bytes()));
    for snap in &w.snaps {
        for policy in &w.policies {
            let mut tried = Vec::new();
            while let Some(attempt) = policy.pick(snap, hash, &tried) {
                let i = attempt.index();
                assert!(i < snap.len(), "{} picked node {i} of {}", policy.name(), snap.len());
                assert!(!tried.contains(&i), "{} picked node {i} twice", policy.name());
                tried.push(i);
                let _call = snap.nodes()[i].start_call();
                attempt.answered(wait, StatusCode::OK);
                if tried.len() > snap.len() {
                    panic!("{} keeps picking", policy.name());
                }
            }
        }
    }
    // Read what body there is (chunked or fixed), bounded as a node would not be.
    let status = match Limited::new(body, 1 << 20).collect().await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    *resp.status_mut() = status;
    // The node's answer echoes the request headers; the response rules run over them. Its
    // Content-Length is the one of its own body (hyper trusts a body's exact length over the
    // header, and debug builds assert that they agree), not the request's.
    *resp.headers_mut() = parts.headers;
    resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    let _ = headers::response(resp.headers_mut());
    resp
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let svc = hyper::service::service_fn(move |req| async move { Ok::<_, Infallible>(handle(req, w).await) });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), svc);
        let input = data.to_vec();
        let talk = async move {
            client.write_all(&input).await.ok();
            client.shutdown().await.ok();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.ok();
        };
        let both = async { tokio::join!(conn, talk) };
        // A connection error is hyper refusing bad input: fine. Not finishing is not.
        let (_conn, ()) = tokio::time::timeout(Duration::from_secs(2), both).await.expect("the connection hung");
    });
});
