//! Starting the daemon: clone, put the sockets on fds 3.., set `LISTEN_PID` to the child's own
//! pid, execve. The only module with much `unsafe`. Linux only.
//!
//! `std::process::Command` cannot do this: it builds the environment before `fork`, so the
//! child's pid cannot be in it. Here everything is allocated before the child exists ([`Plan`],
//! the fd moves, the scratch buffers), including a fixed-width slot for the pid digits, and the
//! child runs only async-signal-safe code (the launcher may be a multi-threaded test process,
//! where anything that takes a lock, such as `malloc`, can deadlock in the child).
//!
//! The child is started with `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, as `posix_spawn`
//! does (it shares our memory and we sleep until it has exec'd: no page-table copy, no
//! copy-on-write faults in a big multi-threaded test process), and with a plain
//! `clone(SIGCHLD | CLONE_PIDFD)` (a fork) when held at the gate. Either way the pidfd comes
//! from the same system call that creates the child, so it can never name a recycled pid;
//! `pidfd_open` right after is the fallback for kernels that refuse `CLONE_PIDFD` (before 5.2).
//! The code the child runs, [`do_exec`], is the same for both.
//!
//! In the child, in order:
//! 1. every signal disposition is reset to the default, ignored ones included, as systemd does
//!    (Rust ignores `SIGPIPE`, `nohup` ignores `SIGHUP`; in the vfork child our handlers must
//!    not run at all: signals stay blocked until then), and the signal mask is emptied (tokio
//!    and supervisors block signals); only `SIGTTOU` stays blocked until step 3 if that needs it;
//! 2. with [`Plan::process_group`], `setpgid(0, 0)`: the daemon leads a new process group;
//! 3. with [`Plan::foreground_tty`] as well, `tcsetpgrp(tty, own pid)`: the new group becomes
//!    the terminal's foreground group (so Ctrl-C reaches the daemon, not us); then `SIGTTOU`
//!    is unblocked;
//! 4. optionally, `PR_SET_PDEATHSIG`, re-checking that the parent is still alive;
//! 5. `chdir`;
//! 6. the fds are moved onto their targets (0..2, then 3..3+n-1) by a list of moves planned
//!    before the clone ([`plan_moves`]): a source already on its target only loses
//!    `FD_CLOEXEC`, a source whose number is a target written before its own turn is moved
//!    out of the way once, every other one is `dup2`ed straight onto its target. The status
//!    channel is moved above the targets if it sits among them;
//! 7. every other fd from 3+n up is closed except the status channel (close-on-exec):
//!    `close_range`; where that is refused (`ENOSYS` before Linux 5.9, `EPERM` under a seccomp
//!    allow-list), every fd listed in `/proc/self/fd`; without `/proc`, every number up to the
//!    hard `RLIMIT_NOFILE` (the soft limit may have been lowered below fds we hold);
//! 8. the pid digits (from the raw `getpid` system call) are written into the `LISTEN_PID=`
//!    slot;
//! 9. when held ([`Plan::gate`]): check that some candidate is an executable file, tell the
//!    parent, and wait until it releases the gate (so `sd-launch --foreground` can print the
//!    port before the daemon writes anything to the same stdout);
//! 10. `execve` of each `PATH` candidate, like `execvp` (`EACCES` beats `ENOENT`).
//!
//! A failure in the child is written as (step, errno) to the close-on-exec status channel (a
//! socket pair); the parent reads it (end of file means `execve` succeeded), reaps the child,
//! and returns an [`Error`] naming the program and the errno.

use std::convert::Infallible;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::Error;

const PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the digits of any pid_t and the terminating NUL.
const PID_DIGITS: usize = 20;
/// The child's buffer for `getdents64` on `/proc/self/fd` (allocated before the clone).
const DIRENT_BUF: usize = 4096;
/// Where the child lists its fds when `close_range` is refused.
const PROC_SELF_FD: &CStr = c"/proc/self/fd";

/// The steps that can fail in the child, as reported through the status channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    /// Not a failure: the child waits at the gate.
    AtGate = 0,
    Dup = 1,
    Chdir = 2,
    Exec = 3,
    Pdeathsig = 4,
    // 5 was "closing inherited fds": closing cannot fail any more (it falls back instead).
    Setpgid = 6,
    Tcsetpgrp = 7,
    /// Never reported: the parent died before `PR_SET_PDEATHSIG` took effect (exit 1).
    ParentGone = 8,
    /// Never reported: the parent dropped the gate (exit 127 without running the program).
    GateClosed = 9,
    /// The program is a `#!` script whose interpreter cannot be executed.
    Interpreter = 10,
}

impl Step {
    fn from_u32(v: u32) -> Option<Step> {
        [
            Step::AtGate,
            Step::Dup,
            Step::Chdir,
            Step::Exec,
            Step::Pdeathsig,
            Step::Setpgid,
            Step::Tcsetpgrp,
            Step::Interpreter,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::AtGate => "waiting at the gate",
            Step::Dup => "moving fds into place (dup2)",
            Step::Chdir => "changing directory",
            Step::Exec => "execve",
            Step::Pdeathsig => "PR_SET_PDEATHSIG",
            Step::Setpgid => "starting a process group (setpgid)",
            Step::Tcsetpgrp => "taking the terminal's foreground (tcsetpgrp)",
            Step::ParentGone => "checking that the parent is alive",
            Step::GateClosed => "waiting at the gate",
            Step::Interpreter => "execve of the script's interpreter",
        }
    }
}

/// What the child reports when a step fails: the step and the errno read right after it.
type Failure = (Step, i32);

/// Everything the child needs, allocated before the clone.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The program as the user gave it, for messages.
    pub program: String,
    /// Paths to try with `execve`, in order.
    candidates: Vec<CString>,
    argv: Vec<CString>,
    /// Environment entries; the `LISTEN_PID` one (if any) has room for the digits.
    env: Vec<Vec<u8>>,
    pid_slot: Option<usize>,
    cwd: Option<CString>,
    /// Fds for 0, 1, 2 (`None`: inherit).
    pub stdio: [Option<RawFd>; 3],
    /// Fds to put on 3, 4, ...
    pub sockets: Vec<RawFd>,
    /// Signal to receive when the parent (thread) dies.
    pub parent_death_signal: Option<i32>,
    /// Hold the child just before `execve` until [`Gate::release`].
    pub gate: bool,
    /// Start the daemon in a process group of its own (`setpgid(0, 0)`, pgid = its pid), so
    /// that a signal to the group (`kill(-pid, …)`) reaches it and its children and nothing of
    /// ours.
    pub process_group: bool,
    /// With [`process_group`](Plan::process_group): make the daemon's new group the
    /// foreground process group of this terminal (`tcsetpgrp`), as a shell does for a
    /// foreground job. Ignored without `process_group`. When the daemon is gone, the caller
    /// must give the foreground back to its own group with [`reclaim_foreground`], or the
    /// terminal stays with a group that no longer exists (and we are stopped by `SIGTTIN` at
    /// the next read from it).
    pub foreground_tty: Option<RawFd>,
    /// `binfmt_misc` handlers are registered: a file in another format may still run.
    binfmt_misc: bool,
    /// Test-only: pretend `close_range` (and `/proc`) are unavailable.
    #[cfg(test)]
    pub close_test: CloseTest,
    /// Test-only: start without `CLONE_PIDFD`, as on a kernel that refuses it.
    #[cfg(test)]
    pub no_clone_pidfd: bool,
}

/// Test-only switch for the child's close step: which fallbacks to take.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseTest {
    /// `close_range`, as in production.
    Normal,
    /// As if `close_range` failed with `EPERM` (a seccomp allow-list): list `/proc/self/fd`.
    RangeRefused,
    /// As if `close_range` were refused and `/proc` not mounted: loop to the hard limit.
    RangeRefusedNoProc,
}

impl Plan {
    /// Prepare argv, envp and the `PATH` candidates. `env` is the complete environment for
    /// the child, without `LISTEN_PID`; `with_pid` adds the `LISTEN_PID` slot.
    pub fn new(
        program: &OsStr,
        args: &[OsString],
        env: &[(OsString, OsString)],
        with_pid: bool,
        cwd: Option<&Path>,
    ) -> Result<Plan, Error> {
        let display = program.to_string_lossy().into_owned();
        let cstring = |what: &'static str, v: &[u8]| {
            CString::new(v).map_err(|_| Error::Nul {
                what,
                value: String::from_utf8_lossy(v).into_owned(),
            })
        };
        let mut argv = vec![cstring("the program name", program.as_bytes())?];
        for a in args {
            argv.push(cstring("an argument", a.as_bytes())?);
        }
        let mut entries = Vec::with_capacity(env.len() + 1);
        let mut path_var = None;
        for (k, v) in env {
            if k.as_bytes() == b"PATH" {
                path_var = Some(v.as_os_str());
            }
            if k.is_empty() || k.as_bytes().contains(&b'=') {
                return Err(Error::EnvName {
                    name: k.to_string_lossy().into_owned(),
                });
            }
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            entries.push(cstring("an environment variable", &e)?.into_bytes_with_nul());
        }
        let pid_slot = with_pid.then(|| {
            let mut slot = PID_PREFIX.to_vec();
            slot.resize(PID_PREFIX.len() + PID_DIGITS, 0);
            entries.push(slot);
            entries.len() - 1
        });
        let candidates = candidates(program, path_var)
            .into_iter()
            .map(|c| cstring("the program path", &c))
            .collect::<Result<_, _>>()?;
        let cwd = cwd
            .map(|d| cstring("the working directory", d.as_os_str().as_bytes()))
            .transpose()?;
        Ok(Plan {
            program: display,
            candidates,
            argv,
            env: entries,
            pid_slot,
            cwd,
            stdio: [None; 3],
            sockets: Vec::new(),
            parent_death_signal: None,
            gate: false,
            process_group: false,
            binfmt_misc: binfmt_misc_active(),
            foreground_tty: None,
            #[cfg(test)]
            close_test: CloseTest::Normal,
            #[cfg(test)]
            no_clone_pidfd: false,
        })
    }

    /// (target, source) for every fd the child must have, by ascending target: the stdio
    /// fds that are not inherited, then the sockets on 3, 4, ...
    fn wanted(&self) -> Vec<(RawFd, RawFd)> {
        let stdio = (0..3).zip(self.stdio).filter_map(|(t, s)| Some((t, s?)));
        let sockets = (3..).zip(self.sockets.iter().copied());
        stdio.chain(sockets).collect()
    }
}

/// The paths `execvp` would try: the program itself if it contains a `/`, else each `PATH`
/// entry joined with it (an empty entry means the current directory).
pub(crate) fn candidates(program: &OsStr, path_var: Option<&OsStr>) -> Vec<Vec<u8>> {
    let prog = program.as_bytes();
    if prog.contains(&b'/') || prog.is_empty() {
        return vec![prog.to_vec()];
    }
    let default_path: &[u8] = b"/usr/local/bin:/usr/bin:/bin";
    let path = path_var.map(OsStr::as_bytes).unwrap_or(default_path);
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut c = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            c.push(b'/');
            c.extend_from_slice(prog);
            c
        })
        .collect()
}

/// The hard `RLIMIT_NOFILE`: no fd can be at or above it (the kernel caps it at
/// `fs.nr_open`), whatever the soft limit is now. The last-resort close loop runs up to it.
fn hard_fd_limit() -> RawFd {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok && lim.rlim_max != libc::RLIM_INFINITY {
        RawFd::try_from(lim.rlim_max).unwrap_or(RawFd::MAX)
    } else {
        1 << 20 // the kernel's default fs.nr_open
    }
}

/// Where a move takes its fd from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The fd the caller gave.
    Fd(RawFd),
    /// The copy made by [`Move::Stash`] into this slot of the scratch array.
    Stashed(usize),
}

/// One step of putting the sources on their targets, planned before the clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// `fd` is needed by a later target but sits on a target written first: copy it
    /// (close-on-exec) to the lowest free fd above the targets, into `slot`.
    Stash { fd: RawFd, slot: usize },
    /// Put `source` on `target`: `dup2` (which clears `FD_CLOEXEC`), or, when it already is
    /// `target`, clear `FD_CLOEXEC`.
    Place { source: Source, target: RawFd },
    /// The copy in `slot` is no longer needed: close it.
    Unstash { slot: usize },
}

/// Plan the moves for `wanted` ((target, source) by ascending target): targets are written
/// in order, and a source is copied out of the way (once, at most one copy per such fd) only
/// when its number is a target written before its last use. No other fd is needed: n sockets
/// fit in n + 3 fds plus the status channel and those copies. Returns the moves and the
/// number of scratch slots.
fn plan_moves(wanted: &[(RawFd, RawFd)]) -> (Vec<Move>, usize) {
    let mut current: Vec<Source> = wanted.iter().map(|&(_, s)| Source::Fd(s)).collect();
    let mut moves = Vec::with_capacity(wanted.len());
    let mut slots = 0;
    for (i, &(target, _)) in wanted.iter().enumerate() {
        if current[i] != Source::Fd(target) {
            // Writing `target` destroys whatever is there: save it if a later one needs it.
            let later = i + 1..wanted.len();
            if later.clone().any(|j| current[j] == Source::Fd(target)) {
                let slot = slots;
                slots += 1;
                moves.push(Move::Stash { fd: target, slot });
                for j in later {
                    if current[j] == Source::Fd(target) {
                        current[j] = Source::Stashed(slot);
                    }
                }
            }
        }
        moves.push(Move::Place {
            source: current[i],
            target,
        });
        if let Source::Stashed(slot) = current[i]
            && !current[i + 1..].contains(&Source::Stashed(slot))
        {
            moves.push(Move::Unstash { slot });
        }
    }
    (moves, slots)
}

/// A child held just before `execve` (see [`Plan::gate`]): its setup succeeded and its
/// program exists and is executable; it runs once released.
#[derive(Debug)]
pub(crate) struct Gate {
    channel: UnixStream,
    program: String,
    searched_path: bool,
}

impl Gate {
    /// Let the child exec, and report whether `execve` succeeded. On error the child has
    /// exited (status 127) and the caller must reap it.
    pub fn release(self) -> Result<(), Error> {
        // One byte lets the child go; closing the channel without it (dropping the gate)
        // makes the child exit without running the program.
        (&self.channel)
            .write_all(b"G")
            .map_err(|source| Error::Spawn {
                program: self.program.clone(),
                step: "releasing the gate",
                source,
            })?;
        match read_report(&self.channel, &self.program)? {
            None => Ok(()),
            Some((step, errno)) => Err(child_error(&self.program, self.searched_path, step, errno)),
        }
    }
}

/// Give the terminal `tty` back to our own process group after a daemon started with
/// [`Plan::foreground_tty`] is gone. `SIGTTOU` is blocked in the calling thread meanwhile:
/// we are a background group of that terminal until this succeeds, and `tcsetpgrp` from the
/// background would otherwise stop us.
pub(crate) fn reclaim_foreground(tty: RawFd) -> io::Result<()> {
    let mut ttou = empty_sigset();
    let mut old = empty_sigset();
    // SAFETY: sigaddset writes into a set we own and initialised.
    unsafe { libc::sigaddset(&mut ttou, libc::SIGTTOU) };
    // SAFETY: reads `ttou`, writes the previous mask into `old`; both are ours.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &ttou, &mut old) };
    // SAFETY: getpgrp has no preconditions; tcsetpgrp only reads its arguments (a bad fd
    // fails with EBADF).
    let r = unsafe { libc::tcsetpgrp(tty, libc::getpgrp()) };
    let result = if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

/// Start the child according to `plan`. Returns its pid and a pidfd for it once `execve`
/// succeeded (or, with [`Plan::gate`], once the child waits at the gate); on any failure the
/// child has been reaped and nothing is left running.
pub(crate) fn spawn(plan: &mut Plan) -> Result<(libc::pid_t, OwnedFd, Option<Gate>), Error> {
    let program = plan.program.clone();
    let os_err = |step: &'static str, source: io::Error| Error::Spawn {
        program: program.clone(),
        step,
        source,
    };
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // Every pointer into the environment, the pid slot's included, comes from one mutable
    // borrow, so writing the digits through `pid_digits` does not invalidate `envp`.
    let env_ptrs: Vec<*mut u8> = plan.env.iter_mut().map(|e| e.as_mut_ptr()).collect();
    let pid_digits: *mut u8 = match plan.pid_slot.and_then(|i| env_ptrs.get(i)) {
        // SAFETY: the slot has PID_PREFIX.len() + PID_DIGITS bytes; the offset is in bounds.
        Some(&p) => unsafe { p.add(PID_PREFIX.len()) },
        None => std::ptr::null_mut(),
    };
    let mut envp: Vec<*const libc::c_char> =
        env_ptrs.iter().map(|&p| p.cast_const().cast()).collect();
    envp.push(std::ptr::null());
    let (ours, theirs) = UnixStream::pair().map_err(|e| os_err("socketpair", e))?;
    let wanted = plan.wanted();
    let (moves, slots) = plan_moves(&wanted);
    // Scratch space for the child, allocated here, written there.
    let mut stashed: Vec<RawFd> = vec![-1; slots];
    let mut dirents = vec![0u8; DIRENT_BUF];

    let mut child = Child {
        plan,
        argv: &argv,
        envp: &envp,
        pid_digits,
        moves: &moves,
        stashed: &mut stashed,
        dirents: &mut dirents,
        channel: theirs.as_raw_fd(),
        // SAFETY: getpid has no preconditions.
        parent_pid: unsafe { libc::getpid() },
        first_free: 3 + RawFd::try_from(plan.sockets.len()).unwrap_or(RawFd::MAX - 3),
        hard_limit: hard_fd_limit(),
        #[cfg(test)]
        proc_self_fd: match plan.close_test {
            CloseTest::RangeRefusedNoProc => c"/nonexistent/proc/self/fd",
            _ => PROC_SELF_FD,
        },
        #[cfg(not(test))]
        proc_self_fd: PROC_SELF_FD,
    };
    let gated = plan.gate;
    let started = if gated {
        fork(&mut child)
    } else {
        vfork(&mut child)
    };
    let (pid, pidfd) = started.map_err(|e| os_err("fork", e))?;
    drop(theirs);
    let searched_path = plan.candidates.len() > 1 || !plan.program.contains('/');
    let fail = |ours: UnixStream, error: Error| {
        drop(ours); // a child still at the gate sees the close and exits
        reap(pid);
        Err(error)
    };
    let pidfd = match pidfd {
        Some(fd) => fd,
        // Only on kernels without CLONE_PIDFD; the child cannot have been reaped yet, so the
        // pid is still its own.
        None => match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                // SAFETY: kill of our own unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return fail(ours, os_err("pidfd_open", e));
            }
        },
    };
    match read_report(&ours, &plan.program) {
        Ok(None) if !gated => Ok((pid, pidfd, None)),
        Ok(Some((Some(Step::AtGate), _))) if gated => Ok((
            pid,
            pidfd,
            Some(Gate {
                channel: ours,
                program: plan.program.clone(),
                searched_path,
            }),
        )),
        Ok(Some((step, errno))) => {
            fail(ours, child_error(&plan.program, searched_path, step, errno))
        }
        Ok(None) => fail(
            ours,
            os_err(
                "holding the child before exec",
                io::ErrorKind::UnexpectedEof.into(),
            ),
        ),
        Err(e) => fail(ours, e),
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the system call returned a new fd (close-on-exec) that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Take ownership of the pidfd the kernel wrote for a successful `CLONE_PIDFD` clone.
fn owned_pidfd(raw: libc::c_int) -> Option<OwnedFd> {
    // SAFETY: after a successful clone with CLONE_PIDFD the kernel stored a new fd there that
    // nobody else owns; -1 means it did not.
    (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
}

/// What the child needs, prepared before the clone. The child writes only `stashed`,
/// `dirents`, `channel` and the pid digits.
struct Child<'a> {
    plan: &'a Plan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    pid_digits: *mut u8,
    moves: &'a [Move],
    stashed: &'a mut [RawFd],
    dirents: &'a mut [u8],
    /// The status channel's fd; the child updates it when it moves the channel.
    channel: RawFd,
    parent_pid: libc::pid_t,
    /// The first fd above the targets: 3 + number of sockets.
    first_free: RawFd,
    hard_limit: RawFd,
    proc_self_fd: &'static CStr,
}

/// `CLONE_PIDFD`, except in the test of the fallback for kernels without it.
fn pidfd_flag(plan: &Plan) -> libc::c_int {
    #[cfg(test)]
    if plan.no_clone_pidfd {
        return 0;
    }
    let _ = plan;
    libc::CLONE_PIDFD
}

/// A plain fork (`clone(SIGCHLD | CLONE_PIDFD)`), then [`child_main`] in the child; returns
/// the child's pid and, if the kernel supports `CLONE_PIDFD`, its pidfd.
///
/// A raw clone instead of glibc's `fork`: no atfork handlers run and glibc's own state in the
/// child is not repaired, which is fine because the child only makes async-signal-safe calls
/// and then execs or exits.
fn fork(child: &mut Child<'_>) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::SIGCHLD | pidfd_flag(child.plan);
    for _ in 0..2 {
        // SAFETY: clone without CLONE_VM, CLONE_SETTLS or a stack is fork: the child gets a
        // copy of our memory and continues here with a return value of 0. The argument order
        // is (flags, stack, parent_tid, child_tid, tls) on x86_64 and (flags, stack,
        // parent_tid, tls, child_tid) on aarch64 and most others; both unused last arguments
        // are 0, so `&mut pidfd` is the parent_tid argument everywhere, where CLONE_PIDFD has
        // the kernel store the pidfd.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags as libc::c_ulong,
                0usize,
                &mut pidfd as *mut libc::c_int,
                0usize,
                0usize,
            )
        };
        if pid == 0 {
            // SAFETY: we are the child of a fork, and `child` was prepared for it.
            unsafe { child_main(child) }
        }
        if pid > 0 {
            return Ok((pid as libc::pid_t, owned_pidfd(pidfd)));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) || flags & libc::CLONE_PIDFD == 0 {
            return Err(e);
        }
        flags &= !libc::CLONE_PIDFD; // a kernel before 5.2
    }
    Err(io::ErrorKind::Unsupported.into())
}

/// The child's stack for [`vfork`]: far more than [`do_exec`] needs, even unoptimised.
const CHILD_STACK: usize = 256 * 1024;

/// Like `posix_spawn` does it: `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, so the child
/// shares our memory instead of copying our page tables, and we sleep until it has called
/// `execve` or `_exit`. Much cheaper than `fork` in a big multi-threaded process (a test
/// binary, a benchmark), where `fork` copies page tables and every thread then takes
/// copy-on-write faults. Not usable with the gate: the child would wait for us while we wait
/// for it.
///
/// The child runs on its own stack, with every signal blocked until it has reset the
/// handlers it inherited (they point into our memory) to the default; it writes only what
/// [`Child`] lists and (through the shared thread pointer) our `errno`.
fn vfork(child: &mut Child<'_>) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Child` that `vfork` passed to clone, alive and unused by the
        // parent, which is suspended until we exec or exit.
        let child = unsafe { &mut *arg.cast::<Child<'_>>() };
        // SAFETY: we are the vfork child and `child` was prepared for us.
        unsafe { child_main(child) }
    }
    // Capacity only, never initialised: zeroing 256 KiB (and faulting in every page of it)
    // would cost more than the rest of the spawn; the child touches only the top pages, and
    // nothing here ever reads the memory.
    let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK);
    // SAFETY: one past the end of the allocation (its capacity); the stack grows down from
    // there.
    let top = unsafe { stack.as_mut_ptr().add(CHILD_STACK) };
    let top = ((top as usize) & !15) as *mut libc::c_void;
    let all = full_sigset();
    let mut old = empty_sigset();
    // SAFETY: reads `all`, writes the previous mask into `old`; both are ours.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    let arg = std::ptr::from_mut(child).cast::<libc::c_void>();
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD | pidfd_flag(child.plan);
    let mut result = Err(io::ErrorKind::Unsupported.into());
    for _ in 0..2 {
        // SAFETY: `entry` never returns (it execs or _exits); `top` is the 16-byte aligned top
        // of a stack we own that outlives the child's use of it (CLONE_VFORK suspends us until
        // then); `arg` points to `child`, which we do not touch until the child is done with
        // it. glibc's clone is variadic: the first optional argument is parent_tid, where
        // CLONE_PIDFD has the kernel store the pidfd (tls and child_tid are not used).
        let pid = unsafe { libc::clone(entry, top, flags, arg, &mut pidfd as *mut libc::c_int) };
        if pid > 0 {
            result = Ok((pid, owned_pidfd(pidfd)));
            break;
        }
        let e = io::Error::last_os_error();
        let retry = e.raw_os_error() == Some(libc::EINVAL) && flags & libc::CLONE_PIDFD != 0;
        result = Err(e);
        if !retry {
            break;
        }
        flags &= !libc::CLONE_PIDFD; // a kernel before 5.2
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    result
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; all zeroes is a valid value, and sigemptyset makes it
    // the empty set whatever the representation.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset writes into the set we own.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

fn full_sigset() -> libc::sigset_t {
    let mut set = empty_sigset();
    // SAFETY: sigfillset writes into the set we own.
    unsafe { libc::sigfillset(&mut set) };
    set
}

/// The child's `errno` right after a failed call (reading it is async-signal-safe and
/// allocates nothing; nothing here ever writes it).
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `Err((step, errno))` when a libc call returned -1.
fn check(ret: libc::c_int, step: Step) -> Result<libc::c_int, Failure> {
    if ret == -1 {
        Err((step, errno()))
    } else {
        Ok(ret)
    }
}

/// The child's own pid from the kernel. glibc's `getpid` is not used: a `CLONE_VM` child
/// shares the parent's memory, so any pid cache in the C library (glibc had one until 2.25)
/// would give the parent's pid.
fn raw_getpid() -> libc::pid_t {
    // SAFETY: the getpid system call has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_getpid) as libc::pid_t }
}

/// The child after the clone: run [`do_exec`], and if it fails, report (step, errno) on the
/// status channel and `_exit(127)`.
///
/// # Safety
/// Call only in the child of [`fork`] or [`vfork`], with `child` prepared for it by
/// [`spawn`].
unsafe fn child_main(child: &mut Child<'_>) -> ! {
    // SAFETY: forwarded from our caller.
    let Err((step, errno)) = unsafe { do_exec(child) };
    match step {
        Step::ParentGone => exit(1),
        Step::GateClosed => exit(127),
        _ => {
            report(child.channel, step, errno);
            exit(127)
        }
    }
}

fn exit(code: libc::c_int) -> ! {
    // SAFETY: _exit ends the process without running atexit handlers or flushing stdio
    // buffers (in the vfork child those are our parent's); always allowed.
    unsafe { libc::_exit(code) }
}

/// Write one (step, errno) report on the status channel. Async-signal-safe; a parent that
/// already closed its end gets nothing (`MSG_NOSIGNAL`: no `SIGPIPE`, which is no longer
/// ignored here).
fn report(channel: RawFd, step: Step, errno: i32) {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: send reads 8 bytes from our buffer; a bad fd only fails.
    unsafe { libc::send(channel, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
}

/// Everything the child does between the clone and `execve`. Returns only on failure, with
/// the step and its errno; the caller reports them and exits.
///
/// # Safety
/// Call only in the child of [`fork`] or [`vfork`], with `child` prepared for it by
/// [`spawn`]: `argv`/`envp` NULL-terminated arrays of pointers to NUL-terminated strings in
/// the plan, `pid_digits` null or pointing at `PID_DIGITS` writable bytes, `stashed` as long as
/// the moves' slots. Every call below is async-signal-safe; nothing allocates or locks.
unsafe fn do_exec(child: &mut Child<'_>) -> Result<Infallible, Failure> {
    let plan = child.plan;
    let pid = raw_getpid();

    // 1. Signals: every disposition to the default, the mask empty (but SIGTTOU, if step 3
    // will need it blocked).
    // SAFETY: we are the child about to exec, with every signal blocked (vfork) or in our own
    // copy of the parent's memory (fork): resetting dispositions is ours to do.
    unsafe { default_signal_handlers() };
    let take_tty = plan.foreground_tty.filter(|_| plan.process_group);
    let mut mask = empty_sigset();
    if take_tty.is_some() {
        // SAFETY: sigaddset writes into the set we own.
        unsafe { libc::sigaddset(&mut mask, libc::SIGTTOU) };
    }
    // SAFETY: reads the set we own; affects only this (single-threaded) child.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) };

    // 2. A process group of our own.
    if plan.process_group {
        // SAFETY: setpgid(0, 0) changes only our own process group.
        check(unsafe { libc::setpgid(0, 0) }, Step::Setpgid)?;
    }
    // 3. The terminal's foreground, with SIGTTOU blocked: a background group calling
    // tcsetpgrp would otherwise be stopped by it.
    if let Some(tty) = take_tty {
        // SAFETY: tcsetpgrp (an ioctl) only reads its arguments; a bad fd fails.
        check(unsafe { libc::tcsetpgrp(tty, pid) }, Step::Tcsetpgrp)?;
        let empty = empty_sigset();
        // SAFETY: as above; SIGTTOU's disposition is already the default.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
    }

    // 4. Parent death signal.
    if let Some(sig) = plan.parent_death_signal {
        // SAFETY: prctl(PR_SET_PDEATHSIG, sig) only sets an attribute of this process.
        let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) };
        check(r, Step::Pdeathsig)?;
        // The parent may have died before prctl: then we were already reparented.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != child.parent_pid {
            return Err((Step::ParentGone, 0));
        }
    }

    // 5. Working directory.
    if let Some(cwd) = &plan.cwd {
        // SAFETY: `cwd` is a NUL-terminated string in the plan.
        check(unsafe { libc::chdir(cwd.as_ptr()) }, Step::Chdir)?;
    }

    // 6. Fds onto their targets; the status channel out of their way first.
    if child.channel < child.first_free {
        // SAFETY: F_DUPFD_CLOEXEC only creates a new fd (close-on-exec) at or above
        // `first_free`; the old number is overwritten by the moves below.
        let moved = unsafe { libc::fcntl(child.channel, libc::F_DUPFD_CLOEXEC, child.first_free) };
        child.channel = check(moved, Step::Dup)?;
    }
    for &m in child.moves {
        // SAFETY: forwarded: the moves were planned for this child and its scratch slots.
        unsafe { apply(m, child.stashed, child.first_free) }?;
    }

    // 7. Close everything else but the status channel.
    #[cfg(test)]
    let try_range = plan.close_test == CloseTest::Normal;
    #[cfg(not(test))]
    let try_range = true;
    // SAFETY: the child may close every fd it does not pass on; `dirents` is its buffer.
    unsafe {
        close_from(
            child.first_free,
            child.channel,
            try_range,
            child.proc_self_fd,
            child.dirents,
            child.hard_limit,
        )
    };

    // 8. LISTEN_PID.
    if !child.pid_digits.is_null() {
        // SAFETY: pid_digits points at PID_DIGITS writable bytes of the pid slot.
        unsafe { write_decimal(pid as u64, child.pid_digits) };
    }

    // 9. The gate.
    if plan.gate {
        // Fail before the gate if no candidate can be executed, so the parent reports the
        // usual errors before it prints anything.
        // SAFETY: the candidates are NUL-terminated strings in the plan.
        let found = unsafe { first_executable(&plan.candidates) }.map_err(|e| (Step::Exec, e))?;
        // The failures execve would only find after the gate: a script's missing
        // interpreter, a file in no format the kernel runs.
        // SAFETY: `found` is a NUL-terminated string of the plan.
        unsafe { check_format(&plan.candidates[found], plan.binfmt_misc) }?;
        report(child.channel, Step::AtGate, 0);
        let mut byte = 0u8;
        let mut n = -1;
        for _ in 0..1000 {
            // SAFETY: reads at most one byte into our local.
            n = unsafe { libc::read(child.channel, (&raw mut byte).cast(), 1) };
            if n >= 0 || errno() != libc::EINTR {
                break;
            }
        }
        if n != 1 {
            // The parent dropped the gate: the program never runs.
            return Err((Step::GateClosed, 0));
        }
    }

    // 10. execve of each candidate; report the most telling errno, as execvp does (EACCES
    // beats ENOENT).
    let mut best = libc::ENOENT;
    for path in &plan.candidates {
        // SAFETY: path, argv and envp are NUL-terminated (arrays of) strings that outlive the
        // call; execve returns only on failure.
        unsafe { libc::execve(path.as_ptr(), child.argv.as_ptr(), child.envp.as_ptr()) };
        match errno() {
            // The file is there: what is missing is its `#!` interpreter.
            // SAFETY: path is NUL-terminated; `exists` only calls access.
            libc::ENOENT if unsafe { exists(path) } => {
                return Err((Step::Interpreter, libc::ENOENT));
            }
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => best = libc::EACCES,
            other => return Err((Step::Exec, other)),
        }
    }
    Err((Step::Exec, best))
}

/// Carry out one planned fd move.
///
/// # Safety
/// Only in the child: it overwrites fd numbers (the targets) this process may use elsewhere.
unsafe fn apply(m: Move, stashed: &mut [RawFd], first_free: RawFd) -> Result<(), Failure> {
    let bad_slot = (Step::Dup, libc::EINVAL); // cannot happen: the slots were counted
    match m {
        Move::Stash { fd, slot } => {
            // SAFETY: F_DUPFD_CLOEXEC only creates a new close-on-exec fd above the targets.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free) };
            let copy = check(copy, Step::Dup)?;
            *stashed.get_mut(slot).ok_or(bad_slot)? = copy;
        }
        Move::Place { source, target } => {
            let fd = match source {
                Source::Fd(fd) => fd,
                Source::Stashed(slot) => *stashed.get(slot).ok_or(bad_slot)?,
            };
            if fd == target {
                // SAFETY: F_SETFD 0 only clears FD_CLOEXEC on an fd we pass on.
                check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, Step::Dup)?;
            } else {
                // SAFETY: dup2 replaces `target`, which the plan reserved for this source;
                // the new fd has FD_CLOEXEC clear.
                check(unsafe { libc::dup2(fd, target) }, Step::Dup)?;
            }
        }
        Move::Unstash { slot } => {
            let fd = *stashed.get(slot).ok_or(bad_slot)?;
            // SAFETY: closes our own copy, made by Stash and used for the last time.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Close every fd >= `from` except `keep` (which is >= `from`): `close_range` if `try_range`;
/// if that is refused (any error: `ENOSYS` on old kernels, `EPERM` under seccomp), every fd
/// listed in `proc_self_fd` (read into `buf`); if that cannot be opened or read, every number
/// up to `hard_limit`. Cannot fail. Async-signal-safe.
///
/// # Safety
/// Closes fds this process may use elsewhere: only for the child after the clone.
unsafe fn close_from(
    from: RawFd,
    keep: RawFd,
    try_range: bool,
    proc_self_fd: &CStr,
    buf: &mut [u8],
    hard_limit: RawFd,
) {
    let range = |lo: RawFd, hi: RawFd| -> bool {
        // SAFETY: close_range only closes fds; the caller allows closing these.
        lo > hi || unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi as u32, 0) } == 0
    };
    if try_range && range(from, keep - 1) && range(keep + 1, RawFd::MAX) {
        return;
    }
    // SAFETY: forwarded from our caller.
    if unsafe { close_listed(from, keep, proc_self_fd, buf) }.is_ok() {
        return;
    }
    for fd in from..hard_limit.max(keep + 1) {
        if fd != keep {
            // SAFETY: closing an fd number; EBADF for unused numbers is fine.
            unsafe { libc::close(fd) };
        }
    }
}

/// Close every fd >= `from` except `keep` that the directory `dir` (`/proc/self/fd`) lists,
/// reading it with `getdents64` into `buf`, as glibc's `closefrom` fallback does: after a
/// buffer in which something was closed, read again from the start (the listing changed).
///
/// # Safety
/// As [`close_from`].
unsafe fn close_listed(from: RawFd, keep: RawFd, dir: &CStr, buf: &mut [u8]) -> Result<(), ()> {
    // SAFETY: open of a NUL-terminated path; returns a new fd or -1.
    let dirfd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dirfd < 0 {
        return Err(());
    }
    let mut result = Err(());
    // Each pass closes at least one fd or reads further: bounded by fds plus buffers.
    for _ in 0..(1 << 22) {
        // SAFETY: getdents64 writes at most buf.len() bytes into our buffer.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dirfd, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            result = if n == 0 { Ok(()) } else { Err(()) };
            break;
        }
        let mut closed = false;
        for fd in dirents(&buf[..n as usize]) {
            if fd >= from && fd != keep && fd != dirfd {
                // SAFETY: an fd of ours above the targets, not the channel: ours to close.
                unsafe { libc::close(fd) };
                closed = true;
            }
        }
        // SAFETY: lseek on our directory fd.
        if closed && unsafe { libc::lseek(dirfd, 0, libc::SEEK_SET) } != 0 {
            break;
        }
    }
    // SAFETY: closes the directory fd we opened.
    unsafe { libc::close(dirfd) };
    result
}

/// The fd numbers in a buffer of `linux_dirent64` records (d_ino: 8 bytes, d_off: 8,
/// d_reclen: 2, d_type: 1, then the NUL-terminated name); `.`, `..` and anything that is not
/// a number are skipped. No allocation, no panics on a malformed buffer.
fn dirents(buf: &[u8]) -> impl Iterator<Item = RawFd> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        while let Some(rec) = buf.get(pos..) {
            let reclen = match rec.get(16..18) {
                Some(&[a, b]) => usize::from(u16::from_ne_bytes([a, b])),
                _ => return None,
            };
            if reclen < 19 {
                return None;
            }
            pos += reclen;
            let name = rec.get(19..reclen.min(rec.len())).unwrap_or(&[]);
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            if let Some(fd) = parse_fd(name) {
                return Some(fd);
            }
        }
        None
    })
}

fn parse_fd(name: &[u8]) -> Option<RawFd> {
    if name.is_empty() || name.len() > 10 {
        return None;
    }
    let mut v: RawFd = 0;
    for &b in name {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(RawFd::from(b - b'0'))?;
    }
    Some(v)
}

/// `Ok` if some candidate is an executable regular file, else the errno `execvp` would give
/// (`EACCES` if one exists but cannot be run, else `ENOENT`).
///
/// # Safety
/// Async-signal-safe; the candidates must be valid C strings (they are `CString`s).
unsafe fn first_executable(candidates: &[CString]) -> Result<usize, i32> {
    let mut errno = libc::ENOENT;
    for (i, path) in candidates.iter().enumerate() {
        // SAFETY: stat fills a struct of plain data we own; all zeroes is a valid start.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: stat reads a NUL-terminated path and writes `st`.
        if unsafe { libc::stat(path.as_ptr(), &mut st) } == 0 {
            // SAFETY: access reads a NUL-terminated path.
            let runnable = unsafe { libc::access(path.as_ptr(), libc::X_OK) } == 0;
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && runnable {
                return Ok(i);
            }
            errno = libc::EACCES;
        }
    }
    Err(errno)
}

/// Whether `path` exists (async-signal-safe).
///
/// # Safety
/// `path` must be NUL-terminated.
unsafe fn exists(path: &CString) -> bool {
    // SAFETY: access reads a NUL-terminated path.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

/// What `execve` would say of `path`'s format, found before it runs: a `#!` line whose
/// interpreter cannot be executed is `(Interpreter, errno)`; a file that is neither ELF nor
/// `#!` is `(Exec, ENOEXEC)`, unless `binfmt_misc` handlers may run it. Async-signal-safe:
/// two stack buffers, open/read/close/access.
///
/// # Safety
/// `path` must be NUL-terminated.
unsafe fn check_format(path: &CString, binfmt_misc: bool) -> Result<(), (Step, i32)> {
    let mut head = [0u8; 256];
    // SAFETY: open of a NUL-terminated path, read into our buffer, close of our fd.
    let n = unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Ok(()); // execute-only file: execve will tell
        }
        let n = libc::read(fd, head.as_mut_ptr().cast(), head.len());
        libc::close(fd);
        n
    };
    let head = &head[..n.max(0) as usize];
    if head.starts_with(b"\x7fELF") {
        return Ok(());
    }
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.trim_ascii_start();
        let end = line
            .iter()
            .position(|&b| b == b' ' || b == b'\t' || b == b'\n' || b == 0)
            .unwrap_or(line.len());
        let mut interpreter = [0u8; 257];
        interpreter[..end].copy_from_slice(&line[..end]);
        // SAFETY: `interpreter` is NUL-terminated (zeroed past `end`, end < 257).
        if unsafe { libc::access(interpreter.as_ptr().cast(), libc::X_OK) } != 0 {
            return Err((Step::Interpreter, errno()));
        }
        return Ok(());
    }
    if binfmt_misc {
        return Ok(());
    }
    Err((Step::Exec, libc::ENOEXEC))
}

/// Whether `binfmt_misc` handlers are registered (they may run files that are neither ELF
/// nor `#!`).
fn binfmt_misc_active() -> bool {
    std::fs::read_dir("/proc/sys/fs/binfmt_misc").is_ok_and(|d| {
        d.flatten()
            .any(|e| !matches!(e.file_name().to_str(), Some("register" | "status")))
    })
}

/// The interpreter a `#!` script at `path` names, for messages.
fn interpreter_of(path: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let n = std::io::Read::read(&mut std::fs::File::open(path).ok()?, &mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?.trim_ascii_start();
    let end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .unwrap_or(line.len());
    Some(String::from_utf8_lossy(&line[..end]).into_owned())
}

/// Reset every signal disposition to the default, handlers and ignored signals alike, as
/// systemd does for its services: a daemon starts with a clean signal state whatever its
/// launcher inherited (under `nohup`, SIGHUP would stay ignored, and a shell cannot even
/// `trap` a signal that was ignored when it started; a forwarded SIGHUP would be lost).
/// In the vfork child this also keeps our handlers, which point into our memory, from ever
/// running there.
///
/// # Safety
/// Call only in a child about to exec, with signals blocked or no handler of ours able to
/// misbehave in a copy of our memory (fork).
unsafe fn default_signal_handlers() {
    for sig in 1..=libc::SIGRTMAX() {
        // SAFETY: sigaction is plain data; all zeroes is a valid value (SIG_DFL, no flags).
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the disposition into our local; invalid numbers (SIGKILL, SIGSTOP,
        // glibc's internal ones) fail harmlessly.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut current) } != 0 {
            continue;
        }
        if current.sa_sigaction != libc::SIG_DFL {
            // SAFETY: as above: SIG_DFL, empty mask, no flags.
            let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
            default.sa_sigaction = libc::SIG_DFL;
            // SAFETY: sets the disposition of `sig` in this child only (no CLONE_SIGHAND).
            unsafe { libc::sigaction(sig, &default, std::ptr::null_mut()) };
        }
    }
}

/// Read one (step, errno) report from the child; `None` at end of file (execve succeeded).
fn read_report(channel: &UnixStream, program: &str) -> Result<Option<(Option<Step>, i32)>, Error> {
    let mut report = [0u8; 8];
    let n = read_full(channel, &mut report).map_err(|source| Error::Spawn {
        program: program.to_owned(),
        step: "reading the exec status",
        source,
    })?;
    match n {
        0 => Ok(None),
        8 => {
            let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
            let errno = i32::from_ne_bytes(report[4..].try_into().expect("4 bytes"));
            Ok(Some((Step::from_u32(step), errno)))
        }
        // An 8-byte write to a socket arrives whole; be safe anyway.
        _ => Err(Error::Spawn {
            program: program.to_owned(),
            step: "reading the exec status",
            source: io::ErrorKind::UnexpectedEof.into(),
        }),
    }
}

pub(crate) fn child_error(
    program: &str,
    searched_path: bool,
    step: Option<Step>,
    errno: i32,
) -> Error {
    let interpreter = (step == Some(Step::Interpreter))
        .then(|| which(program).and_then(|p| interpreter_of(&p)))
        .flatten();
    let source = io::Error::from_raw_os_error(errno);
    match step {
        Some(Step::Interpreter) => Error::Interpreter {
            program: program.to_owned(),
            interpreter: interpreter.unwrap_or_else(|| "named by its #! line".into()),
            source,
        },
        Some(Step::Exec) if errno == libc::ENOENT || errno == libc::ENOTDIR => Error::NotFound {
            program: program.to_owned(),
            where_: if searched_path {
                " (searched PATH; give a path or fix PATH)".into()
            } else {
                String::new()
            },
        },
        Some(Step::Exec)
            if matches!(
                errno,
                libc::EACCES | libc::ENOEXEC | libc::EPERM | libc::EISDIR
            ) =>
        {
            Error::NotExecutable {
                program: program.to_owned(),
                source,
            }
        }
        step => Error::Spawn {
            program: program.to_owned(),
            step: step.map_or("the child", Step::describe),
            source,
        },
    }
}

/// Where `program` is, as the child found it (for messages only).
fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH");
    candidates(OsStr::new(program), path.as_deref())
        .into_iter()
        .map(|c| std::path::PathBuf::from(OsStr::from_bytes(&c)))
        .find(|p| p.is_file())
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    for _ in 0..1000 {
        // SAFETY: waitpid on our own child, writing into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// The child's status channel is a close-on-exec `UnixStream` pair: the child reports a
/// failure (and, when gated, its arrival at the gate) as 8 bytes, and when gated waits for the
/// parent's release byte; end of file for the parent means `execve` succeeded.
fn read_full(mut channel: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match channel.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Write `v` in decimal followed by NUL at `out` (at most `PID_DIGITS` bytes).
/// Async-signal-safe: no allocation, no formatting machinery.
///
/// # Safety
/// `out` must point at `PID_DIGITS` writable bytes.
unsafe fn write_decimal(mut v: u64, out: *mut u8) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = 0;
    while n < PID_DIGITS - 1 {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        // SAFETY: i < n < PID_DIGITS, and the caller guarantees PID_DIGITS bytes.
        unsafe { *out.add(i) = digits[n - 1 - i] };
    }
    // SAFETY: n < PID_DIGITS, as above.
    unsafe { *out.add(n) = 0 };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    #[test]
    fn candidates_follow_execvp() {
        let c = |p: &str, path: Option<&str>| -> Vec<String> {
            candidates(OsStr::new(p), path.map(OsStr::new))
                .into_iter()
                .map(|v| String::from_utf8(v).unwrap())
                .collect()
        };
        assert_eq!(c("./x", Some("/bin")), ["./x"]);
        assert_eq!(c("/usr/bin/env", None), ["/usr/bin/env"]);
        assert_eq!(c("ls", Some("/a::/b")), ["/a/ls", "./ls", "/b/ls"]);
        assert_eq!(
            c("ls", None),
            ["/usr/local/bin/ls", "/usr/bin/ls", "/bin/ls"]
        );
    }

    #[test]
    fn decimal_digits() {
        for v in [0u64, 7, 10, 4_194_304, i32::MAX as u64] {
            let mut buf = [0xffu8; PID_DIGITS];
            // SAFETY: buf has PID_DIGITS bytes.
            unsafe { write_decimal(v, buf.as_mut_ptr()) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), v.to_string());
        }
    }

    #[test]
    fn nul_bytes_are_refused_before_fork() {
        let err = Plan::new(OsStr::new("a\0b"), &[], &[], true, None).unwrap_err();
        assert!(matches!(err, Error::Nul { .. }));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn an_env_name_with_an_equals_sign_is_named_as_such() {
        let env = [(OsString::from("A=B"), OsString::from("c"))];
        let err = Plan::new(OsStr::new("true"), &[], &env, true, None).unwrap_err();
        assert!(matches!(err, Error::EnvName { .. }), "{err}");
        assert!(err.to_string().contains("\"A=B\""), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    // --- The fd move plan (pure) ---

    fn place(source: Source, target: RawFd) -> Move {
        Move::Place { source, target }
    }

    #[test]
    fn sources_above_their_targets_go_straight_there() {
        // The usual case: sockets at 7, 8, 9 of ours go to 3, 4, 5 without any copy.
        let (moves, slots) = plan_moves(&[(3, 7), (4, 8), (5, 9)]);
        assert_eq!(slots, 0);
        assert_eq!(
            moves,
            [
                place(Source::Fd(7), 3),
                place(Source::Fd(8), 4),
                place(Source::Fd(9), 5)
            ]
        );
    }

    #[test]
    fn a_source_on_its_own_target_stays() {
        let (moves, slots) = plan_moves(&[(3, 3), (4, 9)]);
        assert_eq!(slots, 0);
        assert_eq!(moves, [place(Source::Fd(3), 3), place(Source::Fd(9), 4)]);
    }

    #[test]
    fn a_source_on_an_earlier_target_is_copied_once() {
        // Swap: 4 must go to 3 and 3 to 4. Writing 3 first destroys the source of 4.
        let (moves, slots) = plan_moves(&[(3, 4), (4, 3)]);
        assert_eq!(slots, 1);
        assert_eq!(
            moves,
            [
                Move::Stash { fd: 3, slot: 0 },
                place(Source::Fd(4), 3),
                place(Source::Stashed(0), 4),
                Move::Unstash { slot: 0 },
            ]
        );
    }

    #[test]
    fn one_fd_for_all_three_stdio_targets_needs_no_copy() {
        // /dev/null at 0 for stdin, stdout and stderr; and one at 5 for 1 and 2.
        let (moves, slots) = plan_moves(&[(0, 0), (1, 0), (2, 0)]);
        assert_eq!(slots, 0);
        assert_eq!(moves.len(), 3);
        let (moves, slots) = plan_moves(&[(1, 5), (2, 5), (3, 1)]);
        assert_eq!(slots, 1, "{moves:?}");
        assert_eq!(moves[0], Move::Stash { fd: 1, slot: 0 });
    }

    #[test]
    fn the_move_plan_is_a_correct_parallel_assignment() {
        // Simulate the moves on a table fd -> "file" for every assignment of 4 targets from
        // sources among fds 0..8 (with repeats); each target must end up with its file.
        let targets = [1, 3, 4, 5];
        for code in 0..8u32.pow(4) {
            let sources: Vec<RawFd> = (0..4)
                .map(|k| ((code / 8u32.pow(k)) % 8) as RawFd)
                .collect();
            let wanted: Vec<(RawFd, RawFd)> =
                targets.iter().copied().zip(sources.clone()).collect();
            let (moves, slots) = plan_moves(&wanted);
            // fds 0..8 are open (fd i holds file i), 8..16 free; targets end at 5.
            let mut table: Vec<Option<RawFd>> = (0..16).map(|i| (i < 8).then_some(i)).collect();
            let mut stash = vec![None; slots];
            for m in &moves {
                match *m {
                    Move::Stash { fd, slot } => {
                        let free = (6..16).find(|&f| table[f].is_none()).expect("a free fd");
                        table[free] = table[fd as usize];
                        stash[slot] = Some(free);
                    }
                    Move::Place { source, target } => {
                        let from = match source {
                            Source::Fd(fd) => fd as usize,
                            Source::Stashed(s) => stash[s].unwrap(),
                        };
                        table[target as usize] = table[from];
                    }
                    Move::Unstash { slot } => table[stash[slot].unwrap()] = None,
                }
            }
            for (t, s) in &wanted {
                assert_eq!(table[*t as usize], Some(*s), "{wanted:?}: {moves:?}");
            }
            let copies = moves
                .iter()
                .filter(|m| matches!(m, Move::Stash { .. }))
                .count();
            assert!(
                copies <= 4,
                "at most one copy per conflicting fd: {moves:?}"
            );
        }
    }

    #[test]
    fn dirent_records_are_parsed_without_trusting_them() {
        let record = |name: &str| {
            let mut r = vec![0u8; 19];
            r.extend_from_slice(name.as_bytes());
            r.push(0);
            r.resize(r.len().div_ceil(8) * 8, 0);
            let len = r.len() as u16;
            r[16..18].copy_from_slice(&len.to_ne_bytes());
            r
        };
        let mut buf = Vec::new();
        for name in [".", "..", "0", "17", "x", "2147483647", "2147483648"] {
            buf.extend(record(name));
        }
        assert_eq!(dirents(&buf).collect::<Vec<_>>(), [0, 17, i32::MAX]);
        // Truncated or zero-length records end the listing instead of looping or panicking.
        assert_eq!(dirents(&buf[..30]).collect::<Vec<_>>(), Vec::<RawFd>::new());
        assert_eq!(dirents(&[0u8; 40]).count(), 0);
    }

    // --- Spawning for real ---

    /// Set in a copy of this test binary that runs one test alone (see [`in_fresh_process`]).
    const FRESH: &str = "SD_LAUNCH_SPAWN_TEST_FRESH";

    fn is_fresh_process() -> bool {
        std::env::var_os(FRESH).is_some()
    }

    /// Run test `name` of this module alone in a new copy of this test binary, so that what
    /// it changes (the fd limit, the fds it holds, its session) is not shared with the other
    /// tests, and require that it ran and passed.
    fn in_fresh_process(name: &str) {
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let full = format!("{module}::{name}");
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &full, "--nocapture", "--test-threads=1"])
            .env(FRESH, "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{full} in a fresh process: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills (SIGKILL) and reaps our child when dropped, also when an assertion fails.
    struct Reaper(libc::pid_t);

    impl Drop for Reaper {
        fn drop(&mut self) {
            // SAFETY: kill of our own child, not yet reaped (only we reap it, here).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
            reap(self.0);
        }
    }

    /// Field `n` (1-based, as in proc(5)) of /proc/<pid>/stat, for n >= 3.
    fn stat_field(pid: libc::pid_t, n: usize) -> String {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_name = stat.rsplit_once(')').unwrap().1;
        after_name.split_whitespace().nth(n - 3).unwrap().to_owned()
    }

    /// A plan for `sh -c 'kill -STOP $$'`: the shell stops itself right after exec without
    /// opening anything, so its fd table is what it was given.
    fn stopping_shell() -> Plan {
        Plan::new(
            OsStr::new("/bin/sh"),
            &["-c".into(), "kill -STOP $$".into()],
            &[],
            false,
            None,
        )
        .unwrap()
    }

    /// Wait (at most 5 s) until `pid` is stopped, then list its fds.
    fn fds_once_stopped(pid: libc::pid_t) -> Vec<RawFd> {
        for _ in 0..500 {
            if stat_field(pid, 3) == "T" {
                let mut fds: Vec<RawFd> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
                    .collect();
                fds.sort_unstable();
                return fds;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("child {pid} did not stop within 5 s");
    }

    fn link(path: String) -> std::path::PathBuf {
        std::fs::read_link(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn lower_soft_fd_limit(to: u64) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write a struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim.rlim_cur = to;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }

    #[test]
    fn the_pidfd_is_taken_at_spawn_and_names_the_child() {
        // Both clones; and without CLONE_PIDFD (the pidfd_open fallback for kernels before
        // 5.2).
        for (gate, no_clone_pidfd) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut plan =
                Plan::new(OsStr::new("/bin/sleep"), &["30".into()], &[], false, None).unwrap();
            plan.gate = gate;
            plan.no_clone_pidfd = no_clone_pidfd;
            let (pid, pidfd, held) = spawn(&mut plan).unwrap();
            let _reaper = Reaper(pid);
            let fdinfo =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
                    .unwrap();
            assert!(
                fdinfo.lines().any(|l| l == format!("Pid:\t{pid}")),
                "gate {gate}, no CLONE_PIDFD {no_clone_pidfd}: pidfd {} is not child {pid}:\n{fdinfo}",
                pidfd.as_raw_fd()
            );
            assert_eq!(held.is_some(), gate);
        }
    }

    #[test]
    fn listen_pid_is_the_childs_own_pid() {
        let mut plan = Plan::new(
            OsStr::new("/bin/sh"),
            &["-c".into(), "echo $$ $LISTEN_PID".into()],
            &[],
            true,
            None,
        )
        .unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        plan.stdio[1] = Some(theirs.as_raw_fd());
        let (pid, _pidfd, _) = spawn(&mut plan).unwrap();
        drop(theirs);
        let mut out = String::new();
        (&ours).read_to_string(&mut out).unwrap();
        reap(pid);
        assert_eq!(out, format!("{pid} {pid}\n"), "$$ and LISTEN_PID");
    }

    #[test]
    fn process_group_makes_the_daemon_lead_its_own() {
        let mut plan = stopping_shell();
        plan.process_group = true;
        let (pid, _pidfd, _) = spawn(&mut plan).unwrap();
        let _reaper = Reaper(pid);
        assert_eq!(stat_field(pid, 5), pid.to_string(), "pgid of the daemon");
    }

    #[test]
    fn without_process_group_the_daemon_stays_in_ours() {
        let (pid, _pidfd, _) = spawn(&mut stopping_shell()).unwrap();
        let _reaper = Reaper(pid);
        // SAFETY: getpgrp has no preconditions.
        let ours = unsafe { libc::getpgrp() };
        assert_eq!(stat_field(pid, 5), ours.to_string(), "pgid of the daemon");
    }

    #[test]
    fn the_daemon_takes_the_terminal_foreground_and_we_take_it_back() {
        if !is_fresh_process() {
            return in_fresh_process(
                "the_daemon_takes_the_terminal_foreground_and_we_take_it_back",
            );
        }
        // A session of our own with a pseudo-terminal as its controlling terminal.
        // SAFETY: setsid/posix_openpt/grantpt/unlockpt/ptsname_r/open/ioctl work on values
        // and buffers we own; this process is a fresh copy that nothing else uses.
        unsafe {
            assert!(libc::setsid() > 0, "setsid: {}", io::Error::last_os_error());
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0);
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut name = [0 as libc::c_char; 64];
            assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
            let tty = libc::open(name.as_ptr(), libc::O_RDWR);
            assert!(tty >= 0);
            assert_eq!(libc::ioctl(tty, libc::TIOCSCTTY, 0), 0);
            assert_eq!(libc::tcgetpgrp(tty), libc::getpgrp());

            let mut plan = stopping_shell();
            plan.process_group = true;
            plan.foreground_tty = Some(tty);
            let (pid, _pidfd, _) = spawn(&mut plan).unwrap();
            let reaper = Reaper(pid);
            assert_eq!(
                libc::tcgetpgrp(tty),
                pid,
                "the daemon's group is in the foreground"
            );
            fds_once_stopped(pid);
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert!(
                status.lines().any(|l| l == "SigBlk:\t0000000000000000"),
                "SIGTTOU must not stay blocked in the daemon:\n{status}"
            );
            drop(reaper);
            reclaim_foreground(tty).unwrap();
            assert_eq!(libc::tcgetpgrp(tty), libc::getpgrp(), "ours again");
        }
    }

    /// The daemon gets fds 0-2 and its two sockets, and none of ours: not even one above a
    /// soft fd limit that was lowered after it was opened (closing up to the soft limit would
    /// miss it), whichever way `how` closes them.
    fn only_passed_fds_reach_the_daemon(how: CloseTest) {
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: F_DUPFD creates a new fd (without close-on-exec: it would leak) at >= 700.
        let high = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD, 700) };
        assert!(high >= 700, "{}", io::Error::last_os_error());
        lower_soft_fd_limit(64);
        let sockets: Vec<UnixDatagram> = (0..2).map(|_| UnixDatagram::unbound().unwrap()).collect();
        let mut plan = stopping_shell();
        plan.sockets = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        plan.close_test = how;
        let (pid, _pidfd, _) = spawn(&mut plan).unwrap();
        let _reaper = Reaper(pid);
        assert_eq!(
            fds_once_stopped(pid),
            [0, 1, 2, 3, 4],
            "fd {high} is above the soft limit of 64"
        );
    }

    #[test]
    fn close_range_closes_fds_above_a_lowered_limit() {
        if !is_fresh_process() {
            return in_fresh_process("close_range_closes_fds_above_a_lowered_limit");
        }
        only_passed_fds_reach_the_daemon(CloseTest::Normal);
    }

    #[test]
    fn refused_close_range_falls_back_to_listing_proc_self_fd() {
        if !is_fresh_process() {
            return in_fresh_process("refused_close_range_falls_back_to_listing_proc_self_fd");
        }
        only_passed_fds_reach_the_daemon(CloseTest::RangeRefused);
    }

    #[test]
    fn without_close_range_or_proc_every_fd_up_to_the_hard_limit_is_closed() {
        if !is_fresh_process() {
            return in_fresh_process(
                "without_close_range_or_proc_every_fd_up_to_the_hard_limit_is_closed",
            );
        }
        only_passed_fds_reach_the_daemon(CloseTest::RangeRefusedNoProc);
    }

    #[test]
    fn five_hundred_sockets_fit_under_a_limit_of_512() {
        if !is_fresh_process() {
            return in_fresh_process("five_hundred_sockets_fit_under_a_limit_of_512");
        }
        lower_soft_fd_limit(512);
        // Two spacers, so that no socket already sits on its target.
        let _spacers: Vec<std::fs::File> = (0..2)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let sockets: Vec<UnixDatagram> =
            (0..500).map(|_| UnixDatagram::unbound().unwrap()).collect();
        let mut plan = stopping_shell();
        plan.sockets = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let (pid, _pidfd, _) = spawn(&mut plan).unwrap();
        let _reaper = Reaper(pid);
        assert_eq!(fds_once_stopped(pid), (0..503).collect::<Vec<_>>());
        for (i, s) in sockets.iter().enumerate() {
            assert_eq!(
                link(format!("/proc/{pid}/fd/{}", 3 + i)),
                link(format!("/proc/self/fd/{}", s.as_raw_fd())),
                "socket {i} on fd {}",
                3 + i
            );
        }
    }

    #[test]
    fn crossed_low_fds_land_on_their_targets() {
        if !is_fresh_process() {
            return in_fresh_process("crossed_low_fds_land_on_their_targets");
        }
        // In a fresh process the first sockets get the lowest free fds, i.e. the targets
        // themselves: passed in reverse, most sources sit on another's target.
        let sockets: Vec<UnixDatagram> = (0..6).map(|_| UnixDatagram::unbound().unwrap()).collect();
        let mut plan = stopping_shell();
        plan.sockets = sockets.iter().rev().map(AsRawFd::as_raw_fd).collect();
        let (pid, _pidfd, _) = spawn(&mut plan).unwrap();
        let _reaper = Reaper(pid);
        assert_eq!(fds_once_stopped(pid), (0..9).collect::<Vec<_>>());
        for (i, s) in sockets.iter().rev().enumerate() {
            assert_eq!(
                link(format!("/proc/{pid}/fd/{}", 3 + i)),
                link(format!("/proc/self/fd/{}", s.as_raw_fd())),
                "socket {i} (our fd {}) on fd {}",
                s.as_raw_fd(),
                3 + i
            );
        }
    }
}
