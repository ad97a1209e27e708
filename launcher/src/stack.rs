//! [`Stack`]: several daemons started at once, each told the others' addresses, with no
//! start-up order: every socket of every daemon is bound first, then every daemon starts,
//! and connections between them wait in the backlogs until each accepts (what socket
//! activation gave systemd's boot, for tests).
//!
//! ```
//! use sd_launch::{Launch, Stack};
//! // Two daemons that each know the other's address when they start (a cycle is fine:
//! // templates name addresses, and every address exists before any daemon runs).
//! let stack = Stack::new()
//!     .daemon("api", Launch::new("sh").args(["-c", "echo peer=$PEER; exec sleep 30"])
//!         .env("PEER", "http://${web.addr}/"))
//!     .daemon("web", Launch::new("sh").args(["-c", "echo api=$API; exec sleep 30"])
//!         .env("API", "http://${api.addr}/"))
//!     .spawn()?;
//! let api = stack.get("api").unwrap().addr(0)?;
//! let web = stack.get("web").unwrap().addr(0)?;
//! assert_ne!(api, web);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Decisions:
//! * Daemon names are what templates use: letters, digits, `_` and `-`, unique, at most
//!   [`MAX_DAEMONS`] of them.
//! * The stack is up when every daemon with a readiness wait
//!   ([`Launch::wait_until`](crate::Launch::wait_until)) is ready, all waited for at once in
//!   one loop; without any, as soon as all have started.
//! * A daemon that exits while the stack starts, or misses its readiness deadline, fails
//!   the whole stack: every daemon is stopped, and the error ([`Error::Stack`], exit 5)
//!   names the daemon, with its exit status and output tail.

use crate::error::Error;
use crate::launch::Launch;
use crate::launched::{Launched, wait_all_ready};
use std::time::{Duration, Instant};

use crate::supervisor::{
    Event, FIRST_BACKOFF, FORWARDED, Key, MAX_BACKOFF, Policy, STOPPING, Signals, Watch, run,
};
use crate::template::Addresses;

/// The most daemons a stack may have.
///
/// ```
/// assert_eq!(sd_launch::stack::MAX_DAEMONS, 1024);
/// ```
pub const MAX_DAEMONS: usize = 1024;

/// Named daemons to start together (see the [module docs](self)).
///
/// ```
/// let stack = sd_launch::Stack::new().daemon("db", sd_launch::Launch::new("sleep").arg("30"));
/// # let _ = stack;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Stack {
    daemons: Vec<(String, Launch)>,
    /// The daemons [`supervise`] starts again when they exit.
    restart: Vec<String>,
}

impl Stack {
    /// An empty stack.
    ///
    /// ```
    /// let stack = sd_launch::Stack::new();
    /// # let _ = stack;
    /// ```
    pub fn new() -> Stack {
        Stack::default()
    }

    /// Add daemon `name`, started with `launch`, whose program, arguments and environment
    /// values may use `${NAME.addr}`, `${NAME.port}`, `${NAME.path}` and
    /// `${NAME.SOCKET.addr}` (etc.) of any daemon of the stack, itself included.
    ///
    /// ```
    /// use sd_launch::{Launch, Stack};
    /// let stack = Stack::new()
    ///     .daemon("cache", Launch::new("sleep").arg("30"))
    ///     .daemon("app", Launch::new("sleep").arg("30").env("CACHE", "${cache.addr}"));
    /// # let _ = stack;
    /// ```
    pub fn daemon(mut self, name: impl Into<String>, launch: Launch) -> Stack {
        self.daemons.push((name.into(), launch));
        self
    }

    /// Have [`supervise`] start daemon `name` again (after a backoff from 100 ms doubling to
    /// 10 s) when it exits by itself; its sockets are then kept open by the stack, so
    /// clients wait in the backlog while it restarts. Without it, a daemon that exits ends
    /// the supervision.
    ///
    /// ```
    /// let stack = sd_launch::Stack::new()
    ///     .daemon("worker", sd_launch::Launch::new("sleep").arg("1"))
    ///     .restart_on_exit("worker");
    /// # let _ = stack;
    /// ```
    pub fn restart_on_exit(mut self, name: &str) -> Stack {
        self.restart.push(name.to_owned());
        self
    }

    /// Bind every daemon's sockets, expand the templates, start every daemon, then wait
    /// until those with a readiness wait are ready. On error nothing is left running or
    /// created.
    ///
    /// ```
    /// use sd_launch::{Error, Launch, Stack};
    /// let err = Stack::new()
    ///     .daemon("app", Launch::new("sleep").arg("30").env("DB", "${db.addr}"))
    ///     .spawn()
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Template { .. }));
    /// assert!(err.to_string().contains("no daemon named \"db\""), "{err}");
    /// ```
    pub fn spawn(&self) -> Result<RunningStack, Error> {
        self.spawn_with(None)
    }

    /// [`spawn`](Stack::spawn), and a stop signal among `signals` (SIGTERM, SIGINT,
    /// SIGQUIT) ends the readiness wait at once ([`Error::Interrupted`]), as `sd-launch
    /// --stack` does.
    ///
    /// ```
    /// let signals = sd_launch::supervisor::Signals::block()?;
    /// let stack = sd_launch::Stack::new().spawn_until(&signals)?;
    /// # let _ = stack;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_until(&self, signals: &Signals) -> Result<RunningStack, Error> {
        self.spawn_with(Some(signals))
    }

    fn spawn_with(&self, signals: Option<&Signals>) -> Result<RunningStack, Error> {
        let prepared = self.prepare()?;
        let spawned = spawn_all(prepared);
        let mut daemons = Vec::with_capacity(spawned.len());
        let mut names = Vec::with_capacity(spawned.len());
        let mut plans = Vec::with_capacity(spawned.len());
        let mut first_error = None;
        for (name, p, child) in spawned {
            let child = match child {
                Ok(child) => child,
                Err(e) => {
                    first_error.get_or_insert(stack_error(&name, e));
                    continue;
                }
            };
            // Every started daemon gets its handle first, so that an error below stops it.
            if self.restart.contains(&name) {
                // It keeps its plan, and the plan our copies of its sockets.
                match p.child_with_ready(child) {
                    Ok(d) => daemons.push(d),
                    Err(e) => {
                        first_error.get_or_insert(stack_error(&name, e));
                        continue;
                    }
                }
                plans.push(Some(p));
            } else {
                daemons.push(p.into_launched(child));
                plans.push(None);
            }
            names.push(name);
        }
        if let Some(e) = first_error {
            return Err(e); // `daemons` drops: every daemon started is stopped
        }
        match wait_all_ready(&mut daemons, signals) {
            Ok(()) => Ok(RunningStack {
                names,
                daemons,
                plans,
            }),
            Err((which, e)) => Err(match which {
                Some(i) => stack_error(&names[i], e),
                None => e,
            }),
        }
        // On error `daemons` drops here: every daemon is killed, its files removed.
    }

    /// Check the names, bind every socket, expand every template: ready to spawn.
    pub(crate) fn prepare(&self) -> Result<Vec<(String, crate::launch::Prepared)>, Error> {
        if self.daemons.len() > MAX_DAEMONS {
            return Err(Error::TooManyDaemons {
                count: self.daemons.len(),
                max: MAX_DAEMONS,
            });
        }
        for (i, (name, _)) in self.daemons.iter().enumerate() {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(template_error(
                    name,
                    "name",
                    "a daemon name is letters, digits, '_' and '-'",
                ));
            }
            if self.daemons[..i].iter().any(|(n, _)| n == name) {
                return Err(template_error(name, "name", "two daemons have this name"));
            }
        }
        // Every mistake of the description is found before anything is bound or started.
        for (name, launch) in &self.daemons {
            launch
                .check_addresses()
                .map_err(|e| template_error(name, "listen", &e.to_string()))?;
        }
        let mut bound = Vec::with_capacity(self.daemons.len());
        for (name, launch) in &self.daemons {
            bound.push(launch.bind_sockets().map_err(|e| stack_error(name, e))?);
        }
        let mut addresses = Addresses::default();
        for ((name, _), b) in self.daemons.iter().zip(&bound) {
            addresses.add(name, b.as_ref().map_or(&[][..], |b| b.sockets()));
        }
        let mut launches = Vec::with_capacity(self.daemons.len());
        for (name, launch) in &self.daemons {
            let mut launch = launch.clone();
            launch
                .expand_templates(&addresses)
                .map_err(|(key, reason)| template_error(name, &key, &reason))?;
            launch
                .find_program()
                .map_err(|e| template_error(name, "command[0]", &e.to_string()))?;
            launches.push((name.clone(), launch));
        }
        drop(addresses);
        launches
            .into_iter()
            .zip(bound)
            .map(|((name, launch), b)| {
                let p = launch.prepare_bound(b).map_err(|e| stack_error(&name, e))?;
                Ok((name, p))
            })
            .collect()
    }
}

fn stack_error(daemon: &str, e: Error) -> Error {
    Error::Stack {
        daemon: daemon.to_owned(),
        source: Box::new(e),
    }
}

fn template_error(daemon: &str, key: &str, reason: &str) -> Error {
    Error::Template {
        daemon: daemon.to_owned(),
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Start every prepared daemon, in order; the results keep the stack's order. (Started from
/// several threads, the exec's overlapped no better on 2 cores: bench row 10 showed no
/// gain, so the simpler order it is.)
fn spawn_all(
    prepared: Vec<(String, crate::launch::Prepared)>,
) -> Vec<(
    String,
    crate::launch::Prepared,
    Result<crate::process::Child, Error>,
)> {
    prepared
        .into_iter()
        .map(|(name, mut p)| {
            let child = p.spawn_child(false).map(|(child, _)| child);
            (name, p, child)
        })
        .collect()
}

/// A running [`Stack`]: each daemon's [`Launched`] handle by name. Dropping it stops every
/// daemon (and what each started), and removes the socket files the stack created.
///
/// ```
/// use sd_launch::{Launch, Stack};
/// let stack = Stack::new().daemon("a", Launch::new("sleep").arg("30")).spawn()?;
/// assert_eq!(stack.names().collect::<Vec<_>>(), ["a"]);
/// assert!(stack.get("b").is_none());
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug)]
pub struct RunningStack {
    names: Vec<String>,
    daemons: Vec<Launched>,
    /// The plans of the daemons that restart on exit.
    plans: Vec<Option<crate::launch::Prepared>>,
}

impl RunningStack {
    /// Daemon `name`'s handle.
    ///
    /// ```
    /// let stack = sd_launch::Stack::new().daemon("a", sd_launch::Launch::new("sleep").arg("30")).spawn()?;
    /// assert!(stack.get("a").unwrap().pid() > 1);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn get(&self, name: &str) -> Option<&Launched> {
        let i = self.names.iter().position(|n| n == name)?;
        self.daemons.get(i)
    }

    /// Daemon `name`'s handle, mutably (to signal, wait or stop it).
    ///
    /// ```
    /// let mut stack = sd_launch::Stack::new().daemon("a", sd_launch::Launch::new("sleep").arg("30")).spawn()?;
    /// stack.get_mut("a").unwrap().kill()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Launched> {
        let i = self.names.iter().position(|n| n == name)?;
        self.daemons.get_mut(i)
    }

    /// The daemons' names, in the order they were added.
    ///
    /// ```
    /// let stack = sd_launch::Stack::new().spawn()?;
    /// assert_eq!(stack.names().count(), 0);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// `Ok` while every daemon runs; else the error of the first that has exited (its
    /// status and output tail).
    ///
    /// ```
    /// let mut stack = sd_launch::Stack::new().daemon("a", sd_launch::Launch::new("sleep").arg("30")).spawn()?;
    /// stack.ensure_running()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ensure_running(&mut self) -> Result<(), Error> {
        for (name, d) in self.names.iter().zip(&mut self.daemons) {
            d.ensure_running().map_err(|e| stack_error(name, e))?;
        }
        Ok(())
    }
}

/// How [`supervise`] ended.
#[derive(Debug)]
pub enum Ended {
    /// A stop signal came (SIGTERM, SIGINT, SIGQUIT): every daemon was stopped.
    Signal(i32),
    /// A daemon that does not restart exited: every other daemon was stopped. The error
    /// names it, with its exit status and output tail.
    Exited(Error),
}

/// Supervise a running stack in the foreground, as `sd-launch --stack` does: forward the
/// signals of `signals` to every daemon, restart those asked to restart, and end when a stop
/// signal comes or a daemon that does not restart exits. Either way every daemon is then
/// stopped: `SIGTERM`, `SIGKILL` after `stop_timeout`, process groups included.
///
/// ```
/// use std::time::Duration;
/// use sd_launch::{Launch, Stack, stack::{self, Ended}, supervisor::Signals};
/// let signals = Signals::block()?;
/// let running = Stack::new()
///     .daemon("short", Launch::new("sh").args(["-c", "exit 3"]))
///     .daemon("long", Launch::new("sleep").arg("30"))
///     .spawn_until(&signals)?;
/// let ended = stack::supervise(&signals, running, Duration::from_secs(5))?;
/// assert!(matches!(ended, Ended::Exited(e) if e.to_string().contains("daemon short")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn supervise(
    signals: &Signals,
    running: RunningStack,
    stop_timeout: Duration,
) -> Result<Ended, Error> {
    let mut policy = Supervise {
        restart_at: vec![None; running.daemons.len()],
        backoff: vec![FIRST_BACKOFF; running.daemons.len()],
        running,
    };
    let result = run(Some(signals), &mut policy);
    let mut running = policy.running;
    crate::process::stop_all(
        running.daemons.iter_mut().map(Launched::child_mut),
        libc::SIGTERM,
        stop_timeout,
    );
    result
}

struct Supervise {
    running: RunningStack,
    /// A pending restart, per daemon.
    restart_at: Vec<Option<Instant>>,
    backoff: Vec<Duration>,
}

impl Supervise {
    fn restart(&mut self, i: usize) -> Result<(), Error> {
        let name = &self.running.names[i];
        let Some(plan) = self.running.plans[i].as_mut() else {
            return Ok(());
        };
        match plan.spawn_child(false) {
            Ok((child, _)) => {
                let daemon = plan.child(child);
                tracing::info!("{name}: restarted, new pid {}", daemon.pid());
                self.running.daemons[i] = daemon;
            }
            Err(e) => {
                tracing::error!("{name}: restart failed: {e}");
                self.schedule(i);
            }
        }
        Ok(())
    }

    fn schedule(&mut self, i: usize) {
        self.restart_at[i] = Some(Instant::now() + self.backoff[i]);
        self.backoff[i] = (self.backoff[i] * 2).min(MAX_BACKOFF);
    }
}

impl Policy for Supervise {
    type Output = Ended;

    fn watch(&self, watch: &mut Watch) {
        for d in &self.running.daemons {
            if let Some(fd) = d.child().pidfd() {
                watch.add(Key::Child(d.pid()), fd);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.restart_at.iter().flatten().min().copied()
    }

    fn handle(&mut self, event: Event) -> Result<Option<Ended>, Error> {
        let os = |context| move |source| Error::Os { context, source };
        match event {
            Event::Readable(Key::Child(pid)) => {
                let Some(i) = self.running.daemons.iter().position(|d| d.pid() == pid) else {
                    return Ok(None);
                };
                let daemon = &mut self.running.daemons[i];
                let Some(status) = daemon.try_wait().map_err(os("wait for a daemon"))? else {
                    return Ok(None);
                };
                let name = self.running.names[i].clone();
                if self.running.plans[i].is_some() {
                    tracing::warn!("{name} (pid {pid}) exited ({status}); restarting");
                    self.schedule(i);
                    return Ok(None);
                }
                let error = daemon.exited(status, "while the stack ran");
                Ok(Some(Ended::Exited(stack_error(&name, error))))
            }
            Event::Readable(_) => Ok(None),
            Event::Signal(sig) if STOPPING.contains(&sig) => Ok(Some(Ended::Signal(sig))),
            Event::Signal(sig) => {
                if FORWARDED.contains(&sig) {
                    for d in &self.running.daemons {
                        d.child().forward(sig).map_err(os("forward a signal"))?;
                    }
                }
                Ok(None)
            }
            Event::Deadline => {
                let now = Instant::now();
                for i in 0..self.restart_at.len() {
                    if self.restart_at[i].is_some_and(|t| now >= t) {
                        self.restart_at[i] = None;
                        self.restart(i)?;
                    }
                }
                Ok(None)
            }
        }
    }
}
