//! The one error type of the launcher, and the exit code the `sd-launch` binary maps each to.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while preparing sockets or starting the daemon.
///
/// Every message names what was wrong and what to do; [`Error::exit_code`] is the exit status
/// `sd-launch` uses for it.
///
/// ```
/// use sd_launch::{Error, SocketSpec};
/// let err = "nope:nope".parse::<SocketSpec>().unwrap_err();
/// assert!(matches!(err, Error::Address { .. }));
/// assert_eq!(err.exit_code(), 2);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listen address could not be parsed or resolved.
    #[error("invalid listen address {input:?}: {reason}")]
    Address {
        /// What was given.
        input: String,
        /// Why it is not an address.
        reason: String,
    },
    /// A file descriptor name breaks systemd's `FileDescriptorName=` rules.
    #[error("invalid fd name {name:?}: {reason}")]
    FdName {
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The number of names does not match the number of sockets.
    #[error(
        "{names} fd name(s) for {sockets} socket(s): give exactly one name per socket, in order"
    )]
    NameCount {
        /// Names given.
        names: usize,
        /// Sockets to pass.
        sockets: usize,
    },
    /// An argument or environment entry contains a NUL byte and cannot reach `execve`.
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul {
        /// Which argument or variable.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// An environment variable name is empty or contains `=`, so it cannot be passed.
    #[error(
        "invalid environment variable name {name:?}: a name must be non-empty and contain no '='"
    )]
    EnvName {
        /// The name as given.
        name: String,
    },
    /// Creating, binding or listening on a socket failed.
    #[error("cannot {action} {address}: {source}{hint}")]
    Socket {
        /// `bind`, `listen`, ...
        action: &'static str,
        /// The address, as given or resolved.
        address: String,
        /// The OS error.
        source: io::Error,
        /// Advice for common errors (address in use, privileged port).
        hint: &'static str,
    },
    /// A Unix socket path exists and is not a stale socket: it is never deleted.
    #[error("{path}: {what}; refusing to replace it (remove it yourself or choose another path)")]
    PathInUse {
        /// The path.
        path: PathBuf,
        /// What is there.
        what: &'static str,
    },
    /// The directory a Unix socket file is to be created in is missing, or is not a
    /// directory; it is named as given.
    ///
    /// ```
    /// let err = sd_launch::Launch::new("true").listen_on("/no/such/dir/x.sock").spawn().unwrap_err();
    /// assert!(matches!(err, sd_launch::Error::NoDirectory { .. }));
    /// assert!(err.to_string().contains("/no/such/dir does not exist"));
    /// assert_eq!(err.exit_code(), 3);
    /// ```
    #[error("cannot create the socket {path}: {directory} {what}")]
    NoDirectory {
        /// The socket path, as given.
        path: PathBuf,
        /// Its directory, as given.
        directory: PathBuf,
        /// What is wrong with it and what to do.
        what: &'static str,
    },
    /// The program was not found (exit code 127, as in a shell).
    #[error("{program}: command not found{where_}")]
    NotFound {
        /// The program as given.
        program: String,
        /// Where it was looked for.
        where_: String,
    },
    /// The program exists but cannot be executed (exit code 126, as in a shell).
    #[error("{program}: cannot execute: {source}")]
    NotExecutable {
        /// The program as given.
        program: String,
        /// The errno from `execve`.
        source: io::Error,
    },
    /// An OS call of the launcher itself failed (creating the notification socket, blocking
    /// signals, waiting for the daemon, ...), with what it was doing.
    #[error("cannot {context}: {source}")]
    Os {
        /// What the launcher was doing, e.g. "create the notification socket".
        context: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The caller's code that runs while the daemon is held before `execve`
    /// ([`Launch::spawn_with`](crate::Launch::spawn_with)) failed: the daemon never ran.
    #[error("{program} was not started: {source}")]
    BeforeExec {
        /// The program as given.
        program: String,
        /// The caller's error (for `sd-launch`, writing its output).
        source: io::Error,
    },
    /// Starting the child failed before `execve` (fork, dup2, chdir in the child, ...).
    #[error("cannot start {program}: {step} failed: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// Which step failed.
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The daemon exited when it should be running (before `READY=1`, say). Its stderr tail
    /// is included when stderr goes to a regular file.
    #[error("{program} exited{} ({status}){}", spaced(.when), tail_text(.stderr))]
    Exited {
        /// The program as given.
        program: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// When, e.g. "before it was ready (READY=1)"; may be empty.
        when: &'static str,
        /// The last lines of its stderr, if known.
        stderr: Option<String>,
    },
    /// The daemon was not ready in time (it is stopped).
    #[error(
        "{program} did not {what} within {timeout:?} ({}){}",
        ready_hint(.what),
        tail_text(.stderr)
    )]
    ReadyTimeout {
        /// The program as given.
        program: String,
        /// What it did not do, e.g. "send READY=1".
        what: String,
        /// How long we waited.
        timeout: std::time::Duration,
        /// The last lines of its stderr, if known.
        stderr: Option<String>,
    },
    /// A stop signal (SIGTERM, SIGINT, SIGQUIT) came while we waited for the daemon to be
    /// ready; the daemon was stopped (exit code 128 + the signal, as a shell reports it).
    #[error("interrupted by signal {signal} while waiting for {program} to be ready; stopped it")]
    Interrupted {
        /// The program as given.
        program: String,
        /// The signal.
        signal: i32,
    },
    /// A readiness strategy or log pattern could not be parsed.
    #[error("invalid readiness check {pattern:?}: {reason}")]
    Pattern {
        /// What was given.
        pattern: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A test asked for a socket the daemon does not have, or of another kind.
    #[error("{which} has no {wanted}: {found}")]
    NoSuchSocket {
        /// The socket asked for, e.g. `socket "http"`.
        which: String,
        /// What was asked of it.
        wanted: &'static str,
        /// What there is instead.
        found: String,
    },
    /// A binary of the Cargo workspace is not built (or not where tests find it).
    #[error(
        "{name} is not built (looked for {looked}): build it first, e.g. `cargo build --bin {name}` \
         (`cargo test` builds the binaries of the package under test, not of other packages)"
    )]
    NotBuilt {
        /// The binary's name.
        name: String,
        /// Where it was looked for.
        looked: PathBuf,
    },
    /// Options that cannot be combined.
    #[error("{0}")]
    Conflict(&'static str),
    /// Opening a file for the daemon's output or input failed.
    #[error("cannot open {path} for the daemon's {stream}: {source}")]
    Stdio {
        /// The file.
        path: PathBuf,
        /// `stdin`, `stdout` or `stderr`.
        stream: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A template (`${NAME.addr}`, ...) in a daemon's command or environment is wrong.
    #[error("{key}: {reason}")]
    Template {
        /// Where it is: `command[1]`, `env.API_URL`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn spaced(when: &str) -> String {
    if when.is_empty() {
        String::new()
    } else {
        format!(" {when}")
    }
}

fn ready_hint(what: &str) -> &'static str {
    if what.contains("READY=1") {
        "does it support sd_notify? raise the timeout, choose another --ready-when, or drop --ready"
    } else {
        "raise the timeout, or choose another --ready-when"
    }
}

fn tail_text(stderr: &Option<String>) -> String {
    match stderr {
        Some(tail) => format!(
            "; its stderr ended with:\n  | {}",
            tail.replace('\n', "\n  | ")
        ),
        None => String::new(),
    }
}

impl Error {
    /// The exit status `sd-launch` exits with for this error:
    ///
    /// | code | meaning |
    /// | --- | --- |
    /// | 2 | invalid command line: address, fd name, name count, NUL byte, environment name, conflicting options |
    /// | 3 | a socket could not be created, bound or listened on, or its path is taken |
    /// | 4 | the daemon could not be started or supervised (fork, chdir, stdio files, an OS call, the output could not be written) |
    /// | 5 | the daemon exited before it was ready (`--ready`) |
    /// | 6 | the daemon did not become ready in time (`--ready=TIMEOUT`) |
    /// | 126 | the program is not executable |
    /// | 127 | the program was not found |
    /// | 128+N | signal N stopped sd-launch while it waited for the daemon to be ready |
    ///
    /// ```
    /// let err = sd_launch::Error::NameCount { names: 1, sockets: 2 };
    /// assert_eq!(err.exit_code(), 2);
    /// ```
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Address { .. }
            | Error::FdName { .. }
            | Error::NameCount { .. }
            | Error::Nul { .. }
            | Error::EnvName { .. }
            | Error::NoSuchSocket { .. }
            | Error::Pattern { .. }
            | Error::Conflict(_)
            | Error::Template { .. } => 2,
            Error::Socket { .. } | Error::PathInUse { .. } | Error::NoDirectory { .. } => 3,
            Error::Spawn { .. }
            | Error::Os { .. }
            | Error::Stdio { .. }
            | Error::BeforeExec { .. } => 4,
            Error::Exited { .. } => 5,
            Error::ReadyTimeout { .. } => 6,
            Error::NotExecutable { .. } => 126,
            Error::NotFound { .. } | Error::NotBuilt { .. } => 127,
            Error::Interrupted { signal, .. } => 128 + signal,
        }
    }
}
