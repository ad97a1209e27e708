//! [`Launched`]: the handle of a running daemon (its process, sockets, socket files,
//! output and notify socket). Stops it when dropped.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::capture::{Capture, Which, last_lines};
use crate::error::Error;
use crate::process::Child;
use crate::sockets::{Address, CreatedPath, LaunchedSocket, SocketRef};
use crate::supervisor::Signals;
use crate::supervisor::Wait;
use crate::supervisor::notify::NotifySocket;
use crate::supervisor::ready::{NotReady, Probes};

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
    /// How to wait until the daemon is ready, until it is.
    ready: Option<Readiness>,
    /// The daemon's captured stdout and stderr.
    capture: Option<Capture>,
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
            capture: None,
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

    pub(crate) fn with_capture(mut self, capture: Option<Capture>) -> Launched {
        self.capture = capture;
        self
    }

    /// Its captured output, for a readiness check of another policy (the proxy's).
    pub(crate) fn capture(&self) -> Option<&Capture> {
        self.capture.as_ref()
    }

    pub(crate) fn with_ready(mut self, ready: Option<Readiness>) -> Launched {
        self.ready = ready;
        self
    }

    /// With [`Launch::ready`](crate::Launch::ready), wait for `READY=1`. The notify socket
    /// is closed once the daemon is ready: a daemon that goes on notifying (`STATUS=`,
    /// `WATCHDOG=1`) gets an error at once from `sd_notify` (which daemons ignore) and never
    /// blocks on a queue nobody reads.
    pub(crate) fn wait_ready(mut self) -> Result<Launched, Error> {
        let signals = self.ready.as_ref().and_then(|r| r.signals.clone());
        // Our socket copies and the notify socket are closed once it returns.
        wait_all_ready(std::slice::from_mut(&mut self), signals.as_deref()).map_err(|(_, e)| e)?;
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
        match self.stderr() {
            Some(text) => last_lines(&text, TAIL),
            None => self.stderr.as_ref().and_then(tail),
        }
    }

    /// The daemon's captured stdout so far (the last 256 KiB), when it is captured
    /// ([`Stdio::capture`](crate::Stdio::capture), the default); `None` otherwise.
    ///
    /// ```
    /// let mut daemon = sd_launch::Launch::new("sh").args(["-c", "echo ready"]).spawn()?;
    /// daemon.wait()?;
    /// assert_eq!(daemon.stdout().as_deref(), Some("ready\n"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stdout(&self) -> Option<String> {
        self.captured(Which::Stdout)
    }

    /// The daemon's captured stderr so far (the last 256 KiB), when it is captured
    /// ([`Stdio::capture`](crate::Stdio::capture), the default); `None` otherwise.
    ///
    /// ```
    /// let mut daemon = sd_launch::Launch::new("sh").args(["-c", "echo oops >&2"]).spawn()?;
    /// daemon.wait()?;
    /// assert_eq!(daemon.stderr().as_deref(), Some("oops\n"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stderr(&self) -> Option<String> {
        self.captured(Which::Stderr)
    }

    /// The captured text of `which`, once the daemon's pipe has been drained: after the
    /// daemon exited, whatever it wrote before is there.
    fn captured(&self, which: Which) -> Option<String> {
        let capture = self.capture.as_ref().filter(|c| c.has(which))?;
        if self.child.is_reaped() {
            capture.wait_drained(which);
        }
        Some(capture.text(which))
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

    /// One socket, by index (0 is fd 3) or by name.
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5")
    ///     .listen(sd_launch::SocketSpec::loopback().name("http"))
    ///     .spawn()?;
    /// assert_eq!(server.socket("http").map(|s| s.fd), Some(3));
    /// assert!(server.socket("admin").is_none());
    /// assert!(server.socket(1).is_none());
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn socket(&self, which: impl SocketRef) -> Option<&LaunchedSocket> {
        which.find(&self.sockets)
    }

    /// The IP address and port of a socket, by index or name; an error (not a panic) when
    /// there is no such socket or it is not TCP/UDP.
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
    /// let addr = server.addr(0)?;
    /// let _client = std::net::TcpStream::connect(addr)?; // queued in the backlog at once
    /// assert!(server.addr("nope").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn addr(&self, which: impl SocketRef) -> Result<SocketAddr, Error> {
        self.lookup(&which, "an IP address", LaunchedSocket::inet)
    }

    /// The path of a Unix socket file, by index or name.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("api.sock");
    /// let server = sd_launch::Launch::new("sleep").arg("5")
    ///     .listen(sd_launch::SocketSpec::new(sd_launch::Address::Unix(path.clone())).name("api"))
    ///     .spawn()?;
    /// assert_eq!(server.path("api")?, path);
    /// assert!(server.addr("api").is_err()); // not an IP socket
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn path(&self, which: impl SocketRef) -> Result<std::path::PathBuf, Error> {
        self.lookup(&which, "a Unix socket path", |s| {
            s.path().map(ToOwned::to_owned)
        })
    }

    /// A base URL for HTTP over a TCP socket, by index or name: `http://127.0.0.1:PORT/`.
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
    /// let url = server.url(0)?;
    /// assert_eq!(url, format!("http://{}/", server.addr(0)?));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn url(&self, which: impl SocketRef) -> Result<String, Error> {
        self.lookup(&which, "an HTTP URL (it is not TCP)", LaunchedSocket::url)
    }

    fn lookup<T>(
        &self,
        which: &impl SocketRef,
        wanted: &'static str,
        get: impl FnOnce(&LaunchedSocket) -> Option<T>,
    ) -> Result<T, Error> {
        let socket = which.find(&self.sockets);
        socket.and_then(get).ok_or_else(|| Error::NoSuchSocket {
            which: which.describe(),
            wanted,
            found: match socket {
                Some(s) => format!("it is {} {}", s.kind, describe_address(s)),
                None => format!(
                    "{} has {} socket(s){}",
                    self.program,
                    self.sockets.len(),
                    names(&self.sockets)
                ),
            },
        })
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
        if std::thread::panicking()
            && let Some(capture) = &self.capture
        {
            // Printed through the test harness's capture: `cargo test` shows it with the
            // failing test's own output only.
            for (which, name) in [(Which::Stdout, "stdout"), (Which::Stderr, "stderr")] {
                if capture.has(which) {
                    eprint!(
                        "---- {} (pid {}) {name} ----\n{}\n",
                        self.program,
                        self.pid(),
                        capture.text(which)
                    );
                }
            }
        }
        if self.kill_on_drop {
            let _ = self.child.kill(); // its process group too, even when it exited by itself
        }
        // `created` drops after this: socket files are removed once the daemon is gone.
    }
}

fn describe_address(s: &LaunchedSocket) -> String {
    s.address
        .as_ref()
        .map_or_else(|| "without an address".to_owned(), |a| format!("on {a}"))
}

fn names(sockets: &[LaunchedSocket]) -> String {
    let names: Vec<&str> = sockets.iter().filter_map(|s| s.name.as_deref()).collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(", named {}", names.join(", "))
    }
}

/// How a daemon is waited for until it is ready.
#[derive(Debug)]
pub(crate) struct Readiness {
    pub(crate) wait: Wait,
    pub(crate) timeout: Duration,
    /// Stop signals that end the wait ([`Launch::stop_on`](crate::Launch::stop_on)).
    pub(crate) signals: Option<Arc<Signals>>,
    /// Our copies of the listening sockets, kept until the daemon is ready.
    pub(crate) listeners: Vec<OwnedFd>,
}

/// How much of the daemon's stderr an error shows.
const TAIL: usize = 2048;

/// Wait, in one loop, until every daemon of `daemons` that was launched with a readiness
/// wait is ready; on failure the index of the daemon that failed (`None` for a stop signal)
/// and the error. Daemons are not killed here: the caller stops the whole set.
pub(crate) fn wait_all_ready(
    daemons: &mut [Launched],
    signals: Option<&Signals>,
) -> Result<(), (Option<usize>, Error)> {
    use crate::supervisor::ready::{Pending, wait_all_ready};
    let plans: Vec<(usize, Readiness, Option<NotifySocket>)> = daemons
        .iter_mut()
        .enumerate()
        .filter_map(|(i, d)| d.ready.take().map(|r| (i, r, d.notify.take())))
        .collect();
    let listeners: Vec<Vec<RawFd>> = plans
        .iter()
        .map(|(_, r, _)| r.listeners.iter().map(AsRawFd::as_raw_fd).collect())
        .collect();
    let start = Instant::now();
    let mut pending = Vec::with_capacity(plans.len());
    let mut next = plans.iter().zip(&listeners).peekable();
    for (i, d) in daemons.iter_mut().enumerate() {
        let Some(((_, ready, notify), listeners)) = next.next_if(|((j, _, _), _)| *j == i) else {
            continue;
        };
        let Launched {
            child,
            capture,
            sockets,
            ..
        } = d;
        pending.push(Pending {
            wait: &ready.wait,
            probes: Probes {
                notify: notify.as_ref(),
                capture: capture.as_ref(),
                sockets,
                listeners,
            },
            child,
            deadline: start + ready.timeout,
        });
    }
    let outcome = wait_all_ready(signals, &mut pending);
    drop(pending);
    let Err((k, why)) = outcome else {
        return Ok(());
    };
    let Some((i, ready, _)) = plans.get(k) else {
        let program = "the stack".to_owned();
        return Err((
            None,
            match why {
                NotReady::Interrupted(signal) => Error::Interrupted { program, signal },
                NotReady::Failed(e) => e,
                _ => Error::Conflict("a readiness wait failed"),
            },
        ));
    };
    Err((
        Some(*i),
        not_ready(&mut daemons[*i], &ready.wait, ready.timeout, why),
    ))
}

/// The error for a daemon that did not become ready; the daemon is killed and reaped.
fn not_ready(daemon: &mut Launched, wait: &Wait, timeout: Duration, why: NotReady) -> Error {
    let _ = daemon.kill();
    let program = daemon.program().to_owned();
    match why {
        NotReady::Exited(status) => daemon.exited(status, "before it was ready"),
        NotReady::Timeout => Error::ReadyTimeout {
            program,
            what: wait.describe(),
            timeout,
            stderr: daemon.stderr_tail(),
        },
        NotReady::Interrupted(signal) => Error::Interrupted { program, signal },
        NotReady::Failed(e) => e,
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

/// The last lines of a regular file (the daemon's stderr, when it goes to a file): at most
/// 2 KiB, lossy UTF-8, trimmed to whole lines.
pub(crate) fn tail(file: &File) -> Option<String> {
    const MAX: u64 = TAIL as u64;
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
