//! Serving: take every passed socket (or bind the fallback address), accept on each listener,
//! run each connection with hyper-util's auto builder (HTTP/1.1 and h2c), and drain gracefully
//! on SIGTERM/SIGINT.
//!
//! The first stop signal starts the drain; the drain ends when every connection is done or
//! after `--drain-timeout`, and nothing else ends it: further SIGTERMs and SIGINTs, of either
//! kind, are logged and change nothing. A stop signal often arrives twice for one intent: a
//! terminal's Ctrl-C goes to the whole foreground process group, so a daemon run under a
//! launcher that forwards signals gets the launcher's copy as well, a few milliseconds after
//! its own. Taking the second one as "stop waiting" failed the very requests a graceful stop
//! exists for. This is what systemd expects of a service: a repeated SIGTERM is not an order
//! to hurry, the supervisor's answer to a slow stop is SIGKILL (after `TimeoutStopSec=`). To
//! stop at once: SIGKILL, or `Ctrl-\` at the terminal (SIGQUIT: not handled, its default
//! action ends the process), or a shorter `--drain-timeout`.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use listenfd_core::inspect::inspect_raw;
use listenfd_core::notify::{Notifier, State};
use listenfd_core::{Family, FdKind, ListenFds, SocketType};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::routes::{self, Info, SocketInfo};
use crate::signals::StopSignals;

/// How to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bound when no socket was passed.
    pub fallback: SocketAddr,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub drain_timeout: Duration,
    /// Where to send `READY=1` once serving and `STOPPING=1` when draining (sd_notify), if
    /// `NOTIFY_SOCKET` was set.
    pub notifier: Option<Arc<Notifier>>,
}

/// Why serving failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Taking a passed fd failed (wrong type, ...).
    #[error("{0}")]
    Receive(#[from] listenfd_core::Error),
    /// A passed fd is not a stream socket.
    #[error("passed {0}, but demo-server serves stream sockets only (TCP or Unix)")]
    Unsupported(listenfd_core::FdInfo),
    /// The fallback address could not be bound.
    #[error(
        "no socket was passed and binding {addr} failed: {source} (choose another with --listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--inetd`, but stdin is not a connected stream socket.
    #[error("{0}")]
    Inetd(String),
    /// Installing the signal handlers failed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(std::io::Error),
}

impl Error {
    /// 2 for what was passed to us, 3 for a failed bind, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Receive(_) | Error::Unsupported(_) | Error::Inetd(_) => 2,
            Error::Bind { .. } => 3,
            Error::Signals(_) => 1,
        }
    }
}

/// A socket to serve: a listener, or one already accepted connection.
enum Socket {
    Listener(Listener),
    Conn(Conn),
}

/// A listening TCP or Unix stream socket.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        }
    }
}

/// One connection, over TCP or a Unix socket.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Tell the supervisor, if there is one; a failure is logged, not fatal (it may be gone).
fn notify(config: &Config, state: State<'_>) {
    if let Some(notifier) = &config.notifier {
        match notifier.send(&[state]) {
            Ok(()) => tracing::debug!("sent {state} to the supervisor"),
            Err(e) => tracing::warn!("cannot send {state} to NOTIFY_SOCKET: {e}"),
        }
    }
}

/// Serve until SIGTERM/SIGINT (or, when only connections were passed, until they are done).
pub async fn run(mut fds: ListenFds, config: Config, signals: StopSignals) -> Result<(), Error> {
    let (sockets, infos) = take_sockets(&mut fds, config.fallback).await?;
    serve(sockets, infos, !fds.is_empty(), config, signals).await
}

/// inetd style (`--inetd`: `sd-launch --accept --inetd`, `systemd-socket-activate -a
/// --inetd`, systemd `StandardInput=socket`): serve the connected socket on stdin as one
/// connection (answers go out through it too; stdout is the same socket and stays unused), and
/// return when it is done, or drain it on SIGTERM/SIGINT.
pub async fn run_inetd(config: Config, signals: StopSignals) -> Result<(), Error> {
    let (conn, info) = take_stdin()?;
    serve(vec![Socket::Conn(conn)], vec![info], true, config, signals).await
}

/// Serve `sockets` until SIGTERM/SIGINT, or, when they are all connections, until they are
/// done.
async fn serve(
    sockets: Vec<Socket>,
    infos: Vec<SocketInfo>,
    activated: bool,
    config: Config,
    mut signals: StopSignals,
) -> Result<(), Error> {
    let info = Arc::new(Info {
        pid: std::process::id(),
        activated,
        sockets: infos,
    });
    for s in &info.sockets {
        tracing::info!(fd = s.fd, name = %s.name, kind = s.kind, "serving {}", s.local);
    }

    // Accept loops send their connections here; the loop below owns every connection task.
    let (tx, mut rx) = mpsc::channel::<Conn>(64);
    let mut acceptors = JoinSet::new();
    let mut initial = Vec::new();
    for socket in sockets {
        match socket {
            Socket::Listener(l) => {
                acceptors.spawn(accept_loop(tx.clone(), l));
            }
            Socket::Conn(c) => initial.push(c),
        }
    }
    drop(tx); // with no listeners, the channel closes and only passed connections remain

    let builder = auto::Builder::new(TokioExecutor::new());
    // Set once draining starts; every connection task watches it (see serve_connection).
    let (drain, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    for conn in initial {
        connections.spawn(serve_connection(
            conn,
            builder.clone(),
            stop.clone(),
            info.clone(),
        ));
    }

    notify(&config, State::Ready);

    // With no listener (Accept=yes style), the server is done when its connections are.
    let listening = !acceptors.is_empty();
    loop {
        if !listening && connections.is_empty() {
            tracing::info!("the passed connections are done: exiting");
            return Ok(());
        }
        tokio::select! {
            signal = signals.recv() => { tracing::info!("{signal}: shutting down"); break; }
            Some(conn) = rx.recv() => {
                connections.spawn(serve_connection(conn, builder.clone(), stop.clone(), info.clone()));
            }
            Some(_) = connections.join_next() => {}
        }
    }

    notify(&config, State::Stopping);
    // Stop accepting: the listeners are closed with their tasks.
    acceptors.shutdown().await;
    // Connections accepted but not yet picked up are served too: a client that connected
    // before the drain gets its answer (a restarted daemon's successor takes the rest).
    rx.close();
    while let Some(conn) = rx.recv().await {
        connections.spawn(serve_connection(
            conn,
            builder.clone(),
            stop.clone(),
            info.clone(),
        ));
    }
    let in_flight = connections.len();
    if in_flight > 0 {
        tracing::info!(
            "draining {in_flight} connection(s), at most {:?}",
            config.drain_timeout
        );
    }
    let _ = drain.send(true);
    // More stop signals change nothing (module docs): one Ctrl-C often arrives twice.
    let repeated = async {
        loop {
            let signal = signals.recv().await;
            tracing::info!(
                "{signal} while draining: still draining (at most {:?}; SIGKILL stops at once)",
                config.drain_timeout
            );
        }
    };
    tokio::select! {
        () = async { while connections.join_next().await.is_some() {} } => tracing::info!("drained"),
        () = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!("drain timeout: dropping {} connection(s)", connections.len());
        }
        _ = repeated => {}
    }
    connections.abort_all();
    Ok(())
}

/// Take stdin (fd 0) as a connection, for `--inetd`: it must be a connected TCP or Unix stream
/// socket.
fn take_stdin() -> Result<(Conn, SocketInfo), Error> {
    let not_served = |what: String| {
        Error::Inetd(format!(
            "{what}; --inetd serves a connected stream socket on stdin (start demo-server with \
             sd-launch --accept --inetd or systemd-socket-activate -a --inetd)"
        ))
    };
    let kind = inspect_raw(0).map_err(|e| not_served(format!("cannot inspect stdin: {e}")))?;
    let FdKind::Socket {
        family: family @ (Family::Inet | Family::Inet6 | Family::Unix),
        socket_type: SocketType::Stream,
        listening: false,
        ref local,
    } = kind
    else {
        return Err(not_served(format!("stdin is {kind}")));
    };
    let local = local.as_ref().map_or_else(String::new, ToString::to_string);
    // SAFETY: fd 0 is open (inspected above), and this runs once, before anything else in
    // this process reads or closes stdin: the OwnedFd is its only owner from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(0) };
    let tokio_error = |e: std::io::Error| not_served(format!("cannot serve stdin: {e}"));
    let (conn, kind) = if family == Family::Unix {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true).map_err(tokio_error)?;
        let s = UnixStream::from_std(s).map_err(tokio_error)?;
        (Conn::Unix(s), "unix-stream")
    } else {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true).map_err(tokio_error)?;
        let s = TcpStream::from_std(s).map_err(tokio_error)?;
        (Conn::Tcp(s), "tcp")
    };
    let info = SocketInfo {
        fd: 0,
        name: "stdin".to_owned(),
        kind,
        listening: false,
        local,
    };
    Ok((conn, info))
}

/// Take every passed fd as what it is, or bind the fallback when nothing was passed.
async fn take_sockets(
    fds: &mut ListenFds,
    fallback: SocketAddr,
) -> Result<(Vec<Socket>, Vec<SocketInfo>), Error> {
    if fds.is_empty() {
        let listener = TcpListener::bind(fallback)
            .await
            .map_err(|source| Error::Bind {
                addr: fallback,
                source,
            })?;
        let local = listener
            .local_addr()
            .map_or_else(|_| fallback.to_string(), |a| a.to_string());
        let info = SocketInfo {
            fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
            name: "fallback".to_owned(),
            kind: "tcp",
            listening: true,
            local,
        };
        return Ok((vec![Socket::Listener(Listener::Tcp(listener))], vec![info]));
    }
    let mut sockets = Vec::with_capacity(fds.len());
    let mut infos = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        let fd_info = fds.inspect(i)?;
        let FdKind::Socket {
            family,
            socket_type: SocketType::Stream,
            listening,
            ref local,
        } = fd_info.kind
        else {
            return Err(Error::Unsupported(fd_info));
        };
        let socket = match (family, listening) {
            (Family::Inet | Family::Inet6, true) => {
                Socket::Listener(Listener::Tcp(fds.tokio_tcp_listener(i)?))
            }
            (Family::Unix, true) => Socket::Listener(Listener::Unix(fds.tokio_unix_listener(i)?)),
            (Family::Inet | Family::Inet6, false) => {
                Socket::Conn(Conn::Tcp(fds.tokio_tcp_stream(i)?))
            }
            (Family::Unix, false) => Socket::Conn(Conn::Unix(fds.tokio_unix_stream(i)?)),
            _ => return Err(Error::Unsupported(fd_info)),
        };
        infos.push(SocketInfo {
            fd: fd_info.fd,
            name: fd_info.name.clone(),
            kind: if family == Family::Unix {
                "unix-stream"
            } else {
                "tcp"
            },
            listening,
            local: local.as_ref().map_or_else(String::new, ToString::to_string),
        });
        sockets.push(socket);
    }
    Ok((sockets, infos))
}

/// Accept until the task is aborted, handing each connection to the serving loop. Accept
/// errors (e.g. out of fds) are logged and retried after a short pause instead of spinning.
async fn accept_loop(tx: mpsc::Sender<Conn>, listener: Listener) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                if tx.send(conn).await.is_err() {
                    return; // shutting down
                }
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serve one connection with HTTP/1.1 or HTTP/2 (detected from the preface).
async fn serve_connection(
    conn: Conn,
    builder: auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
    info: Arc<Info>,
) {
    // Draining must not close a connection whose client has connected but whose request
    // hyper has not read yet: that client would see a reset although it reached us before
    // the drain (the race that makes "graceful" restarts drop requests). So at the drain, a
    // connection that has not had a request yet gets FIRST_REQUEST_GRACE for one, which is
    // then answered with keep-alive off; one that has is shut down gracefully at once.
    const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
    let first_request = Arc::new(Notify::new());
    let service = {
        let first_request = first_request.clone();
        service_fn(move |req| {
            first_request.notify_one(); // stores a permit: a later wait returns at once
            let info = info.clone();
            async move { Ok::<_, std::convert::Infallible>(routes::handle(req, &info).await) }
        })
    };
    macro_rules! drive {
        ($io:expr) => {{
            let conn = builder.serve_connection($io, service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                () = draining(&mut stop) => {
                    tokio::select! {
                        result = conn.as_mut() => return log_end(result),
                        () = first_request.notified() => {}
                        () = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }};
    }
    let result = match conn {
        Conn::Tcp(s) => drive!(TokioIo::new(s)),
        Conn::Unix(s) => drive!(TokioIo::new(s)),
    };
    log_end(result);
}

/// Resolves once the drain has started (or the server is gone).
async fn draining(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|draining| *draining).await;
}

fn log_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!("connection ended with an error: {e}");
    }
}
