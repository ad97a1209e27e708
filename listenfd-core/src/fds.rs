//! [`ListenFds`]: the once-per-process owner of the passed fds, and [`Options`] to build it.

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::env::{self, EnvError, NotForUs, Parsed, Vars};
use crate::error::Error;
use crate::inspect::{self, FdInfo, FdKind};

/// Set by the first `from_env`/`from_vars` of the process: the passed fds have an owner.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// Selects a passed fd: by position (0 = the first passed fd, usually fd 3) or by name from
/// `LISTEN_FDNAMES`.
///
/// A name selects the first fd with that name that has not been taken yet, so several fds
/// sharing a name (systemd names every socket of a `.socket` unit after the unit) can be taken
/// one after the other.
///
/// ```
/// use listenfd_core::Which;
/// assert_eq!(Which::from(0), Which::Index(0));
/// assert_eq!(Which::from("http"), Which::Name("http"));
/// assert_eq!(Which::from("http").to_string(), "named \"http\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which<'a> {
    /// Position among the passed fds, from 0.
    Index(usize),
    /// Name from `LISTEN_FDNAMES`.
    Name(&'a str),
}

impl From<usize> for Which<'_> {
    fn from(index: usize) -> Self {
        Which::Index(index)
    }
}

impl<'a> From<&'a str> for Which<'a> {
    fn from(name: &'a str) -> Self {
        Which::Name(name)
    }
}

impl<'a> From<&'a String> for Which<'a> {
    fn from(name: &'a String) -> Self {
        Which::Name(name)
    }
}

impl fmt::Display for Which<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Which::Index(i) => write!(f, "at index {i}"),
            Which::Name(n) => write!(f, "named {n:?}"),
        }
    }
}

/// How to receive: strict or lenient, and whether to remove the `LISTEN_*` variables.
///
/// Defaults: strict (libsystemd semantics), `unset_env(true)`.
///
/// **Lenient mode** (`lenient(true)`) is for daemons started through launchers that omit
/// `LISTEN_PID` (systemfd `--no-pid`, watchexec `--socket`) or through an intermediary
/// (`cargo run`, a shell wrapper) that makes `LISTEN_PID` name another process. A *missing*
/// `LISTEN_PID` is accepted (a present one must still match), and the non-standard
/// `LISTEN_FDS_FIRST_FD` is honoured (fds are then `first .. first+n`, first >= 3). Strict mode
/// ignores `LISTEN_FDS_FIRST_FD` entirely, like libsystemd. Only enable lenient mode when you
/// trust whoever sets the environment not to leave stale `LISTEN_FDS` behind.
///
/// **Unsetting the environment.** Since Rust 2024, `std::env::remove_var` is `unsafe`: another
/// thread may read the environment at the same time. With `unset_env(true)` (the default) the
/// variables are removed — on every path, success or error, as libsystemd does — only when this
/// process is *provably single-threaded* (Linux: `/proc/self/task` has exactly one entry; no
/// other thread exists, and only this one could create another). Otherwise they are left in
/// place and [`ListenFds::env_unset`] returns `false`; call `from_env` at the top of `main`
/// before starting threads (a `#[tokio::main]` runtime starts threads before your code runs:
/// use a plain `main` that builds the runtime after receiving), or call the `unsafe`
/// [`remove_env`] yourself when you can guarantee no concurrent environment access. Leftover
/// variables are mostly harmless: the fds are `FD_CLOEXEC`, so children never inherit them, and
/// `LISTEN_PID` does not match a child's pid, so a child using any strict receiver ignores them.
/// `unset_env(false)` never touches the environment.
///
/// ```
/// use listenfd_core::Options;
/// let fds = Options::new().lenient(true).unset_env(false).from_env()?;
/// assert!(fds.is_empty()); // nothing was passed to this doctest
/// # Ok::<(), listenfd_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    lenient: bool,
    unset_env: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl Options {
    /// Strict, removing the variables when that is sound.
    ///
    /// ```
    /// let opts = listenfd_core::Options::new();
    /// # let _ = opts;
    /// ```
    pub fn new() -> Options {
        Options {
            lenient: false,
            unset_env: true,
        }
    }

    /// Accept a missing `LISTEN_PID` and honour `LISTEN_FDS_FIRST_FD` (see above).
    ///
    /// ```
    /// let opts = listenfd_core::Options::new().lenient(true);
    /// # let _ = opts;
    /// ```
    pub fn lenient(mut self, lenient: bool) -> Options {
        self.lenient = lenient;
        self
    }

    /// Remove the `LISTEN_*` variables after reading them (default `true`; see above for when
    /// this actually happens). `false` never touches the environment.
    ///
    /// ```
    /// let opts = listenfd_core::Options::new().unset_env(false);
    /// # let _ = opts;
    /// ```
    pub fn unset_env(mut self, unset_env: bool) -> Options {
        self.unset_env = unset_env;
        self
    }

    /// Receive the fds announced by the process environment. Claims the passed fds for the
    /// returned value: a second call in the same process returns [`Error::AlreadyTaken`].
    /// An empty `ListenFds` means "nothing was passed to us" (not an error), as in libsystemd.
    ///
    /// **Trusted, not `unsafe`.** Like [`Options::from_vars`] this takes ownership of the fds
    /// the variables announce, but trusting the environment is the protocol's own premise:
    /// whoever executed this process put the fds and the variables in place together, and
    /// `LISTEN_PID` tells the process they were meant for from one that merely inherited them.
    /// Code in the process that changes the environment does so in its own `unsafe` block
    /// (`std::env::set_var`, Rust 2024) and answers for it. The one limit no receiver can get
    /// past, libsystemd included, is an announced fd number that the process itself reused
    /// for something else before receiving (say fd 3 was closed at exec and a `File` got it):
    /// it cannot be told apart from a passed fd. Receive first thing in `main`, before
    /// opening anything, and this cannot happen; if it does anyway, the typed takes refuse
    /// the file and leave it open.
    ///
    /// ```
    /// let fds = listenfd_core::Options::new().from_env()?;
    /// assert_eq!(fds.len(), 0);
    /// assert!(matches!(listenfd_core::ListenFds::from_env(), Err(listenfd_core::Error::AlreadyTaken)));
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn from_env(&self) -> Result<ListenFds, Error> {
        claim()?;
        let values: Vec<Option<String>> = env::VARIABLES
            .iter()
            .map(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
            .collect();
        let vars = Vars {
            listen_pid: values[0].as_deref(),
            listen_pidfdid: values[1].as_deref(),
            listen_fds: values[2].as_deref(),
            listen_fdnames: values[3].as_deref(),
            listen_fds_first_fd: values[4].as_deref(),
        };
        // SAFETY: the fds the environment announces are this process's to own: that is the
        // protocol's premise (see "Trusted, not unsafe" above), and the claim makes this the
        // only receiver.
        let result = unsafe { receive(&vars, self.lenient) };
        let env_unset = self.unset_env && single_threaded();
        if env_unset {
            // SAFETY: this process has exactly one thread (checked just above), so nothing
            // can read or write the environment concurrently; only this thread could start
            // another one, and it is busy here.
            unsafe { remove_env() };
        }
        result.map(|mut fds| {
            fds.env_unset = env_unset;
            fds
        })
    }

    /// Receive the fds announced by explicitly given values instead of the process
    /// environment (which is then neither read nor changed). Claims the passed fds like
    /// [`Options::from_env`]. For "what would these values mean" without touching any fd, use
    /// [`env::parse`].
    ///
    /// ```
    /// use listenfd_core::{env::Vars, Options};
    /// // Values saved earlier, e.g. read from the environment before threads were started.
    /// let vars = Vars { listen_pid: Some("1"), listen_fds: Some("1"), ..Vars::default() };
    /// // SAFETY: the values name another process (pid 1), so no fd is taken.
    /// let fds = unsafe { Options::new().from_vars(&vars) }?;
    /// assert!(fds.is_empty());
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    ///
    /// # Safety
    ///
    /// When the values are for this process (its pid in `LISTEN_PID`, or no `LISTEN_PID` in
    /// lenient mode), the returned `ListenFds` takes ownership of every fd they announce
    /// (`LISTEN_FDS` of them from fd 3, or from `LISTEN_FDS_FIRST_FD` in lenient mode) as
    /// [`OwnedFd::from_raw_fd`] would: it hands them out, and closes those not taken when it
    /// is dropped. So, for every fd number the values announce, the caller guarantees that
    /// during this call it is either not open, or open and owned by nothing else in the
    /// process: no `File`, socket or `OwnedFd`, and no other code that will read, write or
    /// close it, and that closing is all the clean-up it needs. Two harmless side effects do
    /// not depend on it: every announced fd that is open gets `FD_CLOEXEC` (even when an
    /// error is returned), and one that is not open is [`Error::NotOpen`], with nothing taken.
    /// Values for another process, or malformed ones, take nothing.
    ///
    /// Values read from this process's environment at the top of `main`, before it opened
    /// anything, meet this as far as the protocol itself can (see [`Options::from_env`]).
    ///
    /// Because it takes ownership of the fd numbers it is told, safe code cannot call it:
    ///
    /// ```compile_fail,E0133
    /// use listenfd_core::{env::Vars, Options};
    /// let pid = std::process::id().to_string();
    /// let vars = Vars { listen_pid: Some(&pid), listen_fds: Some("1"), ..Vars::default() };
    /// let _fds = Options::new().from_vars(&vars); // error[E0133]: needs an unsafe block
    /// ```
    pub unsafe fn from_vars(&self, vars: &Vars<'_>) -> Result<ListenFds, Error> {
        claim()?;
        // SAFETY: our caller's promise (# Safety above) is exactly receive's requirement.
        unsafe { receive(vars, self.lenient) }
    }
}

fn claim() -> Result<(), Error> {
    if CLAIMED.swap(true, Ordering::SeqCst) {
        Err(Error::AlreadyTaken)
    } else {
        Ok(())
    }
}

/// Remove every `LISTEN_*` variable this crate knows (see [`env::VARIABLES`]) from the
/// process environment.
///
/// # Safety
///
/// Same contract as [`std::env::remove_var`]: no other thread may read or write the
/// environment during the call (this includes C code calling `getenv`, e.g. DNS resolution
/// or time zone handling). Calling it at the top of `main`, before any thread is started,
/// satisfies this.
///
/// ```
/// // SAFETY: this doctest's `main` runs on a single thread and starts none.
/// unsafe {
///     std::env::set_var("LISTEN_FDS", "1");
///     listenfd_core::remove_env();
/// }
/// assert!(std::env::var_os("LISTEN_FDS").is_none());
/// ```
pub unsafe fn remove_env() {
    for name in env::VARIABLES {
        // SAFETY: forwarded to our caller's contract: no concurrent environment access.
        unsafe { std::env::remove_var(name) };
    }
}

/// True when the process provably has a single thread (Linux `/proc/self/task`); false when
/// unknown.
pub(crate) fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|dir| dir.count() == 1)
}

/// The inode id of a pidfd for this process on pidfs (Linux >= 6.9), as systemd computes it
/// for `LISTEN_PIDFDID`; `None` when unsupported (then the id is not compared).
#[cfg(target_os = "linux")]
fn own_pidfd_id() -> Option<u64> {
    const PID_FS_MAGIC: i64 = 0x5049_4446;
    // SAFETY: pidfd_open(getpid(), 0) takes plain integers and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: the syscall just returned this fd to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: all-zero is a valid value for these plain C structs.
    let (mut sfs, mut st): (libc::statfs, libc::stat) = unsafe { std::mem::zeroed() };
    // SAFETY: `sfs` is a valid writable statfs buffer; `raw` is open for the whole call.
    let rc = unsafe { libc::fstatfs(raw, &mut sfs) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i32, u32 or i64 depending on the target"
    )]
    let f_type = sfs.f_type as i64;
    if rc < 0 || f_type != PID_FS_MAGIC {
        return None;
    }
    // SAFETY: `st` is a valid writable stat buffer; `raw` is open for the whole call.
    if unsafe { libc::fstat(raw, &mut st) } < 0 {
        return None;
    }
    Some(st.st_ino)
}

#[cfg(not(target_os = "linux"))]
fn own_pidfd_id() -> Option<u64> {
    None
}

/// Parse, check and set `FD_CLOEXEC`, then take ownership. Requires a successful [`claim`].
///
/// # Safety
///
/// The fds `vars` announces, when they are for this process, are open and owned by nothing
/// else, or not open (the contract of [`Options::from_vars`]).
unsafe fn receive(vars: &Vars<'_>, lenient: bool) -> Result<ListenFds, Error> {
    let pidfd_id = vars.listen_pidfdid.and_then(|_| own_pidfd_id());
    let parsed = match env::parse(vars, std::process::id(), pidfd_id, lenient) {
        Ok(parsed) => parsed,
        Err(EnvError::NameCountMismatch {
            names,
            fds,
            first_fd,
        }) => {
            // libsystemd sets FD_CLOEXEC (reporting EBADF first) before comparing the counts.
            let range = Parsed {
                first_fd,
                count: fds,
                names: None,
                not_for_us: None,
            };
            set_cloexec_all(&range)?;
            return Err(EnvError::NameCountMismatch {
                names,
                fds,
                first_fd,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    set_cloexec_all(&parsed)?;
    let count = parsed.len();
    let slots = parsed
        .fds()
        .enumerate()
        .map(|(index, fd)| Slot {
            fd,
            name: parsed.name(index).unwrap_or("unknown").to_owned(),
            // SAFETY: the fd is open (FD_CLOEXEC was just set on it) and nothing else owns it
            // (this function's contract); the process-wide CLAIMED flag makes this the only
            // owner this crate ever creates for it.
            owned: Some(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
        .collect();
    Ok(ListenFds {
        slots,
        count,
        env_unset: false,
        not_for_us: parsed.not_for_us,
    })
}

fn set_cloexec_all(parsed: &Parsed) -> Result<(), Error> {
    for fd in parsed.fds() {
        // SAFETY: F_GETFD/F_SETFD only read and change the close-on-exec flag of the fd.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EBADF) {
                return Err(Error::NotOpen {
                    fd,
                    first: parsed.first_fd,
                    count: parsed.len(),
                });
            }
            return Err(Error::Cloexec { fd, source });
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Slot {
    fd: RawFd,
    name: String,
    /// `None` once taken.
    owned: Option<OwnedFd>,
}

/// The fds passed to this process, owned once.
///
/// Take each one as the type you expect ([`ListenFds::tcp_listener`],
/// [`ListenFds::unix_listener`], ... or [`ListenFds::take_fd`]); every fd can be taken once,
/// and taking one leaves the others available. A failed take (wrong type, say) leaves the fd
/// where it was. Fds not taken are closed when the `ListenFds` is dropped.
///
/// Every passed fd has `FD_CLOEXEC` set as soon as it is received, so none leaks into
/// processes the daemon spawns.
///
/// ```
/// use listenfd_core::ListenFds;
/// let mut fds = ListenFds::from_env()?;
/// if fds.is_empty() {
///     println!("not socket-activated");
/// } else {
///     let listener = fds.tcp_listener(0)?;
///     println!("serving on {}", listener.local_addr()?);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct ListenFds {
    slots: Vec<Slot>,
    count: usize,
    env_unset: bool,
    not_for_us: Option<NotForUs>,
}

impl ListenFds {
    /// Receive the passed fds, strictly (libsystemd semantics), removing the variables when
    /// sound. Same as `Options::new().from_env()`; see [`Options`].
    ///
    /// ```
    /// let fds = listenfd_core::ListenFds::from_env()?;
    /// println!("{} fds passed", fds.len());
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn from_env() -> Result<ListenFds, Error> {
        Options::new().from_env()
    }

    /// Number of passed fds (taken ones included).
    ///
    /// ```
    /// assert_eq!(listenfd_core::ListenFds::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing was passed.
    ///
    /// ```
    /// assert!(listenfd_core::ListenFds::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Name of the fd at `index` (`"unknown"` when `LISTEN_FDNAMES` was absent).
    ///
    /// ```
    /// assert_eq!(listenfd_core::ListenFds::default().name(0), None);
    /// ```
    pub fn name(&self, index: usize) -> Option<&str> {
        self.slots.get(index).map(|s| s.name.as_str())
    }

    /// The fd number at `index` in this process (3 for the first one, normally).
    ///
    /// ```
    /// assert_eq!(listenfd_core::ListenFds::default().raw_fd(0), None);
    /// ```
    pub fn raw_fd(&self, index: usize) -> Option<RawFd> {
        self.slots.get(index).map(|s| s.fd)
    }

    /// Whether the fd at `index` was already taken.
    ///
    /// ```
    /// assert!(!listenfd_core::ListenFds::default().is_taken(0));
    /// ```
    pub fn is_taken(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(|s| s.owned.is_none())
    }

    /// Whether the `LISTEN_*` variables were removed from the environment (see [`Options`]).
    ///
    /// ```
    /// let fds = listenfd_core::Options::new().unset_env(false).from_env()?;
    /// assert!(!fds.env_unset());
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn env_unset(&self) -> bool {
        self.env_unset
    }

    /// Why nothing was received, when nothing was: worth logging before falling back to
    /// binding, since the usual cause (`LISTEN_PID` names a `cargo run` or shell wrapper
    /// parent) is otherwise silent.
    ///
    /// ```
    /// let fds = listenfd_core::ListenFds::from_env()?;
    /// if let Some(why) = fds.not_for_us() {
    ///     eprintln!("not socket-activated: {why}");
    /// }
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn not_for_us(&self) -> Option<NotForUs> {
        self.not_for_us
    }

    /// What a passed fd is, without taking it (family, type, listening, local address; or
    /// file, pipe, character device...).
    ///
    /// ```
    /// let fds = listenfd_core::ListenFds::from_env()?;
    /// for i in 0..fds.len() {
    ///     println!("{}", fds.inspect(i)?);
    /// }
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn inspect<'a>(&self, which: impl Into<Which<'a>>) -> Result<FdInfo, Error> {
        let index = self.resolve(which.into())?;
        let slot = &self.slots[index];
        let kind = self.kind_of(slot)?;
        Ok(FdInfo {
            fd: slot.fd,
            name: slot.name.clone(),
            kind,
        })
    }

    /// Take a passed fd as a raw [`OwnedFd`], whatever it is (socket, FIFO, file...).
    ///
    /// ```
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if !fds.is_empty() {
    ///     let fd: std::os::fd::OwnedFd = fds.take_fd(0)?;
    ///     # drop(fd);
    /// }
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn take_fd<'a>(&mut self, which: impl Into<Which<'a>>) -> Result<OwnedFd, Error> {
        self.take_as(which.into(), Expect::Any, |_| Ok(()))
    }

    /// Find the slot for `which`.
    fn resolve(&self, which: Which<'_>) -> Result<usize, Error> {
        let found = match which {
            Which::Index(i) => (i < self.slots.len()).then_some(i),
            Which::Name(name) => {
                let mut matching = (0..self.slots.len()).filter(|&i| self.slots[i].name == name);
                let first = matching.clone().next();
                matching.find(|&i| self.slots[i].owned.is_some()).or(first)
            }
        };
        found.ok_or_else(|| Error::NoSuchFd {
            which: which.to_string(),
            available: self.available(),
        })
    }

    fn available(&self) -> String {
        if self.slots.is_empty() {
            return "no fds were passed to this process".to_owned();
        }
        let names: Vec<String> = self.slots.iter().map(|s| format!("{:?}", s.name)).collect();
        format!(
            "{} fd(s) were passed, named {}",
            self.slots.len(),
            names.join(", ")
        )
    }

    fn kind_of(&self, slot: &Slot) -> Result<FdKind, Error> {
        if slot.owned.is_none() {
            return Err(Error::Taken {
                fd: slot.fd,
                name: slot.name.clone(),
            });
        }
        inspect::inspect_raw(slot.fd).map_err(|source| Error::Inspect {
            fd: slot.fd,
            source,
        })
    }

    /// Take `which` if it is what `expect` describes, after `prepare` succeeded on it. On any
    /// error the fd stays in place.
    pub(crate) fn take_as(
        &mut self,
        which: Which<'_>,
        expect: Expect,
        prepare: impl FnOnce(RawFd) -> Result<(), Error>,
    ) -> Result<OwnedFd, Error> {
        let index = self.resolve(which)?;
        let slot = &self.slots[index];
        let found = self.kind_of(slot)?;
        if !expect.matches(&found) {
            return Err(Error::WrongType {
                fd: slot.fd,
                name: slot.name.clone(),
                count: self.count,
                expected: expect.description(),
                found,
            });
        }
        prepare(slot.fd)?;
        Ok(self.slots[index]
            .owned
            .take()
            .expect("kind_of checked the slot is not taken"))
    }

    /// A `ListenFds` over fds the test created, without the process-wide claim.
    #[cfg(test)]
    pub(crate) fn from_owned(fds: Vec<(OwnedFd, &str)>) -> ListenFds {
        use std::os::fd::AsRawFd;
        let count = fds.len();
        let slots = fds
            .into_iter()
            .map(|(fd, name)| Slot {
                fd: fd.as_raw_fd(),
                name: name.to_owned(),
                owned: Some(fd),
            })
            .collect();
        ListenFds {
            slots,
            count,
            env_unset: false,
            not_for_us: None,
        }
    }
}

/// What a typed take asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    TcpListener,
    TcpStream,
    UdpSocket,
    UnixListener,
    UnixStream,
    UnixDatagram,
    Any,
}

/// What a typed take asks for, field by field (for the hints of [`Error::WrongType`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wants {
    /// An IP socket (`AF_INET` or `AF_INET6`), else a Unix one.
    pub(crate) ip: bool,
    pub(crate) socket_type: crate::inspect::SocketType,
    /// `Some(true)`: a listener, `Some(false)`: a connection, `None`: either (datagrams).
    pub(crate) listening: Option<bool>,
}

impl Expect {
    const TYPED: [Expect; 6] = [
        Expect::TcpListener,
        Expect::TcpStream,
        Expect::UdpSocket,
        Expect::UnixListener,
        Expect::UnixStream,
        Expect::UnixDatagram,
    ];

    /// The typed take whose [`description`](Expect::description) this is.
    pub(crate) fn from_description(description: &str) -> Option<Expect> {
        Expect::TYPED
            .into_iter()
            .find(|e| e.description() == description)
    }

    /// What the take asks for; `None` for [`Expect::Any`].
    pub(crate) fn wants(self) -> Option<Wants> {
        use crate::inspect::SocketType::{Dgram, Stream};
        let (ip, socket_type, listening) = match self {
            Expect::TcpListener => (true, Stream, Some(true)),
            Expect::TcpStream => (true, Stream, Some(false)),
            Expect::UdpSocket => (true, Dgram, None),
            Expect::UnixListener => (false, Stream, Some(true)),
            Expect::UnixStream => (false, Stream, Some(false)),
            Expect::UnixDatagram => (false, Dgram, None),
            Expect::Any => return None,
        };
        Some(Wants {
            ip,
            socket_type,
            listening,
        })
    }

    /// The `ListenFds` method that takes what `kind` is (`take_fd` when no typed one does).
    pub(crate) fn method_for(kind: &FdKind) -> &'static str {
        match Expect::TYPED.into_iter().find(|e| e.matches(kind)) {
            Some(Expect::TcpListener) => "tcp_listener",
            Some(Expect::TcpStream) => "tcp_stream",
            Some(Expect::UdpSocket) => "udp_socket",
            Some(Expect::UnixListener) => "unix_listener",
            Some(Expect::UnixStream) => "unix_stream",
            Some(Expect::UnixDatagram) => "unix_datagram",
            Some(Expect::Any) | None => "take_fd",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Expect::TcpListener => "a listening TCP socket",
            Expect::TcpStream => "a connected TCP socket",
            Expect::UdpSocket => "a UDP socket",
            Expect::UnixListener => "a listening Unix stream socket",
            Expect::UnixStream => "a connected Unix stream socket",
            Expect::UnixDatagram => "a Unix datagram socket",
            Expect::Any => "an open fd",
        }
    }

    fn matches(self, kind: &FdKind) -> bool {
        use crate::inspect::{Family, SocketType};
        let FdKind::Socket {
            family,
            socket_type,
            listening,
            ..
        } = kind
        else {
            return self == Expect::Any && *kind != FdKind::Closed;
        };
        let inet = matches!(family, Family::Inet | Family::Inet6);
        let unix = *family == Family::Unix;
        match self {
            Expect::TcpListener => inet && *socket_type == SocketType::Stream && *listening,
            Expect::TcpStream => inet && *socket_type == SocketType::Stream && !*listening,
            Expect::UdpSocket => inet && *socket_type == SocketType::Dgram,
            Expect::UnixListener => unix && *socket_type == SocketType::Stream && *listening,
            Expect::UnixStream => unix && *socket_type == SocketType::Stream && !*listening,
            Expect::UnixDatagram => unix && *socket_type == SocketType::Dgram,
            Expect::Any => true,
        }
    }
}
