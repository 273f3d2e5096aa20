//! Kept-alive HTTP/1.1 connections to one node. A connection is checked out for one call and
//! comes back when the call's response body has been read to its end; a connection whose
//! response was abandoned is dropped (it is mid-message and cannot be reused).
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::ReqBody;
use crate::node::{Node, NodeAddr};

pub(crate) type Sender = http1::SendRequest<ReqBody>;

/// A hyper client connection and its socket, which the pool can still ask whether the node
/// closed it before a call is written to it.
pub(crate) struct Conn {
    pub sender: Sender,
    socket: Arc<TcpStream>,
}

impl Conn {
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.socket
    }
}

/// Idle connections kept per node; more than the busiest moment's concurrency is waste.
const MAX_IDLE: usize = 512;

pub(crate) struct Pool {
    addr: NodeAddr,
    // A plain mutex held for a push or a pop, never across an await.
    idle: Mutex<Vec<Conn>>,
    /// Idle connections of the fast path ([`super::h1`]): plain sockets between two messages.
    raw: Mutex<Vec<TcpStream>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(NodeAddr, Duration),
    #[error("connect to {0}: {1}")]
    Io(NodeAddr, std::io::Error),
    #[error("handshake with {0}: {1}")]
    Handshake(NodeAddr, hyper::Error),
}

impl Pool {
    pub(crate) fn new(addr: NodeAddr) -> Pool {
        Pool { addr, idle: Mutex::new(Vec::new()), raw: Mutex::new(Vec::new()) }
    }

    /// The node's pool, made at its first call and dropped with the node (so it survives
    /// membership and health changes as the node does).
    pub(crate) fn of(node: &Node) -> &Pool {
        node.attached.get_or_init(|| Pool::new(node.addr.clone()))
    }

    /// The most recently used idle raw connection that is still open: the node has not closed
    /// it and sent nothing unasked, asking the socket itself (one `recv(MSG_PEEK)`), not only the
    /// runtime's readiness flags, which can lag a close the kernel has already seen. A call is
    /// never sent twice once written, so this is the last moment a closed connection is free.
    pub(crate) fn take_raw(&self) -> Option<TcpStream> {
        loop {
            let s = self.raw.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()?;
            // No system call unless the socket was marked readable since its last read.
            match s.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => continue,
            }
            if quiet(&s) {
                return Some(s);
            }
        }
    }

    /// Opens a new raw connection (for the fast path, and under the hyper client's handshake).
    pub(crate) async fn connect_raw(&self, timeout: Duration) -> Result<TcpStream, ConnectError> {
        let addr = &self.addr;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr.as_str())).await {
            Err(_) => return Err(ConnectError::Timeout(addr.clone(), timeout)),
            Ok(Err(e)) => return Err(ConnectError::Io(addr.clone(), e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Returns a raw connection whose last response was read to its end.
    pub(crate) fn put_raw(&self, stream: TcpStream) {
        let mut idle = self.raw.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(stream);
        }
    }

    /// The most recently used idle hyper connection that is still open, asked as
    /// [`Pool::take_raw`] asks. It may still be finishing its last response: the caller waits
    /// for `ready()`.
    pub(crate) fn take_idle(&self) -> Option<Conn> {
        loop {
            let c = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()?;
            if !c.sender.is_closed() && quiet(&c.socket) {
                return Some(c);
            }
        }
    }

    /// Opens a new connection; its driver runs as its own task until either side closes it.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        let addr = &self.addr;
        let socket = Arc::new(self.connect_raw(timeout).await?);
        // A bounded read buffer: hyper's default lets it grow to ~400 kB, and a body chunk
        // handed to a client that does not read keeps that much alive.
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_MAX_BUF)
            .handshake(TokioIo::new(Shared(socket.clone())))
            .await
            .map_err(|e| ConnectError::Handshake(addr.clone(), e))?;
        let node = addr.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%node, %error, "upstream connection closed");
            }
        });
        Ok(Conn { sender, socket })
    }

    /// Returns a connection whose last response was read to its end.
    pub(crate) fn put_back(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// A socket shared by the hyper connection driving it and the pool that peeks at it.
struct Shared(Arc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.0.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// Whether the kernel has nothing to read on an idle socket: no close (EOF), no reset, and no
/// bytes the node sent unasked. The socket is non-blocking, so the peek never waits.
fn quiet(s: &TcpStream) -> bool {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(s).peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The hyper client's read buffer limit (the response head must fit: nodes send small ones).
const UPSTREAM_MAX_BUF: usize = 64 * 1024;
