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
use std::time::Duration;

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::until;

/// Bodies with at least this much left to move after the head are spliced; shorter ones are
/// copied (see docs/BENCHMARKS.md, "splice(2) for large bodies").
pub const MIN: u64 = 64 * 1024;

/// The most one read asks for: a pipe's default capacity (16 pages). Not grown: every pipe's
/// pages count against the user's `/proc/sys/fs/pipe-user-pages-soft` (1024 such pipes by
/// default), past which new pipes get 2 pages; such a pipe still works, in smaller pieces (the
/// kernel moves what fits).
const PIPE_BYTES: usize = 64 * 1024;

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
        let mut left = len;
        while left > 0 {
            let n = fill(pipe, from, left, timer, read_limit).await?;
            left -= n as u64;
            if let Err(e) = drain(pipe, to, n, timer, write_limit).await {
                self.pipe = None;
                return Err(Broke::Dest(e));
            }
        }
        Ok(())
    }
}

/// One read: from the socket into the (empty) pipe, at most `left` bytes.
async fn fill(
    pipe: &Pipe,
    from: &TcpStream,
    left: u64,
    timer: &mut Pin<Box<Sleep>>,
    limit: Option<Duration>,
) -> Result<usize, Broke> {
    let want = usize::try_from(left).unwrap_or(usize::MAX).min(PIPE_BYTES);
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
