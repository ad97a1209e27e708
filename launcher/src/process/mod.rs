//! The process layer: a bare child we started, and nothing above this layer touches pids.
//!
//! [`Child`] is what std's `sys::process::Process` is to `std::process::Child`, with the
//! pidfd taken at spawn as tokio's reaper does: signals go through the pidfd (never to a
//! recycled pid), the pidfd is what the supervisor's event loop waits on, and the child is
//! reaped by whoever holds it. With [`Plan::process_group`] the child leads a process group
//! of its own, so a stop reaches every process it started (`sh -c 'helper & exec daemon'`),
//! while a signal to *our* group (a terminal's Ctrl-C) is not delivered to it a second time.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::error::Error;

mod guardian;
mod spawn;

pub(crate) use spawn::{Gate, Plan};

/// A child process we started and have not reaped yet, or have reaped (its status kept).
#[derive(Debug)]
pub(crate) struct Child {
    pid: libc::pid_t,
    /// `None` once reaped.
    pidfd: Option<OwnedFd>,
    /// The child leads its own process group (its pgid is its pid).
    group: bool,
    /// Registered with the [`guardian`]: killed (with its group) when this process ends.
    guarded: bool,
    /// The terminal whose foreground the child's group was given, to take back at reap.
    tty: Option<RawFd>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Start a child according to `plan`; with [`Plan::gate`] it is held before `execve`
    /// until the returned [`Gate`] is released. With `guard`, the child and its group are
    /// killed by the [`guardian`] when this process ends, however it ends, unless reaped or
    /// [unguarded](Child::unguard) first.
    pub(crate) fn spawn(plan: &mut Plan, guard: bool) -> Result<(Child, Option<Gate>), Error> {
        // The guardian exists before the child does: it never runs unguarded while we fork.
        let guard = guard && guardian::ensure();
        let (pid, pidfd, gate) = spawn::spawn(plan)?;
        let child = Child {
            pid,
            pidfd: Some(pidfd),
            group: plan.process_group,
            guarded: guard && guardian::register(pid, plan.process_group),
            tty: plan.foreground_tty.filter(|_| plan.process_group),
            status: None,
        };
        Ok((child, gate))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Let the child outlive this process: the guardian forgets it (a detached daemon).
    pub(crate) fn unguard(&mut self) {
        if std::mem::take(&mut self.guarded) {
            guardian::unregister(self.pid);
        }
    }

    /// The pidfd, readable once the child has exited; `None` once reaped.
    pub(crate) fn pidfd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether the child has been reaped.
    pub(crate) fn is_reaped(&self) -> bool {
        self.status.is_some()
    }

    /// Send `signal` to the child itself.
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        let Some(fd) = &self.pidfd else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the daemon has already exited and been reaped",
            ));
        };
        // SAFETY: pidfd_send_signal with a pidfd we own, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Send `signal` to the child, ignoring that it has just exited (ESRCH) or been reaped.
    pub(crate) fn forward(&self, signal: i32) -> io::Result<()> {
        match self.signal(signal) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) || self.pidfd.is_none() => Ok(()),
            other => other,
        }
    }

    /// Send `signal` to every process of the child's group (the child first), when it has
    /// one; only the child otherwise. A group whose processes are all gone is not an error.
    ///
    /// The pgid cannot have been reused by a stranger: the leader is not reaped yet.
    pub(crate) fn signal_group(&self, signal: i32) -> io::Result<()> {
        self.forward(signal)?;
        if self.group && self.status.is_none() {
            // SAFETY: kill with a negative pid signals the process group we created.
            if unsafe { libc::kill(-self.pid, signal) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether the child has exited, without blocking; reaps it if so.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }

    /// Wait for the child to exit, and reap it.
    pub(crate) fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.waitpid(0)? {
                return Ok(status);
            }
        }
    }

    /// Wait until the child exits or `deadline` passes (`None`: no deadline).
    pub(crate) fn wait_deadline(
        &mut self,
        deadline: Option<Instant>,
    ) -> io::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let Some(fd) = self.pidfd() else {
                return Ok(self.status);
            };
            if !poll_readable(fd, deadline)? {
                return self.try_wait();
            }
        }
    }

    /// `SIGKILL` to the child and its group, then reap the child (its status if it was
    /// reaped already: its group went with it).
    pub(crate) fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        self.signal_group(libc::SIGKILL)?;
        self.wait()
    }

    /// Reap the child if it has exited (blocking for it unless `WNOHANG`). A child that leads
    /// a process group takes the group with it: what is left of the group is killed while
    /// the exited child still holds its pid (so the pgid cannot have been reused), then the
    /// child is reaped. Decision, as systemd's `KillMode=control-group`: nothing a daemon
    /// started outlives it (a helper, a daemonized grandchild holding the port).
    fn waitpid(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        loop {
            // SAFETY: siginfo_t is plain data that waitid fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our own child, writing into a local; WNOWAIT leaves it
            // unreaped.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT | flags,
                )
            };
            if r != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(err);
            }
            // SAFETY: reading the pid of a siginfo that waitid filled in (0: nothing yet).
            if unsafe { info.si_pid() } == 0 {
                return Ok(None);
            }
            break;
        }
        if self.group {
            // SAFETY: kill with a negative pid signals the process group we created, whose
            // leader is an unreaped zombie.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        }
        if let Some(tty) = self.tty.take() {
            // The terminal comes back to us, as a shell takes it back from a finished job.
            let _ = spawn::reclaim_foreground(tty);
        }
        // The guardian forgets the pid before it can be reused, that is before the reap.
        self.unguard();
        let mut raw = 0;
        loop {
            // SAFETY: waitpid on our own child, which has exited, writing into a local.
            let r = unsafe { libc::waitpid(self.pid, &mut raw, 0) };
            if r == self.pid {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                self.pidfd = None;
                return Ok(Some(status));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }
}

/// Stop `children` together: `signal` to each (its group included), then wait until
/// `grace` has passed for all of them, then `SIGKILL` to those still there; every process
/// group is killed at the end, so nothing the children started outlives them. Returns the
/// children that needed `SIGKILL`.
pub(crate) fn stop_all<'a>(
    children: impl IntoIterator<Item = &'a mut Child>,
    signal: i32,
    grace: Duration,
) -> usize {
    let mut children: Vec<&mut Child> = children.into_iter().collect();
    for child in &children {
        if child.status.is_none() {
            let _ = child.signal_group(signal);
        }
    }
    let deadline = Instant::now() + grace;
    let mut killed = 0;
    for child in &mut children {
        match child.wait_deadline(Some(deadline)) {
            Ok(Some(_)) => {}
            _ => {
                tracing::warn!(
                    "pid {} still running {grace:?} after signal {signal}: sending SIGKILL",
                    child.pid
                );
                killed += 1;
            }
        }
        let _ = child.kill();
    }
    killed
}

/// Wait until `fd` is readable or `deadline` passes (`None`: no deadline); `true` when it
/// is readable. The one blocking wait of the launcher, shared with the supervisor's loop.
pub(crate) fn poll_readable(fd: RawFd, deadline: Option<Instant>) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    Ok(poll(&mut fds, deadline)? > 0)
}

/// `poll(2)` until `deadline` (`None`: no deadline), retried on EINTR with the time left.
/// Returns the number of ready entries; 0 when the deadline passed.
pub(crate) fn poll(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up: a 0.3 ms wait must not become a busy 0 ms one.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: poll reads and writes the array of pollfds we own, of the given length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Where `execve` would find `program` (`PATH` unless it contains a `/`; `path_var` is the
/// daemon's `PATH`, `None` for the default), without running anything: the first candidate
/// that is an executable regular file, else the error a spawn would report (not found:
/// 127; found but not executable: 126).
pub(crate) fn find_program(
    program: &std::ffi::OsStr,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<std::path::PathBuf, Error> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let candidates = spawn::candidates(program, path_var);
    let searched = candidates.len() > 1 || !program.as_bytes().contains(&b'/');
    let mut errno = libc::ENOENT;
    for c in candidates {
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&c));
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                return Ok(std::path::absolute(&path).unwrap_or(path));
            }
            Ok(_) => errno = libc::EACCES,
            Err(_) => {}
        }
    }
    Err(spawn::child_error(
        &program.to_string_lossy(),
        searched,
        Some(spawn::Step::Exec),
        errno,
    ))
}
