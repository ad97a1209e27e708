//! Accept mode, systemd's `Accept=yes` (`systemd-socket-activate --accept`): we own the
//! listening sockets, accept every connection ourselves and start one daemon per connection,
//! handing it the connected socket at fd 3 (`LISTEN_FDS=1`) or, inetd style, on its stdin and
//! stdout. This is `sd-launch --accept [--inetd]`.
//!
//! ```no_run
//! use sd_launch::{accept, Launch};
//! let acceptor = accept::Options::new().listen_on("127.0.0.1:0").bind()?;
//! println!("port {}", acceptor.local_addr(0).port()); // known before any daemon runs
//! let stopper = acceptor.stopper(); // e.g. for another thread
//! // Blocks: one `my-daemon` per connection, until `stopper.stop()` (or a signal).
//! let served = acceptor.serve(None, |_conn| Launch::new("my-daemon"))?;
//! println!("{} connection(s) served", served.connections);
//! # Ok::<(), sd_launch::Error>(())
//! ```
//!
//! What each daemon gets, as systemd gives it to an `Accept=yes` service:
//! * [`Pass::Fd`]: the connection at fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = the daemon's own pid
//!   (unless [`Launch::no_pid`]), and `LISTEN_FDNAMES` = the name of the listener the
//!   connection came in on ([`SocketSpec::name`], `sd-launch --fdname`), or
//!   [`CONNECTION_NAME`] (`connection`) when it has none: systemd's default for `Accept=yes`
//!   when `FileDescriptorName=` is not set. (`systemd-socket-activate -a` instead announces all
//!   its `--fdname` names for the one fd.)
//! * [`Pass::Inetd`]: the connection as stdin and stdout, no `LISTEN_*` variables
//!   (`StandardInput=socket`, [`Launch::inetd`]).
//! * Both: `REMOTE_ADDR` and `REMOTE_PORT` for TCP peers (IPv4-mapped IPv6 addresses shown as
//!   IPv4), as systemd sets them for `Accept=yes` services.
//!
//! Decisions:
//! * At most [`max_connections`](Options::max_connections) daemons run at once (default
//!   [`DEFAULT_MAX_CONNECTIONS`], 64, systemd's `MaxConnections=` default). Beyond that, new
//!   connections wait in the kernel's backlog and are accepted as daemons exit. systemd
//!   refuses them instead; for tests, waiting is the useful behaviour: no client ever sees a
//!   connection it would not see under a slower server.
//! * Our copy of each connection is closed as soon as its daemon runs, so the client sees the
//!   end of the connection when the daemon closes it, not when we do.
//! * Finished daemons are reaped as they exit (no zombies), woken by `SIGCHLD` when the
//!   signals are given to [`serve`](Acceptor::serve), else within [`TICK`].
//! * With [`BlockedSignals`], `SIGINT` and `SIGTERM` stop serving: the listeners are closed,
//!   the signal is forwarded to every running daemon, and those still running after
//!   [`stop_timeout`](Options::stop_timeout) get `SIGKILL`. `SIGHUP`, `SIGQUIT`, `SIGUSR1`
//!   and `SIGUSR2` are forwarded to every running daemon and serving goes on. A [`Stopper`]
//!   stops the same way, with `SIGTERM`.
//! * A daemon that cannot be started for want of resources ([`Error::Spawn`]: fork failed,
//!   say) costs its connection (closed unanswered) and is counted in [`Served::failed`];
//!   any other launch error (program not found, bad arguments) stops serving and is
//!   returned, as it would fail for every connection.
//! * Datagram sockets have no connections: binding one is an [`Error::Conflict`].

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::error::Error;
use crate::launch::Launch;
use crate::launched::{Launched, LaunchedSocket};
use crate::socket::{self, CreatedPath, DEFAULT_BACKLOG, DEFAULT_UNIX_MODE};
use crate::spec::{Address, SocketSpec, Transport};
use crate::supervise::{BlockedSignals, DEFAULT_STOP_TIMEOUT, FORWARDED};

/// systemd's `MaxConnections=` default: daemons running at once.
///
/// ```
/// assert_eq!(sd_launch::accept::DEFAULT_MAX_CONNECTIONS, 64);
/// ```
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// The `LISTEN_FDNAMES` name of a connection whose listener has no name, as systemd names the
/// fd of an `Accept=yes` service without `FileDescriptorName=`.
///
/// ```
/// assert_eq!(sd_launch::accept::CONNECTION_NAME, "connection");
/// ```
pub const CONNECTION_NAME: &str = "connection";

/// The longest the loop sleeps without looking at its daemons: reaping needs no `SIGCHLD`
/// (which another thread of a test process may receive), and signals are still collected
/// where there is no `signalfd`.
///
/// ```
/// assert!(sd_launch::accept::TICK.as_millis() <= 100);
/// ```
pub const TICK: Duration = Duration::from_millis(50);

/// Pause after an `accept` failed for want of fds or memory, instead of spinning.
const BACKOFF: Duration = Duration::from_millis(100);

/// How each connection is handed to its daemon.
///
/// ```
/// assert_eq!(sd_launch::accept::Pass::default(), sd_launch::accept::Pass::Fd);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pass {
    /// At fd 3 with `LISTEN_FDS=1` (`Accept=yes`, `systemd-socket-activate -a`).
    #[default]
    Fd,
    /// As stdin and stdout, no `LISTEN_*` (`StandardInput=socket`,
    /// `systemd-socket-activate -a --inetd`).
    Inetd,
}

#[derive(Debug)]
enum Pending {
    Spec(SocketSpec),
    Parse(String),
}

/// What to listen on and how to serve: the builder of an [`Acceptor`].
///
/// ```
/// use sd_launch::accept::{Options, Pass};
/// let acceptor = Options::new()
///     .listen_on("127.0.0.1:0")
///     .pass(Pass::Inetd)
///     .max_connections(8)
///     .bind()?;
/// assert_eq!(acceptor.sockets()[0].kind, "tcp");
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug)]
pub struct Options {
    specs: Vec<Pending>,
    backlog: i32,
    socket_mode: u32,
    max_connections: usize,
    pass: Pass,
    stop_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options::new()
    }
}

impl Options {
    /// Defaults: listen on `127.0.0.1:0` unless told otherwise, [`Pass::Fd`],
    /// [`DEFAULT_MAX_CONNECTIONS`], [`supervise::DEFAULT_STOP_TIMEOUT`](DEFAULT_STOP_TIMEOUT).
    ///
    /// ```
    /// let acceptor = sd_launch::accept::Options::new().bind()?;
    /// assert!(acceptor.local_addr(0).ip().is_loopback());
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn new() -> Options {
        Options {
            specs: Vec::new(),
            backlog: DEFAULT_BACKLOG,
            socket_mode: DEFAULT_UNIX_MODE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            pass: Pass::Fd,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    /// Listen on `spec` (a stream or seqpacket socket); its [name](SocketSpec::name) becomes
    /// the `LISTEN_FDNAMES` of the connections it accepts.
    ///
    /// ```
    /// use sd_launch::{accept::Options, SocketSpec};
    /// let options = Options::new().listen(SocketSpec::loopback().name("http"));
    /// # let _ = options;
    /// ```
    pub fn listen(mut self, spec: SocketSpec) -> Options {
        self.specs.push(Pending::Spec(spec));
        self
    }

    /// Listen on an address in `sd-launch -l` syntax; a malformed one is reported by
    /// [`bind`](Options::bind).
    ///
    /// ```
    /// let options = sd_launch::accept::Options::new().listen_on("127.0.0.1:0").listen_on("[::1]:0");
    /// # let _ = options;
    /// ```
    pub fn listen_on(mut self, address: &str) -> Options {
        self.specs.push(Pending::Parse(address.to_owned()));
        self
    }

    /// Listen backlog, where connections wait while [`max_connections`](Options::max_connections)
    /// daemons run (default: the kernel's maximum, [`socket::DEFAULT_BACKLOG`]).
    ///
    /// ```
    /// let options = sd_launch::accept::Options::new().backlog(128);
    /// # let _ = options;
    /// ```
    pub fn backlog(mut self, backlog: i32) -> Options {
        self.backlog = backlog;
        self
    }

    /// Mode of created Unix socket files (default `0o600`).
    ///
    /// ```
    /// let options = sd_launch::accept::Options::new().socket_mode(0o660);
    /// # let _ = options;
    /// ```
    pub fn socket_mode(mut self, mode: u32) -> Options {
        self.socket_mode = mode;
        self
    }

    /// How many daemons may run at once (at least 1; default 64). Further connections wait
    /// in the backlog until one exits.
    ///
    /// ```
    /// let options = sd_launch::accept::Options::new().max_connections(1); // one at a time
    /// # let _ = options;
    /// ```
    pub fn max_connections(mut self, max: usize) -> Options {
        self.max_connections = max.max(1);
        self
    }

    /// How each connection is handed over (default [`Pass::Fd`]).
    ///
    /// ```
    /// let options = sd_launch::accept::Options::new().pass(sd_launch::accept::Pass::Inetd);
    /// # let _ = options;
    /// ```
    pub fn pass(mut self, pass: Pass) -> Options {
        self.pass = pass;
        self
    }

    /// How long running daemons get to exit once serving stops, before `SIGKILL` (default
    /// [`supervise::DEFAULT_STOP_TIMEOUT`](DEFAULT_STOP_TIMEOUT), 10 s).
    ///
    /// ```
    /// let options = sd_launch::accept::Options::new().stop_timeout(std::time::Duration::from_secs(1));
    /// # let _ = options;
    /// ```
    pub fn stop_timeout(mut self, timeout: Duration) -> Options {
        self.stop_timeout = timeout;
        self
    }

    /// Create the listening sockets (nothing is accepted yet: connections queue in the
    /// backlog until [`Acceptor::serve`]). On error nothing is left created.
    ///
    /// ```
    /// use sd_launch::{accept::Options, Error};
    /// let err = Options::new().listen_on("127.0.0.1:0").listen_on("not an address").bind().unwrap_err();
    /// assert!(matches!(err, Error::Address { .. }));
    /// let err = Options::new().listen(sd_launch::SocketSpec::loopback()
    ///     .transport(sd_launch::Transport::Datagram)).bind().unwrap_err();
    /// assert!(matches!(err, Error::Conflict(_)));
    /// ```
    pub fn bind(self) -> Result<Acceptor, Error> {
        let specs = if self.specs.is_empty() {
            vec![SocketSpec::loopback()]
        } else {
            self.specs
                .into_iter()
                .map(|p| match p {
                    Pending::Spec(s) => Ok(s),
                    Pending::Parse(s) => s.parse(),
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut listeners = Vec::with_capacity(specs.len());
        let mut sockets = Vec::with_capacity(specs.len());
        for spec in specs {
            if spec.transport == Transport::Datagram {
                return Err(Error::Conflict(
                    "datagram sockets have no connections to accept: \
                     use stream (or seqpacket) sockets in accept mode",
                ));
            }
            if let Some(name) = &spec.name {
                listenfd_core::env::validate_name(name).map_err(|e| Error::FdName {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            }
            let bound = socket::bind(&spec, self.backlog, self.socket_mode)?;
            let socket = Socket::from(bound.fd);
            socket
                .set_nonblocking(true)
                .map_err(|e| accept_error("make non-blocking", &bound.address, e))?;
            sockets.push(LaunchedSocket {
                fd: match self.pass {
                    Pass::Fd => 3,
                    Pass::Inetd => 0,
                },
                name: spec.name.clone(),
                kind: spec.kind(),
                address: Some(bound.address.clone()),
            });
            listeners.push(Listener {
                socket,
                address: bound.address,
                name: spec.name,
                created: bound.created,
            });
        }
        let (stop_rx, stop_tx) = UnixStream::pair()
            .and_then(|(rx, tx)| {
                rx.set_nonblocking(true)?;
                tx.set_nonblocking(true)?;
                Ok((rx, tx))
            })
            .map_err(|e| accept_error("create the stop channel for", &listeners[0].address, e))?;
        Ok(Acceptor {
            listeners,
            sockets,
            max_connections: self.max_connections,
            pass: self.pass,
            stop_timeout: self.stop_timeout,
            stop_rx,
            stop_tx: Arc::new(stop_tx),
        })
    }
}

#[derive(Debug)]
struct Listener {
    socket: Socket,
    address: Address,
    name: Option<String>,
    /// The Unix socket file, removed when dropped.
    created: Option<CreatedPath>,
}

/// Listening sockets, ready to [`serve`](Acceptor::serve). Dropping it closes them and
/// removes the Unix socket files it created.
///
/// ```
/// let acceptor = sd_launch::accept::Options::new().listen_on("127.0.0.1:0").bind()?;
/// // Already listening: a client can connect now; it is accepted once `serve` runs.
/// let _client = std::net::TcpStream::connect(acceptor.local_addr(0))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Acceptor {
    listeners: Vec<Listener>,
    sockets: Vec<LaunchedSocket>,
    max_connections: usize,
    pass: Pass,
    stop_timeout: Duration,
    stop_rx: UnixStream,
    stop_tx: Arc<UnixStream>,
}

/// A connection about to get its daemon, as shown to the closure of
/// [`Acceptor::serve`].
///
/// ```
/// let conn = sd_launch::accept::Connection { number: 1, listener: 0, peer: None };
/// assert_eq!(conn.number, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// 1 for the first connection accepted, then 2, 3, ...
    pub number: u64,
    /// Index of the listener (in [`Acceptor::sockets`]) it came in on.
    pub listener: usize,
    /// The peer's address, for TCP (`None` for Unix sockets).
    pub peer: Option<SocketAddr>,
}

/// Stops a running [`Acceptor::serve`] from anywhere (another thread, a test): it returns
/// after its daemons got `SIGTERM` and exited (or `SIGKILL` after the stop timeout).
///
/// ```
/// let acceptor = sd_launch::accept::Options::new().bind()?;
/// let stopper = acceptor.stopper();
/// stopper.stop(); // before serving: serve returns at once
/// let served = acceptor.serve(None, |_| sd_launch::Launch::new("true"))?;
/// assert_eq!((served.connections, served.signal), (0, None));
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Stopper(Arc<UnixStream>);

impl Stopper {
    /// Ask the acceptor to stop. Idempotent; never blocks.
    ///
    /// ```
    /// let acceptor = sd_launch::accept::Options::new().bind()?;
    /// acceptor.stopper().stop();
    /// acceptor.stopper().stop();
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn stop(&self) {
        // A full buffer already holds a stop request; the byte is all that matters.
        let _ = io::Write::write(&mut &*self.0, b"S");
    }
}

/// How serving went, once [`Acceptor::serve`] returns.
///
/// ```
/// let served = sd_launch::accept::Served::default();
/// assert_eq!((served.connections, served.failed, served.signal), (0, 0, None));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// Connections that got a daemon.
    pub connections: u64,
    /// Connections closed unanswered because their daemon could not be started
    /// ([`Error::Spawn`], e.g. fork failed for want of resources).
    pub failed: u64,
    /// The signal that stopped serving (`SIGINT` or `SIGTERM`), `None` for a [`Stopper`].
    pub signal: Option<i32>,
}

impl Acceptor {
    /// The listening sockets, in the order given. `fd` is where each daemon finds its
    /// connection (3, or 0 with [`Pass::Inetd`]), whichever listener it came from.
    ///
    /// ```
    /// let acceptor = sd_launch::accept::Options::new().listen_on("0").listen_on("0").bind()?;
    /// assert_eq!(acceptor.sockets().len(), 2);
    /// assert!(acceptor.sockets().iter().all(|s| s.fd == 3));
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn sockets(&self) -> &[LaunchedSocket] {
        &self.sockets
    }

    /// The IP address and port of listener `index`.
    ///
    /// # Panics
    /// If there is no such listener or it is not a TCP socket: a test's mistake.
    ///
    /// ```
    /// let acceptor = sd_launch::accept::Options::new().bind()?;
    /// assert_ne!(acceptor.local_addr(0).port(), 0);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn local_addr(&self, index: usize) -> SocketAddr {
        crate::launched::inet_addr(&self.sockets, index)
    }

    /// A handle that stops [`serve`](Acceptor::serve) from another thread.
    ///
    /// ```
    /// let acceptor = sd_launch::accept::Options::new().bind()?;
    /// let stopper = acceptor.stopper();
    /// std::thread::spawn(move || stopper.stop());
    /// acceptor.serve(None, |_| sd_launch::Launch::new("true"))?;
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.stop_tx))
    }

    /// Accept connections and start one daemon per connection, the [`Launch`] that `make`
    /// returns with the connection added (see the [module docs](self)). Give `make` a
    /// launch without sockets, so that the connection lands at fd 3.
    ///
    /// Runs until a [`Stopper`] or, with `signals` (blocked before any daemon was started,
    /// in this thread), `SIGINT`/`SIGTERM` stops it; then closes the listeners, stops the
    /// running daemons and returns. Also returns, after stopping the daemons, a launch error
    /// other than [`Error::Spawn`], and an `accept` failure that is not about one connection
    /// or a shortage of fds or memory.
    ///
    /// ```
    /// use std::io::Read;
    /// use sd_launch::{accept, Launch};
    /// let acceptor = accept::Options::new().pass(accept::Pass::Inetd).bind()?;
    /// let addr = acceptor.local_addr(0);
    /// let stopper = acceptor.stopper();
    /// let client = std::thread::spawn(move || {
    ///     let mut reply = String::new();
    ///     std::net::TcpStream::connect(addr)?.read_to_string(&mut reply)?;
    ///     stopper.stop();
    ///     Ok::<_, std::io::Error>(reply)
    /// });
    /// let served = acceptor.serve(None, |conn| {
    ///     Launch::new("sh").args(["-c", "echo hello $REMOTE_ADDR"]).env("N", conn.number.to_string())
    /// })?;
    /// assert_eq!(client.join().unwrap()?, "hello 127.0.0.1\n");
    /// assert_eq!(served.connections, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn serve<F>(
        mut self,
        signals: Option<&BlockedSignals>,
        mut make: F,
    ) -> Result<Served, Error>
    where
        F: FnMut(&Connection) -> Launch,
    {
        let mut children = Vec::new();
        let mut served = Served::default();
        let result = self.run(signals, &mut make, &mut children, &mut served);
        // Stop accepting first: new clients are refused instead of queueing for nobody.
        let listeners = std::mem::take(&mut self.listeners);
        let (sockets, files): (Vec<_>, Vec<_>) =
            listeners.into_iter().map(|l| (l.socket, l.created)).unzip();
        drop(sockets);
        let signal = match &result {
            Ok(Some(sig)) => *sig,
            _ => libc::SIGTERM,
        };
        stop(&mut children, signal, self.stop_timeout);
        drop(files); // socket files go once nobody can use them
        result.map(|signal| Served { signal, ..served })
    }

    /// The loop; returns the stopping signal (`None` for the stopper).
    fn run<F>(
        &mut self,
        signals: Option<&BlockedSignals>,
        make: &mut F,
        children: &mut Vec<Launched>,
        served: &mut Served,
    ) -> Result<Option<i32>, Error>
    where
        F: FnMut(&Connection) -> Launch,
    {
        let first = self.listeners[0].address.clone();
        let wait_error = |e| accept_error("wait for connections on", &first, e);
        let signal_fd = match signals {
            Some(s) => s.pending_fd().map_err(wait_error)?,
            None => None,
        };
        let mut paused_until: Option<Instant> = None;
        let mut number = 0u64;
        loop {
            reap(children);
            if paused_until.is_some_and(|t| Instant::now() >= t) {
                paused_until = None;
            }
            let accepting = children.len() < self.max_connections && paused_until.is_none();
            let mut fds = vec![pollfd(self.stop_rx.as_raw_fd())];
            if let Some(fd) = &signal_fd {
                fds.push(pollfd(fd.as_raw_fd()));
            }
            let first_listener = fds.len();
            if accepting {
                fds.extend(self.listeners.iter().map(|l| pollfd(l.socket.as_raw_fd())));
            }
            // Without a signalfd, signals are only collected at the tick; daemons are
            // reaped at the tick in any case (SIGCHLD may go to another thread).
            let mut timeout = if children.is_empty() && (signals.is_none() || signal_fd.is_some()) {
                None
            } else {
                Some(TICK)
            };
            if let Some(t) = paused_until {
                let left = t.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(left, |d| d.min(left)));
            }
            poll(&mut fds, timeout).map_err(wait_error)?;

            if fds[0].revents != 0 {
                let mut byte = [0u8; 16];
                let _ = (&self.stop_rx).read(&mut byte);
                return Ok(None);
            }
            if let Some(blocked) = signals {
                while let Some(sig) = blocked.take_pending().map_err(wait_error)? {
                    if sig == libc::SIGINT || sig == libc::SIGTERM {
                        return Ok(Some(sig));
                    }
                    if FORWARDED.contains(&sig) {
                        for child in children.iter() {
                            let _ = child.signal(sig);
                        }
                    }
                    // SIGCHLD: reaped at the top of the loop.
                }
            }
            if !accepting {
                continue;
            }
            reap(children);
            for (i, fd) in fds[first_listener..].iter().enumerate() {
                if fd.revents == 0 {
                    continue;
                }
                while children.len() < self.max_connections {
                    let (conn, peer) = match self.listeners[i].socket.accept() {
                        Ok(pair) => pair,
                        Err(e) => match classify(&e) {
                            AcceptFailure::Drained => break,
                            AcceptFailure::ThisConnection => continue,
                            AcceptFailure::Resources => {
                                paused_until = Some(Instant::now() + BACKOFF);
                                break;
                            }
                            AcceptFailure::Fatal => {
                                return Err(accept_error(
                                    "accept connections on",
                                    &self.listeners[i].address,
                                    e,
                                ));
                            }
                        },
                    };
                    number += 1;
                    let connection = Connection {
                        number,
                        listener: i,
                        peer: peer.as_socket(),
                    };
                    match self.start(conn, &connection, make) {
                        Ok(daemon) => {
                            tracing::debug!(
                                "connection {number} from {:?}: daemon pid {}",
                                connection.peer,
                                daemon.pid()
                            );
                            served.connections += 1;
                            children.push(daemon);
                        }
                        Err(e @ Error::Spawn { .. }) => {
                            tracing::warn!("connection {number}: no daemon started: {e}");
                            served.failed += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if paused_until.is_some() {
                    break;
                }
            }
        }
    }

    /// Start the daemon for one connection; our copy of `conn` is closed when this returns.
    fn start<F>(
        &self,
        conn: Socket,
        connection: &Connection,
        make: &mut F,
    ) -> Result<Launched, Error>
    where
        F: FnMut(&Connection) -> Launch,
    {
        let listener = &self.listeners[connection.listener];
        // Daemons expect a blocking socket, as systemd passes it (on the BSDs an accepted
        // socket inherits the listener's O_NONBLOCK).
        conn.set_nonblocking(false)
            .map_err(|e| accept_error("set up a connection on", &listener.address, e))?;
        let fd = OwnedFd::from(conn);
        let mut launch = make(connection);
        if let Some(peer) = connection.peer {
            let ip = match peer.ip() {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
                v4 => v4,
            };
            launch = launch
                .env("REMOTE_ADDR", ip.to_string())
                .env("REMOTE_PORT", peer.port().to_string());
        }
        let launch = match self.pass {
            Pass::Fd => launch.named_fd(listener.name.as_deref().unwrap_or(CONNECTION_NAME), fd),
            Pass::Inetd => launch.inetd(fd),
        };
        launch.spawn()
    }
}

/// Reap every daemon that has exited.
fn reap(children: &mut Vec<Launched>) {
    // An error (ECHILD: someone else reaped it) also means it is gone.
    children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
}

/// Send `signal` to every daemon, give them `grace` to exit, then `SIGKILL` the rest; all are
/// reaped when this returns.
fn stop(children: &mut Vec<Launched>, signal: i32, grace: Duration) {
    reap(children);
    for child in children.iter() {
        let _ = child.signal(signal);
    }
    let deadline = Instant::now() + grace;
    for child in children.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(child.wait_timeout(left), Ok(Some(_))) {
            let _ = child.kill();
        }
    }
    children.clear();
}

enum AcceptFailure {
    /// Nothing more to accept now.
    Drained,
    /// That one connection failed (reset before accept, ...): go on.
    ThisConnection,
    /// Out of fds or memory: pause, then retry.
    Resources,
    Fatal,
}

fn classify(e: &io::Error) -> AcceptFailure {
    if e.kind() == io::ErrorKind::WouldBlock {
        return AcceptFailure::Drained;
    }
    match e.raw_os_error() {
        Some(
            libc::EINTR
            | libc::ECONNABORTED
            | libc::EPROTO
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::EPERM,
        ) => AcceptFailure::ThisConnection,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            AcceptFailure::Resources
        }
        _ => AcceptFailure::Fatal,
    }
}

fn pollfd(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// `poll` until something is ready or `timeout` passes (`None`: no timeout); `EINTR` counts
/// as a timeout.
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = timeout.map_or(-1, |t| {
        t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
    });
    // SAFETY: poll reads and writes `fds`, a valid slice of pollfd structs we own.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
        fds.iter_mut().for_each(|f| f.revents = 0);
    }
    Ok(())
}

fn accept_error(action: &'static str, address: &Address, source: io::Error) -> Error {
    let hint = match source.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => " (out of file descriptors: raise ulimit -n)",
        _ => "",
    };
    Error::Socket {
        action,
        address: address.to_string(),
        source,
        hint,
    }
}
