//! The data path: forwards one client request to the node routing picks, streams both bodies,
//! and turns failures into the client's answer. One call engine ([`call`]) decides; two
//! transports do the I/O: the HTTP/1.1 fast path ([`h1`]) and hyper ([`Proxy::forward`]).
pub mod body;
pub mod call;
pub mod h1;
pub mod headers;
pub mod pool;
pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use tracing::debug;

use crate::answer::json_msg;
use crate::discovery::fnapi::FunctionKeys;
use crate::node::manager::NodesHandle;
use crate::node::Node;
use crate::route::{goduration::parse_go_duration_bytes, Policy};
use crate::telemetry::Observers;
use body::{BodyError, ClientBody, ReqBody, RespBody, UpstreamBody};
use call::{Call, Failure, Late, Next, RetryBudget, Rules};
use pool::Pool;

pub(crate) struct Proxy {
    nodes: NodesHandle,
    policy: Box<dyn Policy>,
    connect_timeout: Duration,
    /// How long a node may take to start answering once the request was sent (None: no limit).
    upstream_timeout: Option<Duration>,
    /// Longest pause in a request body (the hyper server bounds the writes to the client).
    client_body_timeout: Duration,
    retry_idempotent: bool,
    /// Bounds resends across all calls.
    budget: RetryBudget,
    /// Metrics, stats, traces and the access log hear about every call.
    obs: Arc<Observers>,
    /// A call's routing key: its function where the nodes' API says which one, else its path.
    keys: Arc<FunctionKeys>,
    /// Late binding (`-late-binding`): calls that no node can take wait here.
    late: Option<Late>,
}

/// The balancer's answer of [`Next::Answer`]: `{"msg": ...}`, with `Retry-After` when late
/// binding refused the call.
pub(crate) fn answer_response(status: StatusCode, msg: &str, retry_after_s: Option<u32>) -> Response<RespBody> {
    let mut resp: Response<RespBody> = json_msg(status, msg).map(RespBody::from);
    if let Some(s) = retry_after_s {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

impl Proxy {
    pub(crate) fn new(nodes: NodesHandle, policy: Box<dyn Policy>, limits: &crate::config::Limits) -> Proxy {
        Proxy {
            nodes,
            policy,
            connect_timeout: limits.upstream_connect_timeout,
            upstream_timeout: limits.upstream_timeout,
            client_body_timeout: limits.client_body_timeout,
            retry_idempotent: limits.retry_idempotent,
            budget: RetryBudget::default(),
            obs: Arc::new(Observers::default()),
            keys: FunctionKeys::new(false),
            late: None,
        }
    }

    /// Holds calls at the balancer at saturation (`route::wait`; `cfg` of a node's slots, shared
    /// by the balancers `balancers` counts at the moment).
    pub(crate) fn binding_late(
        mut self,
        cfg: crate::route::wait::WaitConfig,
        balancers: crate::route::Balancers,
    ) -> Proxy {
        self.late = Some(Late::new(cfg, balancers));
        self
    }

    /// Late binding's queue, when it is on (the management API reads its counters).
    pub(crate) fn wait_queue(&self) -> Option<crate::route::wait::WaitQueue<Arc<Node>>> {
        self.late.as_ref().map(|l| l.queue.clone())
    }

    /// Keys calls by function with `keys` (learned in the background from the nodes' API).
    pub(crate) fn keyed_by(mut self, keys: Arc<FunctionKeys>) -> Proxy {
        self.keys = keys;
        self
    }

    /// Reports every call to `obs` (shared with the management API, which reads it back).
    pub(crate) fn observed_by(mut self, obs: Arc<Observers>) -> Proxy {
        self.obs = obs;
        self
    }

    /// What every call of this proxy shares, for the call engine.
    fn rules(&self) -> Rules<'_> {
        Rules {
            policy: &*self.policy,
            suspects: &self.nodes,
            budget: &self.budget,
            retry_idempotent: self.retry_idempotent,
            late: self.late.as_ref(),
        }
    }

    /// Forwards one call on the hyper path: TLS, HTTP/2, and whatever the fast path hands over.
    /// A thin shell around [`Call`]: the engine decides, this does the I/O. The observation
    /// lives in the call, so a client that drops this future still gets its call observed (499).
    pub(crate) async fn forward(&self, req: Request<Incoming>, client: SocketAddr) -> Response<RespBody> {
        let uri = req.uri().clone();
        let (mut parts, body) = req.into_parts();
        let lookup = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let obs = self.obs.start(parts.method.clone(), uri.path(), lookup, client, std::time::Instant::now());
        // The requests no node gets (CONNECT, bad Host, a loop): the fast path hands them here.
        if let Err(r) = rules::check_request(&parts.method, &parts.headers) {
            obs.finish(r.status, None);
            return rules::answer(r);
        }
        headers::request(&mut parts.headers, client.ip());
        // HTTP/2 names the host in `:authority` (now the URI's authority), usually without a
        // Host header: the HTTP/1.1 node gets it as Host (any userinfo left out).
        if parts.version == http::Version::HTTP_2 {
            headers::join_cookies(&mut parts.headers);
            let authority = parts.uri.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or_default());
            if let Some(host) = authority.and_then(|a| HeaderValue::from_str(a).ok()) {
                parts.headers.insert(header::HOST, host);
            }
        }
        // Nodes want origin-form; a client talking to us as a proxy sends absolute-form.
        if parts.uri.authority().is_some() {
            let pq = parts.uri.path_and_query().map(http::uri::PathAndQuery::as_str).unwrap_or("/");
            parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
        }
        parts.version = http::Version::HTTP_11;
        let hash = self.keys.key(parts.uri.path());
        let snap = self.nodes.load_full();
        let bodiless = body.is_end_stream();
        let head = parts.method == http::Method::HEAD;
        let facts = call::Request {
            method: &parts.method,
            bodiless,
            idempotency_key: parts.headers.contains_key("idempotency-key"),
            // A streamed body is gone once sent.
            replayable: bodiless,
        };
        // A bodiless call can be written again (after a reset that shows the node never read it,
        // or a resend the engine allows): its head is kept. The engine decides whether it is.
        let replay = bodiless.then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone()));
        let mut call = Call::new(self.rules(), &snap, hash, facts, obs);
        let (body, ended) = ClientBody::new(body, self.client_body_timeout);
        let mut req = Some(Request::from_parts(parts, ReqBody::Stream(body)));
        loop {
            let (node, fresh) = match call.next() {
                Next::Send { node, fresh } => (node, fresh),
                // A client that leaves drops this future, and with it the waiter.
                Next::Wait(w) => {
                    call::wait(&mut call, w, std::future::pending()).await;
                    continue;
                }
                Next::Answer { status, msg, retry_after_s, .. } => return answer_response(status, &msg, retry_after_s),
            };
            let (mut conn, reused) = match self.connection(node, fresh).await {
                Ok(c) => c,
                Err(error) => match call.failed(Failure::Connect(error)) {
                    None => continue,
                    Some(answer) => return local(answer),
                },
            };
            let mut r = match req.take() {
                Some(r) => r,
                None => match &replay {
                    Some((method, uri, headers)) => {
                        let mut again = Request::new(ReqBody::Empty);
                        *again.method_mut() = method.clone();
                        *again.uri_mut() = uri.clone();
                        *again.headers_mut() = headers.clone();
                        again
                    }
                    // The engine resends only what can be replayed.
                    None => {
                        return json_msg(StatusCode::BAD_GATEWAY, "the call cannot be sent again").map(RespBody::from)
                    }
                },
            };
            if r.headers().get(header::HOST).is_none() {
                if let Ok(host) = HeaderValue::from_str(node.addr.as_str()) {
                    r.headers_mut().insert(header::HOST, host);
                }
            }
            call.obs().sending(node, r.headers_mut());
            let sent = self.send(&mut conn.sender, r, &ended).await;
            let failure = match sent {
                // A node answer that is not one to pass on (status, framing) is the node's fault.
                Ok(resp) => match rules::check_response(resp.status().as_u16(), resp.headers()) {
                    Ok(()) => return self.respond(resp, conn, &mut call),
                    Err(why) => Failure::Invalid(format!("node {}: {why}", node.addr)),
                },
                Err(Sent::Timeout(limit)) => Failure::Timeout(limit),
                Err(Sent::Stalled(limit)) => Failure::Stalled(limit),
                Err(Sent::Failed(mut e)) => {
                    if let Some(back) = e.take_message() {
                        // Not written: the request is intact, and nothing can have run.
                        debug!(node = %node.addr, error = %pool_error(e.error()), "connection closed before sending");
                        req = Some(back);
                        if fresh {
                            Failure::Connect(format!("node {}: {}", node.addr, pool_error(e.error())))
                        } else {
                            Failure::Stale
                        }
                    } else {
                        match classify(e.error()) {
                            Failure::Broke(_) if reused && bodiless && reset(e.error(), conn.socket()) => {
                                // As on the fast path: the node's process never read the call.
                                debug!(node = %node.addr, "kept-alive connection closed under the call; unread");
                                Failure::Stale
                            }
                            // As on the fast path: a node that stopped reading the body may have
                            // answered first (a 413). Its answer is the client's; without one,
                            // the failed write is the news.
                            Failure::Broke(error) if !bodiless => match self.early_answer(conn.socket(), head).await {
                                Some(resp) if rules::check_response(resp.status().as_u16(), resp.headers()).is_ok() => {
                                    debug!(node = %node.addr, %error, "node stopped reading the body; passing on its answer");
                                    return self.respond(resp, conn, &mut call);
                                }
                                _ => Failure::Broke(error),
                            },
                            failure => failure,
                        }
                    }
                }
            };
            if let Some(answer) = call.failed(failure) {
                return local(answer);
            }
        }
    }

    /// Sends the request and waits for the node's answer head; -upstream-timeout counts from the
    /// moment the request body was read to its end. While it uploads, the client's waits are
    /// under -client-body-timeout and the node's (it stops taking the body) under
    /// -upstream-timeout.
    async fn send(
        &self,
        conn: &mut pool::Sender,
        r: Request<ReqBody>,
        ended: &body::Ended,
    ) -> Result<Response<Incoming>, Sent> {
        let send = conn.try_send_request(r);
        let Some(limit) = self.upstream_timeout else {
            return send.await.map_err(|e| Sent::Failed(Box::new(e)));
        };
        tokio::pin!(send);
        let mut deadline = tokio::time::Instant::now() + limit;
        loop {
            tokio::select! {
                r = &mut send => return r.map_err(|e| Sent::Failed(Box::new(e))),
                _ = tokio::time::sleep_until(deadline) => match ended.at() {
                    Some(t) if t + limit <= tokio::time::Instant::now() => return Err(Sent::Timeout(limit)),
                    Some(t) => deadline = t + limit,
                    // Still uploading: hyper holding a piece is the node not reading it.
                    None => match ended.unread_for() {
                        Some(idle) if idle >= limit => return Err(Sent::Stalled(limit)),
                        Some(idle) => deadline = tokio::time::Instant::now() + (limit - idle),
                        // Waiting for the client: the body's own deadline governs it. Looked
                        // at again soon, so that a stall after it is seen within 1.25 limits.
                        None => deadline = tokio::time::Instant::now() + limit / 4,
                    },
                },
            }
        }
    }

    /// A pooled connection that is open and ready, or a new one (`fresh`: always a new one).
    /// Also says whether the connection was reused.
    async fn connection(&self, node: &Arc<Node>, fresh: bool) -> Result<(pool::Conn, bool), String> {
        while let Some(mut c) = Pool::of(node).take_idle().filter(|_| !fresh) {
            if c.sender.ready().await.is_ok() {
                return Ok((c, true));
            }
        }
        Pool::of(node).connect(self.connect_timeout).await.map(|c| (c, false)).map_err(|e| e.to_string())
    }

    /// The answer a node sent before it stopped reading the request body and closed, read after
    /// hyper gave the connection up (its write failed; the answer, unread, is still in the
    /// socket). Read by a hyper client of its own over a duplicate of the socket, so that it is
    /// parsed and framed like any answer: the request written on it goes nowhere (it tells hyper
    /// what the answer answers, `head`: a HEAD). `None`: no whole head came before the close, or
    /// within -upstream-timeout (as on the fast path).
    async fn early_answer(&self, socket: &tokio::net::TcpStream, head: bool) -> Option<Response<Incoming>> {
        let socket: std::net::TcpStream = socket2::SockRef::from(socket).try_clone().ok()?.into();
        let socket = tokio::net::TcpStream::from_std(socket).ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(64 * 1024)
            .handshake::<_, ReqBody>(hyper_util::rt::TokioIo::new(Answered { socket, asked: false, reader: None }))
            .await
            .ok()?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "node's early answer ended with an error");
            }
        });
        let mut req = Request::new(ReqBody::Empty);
        *req.method_mut() = if head { http::Method::HEAD } else { http::Method::POST };
        let answer = sender.send_request(req);
        match self.upstream_timeout {
            Some(limit) => tokio::time::timeout(limit, answer).await.ok()?.ok(),
            None => answer.await.ok(),
        }
    }

    fn respond(&self, resp: Response<Incoming>, conn: pool::Conn, call: &mut Call<'_>) -> Response<RespBody> {
        let (mut parts, body) = resp.into_parts();
        let wait = headers::response(&mut parts.headers).and_then(|v| parse_go_duration_bytes(v.as_bytes()));
        match call.answered(parts.status, wait) {
            Some(in_flight) => Response::from_parts(
                parts,
                RespBody::Upstream(UpstreamBody::new(body, conn, in_flight, self.upstream_timeout)),
            ),
            None => Response::from_parts(parts, RespBody::empty()),
        }
    }
}

/// Why a send gave no answer head.
enum Sent {
    Timeout(Duration),
    /// The node stopped taking the upload for this long.
    Stalled(Duration),
    /// Boxed: only failures pay for its size.
    Failed(Box<hyper::client::conn::TrySendError<Request<ReqBody>>>),
}

/// A node's socket that is only read: what is written to it is dropped (the node has stopped
/// reading). Reads wait for the first write: hyper takes bytes that come before its request is
/// out for an unasked message.
struct Answered {
    socket: tokio::net::TcpStream,
    asked: bool,
    reader: Option<std::task::Waker>,
}

impl tokio::io::AsyncRead for Answered {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.asked {
            self.reader = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Answered {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.asked = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Whose fault a hyper client error is, once the request was (at least partly) written.
fn classify(e: &hyper::Error) -> Failure {
    if let Some(b) = BodyError::find(e) {
        return match b {
            BodyError::Timeout => Failure::ClientBodyTimeout,
            BodyError::Client(c) if c.is_parse() => Failure::ClientBody("invalid request body"),
            BodyError::Client(_) => Failure::ClientGone,
        };
    }
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return Failure::Invalid(pool_error(e));
    }
    Failure::Broke(pool_error(e))
}

/// The balancer's own answer on the hyper path (499: the client is gone; nothing reaches it).
fn local(answer: Next<'_>) -> Response<RespBody> {
    match answer {
        Next::Answer { status, msg, retry_after_s, .. } => answer_response(status, &msg, retry_after_s),
        Next::Send { .. } | Next::Wait(_) => {
            json_msg(StatusCode::INTERNAL_SERVER_ERROR, "internal error").map(RespBody::from)
        }
    }
}
/// Whether a node's kernel reset the connection under a call (`error` is how the read ended):
/// the node's process had closed it with the call's bytes unread, or closed it before they came.
/// A process that read a whole bodiless call and then died closes with a FIN, not a reset. On
/// loopback and most LANs the reset has come by the time the close is read; when it comes later
/// the call counts as possibly run (at most once errs that way).
fn refused(socket: &tokio::net::TcpStream, error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::ConnectionReset
        || matches!(socket2::SockRef::from(socket).take_error(), Ok(Some(_)))
}

/// [`refused`] for a hyper error: a reset in its source chain, or one pending on the socket.
fn reset(e: &hyper::Error, socket: &tokio::net::TcpStream) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return refused(socket, io);
        }
        cause = c.source();
    }
    refused(socket, &std::io::ErrorKind::UnexpectedEof.into())
}

/// A hyper error with its cause, which hyper keeps in the source chain.
fn pool_error(e: &hyper::Error) -> String {
    crate::health::probe::error_chain(e)
}
