//! The signals a supervisor handles: blocked in the calling thread before any daemon is
//! spawned (so none sent in between is lost; the daemon starts with an empty mask), then read
//! from a `signalfd` by the supervisor's one event loop. No signal handler, so no
//! async-signal-safety games.
//!
//! Block them from the main thread of a single-threaded program (as `sd-launch` does): a
//! signal aimed at the process may otherwise be delivered to another thread that does not
//! block it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitStatus;
use std::time::Duration;

/// The signals forwarded to the daemon.
///
/// ```
/// assert!(sd_launch::supervisor::FORWARDED.contains(&libc::SIGTERM));
/// ```
pub const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The forwarded signals after which a daemon is expected to exit.
pub(crate) const STOPPING: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// How long a daemon may take to exit after a stop signal before it gets SIGKILL, unless
/// told otherwise (systemd's default `TimeoutStopSec=` is 90 s; a test or a terminal user
/// wants less).
///
/// ```
/// assert_eq!(sd_launch::supervisor::DEFAULT_STOP_TIMEOUT.as_secs(), 10);
/// ```
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// [`FORWARDED`] and `SIGCHLD`, blocked in this thread until dropped, and readable from a
/// `signalfd`.
///
/// ```
/// let signals = sd_launch::supervisor::Signals::block()?;
/// drop(signals); // the previous mask is back
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Signals {
    fd: OwnedFd,
    /// The mask to restore when dropped; `None` for a copy.
    old: Option<libc::sigset_t>,
}

impl Signals {
    /// Block [`FORWARDED`] and `SIGCHLD` in this thread. Do it before spawning the daemon.
    ///
    /// ```
    /// let _signals = sd_launch::supervisor::Signals::block()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn block() -> io::Result<Signals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset writes into the set we own.
        unsafe { libc::sigemptyset(&mut set) };
        for sig in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            // SAFETY: sigaddset writes into our set; the signal numbers are valid.
            unsafe { libc::sigaddset(&mut set, *sig) };
        }
        // SAFETY: pthread_sigmask reads `set` and writes `old`, both ours.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: signalfd with -1 creates a new fd for our set; the flags are valid.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: restores the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
            return Err(e);
        }
        // SAFETY: signalfd returned a new fd that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signals { fd, old: Some(old) })
    }

    /// A second reader of the same signals (the mask is restored by the original only).
    pub(crate) fn try_clone(&self) -> io::Result<Signals> {
        Ok(Signals {
            fd: self.fd.try_clone()?,
            old: None,
        })
    }

    /// The signalfd, readable while a signal is pending.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Take one pending signal without waiting: `Ok(None)` when none is pending.
    pub(crate) fn take(&self) -> io::Result<Option<i32>> {
        // SAFETY: signalfd_siginfo is plain data that read fills in.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: read into the one struct we own, of its exact size.
            let n = unsafe { libc::read(self.raw_fd(), (&raw mut info).cast(), size) };
            if n == size as isize {
                return Ok(Some(info.ssi_signo as i32));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            // SAFETY: restores the mask saved by block.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
        }
    }
}

/// A shell's exit code for `status`: the exit code, or 128 + the signal that killed it.
///
/// ```
/// use std::os::unix::process::ExitStatusExt;
/// use std::process::ExitStatus;
/// assert_eq!(sd_launch::supervisor::exit_code(ExitStatus::from_raw(3 << 8)), 3);
/// assert_eq!(sd_launch::supervisor::exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
/// ```
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
