//! Creating the sockets a [`SocketSpec`] describes: bound, listening, close-on-exec in this
//! process (so no other child spawned concurrently inherits them).
//!
//! Decisions, where `systemd-socket-activate` is sloppy:
//! * `SO_REUSEADDR` on TCP/UDP; `[::]` is dual-stack (`IPV6_V6ONLY` off).
//! * Stream and seqpacket sockets listen with the largest backlog the kernel allows by
//!   default ([`DEFAULT_BACKLOG`], clamped by `net.core.somaxconn`, as systemd does): a small
//!   backlog drops connections when many clients connect while the daemon starts.
//! * A Unix socket is bound at its final path (made absolute), so `getsockname()` in the
//!   daemon returns that path, as under `systemd-socket-activate`: libsystemd's
//!   `sd_is_socket_unix(fd, .., path)` and lighttpd's `server.bind` compare it. (Binding
//!   elsewhere and renaming or linking the file into place does not do that: the kernel
//!   reports the path given to `bind`, even once that name is gone.)
//! * The file is never reachable with wider permissions than asked (`0600` unless told
//!   otherwise), at no instant: the kernel creates it with `0777 & !umask`, so `bind` runs
//!   with `umask` `!mode`. The umask is shared by the threads of a process, so the bind runs
//!   in a short-lived thread that first takes a private copy of it (`unshare(CLONE_FS)`),
//!   and the rest of the process never sees the change. Where `unshare` is refused (a
//!   seccomp filter, as in some containers), the process umask is tightened instead, to its
//!   old value plus the bits the mode forbids, under a lock of this crate, and restored right
//!   after the bind; the file is then `chmod`ed up to the mode. Residuals: in that fallback,
//!   a file another thread creates in that instant gets fewer permissions than it would (never
//!   more), and code outside this crate calling `umask` then is not serialised by our lock; a
//!   default ACL on the directory overrides the umask (POSIX ACL rules), so there the file has
//!   the ACL's permissions until the `chmod` right after the bind.
//! * The directory is opened (`O_PATH`) before anything is created in it and kept, one fd per
//!   socket file, for as long as the file is ours; every step but the bind itself names the
//!   file relative to that descriptor, so a directory swapped for a symlink afterwards never
//!   makes us touch a file elsewhere. `bind(2)` takes no directory fd (and binding at
//!   `/proc/self/fd/N/name` would make that the name `getsockname()` reports): a directory
//!   swapped between the `open` and the `bind` makes the bind land elsewhere, which the check
//!   right after it notices (an error, exit 3); the file made there is left alone.
//! * A missing directory is an error that names it as given and says what to do
//!   (`./nodir does not exist (create it first, ...)`, exit 3), never one about a file of ours.
//! * An existing path is replaced only when it is a socket nobody listens on: a
//!   non-blocking connect is refused. A listener whose backlog is full (`EAGAIN`) is somebody
//!   listening, and the probe never waits. Anything else there, a regular file above all, is
//!   an error and is never deleted.
//! * At drop, only the very socket file we created is removed: the name is looked up in the
//!   directory we created it in, without following a symlink, and removed only if it is
//!   still a socket with the device, inode, owner, mode and change time recorded at
//!   creation (the change time guards against an inode number reused by a file created after
//!   ours was deleted; a socket someone else `chmod`ed since is left in place, the safe side).
//!   Residual: Linux has no "unlink if it is this inode", so a file that replaces ours
//!   between that check and the `unlinkat` (microseconds, and only by someone who may write
//!   to the directory) is removed instead.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, fchmodat, fstatat, umask};
use nix::unistd::{UnlinkatFlags, unlinkat};

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

/// A Unix socket file this crate created, identified as it was at creation; removed when
/// dropped, unless [`CreatedPath::keep`] was called, and only if it is still that very file.
#[derive(Debug)]
pub(crate) struct CreatedPath {
    /// The directory it was created in, opened before the bind.
    dir: OwnedFd,
    /// Its name in `dir`.
    name: OsString,
    /// Who it is: device, inode, owner, mode and change time at creation.
    id: FileId,
    /// The path as bound (for [`CreatedPath::keep`]).
    path: PathBuf,
    kept: bool,
}

/// What identifies a file across the life of a socket set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    uid: u32,
    mode: u32,
    ctime: (i64, i64),
}

impl FileId {
    fn of(st: &FileStat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
            uid: st.st_uid,
            mode: st.st_mode,
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// `name` in `dir`, not following a symlink.
fn stat_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<FileStat> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn is_socket(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFSOCK
}

impl CreatedPath {
    /// Leave the file in place when dropped (the daemon outlives us and still uses it).
    pub(crate) fn keep(mut self) -> PathBuf {
        self.kept = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for CreatedPath {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        match stat_at(&self.dir, &self.name) {
            Ok(st) if is_socket(&st) && FileId::of(&st) == self.id => {
                let _ = unlinkat(&self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
            // Gone, or replaced by something that is not ours: left alone.
            _ => {}
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
    given: &Path,
    ty: Type,
    listens: bool,
    backlog: i32,
    mode: u32,
) -> Result<Bound, Error> {
    let path = std::path::absolute(given).map_err(|e| socket_error("resolve", spec, e))?;
    if path.as_os_str().len() > MAX_UNIX_PATH {
        // Clients could not connect to it either: refuse before touching anything.
        let e = io::Error::from_raw_os_error(libc::ENAMETOOLONG);
        return Err(socket_error("bind", spec, too_long_hint(e, &path)));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::Address {
            input: given.display().to_string(),
            reason: "a Unix socket path must end in a file name".into(),
        });
    };
    // The directory and name, as the rest uses them (a trailing `/` or `/.` is dropped).
    let path = parent.join(name);
    let dir = open_dir(parent, given)?;
    remove_stale(&dir, name, &path, ty, spec)?;
    let sockaddr =
        SockAddr::unix(&path).map_err(|e| socket_error("bind", spec, too_long_hint(e, &path)))?;
    let socket = new_socket(Domain::UNIX, ty, spec)?;
    bind_restricted(&socket, &sockaddr, mode, true).map_err(|e| match e.raw_os_error() {
        Some(libc::EADDRINUSE) => appeared(&path),
        _ => socket_error("bind", spec, too_long_hint(e, &path)),
    })?;
    let created = record(dir, name, &path, mode).map_err(|e| match e {
        Some(e) => socket_error("chmod", spec, e),
        None => appeared(&path),
    })?;
    finish(
        socket,
        spec,
        listens,
        backlog,
        Address::Unix(path),
        Some(created),
    )
}

fn appeared(path: &Path) -> Error {
    Error::PathInUse {
        path: path.to_owned(),
        what: "a file appeared there while the socket was being created",
    }
}

/// Open the directory a socket file is to be created in (`parent`, the absolute form of
/// `given`'s); a missing one is an error naming it as given.
fn open_dir(parent: &Path, given: &Path) -> Result<OwnedFd, Error> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(parent, flags, Mode::empty()).map_err(|errno| {
        let directory = match given.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let what = match errno {
            Errno::ENOENT => "does not exist (create it first, or choose another path)",
            Errno::ENOTDIR => "is not a directory (choose another path)",
            _ => {
                return Error::Socket {
                    action: "open the directory of",
                    address: given.display().to_string(),
                    source: errno.into(),
                    hint: "",
                };
            }
        };
        Error::NoDirectory {
            path: given.to_owned(),
            directory,
            what,
        }
    })
}

/// The umask changes of [`bind_restricted`]'s fallback, one at a time.
static PROCESS_UMASK: Mutex<()> = Mutex::new(());

/// Bind `socket` to `addr`, a path, so that the file is created with no permission beyond
/// `mode`: in a thread with a umask of its own (`unshare(CLONE_FS)`) when `private` and the
/// kernel allows it, otherwise under a tightened process umask (see the module's decisions).
fn bind_restricted(socket: &Socket, addr: &SockAddr, mode: u32, private: bool) -> io::Result<()> {
    let forbidden = Mode::from_bits_truncate(!mode & 0o777);
    if private {
        let attempt = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("sd-launch-bind".into())
                .spawn_scoped(scope, || {
                    // This thread's filesystem context (cwd, root, umask) becomes its own; it
                    // ends with the thread.
                    unshare(CloneFlags::CLONE_FS).ok()?;
                    umask(forbidden);
                    Some(socket.bind(addr))
                })
                .map(|thread| thread.join())
        });
        match attempt {
            Ok(Ok(Some(result))) => return result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // No thread, or no private umask: the fallback below.
            Ok(Ok(None)) | Err(_) => {}
        }
    }
    let _serialised = PROCESS_UMASK.lock().unwrap_or_else(PoisonError::into_inner);
    // Read the umask by setting the most restrictive one; then only ever tighten it.
    let old = umask(Mode::S_IRWXU | Mode::S_IRWXG | Mode::S_IRWXO);
    umask(old | forbidden);
    let result = socket.bind(addr);
    umask(old);
    result
}

/// Identify the socket file just bound at `name` in `dir` and give it `mode` if the umask or
/// an ACL made it differ. `Err(None)`: something else is there already.
fn record(
    dir: OwnedFd,
    name: &OsStr,
    path: &Path,
    mode: u32,
) -> Result<CreatedPath, Option<io::Error>> {
    let st = stat_at(&dir, name).map_err(|_| None)?;
    if !is_socket(&st) {
        return Err(None);
    }
    // From here on, an error drops `created`, which removes the file.
    let mut created = CreatedPath {
        dir,
        name: name.to_owned(),
        id: FileId::of(&st),
        path: path.to_owned(),
        kept: false,
    };
    if st.st_mode & 0o7777 != mode {
        // Follows a symlink, but a socket was there a moment ago (see the residuals).
        let wanted = Mode::from_bits_truncate(mode);
        fchmodat(&created.dir, name, wanted, FchmodatFlags::FollowSymlink)
            .map_err(|e| Some(e.into()))?;
        let st = stat_at(&created.dir, name).map_err(|_| None)?;
        if !is_socket(&st) {
            return Err(None);
        }
        created.id = FileId::of(&st);
    }
    Ok(created)
}

/// Remove `name` in `dir` (`path`) if it is a socket nobody listens on; refuse anything else
/// that is there.
fn remove_stale(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    ty: Type,
    spec: &SocketSpec,
) -> Result<(), Error> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(socket_error("inspect", spec, e.into())),
    };
    if !is_socket(&st) {
        let what = match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFREG => "a regular file is there",
            SFlag::S_IFDIR => "a directory is there",
            SFlag::S_IFLNK => "a symbolic link is there",
            _ => "something that is not a socket is there",
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
    let listening = Error::PathInUse {
        path: path.to_owned(),
        what: "another process is listening on this socket",
    };
    match probe.connect(&addr).map_err(|e| e.raw_os_error()) {
        Ok(()) | Err(Some(libc::EAGAIN | libc::EINPROGRESS)) => Err(listening),
        Err(Some(libc::ECONNREFUSED)) => {
            // Only the stale socket just probed, not whatever may have replaced it since.
            match stat_at(dir, name) {
                Ok(now)
                    if is_socket(&now) && (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) =>
                {
                    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => Ok(()),
                        Err(e) => Err(socket_error("remove the stale socket", spec, e.into())),
                    }
                }
                Err(Errno::ENOENT) => Ok(()),
                _ => Err(appeared(path)),
            }
        }
        Err(Some(libc::EPROTOTYPE)) => Err(Error::PathInUse {
            path: path.to_owned(),
            what: "a socket of another type is there",
        }),
        Err(e) => Err(socket_error(
            "probe the existing socket",
            spec,
            e.map_or_else(
                || io::Error::other("unknown error"),
                io::Error::from_raw_os_error,
            ),
        )),
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
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
        // nothing else was created in the directory
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

    /// The path the socket itself reports (`getsockname`), as the daemon sees it.
    fn sockname(fd: &OwnedFd) -> Option<PathBuf> {
        let addr = socket2::SockRef::from(fd).local_addr().unwrap();
        addr.as_pathname().map(Path::to_owned)
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn the_socket_reports_the_path_it_was_asked_for_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        for (transport, mode) in [
            (Transport::Stream, DEFAULT_UNIX_MODE),
            (Transport::Stream, 0o660),
            (Transport::Datagram, 0o600),
            (Transport::SeqPacket, 0o666),
        ] {
            let path = dir.path().join(format!("{transport:?}-{mode:o}.sock"));
            let bound = bind(&unix(&path).transport(transport), 8, mode).unwrap();
            // What libsystemd's sd_is_socket_unix() and lighttpd's server.bind compare with.
            assert_eq!(
                sockname(&bound.fd).as_deref(),
                Some(path.as_path()),
                "{transport:?}"
            );
            assert_eq!(bound.address, Address::Unix(path.clone()));
            assert_eq!(mode_of(&path), mode, "{transport:?}");
            assert!(
                std::fs::symlink_metadata(&path)
                    .unwrap()
                    .file_type()
                    .is_socket()
            );
        }
    }

    /// Run `f` in a thread whose umask is its own, set to `mask` (None: `unshare` refused).
    fn with_own_umask<T: Send>(mask: u32, f: impl FnOnce() -> T + Send) -> Option<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = unshare(CloneFlags::CLONE_FS) {
                    eprintln!("SKIPPED: unshare(CLONE_FS) refused here: {e}");
                    return None;
                }
                umask(Mode::from_bits_truncate(mask));
                Some(f())
            })
            .join()
            .unwrap()
        })
    }

    fn current_umask() -> u32 {
        let old = umask(Mode::empty());
        umask(old);
        old.bits()
    }

    /// The mode the kernel gave the file at `bind`, before anything could `chmod` it.
    fn mode_at_bind(path: &Path, mode: u32, private: bool) -> u32 {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        bind_restricted(&socket, &SockAddr::unix(path).unwrap(), mode, private).unwrap();
        mode_of(path)
    }

    #[test]
    fn under_a_permissive_umask_the_file_is_born_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let checked = with_own_umask(0, || {
            for private in [true, false] {
                for mode in [0o600, 0o660, 0o644] {
                    let path = dir.path().join(format!("{private}-{mode:o}"));
                    assert_eq!(mode_at_bind(&path, mode, private), mode, "{path:?}");
                    assert_eq!(current_umask(), 0, "the caller's umask was not restored");
                }
            }
        });
        if checked.is_some() {
            // The final file, through the whole path, under umask 0.
            let path = dir.path().join("full.sock");
            let bound = with_own_umask(0, || bind(&unix(&path), 8, 0o600).unwrap()).unwrap();
            assert_eq!(mode_of(&path), 0o600);
            drop(bound);
        }
    }

    #[test]
    fn the_fallback_only_tightens_the_umask_and_chmods_up_to_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let Some(born) = with_own_umask(0o027, || {
            let born = mode_at_bind(&path, 0o666, false);
            assert_eq!(
                current_umask(),
                0o027,
                "the caller's umask was not restored"
            );
            born
        }) else {
            return;
        };
        // 0666 asked, 027 in force: born 0640 (never more than either allows) ...
        assert_eq!(born, 0o640);
        // ... then widened to exactly the mode asked.
        let parent = open_dir(dir.path(), dir.path()).unwrap();
        let created = record(parent, OsStr::new("s.sock"), &path, 0o666).unwrap();
        assert_eq!(mode_of(&path), 0o666);
        drop(created);
        assert!(!path.exists(), "the socket chmod'ed by us is still ours");
    }

    #[test]
    fn drop_keeps_a_regular_file_that_replaced_our_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let bound = bind(&unix(&path), 8, DEFAULT_UNIX_MODE).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "precious").unwrap();
        drop(bound);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn drop_keeps_another_programs_socket_that_replaced_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let bound = bind(&unix(&path), 8, DEFAULT_UNIX_MODE).unwrap();
        std::fs::remove_file(&path).unwrap();
        let theirs = UnixListener::bind(&path).unwrap();
        drop(bound);
        assert!(path.exists(), "another program's live socket was deleted");
        UnixStream::connect(&path).expect("their socket still answers");
        drop(theirs);
    }

    #[test]
    fn drop_follows_no_symlink_that_replaced_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours");
        std::fs::create_dir(&ours).unwrap();
        let bound = bind(&unix(&ours.join("s.sock")), 8, DEFAULT_UNIX_MODE).unwrap();
        // The directory moves away, and a symlink to another directory takes its name; that
        // directory holds a file with the socket's name.
        let moved = dir.path().join("moved");
        std::fs::rename(&ours, &moved).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("s.sock"), "not yours").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &ours).unwrap();
        drop(bound);
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("s.sock")).unwrap(),
            "not yours"
        );
        // The very socket we created, in the directory it was created in, is gone.
        assert!(!moved.join("s.sock").exists());
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
