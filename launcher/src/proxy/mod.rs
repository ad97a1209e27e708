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
//!   could take it before the daemon binds it.
//!
//! A daemon told neither is an [`Error::Conflict`] (exit 2: "the daemon is never told where
//! to listen"), and so is a daemon told both.
//!
//! How connections are served (one thread, the supervisor's loop, for every connection):
//! * Each connection is accepted at once and connected to the backend with a non-blocking
//!   `connect`. While the backend is not listening yet (no socket file: `ENOENT`; nobody
//!   listening: `ECONNREFUSED`; backlog full: `EAGAIN`) connections wait, in order, and are
//!   retried on a deadline of the loop, from 1 ms doubling to 50 ms (a retry, not a poll of
//!   ours: the kernel has no "someone listens now" event to wait for). No client sees a
//!   refusal while the daemon starts.
//! * A connection the backend has not accepted within the
//!   [connect timeout](Options::connect_timeout) (default [`DEFAULT_CONNECT_TIMEOUT`], 30 s)
//!   is closed, and the log says why, with the end of the daemon's stderr.
//! * Bytes move both ways with `splice(2)` through a pipe per direction (zero-copy), or
//!   through a 64 KiB buffer where that cannot be; a side is only read while its peer has
//!   room (backpressure); an end (`EOF`) is passed on as `shutdown(SHUT_WR)` (half-close);
//!   an error on either side closes both.
//! * The daemon is supervised as in the foreground: `SIGINT` and `SIGTERM` stop serving
//!   (the listeners close, the daemon gets the signal, and `SIGKILL` after the
//!   [stop timeout](Options::stop_timeout)); `SIGHUP`, `SIGQUIT`, `SIGUSR1` and `SIGUSR2`
//!   are forwarded to it. When the daemon exits, serving ends: connections are closed and
//!   the public sockets with them, so clients are refused at once instead of hanging.
//! * Streams only: a datagram public socket is an [`Error::Conflict`] (datagrams have no
//!   connection to forward).

mod flow;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
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
    Address, CreatedPath, LaunchedSocket, SocketKind, SocketSet, SocketSpec, Transport,
};
use crate::supervisor::{DEFAULT_STOP_TIMEOUT, Event, FORWARDED, Key, Policy, Signals, Watch, run};
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

/// The first retry of a connection the backend refused (it is not listening yet).
const RETRY_FIRST: Duration = Duration::from_millis(1);
/// Retries double up to this.
const RETRY_MAX: Duration = Duration::from_millis(50);

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
    pub fn bind(self, mut daemon: Launch) -> Result<Proxy, Error> {
        let kind = backend_kind(&daemon)?;
        if self
            .sockets
            .specs()?
            .iter()
            .any(|spec| spec.transport != Transport::Stream)
        {
            return Err(Error::Conflict(
                "proxy mode forwards stream connections (TCP and Unix): datagram and \
                 seqpacket sockets have none it can forward",
            ));
        }
        let (dir, backend, described) = choose_backend(kind)?;
        let mut addresses = Addresses::default();
        let described = [described];
        addresses.add(BACKEND, &described);
        daemon
            .expand_templates(&addresses)
            .map_err(|(key, reason)| Error::Template { key, reason })?;
        drop(daemon.take_sockets());
        daemon.find_program()?;
        let (fds, sockets, created) = self.sockets.bind()?.into_parts();
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
            _dir: dir,
            daemon: daemon.no_pid(true),
            connect_timeout: self.connect_timeout,
            stop_timeout: self.stop_timeout,
            stop_rx,
            stop_tx: Arc::new(stop_tx),
        })
    }
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
    /// The private directory of a Unix backend, removed last.
    _dir: Option<tempfile::TempDir>,
    daemon: Launch,
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

    /// [`serve`](Proxy::serve), calling `started` with the daemon's pid once it runs.
    fn serve_with(
        mut self,
        signals: Option<&Signals>,
        started: impl FnOnce(u32),
    ) -> Result<Proxied, Error> {
        let mut prepared = self.daemon.clone().prepare_bound(None)?;
        let (child, _) = prepared.spawn_child(false)?;
        let daemon = prepared.child(child);
        started(daemon.pid());
        tracing::debug!(
            "proxy: {} started as pid {}, backend {:?}",
            daemon.program(),
            daemon.pid(),
            self.backend
        );
        let mut policy = Forward {
            proxy: &self,
            _prepared: prepared,
            daemon,
            conns: HashMap::new(),
            waiting: VecDeque::new(),
            retry_at: None,
            delay: RETRY_FIRST,
            paused_until: None,
            proxied: Proxied::default(),
        };
        let result = run(signals, &mut policy);
        let Forward {
            mut daemon,
            conns,
            proxied,
            ..
        } = policy;
        // Clients first: a connection closed now is refused at once, not left hanging.
        drop(conns);
        self.listeners.clear();
        let (status, signal) = match result {
            Ok(End::Exited(status)) => (Some(status), None),
            Ok(End::Signal(sig)) => (None, Some(sig)),
            Ok(End::Stopped) => (None, None),
            Err(e) => {
                let _ = daemon.kill();
                return Err(e);
            }
        };
        if status.is_none() {
            crate::process::stop_all(
                std::iter::once(daemon.child_mut()),
                signal.unwrap_or(libc::SIGTERM),
                self.stop_timeout,
            );
        }
        drop(std::mem::take(&mut self.created));
        Ok(Proxied {
            status,
            signal,
            ..proxied
        })
    }

    /// [`serve`](Proxy::serve) in a thread of its own; returns once the daemon runs. The
    /// handle stops everything when dropped. For tests: no signals are handled.
    ///
    /// ```
    /// let running = sd_launch::Launch::new("sh").args(["-c", "sleep 30", "${backend.path}"]).proxy()?.spawn()?;
    /// assert!(running.daemon_pid() > 1);
    /// let proxied = running.stop()?;
    /// assert_eq!(proxied.connections, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn(self) -> Result<Running, Error> {
        let sockets = self.sockets.clone();
        let backend = self.backend.clone();
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
        match rx.recv() {
            Ok(pid) => Ok(Running {
                sockets,
                backend,
                pid,
                stopper,
                thread: Some(thread),
            }),
            // The thread ended before the daemon ran: its error says why.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) | Err(_) => Err(Error::Conflict("the proxy thread ended early")),
            },
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
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or(Err(Error::Conflict("the proxy thread panicked")))
    }

    fn finish(&mut self) -> Result<Proxied, Error> {
        self.stopper.stop();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or(Err(Error::Conflict("the proxy thread panicked"))),
            None => Ok(Proxied::default()),
        }
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

/// The backend: its private directory (Unix), its address, its description for templates.
fn choose_backend(
    kind: SocketKind,
) -> Result<(Option<tempfile::TempDir>, Backend, LaunchedSocket), Error> {
    let os = |context| move |source| Error::Os { context, source };
    if kind == SocketKind::UnixStream {
        // Mode 0700: only we (and the daemon, our user) can reach the socket inside.
        let dir = tempfile::Builder::new()
            .prefix("sd-launch-proxy.")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(os("create the private directory of the backend socket"))?;
        let path = dir.path().join("backend.sock");
        let described = LaunchedSocket {
            fd: -1,
            name: Some(BACKEND.into()),
            kind,
            address: Some(Address::Unix(path.clone())),
        };
        return Ok((Some(dir), Backend::Unix(path), described));
    }
    // A port the kernel says is free now; the daemon binds it a moment later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(os("find a free loopback port for the backend"))?;
    let described = LaunchedSocket {
        fd: -1,
        name: Some(BACKEND.into()),
        kind,
        address: Some(Address::Inet(addr)),
    };
    Ok((None, Backend::Tcp(addr), described))
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
    /// A non-blocking `connect` is under way.
    Connecting(Socket),
    /// Connected: bytes flow both ways.
    Open {
        backend: Socket,
        /// Client to backend.
        up: Flow,
        /// Backend to client.
        down: Flow,
    },
}

#[derive(Debug)]
struct Conn {
    client: Socket,
    since: Instant,
    state: State,
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

/// The proxy policy of the supervisor's loop.
struct Forward<'a> {
    proxy: &'a Proxy,
    /// The daemon's plan (its output capture lives as long as it).
    _prepared: Prepared,
    daemon: Launched,
    conns: HashMap<u64, Conn>,
    /// Connections waiting for the backend, oldest first.
    waiting: VecDeque<u64>,
    /// When to try the waiting connections again (`None`: the backend is believed up).
    retry_at: Option<Instant>,
    delay: Duration,
    /// Accepting pauses after `accept` failed for want of fds or memory.
    paused_until: Option<Instant>,
    proxied: Proxied,
}

impl Forward<'_> {
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
                },
            );
            self.waiting.push_back(n);
        }
        if self.retry_at.is_none() {
            self.connect_waiting();
        }
        Ok(())
    }

    /// Connect the waiting connections in order, until the backend refuses one.
    fn connect_waiting(&mut self) {
        self.retry_at = None;
        while let Some(&n) = self.waiting.front() {
            match connect(&self.proxy.backend) {
                Attempt::Started(state) => {
                    self.waiting.pop_front();
                    if let Some(conn) = self.conns.get_mut(&n) {
                        conn.state = state;
                        self.delay = RETRY_FIRST;
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
        if self.conns.remove(&n).is_some() {
            self.proxied.timed_out += 1;
            let tail = self
                .daemon
                .stderr_tail()
                .map(|t| {
                    format!(
                        "; the daemon's stderr ended with:\n  | {}",
                        t.replace('\n', "\n  | ")
                    )
                })
                .unwrap_or_default();
            tracing::warn!("connection {n} closed: {why}{tail}");
        }
    }

    /// Move connection `n` on as far as it goes now.
    fn progress(&mut self, n: u64) {
        let Some(conn) = self.conns.get_mut(&n) else {
            return;
        };
        if let State::Connecting(socket) = &conn.state {
            match socket.take_error() {
                Ok(None) => {
                    let State::Connecting(backend) =
                        std::mem::replace(&mut conn.state, State::Waiting)
                    else {
                        unreachable!("matched above");
                    };
                    conn.state = State::Open {
                        backend,
                        up: Flow::new(),
                        down: Flow::new(),
                    };
                }
                Ok(Some(e)) | Err(e) if not_listening(&e) => {
                    conn.state = State::Waiting;
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
        let State::Open { backend, up, down } = &mut conn.state else {
            return;
        };
        // Bounded: each step moves bytes or ends a direction; a peer that keeps the
        // data coming is left for the next turn, so that others get theirs.
        for _ in 0..16 {
            let moved = up
                .step(&conn.client, backend)
                .and_then(|a| Ok(a | down.step(backend, &conn.client)?));
            match moved {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::debug!("connection {n}: {e}: closed");
                    self.conns.remove(&n);
                    return;
                }
            }
        }
        if up.done() && down.done() {
            self.conns.remove(&n);
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        let timeout = self.proxy.connect_timeout;
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !matches!(c.state, State::Open { .. }) && now >= c.since + timeout)
            .map(|(n, _)| *n)
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
    }
}

impl Policy for Forward<'_> {
    type Output = End;

    fn watch(&self, watch: &mut Watch) {
        watch.add(Key::Stop, self.proxy.stop_rx.as_raw_fd());
        if let Some(fd) = self.daemon.child().pidfd() {
            watch.add(Key::Child(self.daemon.pid()), fd);
        }
        if self.paused_until.is_none() {
            for (i, (l, _)) in self.proxy.listeners.iter().enumerate() {
                watch.add(Key::Listener(i), l.as_raw_fd());
            }
        }
        for (n, conn) in &self.conns {
            match &conn.state {
                State::Waiting => {}
                State::Connecting(s) => {
                    watch.add_events(Key::Conn(*n), s.as_raw_fd(), libc::POLLOUT)
                }
                State::Open { backend, up, down } => {
                    let events = |read: &Flow, write: &Flow| {
                        let mut e = 0;
                        if read.wants_read() {
                            e |= libc::POLLIN;
                        }
                        if write.wants_write() {
                            e |= libc::POLLOUT;
                        }
                        e
                    };
                    let client = events(up, down);
                    if client != 0 {
                        watch.add_events(Key::Conn(*n), conn.client.as_raw_fd(), client);
                    }
                    let server = events(down, up);
                    if server != 0 {
                        watch.add_events(Key::Conn(*n), backend.as_raw_fd(), server);
                    }
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let timeout = self.proxy.connect_timeout;
        let oldest = self
            .conns
            .values()
            .filter(|c| !matches!(c.state, State::Open { .. }))
            .map(|c| c.since + timeout)
            .min();
        [self.retry_at, self.paused_until, oldest]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle(&mut self, event: Event) -> Result<Option<End>, Error> {
        match event {
            Event::Readable(Key::Stop) => {
                let mut byte = [0u8; 16];
                let _ = (&self.proxy.stop_rx).read(&mut byte);
                Ok(Some(End::Stopped))
            }
            Event::Readable(Key::Child(_)) => match self.daemon.try_wait() {
                Ok(None) => Ok(None),
                Ok(Some(status)) => {
                    tracing::info!(
                        "{} exited ({status}): closing {} connection(s) and the public sockets",
                        self.daemon.program(),
                        self.conns.len()
                    );
                    Ok(Some(End::Exited(status)))
                }
                Err(source) => Err(Error::Os {
                    context: "wait for the daemon",
                    source,
                }),
            },
            Event::Readable(Key::Listener(i)) => self.accept_from(i).map(|()| None),
            Event::Readable(Key::Conn(n)) => {
                self.progress(n);
                Ok(None)
            }
            Event::Readable(Key::Notify | Key::Ready(_)) => Ok(None),
            Event::Signal(sig @ (libc::SIGINT | libc::SIGTERM)) => Ok(Some(End::Signal(sig))),
            Event::Signal(sig) => {
                if FORWARDED.contains(&sig) {
                    let _ = self.daemon.child().forward(sig);
                }
                Ok(None)
            }
            Event::Deadline => {
                self.timers();
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
    let socket = match Socket::new(domain, Type::STREAM, None).and_then(|s| {
        s.set_nonblocking(true)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => return Attempt::Failed(e),
    };
    if matches!(backend, Backend::Tcp(_)) {
        let _ = socket.set_tcp_nodelay(true);
    }
    match socket.connect(&addr) {
        Ok(()) => Attempt::Started(State::Connecting(socket)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            Attempt::Started(State::Connecting(socket))
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
