//! The daemon's private `sd_notify` socket, and what its messages say.
//!
//! The socket is a Unix datagram socket in the Linux abstract namespace
//! (`NOTIFY_SOCKET=@sd-launch/notify/<our pid>/<random>`), which every `sd_notify`
//! implementation we know of accepts (libsystemd, `systemd-notify`, Python's `sdnotify`, Go's
//! `go-systemd`, listenfd-core). Decision: abstract rather than a file, so nothing is left on
//! disk however we die (a `SIGKILL` left a directory in `/tmp` before), and no runtime
//! directory is needed (one owned by another user made `--ready` fail). Anyone in our network
//! namespace can send to it, so `SO_PASSCRED` makes the kernel attach the sender's pid to
//! every message, and a message counts only when it comes from the daemon or one of its
//! descendants (a daemon behind `cargo run` or a shell wrapper sends from a child): like
//! systemd's `NotifyAccess=all` within the daemon's process tree. Others are ignored.
//!
//! The socket stays open and is read for the daemon's whole life (messages after `READY=1`
//! are logged at debug level), so a daemon that keeps sending `STATUS=` or `WATCHDOG=1`
//! never blocks in `sd_notify` on a full queue.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, UnixCredentials, sockopt};

/// The variable that tells the daemon where to send its notifications.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A private notification socket.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    name: String,
}

impl NotifySocket {
    /// Bind a new socket at a fresh abstract name.
    pub(crate) fn new() -> io::Result<NotifySocket> {
        let mut last = None;
        for _ in 0..16 {
            let name = format!("sd-launch/notify/{}/{:016x}", std::process::id(), random());
            let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
            match UnixDatagram::bind_addr(&addr) {
                Ok(socket) => {
                    socket::setsockopt(&socket, sockopt::PassCred, &true)
                        .map_err(io::Error::from)?;
                    socket.set_nonblocking(true)?;
                    return Ok(NotifySocket {
                        socket,
                        name: format!("@{name}"),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("16 tries"))
    }

    /// A second handle on the same socket (for each daemon of a restartable stack member).
    pub(crate) fn try_clone(&self) -> io::Result<NotifySocket> {
        Ok(NotifySocket {
            socket: self.socket.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// The value of `NOTIFY_SOCKET`.
    pub(crate) fn address(&self) -> &str {
        &self.name
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// One pending message and its sender's pid, or `None` when there is none.
    pub(crate) fn receive(&self) -> io::Result<Option<(libc::pid_t, String)>> {
        loop {
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(UnixCredentials, [RawFd; 16]);
            let msg = match socket::recvmsg::<()>(
                self.socket.as_fd().as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut pid = None;
            for c in msg.cmsgs().map_err(io::Error::from)? {
                match c {
                    ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                    // A sender may pass fds (FDSTORE=1): received close-on-exec and dropped.
                    ControlMessageOwned::ScmRights(fds) => {
                        for fd in fds {
                            // SAFETY: the kernel just installed these fds for us; nobody
                            // else owns them.
                            drop(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                    _ => {}
                }
            }
            let len = msg.bytes;
            let Some(pid) = pid else { continue };
            return Ok(Some((
                pid,
                String::from_utf8_lossy(&buf[..len]).into_owned(),
            )));
        }
    }
}

/// 64 bits from the kernel's random pool (for a name nobody can guess in advance).
fn random() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into our u64.
    let n = unsafe { libc::getrandom((&raw mut v).cast(), 8, 0) };
    if n != 8 {
        // Only the uniqueness matters, and a collision is retried.
        v = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    v
}

/// Whether a notification contains the line `READY=1`.
pub(crate) fn is_ready(text: &str) -> bool {
    text.split('\n').any(|line| line == "READY=1")
}

/// Whether `pid` is `root` or one of its descendants (walking parent pids in /proc).
pub(crate) fn is_in_tree(mut pid: libc::pid_t, root: libc::pid_t) -> bool {
    for _ in 0..64 {
        if pid == root {
            return true;
        }
        if pid <= 1 {
            return false;
        }
        match parent_pid(pid) {
            Some(parent) => pid = parent,
            None => return false,
        }
    }
    false
}

fn parent_pid(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_a_whole_line() {
        assert!(is_ready("READY=1"));
        assert!(is_ready("STATUS=up\nREADY=1\n"));
        assert!(!is_ready("READY=10"));
        assert!(!is_ready("NOTREADY=1"));
        assert!(!is_ready("STATUS=READY=1"));
    }

    #[test]
    fn our_own_pid_is_in_our_tree_and_init_is_not() {
        let me = std::process::id() as libc::pid_t;
        assert!(is_in_tree(me, me));
        assert!(is_in_tree(me, parent_pid(me).unwrap()));
        assert!(!is_in_tree(1, me));
    }
}
