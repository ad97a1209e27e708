//! [`Launched`]: the handle of a running daemon. Kills and reaps it when dropped.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::ready::{self, NotifySocket};
use crate::socket::CreatedPath;
use crate::spec::Address;

/// One socket as the daemon received it.
///
/// ```
/// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
/// let s = &server.sockets()[0];
/// assert_eq!((s.fd, s.kind, s.name.as_deref()), (3, "tcp", None));
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchedSocket {
    /// Its fd number in the daemon (3, 4, ...).
    pub fd: RawFd,
    /// Its name in `LISTEN_FDNAMES`, if any.
    pub name: Option<String>,
    /// `tcp`, `udp`, `unix-stream`, `unix-dgram`, `unix-seqpacket`, `socket` (another
    /// passed socket) or `fd` (a passed fd that is not a socket).
    pub kind: &'static str,
    /// Where it is bound: the real port for port 0, an absolute path for a Unix socket file.
    pub address: Option<Address>,
}

/// A running daemon started by [`Launch::spawn`](crate::Launch::spawn).
///
/// Dropping it kills the daemon with `SIGKILL` and reaps it (unless
/// [`kill_on_drop(false)`](crate::Launch::kill_on_drop) or [`detach`](Launched::detach)), and
/// removes the Unix socket files the launch created. This also happens when a test panics
/// while holding it. On Linux signals go through a pidfd, so a recycled pid is never hit.
///
/// ```
/// let mut server = sd_launch::Launch::new("sleep").arg("30").spawn()?;
/// assert!(server.try_wait()?.is_none());
/// let status = server.kill()?;
/// assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Launched {
    program: String,
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    sockets: Vec<LaunchedSocket>,
    created: Vec<CreatedPath>,
    status: Option<ExitStatus>,
    kill_on_drop: bool,
    /// Our copy of the daemon's stderr when it goes to a regular file, for error messages.
    stderr: Option<File>,
    /// The private `NOTIFY_SOCKET`, kept open while the daemon may still notify.
    notify: Option<NotifySocket>,
}

impl Launched {
    pub(crate) fn new(
        program: String,
        pid: libc::pid_t,
        sockets: Vec<LaunchedSocket>,
        created: Vec<CreatedPath>,
        kill_on_drop: bool,
    ) -> Launched {
        Launched {
            program,
            pid,
            pidfd: pidfd_open(pid),
            sockets,
            created,
            status: None,
            kill_on_drop,
            stderr: None,
            notify: None,
        }
    }

    pub(crate) fn with_stderr(mut self, stderr: Option<File>) -> Launched {
        self.stderr = stderr;
        self
    }

    pub(crate) fn with_notify(mut self, notify: Option<NotifySocket>) -> Launched {
        self.notify = notify;
        self
    }

    pub(crate) fn take_notify(&mut self) -> Option<NotifySocket> {
        self.notify.take()
    }

    /// The program as given to [`Launch::new`](crate::Launch::new).
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
    /// assert_eq!(server.program(), "sleep");
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The raw pidfd, for `poll` (readable once the daemon exits), if the kernel has them.
    pub(crate) fn pidfd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The last lines the daemon wrote to its stderr, when that is a regular file
    /// ([`Launch::stderr`](crate::Launch::stderr) with a `File`); `None` otherwise.
    ///
    /// ```
    /// let log = tempfile::tempfile()?;
    /// let mut server = sd_launch::Launch::new("sh")
    ///     .args(["-c", "echo starting >&2; echo no config found >&2; exit 1"])
    ///     .stderr(log)
    ///     .spawn()?;
    /// server.wait()?;
    /// assert_eq!(server.stderr_tail().as_deref(), Some("starting\nno config found"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stderr_tail(&self) -> Option<String> {
        self.stderr.as_ref().and_then(ready::tail)
    }

    /// `Ok` while the daemon runs; once it has exited, an [`Error::Exited`] with its status
    /// and [stderr tail](Launched::stderr_tail). Call it when a connection fails, to tell
    /// "the daemon died" from "the daemon misbehaves".
    ///
    /// ```
    /// let mut server = sd_launch::Launch::new("sh").args(["-c", "exit 3"]).spawn()?;
    /// server.wait()?;
    /// let err = server.ensure_running().unwrap_err();
    /// assert!(err.to_string().contains("exit status: 3"), "{err}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ensure_running(&mut self) -> Result<(), Error> {
        match self.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status, "")),
            Err(source) => Err(Error::Spawn {
                program: self.program.clone(),
                step: "checking the daemon (waitpid)",
                source,
            }),
        }
    }

    pub(crate) fn exited(&self, status: ExitStatus, when: &'static str) -> Error {
        Error::Exited {
            program: self.program.clone(),
            status,
            when,
            stderr: self.stderr_tail(),
        }
    }

    /// The daemon's pid (also its `LISTEN_PID`).
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
    /// assert!(server.pid() > 1);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The sockets passed, in fd order.
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5").listen_on("0").listen_on("0").spawn()?;
    /// assert_eq!(server.sockets().len(), 2);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn sockets(&self) -> &[LaunchedSocket] {
        &self.sockets
    }

    /// The IP address and port of socket `index` (0 is fd 3).
    ///
    /// # Panics
    /// If there is no such socket or it is not a TCP/UDP socket: a test's mistake, not a
    /// runtime condition. Use [`sockets`](Launched::sockets) to look without panicking.
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
    /// assert!(server.local_addr(0).ip().is_loopback());
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn local_addr(&self, index: usize) -> SocketAddr {
        inet_addr(&self.sockets, index)
    }

    /// Send `signal` (e.g. `libc::SIGTERM`) to the daemon.
    ///
    /// ```
    /// let mut server = sd_launch::Launch::new("sleep").arg("30").spawn()?;
    /// server.signal(libc::SIGTERM)?;
    /// let status = server.wait()?;
    /// assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.status.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the daemon has already exited and been reaped",
            ));
        }
        let r = match &self.pidfd {
            // SAFETY: pidfd_send_signal with a pidfd we own, no siginfo, no flags.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ) as libc::c_int
            },
            // SAFETY: kill on our own unreaped child: its pid cannot have been reused.
            None => unsafe { libc::kill(self.pid, signal) },
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Whether the daemon has exited, without blocking; reaps it if so.
    ///
    /// ```
    /// let mut server = sd_launch::Launch::new("sleep").arg("30").spawn()?;
    /// assert_eq!(server.try_wait()?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }

    /// Wait for the daemon to exit, and reap it.
    ///
    /// ```
    /// let mut server = sd_launch::Launch::new("true").spawn()?;
    /// assert!(server.wait()?.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.waitpid(0)? {
                return Ok(status);
            }
        }
    }

    /// Wait at most `timeout` for the daemon to exit.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut server = sd_launch::Launch::new("sleep").arg("30").spawn()?;
    /// assert_eq!(server.wait_timeout(Duration::from_millis(10))?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sleep_until_exit(left.min(Duration::from_millis(50)));
        }
    }

    /// Kill the daemon with `SIGKILL` and reap it.
    ///
    /// ```
    /// let mut server = sd_launch::Launch::new("sleep").arg("30").spawn()?;
    /// assert!(!server.kill()?.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        match self.signal(libc::SIGKILL) {
            Ok(()) => {}
            // Exited on its own but not reaped yet: wait collects it.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
        self.wait()
    }

    /// Stop the daemon gracefully: `SIGTERM`, then `SIGKILL` if it has not exited after
    /// `grace`. Returns its exit status.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut server = sd_launch::Launch::new("sleep").arg("30").spawn()?;
    /// let status = server.shutdown(Duration::from_secs(5))?;
    /// assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        match self.signal(libc::SIGTERM) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => self.kill(),
        }
    }

    /// Leave the daemon running and forget it: it is neither killed nor reaped by us, and
    /// its Unix socket files stay. Returns its pid. This is what `sd-launch` does without
    /// `--foreground`.
    ///
    /// ```
    /// let server = sd_launch::Launch::new("true").spawn()?;
    /// let pid = server.detach();
    /// assert!(pid > 1);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn detach(mut self) -> u32 {
        self.kill_on_drop = false;
        for created in std::mem::take(&mut self.created) {
            created.keep();
        }
        self.pid()
    }

    fn waitpid(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        // SAFETY: waitpid on our own child, writing into a local.
        let r = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
        match r {
            0 => Ok(None),
            r if r == self.pid => {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                self.pidfd = None;
                Ok(Some(status))
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Block until the daemon exits or `timeout` passes (a pidfd becomes readable when the
    /// process exits; without one, just sleep).
    fn sleep_until_exit(&self, timeout: Duration) {
        match &self.pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
                // SAFETY: poll on one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            None => std::thread::sleep(timeout.min(Duration::from_millis(5))),
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.kill_on_drop && self.status.is_none() {
            let _ = self.kill();
        }
        // `created` drops after this: socket files are removed once the daemon is gone.
    }
}

/// The IP address of `sockets[index]`; panics (a test's mistake) when there is none.
pub(crate) fn inet_addr(sockets: &[LaunchedSocket], index: usize) -> SocketAddr {
    match sockets.get(index).and_then(|s| s.address.as_ref()) {
        Some(Address::Inet(a)) => *a,
        other => panic!(
            "socket {index} of {} has no IP address (it is {other:?})",
            sockets.len()
        ),
    }
}

/// Linux: a pidfd for our child, so signals cannot hit a recycled pid. `None` where the
/// kernel has no pidfd_open (before 5.3) or on other systems.
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: the syscall returned a new fd that nobody else owns (pidfds are
            // close-on-exec).
            return Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
    }
    let _ = pid;
    None
}
