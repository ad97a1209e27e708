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
use std::time::Duration;

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
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: Duration::from_millis(500).as_nanos() as libc::c_long,
        };
        loop {
            if let Some(status) = daemon.try_wait()? {
                return Ok(status);
            }
            // SAFETY: siginfo_t is plain data that sigtimedwait fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: sigtimedwait reads our set and timeout and writes `info`.
            let sig = unsafe { libc::sigtimedwait(&self.set, &mut info, &timeout) };
            if FORWARDED.contains(&sig) {
                match daemon.signal(sig) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e),
                }
            }
            // SIGCHLD, a timeout (EAGAIN) or EINTR: look at the daemon again.
        }
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
