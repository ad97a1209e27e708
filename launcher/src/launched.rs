//! [`Launched`]: the handle of a running daemon (its process, sockets, socket files,
//! output and notify socket). Stops it when dropped.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::process::Child;
use crate::sockets::{Address, CreatedPath, LaunchedSocket};
use crate::supervisor::Signals;
use crate::supervisor::notify::NotifySocket;
use crate::supervisor::ready::{NotReady, wait_ready as wait_for_ready};

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
    child: Child,
    sockets: Vec<LaunchedSocket>,
    created: Vec<CreatedPath>,
    kill_on_drop: bool,
    /// Our copy of the daemon's stderr when it goes to a regular file, for error messages.
    stderr: Option<File>,
    /// The private `NOTIFY_SOCKET`, until the daemon is ready.
    notify: Option<NotifySocket>,
    /// How long to wait for `READY=1`, and the signals that interrupt the wait.
    ready: Option<(Duration, Option<Signals>)>,
}

impl Launched {
    pub(crate) fn new(
        program: String,
        child: Child,
        sockets: Vec<LaunchedSocket>,
        created: Vec<CreatedPath>,
        kill_on_drop: bool,
    ) -> Launched {
        Launched {
            program,
            child,
            sockets,
            created,
            kill_on_drop,
            stderr: None,
            notify: None,
            ready: None,
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

    pub(crate) fn with_ready(
        mut self,
        ready: Option<Duration>,
        signals: Option<Signals>,
    ) -> Launched {
        self.ready = ready.map(|timeout| (timeout, signals));
        self
    }

    /// With [`Launch::ready`](crate::Launch::ready), wait for `READY=1`. The notify socket
    /// is closed once the daemon is ready: a daemon that goes on notifying (`STATUS=`,
    /// `WATCHDOG=1`) gets an error at once from `sd_notify` (which daemons ignore) and never
    /// blocks on a queue nobody reads.
    pub(crate) fn wait_ready(mut self) -> Result<Launched, Error> {
        let (Some((timeout, signals)), Some(notify)) = (self.ready.take(), self.notify.take())
        else {
            return Ok(self);
        };
        wait_ready(&mut self, &notify, timeout, signals.as_ref())?;
        Ok(self)
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

    pub(crate) fn child(&self) -> &Child {
        &self.child
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
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
        self.stderr.as_ref().and_then(tail)
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
            Err(source) => Err(Error::Os {
                context: "check the daemon (waitpid)",
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
        self.child.pid()
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
        self.child.signal(signal)
    }

    /// Whether the daemon has exited, without blocking; reaps it if so.
    ///
    /// ```
    /// let mut server = sd_launch::Launch::new("sleep").arg("30").spawn()?;
    /// assert_eq!(server.try_wait()?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Wait for the daemon to exit, and reap it.
    ///
    /// ```
    /// let mut server = sd_launch::Launch::new("true").spawn()?;
    /// assert!(server.wait()?.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
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
        self.child.wait_deadline(Some(Instant::now() + timeout))
    }

    /// Kill the daemon with `SIGKILL` and reap it.
    ///
    /// ```
    /// let mut server = sd_launch::Launch::new("sleep").arg("30").spawn()?;
    /// assert!(!server.kill()?.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        self.child.kill()
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
        crate::process::stop_all([&mut self.child], libc::SIGTERM, grace);
        self.child.wait()
    }

    /// Supervise the daemon in the foreground, as `sd-launch --foreground` does: forward
    /// every signal of `signals` (blocked before the daemon was spawned) to it until it
    /// exits, and return its exit status. A daemon that has not exited `stop_timeout` after a
    /// forwarded SIGTERM, SIGINT or SIGQUIT gets SIGKILL (systemd's `TimeoutStopSec=`). At
    /// the end every process left in the daemon's process group is killed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sd_launch::supervisor::{self, Signals};
    /// let signals = Signals::block()?;
    /// let mut daemon = sd_launch::Launch::new("sh").args(["-c", "exit 3"]).spawn()?;
    /// let status = daemon.supervise(&signals, Duration::from_secs(1))?;
    /// assert_eq!(supervisor::exit_code(status), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn supervise(
        &mut self,
        signals: &Signals,
        stop_timeout: Duration,
    ) -> Result<ExitStatus, Error> {
        crate::supervisor::foreground::foreground(
            signals,
            &mut self.child,
            &self.program,
            stop_timeout,
        )
    }

    /// Leave the daemon running and forget it: it is neither killed nor reaped by us, not
    /// even when this process ends ([`Launch::kill_on_exit`](crate::Launch::kill_on_exit)),
    /// and its Unix socket files stay. Returns its pid. This is what `sd-launch` does without
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
        self.child.unguard(); // nor killed when this process ends
        for created in std::mem::take(&mut self.created) {
            created.keep();
        }
        self.pid()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.kill_on_drop {
            let _ = self.child.kill(); // its process group too, even when it exited by itself
        }
        // `created` drops after this: socket files are removed once the daemon is gone.
    }
}

/// Wait until `daemon` sends `READY=1` on `notify` within `timeout`; on failure the daemon is
/// killed and reaped, and the error says why (its exit with status and stderr tail, the
/// timeout, or a stop signal).
pub(crate) fn wait_ready(
    daemon: &mut Launched,
    notify: &NotifySocket,
    timeout: Duration,
    signals: Option<&Signals>,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let outcome = wait_for_ready(signals, notify, daemon.child_mut(), deadline);
    let Err(why) = outcome else { return Ok(()) };
    let _ = daemon.kill();
    let program = daemon.program().to_owned();
    Err(match why {
        NotReady::Exited(status) => daemon.exited(status, "before it was ready (READY=1)"),
        NotReady::Timeout => Error::ReadyTimeout { program, timeout },
        NotReady::Interrupted(signal) => Error::Interrupted { program, signal },
        NotReady::Failed(e) => e,
    })
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

/// The last lines of a regular file (the daemon's stderr, when it goes to a file): at most
/// 2 KiB, lossy UTF-8, trimmed to whole lines.
pub(crate) fn tail(file: &File) -> Option<String> {
    const MAX: u64 = 2048;
    let mut file = file;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(MAX);
    let mut bytes = Vec::with_capacity((len - start) as usize);
    // A shared offset (O_APPEND file) is fine to move: appends ignore it.
    file.seek(SeekFrom::Start(start)).ok()?;
    file.take(MAX).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let text = if start > 0 {
        text.split_once('\n').map_or(&*text, |(_, rest)| rest)
    } else {
        &text
    };
    let text = text.trim_end();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_whole_last_lines() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        assert_eq!(tail(&f), None);
        for i in 0..1000 {
            writeln!(f, "line {i}").unwrap();
        }
        let t = tail(&f).unwrap();
        assert!(t.ends_with("line 999"), "{t}");
        assert!(t.starts_with("line "), "{t}");
        assert!(t.len() <= 2048);
    }
}
