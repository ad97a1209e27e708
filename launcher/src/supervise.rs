//! Foreground supervision, as `sd-launch --foreground` does it: forward signals to the daemon
//! and end with its exit status.
//!
//! The signals are blocked (in the calling thread) *before* the daemon is spawned, so none
//! sent in between is lost; the daemon starts with an empty mask. They are then collected
//! with `sigtimedwait`, which needs no signal handler and so no async-signal-safety games.
//! Call [`block_signals`] from the main thread of a single-threaded program: a signal aimed at
//! the process may otherwise be delivered to another thread that does not block it.

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::launched::Launched;

/// The signals forwarded to the daemon.
///
/// ```
/// assert!(sd_launch::supervise::FORWARDED.contains(&libc::SIGTERM));
/// ```
pub const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The forwarded signals and `SIGCHLD`, blocked until this value is dropped.
///
/// ```
/// let blocked = sd_launch::supervise::block_signals()?;
/// drop(blocked); // the previous mask is back
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct BlockedSignals {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

/// Block [`FORWARDED`] and `SIGCHLD` in this thread. Do it before spawning the daemon.
///
/// ```
/// let _blocked = sd_launch::supervise::block_signals()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn block_signals() -> io::Result<BlockedSignals> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset/sigaddset write into the set we own; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *sig);
        }
    }
    // SAFETY: pthread_sigmask reads `set` and writes `old`, both ours.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(BlockedSignals { set, old })
}

impl BlockedSignals {
    /// Forward every blocked signal to `daemon` until it exits; return its exit status.
    ///
    /// ```
    /// let blocked = sd_launch::supervise::block_signals()?;
    /// let mut daemon = sd_launch::Launch::new("sh").args(["-c", "exit 3"]).spawn()?;
    /// let status = blocked.supervise(&mut daemon)?;
    /// assert_eq!(sd_launch::supervise::exit_code(status), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn supervise(&self, daemon: &mut Launched) -> io::Result<ExitStatus> {
        self.supervise_with(daemon, DEFAULT_STOP_TIMEOUT)
    }

    /// Like [`supervise`](BlockedSignals::supervise), but a daemon that has not exited
    /// `stop_timeout` after a forwarded SIGTERM, SIGINT or SIGQUIT gets SIGKILL (systemd's
    /// `TimeoutStopSec=`; `sd-launch --stop-timeout`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let blocked = sd_launch::supervise::block_signals()?;
    /// let mut daemon = sd_launch::Launch::new("true").spawn()?;
    /// let status = blocked.supervise_with(&mut daemon, Duration::from_secs(1))?;
    /// assert!(status.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn supervise_with(
        &self,
        daemon: &mut Launched,
        stop_timeout: Duration,
    ) -> io::Result<ExitStatus> {
        let mut kill_at: Option<Instant> = None;
        loop {
            if let Some(status) = daemon.try_wait()? {
                return Ok(status);
            }
            if kill_at.is_some_and(|t| Instant::now() >= t) {
                return kill_after_stop_timeout(daemon, stop_timeout);
            }
            let wait = kill_at.map_or(TICK, |t| {
                t.saturating_duration_since(Instant::now()).min(TICK)
            });
            if let Some(sig) = self.next_signal(wait) {
                if FORWARDED.contains(&sig) {
                    tracing::debug!("forwarding signal {sig} to pid {}", daemon.pid());
                    forward(daemon, sig)?;
                    if STOPPING.contains(&sig) && kill_at.is_none() {
                        kill_at = Some(Instant::now() + stop_timeout);
                    }
                }
            }
            // SIGCHLD, a timeout or EINTR: look at the daemon again.
        }
    }

    /// The next blocked signal, or `None` after `timeout` (or on EINTR).
    pub(crate) fn next_signal(&self, timeout: Duration) -> Option<i32> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: siginfo_t is plain data that sigtimedwait fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigtimedwait reads our set and timeout and writes `info`.
        let sig = unsafe { libc::sigtimedwait(&self.set, &mut info, &timeout) };
        (sig > 0).then_some(sig)
    }
}

/// How often the supervisor looks at its children when no signal comes.
const TICK: Duration = Duration::from_millis(500);

/// The forwarded signals after which a daemon is expected to exit.
pub(crate) const STOPPING: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// How long a daemon may take to exit after a stop signal before it gets SIGKILL, unless
/// told otherwise (systemd's default `TimeoutStopSec=` is 90 s; a test or a terminal user
/// wants less).
///
/// ```
/// assert_eq!(sd_launch::supervise::DEFAULT_STOP_TIMEOUT.as_secs(), 10);
/// ```
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The escalation at the end of a stop timeout: say so, `SIGKILL`, reap.
pub(crate) fn kill_after_stop_timeout(
    daemon: &mut Launched,
    stop_timeout: Duration,
) -> io::Result<ExitStatus> {
    tracing::warn!(
        "{} (pid {}) still running {stop_timeout:?} after the stop signal: sending SIGKILL",
        daemon.program(),
        daemon.pid()
    );
    daemon.kill()
}

/// Send `sig` to `daemon`; a daemon that has just exited (ESRCH) is not an error.
pub(crate) fn forward(daemon: &Launched, sig: i32) -> io::Result<()> {
    match daemon.signal(sig) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by block_signals.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// A shell's exit code for `status`: the exit code, or 128 + the signal that killed it.
///
/// ```
/// use std::os::unix::process::ExitStatusExt;
/// use std::process::ExitStatus;
/// assert_eq!(sd_launch::supervise::exit_code(ExitStatus::from_raw(3 << 8)), 3);
/// assert_eq!(sd_launch::supervise::exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
/// ```
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------
// Accept mode (crate::accept): collecting the blocked signals without waiting, and a pollable
// fd that says one is pending, so one `poll` can wait for connections and signals together.
// ---------------------------------------------------------------------------------------------

impl BlockedSignals {
    /// Take one pending blocked signal without waiting: `Ok(None)` when none is pending.
    pub(crate) fn take_pending(&self) -> io::Result<Option<i32>> {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            // SAFETY: siginfo_t is plain data that sigtimedwait fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: sigtimedwait reads our set and timeout and writes `info`.
            let sig = unsafe { libc::sigtimedwait(&self.set, &mut info, &zero) };
            if sig > 0 {
                return Ok(Some(sig));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => return Err(err),
            }
        }
    }

    /// Linux: a `signalfd` for the blocked signals. It becomes readable while one of them is
    /// pending; it is only a wake-up source, the signals are collected with
    /// [`take_pending`](BlockedSignals::take_pending). `None` on other systems, where the
    /// caller polls with a timeout instead.
    pub(crate) fn pending_fd(&self) -> io::Result<Option<std::os::fd::OwnedFd>> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: signalfd with -1 creates a new fd for our set; flags are valid.
            let fd =
                unsafe { libc::signalfd(-1, &self.set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: signalfd returned a new fd that nobody else owns.
            Ok(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        Ok(None)
    }
}
