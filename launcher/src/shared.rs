//! [`Shared`]: one daemon for all the tests of a test binary.

use std::sync::OnceLock;

use crate::{Launch, Launched};

/// A daemon shared by the tests of one test binary: started by the first test that asks
/// for it, used by all of them (each in its own thread), and stopped when the process ends,
/// however it ends.
///
/// A `static` is never dropped, so nothing would stop a daemon kept in one: the launcher's
/// guardian does, with everything in the daemon's process group, when the test process
/// ends, however it ends ([`Launch::kill_on_exit`], on by default), so it never outlives the
/// test binary or holds its stdout open (`cargo test | tail` would hang).
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
        let started = self
            .cell
            .get_or_init(|| (self.make)().spawn().map_err(|e| e.to_string()));
        match started {
            Ok(daemon) => daemon,
            Err(e) => panic!("the shared daemon did not start: {e}"),
        }
    }
}
