//! What an fd is, without taking it: the `sd_is_socket*()` family as one value.
//!
//! [`inspect_raw`] answers for any fd number (a closed one is [`FdKind::Closed`]); it is the
//! source of every "expected X, found Y" error in this crate.
//!
//! ```
//! use listenfd_core::inspect::{inspect_fd, Family, FdKind, SocketType};
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! match inspect_fd(&listener)? {
//!     FdKind::Socket { family, socket_type, listening, .. } => {
//!         assert_eq!((family, socket_type, listening), (Family::Inet, SocketType::Stream, true));
//!     }
//!     other => panic!("unexpected {other}"),
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Description of one passed fd: its number, its name and what it is.
///
/// ```
/// use listenfd_core::{FdInfo, FdKind};
/// let info = FdInfo { fd: 3, name: "http".into(), kind: FdKind::Closed };
/// assert_eq!(info.to_string(), r#"fd 3 ("http"): not open"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// The fd number in this process.
    pub fd: RawFd,
    /// Its name from `LISTEN_FDNAMES` (`"unknown"` when absent).
    pub name: String,
    /// What it is.
    pub kind: FdKind,
}

impl fmt::Display for FdInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {} ({:?}): {}", self.fd, self.name, self.kind)
    }
}

/// What an fd refers to.
///
/// `Display` gives an article-led description usable in sentences, e.g. "a listening TCP socket
/// (127.0.0.1:8080)" or "a character device (/dev/null)".
///
/// ```
/// use listenfd_core::FdKind;
/// let k = FdKind::CharDevice { path: Some("/dev/null".into()) };
/// assert_eq!(k.to_string(), "a character device (/dev/null)");
/// assert!(!k.is_socket());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// A socket.
    Socket {
        /// Address family (from `getsockname`).
        family: Family,
        /// `SO_TYPE`.
        socket_type: SocketType,
        /// `SO_ACCEPTCONN`: `listen()` was called on it.
        listening: bool,
        /// Local address (`getsockname`), if it could be decoded.
        local: Option<LocalAddr>,
    },
    /// A character device such as `/dev/null` (path from `/proc/self/fd` when available).
    CharDevice {
        /// Where it points, if known.
        path: Option<PathBuf>,
    },
    /// A pipe or FIFO.
    Fifo,
    /// A regular file.
    File {
        /// Where it points, if known.
        path: Option<PathBuf>,
    },
    /// A directory.
    Directory {
        /// Where it points, if known.
        path: Option<PathBuf>,
    },
    /// The fd is not open.
    Closed,
    /// Anything else (block device, anonymous inode such as an eventfd or pidfd, ...).
    Other {
        /// Where it points, if known (e.g. `anon_inode:[eventfd]`).
        path: Option<PathBuf>,
    },
}

impl FdKind {
    /// True for [`FdKind::Socket`].
    ///
    /// ```
    /// assert!(!listenfd_core::FdKind::Fifo.is_socket());
    /// ```
    pub fn is_socket(&self) -> bool {
        matches!(self, FdKind::Socket { .. })
    }

    /// Short machine-readable kind, as in sd-launch's JSON output: `tcp`, `udp`,
    /// `unix-stream`, `unix-dgram`, `unix-seqpacket`, or `fd` for anything else.
    ///
    /// ```
    /// use listenfd_core::inspect::inspect_fd;
    /// let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert_eq!(inspect_fd(&udp)?.label(), "udp");
    /// assert_eq!(listenfd_core::FdKind::Fifo.label(), "fd");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn label(&self) -> &'static str {
        let FdKind::Socket {
            family,
            socket_type,
            ..
        } = self
        else {
            return "fd";
        };
        match (family, socket_type) {
            (Family::Inet | Family::Inet6, SocketType::Stream) => "tcp",
            (Family::Inet | Family::Inet6, SocketType::Dgram) => "udp",
            (Family::Unix, SocketType::Stream) => "unix-stream",
            (Family::Unix, SocketType::Dgram) => "unix-dgram",
            (Family::Unix, SocketType::SeqPacket) => "unix-seqpacket",
            _ => "fd",
        }
    }
}

fn with_path(f: &mut fmt::Formatter<'_>, what: &str, path: &Option<PathBuf>) -> fmt::Result {
    match path {
        Some(p) => write!(f, "{what} ({})", p.display()),
        None => f.write_str(what),
    }
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdKind::Socket {
                family,
                socket_type,
                listening,
                local,
            } => {
                let proto = match (family, socket_type) {
                    (Family::Inet | Family::Inet6, SocketType::Stream) => "TCP".to_owned(),
                    (Family::Inet | Family::Inet6, SocketType::Dgram) => "UDP".to_owned(),
                    (Family::Unix, t) => format!("Unix {t}"),
                    (fam, t) => format!("{fam} {t}"),
                };
                let state = match socket_type {
                    SocketType::Stream | SocketType::SeqPacket if *listening => "listening ",
                    SocketType::Stream | SocketType::SeqPacket => "connected ",
                    _ => "",
                };
                write!(f, "a {state}{proto} socket")?;
                if let Some(local) = local {
                    write!(f, " ({local})")?;
                }
                Ok(())
            }
            FdKind::CharDevice { path } => with_path(f, "a character device", path),
            FdKind::Fifo => f.write_str("a pipe (FIFO)"),
            FdKind::File { path } => with_path(f, "a regular file", path),
            FdKind::Directory { path } => with_path(f, "a directory", path),
            FdKind::Closed => f.write_str("not open"),
            FdKind::Other { path } => with_path(f, "neither a socket nor a file", path),
        }
    }
}

/// Socket address family.
///
/// ```
/// assert_eq!(listenfd_core::Family::Inet6.to_string(), "inet6");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`.
    Inet6,
    /// `AF_UNIX`.
    Unix,
    /// Any other family (the raw `AF_*` value).
    Other(i32),
}

impl Family {
    fn from_raw(raw: i32) -> Family {
        match raw {
            libc::AF_INET => Family::Inet,
            libc::AF_INET6 => Family::Inet6,
            libc::AF_UNIX => Family::Unix,
            other => Family::Other(other),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
            Family::Unix => "unix",
            Family::Other(_) => "other",
        })
    }
}

/// Socket type (`SO_TYPE`).
///
/// ```
/// assert_eq!(listenfd_core::SocketType::SeqPacket.to_string(), "seqpacket");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketType {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Dgram,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
    /// Any other type (the raw `SOCK_*` value).
    Other(i32),
}

impl SocketType {
    fn from_raw(raw: i32) -> SocketType {
        match raw {
            libc::SOCK_STREAM => SocketType::Stream,
            libc::SOCK_DGRAM => SocketType::Dgram,
            libc::SOCK_SEQPACKET => SocketType::SeqPacket,
            other => SocketType::Other(other),
        }
    }
}

impl fmt::Display for SocketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketType::Stream => "stream",
            SocketType::Dgram => "dgram",
            SocketType::SeqPacket => "seqpacket",
            SocketType::Other(_) => "other",
        })
    }
}

/// A socket's local address. `Display`: `127.0.0.1:80`, `[::1]:80`, `/run/x.sock`,
/// `@abstract`, `(unnamed)`.
///
/// ```
/// use listenfd_core::LocalAddr;
/// assert_eq!(LocalAddr::UnixAbstract(b"demo".to_vec()).to_string(), "@demo");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    /// An IPv4 or IPv6 address.
    Inet(SocketAddr),
    /// A Unix socket bound to a path.
    UnixPath(PathBuf),
    /// A Unix socket in the Linux abstract namespace (without the leading NUL).
    UnixAbstract(Vec<u8>),
    /// A Unix socket that is not bound (e.g. one end of a socketpair).
    UnixUnnamed,
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Inet(a) => write!(f, "{a}"),
            LocalAddr::UnixPath(p) => write!(f, "{}", p.display()),
            LocalAddr::UnixAbstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            LocalAddr::UnixUnnamed => f.write_str("(unnamed)"),
        }
    }
}

/// Inspect an open fd you hold.
///
/// ```
/// use listenfd_core::{inspect::inspect_fd, FdKind};
/// let file = std::fs::File::open("/dev/null")?;
/// assert!(matches!(inspect_fd(&file)?, FdKind::CharDevice { .. }));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn inspect_fd(fd: impl AsFd) -> io::Result<FdKind> {
    inspect_raw(fd.as_fd().as_raw_fd())
}

/// Inspect an fd by number, which may be closed ([`FdKind::Closed`]). Only queries the kernel
/// (`fcntl`, `fstat`, `getsockopt`, `getsockname`, `readlink`); never changes the fd.
///
/// ```
/// use listenfd_core::{inspect::inspect_raw, FdKind};
/// assert_eq!(inspect_raw(-1)?, FdKind::Closed);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn inspect_raw(fd: RawFd) -> io::Result<FdKind> {
    // SAFETY: F_GETFD only reads the fd flags; any integer is a valid argument (EBADF if closed).
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::EBADF) {
            Ok(FdKind::Closed)
        } else {
            Err(err)
        };
    }
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat` buffer for the duration of the call.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::EBADF) {
            Ok(FdKind::Closed)
        } else {
            Err(err)
        };
    }
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => inspect_socket(fd)?,
        libc::S_IFCHR => FdKind::CharDevice { path: fd_path(fd) },
        libc::S_IFIFO => FdKind::Fifo,
        libc::S_IFREG => FdKind::File { path: fd_path(fd) },
        libc::S_IFDIR => FdKind::Directory { path: fd_path(fd) },
        _ => FdKind::Other { path: fd_path(fd) },
    })
}

/// Where `/proc/self/fd/N` points (Linux); `None` elsewhere or when unreadable.
fn fd_path(fd: RawFd) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

fn getsockopt_int(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

fn inspect_socket(fd: RawFd) -> io::Result<FdKind> {
    let socket_type = SocketType::from_raw(getsockopt_int(fd, libc::SO_TYPE)?);
    let listening = getsockopt_int(fd, libc::SO_ACCEPTCONN)? != 0;
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is large enough for any address and `len` holds its size.
    if unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let family = Family::from_raw(i32::from(storage.ss_family));
    let local = decode_addr(&storage, len as usize);
    Ok(FdKind::Socket {
        family,
        socket_type,
        listening,
        local,
    })
}

fn decode_addr(storage: &libc::sockaddr_storage, len: usize) -> Option<LocalAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large enough.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(LocalAddr::Inet(
                SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into(),
            ))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and it is large enough.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let addr = SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            );
            Some(LocalAddr::Inet(addr.into()))
        }
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un (storage is larger).
            let sun =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
            let offset = mem::offset_of!(libc::sockaddr_un, sun_path);
            let path_len = len.saturating_sub(offset).min(sun.sun_path.len());
            let bytes: Vec<u8> = sun.sun_path[..path_len].iter().map(|&c| c as u8).collect();
            Some(match bytes.split_first() {
                None => LocalAddr::UnixUnnamed,
                Some((0, name)) => LocalAddr::UnixAbstract(name.to_vec()),
                Some(_) => {
                    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                    LocalAddr::UnixPath(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[..end])))
                }
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    #[test]
    fn unix_kinds_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("listenfd-inspect-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixListener::bind(&dir).unwrap();
        let kind = inspect_fd(&listener).unwrap();
        assert_eq!(
            kind,
            FdKind::Socket {
                family: Family::Unix,
                socket_type: SocketType::Stream,
                listening: true,
                local: Some(LocalAddr::UnixPath(dir.clone())),
            }
        );
        std::fs::remove_file(&dir).unwrap();

        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(
            inspect_fd(&a).unwrap().to_string(),
            "a connected Unix stream socket ((unnamed))"
        );
        let d = UnixDatagram::unbound().unwrap();
        assert_eq!(
            inspect_fd(&d).unwrap().to_string(),
            "a Unix dgram socket ((unnamed))"
        );
    }

    #[test]
    fn pipe_and_closed() {
        let mut ends = [0; 2];
        // SAFETY: `ends` has room for the two fds pipe() writes.
        assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
        // SAFETY: pipe() just returned these fds to us; nothing else owns them.
        let (r, _w) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        assert_eq!(inspect_fd(&r).unwrap(), FdKind::Fifo);
        // A number far above any open fd (closing one of ours would race with other tests).
        assert_eq!(inspect_raw(i32::MAX).unwrap(), FdKind::Closed);
    }
}
