//! Readiness notification: an `sd_notify()`-compatible sender.
//!
//! A supervisor (systemd with `Type=notify`, `sd-launch --ready`, `systemd-notify --fork`)
//! sets `NOTIFY_SOCKET` to a Unix datagram socket, a path (`/run/...`) or an abstract name
//! (`@...`). The daemon sends newline-separated `KEY=VALUE` lines there in one datagram:
//! `READY=1` once it serves, `STOPPING=1` when it drains, and so on. Without `NOTIFY_SOCKET`
//! every call is a no-op, so a daemon can notify unconditionally.
//!
//! ```
//! use listenfd_core::notify::{Notifier, State};
//! // At the top of main, next to ListenFds::from_env():
//! let notifier = Notifier::from_env()?; // None: nobody listens, sending is a no-op
//! // ... once the listeners are set up:
//! Notifier::send_opt(notifier.as_ref(), &[State::Ready, State::Status("serving")])?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Like the `LISTEN_*` variables, `NOTIFY_SOCKET` is removed from the environment by
//! [`Notifier::from_env`] when that is sound (a single-threaded process), so the daemon's own
//! children do not notify in its name; see [`crate::Options`] for the Rust 2024 story.
//! Differences from libsystemd: no fd passing (`FDSTORE=1`) and no `vsock:` addresses.

use std::ffi::OsStr;
use std::fmt;
use std::io;
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The environment variable naming the notification socket.
///
/// ```
/// assert_eq!(listenfd_core::notify::NOTIFY_SOCKET, "NOTIFY_SOCKET");
/// ```
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// One line of a notification.
///
/// ```
/// use listenfd_core::notify::State;
/// assert_eq!(State::Ready.to_string(), "READY=1");
/// assert_eq!(State::MainPid(42).to_string(), "MAINPID=42");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State<'a> {
    /// `READY=1`: start-up is finished, the daemon serves.
    Ready,
    /// `STOPPING=1`: the daemon is shutting down.
    Stopping,
    /// `RELOADING=1`: the daemon is reloading its configuration.
    Reloading,
    /// `STATUS=...`: a one-line human-readable status.
    Status(&'a str),
    /// `MAINPID=N`: the main process is another one.
    MainPid(u32),
    /// `WATCHDOG=1`: keep-alive ping.
    Watchdog,
    /// `EXTEND_TIMEOUT_USEC=N`: ask for more time for the current phase.
    ExtendTimeout(Duration),
    /// Any other `KEY=VALUE` line, sent as is.
    Custom(&'a str),
}

impl fmt::Display for State<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Ready => f.write_str("READY=1"),
            State::Stopping => f.write_str("STOPPING=1"),
            State::Reloading => f.write_str("RELOADING=1"),
            State::Status(s) => write!(f, "STATUS={s}"),
            State::MainPid(p) => write!(f, "MAINPID={p}"),
            State::Watchdog => f.write_str("WATCHDOG=1"),
            State::ExtendTimeout(d) => write!(f, "EXTEND_TIMEOUT_USEC={}", d.as_micros()),
            State::Custom(s) => f.write_str(s),
        }
    }
}

/// A connection-less sender to one notification socket.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("notify");
/// let supervisor = std::os::unix::net::UnixDatagram::bind(&path)?;
/// let notifier = listenfd_core::notify::Notifier::new(path.as_os_str())?;
/// notifier.send(&[listenfd_core::notify::State::Ready])?;
/// let mut buf = [0; 64];
/// let n = supervisor.recv(&mut buf)?;
/// assert_eq!(&buf[..n], b"READY=1");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, or `None` when it is unset. Removes the variable when
    /// the process is single-threaded (see the module docs); an invalid value is an error.
    ///
    /// ```
    /// assert!(listenfd_core::notify::Notifier::from_env()?.is_none());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(value) = std::env::var_os(NOTIFY_SOCKET) else {
            return Ok(None);
        };
        if crate::fds::single_threaded() {
            // SAFETY: this process has exactly one thread (checked just above), so nothing
            // can read or write the environment concurrently.
            unsafe { std::env::remove_var(NOTIFY_SOCKET) };
        }
        Notifier::new(&value).map(Some)
    }

    /// A notifier for the socket `address`: a path starting with `/`, or `@name` for an
    /// abstract socket.
    ///
    /// ```
    /// let err = listenfd_core::notify::Notifier::new("relative".as_ref()).unwrap_err();
    /// assert!(err.to_string().contains("NOTIFY_SOCKET"));
    /// ```
    pub fn new(address: &OsStr) -> io::Result<Notifier> {
        let bytes = address.as_bytes();
        let address = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(address)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "NOTIFY_SOCKET={:?} is neither a path (/...) nor an abstract name (@...)",
                        address
                    ),
                ));
            }
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            address,
        })
    }

    /// Send `states` as one datagram.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("n");
    /// # let supervisor = std::os::unix::net::UnixDatagram::bind(&path)?;
    /// use listenfd_core::notify::{Notifier, State};
    /// Notifier::new(path.as_os_str())?.send(&[State::Stopping, State::Status("draining")])?;
    /// # let mut buf = [0; 64];
    /// # let n = supervisor.recv(&mut buf)?;
    /// # assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send(&self, states: &[State<'_>]) -> io::Result<()> {
        let message = states
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        if message.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty notification says nothing",
            ));
        }
        self.socket
            .send_to_addr(message.as_bytes(), &self.address)?;
        Ok(())
    }

    /// Send through `notifier` if there is one: a no-op for `None`, so callers need no
    /// branch of their own.
    ///
    /// ```
    /// use listenfd_core::notify::{Notifier, State};
    /// Notifier::send_opt(None, &[State::Ready])?; // nobody listens: nothing happens
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send_opt(notifier: Option<&Notifier>, states: &[State<'_>]) -> io::Result<()> {
        notifier.map_or(Ok(()), |n| n.send(states))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn abstract_addresses_work() {
        let name = format!("listenfd-core-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let supervisor = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        n.send(&[
            State::Ready,
            State::MainPid(7),
            State::ExtendTimeout(Duration::from_secs(2)),
        ])
        .unwrap();
        let mut buf = [0; 128];
        let len = supervisor.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..len]).unwrap(),
            "READY=1\nMAINPID=7\nEXTEND_TIMEOUT_USEC=2000000"
        );
    }

    #[test]
    fn nobody_listening_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::new(dir.path().join("gone").as_os_str()).unwrap();
        let err = n.send(&[State::Ready]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn empty_notifications_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::new(dir.path().join("x").as_os_str()).unwrap();
        assert_eq!(n.send(&[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
