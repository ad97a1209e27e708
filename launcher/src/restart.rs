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
use crate::launched::Launched;
use crate::sockets::LaunchedSocket;
use crate::supervisor::ready::ready_message;
use crate::supervisor::{Event, FORWARDED, Key, Policy, STOPPING, Signals, Watch, run};
use crate::supervisor::{FIRST_BACKOFF, MAX_BACKOFF, Wait};

/// When [`supervise()`] starts the daemon again.
///
/// ```
/// use sd_launch::restart::Restart;
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
    /// A new daemon not ready yet, with its readiness deadline ([`supervise`] only).
    starting: Option<(Launched, Instant)>,
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
    pub fn service(&self) -> Result<Service, Error> {
        Ok(Service {
            prepared: self.clone().prepare()?,
            current: None,
            started_at: Instant::now(),
            starting: None,
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
        let daemon = self.spawn(None)?;
        self.set_current(daemon)
    }

    /// Like [`start`](Service::start), but `before_exec` runs while the new daemon is held
    /// just before `execve` (its pid known, its program not running yet): this is where
    /// `sd-launch` prints its output, so that it comes before anything the daemon writes. If
    /// `before_exec` fails, the daemon never runs ([`Error::BeforeExec`]).
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
        let daemon = self.spawn(Some(Box::new(before_exec)))?;
        self.set_current(daemon)
    }

    fn set_current(&mut self, daemon: Launched) -> Result<u32, Error> {
        assert!(
            self.current.is_none(),
            "Service::start with a daemon running"
        );
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
        Ok(self.promote(new, stop_timeout))
    }

    /// Make `new` the current daemon; the old one, if any, drains.
    fn promote(&mut self, new: Launched, stop_timeout: Duration) -> u32 {
        let pid = new.pid();
        if let Some(old) = self.current.replace(new) {
            let _ = old.child().forward(libc::SIGTERM);
            self.draining.push((old, Instant::now() + stop_timeout));
        }
        self.started_at = Instant::now();
        pid
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

    /// Start one daemon on the sockets, and wait until it is ready; held before exec (a
    /// `fork`) only when `before_exec` must run first, else spawned directly (a vfork).
    fn spawn(&mut self, before_exec: Option<BeforeExec<'_>>) -> Result<Launched, Error> {
        let daemon = self.spawn_unready(before_exec)?;
        self.prepared.wait_ready(daemon)
    }

    fn spawn_unready(&mut self, before_exec: Option<BeforeExec<'_>>) -> Result<Launched, Error> {
        let (child, gate) = self.prepared.spawn_child(before_exec.is_some())?;
        let mut daemon = self.prepared.child(child);
        if let (Some(before_exec), Some(gate)) = (before_exec, gate) {
            if let Err(source) = before_exec(daemon.pid(), self.sockets()) {
                drop(gate); // the child exits without running the program
                let _ = daemon.wait();
                return Err(Error::BeforeExec {
                    program: daemon.program().to_owned(),
                    source,
                });
            }
            if let Err(e) = gate.release() {
                let _ = daemon.wait();
                return Err(e);
            }
        }
        Ok(daemon)
    }

    /// Stop everything: `SIGTERM` to the running daemons, `SIGKILL` after `stop_timeout`;
    /// draining ones keep their own deadline.
    fn stop_all(&mut self, stop_timeout: Duration) {
        let running = self
            .current
            .take()
            .into_iter()
            .chain(self.starting.take().map(|(d, _)| d));
        let mut running: Vec<Launched> = running.collect();
        crate::process::stop_all(
            running.iter_mut().map(Launched::child_mut),
            libc::SIGTERM,
            stop_timeout,
        );
        for (old, kill_at) in &mut self.draining {
            let _ = old.child_mut().wait_deadline(Some(*kill_at));
            let _ = old.kill();
        }
        self.draining.clear();
    }
}

/// What runs while a daemon is held before exec (see [`Service::start_with`]).
type BeforeExec<'a> = Box<dyn FnOnce(u32, &[LaunchedSocket]) -> io::Result<()> + 'a>;

/// The supervisor policy of `sd-launch --restart`: forwards the signals to the running
/// daemon, except `SIGHUP`, which restarts it (the new daemon first, ready with
/// [`Launch::ready`](crate::Launch::ready), then the old one drains); with
/// [`Restart::OnExit`] a daemon that exits by itself is started again after a backoff. Ends
/// when the daemon exits after a stop signal (SIGTERM, SIGINT, SIGQUIT), or by itself with
/// [`Restart::OnHup`]; returns that daemon's status. Old daemons still draining then get
/// their stop timeout to finish. `service` must have been started.
///
/// ```
/// use std::time::Duration;
/// use sd_launch::{restart::{self, Restart}, supervisor::Signals};
/// let signals = Signals::block()?;
/// let mut service = sd_launch::Launch::new("sh").args(["-c", "exit 3"]).service()?;
/// service.start()?;
/// let status = restart::supervise(&signals, &mut service, Restart::OnHup, Duration::from_secs(1))?;
/// assert_eq!(status.code(), Some(3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn supervise(
    signals: &Signals,
    service: &mut Service,
    policy: Restart,
    stop_timeout: Duration,
) -> Result<ExitStatus, Error> {
    let mut supervisor = Supervise {
        service,
        policy,
        stop_timeout,
        backoff: FIRST_BACKOFF,
        stop_at: None,
        restart_at: None,
    };
    let result = run(Some(signals), &mut supervisor);
    supervisor.service.stop_all(stop_timeout);
    result
}

struct Supervise<'a> {
    service: &'a mut Service,
    policy: Restart,
    stop_timeout: Duration,
    backoff: Duration,
    /// When a stop signal came.
    stop_at: Option<Instant>,
    /// A pending start after an exit (the backoff).
    restart_at: Option<Instant>,
}

impl Supervise<'_> {
    /// Start a new daemon without waiting: ready at once without `--ready`, else once its
    /// `READY=1` arrives (then the old one, if any, drains).
    fn begin_start(&mut self) {
        match self.service.spawn_unready(None) {
            Ok(new) => match &self.service.prepared.ready {
                None => self.promote(new),
                Some((Wait::Notify, timeout)) => {
                    self.service.starting = Some((new, Instant::now() + *timeout));
                }
                Some(_) => {
                    // The other strategies wait in a loop of their own, with the signals.
                    match self.service.prepared.wait_ready(new) {
                        Ok(new) => self.promote(new),
                        Err(e) => {
                            tracing::error!("restart failed, keeping the old daemon: {e}");
                            if self.service.current.is_none() {
                                self.schedule_restart();
                            }
                        }
                    }
                }
            },
            Err(e) => {
                tracing::error!("starting a new daemon failed: {e}");
                if self.service.current.is_none() {
                    self.schedule_restart();
                }
            }
        }
    }

    /// `new` is running (and ready): it replaces the current daemon, if any.
    fn promote(&mut self, new: Launched) {
        let replaces = self.service.current.is_some();
        let pid = self.service.promote(new, self.stop_timeout);
        if replaces {
            tracing::info!("SIGHUP: restarted, new pid {pid}");
        } else {
            tracing::info!("restarted, new pid {pid}");
        }
    }

    fn schedule_restart(&mut self) {
        if self.service.started_at.elapsed() >= MAX_BACKOFF {
            self.backoff = FIRST_BACKOFF;
        }
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// A daemon of ours has exited (pidfd readable): which one, and what follows.
    fn exited(&mut self, pid: u32) -> Result<Option<ExitStatus>, Error> {
        let os = |source| Error::Os {
            context: "wait for the daemon",
            source,
        };
        let service = &mut *self.service;
        if let Some((new, _)) = service.starting.as_mut().filter(|(d, _)| d.pid() == pid) {
            if let Some(status) = new.try_wait().map_err(os)? {
                let err = new.exited(status, "before it was ready (READY=1)");
                service.starting = None;
                tracing::error!("restart failed, keeping the old daemon: {err}");
                if service.current.is_none() {
                    self.schedule_restart();
                }
            }
            return Ok(None);
        }
        if let Some(daemon) = service.current.as_mut().filter(|d| d.pid() == pid) {
            let Some(status) = daemon.try_wait().map_err(os)? else {
                return Ok(None);
            };
            let daemon = service.current.take().expect("it has just exited");
            if self.stop_at.is_some() || self.policy == Restart::OnHup {
                return Ok(Some(status));
            }
            self.schedule_restart();
            tracing::warn!(
                "{} (pid {}) exited ({status}); restarting in {:?}",
                daemon.program(),
                daemon.pid(),
                self.restart_at
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or_default()
            );
            return Ok(None);
        }
        service.reap();
        Ok(None)
    }
}

impl Policy for Supervise<'_> {
    type Output = ExitStatus;

    fn watch(&self, watch: &mut Watch) {
        let service = &*self.service;
        if let Some(notify) = &service.prepared.notify {
            watch.add(Key::Notify, notify.raw_fd());
        }
        let daemons = service
            .current
            .iter()
            .chain(service.starting.iter().map(|(d, _)| d))
            .chain(service.draining.iter().map(|(d, _)| d));
        for daemon in daemons {
            if let Some(fd) = daemon.child().pidfd() {
                watch.add(Key::Child(daemon.pid()), fd);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let service = &*self.service;
        [
            self.stop_at.map(|t| t + self.stop_timeout),
            self.restart_at,
            service.starting.as_ref().map(|(_, t)| *t),
        ]
        .into_iter()
        .chain(service.draining.iter().map(|(_, t)| Some(*t)))
        .flatten()
        .min()
    }

    fn handle(&mut self, event: Event) -> Result<Option<ExitStatus>, Error> {
        let os = |context| move |source| Error::Os { context, source };
        match event {
            Event::Readable(Key::Child(pid)) => self.exited(pid),
            Event::Readable(_) => {
                let Some(notify) = &self.service.prepared.notify else {
                    return Ok(None);
                };
                let root = self.service.starting.as_ref().map_or(0, |(d, _)| d.pid());
                if ready_message(notify, root).map_err(os("read notifications"))? {
                    let (new, _) = self.service.starting.take().expect("root is the new one");
                    self.promote(new);
                }
                Ok(None)
            }
            Event::Signal(libc::SIGHUP) if self.stop_at.is_none() => {
                if self.service.starting.is_some() {
                    tracing::info!("SIGHUP: a restart is already under way");
                } else if self.service.current.is_some() {
                    tracing::info!("SIGHUP: restarting");
                    self.begin_start();
                } else {
                    self.restart_at = Some(Instant::now());
                }
                Ok(None)
            }
            Event::Signal(sig) if FORWARDED.contains(&sig) => {
                if let Some(daemon) = &self.service.current {
                    tracing::debug!("forwarding signal {sig} to pid {}", daemon.pid());
                    daemon
                        .child()
                        .forward(sig)
                        .map_err(os("forward a signal"))?;
                }
                if STOPPING.contains(&sig) {
                    self.stop_at.get_or_insert_with(Instant::now);
                    self.restart_at = None;
                    if self.service.current.is_none() {
                        // Stopped during a backoff: nothing runs, nothing to wait for.
                        use std::os::unix::process::ExitStatusExt;
                        return Ok(Some(ExitStatus::from_raw(sig)));
                    }
                }
                Ok(None)
            }
            Event::Signal(_) => Ok(None),
            Event::Deadline => {
                let now = Instant::now();
                if self.stop_at.is_some_and(|t| now >= t + self.stop_timeout)
                    && let Some(mut daemon) = self.service.current.take()
                {
                    tracing::warn!(
                        "{} (pid {}) still running {:?} after the stop signal: sending SIGKILL",
                        daemon.program(),
                        daemon.pid(),
                        self.stop_timeout
                    );
                    return daemon.kill().map(Some).map_err(os("kill the daemon"));
                }
                if self
                    .service
                    .starting
                    .as_ref()
                    .is_some_and(|(_, t)| now >= *t)
                {
                    let (mut new, _) = self.service.starting.take().expect("checked");
                    let _ = new.kill();
                    let timeout = self
                        .service
                        .prepared
                        .ready
                        .as_ref()
                        .map(|(_, t)| *t)
                        .unwrap_or_default();
                    tracing::error!(
                        "restart failed, keeping the old daemon: {} did not send READY=1 within {timeout:?}",
                        new.program()
                    );
                    if self.service.current.is_none() {
                        self.schedule_restart();
                    }
                }
                if self.restart_at.is_some_and(|t| now >= t) {
                    self.restart_at = None;
                    self.begin_start();
                }
                self.service.reap();
                Ok(None)
            }
        }
    }
}
