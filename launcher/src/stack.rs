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
//! * A daemon that cannot take a socket (Redis, PostgreSQL) joins with [`Stack::proxy`]
//!   (`proxy = true` in a stack file): its sockets, bound with all the others, are the
//!   public sockets of a [proxy] of its own, and its templates also name its
//!   private backend (`${backend.path}`, `${backend.port}`), so `backend` is not a daemon
//!   name there. The proxy serves in a thread of the stack's process; its readiness wait
//!   means what it means in proxy mode (`accepted`: it listens on its backend).

use crate::error::Error;
use crate::launch::{Launch, Prepared};
use crate::launched::{Launched, wait_all_ready};
use crate::proxy;
use crate::sockets::LaunchedSocket;
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
    /// The daemons behind a proxy of their own ([`Stack::proxy`]).
    proxied: Vec<String>,
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

    /// Add daemon `name`, which cannot take a socket, behind a [proxy] of its
    /// own: its sockets ([`Launch::listen`], default `127.0.0.1:0`) are the proxy's public
    /// sockets, which the other daemons' templates name as usual, and its own templates tell
    /// it where to listen privately: `${backend.path}` (a Unix socket in a private
    /// directory) or `${backend.port}` / `${backend.addr}` (a loopback TCP port).
    ///
    /// ```
    /// use sd_launch::{Launch, Stack};
    /// let stack = Stack::new()
    ///     .proxy("cache", Launch::new("redis-server")
    ///         .args(["--port", "0", "--unixsocket", "${backend.path}", "--save", ""]))
    ///     .daemon("app", Launch::new("my-app").env("REDIS_URL", "redis://${cache.addr}"));
    /// # let _ = stack;
    /// ```
    pub fn proxy(mut self, name: impl Into<String>, launch: Launch) -> Stack {
        let name = name.into();
        self.proxied.push(name.clone());
        self.daemons.push((name, launch));
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
        let mut direct = Vec::new();
        let mut starting = Vec::new();
        let mut names = Vec::with_capacity(prepared.len());
        let mut slots = Vec::with_capacity(prepared.len());
        // The names of `direct` and `starting`, index for index (for their errors).
        let (mut direct_names, mut proxied_names) = (Vec::new(), Vec::new());
        let mut first_error = None;
        // The proxies first: each starts its daemon in its own thread, which then runs on
        // while the others start.
        let mut plans = Vec::new();
        for (name, member) in prepared {
            match member {
                Member::Proxied(p) => match p.start_serving() {
                    Ok(s) => {
                        slots.push(Slot::Proxied(starting.len()));
                        proxied_names.push(name.clone());
                        names.push(name);
                        starting.push(s);
                    }
                    Err(e) => {
                        first_error.get_or_insert(stack_error(&name, e));
                    }
                },
                Member::Direct(p) => plans.push((name, *p)),
            }
        }
        let mut kept = Vec::new();
        for (name, p, child) in spawn_all(plans) {
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
                    Ok(d) => direct.push(d),
                    Err(e) => {
                        first_error.get_or_insert(stack_error(&name, e));
                        continue;
                    }
                }
                kept.push(Some(p));
            } else {
                direct.push(p.into_launched(child));
                kept.push(None);
            }
            slots.push(Slot::Direct(direct.len() - 1));
            direct_names.push(name.clone());
            names.push(name);
        }
        if let Some(e) = first_error {
            return Err(e); // everything drops: every daemon started is stopped
        }
        if let Err((which, e)) = wait_all_ready(&mut direct, signals) {
            return Err(match which {
                Some(i) => stack_error(&direct_names[i], e),
                None => e,
            });
        }
        // Meanwhile the proxied daemons became ready too, or are about to.
        let mut proxies = Vec::with_capacity(starting.len());
        for (s, name) in starting.into_iter().zip(&proxied_names) {
            proxies.push(s.ready().map_err(|e| stack_error(name, e))?);
        }
        Ok(RunningStack {
            names,
            slots,
            daemons: direct,
            plans: kept,
            proxies,
        })
        // On error everything drops here: every daemon is killed, its files removed.
    }

    /// Check the names, bind every socket, expand every template: ready to spawn.
    fn prepare(&self) -> Result<Vec<(String, Member)>, Error> {
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
            if name == proxy::BACKEND && !self.proxied.is_empty() {
                return Err(template_error(
                    name,
                    "name",
                    "in a stack with a proxied daemon, ${backend...} names its private \
                     backend: give this daemon another name",
                ));
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
        // Every daemon's sockets by name: for the templates, here and in the proxies.
        let peers: Vec<(String, Vec<LaunchedSocket>)> = self
            .daemons
            .iter()
            .zip(&bound)
            .map(|((name, _), b)| {
                (
                    name.clone(),
                    b.as_ref().map_or(Vec::new(), |b| b.sockets().to_vec()),
                )
            })
            .collect();
        let mut addresses = Addresses::default();
        for (name, sockets) in &peers {
            addresses.add(name, sockets);
        }
        let mut launches = Vec::with_capacity(self.daemons.len());
        for (name, launch) in &self.daemons {
            if self.proxied.contains(name) {
                launches.push((name.clone(), launch.clone())); // the proxy expands its own
                continue;
            }
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
                if self.proxied.contains(&name) {
                    let options =
                        proxy::Options::new().restart_on_exit(self.restart.contains(&name));
                    let bound = b.expect("a proxied daemon is not in inetd mode");
                    let proxy = options
                        .with_bound(launch, bound, peers.clone())
                        .map_err(|e| match e {
                            // "never told where to listen", datagrams, templates: its file
                            Error::Conflict(reason) => template_error(&name, "proxy", reason),
                            Error::Template { key, reason, .. } => {
                                template_error(&name, &key, &reason)
                            }
                            e => stack_error(&name, e),
                        })?;
                    return Ok((name, Member::Proxied(Box::new(proxy))));
                }
                let p = launch.prepare_bound(b).map_err(|e| stack_error(&name, e))?;
                Ok((name, Member::Direct(Box::new(p))))
            })
            .collect()
    }
}

/// The error of a proxied daemon whose proxy ended by itself: its daemon's exit.
fn proxy_ended(proxy: &proxy::Running, ended: Result<proxy::Proxied, Error>) -> Error {
    match ended {
        Ok(proxy::Proxied {
            status: Some(status),
            stderr,
            ..
        }) => Error::Exited {
            program: proxy.program().to_owned(),
            status,
            when: "while the stack ran",
            stderr,
        },
        Ok(_) => Error::Conflict("its proxy stopped"),
        Err(e) => e,
    }
}

/// A daemon of a stack, ready to start.
enum Member {
    Direct(Box<Prepared>),
    Proxied(Box<proxy::Proxy>),
}

/// Where a running daemon's handle is, by the stack's order.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// In `daemons`.
    Direct(usize),
    /// In `proxies`.
    Proxied(usize),
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
    prepared: Vec<(String, Prepared)>,
) -> Vec<(String, Prepared, Result<crate::process::Child, Error>)> {
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
    /// Where each name's handle is.
    slots: Vec<Slot>,
    daemons: Vec<Launched>,
    /// The plans of the daemons that restart on exit.
    plans: Vec<Option<Prepared>>,
    /// The proxied daemons' proxies ([`Stack::proxy`]).
    proxies: Vec<proxy::Running>,
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
        match self.slot(name)? {
            Slot::Direct(i) => self.daemons.get(i),
            Slot::Proxied(_) => None,
        }
    }

    /// The proxy of daemon `name`, when it was added with [`Stack::proxy`].
    ///
    /// ```no_run
    /// let stack = sd_launch::Stack::new()
    ///     .proxy("cache", sd_launch::Launch::new("redis-server")
    ///         .args(["--port", "0", "--unixsocket", "${backend.path}"]))
    ///     .spawn()?;
    /// let redis = stack.proxy("cache").unwrap().local_addr(0);
    /// # let _ = redis;
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn proxy(&self, name: &str) -> Option<&proxy::Running> {
        match self.slot(name)? {
            Slot::Proxied(i) => self.proxies.get(i),
            Slot::Direct(_) => None,
        }
    }

    /// The sockets of daemon `name`, whichever way it runs (a proxied daemon's are its
    /// proxy's public sockets): what the other daemons' templates named.
    ///
    /// ```
    /// let stack = sd_launch::Stack::new().daemon("a", sd_launch::Launch::new("sleep").arg("30")).spawn()?;
    /// assert_eq!(stack.sockets("a").unwrap().len(), 1);
    /// assert!(stack.sockets("b").is_none());
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn sockets(&self, name: &str) -> Option<&[LaunchedSocket]> {
        Some(match self.slot(name)? {
            Slot::Direct(i) => self.daemons[i].sockets(),
            Slot::Proxied(i) => self.proxies[i].sockets(),
        })
    }

    /// The pid of daemon `name` (of a proxied daemon: the first one started).
    ///
    /// ```
    /// let stack = sd_launch::Stack::new().daemon("a", sd_launch::Launch::new("sleep").arg("30")).spawn()?;
    /// assert!(stack.pid("a").unwrap() > 1);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn pid(&self, name: &str) -> Option<u32> {
        Some(match self.slot(name)? {
            Slot::Direct(i) => self.daemons[i].pid(),
            Slot::Proxied(i) => self.proxies[i].daemon_pid(),
        })
    }

    /// The name of direct daemon `i` (its index in `daemons`).
    fn direct_name(&self, i: usize) -> &str {
        self.names
            .iter()
            .zip(&self.slots)
            .find(|(_, s)| matches!(s, Slot::Direct(j) if *j == i))
            .map_or("?", |(n, _)| n.as_str())
    }

    /// The name of proxied daemon `i` (its index in `proxies`).
    fn proxied_name(&self, i: usize) -> &str {
        self.names
            .iter()
            .zip(&self.slots)
            .find(|(_, s)| matches!(s, Slot::Proxied(j) if *j == i))
            .map_or("?", |(n, _)| n.as_str())
    }

    fn slot(&self, name: &str) -> Option<Slot> {
        let i = self.names.iter().position(|n| n == name)?;
        self.slots.get(i).copied()
    }

    /// Daemon `name`'s handle, mutably (to signal, wait or stop it).
    ///
    /// ```
    /// let mut stack = sd_launch::Stack::new().daemon("a", sd_launch::Launch::new("sleep").arg("30")).spawn()?;
    /// stack.get_mut("a").unwrap().kill()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Launched> {
        match self.slot(name)? {
            Slot::Direct(i) => self.daemons.get_mut(i),
            Slot::Proxied(_) => None,
        }
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
        for (name, slot) in self.names.iter().zip(&self.slots) {
            match *slot {
                Slot::Direct(i) => self.daemons[i]
                    .ensure_running()
                    .map_err(|e| stack_error(name, e))?,
                Slot::Proxied(i) if self.proxies[i].has_ended() => {
                    let ended = self.proxies[i].ended();
                    return Err(stack_error(name, proxy_ended(&self.proxies[i], ended)));
                }
                Slot::Proxied(_) => {}
            }
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
    // Every proxy is asked first, so that they all stop their daemons at the same time.
    for p in &running.proxies {
        p.stopper().stop();
    }
    crate::process::stop_all(
        running.daemons.iter_mut().map(Launched::child_mut),
        libc::SIGTERM,
        stop_timeout,
    );
    for p in &mut running.proxies {
        let _ = p.ended();
    }
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
        let name = self.running.direct_name(i).to_owned();
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
        for (i, p) in self.running.proxies.iter().enumerate() {
            watch.add(Key::Proxy(i), p.ended_fd());
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
                let name = self.running.direct_name(i).to_owned();
                let daemon = &mut self.running.daemons[i];
                let Some(status) = daemon.try_wait().map_err(os("wait for a daemon"))? else {
                    return Ok(None);
                };
                if self.running.plans[i].is_some() {
                    tracing::warn!("{name} (pid {pid}) exited ({status}); restarting");
                    self.schedule(i);
                    return Ok(None);
                }
                let error = daemon.exited(status, "while the stack ran");
                Ok(Some(Ended::Exited(stack_error(&name, error))))
            }
            Event::Readable(Key::Proxy(i)) => {
                // Its daemon exited (a proxied daemon restarts inside its proxy, if asked).
                let name = self.running.proxied_name(i).to_owned();
                let proxy = &mut self.running.proxies[i];
                let ended = proxy.ended();
                let error = proxy_ended(proxy, ended);
                Ok(Some(Ended::Exited(stack_error(&name, error))))
            }
            Event::Readable(_) => Ok(None),
            Event::Signal(sig) if STOPPING.contains(&sig) => Ok(Some(Ended::Signal(sig))),
            Event::Signal(sig) => {
                if FORWARDED.contains(&sig) {
                    for d in &self.running.daemons {
                        d.child().forward(sig).map_err(os("forward a signal"))?;
                    }
                    for p in &self.running.proxies {
                        p.signal(sig);
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
