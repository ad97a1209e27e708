//! The one error type of this crate. Messages say what was found, what was expected, and the
//! likely cause; [`Error::errno`] tells which libsystemd error the same situation gives.

use std::io;
use std::os::fd::RawFd;

use crate::env::EnvError;
use crate::fds::Expect;
use crate::inspect::{Family, FdKind, SocketType};

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
    let hint = socket_hint(Expect::from_description(expected), found);
    format!("fd {fd} ({name:?}) is {found}, not {expected}: {hint}")
}

/// Why a socket is not what was asked for, and what to do, for the first difference in this
/// order: socket type (stream, datagram, sequential-packet), family (IP or Unix), listening or
/// connected. Each hint names what was really found, how launchers are told to pass what was
/// asked for, and the method that takes the socket as it is.
fn socket_hint(expect: Option<Expect>, found: &FdKind) -> String {
    let method = Expect::method_for(found);
    let as_it_is = if method == "take_fd" {
        "or take it as a raw fd with `take_fd`".to_owned()
    } else {
        format!("or take it as what it is with `{method}` (tokio: `tokio_{method}`)")
    };
    let generic = || {
        format!(
            "check the launcher's socket options (systemd: ListenStream=, ListenDatagram=, \
             ListenSequentialPacket=; sd-launch: -l, --datagram, --seqpacket), {as_it_is}"
        )
    };
    let (
        Some(wants),
        FdKind::Socket {
            family,
            socket_type,
            listening,
            ..
        },
    ) = (expect.and_then(Expect::wants), found)
    else {
        return generic();
    };
    let ip = matches!(family, Family::Inet | Family::Inet6);
    match (*socket_type, wants.socket_type) {
        (SocketType::Dgram, SocketType::Stream) => format!(
            "a datagram socket{} has no connections: the launcher is set up for datagram \
             sockets (sd-launch --datagram, systemd ListenDatagram=); pass a stream socket \
             instead (drop --datagram; systemd ListenStream=), {as_it_is}",
            if ip { " (UDP)" } else { "" }
        ),
        (SocketType::SeqPacket, SocketType::Stream) => format!(
            "the launcher is set up for sequential-packet sockets (sd-launch --seqpacket, \
             systemd ListenSequentialPacket=); pass a stream socket instead (drop --seqpacket; \
             systemd ListenStream=), {as_it_is}"
        ),
        (SocketType::Stream, SocketType::Dgram) => format!(
            "the launcher is set up for stream sockets (sd-launch without --datagram, systemd \
             ListenStream=); pass a datagram socket instead (sd-launch --datagram, systemd \
             ListenDatagram=), {as_it_is}"
        ),
        (SocketType::SeqPacket, SocketType::Dgram) => format!(
            "the launcher is set up for sequential-packet sockets (sd-launch --seqpacket, \
             systemd ListenSequentialPacket=); pass a datagram socket instead (sd-launch \
             --datagram, systemd ListenDatagram=), {as_it_is}"
        ),
        (found_type, wanted_type) if found_type != wanted_type => generic(),
        _ if *family == Family::Unix && wants.ip => format!(
            "it is a Unix socket, not an IP one (sd-launch -l ./path or -l @name, systemd \
             {directive}/path): pass an IP address and port instead (sd-launch -l \
             127.0.0.1:0, systemd {directive}127.0.0.1:8080), {as_it_is}",
            directive = directive(*socket_type)
        ),
        _ if ip && !wants.ip => format!(
            "it is an IP socket, not a Unix one: pass a Unix socket path instead (sd-launch -l \
             ./app.sock, systemd {directive}/run/app.sock), {as_it_is}",
            directive = directive(*socket_type)
        ),
        _ if !ip && *family != Family::Unix => generic(),
        _ if !*listening && wants.listening == Some(true) => format!(
            "the launcher passed an accepted connection (inetd style: systemd Accept=yes, \
             sd-launch --accept): take it as a stream with `{method}`, or configure the \
             launcher to pass the listening socket"
        ),
        _ if *listening && wants.listening == Some(false) => format!(
            "the launcher passed a listening socket: take it as a listener with `{method}` \
             and accept() on it"
        ),
        _ => generic(),
    }
}

/// The systemd `.socket` directive for sockets of this type.
fn directive(socket_type: SocketType) -> &'static str {
    match socket_type {
        SocketType::Dgram => "ListenDatagram=",
        SocketType::SeqPacket => "ListenSequentialPacket=",
        _ => "ListenStream=",
    }
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
