//! Readiness: a private `sd_notify` socket for the daemon, and the wait for its `READY=1`.
//!
//! The socket is a Unix datagram socket in a fresh directory only we can enter (mode 0700),
//! passed to the daemon as `NOTIFY_SOCKET`. `SO_PASSCRED` makes the kernel attach the
//! sender's pid to every message, so a message counts only when it comes from the daemon or
//! one of its descendants (a daemon behind `cargo run` or a shell wrapper sends from a
//! child): like systemd's `NotifyAccess=all` within the daemon's process tree. Messages from
//! anyone else are ignored.

use std::io::{self, IoSliceMut, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, UnixCredentials, sockopt};

use crate::error::Error;
use crate::launched::Launched;

/// The variable that tells the daemon where to send its notifications.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A private notification socket; removed (with its directory) when dropped.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    /// Create the socket in a new private directory under `$XDG_RUNTIME_DIR` or the
    /// temporary directory.
    pub(crate) fn new() -> io::Result<NotifySocket> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        // tempfile creates the directory with mode 0700.
        let dir = tempfile::Builder::new()
            .prefix("sd-launch-notify.")
            .tempdir_in(base)?;
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path)?;
        socket::setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
        socket.set_nonblocking(true)?;
        Ok(NotifySocket {
            socket,
            path,
            _dir: dir,
        })
    }

    /// The socket's path, the value of `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Wait until `daemon` (or a descendant) sends `READY=1`. Fails when the daemon exits
    /// first (with its status and stderr tail) or when `timeout` passes; either way the
    /// daemon is then killed (if still running) and reaped.
    pub(crate) fn wait_ready(&self, daemon: &mut Launched, timeout: Duration) -> Result<(), Error> {
        let result = self.wait_for_ready(daemon, timeout);
        if result.is_err() {
            let _ = daemon.kill();
        }
        result
    }

    fn wait_for_ready(&self, daemon: &mut Launched, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let program = daemon.program().to_owned();
        let io_err = |source| Error::Spawn {
            program: program.clone(),
            step: "waiting for READY=1",
            source,
        };
        loop {
            while let Some((pid, text)) = self.receive().map_err(io_err)? {
                let ours = is_in_tree(pid, daemon.pid() as libc::pid_t);
                tracing::debug!(
                    "notification from pid {pid}{}: {text:?}",
                    if ours {
                        ""
                    } else {
                        " (not the daemon's: ignored)"
                    }
                );
                if ours && is_ready(&text) {
                    return Ok(());
                }
            }
            if let Some(status) = daemon.try_wait().map_err(io_err)? {
                return Err(daemon.exited(status, "before it was ready (READY=1)"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::ReadyTimeout { program, timeout });
            }
            self.poll(daemon, left.min(Duration::from_millis(100)));
        }
    }

    /// Sleep until a message arrives, the daemon exits, or `timeout` passes.
    fn poll(&self, daemon: &Launched, timeout: Duration) {
        let mut fds = [
            libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: daemon.pidfd().unwrap_or(-1), // poll ignores negative fds
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: poll reads and writes the array of two pollfds we own.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    }

    /// One pending message and its sender's pid, or `None` when there is none.
    fn receive(&self) -> io::Result<Option<(libc::pid_t, String)>> {
        loop {
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(UnixCredentials);
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
            let pid = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                // A sender may pass fds (FDSTORE=1): received close-on-exec and dropped.
                ControlMessageOwned::ScmRights(fds) => {
                    for fd in fds {
                        // SAFETY: the kernel just installed these fds for us; nobody else
                        // owns them.
                        drop(unsafe {
                            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                        });
                    }
                    None
                }
                _ => None,
            });
            let len = msg.bytes;
            let Some(pid) = pid else { continue };
            return Ok(Some((
                pid,
                String::from_utf8_lossy(&buf[..len]).into_owned(),
            )));
        }
    }
}

/// Whether a notification contains the line `READY=1`.
fn is_ready(text: &str) -> bool {
    text.split('\n').any(|line| line == "READY=1")
}

/// Whether `pid` is `root` or one of its descendants (walking parent pids in /proc).
fn is_in_tree(mut pid: libc::pid_t, root: libc::pid_t) -> bool {
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

/// The last lines of a regular file (the daemon's stderr, when it goes to a file): at most
/// 2 KiB, lossy UTF-8, trimmed to whole lines.
pub(crate) fn tail(file: &std::fs::File) -> Option<String> {
    const MAX: u64 = 2048;
    let mut file = file;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(MAX);
    let mut bytes = Vec::with_capacity((len - start) as usize);
    // A shared offset (O_APPEND file) is fine to move: appends ignore it.
    file.seek(SeekFrom::Start(start)).ok()?;
    file.take(MAX).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let text = if start > 0 {
        text.split_once('\n').map_or(&*text, |(_, rest)| rest)
    } else {
        &text
    };
    let text = text.trim_end();
    (!text.is_empty()).then(|| text.to_owned())
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

    #[test]
    fn tail_keeps_whole_last_lines() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        assert_eq!(tail(&f), None);
        for i in 0..1000 {
            writeln!(f, "line {i}").unwrap();
        }
        let t = tail(&f).unwrap();
        assert!(t.ends_with("line 999"), "{t}");
        assert!(t.starts_with("line "), "{t}");
        assert!(t.len() <= 2048);
    }
}
