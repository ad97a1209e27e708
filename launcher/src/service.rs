//! [`Service`]: a daemon whose sockets outlive it, so it can be replaced without refusing a
//! single connection (what `sd-launch --restart` does; einhorn and systemfd do it for Ruby
//! and `cargo watch`).
//!
//! The launcher keeps its copies of the listening sockets. A restart starts the new daemon
//! on the same sockets first, waits until it is ready (`READY=1` with
//! [`Launch::ready`](crate::Launch::ready), else as soon as it runs), and only then sends the
//! old one `SIGTERM` to drain: connections that arrive meanwhile wait in the kernel's backlog
//! of the one socket both processes share, and whichever accepts first serves them. An old
//! daemon that does not exit within the stop timeout gets `SIGKILL`.
//!
//! The price of holding the sockets: while no daemon runs (between a crash and its restart),
//! clients wait in the backlog instead of being refused.

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::launch::{Launch, Prepared};
use crate::launched::{Launched, LaunchedSocket};
use crate::supervise::{self, BlockedSignals, FORWARDED, STOPPING};

/// What runs while a daemon is held before exec (see [`Service::start_with`]).
type BeforeExec<'a> = &'a mut dyn FnMut(u32, &[LaunchedSocket]) -> io::Result<()>;

/// When [`supervise()`] starts the daemon again.
///
/// ```
/// use sd_launch::service::Restart;
/// assert_eq!("on-exit".parse::<Restart>(), Ok(Restart::OnExit));
/// assert_eq!("on-hup".parse::<Restart>(), Ok(Restart::OnHup));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// On `SIGHUP` only (the default of `--restart`).
    OnHup,
    /// On `SIGHUP`, and whenever the daemon exits by itself (any status), with a backoff
    /// from 100 ms doubling to 10 s, reset once a daemon has run for 10 s.
    OnExit,
}

impl std::str::FromStr for Restart {
    type Err = String;

    fn from_str(s: &str) -> Result<Restart, String> {
        match s {
            "on-hup" | "hup" => Ok(Restart::OnHup),
            "on-exit" | "always" => Ok(Restart::OnExit),
            _ => Err(format!(
                "{s:?} is not a restart policy: use on-hup or on-exit"
            )),
        }
    }
}

/// A daemon on sockets that the service keeps open, so it can be replaced.
///
/// ```
/// use std::time::Duration;
/// let mut service = sd_launch::Launch::new("sleep").arg("30").service()?;
/// let first = service.start()?;
/// let port = service.sockets()[0].address.clone();
/// let second = service.restart(Duration::from_secs(5))?; // started, then the first stopped
/// assert_ne!(first, second);
/// assert_eq!(service.sockets()[0].address, port); // the same socket
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Service {
    prepared: Prepared,
    current: Option<Launched>,
    started_at: Instant,
    /// Old daemons told to stop, with the time they get SIGKILL.
    draining: Vec<(Launched, Instant)>,
}

impl Launch {
    /// Bind the sockets and keep them for a [`Service`]; nothing is started yet.
    ///
    /// ```
    /// let service = sd_launch::Launch::new("true").service()?;
    /// assert_eq!(service.sockets().len(), 1);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn service(self) -> Result<Service, Error> {
        Ok(Service {
            prepared: self.prepare()?,
            current: None,
            started_at: Instant::now(),
            draining: Vec::new(),
        })
    }
}

impl Service {
    /// The sockets every daemon of this service gets, in fd order.
    ///
    /// ```
    /// let service = sd_launch::Launch::new("true").service()?;
    /// assert_eq!(service.sockets()[0].fd, 3);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn sockets(&self) -> &[LaunchedSocket] {
        &self.prepared.sockets
    }

    /// The running daemon, if any.
    ///
    /// ```
    /// let mut service = sd_launch::Launch::new("sleep").arg("30").service()?;
    /// assert!(service.current().is_none());
    /// let pid = service.start()?;
    /// assert_eq!(service.current().map(|d| d.pid()), Some(pid));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn current(&self) -> Option<&Launched> {
        self.current.as_ref()
    }

    /// Start the daemon (when none runs); returns its pid once it runs, or once it is ready
    /// with [`Launch::ready`](crate::Launch::ready).
    ///
    /// ```
    /// let mut service = sd_launch::Launch::new("sleep").arg("30").service()?;
    /// assert!(service.start()? > 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(&mut self) -> Result<u32, Error> {
        self.start_daemon(None)
    }

    /// Like [`start`](Service::start), but `before_exec` runs while the new daemon is held
    /// just before `execve` (its pid known, its program not running yet): this is where
    /// `sd-launch` prints its output, so that it comes before anything the daemon writes. If
    /// `before_exec` fails, the daemon never runs and the error is returned.
    ///
    /// ```
    /// let mut service = sd_launch::Launch::new("true").service()?;
    /// let pid = service.start_with(|pid, sockets| {
    ///     println!("LAUNCHED_PID={pid} on fd {}", sockets[0].fd);
    ///     Ok(())
    /// })?;
    /// assert!(pid > 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start_with(
        &mut self,
        before_exec: impl FnOnce(u32, &[LaunchedSocket]) -> io::Result<()>,
    ) -> Result<u32, Error> {
        let mut before_exec = Some(before_exec);
        self.start_daemon(Some(&mut |pid, sockets| {
            (before_exec.take().expect("called once"))(pid, sockets)
        }))
    }

    fn start_daemon(&mut self, before_exec: Option<BeforeExec<'_>>) -> Result<u32, Error> {
        assert!(
            self.current.is_none(),
            "Service::start with a daemon running"
        );
        let daemon = self.spawn(before_exec)?;
        let pid = daemon.pid();
        self.current = Some(daemon);
        self.started_at = Instant::now();
        Ok(pid)
    }

    /// Replace the running daemon: start a new one on the same sockets, wait until it is
    /// ready, then send the old one `SIGTERM` (and `SIGKILL` if it is still there after
    /// `stop_timeout`, see [`reap`](Service::reap)). If the new one fails to start, the old
    /// one keeps running and the error is returned. Returns the new pid.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut service = sd_launch::Launch::new("sleep").arg("30").service()?;
    /// service.start()?;
    /// let pid = service.restart(Duration::from_secs(1))?;
    /// assert_eq!(service.current().unwrap().pid(), pid);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restart(&mut self, stop_timeout: Duration) -> Result<u32, Error> {
        let new = self.spawn(None)?;
        let pid = new.pid();
        if let Some(old) = self.current.replace(new) {
            self.stop_old(old, stop_timeout);
        }
        self.started_at = Instant::now();
        Ok(pid)
    }

    /// Reap old daemons that have exited, and `SIGKILL` those past their stop timeout.
    /// Returns how many are still draining.
    ///
    /// ```
    /// let mut service = sd_launch::Launch::new("sleep").arg("30").service()?;
    /// assert_eq!(service.reap(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reap(&mut self) -> usize {
        let now = Instant::now();
        self.draining.retain_mut(|(old, kill_at)| {
            match old.try_wait() {
                Ok(None) if now < *kill_at => return true,
                Ok(None) => {
                    tracing::warn!(
                        "old {} (pid {}) still draining at its stop timeout: sending SIGKILL",
                        old.program(),
                        old.pid()
                    );
                    let _ = old.kill();
                }
                _ => {}
            }
            false
        });
        self.draining.len()
    }

    fn stop_old(&mut self, old: Launched, stop_timeout: Duration) {
        let _ = supervise::forward(&old, libc::SIGTERM);
        self.draining.push((old, Instant::now() + stop_timeout));
    }

    /// Start one daemon on the sockets; held before exec (a `fork`) only when `before_exec`
    /// must run first, else spawned directly (a vfork).
    fn spawn(&mut self, before_exec: Option<BeforeExec<'_>>) -> Result<Launched, Error> {
        let (pid, gate) = self.prepared.spawn_child(before_exec.is_some())?;
        let mut daemon = self.prepared.child(pid);
        if let (Some(before_exec), Some(gate)) = (before_exec, gate) {
            if let Err(source) = before_exec(daemon.pid(), self.sockets()) {
                drop(gate); // the child exits without running the program
                let _ = daemon.wait();
                return Err(Error::Spawn {
                    program: daemon.program().to_owned(),
                    step: "the launcher's output before starting",
                    source,
                });
            }
            if let Err(e) = gate.release() {
                let _ = daemon.wait();
                return Err(e);
            }
        }
        if let (Some(timeout), Some(notify)) = (self.prepared.ready, &self.prepared.notify) {
            notify.wait_ready(&mut daemon, timeout)?;
        }
        Ok(daemon)
    }

    /// Stop everything: `SIGTERM` to every daemon, `SIGKILL` after `stop_timeout`.
    fn stop_all(&mut self, stop_timeout: Duration) {
        if let Some(current) = self.current.take() {
            self.stop_old(current, stop_timeout);
        }
        while self.reap() > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The supervisor loop of `sd-launch --foreground --restart`: forwards the blocked signals
/// to the running daemon, except `SIGHUP`, which restarts it ([`Service::restart`]); with
/// [`Restart::OnExit`] a daemon that exits by itself is started again after a backoff. Ends
/// when the daemon exits after a stop signal (SIGTERM, SIGINT, SIGQUIT), or by itself with
/// [`Restart::OnHup`]; returns that daemon's status. Old daemons still draining then get
/// their stop timeout to finish. `service` must have been started.
///
/// ```
/// use std::time::Duration;
/// use sd_launch::service::{self, Restart};
/// let blocked = sd_launch::supervise::block_signals()?;
/// let mut service = sd_launch::Launch::new("sh").args(["-c", "exit 3"]).service()?;
/// service.start()?;
/// let status = service::supervise(&blocked, &mut service, Restart::OnHup, Duration::from_secs(1))?;
/// assert_eq!(status.code(), Some(3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn supervise(
    blocked: &BlockedSignals,
    service: &mut Service,
    policy: Restart,
    stop_timeout: Duration,
) -> io::Result<ExitStatus> {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(10);
    let mut backoff = FIRST_BACKOFF;
    let mut stop_at: Option<Instant> = None; // when a stop signal came
    let mut restart_at: Option<Instant> = None; // a pending restart after an exit
    loop {
        service.reap();
        let exited = match service.current.as_mut() {
            Some(daemon) => daemon.try_wait()?,
            None => None,
        };
        if let Some(status) = exited {
            let daemon = service.current.take().expect("it has just exited");
            if stop_at.is_some() || policy == Restart::OnHup {
                service.stop_all(stop_timeout);
                return Ok(status);
            }
            if service.started_at.elapsed() >= MAX_BACKOFF {
                backoff = FIRST_BACKOFF;
            }
            tracing::warn!(
                "{} (pid {}) exited ({status}); restarting in {backoff:?}",
                daemon.program(),
                daemon.pid()
            );
            restart_at = Some(Instant::now() + backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else if let Some(daemon) = service.current.as_mut() {
            if stop_at.is_some_and(|t| t.elapsed() >= stop_timeout) {
                let status = supervise::kill_after_stop_timeout(daemon, stop_timeout)?;
                service.current = None;
                service.stop_all(stop_timeout);
                return Ok(status);
            }
        }
        if restart_at.is_some_and(|at| Instant::now() >= at) {
            restart_at = None;
            if let Err(e) = service.start() {
                tracing::error!("restart failed: {e}");
                restart_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        let wait = restart_at.map_or(Duration::from_millis(200), |at| {
            at.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200))
        });
        let Some(sig) = blocked.next_signal(wait) else {
            continue;
        };
        if sig == libc::SIGHUP && stop_at.is_none() {
            match service.current {
                Some(_) => match service.restart(stop_timeout) {
                    Ok(pid) => tracing::info!("SIGHUP: restarted, new pid {pid}"),
                    Err(e) => {
                        tracing::error!("SIGHUP: restart failed, keeping the old daemon: {e}")
                    }
                },
                None => restart_at = Some(Instant::now()),
            }
            continue;
        }
        if !FORWARDED.contains(&sig) {
            continue; // SIGCHLD: look at the children again
        }
        if let Some(daemon) = &service.current {
            tracing::debug!("forwarding signal {sig} to pid {}", daemon.pid());
            supervise::forward(daemon, sig)?;
        }
        if STOPPING.contains(&sig) {
            stop_at.get_or_insert_with(Instant::now);
            if service.current.is_none() {
                // Stopped during a backoff: nothing runs, nothing to wait for.
                service.stop_all(stop_timeout);
                return Ok(std::os::unix::process::ExitStatusExt::from_raw(sig));
            }
        }
    }
}
