//! One direction of a proxied connection: bytes from a source socket to a destination
//! socket, through a pipe with `splice(2)` (the bytes never enter our memory), or through a
//! buffer of ours where a pipe cannot be had or the kernel cannot splice these sockets.
//!
//! A flow never blocks and never spins: it says which readiness it waits for
//! ([`Flow::wants_read`] on the source, [`Flow::wants_write`] on the destination), and the
//! loop polls for exactly that. Backpressure follows: while the destination is full, the
//! buffer stays full and the source is not read, so the kernel's window closes on the
//! sender.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::Socket;

/// Size of the buffer of a flow without a pipe (a pipe's default capacity, 16 pages).
const COPY_BUFFER: usize = 64 * 1024;

#[derive(Debug)]
enum Buffer {
    /// A pipe: `len` bytes are in it, of `cap`.
    Pipe {
        read: OwnedFd,
        write: OwnedFd,
        len: usize,
        cap: usize,
    },
    /// Our own memory: the bytes are `data[start..end]`.
    Copy {
        data: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

/// Bytes from one socket to the other, half-close included.
#[derive(Debug)]
pub(super) struct Flow {
    buffer: Buffer,
    /// The source has sent its end (read returned 0).
    eof: bool,
    /// The destination has been told (`shutdown(SHUT_WR)`): this direction is over.
    shut: bool,
    /// A splice into the pipe would block although the pipe holds less than its capacity
    /// (its slots are taken by small packets): read again once some of it is written.
    full: bool,
}

impl Flow {
    /// A flow through a new pipe; through our own buffer if no pipe can be had (out of fds).
    pub(super) fn new() -> Flow {
        let buffer = match pipe() {
            Ok((read, write)) => {
                // SAFETY: F_GETPIPE_SZ reads a property of the pipe we own; no memory.
                let cap = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETPIPE_SZ) };
                Buffer::Pipe {
                    read,
                    write,
                    len: 0,
                    cap: usize::try_from(cap).unwrap_or(4096).max(1),
                }
            }
            Err(e) => {
                tracing::debug!("no pipe for a proxied connection ({e}): copying instead");
                copy_buffer()
            }
        };
        Flow {
            buffer,
            eof: false,
            shut: false,
            full: false,
        }
    }

    /// Whether the bytes move through a pipe (zero-copy) rather than our memory.
    #[cfg(test)]
    pub(super) fn spliced(&self) -> bool {
        matches!(self.buffer, Buffer::Pipe { .. })
    }

    fn len(&self) -> usize {
        match &self.buffer {
            Buffer::Pipe { len, .. } => *len,
            Buffer::Copy { start, end, .. } => end - start,
        }
    }

    fn room(&self) -> usize {
        match &self.buffer {
            Buffer::Pipe { len, cap, .. } => cap - len,
            Buffer::Copy { data, start, end } => data.len() - (end - start),
        }
    }

    /// The flow waits for its source to be readable.
    pub(super) fn wants_read(&self) -> bool {
        !self.eof && !self.full && self.room() > 0
    }

    /// The flow waits for its destination to be writable (it holds bytes it could not write).
    pub(super) fn wants_write(&self) -> bool {
        self.len() > 0
    }

    /// This direction is over: the end was read and passed on.
    pub(super) fn done(&self) -> bool {
        self.shut
    }

    /// Move what can be moved now from `src` to `dst`, without blocking. Returns whether
    /// anything happened; an error (reset, broken pipe) ends the connection.
    pub(super) fn step(&mut self, src: &Socket, dst: &Socket) -> io::Result<bool> {
        let mut progress = false;
        if self.wants_read() {
            match self.fill(src.as_raw_fd()) {
                Ok(0) => {
                    self.eof = true;
                    progress = true;
                }
                Ok(_) => progress = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // With bytes in the pipe, "would block" may be the pipe's: wait for a
                    // write to free it. With none, it is the socket's: poll it.
                    self.full = self.len() > 0;
                }
                Err(e) => return Err(e),
            }
        }
        if self.len() > 0 {
            match self.drain(dst.as_raw_fd()) {
                Ok(n) => {
                    progress |= n > 0;
                    self.full &= n == 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if self.eof && self.len() == 0 && !self.shut {
            // The peer may have gone meanwhile (ENOTCONN): nothing left to tell it.
            let _ = dst.shutdown(std::net::Shutdown::Write);
            self.shut = true;
            progress = true;
        }
        Ok(progress)
    }

    /// Read from `src` into the buffer.
    fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        let room = self.room();
        match &mut self.buffer {
            Buffer::Pipe { write, len, .. } => {
                match splice(src, write.as_raw_fd(), room) {
                    Ok(n) => {
                        *len += n;
                        Ok(n)
                    }
                    // This pair of file types cannot splice: copy instead (the pipe is
                    // empty, or the first splice would have failed already).
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && *len == 0 => {
                        tracing::debug!("splice is not supported here: copying instead");
                        self.buffer = copy_buffer();
                        self.fill(src)
                    }
                    Err(e) => Err(e),
                }
            }
            Buffer::Copy { data, start, end } => {
                if start == end {
                    (*start, *end) = (0, 0);
                } else if *end == data.len() {
                    data.copy_within(*start..*end, 0);
                    (*start, *end) = (0, *end - *start);
                }
                let free = &mut data[*end..];
                // SAFETY: recv writes at most `free.len()` bytes into `free`, which we own.
                let n = unsafe { libc::recv(src, free.as_mut_ptr().cast(), free.len(), 0) };
                let n = result(n)?;
                *end += n;
                Ok(n)
            }
        }
    }

    /// Write from the buffer to `dst`.
    fn drain(&mut self, dst: RawFd) -> io::Result<usize> {
        match &mut self.buffer {
            Buffer::Pipe { read, len, .. } => {
                let n = splice(read.as_raw_fd(), dst, *len)?;
                *len -= n;
                Ok(n)
            }
            Buffer::Copy { data, start, end } => {
                let bytes = &data[*start..*end];
                // SAFETY: send reads `bytes.len()` bytes from `bytes`, which we own;
                // MSG_NOSIGNAL: a closed peer is an EPIPE error, not a signal.
                let n = unsafe {
                    libc::send(dst, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL)
                };
                let n = result(n)?;
                *start += n;
                Ok(n)
            }
        }
    }
}

fn copy_buffer() -> Buffer {
    Buffer::Copy {
        data: vec![0; COPY_BUFFER].into_boxed_slice(),
        start: 0,
        end: 0,
    }
}

/// A non-blocking pipe (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both fds are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `splice(2)` up to `len` bytes from `from` to `to`, one of them a pipe, without blocking
/// on the pipe (the sockets are non-blocking themselves).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice moves bytes between two fds we hold; the offsets are null (both are
    // streams), no memory of ours is involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    result(n)
}

fn result(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, Socket) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, Socket::from(OwnedFd::from(b)))
    }

    /// Run `flow` until it makes no more progress (bounded).
    fn settle(flow: &mut Flow, src: &Socket, dst: &Socket) {
        for _ in 0..1000 {
            if !flow.step(src, dst).unwrap() {
                return;
            }
        }
        panic!("the flow never settled");
    }

    #[test]
    fn bytes_and_the_end_pass_through_a_pipe() {
        let (mut client, src) = pair();
        let (mut server, dst) = pair();
        let mut flow = Flow::new();
        assert!(flow.spliced(), "a Unix socket pair splices");
        client.write_all(b"hello").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        settle(&mut flow, &src, &dst);
        assert!(flow.done());
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap(); // ends: the half-close was passed on
        assert_eq!(got, "hello");
    }

    #[test]
    fn a_full_destination_stops_reading_the_source() {
        let (mut client, src) = pair();
        let (mut server, dst) = pair();
        let mut flow = Flow::new();
        client.set_nonblocking(true).unwrap();
        let chunk = [7u8; 65536];
        let mut sent = 0usize;
        // Fill everything: the destination socket, the pipe, the source socket.
        for _ in 0..10_000 {
            match client.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => {
                    if !flow.step(&src, &dst).unwrap() {
                        break;
                    }
                }
            }
        }
        assert!(flow.wants_write(), "bytes wait for the destination");
        assert!(!flow.wants_read(), "and the source is not read meanwhile");
        client.shutdown(std::net::Shutdown::Write).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut received = 0usize;
        let mut buf = vec![0u8; 65536];
        for _ in 0..100_000 {
            match server.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received += n,
                Err(_) => {
                    flow.step(&src, &dst).unwrap();
                }
            }
        }
        assert_eq!(received, sent, "every byte arrived, once");
    }

    #[test]
    fn without_a_pipe_the_flow_copies() {
        let (mut client, src) = pair();
        let (mut server, dst) = pair();
        let mut flow = Flow {
            buffer: copy_buffer(),
            eof: false,
            shut: false,
            full: false,
        };
        client.write_all(b"ping").unwrap();
        drop(client);
        settle(&mut flow, &src, &dst);
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap();
        assert_eq!(got, "ping");
    }
}
