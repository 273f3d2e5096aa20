//! The fast path: HTTP/1.1 forwarding on plain TCP without a general-purpose HTTP stack.
//!
//! A client connection is read into one reusable buffer; each request head is parsed in place
//! ([`head::parse_request`]), the node's copy of the head is written with the header rules of
//! [`super::headers`], and the bodies pass through unchanged, their ends found by the framing
//! rules ([`framing`]); on Linux, the rest of a large `Content-Length` body moves between the
//! sockets inside the kernel (`splice.rs`). Upstream connections are plain sockets kept alive per node
//! ([`super::pool::Pool::take_raw`]). What happens to a call — routing, retries, the client's
//! answer, observation — is decided by the call engine ([`super::call::Call`]), as on the hyper
//! path: this module only does the I/O. Its deadlines (request head, idle, body, blocked write
//! to the client) share one timer per connection, armed only when a socket would block.
//!
//! Anything unusual — a management path, HTTP/1.0, `Upgrade`, `Expect`, an odd target or
//! framing, a malformed or oversized head — is not decided here: the connection, with the bytes
//! read so far, goes to the general (hyper) server for the rest of its life ([`Outcome::Fallback`]),
//! which answers exactly as it did before the fast path existed.
// Public for the fuzz targets (`fuzz/`), which drive the parsers directly.
pub mod framing;
pub mod head;
#[doc(hidden)]
pub mod props;
#[cfg(target_os = "linux")]
mod splice;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::call::{self, Call, Failure, Next};
use super::pool::Pool;
use super::Proxy;
use crate::config::Limits;
use crate::mgmt::is_mgmt_path;
use crate::node::Node;
use crate::proxy::headers::IpText;
use crate::telemetry::call::CallObs;
use framing::{Chunked, Framing};
use head::{Request, Response, ResponseHead};

/// What a connection hears from the server besides its client.
pub(crate) struct Signals<'a> {
    /// Turns true at shutdown.
    pub stop: &'a watch::Receiver<bool>,
    /// Rung at -max-connections while a client waits (an idle connection closes), and at
    /// shutdown (after `stop` turned true).
    pub shed: &'a tokio::sync::Notify,
    /// How many times `shed` was rung for room (not for shutdown).
    pub rings: &'a std::sync::atomic::AtomicU64,
}

/// How a fast-path connection ended.
pub(crate) enum Outcome {
    /// Closed (by either side, a timeout, or shutdown).
    Done,
    /// The general server must take over, replaying these bytes first; the head they begin
    /// started arriving at the instant given (its deadline runs on).
    Fallback(Vec<u8>, Instant),
}

/// The client buffer's size: request heads are read into it (it grows up to -max-header-size
/// for a big head, and shrinks back after).
const CLIENT_BUF: usize = 4 * 1024;
/// The upstream buffer: response heads, and bodies on their way through. One page, as nginx's
/// `proxy_buffer_size`: a node's head and a small answer fit in one read, a larger body grows
/// it (up to [`BODY_BUF`]). At 8 KiB, 256 kept-alive clients held ~1 MB more (RSS under
/// bench/proxy.py's c256 load).
const UPSTREAM_BUF: usize = 4 * 1024;
/// What the upstream buffer grows to while a body fills it (shrunk back after the call).
const BODY_BUF: usize = 64 * 1024;
/// The largest response head accepted from a node.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What the call needs of the request head once the head's borrow of the buffer is over.
struct Req {
    len: usize,
    method: Method,
    body: Framing,
    close: bool,
    has_host: bool,
    /// The request carries `Idempotency-Key`: it may be sent again after a node failed.
    idempotency_key: bool,
    hash: u64,
    /// Bytes of the node-independent part of the upstream head in `out`.
    base: usize,
}

struct Conn<'p> {
    proxy: &'p Proxy,
    client: &'p mut TcpStream,
    /// Client bytes: `cbuf[start..filled]` are not consumed yet.
    cbuf: Vec<u8>,
    start: usize,
    filled: usize,
    ubuf: Vec<u8>,
    /// The head being written (upstream request, client response).
    out: Vec<u8>,
    /// One timer per connection for the client's deadlines, one for the node's.
    client_timer: Pin<Box<Sleep>>,
    upstream_timer: Option<Pin<Box<Sleep>>>,
    draining: bool,
    /// -client-body-timeout and -send-timeout.
    body_timeout: Duration,
    send_timeout: Duration,
    /// Large `Content-Length` bodies go through its pipe, made on the first one.
    #[cfg(target_os = "linux")]
    splicer: splice::Splicer,
}

/// Serves a plain-TCP client connection on the fast path until it closes, or until something
/// needs the general server. `mgmt` says whether management paths are served on this listener
/// (they go to the general server).
pub(crate) async fn serve(
    proxy: &Proxy,
    client: &mut TcpStream,
    peer: SocketAddr,
    mgmt: bool,
    limits: &Limits,
    signals: Signals<'_>,
) -> Outcome {
    let Signals { stop, shed, rings } = signals;
    // One wait for both, made (and entered in the Notify's list) once per connection, not at
    // every request: callgrind put a `changed()` and a `notified()` made per head at about 500
    // instructions a call, and a persistent `changed()` still at 170.
    let mut hangup = std::pin::pin!(shed.notified());
    let now = Instant::now();
    let mut c = Conn {
        proxy,
        client,
        cbuf: vec![0; CLIENT_BUF.min(limits.max_header_size.max(1024))],
        start: 0,
        filled: 0,
        ubuf: Vec::new(),
        out: Vec::with_capacity(512),
        client_timer: Box::pin(tokio::time::sleep_until(now + limits.client_header_timeout)),
        upstream_timer: None,
        draining: false,
        body_timeout: limits.client_body_timeout,
        send_timeout: limits.send_timeout,
        #[cfg(target_os = "linux")]
        splicer: splice::Splicer::default(),
    };
    let mut path = String::new();
    let mut ip = IpText::default();
    let client_ip = ip.format(peer.ip()).as_bytes();
    // A new connection owes its first request head within the header timeout.
    let mut head_since = Some(now);
    let mut idle_since = now;
    let mut idle_rings = rings.load(Relaxed);
    let mut known_host = head::KnownHost::default();
    loop {
        // A complete head, or the connection ends here.
        let (req, obs) = loop {
            if c.filled > c.start {
                head_since.get_or_insert_with(Instant::now);
                let mut headers = [const { std::mem::MaybeUninit::uninit() }; head::MAX_HEADERS];
                match head::parse_request(&c.cbuf[c.start..c.filled], &mut headers, &known_host) {
                    Request::Partial => {}
                    Request::Fallback => {
                        return Outcome::Fallback(c.cbuf[c.start..c.filled].to_vec(), head_since.unwrap_or(now))
                    }
                    Request::Ready(h) if h.len > limits.max_header_size || (mgmt && is_mgmt_path(h.path())) => {
                        return Outcome::Fallback(c.cbuf[c.start..c.filled].to_vec(), head_since.unwrap_or(now));
                    }
                    Request::Ready(h) => {
                        if let Some(host) = h.host {
                            known_host.remember(host);
                        }
                        path.clear();
                        path.push_str(h.path());
                        let arrived = head_since.unwrap_or(now).into_std();
                        let obs = proxy.obs.start(h.method.clone(), &path, |n| h.header(n), peer, arrived);
                        let has_host = h.write_upstream(&mut c.out, client_ip, obs.is_traced());
                        let idempotency_key = h.header("idempotency-key").is_some();
                        let req = Req {
                            len: h.len,
                            method: h.method,
                            body: h.body,
                            close: h.close,
                            has_host,
                            idempotency_key,
                            hash: proxy.keys.key(&path),
                            base: c.out.len(),
                        };
                        break (req, obs);
                    }
                }
                if c.filled == c.cbuf.len() {
                    if c.start > 0 {
                        c.compact();
                    } else if c.cbuf.len() >= limits.max_header_size {
                        // Too big for us: the general server answers 431.
                        return Outcome::Fallback(c.cbuf[..c.filled].to_vec(), head_since.unwrap_or(now));
                    } else {
                        let grown = (c.cbuf.len() * 2).min(limits.max_header_size);
                        c.cbuf.resize(grown, 0);
                    }
                }
            } else {
                c.start = 0;
                c.filled = 0;
            }
            let deadline = match head_since {
                Some(t) => t + limits.client_header_timeout,
                None => idle_since + limits.keepalive_timeout,
            };
            let filled = c.filled;
            tokio::select! {
                biased;
                r = c.client.read(&mut c.cbuf[filled..]) => match r {
                    Ok(0) | Err(_) => return Outcome::Done,
                    Ok(n) => c.filled += n,
                },
                _ = until(&mut c.client_timer, deadline) => {
                    debug!(%peer, "request head not complete in time, or idle; closing");
                    return Outcome::Done;
                }
                // Shutdown, or (server hook, issue 12 item 4) -max-connections reached while a
                // client waits: then an idle connection (no head begun) closes. The wait may
                // have heard a ring from while a call ran, which is not for it: so a ring counts
                // only if one came after the connection went idle. Re-armed first: a ring after
                // this point reaches the new wait.
                () = &mut hangup => {
                    hangup.set(shed.notified());
                    let rung_since_idle = rings.load(Relaxed) != idle_rings;
                    if *stop.borrow() || (head_since.is_none() && rung_since_idle) {
                        return Outcome::Done;
                    }
                }
            }
        };
        head_since = None;
        c.draining = *stop.borrow();
        let keep = c.call(&req, obs).await;
        if !keep || *stop.borrow() {
            let _ = c.client.shutdown().await;
            return Outcome::Done;
        }
        idle_since = Instant::now();
        idle_rings = rings.load(Relaxed);
        if c.cbuf.len() > CLIENT_BUF && c.filled - c.start <= CLIENT_BUF {
            c.compact();
            c.cbuf.truncate(CLIENT_BUF);
            c.cbuf.shrink_to_fit();
        }
        if c.ubuf.len() > UPSTREAM_BUF {
            c.ubuf.truncate(UPSTREAM_BUF);
            c.ubuf.shrink_to_fit();
        }
    }
}

/// Waits until `deadline` on a reused timer. The timer is moved only when it would fire late:
/// one armed earlier for a later call simply fires early, and is then re-armed. A call that
/// ends before any deadline therefore costs no timer operation at all.
async fn until(timer: &mut Pin<Box<Sleep>>, deadline: Instant) {
    loop {
        if timer.is_elapsed() || timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().await;
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// [`until`] a deadline, if there is one.
async fn until_some(timer: Option<&mut Pin<Box<Sleep>>>, deadline: Option<Instant>) {
    match (timer, deadline) {
        (Some(t), Some(d)) => until(t, d).await,
        _ => std::future::pending().await,
    }
}

/// Resolves when the client closes its connection; never while it is open, whether or not it
/// sent more (a pipelined request stays where it is).
///
/// Polled through the socket's own read-readiness slot (`poll_peek`), not `peek`'s future,
/// which enters and leaves a waiter list on every call.
fn client_gone(client: &TcpStream) -> impl std::future::Future<Output = ()> + '_ {
    let mut data = false;
    std::future::poll_fn(move |cx| {
        if data {
            return std::task::Poll::Pending;
        }
        let mut b = [0u8; 1];
        match client.poll_peek(cx, &mut tokio::io::ReadBuf::new(&mut b)) {
            std::task::Poll::Ready(Ok(0) | Err(_)) => std::task::Poll::Ready(()),
            std::task::Poll::Ready(Ok(_)) => {
                // More from the client (a pipelined request) is no news: wait no more.
                data = true;
                std::task::Poll::Pending
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
}

/// Why a node gave no usable response head.
enum UpstreamError {
    /// Closed or failed before a whole head came; `received`: after some bytes of an answer.
    Io {
        error: io::Error,
        received: bool,
    },
    Invalid(&'static str),
    Timeout,
    /// The client closed its connection first.
    ClientGone,
}

/// Where a body being streamed broke.
enum StreamError {
    Client(ClientError),
    Upstream(io::Error),
}

/// How a client failed a body (its own, or ours on the way to it).
#[derive(Debug)]
enum ClientError {
    /// Closed, reset, or aborted its upload.
    Gone,
    /// Sent bad chunked framing.
    Framing,
    /// Sent nothing for -client-body-timeout, or read nothing for -send-timeout.
    Timeout,
}

impl ClientError {
    fn failure(&self) -> Failure {
        match self {
            ClientError::Gone => Failure::ClientGone,
            ClientError::Framing => Failure::ClientBody("invalid chunked body"),
            ClientError::Timeout => Failure::ClientBodyTimeout,
        }
    }
}

impl Conn<'_> {
    /// Moves the unconsumed client bytes to the front of the buffer.
    fn compact(&mut self) {
        self.cbuf.copy_within(self.start..self.filled, 0);
        self.filled -= self.start;
        self.start = 0;
    }

    /// Forwards one request and writes its answer: a thin shell around the call engine
    /// ([`Call`]), which decides; this does the socket I/O. Returns whether the client
    /// connection may carry another request.
    async fn call(&mut self, req: &Req, obs: CallObs<'_>) -> bool {
        let proxy = self.proxy;
        let snap = proxy.nodes.load_full();
        let mut close = req.close || self.draining;
        // The part of the body already here.
        let body_at = self.start + req.len;
        let mut chunks = Chunked::default();
        // `pass` of the `in_buf` bytes go on as they are (the rest: trailers held by `chunks`).
        let scanned = match req.body {
            Framing::None | Framing::Close => Ok((0, 0, true)),
            Framing::Length(n) => {
                let have = (self.filled - body_at) as u64;
                let in_buf = have.min(n) as usize;
                Ok((in_buf, in_buf, have >= n))
            }
            Framing::Chunked => chunks.scan(&self.cbuf[body_at..self.filled]).map(|s| (s.used, s.pass, s.done)),
        };
        let (in_buf, pass, body_done) = *scanned.as_ref().unwrap_or(&(0, 0, false));
        let facts = call::Request {
            method: &req.method,
            bodiless: req.body == Framing::None,
            idempotency_key: req.idempotency_key,
            // A body wholly in the buffer can be written again; one streamed through cannot.
            replayable: body_done,
        };
        let mut call = Call::new(proxy.rules(), &snap, req.hash, facts, obs);
        if scanned.is_err() {
            let answer = call.failed(Failure::ClientBody("invalid chunked body"));
            return self.answer(answer, true).await;
        }
        if body_done {
            // Consumed; its bytes stay where they are until the next head is read, for resending.
            self.start = body_at + in_buf;
        }
        let head_request = req.method == Method::HEAD;
        loop {
            let (node, fresh) = match call.next() {
                Next::Send { node, fresh } => (node, fresh),
                Next::Wait(w) => {
                    if call::wait(&mut call, w, client_gone(self.client)).await {
                        continue;
                    }
                    // The client left while its call waited: the waiter is gone with it.
                    return self.answer(Some(call.abandon()), true).await;
                }
                // A body not read to its end is not worth reading: the connection closes.
                answer => return self.answer(Some(answer), close || !body_done).await,
            };
            let reused = if fresh { None } else { Pool::of(node).take_raw() };
            let (mut up, reused) = match reused {
                Some(s) => (s, true),
                None => match Pool::of(node).connect_raw(proxy.connect_timeout).await {
                    Ok(s) => (s, false),
                    Err(error) => match call.failed(Failure::Connect(error.to_string())) {
                        None => continue,
                        answer => return self.answer(answer, close || !body_done).await,
                    },
                },
            };
            self.out.truncate(req.base);
            head::upstream_host(&mut self.out, req.has_host, node.addr.as_str());
            let sent = Instant::from_std(call.obs().sending_raw(node, &mut self.out));
            self.out.extend_from_slice(b"\r\n");
            let mut head = [
                IoSlice::new(&self.out),
                IoSlice::new(&self.cbuf[body_at..body_at + pass]),
                IoSlice::new(chunks.tail()),
            ];
            let stall = proxy.upstream_timeout;
            if let Err((written, error)) = write_counted(&mut up, &mut head, &mut self.client_timer, stall).await {
                let failure = match (written, reused) {
                    _ if error.kind() == io::ErrorKind::TimedOut => Failure::Stalled(stall.unwrap_or_default()),
                    // Nothing of the call reached the node: it is intact, and nothing ran.
                    (0, true) => Failure::Stale,
                    (0, false) => Failure::Connect(format!("node {}: {error}", node.addr)),
                    _ => Failure::Broke(error.to_string()),
                };
                match call.failed(failure) {
                    None => continue,
                    answer => return self.answer(answer, close || !body_done).await,
                }
            }
            let mut early = None;
            if !body_done {
                let left = match req.body {
                    Framing::Length(n) => n - in_buf as u64,
                    _ => 0,
                };
                self.start = self.filled;
                match self.stream_request_body(&mut up, req.body, left, &mut chunks).await {
                    Ok(()) => {}
                    Err(StreamError::Client(why)) => {
                        debug!(?why, "the client's body did not arrive whole");
                        let answer = call.failed(why.failure());
                        return self.answer(answer, true).await;
                    }
                    Err(StreamError::Upstream(error)) => {
                        // The node may have answered before reading the whole body (a 413): its
                        // answer is the client's. The client's body is left unread: close after.
                        debug!(node = %node.addr, %error, "node stopped reading the body; reading its answer");
                        early = Some(error);
                        close = true;
                    }
                }
            }
            // After a stalled upload, only an answer already sent counts: the node had its time.
            // The node has -upstream-timeout once the request is written. A request that was
            // whole in the buffer went in the head's one write, which rarely waits (and then
            // under its own limit): its send instant serves, one clock read fewer.
            let deadline = match &early {
                Some(e) if e.kind() == io::ErrorKind::TimedOut => Some(Instant::now()),
                _ if body_done => proxy.upstream_timeout.map(|t| sent + t),
                _ => proxy.upstream_timeout.map(|t| Instant::now() + t),
            };
            let (resp, got) = match self.response_head(&mut up, head_request, close, deadline).await {
                Ok(x) => x,
                Err(e) => {
                    let failure = match (e, early) {
                        (UpstreamError::ClientGone, _) => Failure::ClientGone,
                        (_, Some(error)) if error.kind() == io::ErrorKind::TimedOut => {
                            Failure::Stalled(proxy.upstream_timeout.unwrap_or_default())
                        }
                        // No answer after a failed body write: the write's error is the news.
                        (_, Some(error)) => Failure::Broke(error.to_string()),
                        (UpstreamError::Timeout, None) => Failure::Timeout(proxy.upstream_timeout.unwrap_or_default()),
                        (UpstreamError::Invalid(why), None) => Failure::Invalid(why.to_string()),
                        (UpstreamError::Io { error, received }, None) => {
                            if reused && !received && req.body == Framing::None && super::refused(&up, &error) {
                                // The node's kernel reset the call's bytes: its process had
                                // closed the connection without reading them (an idle close
                                // crossing the call). Nothing ran.
                                debug!(node = %node.addr, %error, "kept-alive connection closed under the call; unread");
                                Failure::Stale
                            } else {
                                Failure::Broke(error.to_string())
                            }
                        }
                    };
                    match call.failed(failure) {
                        None => continue,
                        answer => return self.answer(answer, close).await,
                    }
                }
            };
            let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let in_flight = call.answered(status, resp.wait);
            return match self.stream_response(up, &resp, got, node).await {
                Ok(()) => {
                    drop(in_flight);
                    !close
                }
                Err(StreamError::Upstream(e)) => {
                    // Hook: the answer is cut (the client's connection closes); the node's fault.
                    crate::metrics::of(node).error(broken_body_error(&e));
                    debug!(node = %node.addr, error = %e, "node's response body broke; closing the client");
                    false
                }
                Err(StreamError::Client(_)) => false,
            };
        }
    }

    /// Writes the engine's answer. Returns whether the connection may go on.
    async fn answer(&mut self, answer: Option<Next<'_>>, close: bool) -> bool {
        match answer {
            Some(Next::Answer { status, msg, close: must, retry_after_s }) if status != call::client_closed() => {
                self.local_retry(status, &msg, close || must, retry_after_s).await
            }
            // The client is gone: nothing to write.
            _ => false,
        }
    }

    /// Writes a short JSON answer of the balancer's own. Returns whether the connection may go on.
    /// With `Retry-After` when late binding refused the call.
    async fn local_retry(&mut self, status: StatusCode, msg: &str, close: bool, retry_after_s: Option<u32>) -> bool {
        let body = serde_json::json!({ "msg": msg }).to_string();
        head::local_response(&mut self.out, status, &body, close);
        if let Some(s) = retry_after_s {
            // After the status line.
            let at = self.out.windows(2).position(|w| w == b"\r\n").map_or(0, |p| p + 2);
            self.out.splice(at..at, format!("retry-after: {s}\r\n").into_bytes());
        }
        let limit = self.send_timeout;
        write_client(self.client, &mut [IoSlice::new(&self.out)], &mut self.client_timer, limit).await.is_ok() && !close
    }

    /// Sends the rest of a request body that was not in the buffer when the head went out.
    /// Leaves what follows the body (a pipelined request) in the client buffer.
    async fn stream_request_body(
        &mut self,
        up: &mut TcpStream,
        body: Framing,
        mut left: u64,
        chunks: &mut Chunked,
    ) -> Result<(), StreamError> {
        self.start = 0;
        self.filled = 0;
        // A large sized body goes through the kernel; read no further than its end, it leaves
        // nothing in the buffer.
        #[cfg(target_os = "linux")]
        if matches!(body, Framing::Length(_)) && left >= splice::MIN && self.splicer.ready() {
            let (limit, stall) = (Some(self.body_timeout), self.proxy.upstream_timeout);
            return self.splicer.body(self.client, up, left, &mut self.client_timer, limit, stall).await.map_err(|b| {
                match b {
                    splice::Broke::SourceClosed | splice::Broke::Source(_) => StreamError::Client(ClientError::Gone),
                    splice::Broke::SourceTimeout => StreamError::Client(ClientError::Timeout),
                    splice::Broke::Dest(e) => StreamError::Upstream(e),
                }
            });
        }
        if self.ubuf.len() < UPSTREAM_BUF {
            self.ubuf.resize(UPSTREAM_BUF, 0);
        }
        loop {
            // A Content-Length body is read no further than its end.
            let room = match body {
                Framing::Length(_) => self.ubuf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
                _ => self.ubuf.len(),
            };
            let n = read_within(self.client, &mut self.ubuf[..room], &mut self.client_timer, self.body_timeout)
                .await
                .map_err(StreamError::Client)?;
            let (used, pass, done) = match body {
                Framing::Length(_) => {
                    left -= n as u64;
                    (n, n, left == 0)
                }
                _ => {
                    let s = chunks.scan(&self.ubuf[..n]).map_err(|_| StreamError::Client(ClientError::Framing))?;
                    (s.used, s.pass, s.done)
                }
            };
            // `tail`: a chunked body's rewritten trailers, once it is done (else empty).
            let parts = &mut [IoSlice::new(&self.ubuf[..pass]), IoSlice::new(chunks.tail())];
            write_counted(up, parts, &mut self.client_timer, self.proxy.upstream_timeout)
                .await
                .map_err(|(_, e)| StreamError::Upstream(e))?;
            grow(&mut self.ubuf, n);
            if done {
                let rest = &self.ubuf[used..n];
                if self.cbuf.len() < rest.len() {
                    self.cbuf.resize(rest.len(), 0);
                }
                self.cbuf[..rest.len()].copy_from_slice(rest);
                self.filled = rest.len();
                return Ok(());
            }
        }
    }

    /// Reads the node's response head (skipping interim 1xx answers) by `deadline`, and writes
    /// the client's copy into `out`. Returns it and how many bytes are in `ubuf`.
    async fn response_head(
        &mut self,
        up: &mut TcpStream,
        head_request: bool,
        close: bool,
        deadline: Option<Instant>,
    ) -> Result<(ResponseHead, usize), UpstreamError> {
        if self.ubuf.len() < UPSTREAM_BUF {
            self.ubuf.resize(UPSTREAM_BUF, 0);
        }
        let mut got = 0;
        let mut interim = false;
        loop {
            let timer = match deadline {
                Some(d) => Some(self.upstream_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(d)))),
                None => None,
            };
            // While the node works, a client that goes away cancels the call (as the general
            // server does): the dropped connection tells the node.
            let n = tokio::select! {
                biased;
                r = up.read(&mut self.ubuf[got..]) => r,
                _ = until_some(timer, deadline) => return Err(UpstreamError::Timeout),
                _ = client_gone(self.client) => return Err(UpstreamError::ClientGone),
            };
            match n {
                Ok(0) => {
                    let error = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the response");
                    return Err(UpstreamError::Io { error, received: got > 0 || interim });
                }
                Err(error) => return Err(UpstreamError::Io { error, received: got > 0 || interim }),
                Ok(n) => got += n,
            }
            loop {
                match head::parse_response(&self.ubuf[..got], head_request, close, &mut self.out) {
                    Response::Ready(h) => return Ok((h, got)),
                    Response::Invalid(why) => return Err(UpstreamError::Invalid(why)),
                    Response::Interim(len) => {
                        interim = true;
                        self.ubuf.copy_within(len..got, 0);
                        got -= len;
                        if got > 0 {
                            continue;
                        }
                    }
                    Response::Partial if got == self.ubuf.len() => {
                        if got >= MAX_RESPONSE_HEAD {
                            return Err(UpstreamError::Invalid("response head too large"));
                        }
                        self.ubuf.resize(got * 2, 0);
                    }
                    Response::Partial => {}
                }
                break;
            }
        }
    }

    /// Writes the response head in `out` and streams the body after it; the connection goes
    /// back to the node's pool when the body was read to its end and the node keeps it open.
    async fn stream_response(
        &mut self,
        mut up: TcpStream,
        resp: &ResponseHead,
        got: usize,
        node: &Arc<Node>,
    ) -> Result<(), StreamError> {
        let body = &self.ubuf[resp.len..got];
        let client = &mut *self.client;
        let timer = &mut self.client_timer;
        let limit = self.send_timeout;
        // Each wait for the node's next bytes: -upstream-timeout (on the same timer: one wait at
        // a time).
        let stall = self.proxy.upstream_timeout;
        let to_client = |e: io::Error| {
            debug!(error = %e, "client write failed or timed out");
            StreamError::Client(ClientError::Gone)
        };
        let clean = match resp.body {
            Framing::None => {
                write_client(client, &mut [IoSlice::new(&self.out)], timer, limit).await.map_err(to_client)?;
                body.is_empty()
            }
            Framing::Length(n) => {
                let first = body.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                let extra = body.len() > first;
                write_client(client, &mut [IoSlice::new(&self.out), IoSlice::new(&body[..first])], timer, limit)
                    .await
                    .map_err(to_client)?;
                let mut left = n - first as u64;
                #[cfg(target_os = "linux")]
                if left >= splice::MIN && self.splicer.ready() {
                    self.splicer.body(&up, client, left, timer, stall, Some(limit)).await.map_err(|b| match b {
                        splice::Broke::SourceClosed => node_closed_mid_body(),
                        splice::Broke::Source(e) => StreamError::Upstream(e),
                        splice::Broke::SourceTimeout => StreamError::Upstream(stalled(stall.unwrap_or_default())),
                        splice::Broke::Dest(e) => to_client(e),
                    })?;
                    left = 0;
                }
                while left > 0 {
                    let room = self.ubuf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = read_upstream(&mut up, &mut self.ubuf[..room], timer, stall).await?;
                    write_client(client, &mut [IoSlice::new(&self.ubuf[..n])], timer, limit)
                        .await
                        .map_err(to_client)?;
                    left -= n as u64;
                    grow(&mut self.ubuf, n);
                }
                !extra
            }
            Framing::Chunked => {
                let mut chunks = Chunked::default();
                let Ok(s) = chunks.scan(body) else {
                    // The head is out to the client as on the hyper path; the body is cut.
                    write_client(client, &mut [IoSlice::new(&self.out)], timer, limit).await.map_err(to_client)?;
                    return Err(bad_upstream());
                };
                let (mut done, mut extra) = (s.done, body.len() > s.used);
                write_client(
                    client,
                    &mut [IoSlice::new(&self.out), IoSlice::new(&body[..s.pass]), IoSlice::new(chunks.tail())],
                    timer,
                    limit,
                )
                .await
                .map_err(to_client)?;
                while !done {
                    let n = read_upstream(&mut up, &mut self.ubuf, timer, stall).await?;
                    let s = chunks.scan(&self.ubuf[..n]).map_err(|_| bad_upstream())?;
                    write_client(
                        client,
                        &mut [IoSlice::new(&self.ubuf[..s.pass]), IoSlice::new(chunks.tail())],
                        timer,
                        limit,
                    )
                    .await
                    .map_err(to_client)?;
                    done = s.done;
                    extra = n > s.used;
                    grow(&mut self.ubuf, n);
                }
                !extra
            }
            Framing::Close => {
                // Re-framed as chunked, so that the client's connection can stay open.
                let mut size = [0u8; 20];
                let s = chunk_size(&mut size, body.len());
                let parts = if body.is_empty() { 1 } else { 4 };
                write_client(
                    client,
                    &mut [IoSlice::new(&self.out), IoSlice::new(s), IoSlice::new(body), IoSlice::new(b"\r\n")][..parts],
                    timer,
                    limit,
                )
                .await
                .map_err(to_client)?;
                loop {
                    let n = match read_node(&mut up, &mut self.ubuf, timer, stall).await {
                        Ok(n) => n,
                        Err(e) => return Err(StreamError::Upstream(e)),
                    };
                    if n == 0 {
                        write_client(client, &mut [IoSlice::new(b"0\r\n\r\n")], timer, limit)
                            .await
                            .map_err(to_client)?;
                        break;
                    }
                    let s = chunk_size(&mut size, n);
                    write_client(
                        client,
                        &mut [IoSlice::new(s), IoSlice::new(&self.ubuf[..n]), IoSlice::new(b"\r\n")],
                        timer,
                        limit,
                    )
                    .await
                    .map_err(to_client)?;
                    grow(&mut self.ubuf, n);
                }
                false
            }
        };
        if clean && !resp.close {
            Pool::of(node).put_raw(up);
        }
        Ok(())
    }
}

/// A body that fills the buffer gets a bigger one: fewer system calls per byte. Only while it
/// streams: the connection's buffer shrinks back after the call.
fn grow(buf: &mut Vec<u8>, read: usize) {
    if read == buf.len() && buf.len() < BODY_BUF {
        buf.resize(BODY_BUF, 0);
    }
}

/// How a node's response body that broke after its head is counted: bad framing is an invalid
/// response, a stall a timeout, anything else a broken connection.
fn broken_body_error(e: &io::Error) -> crate::metrics::UpstreamError {
    match e.kind() {
        io::ErrorKind::InvalidData => crate::metrics::UpstreamError::InvalidResponse,
        io::ErrorKind::TimedOut => crate::metrics::UpstreamError::Timeout,
        _ => crate::metrics::UpstreamError::Send,
    }
}

/// A node that sent nothing of its answer's body for `limit`.
fn stalled(limit: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("node sent nothing for {}s mid-body", limit.as_secs_f64()))
}

fn bad_upstream() -> StreamError {
    StreamError::Upstream(io::Error::new(io::ErrorKind::InvalidData, "invalid chunked framing from the node"))
}

/// Reads part of a body from the node; the end of the stream before the body's end is an error,
/// and so is a node that sends nothing for `limit`.
async fn read_upstream(
    up: &mut TcpStream,
    buf: &mut [u8],
    timer: &mut Pin<Box<Sleep>>,
    limit: Option<Duration>,
) -> Result<usize, StreamError> {
    match read_node(up, buf, timer, limit).await {
        Ok(0) => Err(node_closed_mid_body()),
        Ok(n) => Ok(n),
        Err(e) => Err(StreamError::Upstream(e)),
    }
}

/// One read from the node (0: it closed); one that waits longer than `limit` fails with
/// `TimedOut`, saying so.
async fn read_node(
    up: &mut TcpStream,
    buf: &mut [u8],
    timer: &mut Pin<Box<Sleep>>,
    limit: Option<Duration>,
) -> io::Result<usize> {
    match read_limited(up, buf, timer, limit).await {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(stalled(limit.unwrap_or_default())),
        r => r,
    }
}

/// One read from either peer (0: it closed); one that waits longer than `limit` fails with
/// `TimedOut`. The first try goes through the stream's own poll, which takes a short read as
/// "drained" and so spares the next read a system call that would find nothing; the deadline is
/// made, on the connection's timer, only when nothing is there to read.
async fn read_limited(
    r: &mut TcpStream,
    buf: &mut [u8],
    timer: &mut Pin<Box<Sleep>>,
    limit: Option<Duration>,
) -> io::Result<usize> {
    let mut first = tokio::io::ReadBuf::new(buf);
    if let Some(got) = poll_once(|cx| Pin::new(&mut *r).poll_read(cx, &mut first)).await {
        return got.map(|()| first.filled().len());
    }
    match limit {
        Some(limit) => {
            let deadline = Instant::now() + limit;
            tokio::select! {
                biased;
                got = r.read(buf) => got,
                _ = until(timer, deadline) => Err(io::ErrorKind::TimedOut.into()),
            }
        }
        None => r.read(buf).await,
    }
}

/// Polls once: the result, or `None` when it would wait (the task is then woken when it can go
/// on, as for any poll).
async fn poll_once<T>(mut poll: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<T>) -> Option<T> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match poll(cx) {
            std::task::Poll::Ready(t) => Some(t),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

fn node_closed_mid_body() -> StreamError {
    StreamError::Upstream(io::Error::new(io::ErrorKind::UnexpectedEof, "node closed mid-body"))
}

/// `{n:x}\r\n` without `fmt`.
fn chunk_size(buf: &mut [u8; 20], n: usize) -> &[u8] {
    let mut i = 18;
    buf[18] = b'\r';
    buf[19] = b'\n';
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Writes every slice to either peer; on failure, says how many bytes were written first (for a
/// node, none: nothing of the call reached it). A write that stays blocked for `limit` (the peer
/// stopped reading) fails with `TimedOut`; the wait uses the connection's timer, and only when
/// the socket is full.
async fn write_counted(
    w: &mut TcpStream,
    mut bufs: &mut [IoSlice<'_>],
    timer: &mut Pin<Box<Sleep>>,
    limit: Option<Duration>,
) -> Result<(), (usize, io::Error)> {
    let mut written = 0;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        // As in [`read_limited`]: one poll first (a short write marks the socket full), the
        // deadline only when it would wait.
        let r = match poll_once(|cx| Pin::new(&mut *w).poll_write_vectored(cx, bufs)).await {
            Some(r) => r,
            None => match limit {
                Some(limit) => {
                    let deadline = Instant::now() + limit;
                    tokio::select! {
                        biased;
                        r = w.write_vectored(bufs) => r,
                        _ = until(timer, deadline) => Err(io::ErrorKind::TimedOut.into()),
                    }
                }
                None => w.write_vectored(bufs).await,
            },
        };
        match r {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut bufs, n);
            }
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

/// Writes every slice to the client; a write that stays blocked for `limit` (the client does not
/// read) fails.
async fn write_client(
    w: &mut TcpStream,
    bufs: &mut [IoSlice<'_>],
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> io::Result<()> {
    write_counted(w, bufs, timer, Some(limit)).await.map_err(|(_, e)| e)
}

/// Reads part of a client's body; a client that sends nothing for `limit` fails, and so does one
/// that closes before the body's end.
async fn read_within(
    r: &mut TcpStream,
    buf: &mut [u8],
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> Result<usize, ClientError> {
    match read_limited(r, buf, timer, Some(limit)).await {
        Ok(0) => Err(ClientError::Gone),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ClientError::Timeout),
        Err(_) => Err(ClientError::Gone),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_size_is_hex_with_crlf() {
        let mut b = [0u8; 20];
        assert_eq!(super::chunk_size(&mut b, 0), b"0\r\n");
        assert_eq!(super::chunk_size(&mut b, 255), b"ff\r\n");
        assert_eq!(super::chunk_size(&mut b, 0x10000), b"10000\r\n");
    }
}
