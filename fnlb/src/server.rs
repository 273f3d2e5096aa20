//! Listeners: accepts connections (at most `-max-connections` at once), serves HTTP/1.x on them
//! (or, with `-tls-cert`, TLS carrying HTTP/2 or HTTP/1.1 as ALPN chose), and hands each request
//! to the management API or the proxy according to the listener's role. Plain-TCP traffic
//! connections start on the proxy's fast path ([`crate::proxy::h1`]); hyper serves the rest.
//! Owns the client-side timeouts and graceful shutdown: stop accepting, let calls in flight
//! finish, close idle connections.
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tracing::{debug, warn};

use crate::config::Limits;
use crate::mgmt::{is_mgmt_path, Mgmt};
use crate::node::clock_ms;
use crate::proxy::{h1, json_msg, Proxy};

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

/// What every listener shares: the services, the limits, the connection budget, and the stop
/// signal. Every accept loop and connection task holds a receiver of `stop`; the sender's
/// `closed()` resolves when the last of them is gone, which is how shutdown knows it drained.
#[derive(Clone)]
pub struct Listeners {
    pub services: Arc<Services>,
    pub limits: Limits,
    pub connections: Arc<Semaphore>,
    pub stop: watch::Receiver<bool>,
    /// Set by `-tls-cert`/`-tls-key`: every listener speaks TLS.
    pub tls: Option<TlsAcceptor>,
}

/// Accepts on `listener` until stop turns true.
pub async fn accept_loop(listener: TcpListener, role: Role, shared: Listeners) {
    let mut stop = shared.stop.clone();
    loop {
        // Waiting for a permit first leaves further clients in the kernel's backlog.
        let permit = tokio::select! {
            p = shared.connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
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
        let shared = shared.clone();
        tokio::spawn(async move {
            match shared.tls.clone() {
                None if role == Role::Mgmt => serve_connection(stream, peer, role, shared).await,
                None => serve_fast(stream, peer, role, shared).await,
                Some(tls) => serve_tls(&tls, stream, peer, role, shared).await,
            }
            drop(permit);
        });
    }
}

/// Serves one client connection (HTTP/1.x) until it ends, times out, or shutdown closes it.
pub async fn serve_connection<IO>(io: IO, peer: SocketAddr, role: Role, shared: Listeners)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_http(io, peer, role, shared, Http::Plain).await
}

/// Serves a plain-TCP traffic connection on the proxy's HTTP/1.1 fast path
/// ([`crate::proxy::h1`]); what that path does not handle goes to [`serve_connection`] along with
/// the bytes already read, for the rest of the connection.
async fn serve_fast(mut stream: TcpStream, peer: SocketAddr, role: Role, shared: Listeners) {
    let mut stop = shared.stop.clone();
    let outcome =
        h1::serve(&shared.services.proxy, &mut stream, peer, role == Role::Both, &shared.limits, &mut stop).await;
    if let h1::Outcome::Fallback(read) = outcome {
        serve_connection(Rewind { read, at: 0, inner: stream }, peer, role, shared).await;
    }
}

/// A stream whose first reads return bytes already read from it.
struct Rewind<IO> {
    read: Vec<u8>,
    at: usize,
    inner: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at < self.read.len() {
            let n = (self.read.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.read[at..at + n]);
            self.at += n;
            if self.at == self.read.len() {
                self.read = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a client connection speaks HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Http {
    /// Plain TCP: hyper's HTTP/1.x server.
    Plain,
    /// TLS without ALPN `h2`: HTTP/1.1 (hyper-util's auto server, HTTP/1 only).
    Tls1,
    /// TLS with ALPN `h2`: HTTP/2 (hyper-util's auto server, HTTP/2 only). HTTP/2 over TLS is
    /// negotiated by ALPN (RFC 9113 §3.2), so the protocol is known before the first byte.
    Tls2,
}

/// TLS: the handshake must complete within `-client-header-timeout` (a client that opens TCP
/// and never handshakes is cut off like one that never sends a request head; it holds one of
/// `-max-connections` meanwhile), then HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve_tls(tls: &TlsAcceptor, stream: TcpStream, peer: SocketAddr, role: Role, shared: Listeners) {
    let mut stop = shared.stop.clone();
    let handshake = tokio::time::timeout(shared.limits.client_header_timeout, handshake(tls, stream, peer));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(_) => {
                debug!(%peer, "TLS handshake not complete in time; closing");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    let http = if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) { Http::Tls2 } else { Http::Tls1 };
    serve_http(stream, peer, role, shared, http).await
}

/// Accepts the TLS handshake. A plain HTTP client (its first byte a letter where a TLS handshake
/// record, type 22, belongs) gets a readable 400 instead of a TLS alert, as Go's server does.
async fn handshake(tls: &TlsAcceptor, stream: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) => {}
        _ => return None,
    }
    if first[0] != 0x16 {
        debug!(%peer, first = first[0], "not a TLS handshake; closing");
        if first[0].is_ascii_uppercase() {
            answer_plain_http(stream).await;
        }
        return None;
    }
    match tls.accept(stream).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            debug!(%peer, %error, "TLS handshake failed");
            None
        }
    }
}

/// Answers 400 to a plain HTTP request on a TLS listener, then closes. What the client sent is
/// read (bounded) before closing, so that the kernel does not reset the connection and lose the
/// answer.
async fn answer_plain_http(mut stream: TcpStream) {
    let body = r#"{"msg":"this listener speaks TLS: use https://"}"#;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(format!("{head}{body}").as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = 64 * 1024;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

async fn serve_http<IO>(io: IO, peer: SocketAddr, role: Role, shared: Listeners, http: Http)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(http == Http::Tls2));
    let services = shared.services.clone();
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let services = services.clone();
        let call = act.request_started();
        async move {
            let resp = dispatch(&services, role, req, peer).await;
            drop(call);
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(Watched { inner: io, activity: activity.clone() });
    let limits = &shared.limits;
    if http == Http::Plain {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_buf_size(limits.max_header_size)
            // hyper's own header timer also runs while a kept-alive connection is idle, which would
            // cap the keep-alive timeout; [`Activity`] keeps the two apart.
            .header_read_timeout(None);
        let conn = builder.serve_connection(io, svc);
        return drive(conn, |c| c.graceful_shutdown(), &activity, peer, &shared).await;
    }
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut builder = if http == Http::Tls2 { builder.http2_only() } else { builder.http1_only() };
    // The same HTTP/1 settings as on plain TCP.
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(limits.max_header_size)
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let conn = builder.serve_connection(io, svc);
    drive(conn, |c| c.graceful_shutdown(), &activity, peer, &shared).await
}

/// Runs a served connection to its end, closing it gracefully on shutdown or when idle, and at
/// once when a request head is late.
async fn drive<C, E>(
    conn: C,
    mut graceful_shutdown: impl FnMut(Pin<&mut C>),
    activity: &Activity,
    peer: SocketAddr,
    shared: &Listeners,
) where
    C: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    tokio::pin!(conn);
    let mut stop = shared.stop.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    debug!(%peer, %error, "client connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !closing => {
                // Finishes the call in flight, if any, then closes.
                graceful_shutdown(conn.as_mut());
                closing = true;
            }
            _ = tick.tick() => match activity.verdict(&shared.limits) {
                Verdict::Fine => {}
                Verdict::SlowHead => {
                    debug!(%peer, "request head not complete in time; closing");
                    return;
                }
                Verdict::Idle if !closing => {
                    graceful_shutdown(conn.as_mut());
                    closing = true;
                }
                Verdict::Idle => {}
            },
        }
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

/// What a connection has been doing, for the two client timeouts: a request head must arrive
/// within `-client-header-timeout` of its first byte (slowloris), and a connection with no
/// request in flight and no traffic for `-keepalive-timeout` is closed.
struct Activity {
    /// Last read or write, on [`clock_ms`].
    last_ms: AtomicU64,
    /// When the first byte of a head arrived that has not become a request yet; 0: none.
    head_since_ms: AtomicU64,
    /// Requests being served.
    active: AtomicU32,
    /// HTTP/2: frames (PING, WINDOW_UPDATE, SETTINGS) come and go between requests, so traffic
    /// says nothing: a read does not start a head's deadline (only the first request is owed
    /// within the timeout), and the connection is idle from the end of its last request.
    multiplexed: bool,
}

enum Verdict {
    Fine,
    SlowHead,
    Idle,
}

impl Activity {
    /// A new connection owes its first request head from now on.
    fn new(multiplexed: bool) -> Activity {
        let now = clock_ms();
        Activity {
            last_ms: AtomicU64::new(now),
            head_since_ms: AtomicU64::new(now),
            active: AtomicU32::new(0),
            multiplexed,
        }
    }

    fn on_read(&self) {
        if self.multiplexed {
            return;
        }
        let now = clock_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.active.load(Ordering::Relaxed) == 0 && self.head_since_ms.load(Ordering::Relaxed) == 0 {
            self.head_since_ms.store(now, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        if !self.multiplexed {
            self.last_ms.store(clock_ms(), Ordering::Relaxed);
        }
    }

    fn request_started(self: &Arc<Self>) -> ActiveCall {
        self.head_since_ms.store(0, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveCall(self.clone())
    }

    fn verdict(&self, limits: &Limits) -> Verdict {
        let now = clock_ms();
        let head = self.head_since_ms.load(Ordering::Relaxed);
        if head != 0 && now.saturating_sub(head) > limits.client_header_timeout.as_millis() as u64 {
            return Verdict::SlowHead;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        if self.active.load(Ordering::Relaxed) == 0
            && head == 0
            && now.saturating_sub(last) > limits.keepalive_timeout.as_millis() as u64
        {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

/// A request being served; when the service answers, the connection may go idle again.
struct ActiveCall(Arc<Activity>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.0.last_ms.store(clock_ms(), Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client stream that tells its [`Activity`] about every read and write.
struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
