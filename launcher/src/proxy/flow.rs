//! One direction of a proxied connection: bytes from a source socket to a destination
//! socket. A flow starts by copying: what one `recv` brings into the proxy's scratch buffer
//! (shared by every flow: one thread) is sent on at once, and only what the destination
//! did not take is kept, in the flow's own memory, until it does. For the small messages of
//! most protocols (a Redis `PING`, an HTTP request) that is the cheapest there is: two
//! syscalls per message, no pipe to create. A flow that reads a lot at once (at least
//! [`BULK`]) is a bulk transfer: it switches to `splice(2)` through a pipe of its own, and
//! those bytes never enter our memory. It copies on where no pipe can be had or the kernel
//! cannot splice these sockets.
//!
//! A flow never blocks and never spins: it says which readiness it waits for
//! ([`Flow::wants_read`] on the source, [`Flow::wants_write`] on the destination), the loop
//! waits for exactly that, and the proxy calls [`Flow::readable`] or [`Flow::writable`]
//! when it comes: one read (then one write of what it read), or one write, each time; a
//! read that returned less than it could is not tried again before the source is said
//! readable again. Backpressure follows: while the destination holds bytes it did not
//! take, the source is not read, so the kernel's window closes on the sender.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::Socket;

/// Size of the scratch buffer that copying flows read into (a pipe's default capacity).
pub(super) const SCRATCH: usize = 64 * 1024;

/// A read of at least this much makes a flow a bulk transfer: it splices from then on.
pub(super) const BULK: usize = 16 * 1024;

/// The size asked for the pipe of a bulk flow (Linux's default `fs.pipe-max-size`).
const BULK_PIPE: libc::c_int = 1024 * 1024;

/// The buffer every copying flow reads into, and sends from at once.
pub(super) fn scratch() -> Box<[u8]> {
    vec![0; SCRATCH].into_boxed_slice()
}

#[derive(Debug)]
enum Buffer {
    /// Through our memory: `pending[start..]` was read and not written yet (empty, and
    /// unallocated, but for a destination that did not take everything at once).
    Copy { pending: Vec<u8>, start: usize },
    /// A pipe: `len` bytes are in it, of `cap`.
    Pipe {
        read: OwnedFd,
        write: OwnedFd,
        len: usize,
        cap: usize,
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
    /// A bulk read was seen: splice once the bytes kept are written.
    bulk: bool,
    /// Never splice: no pipe could be had, or these sockets cannot splice.
    copy_only: bool,
}

impl Flow {
    /// A flow that copies (until it sees a bulk read).
    pub(super) fn new() -> Flow {
        Flow {
            buffer: Buffer::Copy {
                pending: Vec::new(),
                start: 0,
            },
            eof: false,
            shut: false,
            full: false,
            bulk: false,
            copy_only: false,
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
            Buffer::Copy { pending, start } => pending.len() - start,
        }
    }

    /// The flow waits for its source to be readable.
    pub(super) fn wants_read(&self) -> bool {
        !self.eof
            && match &self.buffer {
                Buffer::Pipe { len, cap, .. } => !self.full && len < cap,
                Buffer::Copy { .. } => self.len() == 0,
            }
    }

    /// The flow waits for its destination to be writable (it holds bytes it could not write).
    pub(super) fn wants_write(&self) -> bool {
        self.len() > 0
    }

    /// This direction is over: the end was read and passed on.
    pub(super) fn done(&self) -> bool {
        self.shut
    }

    /// The source is readable (or at its end, or in error): read once, if the flow wants
    /// to, and write what was read at once. Returns whether anything happened; an error
    /// (reset, broken pipe) ends the connection.
    pub(super) fn readable(
        &mut self,
        src: &Socket,
        dst: &Socket,
        scratch: &mut [u8],
    ) -> io::Result<bool> {
        if !self.wants_read() {
            return Ok(false);
        }
        let progress = self.read(src.as_raw_fd(), dst.as_raw_fd(), scratch)?;
        self.settle(dst);
        Ok(progress)
    }

    /// The destination is writable (or in error): write once what waits for it. Returns
    /// whether anything happened.
    pub(super) fn writable(&mut self, dst: &Socket) -> io::Result<bool> {
        let progress = self.wants_write() && self.drain(dst.as_raw_fd())? > 0;
        Ok(self.settle(dst) | progress)
    }

    /// [`writable`](Flow::writable), then [`readable`](Flow::readable): whatever can be
    /// done now, once.
    #[cfg(test)]
    pub(super) fn step(
        &mut self,
        src: &Socket,
        dst: &Socket,
        scratch: &mut [u8],
    ) -> io::Result<bool> {
        Ok(self.writable(dst)? | self.readable(src, dst, scratch)?)
    }

    /// After a read or a write: pass the end on once everything before it was written,
    /// and start splicing once a bulk transfer has nothing kept in our memory. Returns
    /// whether the end was passed on now.
    fn settle(&mut self, dst: &Socket) -> bool {
        if self.len() > 0 {
            return false;
        }
        if self.bulk && !self.copy_only && matches!(self.buffer, Buffer::Copy { .. }) {
            self.bulk = false;
            match pipe() {
                Ok((read, write)) => {
                    // A bigger pipe moves a bulk transfer in fewer splices. Refused past
                    // the system's limit (fs.pipe-max-size, the user's pipe quota): then
                    // the pipe keeps its default size.
                    // SAFETY: F_SETPIPE_SZ resizes the pipe we own; no memory of ours.
                    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, BULK_PIPE) };
                    // SAFETY: F_GETPIPE_SZ reads a property of the pipe we own; no memory.
                    let cap = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETPIPE_SZ) };
                    self.buffer = Buffer::Pipe {
                        read,
                        write,
                        len: 0,
                        cap: usize::try_from(cap).unwrap_or(4096).max(1),
                    };
                }
                Err(e) => {
                    tracing::debug!("no pipe for a proxied connection ({e}): copying on");
                    self.copy_only = true;
                }
            }
        }
        if self.eof && !self.shut {
            // The peer may have gone meanwhile (ENOTCONN): nothing left to tell it.
            let _ = dst.shutdown(std::net::Shutdown::Write);
            self.shut = true;
            return true;
        }
        false
    }

    /// Read once from `src` (the flow wants to), and write on to `dst` at once.
    fn read(&mut self, src: RawFd, dst: RawFd, scratch: &mut [u8]) -> io::Result<bool> {
        let n = match &mut self.buffer {
            Buffer::Copy { pending, .. } => match would_block(recv(src, scratch))? {
                None => return Ok(false),
                Some(0) => 0,
                Some(n) => {
                    let sent = would_block(send(dst, &scratch[..n]))?.unwrap_or(0);
                    pending.extend_from_slice(&scratch[sent..n]);
                    self.bulk |= n >= BULK;
                    n
                }
            },
            Buffer::Pipe {
                write, len, cap, ..
            } => match splice(src, write.as_raw_fd(), *cap - *len) {
                Ok(n) => {
                    *len += n;
                    if n > 0 {
                        self.drain(dst)?;
                    }
                    n
                }
                // This pair of file types cannot splice: copy instead (the pipe is empty,
                // or the first splice would have failed already).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && *len == 0 => {
                    tracing::debug!("splice is not supported here: copying instead");
                    self.copy_only = true;
                    self.buffer = Buffer::Copy {
                        pending: Vec::new(),
                        start: 0,
                    };
                    return self.read(src, dst, scratch);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // With bytes in the pipe, "would block" may be the pipe's: wait for a
                    // write to free it. With none, it is the socket's: wait for it.
                    self.full = *len > 0;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            },
        };
        self.eof |= n == 0;
        Ok(true)
    }

    /// Write once from the buffer to `dst`; how much ("would block" is 0).
    fn drain(&mut self, dst: RawFd) -> io::Result<usize> {
        let n = match &mut self.buffer {
            Buffer::Pipe { read, len, .. } => {
                let n = would_block(splice(read.as_raw_fd(), dst, *len))?.unwrap_or(0);
                *len -= n;
                n
            }
            Buffer::Copy { pending, start } => {
                let n = would_block(send(dst, &pending[*start..]))?.unwrap_or(0);
                *start += n;
                if *start == pending.len() {
                    // Written: the memory goes (a flow holds none while it keeps up).
                    (*pending, *start) = (Vec::new(), 0);
                }
                n
            }
        };
        self.full &= n == 0;
        Ok(n)
    }
}

/// `Ok(None)` for "would block", else the result.
fn would_block(r: io::Result<usize>) -> io::Result<Option<usize>> {
    match r {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

fn recv(src: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which we own.
    result(unsafe { libc::recv(src, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

fn send(dst: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads `bytes.len()` bytes from `bytes`, which we own; MSG_NOSIGNAL: a
    // closed peer is an EPIPE error, not a signal.
    result(unsafe { libc::send(dst, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) })
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
    fn settle(flow: &mut Flow, src: &Socket, dst: &Socket, scratch: &mut [u8]) {
        for _ in 0..1000 {
            if !flow.step(src, dst, scratch).unwrap() {
                return;
            }
        }
        panic!("the flow never settled");
    }

    #[test]
    fn small_messages_are_copied_bulk_is_spliced_and_the_end_passes() {
        let (mut client, src) = pair();
        let (mut server, dst) = pair();
        let scratch = &mut scratch();
        let mut flow = Flow::new();
        client.write_all(b"hello").unwrap();
        settle(&mut flow, &src, &dst, scratch);
        assert!(!flow.spliced(), "a small message is copied");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // More than one read takes at once (the socket buffer holds it all): a bulk read.
        let bulk: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        client.write_all(&bulk).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap(); // ends: the half-close was passed on
            got
        });
        let mut spliced = false;
        for _ in 0..100_000 {
            flow.step(&src, &dst, scratch).unwrap();
            spliced |= flow.spliced();
            if flow.done() {
                break;
            }
        }
        assert!(flow.done());
        assert!(
            spliced,
            "a Unix socket pair splices, once the flow is a bulk transfer"
        );
        assert_eq!(reader.join().unwrap(), bulk);
    }

    #[test]
    fn a_full_destination_stops_reading_the_source() {
        let (mut client, src) = pair();
        let (mut server, dst) = pair();
        let scratch = &mut scratch();
        let mut flow = Flow::new();
        client.set_nonblocking(true).unwrap();
        let chunk = [7u8; 65536];
        let mut sent = 0usize;
        // Fill everything: the destination socket, the buffer, the source socket.
        for _ in 0..10_000 {
            match client.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => {
                    if !flow.step(&src, &dst, scratch).unwrap() {
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
                    flow.step(&src, &dst, scratch).unwrap();
                }
            }
        }
        assert_eq!(received, sent, "every byte arrived, once");
    }

    #[test]
    fn without_a_pipe_the_flow_copies() {
        let (mut client, src) = pair();
        let (mut server, dst) = pair();
        let scratch = &mut scratch();
        let mut flow = Flow::new();
        flow.copy_only = true; // as when no pipe could be had
        let bulk = vec![1u8; 100_000];
        client.write_all(&bulk).unwrap();
        drop(client);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap();
            got
        });
        for _ in 0..100_000 {
            flow.step(&src, &dst, scratch).unwrap();
            assert!(!flow.spliced());
            if flow.done() {
                break;
            }
        }
        assert_eq!(reader.join().unwrap(), bulk);
    }
}
