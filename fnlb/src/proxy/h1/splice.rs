//! `Content-Length` bodies moved between the two sockets inside the kernel (Linux): socket →
//! pipe → socket with splice(2), so a body's bytes never cross into the balancer's memory. Only
//! its length has to be known, so chunked bodies (whose scanner must see every byte) stay on the
//! copy path, and so do small ones, for which two system calls per piece cost more than the copy
//! they save.
//!
//! The loop keeps the copy loop's shape exactly, the pipe standing in for its buffer: one read
//! from the source (at most what is left of the body), then everything read written out before
//! the next read. So the deadlines are the copy loop's: a read that would block waits at most its
//! limit (-client-body-timeout when the source is the client, -upstream-timeout when it is the
//! node), a write that would block waits at most its own (-send-timeout when the destination is
//! the client, -upstream-timeout when it is the node), each armed on the
//! connection's one timer only when a socket would block; and the pipe is empty whenever the
//! source is read, so bytes that came before a source's failure have all gone on.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::until;

/// Bodies with at least this much left to move after the head are spliced; shorter ones are
/// copied (see docs/BENCHMARKS.md, "splice(2) for large bodies").
pub const MIN: u64 = 64 * 1024;

/// A pipe's default capacity (16 pages): what a read asks for when the pipe is not enlarged.
const PIPE_BYTES: usize = 64 * 1024;

/// What a pipe is enlarged to for the length of one body longer than [`PIPE_BYTES`]: each read
/// takes what the socket holds, up to this, so a 1 MiB body moves in a few system calls instead
/// of 32 (`wrk -c16` on 1 MiB answers through `-threads 1`, interleaved: 0.65x of going direct
/// with 64 KiB pipes, 0.75x with 512 KiB; docs/BENCHMARKS.md, "2026-12-06"). Within
/// `/proc/sys/fs/pipe-max-size`'s default (1 MiB), so no privilege is needed.
const BIG_PIPE_BYTES: usize = 512 * 1024;

/// How many pipes may be enlarged at once in the process (16 MiB of pipe capacity in all).
/// Every pipe's capacity counts against the user's `/proc/sys/fs/pipe-user-pages-soft` (16,384
/// pages by default), past which the kernel gives new pipes 2 pages, ours and those of any other
/// process of the user: this keeps the balancer to a quarter of it. A body that finds the budget
/// spent moves through the pipe as it is, in 64 KiB pieces.
const BIG_PIPES: usize = 32;

/// Pipes enlarged now, at most [`BIG_PIPES`].
static ENLARGED: AtomicUsize = AtomicUsize::new(0);

/// A pipe's share of [`BIG_PIPES`] while it is enlarged for one body, returned when dropped (the
/// body done, or its future dropped with the connection and the pipe). [`Splicer::body`]
/// shrinks the pipe back.
struct Enlarged;

impl Enlarged {
    /// Enlarges `pipe` when the budget allows; its capacity, whether or not.
    fn try_new(pipe: &Pipe) -> (Option<Enlarged>, usize) {
        if ENLARGED.fetch_add(1, Ordering::Relaxed) >= BIG_PIPES {
            ENLARGED.fetch_sub(1, Ordering::Relaxed);
            return (None, PIPE_BYTES);
        }
        match fcntl_setpipe_size(&pipe.write, BIG_PIPE_BYTES) {
            Ok(size) => (Some(Enlarged), size),
            // Over the user's limits (another process may hold many pipes): as it is.
            Err(_) => {
                ENLARGED.fetch_sub(1, Ordering::Relaxed);
                (None, PIPE_BYTES)
            }
        }
    }
}

impl Drop for Enlarged {
    fn drop(&mut self) {
        ENLARGED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a spliced body broke.
#[derive(Debug)]
pub enum Broke {
    /// The source closed before the body's end.
    SourceClosed,
    /// The source failed.
    Source(io::Error),
    /// The source sent nothing within its limit.
    SourceTimeout,
    /// The destination failed, or took nothing within its limit (`TimedOut`); what the pipe
    /// held for it is lost with it.
    Dest(io::Error),
}

/// A connection's pipe, made when its first large body comes and closed with the connection.
/// Empty between bodies: one that broke holding bytes is dropped, so that they can never reach
/// the next body's destination.
#[derive(Default)]
pub struct Splicer {
    pipe: Option<Pipe>,
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Splicer {
    /// Whether bodies can be spliced on this connection: false when no pipe can be had (out of
    /// file descriptors), and the body is copied instead.
    pub fn ready(&mut self) -> bool {
        if self.pipe.is_none() {
            self.pipe =
                pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).ok().map(|(read, write)| Pipe { read, write });
        }
        self.pipe.is_some()
    }

    /// Moves `len` bytes of body from `from` to `to`. `read_limit`/`write_limit`: how long a
    /// read or a write may wait for its socket (none: as long as it takes), on `timer`. Call
    /// after [`Splicer::ready`] said yes.
    pub async fn body(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        len: u64,
        timer: &mut Pin<Box<Sleep>>,
        read_limit: Option<Duration>,
        write_limit: Option<Duration>,
    ) -> Result<(), Broke> {
        let Some(pipe) = &self.pipe else {
            return Err(Broke::Source(io::ErrorKind::Unsupported.into()));
        };
        let (enlarged, capacity) = if len > PIPE_BYTES as u64 { Enlarged::try_new(pipe) } else { (None, PIPE_BYTES) };
        let mut left = len;
        let result = loop {
            if left == 0 {
                break Ok(());
            }
            let n = match fill(pipe, from, left, capacity, timer, read_limit).await {
                Ok(n) => n,
                Err(b) => break Err(b),
            };
            left -= n as u64;
            if let Err(e) = drain(pipe, to, n, timer, write_limit).await {
                break Err(Broke::Dest(e));
            }
        };
        match result {
            // The pipe is empty: back to its own size for the next body. A pipe that cannot
            // be shrunk is closed, so that it holds no part of the budget.
            Ok(()) | Err(Broke::SourceClosed | Broke::Source(_) | Broke::SourceTimeout) => {
                if enlarged.is_some() && fcntl_setpipe_size(&pipe.write, PIPE_BYTES).is_err() {
                    self.pipe = None;
                }
            }
            // It may hold bytes for the broken destination, which must never reach the next.
            Err(Broke::Dest(_)) => self.pipe = None,
        }
        result
    }
}

/// One read: from the socket into the (empty) pipe, at most `left` bytes.
async fn fill(
    pipe: &Pipe,
    from: &TcpStream,
    left: u64,
    capacity: usize,
    timer: &mut Pin<Box<Sleep>>,
    limit: Option<Duration>,
) -> Result<usize, Broke> {
    let want = usize::try_from(left).unwrap_or(usize::MAX).min(capacity);
    loop {
        // `try_io` clears the socket's readiness when the kernel says it would block.
        match from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe.write, None, want, SpliceFlags::NONBLOCK).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(Broke::SourceClosed),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Broke::Source(e)),
        }
        match limit {
            Some(limit) => {
                let deadline = Instant::now() + limit;
                tokio::select! {
                    biased;
                    r = from.readable() => r.map_err(Broke::Source)?,
                    _ = until(timer, deadline) => return Err(Broke::SourceTimeout),
                }
            }
            None => from.readable().await.map_err(Broke::Source)?,
        }
    }
}

/// Writes all `held` bytes of the pipe to the socket.
async fn drain(
    pipe: &Pipe,
    to: &TcpStream,
    mut held: usize,
    timer: &mut Pin<Box<Sleep>>,
    limit: Option<Duration>,
) -> io::Result<()> {
    while held > 0 {
        // The pipe holds data, so a refusal is the socket's: its buffer is full.
        match to.try_io(Interest::WRITABLE, || {
            splice(&pipe.read, None, to, None, held, SpliceFlags::NONBLOCK).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                held -= n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match limit {
            Some(limit) => {
                let deadline = Instant::now() + limit;
                tokio::select! {
                    biased;
                    r = to.writable() => r?,
                    _ = until(timer, deadline) => return Err(io::ErrorKind::TimedOut.into()),
                }
            }
            None => to.writable().await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::pipe::fcntl_getpipe_size;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected sockets on 127.0.0.1.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn timer() -> Pin<Box<Sleep>> {
        Box::pin(tokio::time::sleep(Duration::from_secs(3600)))
    }

    #[tokio::test]
    async fn a_body_longer_than_the_pipe_arrives_whole_and_the_pipe_is_its_own_size_again() {
        let ((mut sender, from), (to, mut receiver)) = (pair().await, pair().await);
        let body: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i: u32| (i % 251) as u8).collect();
        let len = body.len() as u64;
        let write = tokio::spawn(async move { sender.write_all(&body).await.map(|()| body) });
        let read = tokio::spawn(async move {
            let mut got = vec![0u8; len as usize];
            receiver.read_exact(&mut got).await.map(|_| got)
        });
        let mut splicer = Splicer::default();
        assert!(splicer.ready());
        let limit = Some(Duration::from_secs(10));
        splicer.body(&from, &to, len, &mut timer(), limit, limit).await.unwrap();
        let (sent, got) = (write.await.unwrap().unwrap(), read.await.unwrap().unwrap());
        assert!(sent == got, "the spliced body differs from the one sent");
        let pipe = splicer.pipe.as_ref().expect("the pipe is kept for the next body");
        assert_eq!(fcntl_getpipe_size(&pipe.write).unwrap(), PIPE_BYTES, "an enlarged pipe is shrunk after its body");
    }

    #[tokio::test]
    async fn a_destination_that_breaks_closes_the_pipe() {
        let ((mut sender, from), (to, receiver)) = (pair().await, pair().await);
        drop(receiver);
        let len = 4 * 1024 * 1024;
        tokio::spawn(async move {
            let _ = sender.write_all(&vec![7u8; len]).await;
        });
        let mut splicer = Splicer::default();
        assert!(splicer.ready());
        let limit = Some(Duration::from_secs(10));
        let r = splicer.body(&from, &to, len as u64, &mut timer(), limit, limit).await;
        assert!(matches!(r, Err(Broke::Dest(_))), "{r:?}");
        assert!(splicer.pipe.is_none(), "a pipe that may hold a broken body's bytes is dropped");
    }
}
