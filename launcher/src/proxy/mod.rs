//! Proxy mode, systemd's `systemd-socket-proxyd` built in: for daemons that do not speak
//! `LISTEN_FDS` (PostgreSQL, Redis, memcached, nginx, ...). We bind the public sockets
//! (known before the daemon starts, as always), tell the daemon where to listen privately
//! with a template in its arguments or environment, and forward every client connection to
//! that backend as soon as it accepts. This is `sd-launch --proxy`.
//!
//! ```no_run
//! use sd_launch::Launch;
//! // The daemon listens where `${backend.path}` says: a Unix socket in a private directory.
//! let redis = Launch::new("redis-server")
//!     .args(["--port", "0", "--unixsocket", "${backend.path}", "--save", ""])
//!     .proxy()? // binds 127.0.0.1:0, the public socket; nothing runs yet
//!     .spawn()?; // starts redis and proxies, in a thread of ours, until dropped
//! let client = std::net::TcpStream::connect(redis.local_addr(0))?; // at once
//! # drop(client);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The backend, named `backend` in templates:
//! * `${backend.path}`: a Unix socket path in a new private directory (mode 0700, removed
//!   at the end). Preferred: nobody else can take it, nothing to race for.
//! * `${backend.port}`, `${backend.addr}`: a free loopback TCP port (`127.0.0.1:PORT`),
//!   for daemons without Unix sockets. The port is free when chosen, but another process
//!   could take it before the daemon binds it: a daemon that exits before it was ever
//!   reached, saying "address in use" on stderr (or with its port taken now), is started
//!   again on a new port, up to 5 times, while its clients wait. (A process that listens on
//!   the taken port would get the clients instead: prefer the Unix backend.)
//!
//! A daemon told neither is an [`Error::Conflict`] (exit 2: "the daemon is never told where
//! to listen"), and so is a daemon told both.
//!
//! How connections are served (one thread, the supervisor's loop, for every connection):
//! * Each connection is accepted at once and connected to the backend with a non-blocking
//!   `connect`. While the backend is not listening yet (no socket file: `ENOENT`; nobody
//!   listening: `ECONNREFUSED`; backlog full: `EAGAIN`) connections wait, in order. For a
//!   Unix backend the kernel says when the socket file appears (inotify on the private
//!   directory), and they are connected then; otherwise (a TCP backend, or a socket bound
//!   but not listening yet) the first is retried on a deadline of the loop, from 1 ms
//!   doubling to 5 ms (the kernel has no "someone listens on this port now" event). No
//!   client sees a refusal while the daemon starts.
//! * A daemon launched with a readiness wait ([`Launch::wait_until`], `--ready`,
//!   `--ready-when`) takes no connection before it is ready (they wait), and
//!   [`Proxy::spawn`] (and `sd-launch --proxy`) return only then. For a daemon that
//!   listens before it can serve (PostgreSQL answers "the database system is starting
//!   up"): [`Wait::Notify`] (`--ready`), its `READY=1` on a `NOTIFY_SOCKET` of its own;
//!   [`Wait::Http`] asks `GET PATH` of the backend; [`Wait::Log`] reads its output; and
//!   [`Wait::Accepted`] (`--ready-when=accepted`) means "it listens on its backend", seen
//!   in the kernel's socket tables. A daemon that exits first or is not ready in time
//!   ends serving with the error ([`Error::Exited`], [`Error::ReadyTimeout`]).
//! * A connection the backend has not accepted within the
//!   [connect timeout](Options::connect_timeout) (default [`DEFAULT_CONNECT_TIMEOUT`], 30 s)
//!   is closed, and the log says why, with the end of the daemon's stderr.
//! * The connections' sockets stay in one `epoll` set of the loop (a supervisor `Set`), each waited
//!   for as its flows want (readable while its peer has room, writable while bytes wait
//!   for it), changed only when that changes: the wait does not grow with the number of
//!   connections, and an event says which socket is ready, for what, so that only that
//!   direction moves: one read, and one write of what it read.
//! * Bytes move both ways through a 64 KiB scratch buffer (shared: one thread), sent on as
//!   soon as read, so that a small message (a Redis `PING`, an HTTP request) costs two
//!   syscalls; only what the peer did not take is kept, per direction. A direction that
//!   reads 16 KiB or more at once is a bulk transfer: it moves on with `splice(2)` through
//!   a pipe of its own (zero-copy). A side is only read while its peer has room
//!   (backpressure); an end (`EOF`) is passed on as `shutdown(SHUT_WR)` (half-close); an
//!   error on either side closes both.
//! * The daemon is supervised as in the foreground: `SIGINT` and `SIGTERM` stop serving
//!   (the listeners close, the daemon gets the signal, and `SIGKILL` after the
//!   [stop timeout](Options::stop_timeout)); `SIGHUP`, `SIGQUIT`, `SIGUSR1` and `SIGUSR2`
//!   are forwarded to it. When the daemon exits, serving ends: connections are closed and
//!   the public sockets with them, so clients are refused at once instead of hanging.
//! * Restarts ([`Options::restart_on_hup`], `sd-launch --proxy --restart`; [`Running::restart`])
//!   are invisible to clients: the new daemon is told a new backend (the next path in the
//!   private directory, or a new port) and takes the new connections once it is ready by
//!   its wait, or without one once the kernel's tables show it listening there (no probe
//!   connection: a daemon never sees a client that closes at once). The old one gets `SIGTERM` only when its last connection is
//!   done (so none it has not accepted yet is reset), or after the stop timeout at the
//!   latest, and `SIGKILL` a stop timeout later. A new daemon that exits first, or is not
//!   ready within its wait's timeout (without one: does not listen within the connect
//!   timeout), is stopped, and the old one serves on.
//! * With [`Options::restart_on_exit`] (`--restart=on-exit`) a daemon that exits, or is
//!   not ready in time, is started again on a new backend after a backoff, while the
//!   public sockets stay open and new connections wait. Not the first daemon of a launch
//!   with a readiness wait, before it was ever ready: that is a start that failed, an
//!   error at once (a command that never works must not loop quietly).
//! * Streams only: a datagram public socket is an [`Error::Conflict`] (datagrams have no
//!   connection to forward).

mod flow;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::accept::{AcceptFailure, BACKOFF, Stopper, accept_error, classify};
use crate::error::Error;
use crate::launch::{Launch, Prepared};
use crate::launched::Launched;
use crate::sockets::{
    Address, BoundSockets, CreatedPath, LaunchedSocket, SocketKind, SocketSet, SocketSpec,
    Transport,
};
use crate::supervisor::ready::{Probes, Strategy};
use crate::supervisor::{
    DEFAULT_STOP_TIMEOUT, Event, FIRST_BACKOFF, FORWARDED, Interest, Key, MAX_BACKOFF, Policy,
    Ready, Set, Signals, Wait, Watch, run,
};
use crate::template::Addresses;

use flow::Flow;

/// How long a connection waits for the backend to accept it, by default.
///
/// ```
/// assert_eq!(sd_launch::proxy::DEFAULT_CONNECT_TIMEOUT.as_secs(), 30);
/// ```
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of the backend in templates: `${backend.path}`, `${backend.port}`.
///
/// ```
/// assert_eq!(sd_launch::proxy::BACKEND, "backend");
/// ```
pub const BACKEND: &str = "backend";

/// The byte on the stop channel that asks for a restart ([`Running::restart`]).
const RESTART: u8 = b'R';
/// With a signal number in the low bits: forward it to the daemon ([`Running::signal`]).
const SIGNAL: u8 = 0x80;

/// The first retry of a connection the backend refused (it is not listening yet).
const RETRY_FIRST: Duration = Duration::from_millis(1);
/// How many times a daemon is started again because its TCP port was taken.
const MAX_PORT_RETRIES: u32 = 5;

/// Retries double up to this: a daemon that listens is reached at most this late (sooner
/// than the 10 ms poll a test would write), for the cost of one refused connect per 5 ms
/// while it starts.
const RETRY_MAX: Duration = Duration::from_millis(5);

/// Where the daemon listens, privately.
///
/// ```
/// let proxy = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?;
/// assert!(matches!(proxy.backend(), sd_launch::proxy::Backend::Unix(_)));
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A Unix socket path in a private directory (`${backend.path}`).
    Unix(PathBuf),
    /// A loopback TCP address (`${backend.port}`, `${backend.addr}`).
    Tcp(SocketAddr),
}

/// What to listen on publicly and how to forward: the builder of a [`Proxy`].
///
/// ```
/// use std::time::Duration;
/// let daemon = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.port}"]);
/// let proxy = sd_launch::proxy::Options::new()
///     .listen_on("127.0.0.1:0")
///     .connect_timeout(Duration::from_secs(5))
///     .bind(daemon)?;
/// assert!(matches!(proxy.backend(), sd_launch::proxy::Backend::Tcp(a) if a.ip().is_loopback()));
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug)]
pub struct Options {
    sockets: SocketSet,
    connect_timeout: Duration,
    stop_timeout: Duration,
    restart_on_hup: bool,
    restart_on_exit: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options::new()
    }
}

impl Options {
    /// Defaults: listen on `127.0.0.1:0` unless told otherwise, [`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_STOP_TIMEOUT`].
    ///
    /// ```
    /// let proxy = sd_launch::proxy::Options::new()
    ///     .bind(sd_launch::Launch::new("sh").args(["-c", "sleep 1", "${backend.path}"]))?;
    /// assert!(proxy.local_addr(0).ip().is_loopback());
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn new() -> Options {
        Options {
            sockets: SocketSet::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            restart_on_hup: false,
            restart_on_exit: false,
        }
    }

    /// Listen publicly on `spec` (a stream socket).
    ///
    /// ```
    /// let options = sd_launch::proxy::Options::new().listen(sd_launch::SocketSpec::loopback());
    /// # let _ = options;
    /// ```
    pub fn listen(mut self, spec: SocketSpec) -> Options {
        self.sockets.listen(spec);
        self
    }

    /// Listen publicly on an address in `sd-launch -l` syntax.
    ///
    /// ```
    /// let options = sd_launch::proxy::Options::new().listen_on("127.0.0.1:0").listen_on("[::1]:0");
    /// # let _ = options;
    /// ```
    pub fn listen_on(mut self, address: &str) -> Options {
        self.sockets.listen_on(address);
        self
    }

    /// Listen backlog of the public sockets (default: the kernel's maximum).
    ///
    /// ```
    /// let options = sd_launch::proxy::Options::new().backlog(128);
    /// # let _ = options;
    /// ```
    pub fn backlog(mut self, backlog: i32) -> Options {
        self.sockets.backlog(backlog);
        self
    }

    /// Mode of created public Unix socket files (default `0o600`).
    ///
    /// ```
    /// let options = sd_launch::proxy::Options::new().socket_mode(0o660);
    /// # let _ = options;
    /// ```
    pub fn socket_mode(mut self, mode: u32) -> Options {
        self.sockets.socket_mode(mode);
        self
    }

    /// How long a connection waits for the backend to accept it before it is closed
    /// (default [`DEFAULT_CONNECT_TIMEOUT`]).
    ///
    /// ```
    /// let options = sd_launch::proxy::Options::new().connect_timeout(std::time::Duration::from_secs(2));
    /// # let _ = options;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Options {
        self.connect_timeout = timeout;
        self
    }

    /// How long the daemon gets to exit once serving stops, before `SIGKILL` (default
    /// [`DEFAULT_STOP_TIMEOUT`]).
    ///
    /// ```
    /// let options = sd_launch::proxy::Options::new().stop_timeout(std::time::Duration::from_secs(1));
    /// # let _ = options;
    /// ```
    pub fn stop_timeout(mut self, timeout: Duration) -> Options {
        self.stop_timeout = timeout;
        self
    }

    /// Whether `SIGHUP` replaces the daemon (`sd-launch --proxy --restart`) instead of being
    /// forwarded to it (default: forwarded). The new daemon is told a new backend (a new
    /// path, or a new port); new connections go to it once it accepts one, and only then
    /// does the old one get `SIGTERM`, to finish its connections. If the new one exits or
    /// does not accept within the [connect timeout](Options::connect_timeout), it is
    /// stopped and the old one serves on. Clients never see the restart.
    ///
    /// ```
    /// let options = sd_launch::proxy::Options::new().restart_on_hup(true);
    /// # let _ = options;
    /// ```
    pub fn restart_on_hup(mut self, restart: bool) -> Options {
        self.restart_on_hup = restart;
        self
    }

    /// Whether a daemon that exits by itself is started again (`sd-launch --proxy
    /// --restart=on-exit`) instead of ending the serving (default: it ends it). The new one
    /// is told a new backend, after a pause of 100 ms doubling up to 10 s (back to 100 ms
    /// after a daemon that ran 10 s); meanwhile the public sockets stay open and new
    /// connections wait for it, as at the start. Connections the old one had are closed
    /// (it took their state with it). A first daemon launched with a readiness wait that
    /// exits before it was ever ready is not restarted: [`serve`](Proxy::serve) fails.
    ///
    /// ```
    /// let options = sd_launch::proxy::Options::new().restart_on_exit(true);
    /// # let _ = options;
    /// ```
    pub fn restart_on_exit(mut self, restart: bool) -> Options {
        self.restart_on_exit = restart;
        self
    }

    /// Bind the public sockets, choose the backend and expand `daemon`'s templates with it;
    /// nothing runs yet (clients that connect now wait in the backlog). The daemon gets no
    /// sockets of ours (no `LISTEN_FDS`): its own sockets, if it was given any, are ignored.
    ///
    /// ```
    /// use sd_launch::{proxy::Options, Error, Launch, SocketSpec, Transport};
    /// let err = Options::new().bind(Launch::new("redis-server")).unwrap_err();
    /// assert!(err.to_string().contains("never told where to listen"));
    /// assert_eq!(err.exit_code(), 2);
    /// let err = Options::new()
    ///     .listen(SocketSpec::loopback().transport(Transport::Datagram))
    ///     .bind(Launch::new("my-dns").arg("--port=${backend.port}"))
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Conflict(_)));
    /// ```
    pub fn bind(self, daemon: Launch) -> Result<Proxy, Error> {
        backend_kind(&daemon)?; // before anything is bound
        let specs = self.sockets.specs()?;
        if specs.iter().any(|spec| spec.transport != Transport::Stream) {
            return Err(datagrams());
        }
        let bound = self.sockets.clone().bind()?;
        self.with_bound(daemon, bound, Vec::new())
    }

    /// [`bind`](Options::bind) with the public sockets bound already, and the addresses of
    /// `peers` (other daemons, by name) for the daemon's templates: a stack's proxied daemon.
    pub(crate) fn with_bound(
        self,
        mut daemon: Launch,
        bound: BoundSockets,
        peers: Vec<(String, Vec<LaunchedSocket>)>,
    ) -> Result<Proxy, Error> {
        let kind = backend_kind(&daemon)?;
        let (fds, sockets, created) = bound.into_parts();
        if sockets
            .iter()
            .any(|s| !matches!(s.kind, SocketKind::Tcp | SocketKind::UnixStream))
        {
            return Err(datagrams());
        }
        drop(daemon.take_sockets());
        let template = daemon.no_pid(true);
        let dir = private_dir(kind)?;
        let appeared = dir.as_ref().map(|d| watch_dir(d.path())).transpose()?;
        let backend = backend_for(kind, dir.as_ref(), 0)?;
        let daemon = expand(&template, &backend, &peers)?;
        daemon.find_program()?;
        let mut listeners = Vec::with_capacity(sockets.len());
        for (fd, described) in fds.into_iter().zip(&sockets) {
            let socket = Socket::from(fd);
            let address = described
                .address
                .clone()
                .expect("a bound spec has an address");
            socket
                .set_nonblocking(true)
                .map_err(|e| accept_error("make non-blocking", &address, e))?;
            listeners.push((socket, address));
        }
        let (stop_rx, stop_tx) = UnixStream::pair()
            .and_then(|(rx, tx)| {
                rx.set_nonblocking(true)?;
                tx.set_nonblocking(true)?;
                Ok((rx, tx))
            })
            .map_err(|source| Error::Os {
                context: "create the stop channel of the proxy",
                source,
            })?;
        Ok(Proxy {
            listeners,
            created,
            sockets,
            backend,
            kind,
            _dir: dir,
            appeared,
            template,
            peers,
            daemon,
            restart_on_hup: self.restart_on_hup,
            restart_on_exit: self.restart_on_exit,
            connect_timeout: self.connect_timeout,
            stop_timeout: self.stop_timeout,
            stop_rx,
            stop_tx: Arc::new(stop_tx),
        })
    }
}

fn datagrams() -> Error {
    Error::Conflict(
        "proxy mode forwards stream connections (TCP and Unix): datagram and seqpacket \
         sockets have none it can forward",
    )
}

impl Launch {
    /// A [`Proxy`] in front of this daemon: its sockets ([`listen`](Launch::listen),
    /// default `127.0.0.1:0`) become the public sockets, and its templates name the
    /// backend (see the [`proxy`](crate::proxy) module).
    ///
    /// ```
    /// let proxy = sd_launch::Launch::new("sh")
    ///     .args(["-c", "sleep 30", "${backend.path}"])
    ///     .listen_on("127.0.0.1:0")
    ///     .proxy()?;
    /// assert_ne!(proxy.local_addr(0).port(), 0);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn proxy(mut self) -> Result<Proxy, Error> {
        let sockets = self.take_sockets();
        Options {
            sockets,
            ..Options::new()
        }
        .bind(self)
    }
}

/// The public sockets and the daemon behind them, ready to [`serve`](Proxy::serve) (or
/// [`spawn`](Proxy::spawn)). Dropping it closes the sockets and removes what it created.
///
/// ```
/// let proxy = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?;
/// let _client = std::net::TcpStream::connect(proxy.local_addr(0))?; // waits in the backlog
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<(Socket, Address)>,
    created: Vec<CreatedPath>,
    sockets: Vec<LaunchedSocket>,
    backend: Backend,
    kind: SocketKind,
    /// The private directory of a Unix backend, removed last.
    _dir: Option<tempfile::TempDir>,
    /// Readable when a file appears in it (inotify): a daemon bound its backend socket.
    appeared: Option<OwnedFd>,
    /// The daemon with its templates, for each new backend of a restart.
    template: Launch,
    /// The other daemons' sockets, by name, for its templates (a stack's).
    peers: Vec<(String, Vec<LaunchedSocket>)>,
    /// The first daemon, told [`Proxy::backend`].
    daemon: Launch,
    restart_on_hup: bool,
    restart_on_exit: bool,
    connect_timeout: Duration,
    stop_timeout: Duration,
    stop_rx: UnixStream,
    stop_tx: Arc<UnixStream>,
}

/// How serving went, once [`Proxy::serve`] returns.
///
/// ```
/// let proxied = sd_launch::proxy::Proxied::default();
/// assert_eq!((proxied.connections, proxied.timed_out), (0, 0));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxied {
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed because the backend did not accept them in time, or refused
    /// them for another reason than not listening yet.
    pub timed_out: u64,
    /// The daemon's status, when its exit ended serving.
    pub status: Option<ExitStatus>,
    /// The signal that stopped serving (`SIGINT`, `SIGTERM`), if one did.
    pub signal: Option<i32>,
    /// The end of the daemon's captured stderr, when its exit ended serving.
    pub stderr: Option<String>,
}

impl Proxy {
    /// The public sockets, in the order given (`fd` is meaningless here: the daemon gets
    /// none of them).
    ///
    /// ```
    /// let proxy = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?;
    /// assert_eq!(proxy.sockets()[0].kind, sd_launch::SocketKind::Tcp);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn sockets(&self) -> &[LaunchedSocket] {
        &self.sockets
    }

    /// The IP address and port of public socket `index`.
    ///
    /// # Panics
    /// If there is no such socket or it is not TCP: a test's mistake.
    ///
    /// ```
    /// let proxy = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?;
    /// assert_ne!(proxy.local_addr(0).port(), 0);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn local_addr(&self, index: usize) -> SocketAddr {
        crate::launched::inet_addr(&self.sockets, index)
    }

    /// Where the daemon is told to listen.
    ///
    /// ```
    /// let proxy = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?;
    /// let sd_launch::proxy::Backend::Unix(path) = proxy.backend() else { unreachable!() };
    /// assert!(path.ends_with("backend.sock"));
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// A handle that stops [`serve`](Proxy::serve) from another thread.
    ///
    /// ```
    /// let proxy = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?;
    /// proxy.stopper().stop(); // before serving: serve stops the daemon it started, returns
    /// let proxied = proxy.serve(None)?;
    /// assert_eq!(proxied.connections, 0);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.stop_tx))
    }

    /// Start the daemon and forward connections to it until it exits, a [`Stopper`] or
    /// (with `signals`, blocked in this thread) `SIGINT`/`SIGTERM` stops it; then close
    /// the public sockets and every connection, and stop the daemon if it still runs.
    ///
    /// ```
    /// let proxy = sd_launch::Launch::new("sh").args(["-c", "exit 3", "${backend.path}"]).proxy()?;
    /// let proxied = proxy.serve(None)?; // the daemon's exit ends it
    /// assert_eq!(proxied.status.and_then(|s| s.code()), Some(3));
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn serve(self, signals: Option<&Signals>) -> Result<Proxied, Error> {
        self.serve_with(signals, |_| {})
    }

    /// [`serve`](Proxy::serve), calling `ready` with the daemon's pid once it is ready: at
    /// once when it was launched without a readiness wait; else when its
    /// [wait](Launch::wait_until) says so, where [`Wait::Accepted`]
    /// means "it listens on its backend" and [`Wait::Http`] asks the
    /// backend. Until then connections wait. A daemon that exits first, or is not ready
    /// within the wait's timeout, ends serving with the error ([`Error::Exited`],
    /// [`Error::ReadyTimeout`]), and `ready` is never called.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sd_launch::{Error, Launch, Wait};
    /// let proxy = Launch::new("sh")
    ///     .args(["-c", "echo starting; exit 1", "${backend.path}"])
    ///     .wait_until(Wait::accepted(0), Duration::from_secs(10))
    ///     .proxy()?;
    /// let err = proxy.serve_with(None, |_| unreachable!("never ready")).unwrap_err();
    /// assert!(matches!(err, Error::Exited { .. }), "{err}");
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn serve_with(
        mut self,
        signals: Option<&Signals>,
        ready: impl FnOnce(u32),
    ) -> Result<Proxied, Error> {
        let set = Set::new().map_err(|source| Error::Os {
            context: "create the connections' epoll set",
            source,
        })?;
        let mut first = self.start(self.daemon.clone(), self.backend.clone(), 0, false)?;
        let mut ready: Option<Box<dyn FnOnce(u32) + '_>> = Some(Box::new(ready));
        if let Err(e) = first.look(false) {
            let _ = first.daemon.kill();
            return Err(e);
        }
        if first.gate.is_none() {
            (ready.take().expect("not called yet"))(first.daemon.pid());
        }
        let mut policy = Forward {
            proxy: &self,
            current: first,
            next: None,
            draining: Vec::new(),
            generations: 0,
            port_retries: 0,
            conns: HashMap::new(),
            unopened: BTreeSet::new(),
            waiting: VecDeque::new(),
            retry_at: None,
            delay: RETRY_FIRST,
            paused_until: None,
            restart_at: None,
            backoff: FIRST_BACKOFF,
            ready,
            proxied: Proxied::default(),
            set,
            scratch: flow::scratch(),
        };
        let result = run(signals, &mut policy);
        let Forward {
            current,
            next,
            draining,
            conns,
            proxied,
            ..
        } = policy;
        let stderr = match result {
            Ok(End::Exited(_)) => current.daemon.stderr_tail(),
            _ => None,
        };
        // Clients first: a connection closed now is refused at once, not left hanging.
        drop(conns);
        self.listeners.clear();
        let mut daemons: Vec<Generation> = std::iter::once(current)
            .chain(next)
            .chain(draining.into_iter().map(|d| d.generation))
            .collect();
        let (status, signal) = match result {
            Ok(End::Exited(status)) => (Some(status), None),
            Ok(End::Signal(sig)) => (None, Some(sig)),
            Ok(End::Stopped) => (None, None),
            Err(e) => {
                for g in &mut daemons {
                    let _ = g.daemon.kill();
                }
                return Err(e);
            }
        };
        // Those still running (all of them, or the old and new ones of a restart).
        crate::process::stop_all(
            daemons.iter_mut().map(|g| g.daemon.child_mut()),
            signal.unwrap_or(libc::SIGTERM),
            self.stop_timeout,
        );
        drop(std::mem::take(&mut self.created));
        Ok(Proxied {
            status,
            signal,
            stderr,
            ..proxied
        })
    }

    /// Start `launch`, told `backend`. Its gate is its launch's readiness wait; a
    /// `replacing` daemon (the new one of a `SIGHUP` restart) without a wait must be seen
    /// listening on its backend within the connect timeout before it takes over.
    fn start(
        &self,
        launch: Launch,
        backend: Backend,
        number: u64,
        replacing: bool,
    ) -> Result<Generation, Error> {
        let mut prepared = launch.prepare_bound(None)?;
        let (child, _) = prepared.spawn_child(false)?;
        prepared.last_child(); // each daemon has a plan of its own (its own backend)
        let daemon = prepared.child(child);
        tracing::debug!(
            "proxy: {} started as pid {}, backend {backend:?}",
            daemon.program(),
            daemon.pid(),
        );
        let socket = backend_socket(&backend);
        let address = socket.address.clone().expect("the backend has an address");
        let probes = probes(&prepared, &daemon, &socket);
        let gate = match prepared.ready.clone() {
            Some((wait, timeout)) => {
                let strategy = match &wait {
                    Wait::Accepted(_) => Ok(Strategy::listens(address)),
                    Wait::Http { path, .. } => Strategy::new(&Wait::http(path.clone()), probes),
                    other => Strategy::new(other, probes),
                };
                let what = match &wait {
                    Wait::Accepted(_) => "listen on its backend".to_owned(),
                    Wait::Http { path, .. } => format!("answer GET {path} with 2xx on its backend"),
                    other => other.describe(),
                };
                Some(Gate {
                    strategy: strategy?,
                    deadline: Instant::now() + timeout,
                    timeout,
                    what,
                })
            }
            None if replacing => Some(Gate {
                strategy: Strategy::listens(address),
                deadline: Instant::now() + self.connect_timeout,
                timeout: self.connect_timeout,
                what: "listen on its backend".to_owned(),
            }),
            None => None,
        };
        Ok(Generation {
            number,
            daemon,
            backend,
            socket,
            conns: 0,
            served: false,
            started: Instant::now(),
            gate,
            prepared,
        })
    }

    /// [`serve`](Proxy::serve) in a thread of its own; returns once the daemon runs, or,
    /// launched with a readiness wait, once it is ready (else the error: it exited first,
    /// or was not ready in time). The handle stops everything when dropped. For tests: no
    /// signals are handled.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?.spawn()?;
    /// assert!(running.daemon_pid() > 1);
    /// let proxied = running.stop()?;
    /// assert_eq!(proxied.connections, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn(self) -> Result<Running, Error> {
        self.start_serving()?.ready()
    }

    /// The first half of [`spawn`](Proxy::spawn): the thread serves (its daemon starts);
    /// [`Starting::ready`] waits until the daemon is ready. A stack starts all its daemons
    /// so, then waits for them all.
    pub(crate) fn start_serving(self) -> Result<Starting, Error> {
        let sockets = self.sockets.clone();
        let backend = self.backend.clone();
        let program = self.daemon.program_name();
        let stopper = self.stopper();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("sd-launch-proxy".into())
            .spawn(move || {
                self.serve_with(None, |pid| {
                    let _ = tx.send(pid);
                })
            })
            .map_err(|source| Error::Os {
                context: "start the proxy thread",
                source,
            })?;
        Ok(Starting {
            running: Running {
                sockets,
                backend,
                program,
                pid: 0,
                stopper,
                thread: Some(thread),
            },
            rx,
        })
    }
}

/// A proxy whose thread serves, until its daemon is ready ([`Proxy::start_serving`]).
/// Dropped, it stops everything.
pub(crate) struct Starting {
    running: Running,
    rx: std::sync::mpsc::Receiver<u32>,
}

impl Starting {
    /// Wait until the daemon is ready (it runs, without a readiness wait); the error of a
    /// daemon that exited first or was not ready in time.
    pub(crate) fn ready(mut self) -> Result<Running, Error> {
        match self.rx.recv() {
            Ok(pid) => {
                self.running.pid = pid;
                Ok(self.running)
            }
            // The thread ended before the daemon was ready: its error says why.
            Err(_) => Err(self.running.ended().err().unwrap_or(Error::Conflict(
                "the proxy thread ended before its daemon was ready",
            ))),
        }
    }
}

/// A proxy serving in a thread ([`Proxy::spawn`]): dropping it stops the daemon and closes
/// everything.
///
/// ```
/// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?.spawn()?;
/// let _client = std::net::TcpStream::connect(running.local_addr(0))?;
/// drop(running); // the daemon is stopped, the client's connection closed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Running {
    sockets: Vec<LaunchedSocket>,
    backend: Backend,
    program: String,
    pid: u32,
    stopper: Stopper,
    thread: Option<std::thread::JoinHandle<Result<Proxied, Error>>>,
}

impl Running {
    /// The public sockets.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?.spawn()?;
    /// assert_eq!(running.sockets().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sockets(&self) -> &[LaunchedSocket] {
        &self.sockets
    }

    /// The IP address and port of public socket `index` (panics if it is not TCP).
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?.spawn()?;
    /// assert!(running.local_addr(0).ip().is_loopback());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn local_addr(&self, index: usize) -> SocketAddr {
        crate::launched::inet_addr(&self.sockets, index)
    }

    /// Where the daemon was told to listen.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.port}"]).proxy()?.spawn()?;
    /// assert!(matches!(running.backend(), sd_launch::proxy::Backend::Tcp(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The daemon's pid.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?.spawn()?;
    /// assert_ne!(running.daemon_pid(), std::process::id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn daemon_pid(&self) -> u32 {
        self.pid
    }

    /// Replace the daemon, as `SIGHUP` does with
    /// [`restart_on_hup`](Options::restart_on_hup): a new one on a new backend takes the new
    /// connections once it accepts one, then the old one gets `SIGTERM`. Never blocks.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?.spawn()?;
    /// running.restart(); // this one never accepts: the old one serves on
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restart(&self) {
        // A full buffer already holds requests: then this one is dropped.
        let _ = io::Write::write(&mut &*self.stopper.0, &[RESTART]);
    }

    /// Send `signal` to the daemon (the current one, after restarts), if it is one of
    /// [`FORWARDED`] (`SIGHUP`, `SIGQUIT`, `SIGUSR1`, `SIGUSR2`); others are ignored.
    /// Never blocks.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh")
    ///     .args(["-c", "trap 'exit 7' USR1; while :; do sleep 0.01; done", "${backend.path}"])
    ///     .proxy()?
    ///     .spawn()?;
    /// std::thread::sleep(std::time::Duration::from_millis(200)); // the trap is set
    /// running.signal(libc::SIGUSR1);
    /// assert_eq!(running.wait()?.status.and_then(|s| s.code()), Some(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn signal(&self, signal: i32) {
        if let Ok(byte) = u8::try_from(signal)
            && FORWARDED.contains(&signal)
        {
            let _ = io::Write::write(&mut &*self.stopper.0, &[SIGNAL | byte]);
        }
    }

    /// The daemon's program, for messages.
    pub(crate) fn program(&self) -> &str {
        &self.program
    }

    /// Readable (at its end) once serving has ended: the proxy's end of the channel is
    /// closed.
    pub(crate) fn ended_fd(&self) -> std::os::fd::RawFd {
        self.stopper.0.as_raw_fd()
    }

    /// Whether serving has ended (its thread is done).
    pub(crate) fn has_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// A handle that stops the proxy (as dropping it does), without waiting.
    pub(crate) fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// How serving ended, once it has (else waits for it).
    pub(crate) fn ended(&mut self) -> Result<Proxied, Error> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or(Err(Error::Conflict("the proxy thread panicked"))),
            None => Ok(Proxied::default()),
        }
    }

    /// Stop serving (the daemon gets `SIGTERM`) and return how it went.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?.spawn()?;
    /// assert_eq!(running.stop()?.status, None); // stopped by us, not by its own exit
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop(mut self) -> Result<Proxied, Error> {
        self.finish()
    }

    /// Wait until serving ends by itself (the daemon exits), and return how it went.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "exit 0", "${backend.path}"]).proxy()?.spawn()?;
    /// assert!(running.wait()?.status.is_some_and(|s| s.success()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(mut self) -> Result<Proxied, Error> {
        self.ended()
    }

    fn finish(&mut self) -> Result<Proxied, Error> {
        self.stopper.stop();
        self.ended()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Which backend the daemon's templates ask for.
fn backend_kind(daemon: &Launch) -> Result<SocketKind, Error> {
    let (mut unix, mut tcp) = (false, false);
    for text in daemon.template_texts() {
        let text = text.as_encoded_bytes();
        let mut rest = text;
        let opening = b"${backend.";
        while let Some(at) = find(rest, opening) {
            let after = &rest[at + opening.len()..];
            let Some(end) = after.iter().position(|&b| b == b'}') else {
                break;
            };
            let inner = &after[..end];
            let field = inner.rsplit(|&b| b == b'.').next().unwrap_or(inner);
            match field {
                b"path" => unix = true,
                b"port" | b"addr" => tcp = true,
                _ => {}
            }
            rest = &after[end..];
        }
    }
    match (unix, tcp) {
        (true, false) => Ok(SocketKind::UnixStream),
        (false, true) => Ok(SocketKind::Tcp),
        (true, true) => Err(Error::Conflict(
            "the daemon is told both ${backend.path} (a Unix socket) and ${backend.port} or \
             ${backend.addr} (a TCP port): it has one backend, choose one",
        )),
        (false, false) => Err(Error::Conflict(
            "the daemon is never told where to listen: put ${backend.path} (a Unix socket \
             path, preferred) or ${backend.port} / ${backend.addr} (a loopback TCP port) in \
             its arguments or environment",
        )),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An inotify fd that is readable when a file is created in (or moved into) `dir`: for a
/// Unix backend, the kernel's event for "the daemon bound its socket", so that waiting
/// connections try at once instead of on their next retry. (`listen` follows `bind`: a
/// connection that comes in between is refused and retried 1 ms later.)
fn watch_dir(dir: &std::path::Path) -> Result<OwnedFd, Error> {
    use std::os::unix::ffi::OsStrExt;
    let os = |source| Error::Os {
        context: "watch the backend's directory",
        source,
    };
    // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(os(io::Error::last_os_error()));
    }
    // SAFETY: inotify_init1 returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| os(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `fd` is ours.
    let wd = unsafe {
        libc::inotify_add_watch(
            fd.as_raw_fd(),
            path.as_ptr(),
            libc::IN_CREATE | libc::IN_MOVED_TO,
        )
    };
    if wd < 0 {
        return Err(os(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Read (and forget) every pending event of an inotify fd.
fn drain_events(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        // SAFETY: read into our buffer of `buf.len()` bytes; the fd is non-blocking.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
    }
}

/// The private directory of a Unix backend (mode 0700: only we, and the daemon, our user,
/// can reach the sockets inside).
fn private_dir(kind: SocketKind) -> Result<Option<tempfile::TempDir>, Error> {
    if kind != SocketKind::UnixStream {
        return Ok(None);
    }
    tempfile::Builder::new()
        .prefix("sd-launch-proxy.")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map(Some)
        .map_err(|source| Error::Os {
            context: "create the private directory of the backend socket",
            source,
        })
}

/// The backend of daemon number `generation` (0, then one more per restart).
fn backend_for(
    kind: SocketKind,
    dir: Option<&tempfile::TempDir>,
    generation: u64,
) -> Result<Backend, Error> {
    if let Some(dir) = dir.filter(|_| kind == SocketKind::UnixStream) {
        let name = match generation {
            0 => "backend.sock".to_owned(),
            n => format!("backend.{n}.sock"),
        };
        return Ok(Backend::Unix(dir.path().join(name)));
    }
    // A port the kernel says is free now; the daemon binds it a moment later.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(Backend::Tcp)
        .map_err(|source| Error::Os {
            context: "find a free loopback port for the backend",
            source,
        })
}

/// `template` told `backend`: its templates expanded.
/// The backend as a socket, named [`BACKEND`] (no fd of ours): what its templates and an
/// HTTP readiness check use.
fn backend_socket(backend: &Backend) -> LaunchedSocket {
    let (kind, address) = match backend {
        Backend::Unix(path) => (SocketKind::UnixStream, Address::Unix(path.clone())),
        Backend::Tcp(addr) => (SocketKind::Tcp, Address::Inet(*addr)),
    };
    LaunchedSocket {
        fd: -1,
        name: Some(BACKEND.into()),
        kind,
        address: Some(address),
    }
}

fn expand(
    template: &Launch,
    backend: &Backend,
    peers: &[(String, Vec<LaunchedSocket>)],
) -> Result<Launch, Error> {
    let described = [backend_socket(backend)];
    let mut addresses = Addresses::default();
    addresses.add(BACKEND, &described);
    for (name, sockets) in peers {
        addresses.add(name, sockets);
    }
    let mut daemon = template.clone();
    daemon
        .expand_templates(&addresses)
        .map_err(|(key, reason)| Error::Template {
            daemon: template.program_name(),
            key,
            reason,
        })?;
    Ok(daemon)
}

/// Why serving ended.
enum End {
    Exited(ExitStatus),
    Signal(i32),
    Stopped,
}

/// Where one connection is.
#[derive(Debug)]
enum State {
    /// Waiting for the backend to listen (in [`Forward::waiting`]).
    Waiting,
    /// A non-blocking `connect` is under way (its socket waited for as said, in the set).
    Connecting(Socket, Interest),
    /// Connected: bytes flow both ways.
    Open {
        backend: Socket,
        /// Client to backend.
        up: Flow,
        /// Backend to client.
        down: Flow,
        /// What the client's socket and the backend's are waited for, in the set.
        watched: [Interest; 2],
    },
}

/// Which socket of a connection an event is for: the low bit of its token in the set.
const CLIENT_SIDE: u64 = 0;
const BACKEND_SIDE: u64 = 1;

/// The token of socket `side` of connection `n` in the set.
fn token(n: u64, side: u64) -> u64 {
    n << 1 | side
}

#[derive(Debug)]
struct Conn {
    client: Socket,
    since: Instant,
    state: State,
    /// The daemon whose backend it is connected (or connecting) to.
    generation: Option<u64>,
}

/// What a connection attempt says.
enum Attempt {
    /// Connected, or under way.
    Started(State),
    /// The backend is not listening yet (or its backlog is full): try again later.
    NotYet(io::Error),
    /// Something else: this connection cannot be served.
    Failed(io::Error),
}

/// One daemon and the backend it was told.
struct Generation {
    /// 0 for the first daemon, then one more per restart.
    number: u64,
    daemon: Launched,
    backend: Backend,
    /// The backend as a socket (what an HTTP readiness check asks).
    socket: LaunchedSocket,
    /// Connections to its backend, open or under way.
    conns: usize,
    /// A connection reached it: it listened where it was told.
    served: bool,
    started: Instant,
    /// Until it is ready: connections wait (none while a gate is shut).
    gate: Option<Gate>,
    /// Its plan (its output capture and notification socket live as long as it).
    prepared: Prepared,
}

/// Until a daemon is ready: the check of its launch's wait (the readiness strategies of
/// the supervisor), and the time it has.
struct Gate {
    strategy: Strategy,
    deadline: Instant,
    timeout: Duration,
    /// What it waits for, for messages ("send READY=1").
    what: String,
}

/// What a daemon's readiness check looks at: its notification socket, its captured output,
/// its backend (no copies of listening sockets: it has none of ours).
fn probes<'a>(
    prepared: &'a Prepared,
    daemon: &'a Launched,
    backend: &'a LaunchedSocket,
) -> Probes<'a> {
    Probes {
        notify: prepared.notify.as_ref(),
        capture: daemon.capture(),
        sockets: std::slice::from_ref(backend),
        listeners: &[],
    }
}

impl Generation {
    /// Look whether it is ready now (`readable`: its check's fd woke the loop); opens the
    /// gate when it is.
    fn look(&mut self, readable: bool) -> Result<(), Error> {
        let Generation {
            daemon,
            socket,
            gate,
            prepared,
            ..
        } = self;
        let Some(g) = gate else {
            return Ok(());
        };
        if g.strategy
            .check(&probes(prepared, daemon, socket), daemon.pid(), readable)?
        {
            tracing::debug!(
                "{} (pid {}) is ready: it did {}",
                daemon.program(),
                daemon.pid(),
                g.what
            );
            *gate = None;
        }
        Ok(())
    }

    fn watch(&self, key: Key, watch: &mut Watch) {
        if let Some(g) = &self.gate {
            let probes = probes(&self.prepared, &self.daemon, &self.socket);
            g.strategy.watch(&probes, key, watch);
        }
    }

    /// When its gate wants a look, or gives up.
    fn next(&self) -> Option<Instant> {
        let g = self.gate.as_ref()?;
        Some(g.strategy.next().map_or(g.deadline, |t| t.min(g.deadline)))
    }

    /// The error of a daemon not ready by its deadline.
    fn timed_out(&self) -> Option<Error> {
        let g = self
            .gate
            .as_ref()
            .filter(|g| Instant::now() >= g.deadline)?;
        Some(Error::ReadyTimeout {
            program: self.daemon.program().to_owned(),
            what: g.what.clone(),
            timeout: g.timeout,
            stderr: self.daemon.stderr_tail(),
        })
    }
}

/// An old daemon after a restart. It gets `SIGTERM` once its last connection is closed
/// (so that none it has not accepted yet is reset), or at `at` at the latest; then
/// `SIGKILL` if it still runs a stop timeout later.
struct Draining {
    generation: Generation,
    at: Instant,
    termed: bool,
}

impl Draining {
    fn term(&mut self, stop_timeout: Duration) {
        let _ = self.generation.daemon.child().forward(libc::SIGTERM);
        tracing::info!(
            "the old daemon (pid {}) got SIGTERM ({} connection(s) left)",
            self.generation.daemon.pid(),
            self.generation.conns
        );
        self.termed = true;
        self.at = Instant::now() + stop_timeout;
    }
}

/// The proxy policy of the supervisor's loop.
struct Forward<'a, 'r> {
    proxy: &'a Proxy,
    /// The daemon new connections go to.
    current: Generation,
    /// The new daemon of a `SIGHUP` restart, until its gate opens.
    next: Option<Generation>,
    /// Old daemons finishing their connections.
    draining: Vec<Draining>,
    /// Restarts so far.
    generations: u64,
    /// Daemons started again because another process took their TCP port first.
    port_retries: u32,
    conns: HashMap<u64, Conn>,
    /// The connections not connected to the backend yet, oldest first (numbers grow with
    /// the time of accept): the earliest connect timeout is the first one's.
    unopened: BTreeSet<u64>,
    /// Connections waiting for the backend, oldest first.
    waiting: VecDeque<u64>,
    /// When to try the waiting connections again (`None`: the backend is believed up).
    retry_at: Option<Instant>,
    delay: Duration,
    /// Accepting pauses after `accept` failed for want of fds or memory.
    paused_until: Option<Instant>,
    /// The current daemon exited and is started again then ([`Options::restart_on_exit`]).
    restart_at: Option<Instant>,
    backoff: Duration,
    /// Told the first daemon's pid once it is ready.
    ready: Option<Box<dyn FnOnce(u32) + 'r>>,
    proxied: Proxied,
    /// The sockets of the connections, waited for as their flows want.
    set: Set,
    /// What copying flows read into ([`flow`]).
    scratch: Box<[u8]>,
}

impl Forward<'_, '_> {
    fn accept_from(&mut self, i: usize) -> Result<(), Error> {
        let (listener, address) = &self.proxy.listeners[i];
        loop {
            let (client, _peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) => match classify(&e) {
                    AcceptFailure::Drained => break,
                    AcceptFailure::ThisConnection => continue,
                    AcceptFailure::Resources => {
                        tracing::warn!("accept on {address}: {e}; pausing");
                        self.paused_until = Some(Instant::now() + BACKOFF);
                        break;
                    }
                    AcceptFailure::Fatal => {
                        return Err(accept_error("accept connections on", address, e));
                    }
                },
            };
            if let Err(e) = client.set_nonblocking(true) {
                tracing::warn!("accept on {address}: {e}: connection closed");
                continue;
            }
            let _ = client.set_tcp_nodelay(true); // not TCP (Unix): nothing to do
            self.proxied.connections += 1;
            let n = self.proxied.connections;
            self.conns.insert(
                n,
                Conn {
                    client,
                    since: Instant::now(),
                    state: State::Waiting,
                    generation: None,
                },
            );
            self.waiting.push_back(n);
            self.unopened.insert(n);
        }
        if self.retry_at.is_none() {
            self.connect_waiting();
        }
        Ok(())
    }

    /// Whether the current daemon, which just exited without ever being reached, failed
    /// because another process took its TCP port between our choice and its bind: its
    /// stderr says "address in use", or the port is taken now.
    fn port_taken(&self) -> bool {
        let Backend::Tcp(addr) = self.current.backend else {
            return false;
        };
        if self.current.served || self.port_retries >= MAX_PORT_RETRIES {
            return false;
        }
        let said = self
            .current
            .daemon
            .stderr_tail()
            .is_some_and(|t| t.to_ascii_lowercase().contains("in use"));
        said || std::net::TcpListener::bind(addr)
            .is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse)
    }

    /// Start the daemon again on a new port, in place of the one that exited: clients
    /// waiting for it wait for the new one.
    fn new_port(&mut self, status: ExitStatus) -> Result<(), Error> {
        self.port_retries += 1;
        let new = self.start_next(false)?;
        tracing::warn!(
            "{} exited ({status}): another process took its port {}; started it again on \
             {:?}",
            self.current.daemon.program(),
            match &self.current.backend {
                Backend::Tcp(a) => a.port(),
                Backend::Unix(_) => 0,
            },
            new.backend,
        );
        let old = std::mem::replace(&mut self.current, new);
        // Connections under way to the old port go back to waiting, for the new one.
        for (n, conn) in &mut self.conns {
            if conn.generation == Some(old.number) && !matches!(conn.state, State::Open { .. }) {
                conn.state = State::Waiting;
                conn.generation = None;
                self.waiting.push_front(*n);
            }
        }
        self.retry_at = None;
        self.delay = RETRY_FIRST;
        self.connect_waiting();
        Ok(())
    }

    /// The readiness check of daemon `i` (0: the current one, 1: the new one of a
    /// restart) has something to look at (`readable`), or its time came.
    fn look(&mut self, i: usize, readable: bool) -> Result<(), Error> {
        if i == 0 {
            if self.current.gate.is_none() {
                return Ok(());
            }
            if let Err(e) = self.current.look(readable) {
                if self.ready.is_some() {
                    return Err(e); // the first daemon's check cannot work: say so
                }
                tracing::warn!("cannot tell whether the daemon is ready ({e}): taking it as ready");
                self.current.gate = None;
            }
            if self.current.gate.is_none() {
                if let Some(ready) = self.ready.take() {
                    ready(self.current.daemon.pid());
                }
                tracing::debug!("connecting {} waiting connection(s)", self.waiting.len());
                self.connect_waiting();
            }
        } else if let Some(next) = &mut self.next {
            if let Err(e) = next.look(readable) {
                tracing::warn!(
                    "cannot tell whether the new daemon is ready ({e}): taking it as ready"
                );
                next.gate = None;
            }
            if next.gate.is_none() {
                self.promote();
            }
        }
        Ok(())
    }

    /// Connect the waiting connections in order, until the backend refuses one (none
    /// before the daemon is ready).
    fn connect_waiting(&mut self) {
        self.retry_at = None;
        if self.current.gate.is_some() || self.restart_at.is_some() {
            return;
        }
        // A refusal seen only once the connection was under way also sets `retry_at`.
        while self.retry_at.is_none()
            && let Some(&n) = self.waiting.front()
        {
            match connect(&self.current.backend) {
                Attempt::Started(state) => {
                    self.waiting.pop_front();
                    if let Some(conn) = self.conns.get_mut(&n) {
                        conn.state = state;
                        conn.generation = Some(self.current.number);
                        self.current.conns += 1;
                        // Not yet a success: a TCP connect on loopback is under way first
                        // and refused a moment later. The backoff starts again only once
                        // a connection opens.
                        self.progress(n);
                    }
                }
                Attempt::NotYet(e) => {
                    self.not_yet(&e);
                    return;
                }
                Attempt::Failed(e) => {
                    self.waiting.pop_front();
                    self.close(n, &format!("cannot connect to the backend: {e}"));
                }
            }
        }
    }

    /// The backend is not there yet: retry on a deadline (there is no event for "someone
    /// listens now"), sooner when it is there but busy (a full backlog).
    fn not_yet(&mut self, e: &io::Error) {
        let delay = if e.raw_os_error() == Some(libc::EAGAIN) {
            RETRY_FIRST
        } else {
            let d = self.delay;
            self.delay = (self.delay * 2).min(RETRY_MAX);
            d
        };
        tracing::trace!("backend not accepting yet ({e}): retry in {delay:?}");
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Close connection `n` unserved, saying why.
    fn close(&mut self, n: u64, why: &str) {
        if self.remove(n) {
            self.proxied.timed_out += 1;
            let tail = tail_text(&self.current.daemon);
            tracing::warn!("connection {n} closed: {why}{tail}");
        }
    }

    /// Move connection `n` on as far as it goes now: one just started.
    fn progress(&mut self, n: u64) {
        self.ready(n, BACKEND_SIDE, Interest::NONE);
    }

    /// Move connection `n` on, now that its socket `side` is ready as `ready` says: only
    /// the directions that can move do, once (a flow reads once, and writes at once what
    /// it read); then its sockets are waited for as its flows want, changed in the set
    /// only where that changed.
    fn ready(&mut self, n: u64, side: u64, ready: Interest) {
        let Some(conn) = self.conns.get_mut(&n) else {
            return; // closed since this turn's events were taken
        };
        if let State::Connecting(socket, watched) = &mut conn.state {
            match socket.take_error() {
                // No error yet, and no peer: the connection is still under way (writable
                // tells when it is done).
                Ok(None) if socket.peer_addr().is_err() => {
                    let want = Interest {
                        read: false,
                        write: true,
                    };
                    let fd = socket.as_raw_fd();
                    match self.set.change(fd, token(n, BACKEND_SIDE), *watched, want) {
                        Ok(()) => *watched = want,
                        Err(e) => self.close(n, &format!("cannot wait for the backend: {e}")),
                    }
                    return;
                }
                Ok(None) => {
                    let State::Connecting(backend, watched) =
                        std::mem::replace(&mut conn.state, State::Waiting)
                    else {
                        unreachable!("matched above");
                    };
                    self.unopened.remove(&n);
                    self.delay = RETRY_FIRST; // the backend accepts
                    conn.state = State::Open {
                        backend,
                        up: Flow::new(),
                        down: Flow::new(),
                        watched: [Interest::NONE, watched],
                    };
                    self.current.served = true;
                }
                Ok(Some(e)) | Err(e) if not_listening(&e) => {
                    conn.state = State::Waiting;
                    let generation = conn.generation.take();
                    self.release(generation);
                    self.waiting.push_front(n);
                    if self.retry_at.is_none() {
                        self.not_yet(&e);
                    }
                    return;
                }
                Ok(Some(e)) | Err(e) => {
                    self.close(n, &format!("cannot connect to the backend: {e}"));
                    return;
                }
            }
        }
        let State::Open {
            backend,
            up,
            down,
            watched,
        } = &mut conn.state
        else {
            return;
        };
        let client = &conn.client;
        let scratch = &mut self.scratch;
        // The flow that writes to this side first: what it frees may let the other read.
        let (to_side, from_side, side_socket, other) = match side {
            CLIENT_SIDE => (&mut *down, &mut *up, client, &*backend),
            _ => (&mut *up, &mut *down, &*backend, client),
        };
        let moved = (if ready.write {
            to_side.writable(side_socket)
        } else {
            Ok(false)
        })
        .and_then(|_| {
            if ready.read {
                from_side.readable(side_socket, other, scratch)
            } else {
                Ok(false)
            }
        });
        if let Err(e) = moved {
            tracing::debug!("connection {n}: {e}: closed");
            self.remove(n);
            return;
        }
        if up.done() && down.done() {
            self.remove(n);
            return;
        }
        let want = [
            Interest {
                read: up.wants_read(),
                write: down.wants_write(),
            },
            Interest {
                read: down.wants_read(),
                write: up.wants_write(),
            },
        ];
        let fds = [client.as_raw_fd(), backend.as_raw_fd()];
        for side in [CLIENT_SIDE, BACKEND_SIDE] {
            let i = side as usize;
            if let Err(e) = self.set.change(fds[i], token(n, side), watched[i], want[i]) {
                tracing::warn!("connection {n}: cannot wait for its sockets ({e}): closed");
                self.remove(n);
                return;
            }
            watched[i] = want[i];
        }
    }

    fn timers(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        let timeout = self.proxy.connect_timeout;
        let late: Vec<u64> = self
            .unopened
            .iter()
            .map_while(|n| {
                self.conns
                    .get(n)
                    .filter(|c| now >= c.since + timeout)
                    .map(|_| *n)
            })
            .collect();
        for n in late {
            self.waiting.retain(|w| *w != n);
            self.close(
                n,
                &format!("the backend did not accept it within {timeout:?}"),
            );
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.connect_waiting();
        }
        if self.restart_at.is_some_and(|t| now >= t) {
            self.restart_after_exit()?;
        } else if self.restart_at.is_none() {
            if let Some(e) = self.current.timed_out() {
                if self.ready.is_some() {
                    return Err(e); // the first daemon: serving fails with it
                }
                let _ = self.current.daemon.kill();
                self.after_exit(&format!("was stopped: {e}"));
            } else if self.current.next().is_some_and(|t| now >= t) {
                self.look(0, false)?;
            }
        }
        if let Some(next) = &mut self.next {
            if let Some(e) = next.timed_out() {
                tracing::warn!(
                    "restart abandoned: {e}; stopped it, pid {} serves on",
                    self.current.daemon.pid()
                );
                let _ = next.daemon.kill();
                self.next = None;
            } else if next.next().is_some_and(|t| now >= t) {
                self.look(1, false)?;
            }
        }
        let stop_timeout = self.proxy.stop_timeout;
        for d in &mut self.draining {
            if now < d.at {
                continue;
            }
            if !d.termed {
                d.term(stop_timeout);
            } else {
                tracing::warn!(
                    "the old daemon (pid {}) is still running {stop_timeout:?} after SIGTERM: \
                     SIGKILL",
                    d.generation.daemon.pid(),
                );
                let _ = d.generation.daemon.kill();
            }
        }
        self.draining
            .retain_mut(|d| matches!(d.generation.daemon.try_wait(), Ok(None)));
        Ok(())
    }

    /// The current daemon is gone (exited, or stopped for missing its readiness deadline)
    /// and restarts on exit: its connections are closed (it took their state with it),
    /// those under way wait again, and a new one starts after the backoff.
    fn after_exit(&mut self, why: &str) {
        let gone = self.current.number;
        let open: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.generation == Some(gone))
            .map(|(n, _)| *n)
            .collect();
        for n in open {
            let conn = self.conns.get_mut(&n).expect("just listed");
            if matches!(conn.state, State::Open { .. }) {
                self.remove(n);
            } else {
                conn.state = State::Waiting;
                conn.generation = None;
                self.waiting.push_front(n);
            }
        }
        self.current.conns = 0;
        if self.current.started.elapsed() >= MAX_BACKOFF {
            self.backoff = FIRST_BACKOFF;
        }
        tracing::warn!(
            "{} (pid {}) {why}; starting it again in {:?} ({} connection(s) wait)",
            self.current.daemon.program(),
            self.current.daemon.pid(),
            self.backoff,
            self.waiting.len()
        );
        self.retry_at = None;
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// A new daemon on the next backend (the next path, or a new port); `replacing` the
    /// current one (a `SIGHUP` restart), or after it (it is gone).
    fn start_next(&mut self, replacing: bool) -> Result<Generation, Error> {
        self.generations += 1;
        let proxy = self.proxy;
        let backend = backend_for(proxy.kind, proxy._dir.as_ref(), self.generations)?;
        let launch = expand(&proxy.template, &backend, &proxy.peers)?;
        proxy.start(launch, backend, self.generations, replacing)
    }

    /// Start the daemon again after it exited, on a new backend.
    fn restart_after_exit(&mut self) -> Result<(), Error> {
        self.restart_at = None;
        match self.start_next(false) {
            Ok(generation) => {
                tracing::info!("restarted: new pid {}", generation.daemon.pid());
                self.current = generation;
                self.delay = RETRY_FIRST;
                self.look(0, false)?;
                self.connect_waiting();
            }
            Err(e) => {
                tracing::error!("the daemon could not be started again: {e}");
                self.restart_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
        Ok(())
    }

    /// `SIGHUP` with restarts: start a new daemon on a new backend; it takes over once its
    /// gate opens (it listens there, or its readiness wait says it is ready).
    fn restart(&mut self) -> Result<(), Error> {
        if self.restart_at.is_some() {
            // The daemon is gone and waits for its backoff: start it now.
            return self.restart_after_exit();
        }
        if let Some(next) = &self.next {
            tracing::info!(
                "SIGHUP: a restart is already under way (pid {})",
                next.daemon.pid()
            );
            return Ok(());
        }
        match self.start_next(true) {
            Ok(generation) => {
                tracing::info!(
                    "SIGHUP: started pid {} on a new backend; pid {} serves until it is ready",
                    generation.daemon.pid(),
                    self.current.daemon.pid()
                );
                self.next = Some(generation);
                self.look(1, false)?;
            }
            Err(e) => tracing::warn!(
                "SIGHUP: the new daemon could not be started ({e}); pid {} serves on",
                self.current.daemon.pid()
            ),
        }
        Ok(())
    }

    /// The new daemon accepts: new connections go to it, the old one finishes its own.
    fn promote(&mut self) {
        let next = self.next.take().expect("a restart under way");
        self.restart_at = None;
        let old = std::mem::replace(&mut self.current, next);
        tracing::info!(
            "restart: pid {} accepts and takes the new connections; pid {} finishes its {}",
            self.current.daemon.pid(),
            old.daemon.pid(),
            old.conns
        );
        let mut old = Draining {
            generation: old,
            at: Instant::now() + self.proxy.stop_timeout,
            termed: false,
        };
        if old.generation.conns == 0 {
            old.term(self.proxy.stop_timeout);
        }
        self.draining.push(old);
        // Connections waiting for the old daemon now try the new one.
        if !self.waiting.is_empty() {
            self.delay = RETRY_FIRST;
            self.connect_waiting();
        }
    }

    /// A daemon other than the current one exited: a new one before it accepted (the
    /// restart fails, the old one serves on), or an old one done draining.
    fn reap(&mut self, pid: u32) {
        if let Some(next) = &mut self.next
            && next.daemon.pid() == pid
        {
            if let Ok(Some(status)) = next.daemon.try_wait() {
                let tail = tail_text(&next.daemon);
                tracing::warn!(
                    "restart failed: the new daemon (pid {pid}) exited ({status}) before it \
                     was ready; pid {} serves on{tail}",
                    self.current.daemon.pid()
                );
                self.next = None;
            }
            return;
        }
        self.draining.retain_mut(|d| {
            d.generation.daemon.pid() != pid || matches!(d.generation.daemon.try_wait(), Ok(None))
        });
    }

    /// Forget connection `n` (closing it), and count it off its daemon's.
    fn remove(&mut self, n: u64) -> bool {
        let Some(conn) = self.conns.remove(&n) else {
            return false;
        };
        self.unopened.remove(&n);
        self.release(conn.generation);
        true
    }

    /// A connection to daemon `generation` is over; an old daemon's last one lets it stop.
    fn release(&mut self, generation: Option<u64>) {
        let Some(g) = generation else {
            return;
        };
        if self.current.number == g {
            self.current.conns = self.current.conns.saturating_sub(1);
            return;
        }
        let stop_timeout = self.proxy.stop_timeout;
        if let Some(d) = self.draining.iter_mut().find(|d| d.generation.number == g) {
            d.generation.conns = d.generation.conns.saturating_sub(1);
            if d.generation.conns == 0 && !d.termed {
                d.term(stop_timeout);
            }
        }
    }
}

/// The end of a daemon's stderr, for the log.
fn tail_text(daemon: &Launched) -> String {
    daemon
        .stderr_tail()
        .map(|t| {
            format!(
                "; the daemon's stderr ended with:\n  | {}",
                t.replace('\n', "\n  | ")
            )
        })
        .unwrap_or_default()
}

impl Policy for Forward<'_, '_> {
    type Output = End;

    fn watch(&self, watch: &mut Watch) {
        watch.add(Key::Stop, self.proxy.stop_rx.as_raw_fd());
        if let Some(fd) = &self.proxy.appeared {
            watch.add(Key::Backend, fd.as_raw_fd());
        }
        // The current daemon is gone while a restart waits: nothing of it to watch.
        let current = Some(&self.current).filter(|_| self.restart_at.is_none());
        if let Some(g) = current {
            g.watch(Key::Ready(0), watch);
        }
        if let Some(g) = &self.next {
            g.watch(Key::Ready(1), watch);
        }
        let daemons = current
            .into_iter()
            .chain(self.next.as_ref())
            .chain(self.draining.iter().map(|d| &d.generation));
        for g in daemons {
            if let Some(fd) = g.daemon.child().pidfd() {
                watch.add(Key::Child(g.daemon.pid()), fd);
            }
        }
        if self.paused_until.is_none() {
            for (i, (l, _)) in self.proxy.listeners.iter().enumerate() {
                watch.add(Key::Listener(i), l.as_raw_fd());
            }
        }
        watch.add_set(&self.set);
    }

    fn deadline(&self) -> Option<Instant> {
        let timeout = self.proxy.connect_timeout;
        let oldest = self
            .unopened
            .first()
            .and_then(|n| self.conns.get(n))
            .map(|c| c.since + timeout);
        let current = match self.restart_at {
            Some(t) => Some(t),
            None => self.current.next(),
        };
        let next = self.next.as_ref().and_then(Generation::next);
        let kill = self.draining.iter().map(|d| d.at).min();
        [
            self.retry_at,
            self.paused_until,
            oldest,
            current,
            next,
            kill,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle(&mut self, event: Event) -> Result<Option<End>, Error> {
        match event {
            Event::Readable(Key::Stop) => {
                // The channel carries requests: `S` stop ([`Stopper`]), `R` restart
                // ([`Running::restart`]).
                let mut bytes = [0u8; 64];
                let n = match (&self.proxy.stop_rx).read(&mut bytes) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(_) => 0,
                };
                let bytes = &bytes[..n];
                for &b in bytes {
                    if b == RESTART {
                        self.restart()?;
                    } else if b & SIGNAL != 0 {
                        let _ = self.current.daemon.child().forward(i32::from(b & !SIGNAL));
                    }
                }
                if n == 0 || bytes.iter().any(|&b| b != RESTART && b & SIGNAL == 0) {
                    return Ok(Some(End::Stopped));
                }
                Ok(None)
            }
            Event::Readable(Key::Child(pid)) if pid == self.current.daemon.pid() => {
                match self.current.daemon.try_wait() {
                    Ok(None) => Ok(None),
                    Ok(Some(status)) => {
                        if self.port_taken() {
                            return self.new_port(status).map(|()| None);
                        }
                        if self.ready.is_some() {
                            // The first daemon, before it was ready: its start failed.
                            return Err(self.current.daemon.exited(status, "before it was ready"));
                        }
                        if self.proxy.restart_on_exit {
                            self.after_exit(&format!("exited ({status})"));
                            return Ok(None);
                        }
                        tracing::info!(
                            "{} exited ({status}): closing {} connection(s) and the public \
                             sockets",
                            self.current.daemon.program(),
                            self.conns.len()
                        );
                        Ok(Some(End::Exited(status)))
                    }
                    Err(source) => Err(Error::Os {
                        context: "wait for the daemon",
                        source,
                    }),
                }
            }
            Event::Readable(Key::Child(pid)) => {
                self.reap(pid);
                Ok(None)
            }
            Event::Signal(libc::SIGHUP) if self.proxy.restart_on_hup => {
                self.restart()?;
                Ok(None)
            }
            Event::Readable(Key::Listener(i)) => self.accept_from(i).map(|()| None),
            Event::Readable(Key::Conn(Ready { token, ready })) => {
                self.ready(token >> 1, token & 1, ready);
                Ok(None)
            }
            Event::Readable(Key::Ready(i)) => {
                self.look(i, true)?;
                Ok(None)
            }
            Event::Readable(Key::Backend) => {
                if let Some(fd) = &self.proxy.appeared {
                    drain_events(fd);
                }
                // A backend socket appeared: waiting connections try now, and a gate that
                // waits for it to listen looks now.
                if self.retry_at.is_some() {
                    self.delay = RETRY_FIRST;
                    self.connect_waiting();
                }
                if self.restart_at.is_none() && self.current.gate.is_some() {
                    self.look(0, false)?;
                }
                if self.next.is_some() {
                    self.look(1, false)?;
                }
                Ok(None)
            }
            Event::Readable(Key::Notify | Key::Proxy(_)) => Ok(None),
            Event::Signal(sig @ (libc::SIGINT | libc::SIGTERM)) => Ok(Some(End::Signal(sig))),
            Event::Signal(sig) => {
                if FORWARDED.contains(&sig) {
                    let _ = self.current.daemon.child().forward(sig);
                }
                Ok(None)
            }
            Event::Deadline => {
                self.timers()?;
                Ok(None)
            }
        }
    }
}

/// Whether a connect error means the backend is not listening (yet), or cannot take the
/// connection now.
fn not_listening(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ECONNREFUSED | libc::EAGAIN)
    )
}

/// Start a non-blocking connection to the backend.
fn connect(backend: &Backend) -> Attempt {
    let (domain, addr) = match backend {
        Backend::Unix(path) => match SockAddr::unix(path) {
            Ok(addr) => (Domain::UNIX, addr),
            Err(e) => return Attempt::Failed(e),
        },
        Backend::Tcp(a) => (Domain::for_address(*a), SockAddr::from(*a)),
    };
    let socket = match Socket::new(domain, Type::STREAM.nonblocking(), None) {
        Ok(s) => s,
        Err(e) => return Attempt::Failed(e),
    };
    if matches!(backend, Backend::Tcp(_)) {
        let _ = socket.set_tcp_nodelay(true);
    }
    match socket.connect(&addr) {
        Ok(()) => Attempt::Started(State::Connecting(socket, Interest::NONE)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            Attempt::Started(State::Connecting(socket, Interest::NONE))
        }
        Err(e) if not_listening(&e) => Attempt::NotYet(e),
        Err(e) => Attempt::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A "daemon" that listens where it is told, after a delay, and echoes in upper case
    /// what each client sends until its end (half-close), then closes. Python keeps it
    /// honest: a real process, listening late, one connection at a time.
    fn echo_daemon(delay: &str) -> Launch {
        Launch::new("python3").args([
            "-c",
            "import socket,sys,time\n\
             time.sleep(float(sys.argv[2]))\n\
             s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1024)\n\
             while True:\n\
             \x20   c,_=s.accept(); d=b''\n\
             \x20   while True:\n\
             \x20       b=c.recv(65536)\n\
             \x20       if not b: break\n\
             \x20       d+=b\n\
             \x20   c.sendall(d.upper()); c.close()\n",
            "${backend.path}",
            delay,
        ])
    }

    fn python() -> bool {
        let found = Launch::new("python3").find_program().is_ok();
        if !found {
            eprintln!("SKIPPED: python3 is not installed");
        }
        found
    }

    fn ask(addr: SocketAddr, what: &[u8]) -> io::Result<Vec<u8>> {
        let mut c = std::net::TcpStream::connect(addr)?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        c.write_all(what)?;
        c.shutdown(std::net::Shutdown::Write)?; // the daemon answers after our end
        let mut reply = Vec::new();
        c.read_to_end(&mut reply)?;
        Ok(reply)
    }

    #[test]
    fn clients_that_connect_before_the_daemon_listens_are_served() {
        if !python() {
            return;
        }
        let running = echo_daemon("0.3").proxy().unwrap().spawn().unwrap();
        let addr = running.local_addr(0);
        let clients: Vec<_> = (0..50)
            .map(|i| std::thread::spawn(move || ask(addr, format!("hello {i}").as_bytes())))
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            assert_eq!(c.join().unwrap().unwrap(), format!("HELLO {i}").as_bytes());
        }
        let proxied = running.stop().unwrap();
        assert_eq!((proxied.connections, proxied.timed_out), (50, 0));
    }

    #[test]
    fn restarts_under_load_fail_no_request() {
        use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
        if !python() {
            return;
        }
        // Answers each request with its pid; dies at once on SIGTERM (Python's default),
        // so a request it had not answered would fail: none may be left when it gets it.
        let daemon = Launch::new("python3").args([
            "-c",
            "import os,socket,sys\n\
             s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(128)\n\
             while True:\n\
             \x20   c,_=s.accept(); c.recv(100); c.sendall(str(os.getpid()).encode()); c.close()\n",
            "${backend.path}",
        ]);
        let running = Arc::new(daemon.proxy().unwrap().spawn().unwrap());
        let addr = running.local_addr(0);
        let (done, last, ok) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let (done, last, ok) = (done.clone(), last.clone(), ok.clone());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    while !done.load(Ordering::Relaxed) {
                        match ask(addr, b"pid?").map(|r| String::from_utf8(r).unwrap()) {
                            Ok(pid) if !pid.is_empty() => {
                                last.store(pid.parse().unwrap(), Ordering::Relaxed);
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => failures.push(format!("{other:?}")),
                        }
                    }
                    failures
                })
            })
            .collect();
        let mut pids = Vec::new();
        for _ in 0..5 {
            let end = Instant::now() + Duration::from_secs(20);
            while last.load(Ordering::Relaxed) == 0
                || pids.last() == Some(&last.load(Ordering::Relaxed))
            {
                assert!(Instant::now() < end, "no reply from a new daemon");
                std::thread::sleep(Duration::from_millis(5));
            }
            pids.push(last.load(Ordering::Relaxed));
            running.restart();
        }
        done.store(true, Ordering::Relaxed);
        let failures: Vec<String> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        assert!(
            failures.is_empty(),
            "{} failed requests: {failures:?}",
            failures.len()
        );
        assert_eq!(pids.len(), 5, "five daemons served in turn: {pids:?}");
        assert!(ok.load(Ordering::Relaxed) >= 5);
    }

    #[test]
    fn with_ready_clients_wait_for_ready_1_not_for_the_listening_socket() {
        if !python() {
            return;
        }
        // Listens at once but is not ready for 0.3 s, like PostgreSQL starting up.
        let daemon = Launch::new("python3")
            .args([
                "-c",
                "import os,socket,sys,time\n\
                 s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(128)\n\
                 s.settimeout(0.3); ready=False; start=time.time()\n\
                 while True:\n\
                 \x20   if not ready and time.time()-start>0.3:\n\
                 \x20       n=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
                 \x20       a=os.environ['NOTIFY_SOCKET']; a='\\0'+a[1:] if a[0]=='@' else a\n\
                 \x20       n.sendto(b'READY=1',a); ready=True\n\
                 \x20   try: c,_=s.accept()\n\
                 \x20   except socket.timeout: continue\n\
                 \x20   c.recv(100); c.sendall(b'ready' if ready else b'starting up'); c.close()\n",
                "${backend.path}",
            ])
            .ready(Duration::from_secs(10));
        let running = daemon.proxy().unwrap().spawn().unwrap();
        let reply = ask(running.local_addr(0), b"hello?").unwrap();
        assert_eq!(String::from_utf8(reply).unwrap(), "ready");
    }

    #[test]
    fn a_daemon_whose_port_was_taken_is_started_again_on_a_new_one() {
        if !python() {
            return;
        }
        let marker = tempfile::tempdir().unwrap();
        // The first run finds its port taken (here by itself, the race made certain: a
        // socket bound to it, as an outgoing connection's port is) and exits as a daemon
        // does on EADDRINUSE; the second serves.
        let daemon = Launch::new("python3").args([
            "-c",
            "import os,socket,sys\n\
             port=int(sys.argv[1]); marker=sys.argv[2]\n\
             if not os.path.exists(marker):\n\
             \x20   open(marker,'w').close()\n\
             \x20   squatter=socket.socket(); squatter.bind(('127.0.0.1',port))\n\
             s=socket.socket(); s.bind(('127.0.0.1',port)); s.listen(128)\n\
             while True:\n\
             \x20   c,_=s.accept(); c.recv(100); c.sendall(b'served'); c.close()\n",
            "${backend.port}",
            marker.path().join("first-run-done").to_str().unwrap(),
        ]);
        let running = daemon.proxy().unwrap().spawn().unwrap();
        let reply = ask(running.local_addr(0), b"hello?").unwrap();
        assert_eq!(String::from_utf8(reply).unwrap(), "served");
    }

    #[test]
    fn a_megabyte_each_way_arrives_intact() {
        if !python() {
            return;
        }
        let running = echo_daemon("0").proxy().unwrap().spawn().unwrap();
        let big: Vec<u8> = (0..1 << 20).map(|i| b"abcdefgh"[i % 8]).collect();
        let reply = ask(running.local_addr(0), &big).unwrap();
        assert_eq!(reply, big.to_ascii_uppercase());
    }

    #[test]
    fn a_backend_that_never_listens_costs_its_clients_the_timeout_only() {
        let running = Options::new()
            .connect_timeout(Duration::from_millis(300))
            .bind(Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]))
            .unwrap()
            .spawn()
            .unwrap();
        let started = Instant::now();
        let reply = ask(running.local_addr(0), b"anyone?");
        assert!(
            matches!(&reply, Ok(r) if r.is_empty()) || reply.is_err(),
            "closed unanswered: {reply:?}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        assert_eq!(running.stop().unwrap().timed_out, 1);
    }

    #[test]
    fn when_the_daemon_exits_clients_are_refused_at_once() {
        let running = Launch::new("sh")
            .args(["-c", "sleep 0.2", "${backend.path}"])
            .proxy()
            .unwrap()
            .spawn()
            .unwrap();
        let addr = running.local_addr(0);
        let waiting = std::net::TcpStream::connect(addr).unwrap();
        let proxied = running.wait().unwrap();
        assert!(proxied.status.is_some_and(|s| s.success()));
        let mut waiting = waiting;
        waiting
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert!(
            matches!(waiting.read(&mut buf), Ok(0) | Err(_)),
            "the waiting client is closed"
        );
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn the_backend_directory_is_private_and_goes_with_the_proxy() {
        let proxy = Launch::new("sh")
            .args(["-c", "sleep 30", "${backend.path}"])
            .proxy()
            .unwrap();
        let Backend::Unix(path) = proxy.backend().clone() else {
            panic!("a Unix backend");
        };
        let dir = path.parent().unwrap().to_owned();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(proxy);
        assert!(!dir.exists());
    }

    #[test]
    fn templates_choose_the_backend() {
        let kind = |args: &[&str]| backend_kind(&Launch::new("d").args(args));
        assert_eq!(
            kind(&["--unixsocket", "${backend.path}"]).unwrap(),
            SocketKind::UnixStream
        );
        assert_eq!(kind(&["--port=${backend.port}"]).unwrap(), SocketKind::Tcp);
        assert_eq!(kind(&["-l", "${backend.addr}"]).unwrap(), SocketKind::Tcp);
        assert!(kind(&["${backend.path}", "${backend.port}"]).is_err());
        let none = kind(&["--port", "6379"]).unwrap_err();
        assert!(
            none.to_string().contains("never told where to listen"),
            "{none}"
        );
        let env = backend_kind(&Launch::new("d").env("PGHOST", "${backend.path}"));
        assert_eq!(env.unwrap(), SocketKind::UnixStream);
    }
}
