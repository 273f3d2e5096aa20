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

use tokio::time::Instant;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tracing::{debug, warn};

use crate::answer::json_msg;
use crate::clock::real_ms as clock_ms;
use crate::config::Limits;
use crate::mgmt::{is_mgmt_only_path, is_mgmt_path, Mgmt};
use crate::proxy::body::{RespBody, SendDeadline};
use crate::proxy::{h1, Proxy};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// One listener for both: management paths first, everything else proxied.
    Both,
    /// Proxies everything, `/1/lb/*` included.
    Traffic,
    /// Management only; anything else is `404 unknown command`.
    Mgmt,
}

pub(crate) struct Services {
    pub proxy: Proxy,
    pub mgmt: Mgmt,
}

/// What every listener shares: the services, the limits, the connection budget, and the stop
/// signal. Every accept loop and connection task holds a receiver of `stop`; the sender's
/// `closed()` resolves when the last of them is gone, which is how shutdown knows it drained.
#[derive(Clone)]
pub(crate) struct Listeners {
    pub services: Arc<Services>,
    pub limits: Limits,
    pub connections: Arc<Semaphore>,
    /// Rung when `connections` ran out and a client waits: every connection with no request in
    /// flight closes, so that kept-alive idle clients cannot lock new ones out. Rung too once
    /// `stop` turned true: the fast path listens to this one wait for both.
    pub shed: Arc<Notify>,
    /// How many times `shed` was rung for room: a connection that heard a ring from before it
    /// went idle (the fast path's one wait lives as long as its connection) tells it by this.
    pub rings: Arc<AtomicU64>,
    pub stop: watch::Receiver<bool>,
    /// Set by `-tls-cert`/`-tls-key`: every listener speaks TLS.
    pub tls: Option<TlsAcceptor>,
}

/// Accepts on `listener` until stop turns true.
pub(crate) async fn accept_loop(listener: TcpListener, role: Role, shared: Listeners) {
    let mut stop = shared.stop.clone();
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
        // At the limit, the client accepted waits here (one per listener; the rest stay in the
        // kernel's backlog) while idle connections are asked to make room.
        let permit = match shared.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match make_room(&shared, &mut stop).await {
                Some(p) => p,
                None => return,
            },
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

/// Waits for a permit while asking idle connections to close. The request is repeated while the
/// wait lasts: a connection that was busy at the first ring may be idle at the next.
async fn make_room(shared: &Listeners, stop: &mut watch::Receiver<bool>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let mut ring = tokio::time::interval(SHED_EVERY);
    loop {
        tokio::select! {
            p = shared.connections.clone().acquire_owned() => return p.ok(),
            _ = ring.tick() => {
                shared.rings.fetch_add(1, Ordering::Relaxed);
                shared.shed.notify_waiters();
            }
            _ = stop.changed() => return None,
        }
    }
}

/// How often a waiting client asks again for idle connections to close.
const SHED_EVERY: Duration = Duration::from_millis(100);

/// Serves one client connection (HTTP/1.x) until it ends, times out, or shutdown closes it.
pub(crate) async fn serve_connection<IO>(io: IO, peer: SocketAddr, role: Role, shared: Listeners)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_http(io, peer, role, shared, Http::Plain, None).await;
}

/// Serves a plain-TCP traffic connection on the proxy's HTTP/1.1 fast path
/// ([`crate::proxy::h1`]); what that path does not handle goes to [`serve_connection`] along with
/// the bytes already read, for the rest of the connection.
async fn serve_fast(mut stream: TcpStream, peer: SocketAddr, role: Role, shared: Listeners) {
    let signals = h1::Signals { stop: &shared.stop, shed: &shared.shed, rings: &shared.rings };
    let outcome =
        h1::serve(&shared.services.proxy, &mut stream, peer, role == Role::Both, &shared.limits, signals).await;
    if let h1::Outcome::Fallback(read, head_since) = outcome {
        // The head that started on the fast path keeps its deadline.
        let io = Rewind { read, at: 0, inner: stream };
        serve_http(io, peer, role, shared, Http::Plain, Some(head_since)).await;
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
    serve_http(stream, peer, role, shared, http, None).await;
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

/// Serves a connection with hyper. `head_since`: when the first byte of a request head that is
/// not complete yet arrived (a connection handed over by the fast path), so its deadline runs on.
async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    role: Role,
    shared: Listeners,
    http: Http,
    head_since: Option<Instant>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(http == Http::Tls2, head_since));
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
            // Bounds the read buffer (a head) and the write buffer: a response body waits in at
            // most this much (plus the chunk being written) for a slow client, and the node's
            // stream is not read further meanwhile.
            .max_buf_size(buf_size(limits))
            // hyper's own header timer also runs while a kept-alive connection is idle, which would
            // cap the keep-alive timeout; [`Activity`] keeps the two apart.
            .header_read_timeout(None);
        let conn = builder.serve_connection(io, svc);
        return drive(conn, hyper::server::conn::http1::Connection::graceful_shutdown, &activity, peer, &shared).await;
    }
    let builder = auto::Builder::new(Streams { send_timeout: limits.send_timeout, peer });
    let mut builder = if http == Http::Tls2 { builder.http2_only() } else { builder.http1_only() };
    // The same HTTP/1 settings as on plain TCP.
    builder.http1().timer(TokioTimer::new()).keep_alive(true).max_buf_size(buf_size(limits)).header_read_timeout(None);
    // Bounded per connection: streams, what a client may send ahead of our reading it (the flow
    // control windows), and what waits for a client that does not read (the send buffer, per
    // stream). Past them a slow client slows its node reads instead of growing our memory.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_send_buf_size(H2_SEND_BUF);
    let conn = builder.serve_connection(io, svc);
    drive(conn, hyper_util::server::conn::auto::Connection::graceful_shutdown, &activity, peer, &shared).await;
}

/// hyper's executor for the tasks of one HTTP/2 connection (one per stream): each runs under
/// -send-timeout for its own answer ([`SendDeadline`]), as the connection's writes do
/// ([`Watched`]). A stream whose client keeps its window closed is reset alone.
#[derive(Clone)]
struct Streams {
    send_timeout: Duration,
    peer: SocketAddr,
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        let peer = self.peer;
        let task = SendDeadline::new(task, self.send_timeout);
        tokio::spawn(async move {
            if task.run().await.is_none() {
                debug!(%peer, "client has not read its answer on a stream for -send-timeout; resetting the stream");
            }
        });
    }
}

/// HTTP/2 streams at once on one client connection (each is a call that may hold a node
/// connection): more are refused with `REFUSED_STREAM`, which clients retry.
pub(crate) const H2_MAX_STREAMS: u32 = 100;
/// Flow control: what a client may send on a stream, and on the connection, before we read it.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONN_WINDOW: u32 = 1024 * 1024;
/// What waits per stream for a client that does not read.
const H2_SEND_BUF: usize = 64 * 1024;

/// hyper's HTTP/1 buffer limit: a request head up to `-max-header-size` must fit; hyper wants
/// at least 8 KiB.
fn buf_size(limits: &Limits) -> usize {
    limits.max_header_size.max(8192)
}

/// Runs a served connection to its end, closing it gracefully on shutdown or when idle, and at
/// once when a request head is late or the client stopped reading. When a client waits for a
/// connection permit, an idle connection closes.
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
        let shed = shared.shed.notified();
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
                Verdict::SlowReader => {
                    // Dropping the connection ends its calls and frees the node connections.
                    debug!(%peer, "client has not read its answer for -send-timeout; closing");
                    return;
                }
                Verdict::Idle if !closing => {
                    graceful_shutdown(conn.as_mut());
                    closing = true;
                }
                Verdict::Idle => {}
            },
            _ = shed, if !closing => if activity.is_idle() {
                debug!(%peer, "connections at -max-connections and a client waits; closing an idle one");
                graceful_shutdown(conn.as_mut());
                closing = true;
            },
        }
    }
}

async fn dispatch(
    services: &Services,
    role: Role,
    req: http::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> http::Response<RespBody> {
    match role {
        Role::Both if is_mgmt_path(req.uri().path()) => services.mgmt.handle(req).await.map(RespBody::from),
        Role::Both | Role::Traffic => services.proxy.forward(req, peer).await,
        Role::Mgmt if is_mgmt_only_path(req.uri().path()) => services.mgmt.handle(req).await.map(RespBody::from),
        Role::Mgmt => json_msg(http::StatusCode::NOT_FOUND, "unknown command").map(RespBody::from),
    }
}

/// What a connection has been doing, for the client timeouts: a request head must arrive
/// within `-client-header-timeout` of its first byte (slowloris), a connection with no
/// request in flight and no traffic for `-keepalive-timeout` is closed, and so is one whose
/// writes have been blocked (the client does not read) for `-send-timeout`. (A request body's
/// own deadline, `-client-body-timeout`, is on the body: `proxy::body::ClientBody`.)
struct Activity {
    /// Last read or write, on [`clock_ms`].
    last_ms: AtomicU64,
    /// When the first byte of a head arrived that has not become a request yet; 0: none.
    head_since_ms: AtomicU64,
    /// Requests being served.
    active: AtomicU32,
    /// Since when a write has been refused with no byte taken; 0: writes are flowing.
    blocked_since_ms: AtomicU64,
    /// HTTP/2: frames (PING, WINDOW_UPDATE, SETTINGS) come and go between requests, so traffic
    /// says nothing: a read does not start a head's deadline (only the first request is owed
    /// within the timeout), and the connection is idle from the end of its last request.
    multiplexed: bool,
}

enum Verdict {
    Fine,
    SlowHead,
    SlowReader,
    Idle,
}

impl Activity {
    /// A new connection owes its first request head from now on, or, for a head already begun
    /// elsewhere, from `head_since`.
    fn new(multiplexed: bool, head_since: Option<Instant>) -> Activity {
        let now = clock_ms();
        let begun = head_since.map_or(0, |t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        Activity {
            last_ms: AtomicU64::new(now),
            head_since_ms: AtomicU64::new(now.saturating_sub(begun).max(1)),
            active: AtomicU32::new(0),
            blocked_since_ms: AtomicU64::new(0),
            multiplexed,
        }
    }

    /// No request in flight and none begun: closing loses nothing.
    fn is_idle(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0 && self.head_since_ms.load(Ordering::Relaxed) == 0
    }

    /// A write made progress (`true`) or was refused with nothing taken (`false`).
    fn on_write_progress(&self, progress: bool) {
        if progress {
            if self.blocked_since_ms.load(Ordering::Relaxed) != 0 {
                self.blocked_since_ms.store(0, Ordering::Relaxed);
            }
        } else if self.blocked_since_ms.load(Ordering::Relaxed) == 0 {
            self.blocked_since_ms.store(clock_ms(), Ordering::Relaxed);
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
        let blocked = self.blocked_since_ms.load(Ordering::Relaxed);
        if blocked != 0 && now.saturating_sub(blocked) > limits.send_timeout.as_millis() as u64 {
            return Verdict::SlowReader;
        }
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

impl<IO> Watched<IO> {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.activity.on_write();
                self.activity.on_write_progress(true);
            }
            // The socket is full: the client is not reading.
            Poll::Pending => self.activity.on_write_progress(false),
            _ => {}
        }
    }
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
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
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
