//! Captured output: the daemon's stdout and stderr through pipes that a reader thread of
//! ours drains into bounded buffers, so the daemon never blocks on a full pipe, its logs do
//! not interleave with the test's, and every error about it can show what it said.
//!
//! Decisions:
//! * Each stream keeps its last [`KEEP`] bytes (the head of a chatty daemon's log is
//!   dropped, as `docker logs --tail` would show it); everything is counted.
//! * One reader thread per captured launch, blocked in `poll` on the two pipes (not a wait
//!   of the supervisor: it only copies bytes), gone once every writer has closed them (the
//!   daemon and whatever it started).
//! * An `eventfd` is signalled after each read, so the supervisor's loop can wait for a log
//!   line without polling.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How many bytes of each stream are kept.
pub(crate) const KEEP: usize = 256 * 1024;

/// The output of a daemon, as captured so far.
#[derive(Debug)]
pub(crate) struct Capture {
    shared: Arc<Shared>,
    /// Which of stdout and stderr go through it.
    captured: [bool; 2],
}

#[derive(Debug)]
struct Shared {
    streams: Mutex<[Stream; 2]>,
    /// Notified after each read and when a stream reaches end of file.
    drained: Condvar,
    /// The read ends of the pipes (owned by the reader thread, which sets `done` before it
    /// closes one): looked at only with `streams` locked.
    read_ends: [RawFd; 2],
    /// Signalled after each chunk read.
    wake: OwnedFd,
}

#[derive(Debug, Default)]
struct Stream {
    tail: VecDeque<u8>,
    /// Bytes read in all.
    total: u64,
    /// End of file seen (or never captured).
    done: bool,
}

/// Which stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Stdout = 0,
    Stderr = 1,
}

/// The write ends of the pipes, for the daemon's stdout and stderr (`None`: not captured).
#[derive(Debug)]
pub(crate) struct Writers {
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
}

impl Capture {
    /// Pipes for the streams asked for (`Some`, with an fd every byte is also copied to,
    /// if any), and the reader thread that drains them.
    pub(crate) fn start(
        streams: [Option<Option<OwnedFd>>; 2],
        program: &str,
    ) -> io::Result<(Capture, Writers)> {
        let [out, err] = streams;
        let (stdout, stderr) = (out.is_some(), err.is_some());
        let mut copies = [out.flatten(), err.flatten()];
        // SAFETY: eventfd takes an initial value and flags and returns a new fd or -1.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd returned a new fd that nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let mut streams: [Stream; 2] = Default::default();
        streams[0].done = !stdout;
        streams[1].done = !stderr;
        let mut readers = Vec::new();
        let mut writers = Writers {
            stdout: None,
            stderr: None,
        };
        for (which, wanted) in [(Which::Stdout, stdout), (Which::Stderr, stderr)] {
            if !wanted {
                continue;
            }
            let (r, w) = pipe()?;
            let copy = copies[which as usize].take().map(std::fs::File::from);
            readers.push((which, r, copy));
            match which {
                Which::Stdout => writers.stdout = Some(w),
                Which::Stderr => writers.stderr = Some(w),
            }
        }
        let mut read_ends = [-1; 2];
        for (which, r, _) in &readers {
            read_ends[*which as usize] = r.as_raw_fd();
        }
        let shared = Arc::new(Shared {
            streams: Mutex::new(streams),
            drained: Condvar::new(),
            read_ends,
            wake,
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("sd-launch output of {program}"))
            .spawn(move || read_all(&thread_shared, readers))?;
        Ok((
            Capture {
                shared,
                captured: [stdout, stderr],
            },
            writers,
        ))
    }

    /// A second handle on the same output (for each daemon of a service).
    pub(crate) fn share(&self) -> Capture {
        Capture {
            shared: Arc::clone(&self.shared),
            captured: self.captured,
        }
    }

    fn streams(&self) -> MutexGuard<'_, [Stream; 2]> {
        // A reader thread that panicked leaves whole chunks: the data is still good.
        self.shared
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `which` goes through this capture.
    pub(crate) fn has(&self, which: Which) -> bool {
        self.captured[which as usize]
    }

    /// The kept text of one stream (lossy UTF-8).
    pub(crate) fn text(&self, which: Which) -> String {
        let streams = self.streams();
        let (a, b) = streams[which as usize].tail.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Wait (at most a second) until everything written to `which` so far has been read:
    /// the stream ended, or its pipe is empty (the reader reads only with the streams
    /// locked, so an empty pipe means every byte is in the tail). Not the end of file: a
    /// descendant, or the plan of a daemon that restarts, may hold the pipe open.
    pub(crate) fn wait_drained(&self, which: Which) {
        let i = which as usize;
        let fd = self.shared.read_ends[i];
        let streams = self.streams();
        let _ = self
            .shared
            .drained
            .wait_timeout_while(streams, Duration::from_secs(1), |s| {
                !s[i].done && unread(fd) != Some(0)
            });
    }

    /// Bytes read so far from `which` (kept or not).
    pub(crate) fn total(&self, which: Which) -> u64 {
        self.streams()[which as usize].total
    }

    /// The eventfd signalled after each read (reset with [`Capture::clear_wake`]).
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.shared.wake.as_raw_fd()
    }

    /// Reset the eventfd before looking at the text, so no wake-up is lost.
    pub(crate) fn clear_wake(&self) {
        let mut v = 0u64;
        // SAFETY: reading the 8-byte counter of our eventfd into a local (EAGAIN when 0).
        unsafe { libc::read(self.wake_fd(), (&raw mut v).cast(), 8) };
    }
}

/// The last lines of `text`: at most `max` bytes, cut at a line start, trimmed.
pub(crate) fn last_lines(text: &str, max: usize) -> Option<String> {
    let start = text.len().saturating_sub(max);
    let mut cut = start;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let tail = &text[cut..];
    let tail = if start > 0 {
        tail.split_once('\n').map_or(tail, |(_, rest)| rest)
    } else {
        tail
    };
    let tail = tail.trim_end();
    (!tail.is_empty()).then(|| tail.to_owned())
}

/// Bytes waiting in a pipe (`None`: it cannot be told, or there is no pipe).
fn unread(fd: RawFd) -> Option<usize> {
    if fd < 0 {
        return None;
    }
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into our local.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (r == 0).then_some(n as usize)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into our array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new fds that nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The reader thread: drain every pipe until all are at end of file.
fn read_all(shared: &Shared, mut readers: Vec<(Which, OwnedFd, Option<std::fs::File>)>) {
    let mut buf = vec![0u8; 64 * 1024];
    while !readers.is_empty() {
        let mut fds: Vec<libc::pollfd> = readers
            .iter()
            .map(|(_, fd, _)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if crate::process::poll(&mut fds, None).is_err() {
            return;
        }
        let mut closed = Vec::new();
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            let (which, fd, copy) = &readers[i];
            // Read with the streams locked (the pipe is readable: this does not block), so
            // that an empty pipe tells `wait_drained` every byte is in the tail.
            let mut streams = shared.streams.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: read into our buffer, at most its length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let stream = &mut streams[*which as usize];
                stream.total += n as u64;
                stream.tail.extend(&buf[..n as usize]);
                let excess = stream.tail.len().saturating_sub(KEEP);
                stream.tail.drain(..excess);
                drop(streams);
                shared.drained.notify_all();
                if let Some(mut copy) = copy.as_ref() {
                    // A copy that fails (a closed terminal) is dropped: capturing goes on.
                    let _ = std::io::Write::write_all(&mut copy, &buf[..n as usize]);
                }
                let one = 1u64;
                // SAFETY: adding 1 to our eventfd's counter from a local.
                unsafe { libc::write(shared.wake.as_raw_fd(), (&raw const one).cast(), 8) };
            } else if n == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            let mut streams = shared.streams.lock().unwrap_or_else(|e| e.into_inner());
            streams[readers[i].0 as usize].done = true;
            shared.drained.notify_all();
            // Closed only now, `done` set: `wait_drained` never looks at a closed fd.
            drop(readers.remove(i));
            drop(streams);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_whole_lines() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let t = last_lines(&text, 2048).unwrap();
        assert!(t.ends_with("line 999") && t.starts_with("line "), "{t}");
        assert!(t.len() <= 2048);
        assert_eq!(last_lines("  \n", 10), None);
    }

    #[test]
    fn what_was_written_is_whole_while_another_holder_keeps_the_pipe_open() {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        // The plan of a daemon that restarts keeps the write end for the next one: the
        // tail of the one that exited must not wait for that end to close.
        let (capture, writers) = Capture::start([None, Some(None)], "test").unwrap();
        let mut w = std::fs::File::from(writers.stderr.unwrap());
        w.write_all(b"bad\n").unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let closer = {
            let closed = Arc::clone(&closed);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                closed.store(true, Ordering::SeqCst);
                drop(w);
            })
        };
        capture.wait_drained(Which::Stderr);
        let early = !closed.load(Ordering::SeqCst);
        assert_eq!(capture.text(Which::Stderr), "bad\n");
        closer.join().unwrap();
        assert!(
            early,
            "wait_drained waited for the other holder to close the pipe"
        );
    }

    #[test]
    fn a_daemon_that_writes_more_than_a_pipe_holds_never_blocks_and_the_tail_is_kept() {
        use std::io::Write;
        let (capture, writers) = Capture::start([Some(None), None], "test").unwrap();
        let mut w = std::fs::File::from(writers.stdout.unwrap());
        let line = "x".repeat(1023) + "\n";
        for _ in 0..1024 {
            w.write_all(line.as_bytes()).unwrap(); // 1 MiB: 16 pipe buffers
        }
        w.write_all(b"the end\n").unwrap();
        drop(w);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while capture.total(Which::Stdout) < 1024 * 1024 + 8 {
            assert!(std::time::Instant::now() < deadline, "reader stalled");
            std::thread::yield_now();
        }
        let text = capture.text(Which::Stdout);
        assert!(text.len() <= KEEP);
        assert!(text.ends_with("the end\n"));
    }
}
