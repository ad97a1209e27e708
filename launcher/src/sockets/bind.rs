//! Creating the sockets a [`SocketSpec`] describes: bound, listening, close-on-exec in this
//! process (so no other child spawned concurrently inherits them).
//!
//! Decisions, where `systemd-socket-activate` is sloppy:
//! * `SO_REUSEADDR` on TCP/UDP; `[::]` is dual-stack (`IPV6_V6ONLY` off).
//! * Stream and seqpacket sockets listen with the largest backlog the kernel allows by
//!   default ([`DEFAULT_BACKLOG`], clamped by `net.core.somaxconn`, as systemd does): a small
//!   backlog drops connections when many clients connect while the daemon starts.
//! * A Unix socket file is created with mode `0600` unless told otherwise, without a window
//!   where it has another mode: it is bound inside a fresh private directory next to the
//!   target, `chmod`ed, then hard-linked into place (`link` never replaces anything).
//! * An existing path is replaced only when it is a socket nobody listens on: a
//!   non-blocking connect is refused. A listener whose backlog is full (`EAGAIN`) is somebody
//!   listening, and the probe never waits. Anything else there, a regular file above all, is
//!   an error and is never deleted.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use super::spec::{Address, SocketSpec, Transport};
use crate::error::Error;

/// The default listen backlog: `i32::MAX`, which the kernel clamps to `net.core.somaxconn`
/// (4096 on current Linux), as systemd does.
///
/// ```
/// assert_eq!(sd_launch::sockets::DEFAULT_BACKLOG, i32::MAX);
/// ```
pub const DEFAULT_BACKLOG: i32 = i32::MAX;

/// The default mode of a Unix socket file: read/write for the owner only.
///
/// ```
/// assert_eq!(sd_launch::sockets::DEFAULT_UNIX_MODE, 0o600);
/// ```
pub const DEFAULT_UNIX_MODE: u32 = 0o600;

/// `sun_path` holds 107 bytes plus the terminating NUL.
const MAX_UNIX_PATH: usize = 107;

/// A socket created from a spec: the fd, the address it actually got (the real port for
/// port 0), and the socket file it created, which [`CreatedPath`] removes when dropped.
#[derive(Debug)]
pub(crate) struct Bound {
    /// The socket, close-on-exec.
    pub(crate) fd: OwnedFd,
    /// The address it is bound to (an absolute path for a Unix socket file).
    pub(crate) address: Address,
    /// The socket file this call created, if any.
    pub(crate) created: Option<CreatedPath>,
}

/// A Unix socket file this crate created; removed when dropped, unless [`CreatedPath::keep`]
/// was called.
#[derive(Debug)]
pub(crate) struct CreatedPath {
    path: Option<PathBuf>,
}

impl CreatedPath {
    /// Leave the file in place when dropped (the daemon outlives us and still uses it).
    pub(crate) fn keep(mut self) -> PathBuf {
        self.path.take().expect("path is only taken by keep()")
    }
}

impl Drop for CreatedPath {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Create the socket `spec` describes: bind it, and listen on stream and seqpacket sockets
/// with `backlog`; a Unix socket file gets `mode`.
pub(crate) fn bind(spec: &SocketSpec, backlog: i32, mode: u32) -> Result<Bound, Error> {
    let ty = match spec.transport {
        Transport::Stream => Type::STREAM,
        Transport::Datagram => Type::DGRAM,
        Transport::SeqPacket => Type::SEQPACKET,
    };
    let listens = spec.transport != Transport::Datagram;
    match &spec.address {
        Address::Inet(addr) => bind_inet(spec, *addr, ty, listens, backlog),
        Address::Abstract(name) => {
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(name);
            let sockaddr = SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
                .map_err(|e| socket_error("bind", spec, e))?;
            let socket = new_socket(Domain::UNIX, ty, spec)?;
            socket
                .bind(&sockaddr)
                .map_err(|e| socket_error("bind", spec, e))?;
            finish(socket, spec, listens, backlog, spec.address.clone(), None)
        }
        Address::Unix(path) => bind_unix(spec, path, ty, listens, backlog, mode),
    }
}

fn bind_inet(
    spec: &SocketSpec,
    addr: SocketAddr,
    ty: Type,
    listens: bool,
    backlog: i32,
) -> Result<Bound, Error> {
    if spec.transport == Transport::SeqPacket {
        return Err(Error::Address {
            input: addr.to_string(),
            reason: "seqpacket sockets are Unix only: give a /path or @name".into(),
        });
    }
    let socket = new_socket(Domain::for_address(addr), ty, spec)?;
    socket
        .set_reuse_address(true)
        .map_err(|e| socket_error("set SO_REUSEADDR on", spec, e))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket
            .set_only_v6(false)
            .map_err(|e| socket_error("make dual-stack", spec, e))?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| socket_error("bind", spec, e))?;
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    finish(socket, spec, listens, backlog, Address::Inet(local), None)
}

fn bind_unix(
    spec: &SocketSpec,
    path: &Path,
    ty: Type,
    listens: bool,
    backlog: i32,
    mode: u32,
) -> Result<Bound, Error> {
    let path = std::path::absolute(path).map_err(|e| socket_error("resolve", spec, e))?;
    if path.as_os_str().len() > MAX_UNIX_PATH {
        // Clients could not connect to it either: refuse before touching anything.
        let e = io::Error::from_raw_os_error(libc::ENAMETOOLONG);
        return Err(socket_error("bind", spec, too_long_hint(e, &path)));
    }
    remove_stale(&path, ty, spec)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let private = tempfile::Builder::new()
        .prefix(".sd-launch-")
        .tempdir_in(parent)
        .map_err(|e| socket_error("create a private directory next to", spec, e))?;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| socket_error("chmod the private directory of", spec, e))?;
    // The temporary name is short; a target path too long for sun_path fails at bind below
    // with the kernel's own EINVAL ("invalid argument"), named with the target path.
    let temp = private.path().join("s");
    let bind_at = if temp.as_os_str().len() <= MAX_UNIX_PATH {
        temp.clone()
    } else {
        // The private directory's name makes the path too long: bind in place, chmod after.
        path.clone()
    };
    let sockaddr = SockAddr::unix(&bind_at)
        .map_err(|e| socket_error("bind", spec, too_long_hint(e, &path)))?;
    let socket = new_socket(Domain::UNIX, ty, spec)?;
    socket
        .bind(&sockaddr)
        .map_err(|e| socket_error("bind", spec, too_long_hint(e, &path)))?;
    let created = CreatedPath {
        path: Some(bind_at.clone()),
    };
    std::fs::set_permissions(&bind_at, std::fs::Permissions::from_mode(mode))
        .map_err(|e| socket_error("chmod", spec, e))?;
    let created = if bind_at == path {
        created
    } else {
        std::fs::hard_link(&bind_at, &path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::PathInUse {
                path: path.clone(),
                what: "a file appeared there while the socket was being created",
            },
            _ => socket_error("link into place", spec, e),
        })?;
        drop(created); // the temporary name
        CreatedPath {
            path: Some(path.clone()),
        }
    };
    finish(
        socket,
        spec,
        listens,
        backlog,
        Address::Unix(path),
        Some(created),
    )
}

/// Remove `path` if it is a socket nobody listens on; refuse anything else that is there.
fn remove_stale(path: &Path, ty: Type, spec: &SocketSpec) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_error("inspect", spec, e)),
    };
    if !meta.file_type().is_socket() {
        let what = if meta.is_file() {
            "a regular file is there"
        } else if meta.is_dir() {
            "a directory is there"
        } else if meta.file_type().is_symlink() {
            "a symbolic link is there"
        } else {
            "something that is not a socket is there"
        };
        return Err(Error::PathInUse {
            path: path.to_owned(),
            what,
        });
    }
    let probe = new_socket(Domain::UNIX, ty, spec)?;
    // A listener whose backlog is full would block a connect until it accepts: never wait.
    probe
        .set_nonblocking(true)
        .map_err(|e| socket_error("probe", spec, e))?;
    let addr = SockAddr::unix(path).map_err(|e| socket_error("probe", spec, e))?;
    match probe.connect(&addr) {
        Ok(()) => Err(Error::PathInUse {
            path: path.to_owned(),
            what: "another process is listening on this socket",
        }),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINPROGRESS)) => {
            Err(Error::PathInUse {
                path: path.to_owned(),
                what: "another process is listening on this socket",
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| socket_error("remove the stale socket", spec, e)),
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Err(Error::PathInUse {
            path: path.to_owned(),
            what: "a socket of another type is there",
        }),
        Err(e) => Err(socket_error("probe the existing socket", spec, e)),
    }
}

fn new_socket(domain: Domain, ty: Type, spec: &SocketSpec) -> Result<Socket, Error> {
    // socket2 creates sockets with SOCK_CLOEXEC.
    Socket::new(domain, ty, None).map_err(|e| socket_error("create a socket for", spec, e))
}

fn finish(
    socket: Socket,
    spec: &SocketSpec,
    listens: bool,
    backlog: i32,
    address: Address,
    created: Option<CreatedPath>,
) -> Result<Bound, Error> {
    if listens {
        socket
            .listen(backlog)
            .map_err(|e| socket_error("listen on", spec, e))?;
    }
    Ok(Bound {
        fd: socket.into(),
        address,
        created,
    })
}

fn too_long_hint(e: io::Error, path: &Path) -> io::Error {
    if path.as_os_str().len() > MAX_UNIX_PATH {
        io::Error::new(
            e.kind(),
            format!(
                "{e} (the path is {} bytes; Unix socket paths are limited to 107)",
                path.as_os_str().len()
            ),
        )
    } else {
        e
    }
}

fn socket_error(action: &'static str, spec: &SocketSpec, source: io::Error) -> Error {
    let hint = match source.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            " (another process uses this address; port 0 lets the kernel pick a free one)"
        }
        Some(libc::EACCES) if matches!(spec.address, Address::Inet(a) if a.port() < 1024 && a.port() != 0) => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        }
        Some(libc::EADDRNOTAVAIL) => " (no interface of this machine has that address)",
        _ => "",
    };
    Error::Socket {
        action,
        address: spec.to_string(),
        source,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn unix(path: &Path) -> SocketSpec {
        SocketSpec::new(Address::Unix(path.to_owned()))
    }

    #[test]
    fn tcp_port_zero_gets_a_real_port_and_listens() {
        let bound = bind(&SocketSpec::loopback(), DEFAULT_BACKLOG, DEFAULT_UNIX_MODE).unwrap();
        let Address::Inet(addr) = bound.address else {
            panic!()
        };
        assert!(addr.ip().is_loopback());
        std::net::TcpStream::connect(addr).expect("a listening socket accepts into its backlog");
    }

    #[test]
    fn unix_socket_file_is_0600_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let bound = bind(&unix(&path), 8, DEFAULT_UNIX_MODE).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        UnixStream::connect(&path).unwrap();
        // nothing else was left in the directory (the private directory is gone)
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
        drop(bound);
        assert!(!path.exists());
    }

    #[test]
    fn socket_mode_is_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _bound = bind(&unix(&path), 8, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, "precious").unwrap();
        let err = bind(&unix(&path), 8, DEFAULT_UNIX_MODE).unwrap_err();
        assert!(matches!(err, Error::PathInUse { .. }), "{err}");
        assert!(err.to_string().contains("regular file"), "{err}");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn a_stale_socket_is_replaced_but_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let live = UnixListener::bind(&path).unwrap();
        let err = bind(&unix(&path), 8, DEFAULT_UNIX_MODE).unwrap_err();
        assert!(
            err.to_string().contains("another process is listening"),
            "{err}"
        );
        drop(live); // the file stays behind: now stale
        assert!(path.exists());
        let _bound = bind(&unix(&path), 8, DEFAULT_UNIX_MODE).unwrap();
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn abstract_and_datagram_and_seqpacket() {
        let name = format!("sd-launch-test-{}", std::process::id());
        let spec: SocketSpec = format!("@{name}").parse().unwrap();
        let _a = bind(&spec, 8, DEFAULT_UNIX_MODE).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dgram = unix(&dir.path().join("d")).transport(Transport::Datagram);
        bind(&dgram, 8, DEFAULT_UNIX_MODE).unwrap();
        let seq = unix(&dir.path().join("q")).transport(Transport::SeqPacket);
        bind(&seq, 8, DEFAULT_UNIX_MODE).unwrap();
        let inet_seq = SocketSpec::loopback().transport(Transport::SeqPacket);
        assert!(
            bind(&inet_seq, 8, DEFAULT_UNIX_MODE)
                .unwrap_err()
                .to_string()
                .contains("Unix only")
        );
    }

    #[test]
    fn address_in_use_says_what_to_do() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = SocketSpec::new(Address::Inet(taken.local_addr().unwrap()));
        // SO_REUSEADDR does not allow two listeners on one port.
        let err = bind(&spec, 8, DEFAULT_UNIX_MODE).unwrap_err();
        assert!(
            err.to_string().contains("port 0 lets the kernel pick"),
            "{err}"
        );
    }

    #[test]
    fn a_live_socket_with_a_full_backlog_is_in_use_and_the_probe_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.sock");
        let addr = SockAddr::unix(&path).unwrap();
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener.bind(&addr).unwrap();
        listener.listen(0).unwrap();
        // Fill the queue: clients that nobody accepts, until the kernel says it is full.
        let mut clients = Vec::new();
        let mut full = false;
        for _ in 0..16 {
            let client = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            client.set_nonblocking(true).unwrap();
            match client.connect(&addr) {
                Ok(()) => clients.push(client),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    full = true;
                    break;
                }
                Err(e) => panic!("unexpected connect error {e}"),
            }
        }
        assert!(full, "the backlog never filled up");
        let (tx, rx) = std::sync::mpsc::channel();
        let spec = unix(&path);
        std::thread::spawn(move || {
            let _ = tx.send(bind(&spec, 8, DEFAULT_UNIX_MODE).map(drop));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("binding over a live socket with a full backlog hung");
        let err = result.unwrap_err();
        assert!(
            err.to_string().contains("another process is listening"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 3);
        assert!(path.exists(), "the live socket was deleted");
        drop((listener, clients));
    }

    #[test]
    fn too_long_a_unix_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x".repeat(120));
        let err = bind(&unix(&path), 8, DEFAULT_UNIX_MODE).unwrap_err();
        assert!(err.to_string().contains("limited to 107"), "{err}");
    }
}
