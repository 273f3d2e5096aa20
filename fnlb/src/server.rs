//! Listeners: accepts connections, serves HTTP/1.x on them, and hands each request to the
//! management API or the proxy according to the listener's role. Owns graceful shutdown: stop
//! accepting, let in-flight requests finish, close idle connections.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::mgmt::{is_mgmt_path, Mgmt};
use crate::proxy::{json_msg, Proxy};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// One listener for both: management paths first, everything else proxied.
    Both,
    /// Proxies everything, `/1/lb/*` included.
    Traffic,
    /// Management only; anything else is `404 unknown command`.
    Mgmt,
}

pub struct Services {
    pub proxy: Proxy,
    pub mgmt: Mgmt,
}

/// Accepts on `listener` until `stop` turns true; each connection is watched by `graceful`.
pub async fn accept_loop(
    listener: TcpListener,
    role: Role,
    services: Arc<Services>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true).header_read_timeout(Duration::from_secs(30));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let services = services.clone();
        let svc = service_fn(move |req| {
            let services = services.clone();
            async move { Ok::<_, Infallible>(dispatch(&services, role, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
}

async fn dispatch(
    services: &Services,
    role: Role,
    req: http::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> http::Response<crate::proxy::body::RespBody> {
    match role {
        Role::Both if is_mgmt_path(req.uri().path()) => services.mgmt.handle(req).await,
        Role::Both | Role::Traffic => services.proxy.forward(req, peer).await,
        Role::Mgmt if is_mgmt_path(req.uri().path()) => services.mgmt.handle(req).await,
        Role::Mgmt => json_msg(http::StatusCode::NOT_FOUND, "unknown command"),
    }
}
