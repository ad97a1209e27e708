//! The readiness policy: wait until the daemon is ready by one of the [`Wait`] strategies,
//! fail fast when it exits first, and let a stop signal end the wait at once.
//!
//! Most daemons need no wait at all: connections queue in the backlog of the passed socket
//! until the daemon accepts them. Wait when "accepting" is not "ready" (a daemon that loads
//! data before it answers), or when a test wants a failed start as an error instead of a
//! hanging request.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::notify::{NotifySocket, is_in_tree, is_ready};
use super::{Event, Key, Policy, STOPPING, Signals, Watch, run};
use crate::capture::{Capture, Which};
use crate::error::Error;
use crate::process::Child;
use crate::sockets::{Address, LaunchedSocket, SocketKind, reachable};

/// How to tell that a daemon is ready ([`Launch::wait_until`](crate::Launch::wait_until),
/// `sd-launch --ready-when`).
///
/// ```
/// use sd_launch::Wait;
/// let _ = [Wait::notify(), Wait::accepted(0), Wait::http("/healthz"), Wait::log("listening on")?];
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug, Clone)]
pub enum Wait {
    /// `sd_notify(READY=1)` from the daemon or a descendant, on a private `NOTIFY_SOCKET`.
    Notify,
    /// The daemon has accepted a connection on TCP socket `.0` (0 is fd 3): the launcher
    /// queues a probe connection on the socket it holds and watches the accept queue drain.
    /// No port is polled; the kernel has no event for an accept, so the queue length is
    /// sampled, first every 0.2 ms, then less often.
    Accepted(usize),
    /// `GET path` over socket `socket` (TCP or Unix stream) answers 2xx. The request waits in
    /// the backlog until the daemon accepts it; another answer is retried after a pause.
    Http {
        /// Which socket (0 is fd 3).
        socket: usize,
        /// The path, e.g. `/healthz`.
        path: String,
    },
    /// A line of the daemon's captured stdout or stderr matches this regular expression
    /// (the streams must be captured, the default).
    Log(regex_lite::Regex),
}

impl Wait {
    /// [`Wait::Notify`].
    ///
    /// ```
    /// assert!(matches!(sd_launch::Wait::notify(), sd_launch::Wait::Notify));
    /// ```
    pub fn notify() -> Wait {
        Wait::Notify
    }

    /// [`Wait::Accepted`] on socket `socket`.
    ///
    /// ```
    /// assert!(matches!(sd_launch::Wait::accepted(0), sd_launch::Wait::Accepted(0)));
    /// ```
    pub fn accepted(socket: usize) -> Wait {
        Wait::Accepted(socket)
    }

    /// [`Wait::Http`] on the first socket.
    ///
    /// ```
    /// assert!(matches!(sd_launch::Wait::http("/"), sd_launch::Wait::Http { socket: 0, .. }));
    /// ```
    pub fn http(path: impl Into<String>) -> Wait {
        Wait::Http {
            socket: 0,
            path: path.into(),
        }
    }

    /// [`Wait::Log`]; a malformed pattern is an [`Error::Conflict`]-like usage error.
    ///
    /// ```
    /// assert!(sd_launch::Wait::log("listening on .*:[0-9]+").is_ok());
    /// assert_eq!(sd_launch::Wait::log("(").unwrap_err().exit_code(), 2);
    /// ```
    pub fn log(pattern: &str) -> Result<Wait, Error> {
        regex_lite::Regex::new(pattern)
            .map(Wait::Log)
            .map_err(|e| Error::Pattern {
                pattern: pattern.to_owned(),
                reason: e.to_string(),
            })
    }

    /// How the wait reads in a message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Wait::Notify => "send READY=1".into(),
            Wait::Accepted(i) => format!("accept a connection on socket {i}"),
            Wait::Http { socket, path } => format!("answer GET {path} with 2xx on socket {socket}"),
            Wait::Log(re) => format!("write a line matching {:?}", re.as_str()),
        }
    }
}

impl std::str::FromStr for Wait {
    type Err = Error;

    /// `notify`, `accepted[:N]`, `http:PATH` or `http:N:PATH`, `log:REGEX` (the syntax of
    /// `sd-launch --ready-when`).
    fn from_str(s: &str) -> Result<Wait, Error> {
        let bad = |reason: &str| Error::Pattern {
            pattern: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let index = |v: &str| v.parse::<usize>().map_err(|_| bad("not a socket index"));
        match kind {
            "notify" if rest.is_empty() => Ok(Wait::Notify),
            "accepted" if rest.is_empty() => Ok(Wait::Accepted(0)),
            "accepted" => index(rest).map(Wait::Accepted),
            "http" if rest.starts_with('/') => Ok(Wait::http(rest)),
            "http" => match rest.split_once(':') {
                Some((i, path)) if path.starts_with('/') => Ok(Wait::Http {
                    socket: index(i)?,
                    path: path.to_owned(),
                }),
                _ => Err(bad("expected http:/PATH or http:N:/PATH")),
            },
            "log" if !rest.is_empty() => Wait::log(rest),
            _ => Err(bad(
                "expected notify, accepted[:N], http:/PATH, http:N:/PATH or log:REGEX",
            )),
        }
    }
}

/// Why a daemon did not become ready.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// It exited first.
    Exited(ExitStatus),
    /// The deadline passed.
    Timeout,
    /// A stop signal (SIGTERM, SIGINT, SIGQUIT) came while we waited.
    Interrupted(i32),
    /// The wait itself failed (or cannot work for this daemon).
    Failed(Error),
}

/// What the strategies look at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probes<'a> {
    pub(crate) notify: Option<&'a NotifySocket>,
    pub(crate) capture: Option<&'a Capture>,
    pub(crate) sockets: &'a [LaunchedSocket],
    /// Our copies of the listening sockets, in fd order (for [`Wait::Accepted`]).
    pub(crate) listeners: &'a [RawFd],
}

/// One daemon to wait for.
pub(crate) struct Pending<'a, 'b> {
    pub(crate) wait: &'a Wait,
    pub(crate) probes: Probes<'a>,
    pub(crate) child: &'b mut Child,
    pub(crate) deadline: Instant,
}

/// Wait, in one loop, until every daemon of `pending` is ready by its own strategy. The
/// first that exits or misses its deadline ends the wait, with its index (a stop signal:
/// index `usize::MAX`); signals other than stop signals go to every daemon meanwhile.
pub(crate) fn wait_all_ready(
    signals: Option<&Signals>,
    pending: &mut [Pending<'_, '_>],
) -> Result<(), (usize, NotReady)> {
    if pending.is_empty() {
        return Ok(()); // nothing to wait for (the loop would wait for ever)
    }
    let mut entries = Vec::with_capacity(pending.len());
    for (i, p) in pending.iter_mut().enumerate() {
        let strategy = Strategy::new(p.wait, p.probes).map_err(|e| (i, NotReady::Failed(e)))?;
        entries.push(Entry {
            strategy,
            probes: p.probes,
            child: &mut *p.child,
            deadline: p.deadline,
            ready: false,
        });
    }
    let mut policy = WaitAll { entries };
    match run(signals, &mut policy) {
        Ok(outcome) => outcome,
        Err(e) => Err((usize::MAX, NotReady::Failed(e))),
    }
}

/// A strategy with its state; what it looks at ([`Probes`]) is lent to each look, so that
/// any policy can hold one: this loop's [`WaitAll`], or the proxy's gate of each daemon.
#[derive(Debug)]
pub(crate) enum Strategy {
    Notify,
    Log {
        re: regex_lite::Regex,
        /// Bytes of each stream already looked at.
        seen: [u64; 2],
    },
    Http {
        target: SockAddr,
        request: Vec<u8>,
        probe: Option<(Socket, Vec<u8>, usize)>,
        retry_at: Option<Instant>,
        pause: Duration,
    },
    Accepted {
        listener: RawFd,
        _probe: Socket,
        sample_at: Instant,
        pause: Duration,
    },
    /// Something listens on `address`, in the kernel's socket tables: no connection of ours
    /// (the proxy's "the backend accepts", where the daemon binds its own socket).
    Listens {
        address: Address,
        sample_at: Instant,
        pause: Duration,
    },
}

/// The first pause between samples or retries, and the longest.
const FIRST_PAUSE: Duration = Duration::from_micros(200);
const MAX_PAUSE: Duration = Duration::from_millis(50);

impl Strategy {
    pub(crate) fn new(wait: &Wait, probes: Probes<'_>) -> Result<Strategy, Error> {
        let socket = |i: usize| {
            probes.sockets.get(i).ok_or_else(|| Error::NoSuchSocket {
                which: format!("socket {i}"),
                wanted: "readiness probe",
                found: format!("the daemon has {} socket(s)", probes.sockets.len()),
            })
        };
        Ok(match wait {
            Wait::Notify => {
                probes.notify.ok_or(Error::Conflict(
                    "waiting for READY=1 needs the notification socket",
                ))?;
                Strategy::Notify
            }
            Wait::Log(re) => {
                probes.capture.ok_or(Error::Conflict(
                    "waiting for a log line needs the daemon's output captured \
                     (Stdio::capture, the default; not a file or inherited)",
                ))?;
                Strategy::Log {
                    re: re.clone(),
                    seen: [0, 0],
                }
            }
            Wait::Http { socket: i, path } => {
                let s = socket(*i)?;
                let (target, host) = match (&s.address, s.kind) {
                    (Some(Address::Inet(a)), SocketKind::Tcp) => {
                        (SockAddr::from(reachable(*a)), a.to_string())
                    }
                    (Some(Address::Unix(p)), SocketKind::UnixStream) => (
                        SockAddr::unix(p).map_err(|source| Error::Os {
                            context: "address the Unix socket for the HTTP probe",
                            source,
                        })?,
                        "localhost".to_owned(),
                    ),
                    _ => {
                        return Err(Error::Conflict(
                            "an HTTP readiness probe needs a TCP or Unix stream socket",
                        ));
                    }
                };
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sd-launch\r\nConnection: close\r\n\r\n"
                )
                .into_bytes();
                Strategy::Http {
                    target,
                    request,
                    probe: None,
                    retry_at: Some(Instant::now()),
                    pause: FIRST_PAUSE * 50,
                }
            }
            Wait::Accepted(i) => {
                let s = socket(*i)?;
                let (Some(Address::Inet(a)), SocketKind::Tcp) = (&s.address, s.kind) else {
                    return Err(Error::Conflict(
                        "the accepted-connection probe needs a TCP socket: use http or log \
                         for other sockets",
                    ));
                };
                let listener = *probes.listeners.get(*i).ok_or(Error::Conflict(
                    "the accepted-connection probe needs the launcher's copy of the socket",
                ))?;
                let probe =
                    connect(&SockAddr::from(reachable(*a))).map_err(|source| Error::Os {
                        context: "queue the probe connection",
                        source,
                    })?;
                Strategy::Accepted {
                    listener,
                    _probe: probe,
                    sample_at: Instant::now(),
                    pause: FIRST_PAUSE,
                }
            }
        })
    }

    /// [`Strategy::Listens`] on `address`, looked at first now.
    pub(crate) fn listens(address: Address) -> Strategy {
        Strategy::Listens {
            address,
            sample_at: Instant::now(),
            pause: FIRST_PAUSE,
        }
    }

    /// Look at the strategy's source; `true` when the daemon (pid `root`) is ready.
    /// `readable`: its fd woke the loop (else a deadline did).
    pub(crate) fn check(
        &mut self,
        probes: &Probes<'_>,
        root: u32,
        readable: bool,
    ) -> Result<bool, Error> {
        let os = |context| move |source| Error::Os { context, source };
        match self {
            Strategy::Notify => {
                let Some(notify) = probes.notify.filter(|_| readable) else {
                    return Ok(false);
                };
                let sender = ready_sender(notify, root).map_err(os("read notifications"))?;
                if let Some(sender) = sender.filter(|&p| p != root as libc::pid_t) {
                    warn_if_not_the_receiver(sender);
                }
                if sender.is_some() {
                    warn_if_no_socket_in_tree(root as libc::pid_t, probes.listeners);
                }
                Ok(sender.is_some())
            }
            Strategy::Log { re, seen } => {
                let Some(capture) = probes.capture else {
                    return Ok(false);
                };
                capture.clear_wake();
                let mut found = false;
                for which in [Which::Stdout, Which::Stderr] {
                    let total = capture.total(which);
                    let i = which as usize;
                    if total == seen[i] {
                        continue;
                    }
                    let text = capture.text(which);
                    // Only the lines written since the last look, whole lines only.
                    let new = (total - seen[i]).min(text.len() as u64) as usize;
                    let start = text.len() - new;
                    let from = text[..start].rfind('\n').map_or(0, |n| n + 1);
                    let upto = text.rfind('\n').map_or(from, |n| n + 1).max(from);
                    found |= text[from..upto].lines().any(|line| re.is_match(line));
                    seen[i] = total - (text.len() - upto) as u64;
                }
                Ok(found)
            }
            Strategy::Http {
                target,
                request,
                probe,
                retry_at,
                pause,
            } => {
                if let Some((socket, reply, sent)) = probe {
                    let (done, ok) = exchange(socket, request, reply, sent);
                    if !done {
                        return Ok(false);
                    }
                    if ok {
                        return Ok(true);
                    }
                    *probe = None;
                    *retry_at = Some(Instant::now() + *pause);
                    *pause = (*pause * 2).min(MAX_PAUSE * 10);
                    return Ok(false);
                }
                if retry_at.is_some_and(|t| Instant::now() >= t) {
                    *retry_at = None;
                    match connect(target) {
                        Ok(socket) => *probe = Some((socket, Vec::new(), 0)),
                        // No socket file yet, nobody listening yet (a daemon that binds
                        // its own socket): try again after the pause.
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ENOENT | libc::ECONNREFUSED | libc::EAGAIN)
                            ) =>
                        {
                            *retry_at = Some(Instant::now() + *pause);
                            *pause = (*pause * 2).min(MAX_PAUSE * 10);
                        }
                        Err(e) => return Err(os("connect the HTTP probe")(e)),
                    }
                }
                Ok(false)
            }
            Strategy::Accepted {
                listener,
                sample_at,
                pause,
                ..
            } => {
                if Instant::now() < *sample_at {
                    return Ok(false);
                }
                if accept_queue(*listener).map_err(os("read the accept queue"))? == 0 {
                    return Ok(true);
                }
                *sample_at = Instant::now() + *pause;
                *pause = (*pause * 2).min(MAX_PAUSE);
                Ok(false)
            }
            Strategy::Listens {
                address,
                sample_at,
                pause,
            } => {
                if Instant::now() < *sample_at {
                    return Ok(false);
                }
                match listening(address) {
                    Ok(true) => return Ok(true),
                    Ok(false) => {}
                    Err(e) => tracing::debug!("cannot tell whether {address} listens: {e}"),
                }
                // As often as the proxy retries a connection: at most 5 ms late.
                *sample_at = Instant::now() + *pause;
                *pause = (*pause * 2).min(Duration::from_millis(5));
                Ok(false)
            }
        }
    }

    /// Add the fd whose readability moves the strategy on, if it has one, with `key`.
    pub(crate) fn watch(&self, probes: &Probes<'_>, key: Key, watch: &mut Watch) {
        match self {
            Strategy::Notify => {
                if let Some(notify) = probes.notify {
                    watch.add(key, notify.raw_fd());
                }
            }
            Strategy::Log { .. } => {
                if let Some(capture) = probes.capture {
                    watch.add(key, capture.wake_fd());
                }
            }
            Strategy::Http {
                probe: Some((socket, _, sent)),
                request,
                ..
            } => {
                if *sent < request.len() {
                    watch.add_writable(key, socket.as_raw_fd());
                } else {
                    watch.add(key, socket.as_raw_fd());
                }
            }
            _ => {}
        }
    }

    /// When the strategy wants to look again without an event, if ever.
    pub(crate) fn next(&self) -> Option<Instant> {
        match self {
            Strategy::Http { retry_at, .. } => *retry_at,
            Strategy::Accepted { sample_at, .. } | Strategy::Listens { sample_at, .. } => {
                Some(*sample_at)
            }
            _ => None,
        }
    }
}

/// Whether something listens on `address`, from the kernel's tables of this network
/// namespace (`/proc/net/unix`: a socket bound at the path with `__SO_ACCEPTCON`;
/// `/proc/net/tcp`, `tcp6`: a socket in state `LISTEN` on the port, on any address).
pub(crate) fn listening(address: &Address) -> io::Result<bool> {
    match address {
        Address::Unix(path) => {
            const ACCEPTING: u32 = 0x10000; // __SO_ACCEPTCON: listen() was called
            let table = std::fs::read_to_string("/proc/net/unix")?;
            let path = path.to_string_lossy();
            Ok(table.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() >= 8
                    && fields[7..].join(" ") == path
                    && u32::from_str_radix(fields[3], 16).is_ok_and(|f| f & ACCEPTING != 0)
            }))
        }
        Address::Inet(addr) => {
            let port = format!(":{:04X}", addr.port());
            let mut found = false;
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                let Ok(table) = std::fs::read_to_string(table) else {
                    continue; // no IPv6
                };
                found |= table.lines().skip(1).any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 3 && fields[1].ends_with(&port) && fields[3] == "0A"
                });
            }
            Ok(found)
        }
        // Not a listening address (an abstract or unnamed socket): never "listening".
        _ => Ok(false),
    }
}

/// A non-blocking connection to `target` (queued in the backlog of our own socket).
fn connect(target: &SockAddr) -> io::Result<Socket> {
    let domain = if target.is_unix() {
        Domain::UNIX
    } else {
        target.domain()
    };
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(target) {
        Ok(()) => Ok(socket),
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS)
                || e.kind() == io::ErrorKind::WouldBlock =>
        {
            Ok(socket)
        }
        Err(e) => Err(e),
    }
}

/// Connections waiting in the accept queue of a TCP listener (`TCP_INFO`'s `tcpi_unacked`
/// is the queue length for a listening socket).
fn accept_queue(listener: RawFd) -> io::Result<u32> {
    // SAFETY: tcp_info is plain data that getsockopt fills in.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into our struct.
    let r = unsafe {
        libc::getsockopt(
            listener,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

struct Entry<'a, 'b> {
    strategy: Strategy,
    probes: Probes<'a>,
    child: &'b mut Child,
    deadline: Instant,
    ready: bool,
}

impl Entry<'_, '_> {
    fn check(&mut self, readable: bool) -> Result<bool, Error> {
        self.strategy
            .check(&self.probes, self.child.pid(), readable)
    }

    fn watch(&self, i: usize, watch: &mut Watch) {
        self.strategy.watch(&self.probes, Key::Ready(i), watch);
    }

    fn next(&self) -> Instant {
        self.strategy
            .next()
            .map_or(self.deadline, |t| t.min(self.deadline))
    }
}

/// One step of the HTTP probe's exchange: send what is left of the request, read what has
/// come. Returns (done, answered 2xx).
fn exchange(
    socket: &mut Socket,
    request: &[u8],
    reply: &mut Vec<u8>,
    sent: &mut usize,
) -> (bool, bool) {
    while *sent < request.len() {
        match socket.write(&request[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (false, false),
            Err(_) => return (true, false),
        }
    }
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return (true, status_is_2xx(reply)),
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.windows(2).any(|w| w == b"\r\n") {
                    return (true, status_is_2xx(reply));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (false, false),
            Err(_) => return (true, false),
        }
    }
}

/// Whether an HTTP status line says 2xx.
fn status_is_2xx(reply: &[u8]) -> bool {
    let line = reply.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    matches!(parts.next(), Some(v) if v.starts_with(b"HTTP/"))
        && matches!(parts.next(), Some([b'2', _, _]))
}

struct WaitAll<'a, 'b> {
    entries: Vec<Entry<'a, 'b>>,
}

impl WaitAll<'_, '_> {
    /// Mark entry `i` ready if its strategy says so; `Some` ends the wait.
    fn check(&mut self, i: usize, readable: bool) -> Option<Result<(), (usize, NotReady)>> {
        match self.entries[i].check(readable) {
            Ok(true) => {
                self.entries[i].ready = true;
                self.entries.iter().all(|e| e.ready).then_some(Ok(()))
            }
            Ok(false) => None,
            Err(e) => Some(Err((i, NotReady::Failed(e)))),
        }
    }
}

impl Policy for WaitAll<'_, '_> {
    type Output = Result<(), (usize, NotReady)>;

    fn watch(&self, watch: &mut Watch) {
        for (i, e) in self.entries.iter().enumerate() {
            if !e.ready {
                e.watch(i, watch);
            }
            if let Some(fd) = e.child.pidfd() {
                watch.add(Key::Child(e.child.pid()), fd);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|e| !e.ready)
            .map(Entry::next)
            .min()
    }

    fn handle(&mut self, event: Event) -> Result<Option<Self::Output>, Error> {
        let os = |context| move |source| Error::Os { context, source };
        match event {
            Event::Readable(Key::Child(pid)) => {
                let Some(i) = self.entries.iter().position(|e| e.child.pid() == pid) else {
                    return Ok(None);
                };
                let status = self.entries[i]
                    .child
                    .try_wait()
                    .map_err(os("wait for the daemon"))?;
                Ok(status.map(|status| Err((i, NotReady::Exited(status)))))
            }
            Event::Readable(Key::Ready(i)) => Ok(self.check(i, true)),
            Event::Readable(_) => Ok(None),
            Event::Signal(sig) if STOPPING.contains(&sig) => {
                Ok(Some(Err((usize::MAX, NotReady::Interrupted(sig)))))
            }
            Event::Signal(sig) => {
                if super::FORWARDED.contains(&sig) {
                    for e in &self.entries {
                        e.child.forward(sig).map_err(os("forward a signal"))?;
                    }
                }
                Ok(None)
            }
            Event::Deadline => {
                let now = Instant::now();
                for i in 0..self.entries.len() {
                    if self.entries[i].ready {
                        continue;
                    }
                    if now >= self.entries[i].deadline {
                        return Ok(Some(Err((i, NotReady::Timeout))));
                    }
                    if let Some(done) = self.check(i, false) {
                        return Ok(Some(done));
                    }
                }
                Ok(None)
            }
        }
    }
}

/// Read every pending notification; `true` when one from `root`'s tree says `READY=1`.
pub(crate) fn ready_message(notify: &NotifySocket, root: u32) -> io::Result<bool> {
    ready_sender(notify, root).map(|p| p.is_some())
}

/// A wrapper that does not exec (`sh -c 'daemon; echo done'`, `cargo run`) makes the
/// daemon a descendant whose pid is not `LISTEN_PID`: a strict receiver ignores the
/// sockets and may bind an address of its own, then say `READY=1` while clients wait on
/// the passed socket for ever. Say so, loudly, with the fix.
fn warn_if_not_the_receiver(sender: libc::pid_t) {
    let Ok(environ) = std::fs::read(format!("/proc/{sender}/environ")) else {
        return;
    };
    let listen_pid = environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"LISTEN_PID="))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<libc::pid_t>().ok());
    if let Some(listen_pid) = listen_pid.filter(|&p| p != sender) {
        tracing::warn!(
            "READY=1 came from pid {sender}, but LISTEN_PID is {listen_pid}: a strict \
             receiver in pid {sender} ignored the passed sockets (and clients of them may \
             wait for ever). Start the daemon with exec (sh -c 'exec my-daemon'), or use \
             --no-pid (Launch::no_pid) with a daemon that accepts a missing LISTEN_PID"
        );
    }
}

/// A daemon that says `READY=1` while no process of its tree holds any of the passed
/// sockets closed them (or never had them): its clients will wait for ever. Say so.
fn warn_if_no_socket_in_tree(root: libc::pid_t, listeners: &[RawFd]) {
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<u64> = listeners
        .iter()
        .filter_map(|fd| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok())
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return; // nothing to look for (inetd mode, or no copy of the sockets kept)
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let holds = |pid: libc::pid_t| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| {
                    let t = target.to_string_lossy();
                    t.strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|ino| inodes.contains(&ino))
                })
            })
        })
    };
    if holds(root) {
        return; // the common case, without a look at every process
    }
    let pids = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok());
    let mut tree = 0;
    for pid in pids {
        if !is_in_tree(pid, root) {
            continue;
        }
        tree += 1;
        if holds(pid) {
            return;
        }
    }
    if tree > 0 {
        tracing::warn!(
            "READY=1, but no process of the daemon's tree (pid {root}) holds any of the passed \
             sockets: it closed them or never received them, and their clients will wait for \
             ever. A daemon that closes fds 3.. at start-up cannot be socket-activated."
        );
    }
}

/// Read every pending notification; the pid of the first from `root`'s tree that says
/// `READY=1`, if any.
fn ready_sender(notify: &NotifySocket, root: u32) -> io::Result<Option<libc::pid_t>> {
    let mut ready = None;
    while let Some((pid, text)) = notify.receive()? {
        let ours = is_in_tree(pid, root as libc::pid_t);
        tracing::debug!(
            "notification from pid {pid}{}: {text:?}",
            if ours {
                ""
            } else {
                " (not the daemon's: ignored)"
            }
        );
        if ours && is_ready(&text) {
            ready.get_or_insert(pid);
        }
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_when_syntax() {
        assert!(matches!("notify".parse(), Ok(Wait::Notify)));
        assert!(matches!("accepted".parse(), Ok(Wait::Accepted(0))));
        assert!(matches!("accepted:2".parse(), Ok(Wait::Accepted(2))));
        assert!(
            matches!("http:/healthz".parse(), Ok(Wait::Http { socket: 0, path }) if path == "/healthz")
        );
        assert!(matches!("http:1:/x".parse(), Ok(Wait::Http { socket: 1, path }) if path == "/x"));
        assert!(matches!("log:listening on".parse(), Ok(Wait::Log(_))));
        for bad in [
            "",
            "ready",
            "http:healthz",
            "accepted:x",
            "log:",
            "log:(",
            "notify:1",
        ] {
            let err = bad.parse::<Wait>().unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }

    #[test]
    fn the_kernel_tables_tell_whether_a_socket_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sock");
        assert!(!listening(&Address::Unix(path.clone())).unwrap());
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(listening(&Address::Unix(path.clone())).unwrap());
        drop(unix);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        assert!(listening(&Address::Inet(addr)).unwrap());
        drop(tcp);
        assert!(!listening(&Address::Inet(addr)).unwrap());
    }

    #[test]
    fn only_a_2xx_status_line_counts() {
        assert!(status_is_2xx(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_is_2xx(b"HTTP/1.0 204 No Content\r\n"));
        assert!(!status_is_2xx(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_is_2xx(b"HTTP/1.1 20 x\r\n"));
        assert!(!status_is_2xx(b"SSH-2.0-OpenSSH\r\n"));
        assert!(!status_is_2xx(b""));
    }
}
