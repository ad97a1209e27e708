//! [`Shared`]: one daemon for all the tests of a test binary.

use std::sync::{Mutex, OnceLock};

use crate::{Launch, Launched};

/// A daemon shared by the tests of one test binary: started by the first test that asks
/// for it, used by all of them (each in its own thread), and stopped when the process ends,
/// however it ends.
///
/// A `static` is never dropped, so a [`Launched`] kept in one would outlive the test
/// binary and hold its stdout open (`cargo test | tail` would hang). `Shared` stops its
/// daemon, with everything in the daemon's process group, when the test process exits, and
/// the launcher's guardian does the same if the process is killed.
///
/// ```
/// use sd_launch::{Launch, Shared};
/// static SERVER: Shared = Shared::new(|| Launch::new("sleep").arg("300"));
///
/// // In each test:
/// let server = SERVER.get(); // the first call starts it; the others wait for that
/// let addr = server.addr(0)?;
/// assert_eq!(SERVER.get().pid(), server.pid()); // one daemon for every test
/// # let _ = addr;
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug)]
pub struct Shared {
    make: fn() -> Launch,
    cell: OnceLock<Result<Launched, String>>,
}

/// The process groups of the shared daemons, killed at exit.
static AT_EXIT: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

impl Shared {
    /// A shared daemon started with `make()` on first use.
    ///
    /// ```
    /// static DB: sd_launch::Shared = sd_launch::Shared::new(|| sd_launch::Launch::new("sleep").arg("60"));
    /// ```
    pub const fn new(make: fn() -> Launch) -> Shared {
        Shared {
            make,
            cell: OnceLock::new(),
        }
    }

    /// The daemon, started on the first call (with the readiness wait of its launch, if
    /// any). A daemon that could not start fails every test that asks for it, with the
    /// error, as a panic: that is the test's failure.
    ///
    /// ```should_panic
    /// static BAD: sd_launch::Shared = sd_launch::Shared::new(|| sd_launch::Launch::new("no-such-daemon"));
    /// BAD.get(); // panics: "no-such-daemon: command not found ..."
    /// ```
    pub fn get(&self) -> &Launched {
        let started = self.cell.get_or_init(|| {
            let daemon = (self.make)().spawn().map_err(|e| e.to_string())?;
            register_at_exit(daemon.pid() as libc::pid_t);
            Ok(daemon)
        });
        match started {
            Ok(daemon) => daemon,
            Err(e) => panic!("the shared daemon did not start: {e}"),
        }
    }
}

fn register_at_exit(pid: libc::pid_t) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut pids = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    pids.push(pid);
    drop(pids);
    ONCE.call_once(|| {
        // SAFETY: atexit registers a function with no arguments that lives for the whole
        // program; it only takes a lock and calls kill.
        unsafe { libc::atexit(kill_shared) };
    });
}

/// At exit: SIGKILL to every shared daemon's process group (the daemons lead their own).
extern "C" fn kill_shared() {
    let pids = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    for &pid in pids.iter() {
        // SAFETY: kill with the negative pid of a process group we created; at worst
        // it is gone (ESRCH). The daemon is never reaped before exit, so its pid cannot
        // have been reused.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        // SAFETY: as above, for the daemon itself (started without a group of its own).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
