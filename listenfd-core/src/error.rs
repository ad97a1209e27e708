//! The one error type of this crate. Messages say what was found, what was expected, and the
//! likely cause; [`Error::errno`] tells which libsystemd error the same situation gives.

use std::io;
use std::os::fd::RawFd;

use crate::env::EnvError;
use crate::inspect::FdKind;

/// The hint for the most common failure of socket activation.
const INHERITED_HINT: &str = "the variables were probably inherited by a process that did not \
    inherit the sockets (a shell wrapper or `cargo run` in between?); start the daemon directly \
    from the launcher, or use a launcher that sets LISTEN_PID for the final process";

/// Everything that can go wrong when receiving passed fds.
///
/// A daemon prints it on one line and exits non-zero:
///
/// ```
/// use listenfd_core::{Error, ListenFds};
/// let mut fds = ListenFds::default(); // nothing passed
/// let err = fds.tcp_listener("http").unwrap_err();
/// assert!(matches!(err, Error::NoSuchFd { .. }));
/// assert_eq!(err.to_string(), r#"no passed fd named "http": no fds were passed to this process"#);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `LISTEN_*` variables are malformed.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// An announced fd is not open (libsystemd: `-EBADF`).
    #[error(
        "LISTEN_FDS={count} announces fds {first}..={last}, but fd {fd} is not open: {INHERITED_HINT}",
        last = first + *count as RawFd - 1
    )]
    NotOpen {
        /// The closed fd.
        fd: RawFd,
        /// First announced fd.
        first: RawFd,
        /// Announced count.
        count: usize,
    },
    /// Setting `FD_CLOEXEC` failed for another reason than a closed fd.
    #[error("cannot set FD_CLOEXEC on passed fd {fd}: {source}")]
    Cloexec {
        /// The fd.
        fd: RawFd,
        /// The OS error.
        source: io::Error,
    },
    /// `from_env` was already called in this process: the fds have an owner.
    #[error(
        "the passed fds were already claimed by an earlier ListenFds::from_env() in this process: \
         keep that ListenFds and pass it around instead of calling from_env() again"
    )]
    AlreadyTaken,
    /// No passed fd has this index or name.
    #[error("no passed fd {which}: {available}")]
    NoSuchFd {
        /// `index 2` or `named "http"`.
        which: String,
        /// What is available, e.g. `2 fds were passed, named "a", "b"`.
        available: String,
    },
    /// This fd was already taken out of the `ListenFds`.
    #[error("passed fd {fd} ({name:?}) was already taken from this ListenFds")]
    Taken {
        /// The fd.
        fd: RawFd,
        /// Its name.
        name: String,
    },
    /// The fd is not what was asked for. The fd stays in the `ListenFds`, untouched.
    #[error("{}", wrong_type_message(*fd, name, *count, expected, found))]
    WrongType {
        /// The fd.
        fd: RawFd,
        /// Its name.
        name: String,
        /// How many fds were passed.
        count: usize,
        /// What was asked for, e.g. "a listening TCP socket".
        expected: &'static str,
        /// What it is.
        found: FdKind,
    },
    /// Querying what the fd is failed.
    #[error("cannot inspect passed fd {fd}: {source}")]
    Inspect {
        /// The fd.
        fd: RawFd,
        /// The OS error.
        source: io::Error,
    },
    /// Switching the fd to non-blocking mode failed (tokio conversions).
    #[error("cannot make passed fd {fd} non-blocking: {source}")]
    NonBlocking {
        /// The fd.
        fd: RawFd,
        /// The OS error.
        source: io::Error,
    },
    /// Registering the fd with the tokio runtime failed (the fd was consumed by tokio).
    #[error("cannot register passed fd {fd} with the tokio runtime: {source}")]
    Register {
        /// The fd.
        fd: RawFd,
        /// The OS error.
        source: io::Error,
    },
    /// A tokio conversion was called outside a tokio runtime.
    #[error(
        "tokio conversion of fd {fd} needs a running tokio runtime: call it inside #[tokio::main] \
         or Runtime::block_on"
    )]
    NoRuntime {
        /// The fd (still in the `ListenFds`).
        fd: RawFd,
    },
    /// The fallback bind failed.
    #[error("no socket was passed (LISTEN_FDS unset) and binding {addr} failed: {source}")]
    Bind {
        /// The address given to the fallback.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
}

fn wrong_type_message(
    fd: RawFd,
    name: &str,
    count: usize,
    expected: &str,
    found: &FdKind,
) -> String {
    if !found.is_socket() {
        return format!(
            "LISTEN_FDS={count} but fd {fd} ({name:?}) is {found}, not {expected}: {INHERITED_HINT}"
        );
    }
    let hint = match found {
        FdKind::Socket {
            listening: false, ..
        } if expected.contains("listening") => {
            "the launcher passed an accepted connection (inetd style, systemd Accept=yes): take it \
             as a stream, or configure the launcher to pass the listening socket"
        }
        FdKind::Socket {
            listening: true, ..
        } if expected.contains("connected") => {
            "the launcher passed a listening socket: take it as a listener and accept() on it"
        }
        _ => {
            "check the launcher's socket options (systemd: ListenStream=, ListenDatagram=, \
             ListenSequentialPacket=; sd-launch: -l/-d) or take the fd as another type"
        }
    };
    format!("fd {fd} ({name:?}) is {found}, not {expected}: {hint}")
}

impl Error {
    /// The errno libsystemd's `sd_listen_fds_with_names()` returns (negated) in the same
    /// situation, for errors of the protocol itself: `EINVAL`, `ERANGE`, `EBADF` (or the OS
    /// error of a failed `FD_CLOEXEC`). `None` for errors of this crate's API (wrong type,
    /// already taken, ...), which libsystemd leaves to the caller.
    ///
    /// ```
    /// use listenfd_core::{env, Error};
    /// let bad = env::parse(&env::Vars { listen_pid: Some("x"), ..Default::default() }, 1, None, false);
    /// let err = Error::from(bad.unwrap_err());
    /// assert_eq!(err.errno(), Some(libc::EINVAL));
    /// assert_eq!(Error::AlreadyTaken.errno(), None);
    /// ```
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Env(e) => Some(e.errno()),
            Error::NotOpen { .. } => Some(libc::EBADF),
            Error::Cloexec { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
