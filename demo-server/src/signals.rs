//! The stop signals (SIGTERM, SIGINT), received without ever losing one.
//!
//! A tokio signal stream installs the process-wide handler first and subscribes to it a few
//! instructions later. A signal that lands in between runs the handler, which has nowhere to
//! send it yet: it is consumed and nobody sees it, and the daemon keeps running after `kill`.
//! Before the handler exists, the default action applies instead (the process dies). So the
//! stop signals are blocked from the top of `main`, before the runtime starts any thread,
//! and unblocked only once both streams are registered: a signal sent meanwhile stays
//! pending in the kernel and reaches a registered handler at the unblock.
//!
//! The runtime's threads are created while the signals are blocked and keep them blocked,
//! so the kernel delivers every stop signal to the main thread, which unblocked them (and
//! lives until the process exits). Child processes would not inherit the mask: std's
//! `Command` resets it in the child.

use std::io;
use std::marker::PhantomData;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The signals demo-server stops on.
const STOP: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// The stop signals, blocked in the calling thread until [`Blocked::register`] (or drop).
///
/// Not `Send`: the mask belongs to the thread that blocked it, which must be the one to
/// unblock it.
#[derive(Debug)]
pub struct Blocked {
    _this_thread: PhantomData<*const ()>,
}

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: `kill`, systemd, sd-launch.
    Term,
    /// SIGINT: Ctrl-C.
    Int,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Term => "SIGTERM",
            Stop::Int => "SIGINT",
        })
    }
}

/// Registered streams of the stop signals.
#[derive(Debug)]
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

/// Block the stop signals in the calling thread; every thread it creates from now on
/// inherits the mask. Call it first thing in `main`, before any thread exists.
pub fn block() -> io::Result<Blocked> {
    set_mask(libc::SIG_BLOCK)?;
    Ok(Blocked {
        _this_thread: PhantomData,
    })
}

impl Blocked {
    /// Register the stop signal streams, then unblock: a stop signal that arrived since
    /// [`block`] is delivered now, to a registered handler. Needs a tokio runtime context
    /// (`Runtime::enter` or inside `block_on`) with the signal driver enabled.
    pub fn register(self) -> io::Result<StopSignals> {
        let signals = StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        };
        drop(self); // unblocks
        Ok(signals)
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // Only fails for an invalid `how`, which SIG_UNBLOCK is not.
        let _ = set_mask(libc::SIG_UNBLOCK);
    }
}

impl StopSignals {
    /// The next stop signal.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Term,
            _ = self.int.recv() => Stop::Int,
        }
    }
}

/// `pthread_sigmask(how, STOP)` for the calling thread.
fn set_mask(how: libc::c_int) -> io::Result<()> {
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t for these two calls.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in STOP {
        // SAFETY: as above; `sig` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed. Changes
    // only the calling thread's signal mask.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}
