//! The sockets layer: what to listen on ([`SocketSpec`], the `-l` syntax) and the one builder
//! of socket sets that every mode shares ([`SocketSet`]: specs and passed fds in fd order,
//! names for `LISTEN_FDNAMES`, backlog, Unix socket modes), bound into [`BoundSockets`].
//!
//! Decisions:
//! * An empty set binds the default socket, TCP on `127.0.0.1:0`: loopback unless told
//!   otherwise, and a port the kernel picks.
//! * Names are checked against systemd's `FileDescriptorName=` rules before anything is bound;
//!   among named sockets an unnamed one is announced as `unknown`, the name libsystemd
//!   reports for an unnamed fd.
//! * A Unix socket file this set created is removed when the set is dropped, and only if the
//!   file at the path is still the very socket it created (see [`bind`](self)'s decisions).

use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use crate::error::Error;

mod bind;
mod spec;

pub(crate) use bind::CreatedPath;
pub use bind::{DEFAULT_BACKLOG, DEFAULT_UNIX_MODE};
pub use spec::{Address, SocketKind, SocketSpec, Transport};

/// One socket as the daemon receives it.
///
/// ```
/// use sd_launch::SocketKind;
/// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
/// let s = &server.sockets()[0];
/// assert_eq!((s.fd, s.kind, s.name.as_deref()), (3, SocketKind::Tcp, None));
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchedSocket {
    /// Its fd number in the daemon (3, 4, ...).
    pub fd: RawFd,
    /// Its name in `LISTEN_FDNAMES`, if any.
    pub name: Option<String>,
    /// What kind of socket it is.
    pub kind: SocketKind,
    /// Where it is bound: the real port for port 0, an absolute path for a Unix socket file.
    pub address: Option<Address>,
}

impl LaunchedSocket {
    /// The IP address and port, for a TCP or UDP socket.
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
    /// assert!(server.sockets()[0].inet().unwrap().ip().is_loopback());
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn inet(&self) -> Option<std::net::SocketAddr> {
        match &self.address {
            Some(Address::Inet(a)) => Some(*a),
            _ => None,
        }
    }

    /// The path, for a Unix socket file.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("api.sock");
    /// let server = sd_launch::Launch::new("sleep").arg("5").listen_on(path.to_str().unwrap()).spawn()?;
    /// assert_eq!(server.sockets()[0].path(), Some(path.as_path()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.address {
            Some(Address::Unix(p)) => Some(p),
            _ => None,
        }
    }

    /// A base URL for HTTP over a TCP socket: `http://127.0.0.1:PORT/` (`[::1]` for IPv6;
    /// a wildcard address is reached on loopback).
    ///
    /// ```
    /// let server = sd_launch::Launch::new("sleep").arg("5").spawn()?;
    /// assert!(server.sockets()[0].url().unwrap().starts_with("http://127.0.0.1:"));
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn url(&self) -> Option<String> {
        if self.kind != SocketKind::Tcp {
            return None;
        }
        Some(format!("http://{}/", reachable(self.inet()?)))
    }
}

/// Where a client of ours reaches a socket bound to `addr`: a wildcard address (`0.0.0.0`,
/// `[::]`) on loopback of the same family, any other address as it is.
pub(crate) fn reachable(mut addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// How a test names one of a daemon's sockets: by index (0 is fd 3) or by its
/// `LISTEN_FDNAMES` name.
///
/// ```
/// use sd_launch::sockets::SocketRef;
/// assert_eq!(0usize.describe(), "socket 0");
/// assert_eq!("http".describe(), "socket \"http\"");
/// ```
pub trait SocketRef {
    /// The socket among `sockets`, if there is one.
    fn find<'a>(&self, sockets: &'a [LaunchedSocket]) -> Option<&'a LaunchedSocket>;
    /// How it reads in a message.
    fn describe(&self) -> String;
}

impl SocketRef for usize {
    fn find<'a>(&self, sockets: &'a [LaunchedSocket]) -> Option<&'a LaunchedSocket> {
        sockets.get(*self)
    }

    fn describe(&self) -> String {
        format!("socket {self}")
    }
}

impl SocketRef for &str {
    fn find<'a>(&self, sockets: &'a [LaunchedSocket]) -> Option<&'a LaunchedSocket> {
        sockets.iter().find(|s| s.name.as_deref() == Some(*self))
    }

    fn describe(&self) -> String {
        format!("socket {self:?}")
    }
}

#[derive(Debug, Clone)]
enum Pending {
    Spec(SocketSpec),
    Parse(String),
    /// Shared by the clones of a set: each bind passes a copy.
    Fd {
        fd: Arc<OwnedFd>,
        name: Option<String>,
    },
}

/// The sockets of one daemon (or of one acceptor), in fd order: specs to bind and fds the
/// caller already holds. Every mode builds its sockets with it.
///
/// ```
/// use sd_launch::sockets::SocketSet;
/// let mut set = SocketSet::new();
/// set.listen_on("127.0.0.1:0").listen_on("[::1]:0").backlog(64);
/// let bound = set.bind()?;
/// assert_eq!(bound.sockets().len(), 2);
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SocketSet {
    pending: Vec<Pending>,
    backlog: i32,
    mode: u32,
}

impl Default for SocketSet {
    fn default() -> SocketSet {
        SocketSet::new()
    }
}

impl SocketSet {
    /// An empty set: [`bind`](SocketSet::bind) then creates the default socket
    /// ([`SocketSpec::loopback`]). Backlog [`DEFAULT_BACKLOG`], Unix mode [`DEFAULT_UNIX_MODE`].
    ///
    /// ```
    /// let set = sd_launch::sockets::SocketSet::new();
    /// assert!(set.is_empty());
    /// ```
    pub fn new() -> SocketSet {
        SocketSet {
            pending: Vec::new(),
            backlog: DEFAULT_BACKLOG,
            mode: DEFAULT_UNIX_MODE,
        }
    }

    /// Whether nothing was added yet.
    ///
    /// ```
    /// let mut set = sd_launch::sockets::SocketSet::new();
    /// set.listen_on("0");
    /// assert!(!set.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Create a socket from `spec` as the next fd.
    ///
    /// ```
    /// let mut set = sd_launch::sockets::SocketSet::new();
    /// set.listen(sd_launch::SocketSpec::loopback().name("http"));
    /// ```
    pub fn listen(&mut self, spec: SocketSpec) -> &mut SocketSet {
        self.pending.push(Pending::Spec(spec));
        self
    }

    /// Create a socket from an address in `-l` syntax as the next fd; a malformed address is
    /// reported by [`bind`](SocketSet::bind).
    ///
    /// ```
    /// let mut set = sd_launch::sockets::SocketSet::new();
    /// set.listen_on("8080");
    /// ```
    pub fn listen_on(&mut self, address: &str) -> &mut SocketSet {
        self.pending.push(Pending::Parse(address.to_owned()));
        self
    }

    /// Pass an fd of the caller's own as the next fd, optionally named.
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let mut set = sd_launch::sockets::SocketSet::new();
    /// set.fd(listener.into(), Some("http".into()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fd(&mut self, fd: OwnedFd, name: Option<String>) -> &mut SocketSet {
        self.pending.push(Pending::Fd {
            fd: Arc::new(fd),
            name,
        });
        self
    }

    /// Listen backlog of stream and seqpacket sockets.
    ///
    /// ```
    /// sd_launch::sockets::SocketSet::new().backlog(128);
    /// ```
    pub fn backlog(&mut self, backlog: i32) -> &mut SocketSet {
        self.backlog = backlog;
        self
    }

    /// Mode of created Unix socket files.
    ///
    /// ```
    /// sd_launch::sockets::SocketSet::new().socket_mode(0o660);
    /// ```
    pub fn socket_mode(&mut self, mode: u32) -> &mut SocketSet {
        self.mode = mode;
        self
    }

    /// The specs of this set, parsed (passed fds are not specs and are left out). Checks
    /// every address without binding anything.
    pub(crate) fn specs(&self) -> Result<Vec<SocketSpec>, Error> {
        self.pending
            .iter()
            .filter_map(|p| match p {
                Pending::Spec(s) => Some(Ok(s.clone())),
                Pending::Parse(s) => Some(s.parse()),
                Pending::Fd { .. } => None,
            })
            .collect()
    }

    /// Bind every socket, in order (the default socket when the set is empty). On error
    /// nothing stays created.
    ///
    /// ```
    /// let bound = sd_launch::sockets::SocketSet::new().bind()?;
    /// assert!(bound.sockets()[0].address.is_some());
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn bind(self) -> Result<BoundSockets, Error> {
        let SocketSet {
            mut pending,
            backlog,
            mode,
        } = self;
        if pending.is_empty() {
            pending.push(Pending::Spec(SocketSpec::loopback()));
        }
        // Parse and check names first: nothing is bound for a command line that is wrong.
        let pending: Vec<Pending> = pending
            .into_iter()
            .map(|p| match p {
                Pending::Parse(s) => s.parse().map(Pending::Spec),
                other => Ok(other),
            })
            .collect::<Result<_, Error>>()?;
        for p in &pending {
            let name = match p {
                Pending::Spec(s) => s.name.as_deref(),
                Pending::Fd { name, .. } => name.as_deref(),
                Pending::Parse(_) => None,
            };
            if let Some(name) = name {
                validate_name(name)?;
            }
        }
        let mut bound = BoundSockets {
            fds: Vec::with_capacity(pending.len()),
            sockets: Vec::with_capacity(pending.len()),
            created: Vec::new(),
        };
        for (i, p) in pending.into_iter().enumerate() {
            let fd = 3 + i as RawFd;
            let (owned, socket) = match p {
                Pending::Fd { fd: shared, name } => {
                    let owned = Arc::try_unwrap(shared)
                        .or_else(|shared| shared.try_clone())
                        .map_err(|source| Error::Os {
                            context: "duplicate a passed fd",
                            source,
                        })?;
                    let (kind, address) = describe_fd(&owned);
                    let socket = LaunchedSocket {
                        fd,
                        name,
                        kind,
                        address,
                    };
                    (owned, socket)
                }
                Pending::Spec(spec) => {
                    let b = bind::bind(&spec, backlog, mode)?;
                    bound.created.extend(b.created);
                    let socket = LaunchedSocket {
                        fd,
                        kind: spec.kind(),
                        name: spec.name,
                        address: Some(b.address),
                    };
                    (b.fd, socket)
                }
                Pending::Parse(_) => unreachable!("parsed above"),
            };
            bound.fds.push(owned);
            bound.sockets.push(socket);
        }
        Ok(bound)
    }
}

/// A [`SocketSet`] once bound: our copies of the sockets, what they are, and the socket
/// files created for them (removed when this is dropped, unless kept).
///
/// ```
/// let bound = sd_launch::sockets::SocketSet::new().bind()?;
/// let addr = bound.sockets()[0].address.clone();
/// assert!(matches!(addr, Some(sd_launch::Address::Inet(a)) if a.port() != 0));
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug)]
pub struct BoundSockets {
    fds: Vec<OwnedFd>,
    sockets: Vec<LaunchedSocket>,
    created: Vec<CreatedPath>,
}

impl BoundSockets {
    /// The sockets, in fd order (the first is fd 3).
    ///
    /// ```
    /// let bound = sd_launch::sockets::SocketSet::new().bind()?;
    /// assert_eq!(bound.sockets()[0].fd, 3);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn sockets(&self) -> &[LaunchedSocket] {
        &self.sockets
    }

    /// `LISTEN_FDNAMES` for the set: `None` when no socket is named.
    pub(crate) fn names(&self) -> Option<String> {
        if self.sockets.iter().all(|s| s.name.is_none()) {
            return None;
        }
        let names: Vec<&str> = self
            .sockets
            .iter()
            .map(|s| s.name.as_deref().unwrap_or("unknown"))
            .collect();
        Some(listenfd_core::env::join_names(&names))
    }

    /// Split into the parts each owner keeps: the fds, the descriptions, the created files.
    pub(crate) fn into_parts(self) -> (Vec<OwnedFd>, Vec<LaunchedSocket>, Vec<CreatedPath>) {
        (self.fds, self.sockets, self.created)
    }
}

/// Check `name` against systemd's `FileDescriptorName=` rules.
pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    listenfd_core::env::validate_name(name).map_err(|e| Error::FdName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Names from `--fdname` values, one per socket (`a:b` is two names); their count must match
/// `sockets`. An empty list names nothing.
///
/// ```
/// use sd_launch::sockets::split_fd_names;
/// assert_eq!(split_fd_names(&["http:admin".into()], 2)?, ["http", "admin"]);
/// assert!(split_fd_names(&["http".into()], 2).is_err());
/// # Ok::<(), sd_launch::Error>(())
/// ```
pub fn split_fd_names(values: &[String], sockets: usize) -> Result<Vec<String>, Error> {
    let names: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(':'))
        .map(str::to_owned)
        .collect();
    if !names.is_empty() && names.len() != sockets {
        return Err(Error::NameCount {
            names: names.len(),
            sockets,
        });
    }
    Ok(names)
}

/// What a passed fd is, in the launcher's terms.
fn describe_fd(fd: &OwnedFd) -> (SocketKind, Option<Address>) {
    use listenfd_core::inspect::inspect_fd;
    use listenfd_core::{FdKind, LocalAddr};
    match inspect_fd(fd) {
        Ok(FdKind::Socket {
            family,
            socket_type,
            local,
            ..
        }) => {
            let address = match local {
                Some(LocalAddr::Inet(a)) => Some(Address::Inet(a)),
                Some(LocalAddr::UnixPath(p)) => Some(Address::Unix(p)),
                Some(LocalAddr::UnixAbstract(n)) => Some(Address::Abstract(n)),
                _ => None,
            };
            (SocketKind::from_socket(family, socket_type), address)
        }
        _ => (SocketKind::Fd, None),
    }
}
