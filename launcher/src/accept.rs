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
//! * Finished daemons are reaped as they exit (no zombies): the supervisor's loop waits on
//!   their pidfds, the listeners, the signals and the stop channel at once.
//! * With [`Signals`], `SIGINT` and `SIGTERM` stop serving: the listeners are closed,
//!   the signal is forwarded to every running daemon, and those still running after
//!   [`stop_timeout`](Options::stop_timeout) get `SIGKILL`. `SIGHUP`, `SIGQUIT`, `SIGUSR1`
//!   and `SIGUSR2` are forwarded to every running daemon and serving goes on. A [`Stopper`]
//!   stops the same way, with `SIGTERM`.
//! * A daemon that cannot be started for want of file descriptors (`EMFILE`, `ENFILE`: the
//!   fd limit, `ulimit -n`) does not cost its connection: accepting pauses, the connection
//!   waits (held by us) until a running daemon exits, and a warning names the fd limit. Only
//!   when no daemon runs to free any is it closed unanswered. Any other failure to start a
//!   daemon for want of resources ([`Error::Spawn`]: fork failed, say) costs its connection
//!   (closed unanswered, counted in [`Served::failed`]); any other launch error (program not
//!   found, bad arguments) stops serving and is returned, as it would fail for every
//!   connection.
//! * Datagram sockets have no connections: binding one is an [`Error::Conflict`].

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::error::Error;
use crate::launch::Launch;
use crate::launched::Launched;
use crate::sockets::{Address, CreatedPath, LaunchedSocket, SocketSet, SocketSpec, Transport};
use crate::supervisor::{DEFAULT_STOP_TIMEOUT, Event, FORWARDED, Key, Policy, Signals, Watch, run};

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

/// Pause after an `accept` failed for want of fds or memory, instead of spinning.
pub(crate) const BACKOFF: Duration = Duration::from_millis(100);

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

/// What to listen on and how to serve: the builder of an [`Acceptor`].
///
/// ```
/// use sd_launch::accept::{Options, Pass};
/// let acceptor = Options::new()
///     .listen_on("127.0.0.1:0")
///     .pass(Pass::Inetd)
///     .max_connections(8)
///     .bind()?;
/// assert_eq!(acceptor.sockets()[0].kind, sd_launch::SocketKind::Tcp);
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug)]
pub struct Options {
    sockets: SocketSet,
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
    /// [`DEFAULT_MAX_CONNECTIONS`], [`DEFAULT_STOP_TIMEOUT`].
    ///
    /// ```
    /// let acceptor = sd_launch::accept::Options::new().bind()?;
    /// assert!(acceptor.local_addr(0).ip().is_loopback());
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn new() -> Options {
        Options {
            sockets: SocketSet::new(),
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
        self.sockets.listen(spec);
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
        self.sockets.listen_on(address);
        self
    }

    /// Listen backlog, where connections wait while [`max_connections`](Options::max_connections)
    /// daemons run (default: the kernel's maximum,
    /// [`sockets::DEFAULT_BACKLOG`](crate::sockets::DEFAULT_BACKLOG)).
    ///
    /// ```
    /// let options = sd_launch::accept::Options::new().backlog(128);
    /// # let _ = options;
    /// ```
    pub fn backlog(mut self, backlog: i32) -> Options {
        self.sockets.backlog(backlog);
        self
    }

    /// Mode of created Unix socket files (default `0o600`).
    ///
    /// ```
    /// let options = sd_launch::accept::Options::new().socket_mode(0o660);
    /// # let _ = options;
    /// ```
    pub fn socket_mode(mut self, mode: u32) -> Options {
        self.sockets.socket_mode(mode);
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
    /// [`DEFAULT_STOP_TIMEOUT`], 10 s).
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
        if self
            .sockets
            .specs()?
            .iter()
            .any(|spec| spec.transport == Transport::Datagram)
        {
            return Err(Error::Conflict(
                "datagram sockets have no connections to accept: \
                 use stream (or seqpacket) sockets in accept mode",
            ));
        }
        let (fds, described, created) = self.sockets.bind()?.into_parts();
        let mut sockets = Vec::with_capacity(described.len());
        let mut listeners = Vec::with_capacity(described.len());
        for (fd, described) in fds.into_iter().zip(described) {
            let socket = Socket::from(fd);
            let address = described
                .address
                .clone()
                .expect("a bound spec has an address");
            socket
                .set_nonblocking(true)
                .map_err(|e| accept_error("make non-blocking", &address, e))?;
            listeners.push(Listener {
                socket,
                address,
                name: described.name.clone(),
            });
            sockets.push(LaunchedSocket {
                fd: match self.pass {
                    Pass::Fd => 3,
                    Pass::Inetd => 0,
                },
                ..described
            });
        }
        let (stop_rx, stop_tx) = UnixStream::pair()
            .and_then(|(rx, tx)| {
                rx.set_nonblocking(true)?;
                tx.set_nonblocking(true)?;
                Ok((rx, tx))
            })
            .map_err(|source| Error::Os {
                context: "create the stop channel of the acceptor",
                source,
            })?;
        Ok(Acceptor {
            listeners,
            created,
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
    /// The Unix socket files, removed when dropped (after the listeners are closed).
    created: Vec<CreatedPath>,
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
pub struct Stopper(pub(crate) Arc<UnixStream>);

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
    pub fn serve<F, L>(mut self, signals: Option<&Signals>, make: F) -> Result<Served, Error>
    where
        F: FnMut(&Connection) -> L,
        L: IntoLaunch,
    {
        let mut policy = Serve {
            acceptor: &self,
            make,
            children: Vec::new(),
            waiting: VecDeque::new(),
            served: Served::default(),
            number: 0,
            paused_until: None,
            starved: false,
        };
        let result = run(signals, &mut policy);
        let Serve {
            mut children,
            served,
            ..
        } = policy;
        // Stop accepting first: new clients are refused instead of queueing for nobody.
        self.listeners.clear();
        let signal = match &result {
            Ok(Some(sig)) => *sig,
            _ => libc::SIGTERM,
        };
        crate::process::stop_all(
            children.iter_mut().map(Launched::child_mut),
            signal,
            self.stop_timeout,
        );
        drop(std::mem::take(&mut self.created)); // socket files go once nobody can use them
        result.map(|signal| Served { signal, ..served })
    }

    /// Start the daemon for one connection; our copy of `conn` is closed when this returns.
    fn start<F, L>(
        &self,
        conn: &Socket,
        connection: &Connection,
        make: &mut F,
    ) -> Result<Launched, Error>
    where
        F: FnMut(&Connection) -> L,
        L: IntoLaunch,
    {
        let listener = &self.listeners[connection.listener];
        // Daemons expect a blocking socket, as systemd passes it (on the BSDs an accepted
        // socket inherits the listener's O_NONBLOCK).
        conn.set_nonblocking(false)
            .map_err(|e| accept_error("set up a connection on", &listener.address, e))?;
        let fd = OwnedFd::from(conn.try_clone().map_err(|source| Error::Spawn {
            program: "the daemon".into(),
            step: "duplicating the connection",
            source,
        })?);
        let mut launch = make(connection).into_launch()?;
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

/// What the closure of [`Acceptor::serve`] returns: a [`Launch`], or a `Result` of one (an
/// error stops serving and is returned, e.g. an output file that cannot be opened).
///
/// ```
/// use sd_launch::accept::IntoLaunch;
/// let launch = Ok::<_, sd_launch::Error>(sd_launch::Launch::new("true")).into_launch()?;
/// # let _ = launch;
/// # Ok::<(), sd_launch::Error>(())
/// ```
pub trait IntoLaunch {
    /// The launch, or why there is none.
    fn into_launch(self) -> Result<Launch, Error>;
}

impl IntoLaunch for Launch {
    fn into_launch(self) -> Result<Launch, Error> {
        Ok(self)
    }
}

impl IntoLaunch for Result<Launch, Error> {
    fn into_launch(self) -> Result<Launch, Error> {
        self
    }
}

/// The accept policy of the supervisor's loop.
struct Serve<'a, F> {
    acceptor: &'a Acceptor,
    make: F,
    children: Vec<Launched>,
    /// Connections accepted whose daemon could not start for want of fds yet.
    waiting: VecDeque<(Socket, Connection)>,
    served: Served,
    number: u64,
    /// Accepting pauses after `accept` failed for want of fds or memory.
    paused_until: Option<Instant>,
    /// A daemon could not be started for want of fds: accept nothing until one exits.
    starved: bool,
}

impl<F, L> Serve<'_, F>
where
    F: FnMut(&Connection) -> L,
    L: IntoLaunch,
{
    fn accepting(&self) -> bool {
        self.children.len() < self.acceptor.max_connections
            && self.paused_until.is_none()
            && !self.starved
            && self.waiting.is_empty()
    }

    /// Start a daemon for `conn`; on a shortage of fds keep the connection for later.
    fn start(&mut self, conn: Socket, connection: Connection) -> Result<(), Error> {
        match self.acceptor.start(&conn, &connection, &mut self.make) {
            Ok(daemon) => {
                tracing::debug!(
                    "connection {} from {:?}: daemon pid {}",
                    connection.number,
                    connection.peer,
                    daemon.pid()
                );
                self.served.connections += 1;
                self.children.push(daemon);
                Ok(())
            }
            Err(e) if out_of_fds(&e) && !self.children.is_empty() => {
                if !self.starved {
                    tracing::warn!(
                        "connection {}: out of file descriptors (the fd limit, ulimit -n, is \
                         reached): not accepting until a daemon exits",
                        connection.number
                    );
                }
                self.starved = true;
                self.waiting.push_front((conn, connection));
                Ok(())
            }
            Err(e @ (Error::Spawn { .. } | Error::Os { .. })) => {
                let hint = if out_of_fds(&e) {
                    " (the fd limit is reached: raise ulimit -n)"
                } else {
                    ""
                };
                tracing::warn!(
                    "connection {}: no daemon started: {e}{hint}",
                    connection.number
                );
                self.served.failed += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn accept_from(&mut self, i: usize) -> Result<(), Error> {
        while self.accepting() {
            let listener = &self.acceptor.listeners[i];
            let (conn, peer) = match listener.socket.accept() {
                Ok(pair) => pair,
                Err(e) => match classify(&e) {
                    AcceptFailure::Drained => return Ok(()),
                    AcceptFailure::ThisConnection => continue,
                    AcceptFailure::Resources => {
                        tracing::warn!("accept on {}: {e}; pausing", listener.address);
                        self.paused_until = Some(Instant::now() + BACKOFF);
                        return Ok(());
                    }
                    AcceptFailure::Fatal => {
                        return Err(accept_error("accept connections on", &listener.address, e));
                    }
                },
            };
            self.number += 1;
            let connection = Connection {
                number: self.number,
                listener: i,
                peer: peer.as_socket(),
            };
            self.start(conn, connection)?;
        }
        Ok(())
    }

    /// Reap daemon `pid` if it has exited; then retry the connections waiting for fds.
    fn reap(&mut self, pid: u32) -> Result<(), Error> {
        // An error (ECHILD: someone else reaped it) also means it is gone.
        self.children
            .retain_mut(|c| c.pid() != pid || matches!(c.try_wait(), Ok(None)));
        self.starved = false;
        while !self.starved
            && self.children.len() < self.acceptor.max_connections
            && let Some((conn, connection)) = self.waiting.pop_front()
        {
            self.start(conn, connection)?;
        }
        Ok(())
    }
}

impl<F, L> Policy for Serve<'_, F>
where
    F: FnMut(&Connection) -> L,
    L: IntoLaunch,
{
    /// The signal that stopped serving (`None` for the stopper).
    type Output = Option<i32>;

    fn watch(&self, watch: &mut Watch) {
        watch.add(Key::Stop, self.acceptor.stop_rx.as_raw_fd());
        for child in &self.children {
            if let Some(fd) = child.child().pidfd() {
                watch.add(Key::Child(child.pid()), fd);
            }
        }
        if self.accepting() {
            for (i, l) in self.acceptor.listeners.iter().enumerate() {
                watch.add(Key::Listener(i), l.socket.as_raw_fd());
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.paused_until
    }

    fn handle(&mut self, event: Event) -> Result<Option<Option<i32>>, Error> {
        match event {
            Event::Readable(Key::Stop) => {
                let mut byte = [0u8; 16];
                let _ = (&self.acceptor.stop_rx).read(&mut byte);
                Ok(Some(None))
            }
            Event::Readable(Key::Child(pid)) => self.reap(pid).map(|()| None),
            Event::Readable(Key::Listener(i)) => self.accept_from(i).map(|()| None),
            Event::Readable(
                Key::Notify | Key::Ready(_) | Key::Conn(_) | Key::Proxy(_) | Key::Backend,
            ) => Ok(None),
            Event::Signal(sig @ (libc::SIGINT | libc::SIGTERM)) => Ok(Some(Some(sig))),
            Event::Signal(sig) => {
                if FORWARDED.contains(&sig) {
                    for child in &self.children {
                        let _ = child.child().forward(sig);
                    }
                }
                Ok(None)
            }
            Event::Deadline => {
                self.paused_until = None;
                Ok(None)
            }
        }
    }
}

/// Whether `e` is a shortage of file descriptors.
fn out_of_fds(e: &Error) -> bool {
    let source = match e {
        Error::Spawn { source, .. } | Error::Os { source, .. } => source,
        _ => return false,
    };
    matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

pub(crate) enum AcceptFailure {
    /// Nothing more to accept now.
    Drained,
    /// That one connection failed (reset before accept, ...): go on.
    ThisConnection,
    /// Out of fds or memory: pause, then retry.
    Resources,
    Fatal,
}

pub(crate) fn classify(e: &io::Error) -> AcceptFailure {
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

pub(crate) fn accept_error(action: &'static str, address: &Address, source: io::Error) -> Error {
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
