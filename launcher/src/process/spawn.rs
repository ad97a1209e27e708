//! Starting the daemon: fork, put the sockets on fds 3.., set `LISTEN_PID` to the child's own
//! pid, execve. The only module with much `unsafe`.
//!
//! `std::process::Command` cannot do this: it builds the environment before `fork`, so the
//! child's pid cannot be in it. Here everything is allocated before `fork` ([`Plan`]), including
//! a fixed-width slot for the pid digits, and the child runs only async-signal-safe code (the
//! launcher may be a multi-threaded test process, where anything that takes a lock, such as
//! `malloc`, can deadlock after `fork`).
//!
//! The child is started with `clone(CLONE_VM | CLONE_VFORK)` on Linux, as `posix_spawn` does
//! (it shares our memory and we sleep until it has exec'd: no page-table copy, no
//! copy-on-write faults in a big multi-threaded test process), and with `fork` when held at
//! the gate or on other systems. The code below is the same for both.
//!
//! In the child, in order:
//! 1. every signal disposition is reset to the default, ignored ones included, as systemd does
//!    (Rust ignores `SIGPIPE`, `nohup` ignores `SIGHUP`; in the vfork child our handlers must
//!    not run at all: signals stay blocked until then), and the signal mask is emptied (tokio
//!    and supervisors block signals);
//! 2. optionally, `PR_SET_PDEATHSIG` (Linux), re-checking that the parent is still alive;
//! 3. `chdir`;
//! 4. every source fd (stdio files, sockets, the status channel) is first duplicated above the
//!    highest target, then `dup2`ed onto its target (0..2, then 3..3+n-1): no source can sit
//!    on another's target, and a `dup2` onto a different fd always clears `FD_CLOEXEC`;
//! 5. every other fd from 3+n up is closed (`close_range` where the kernel has it, else a loop
//!    up to the fd limit), except the status channel, which is close-on-exec;
//! 6. the pid digits are written into the `LISTEN_PID=` slot;
//! 7. when held ([`Plan::gate`]): check that some candidate is an executable file, tell the
//!    parent, and wait until it releases the gate (so `sd-launch --foreground` can print the
//!    port before the daemon writes anything to the same stdout);
//! 8. `execve` of each `PATH` candidate, like `execvp`.
//!
//! A failure in the child is written as (step, errno) to the close-on-exec status channel (a socket pair); the
//! parent reads it (end of file means `execve` succeeded), reaps the child, and returns an
//! [`Error`] naming the program and the errno.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::Error;

const PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the digits of any pid_t and the terminating NUL.
const PID_DIGITS: usize = 20;

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
    Close = 5,
    ProcessGroup = 6,
}

impl Step {
    fn from_u32(v: u32) -> Option<Step> {
        [
            Step::AtGate,
            Step::Dup,
            Step::Chdir,
            Step::Exec,
            Step::Pdeathsig,
            Step::Close,
            Step::ProcessGroup,
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
            Step::Close => "closing inherited fds",
            Step::ProcessGroup => "setpgid (a process group of its own)",
        }
    }
}

/// Everything the child needs, allocated before `fork`.
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
    /// Make the child the leader of a new process group (`setpgid(0, 0)`).
    pub process_group: bool,
    /// Fallback upper bound for closing fds when `close_range` is missing.
    max_fd: RawFd,
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
            max_fd: max_fd(),
        })
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

fn max_fd() -> RawFd {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok && lim.rlim_cur != libc::RLIM_INFINITY {
        RawFd::try_from(lim.rlim_cur).unwrap_or(RawFd::MAX)
    } else {
        65536
    }
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

/// A started child: its pid, its pidfd and, when held, the gate that lets it exec.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub gate: Option<Gate>,
}

/// Fork and exec according to `plan`. Returns the child once `execve` succeeded (or,
/// with [`Plan::gate`], once the child waits at the gate); on any failure the child has been
/// reaped and nothing is left running.
pub(crate) fn spawn(plan: &mut Plan) -> Result<Spawned, Error> {
    let (pid, gate) = spawn_child(plan)?;
    match pidfd_open(pid) {
        Ok(pidfd) => Ok(Spawned { pid, pidfd, gate }),
        Err(source) => {
            drop(gate);
            // SAFETY: kill on our own unreaped child: its pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
            Err(Error::Spawn {
                program: plan.program.clone(),
                step: "pidfd_open (Linux 5.3 or later is needed)",
                source,
            })
        }
    }
}

/// A pidfd for our unreaped child.
fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nobody else owns (pidfds are close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn spawn_child(plan: &mut Plan) -> Result<(libc::pid_t, Option<Gate>), Error> {
    let program = plan.program.clone();
    let os_err = |step: &'static str, source: io::Error| Error::Spawn {
        program: program.clone(),
        step,
        source,
    };
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.env.iter().map(|e| e.as_ptr().cast()).collect();
    envp.push(std::ptr::null());
    let pid_digits: *mut u8 = match plan.pid_slot {
        // SAFETY: the slot has PID_PREFIX.len() + PID_DIGITS bytes; the offset is in bounds.
        Some(i) => unsafe { plan.env[i].as_mut_ptr().add(PID_PREFIX.len()) },
        None => std::ptr::null_mut(),
    };
    let (ours, theirs) = UnixStream::pair().map_err(|e| os_err("socketpair", e))?;
    // SAFETY: getpid has no preconditions.
    let parent_pid = unsafe { libc::getpid() };
    // Scratch space for the child's fd moves: allocated here, written there.
    let mut high: Vec<RawFd> = vec![-1; plan.sockets.len() + 3];

    let args = ChildArgs {
        plan,
        argv: &argv,
        envp: &envp,
        pid_digits,
        high: &mut high,
        err_fd: theirs.as_raw_fd(),
        parent_pid,
    };
    #[cfg(target_os = "linux")]
    let pid = if plan.gate { fork(args) } else { vfork(args) };
    #[cfg(not(target_os = "linux"))]
    let pid = fork(args);
    let pid = pid.map_err(|e| os_err("fork", e))?;
    drop(theirs);
    let searched_path = plan.candidates.len() > 1 || !plan.program.contains('/');
    let report = read_report(&ours, &plan.program);
    let fail = |ours: UnixStream, error: Error| {
        drop(ours); // a child still at the gate sees the close and exits
        reap(pid);
        Err(error)
    };
    match report {
        Ok(None) if !plan.gate => Ok((pid, None)),
        Ok(Some((Some(Step::AtGate), _))) if plan.gate => Ok((
            pid,
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

/// What the child needs, prepared before `fork`/`clone`.
struct ChildArgs<'a> {
    plan: &'a Plan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    pid_digits: *mut u8,
    high: &'a mut [RawFd],
    err_fd: RawFd,
    parent_pid: libc::pid_t,
}

/// `fork`, then [`child`] in the child; returns the child's pid.
fn fork(mut args: ChildArgs<'_>) -> io::Result<libc::pid_t> {
    // SAFETY: fork has no memory-safety preconditions; in the child we only call
    // async-signal-safe functions on memory prepared before (a copy of the parent's) and
    // never return.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the child of fork, and `args` was prepared for it.
        unsafe { run_child(&mut args) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// The child's stack for [`vfork`]: far more than [`child`] needs, even unoptimised.
#[cfg(target_os = "linux")]
const CHILD_STACK: usize = 256 * 1024;

/// Like `posix_spawn` does it: `clone(CLONE_VM | CLONE_VFORK)`, so the child shares our
/// memory instead of copying our page tables, and we sleep until it has called `execve` or
/// `_exit`. Much cheaper than `fork` in a big multi-threaded process (a test binary, a
/// benchmark), where `fork` copies page tables and every thread then takes copy-on-write
/// faults. Not usable with the gate: the child would wait for us while we wait for it.
///
/// The child runs on its own stack, with every signal blocked until it has reset the
/// handlers it inherited (they point into our memory) to the default; it writes only the
/// pid slot, the scratch array and (through the shared thread pointer) our `errno`.
#[cfg(target_os = "linux")]
fn vfork(mut args: ChildArgs<'_>) -> io::Result<libc::pid_t> {
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `ChildArgs` that `vfork` passed to clone, alive and unused by
        // the parent, which is suspended until we exec or exit.
        let args = unsafe { &mut *arg.cast::<ChildArgs<'_>>() };
        // SAFETY: we are the vfork child and `args` was prepared for us.
        unsafe { run_child(args) }
    }
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: one past the end of the allocation; the stack grows down from there.
    let top = unsafe { stack.as_mut_ptr().add(CHILD_STACK) };
    let top = ((top as usize) & !15) as *mut libc::c_void;
    // SAFETY: sigset_t is plain data, initialised by sigfillset before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset writes into our set; pthread_sigmask reads it and writes `old`.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let arg = std::ptr::addr_of_mut!(args).cast::<libc::c_void>();
    // SAFETY: `entry` never returns (it execs or _exits); `top` is the 16-byte aligned top of
    // a stack we own that outlives the child's use of it (CLONE_VFORK suspends us until
    // then); `arg` points to `args`, which we do not touch until the child is done with it.
    let pid = unsafe {
        libc::clone(
            entry,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        )
    };
    let result = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    result
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
    #[cfg(target_os = "linux")]
    let last = libc::SIGRTMAX();
    #[cfg(not(target_os = "linux"))]
    let last = 32;
    for sig in 1..=last {
        // SAFETY: sigaction with a signal number reads into / writes from locals; invalid
        // numbers (SIGKILL, SIGSTOP, gaps) fail harmlessly.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            if current.sa_sigaction != libc::SIG_DFL {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
    }
}

/// # Safety
/// As [`child`].
unsafe fn run_child(args: &mut ChildArgs<'_>) -> ! {
    // SAFETY: forwarded from our caller.
    unsafe {
        child(
            args.plan,
            args.argv,
            args.envp,
            args.pid_digits,
            args.high,
            args.err_fd,
            args.parent_pid,
        )
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
    let source = io::Error::from_raw_os_error(errno);
    match step {
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

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    loop {
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

/// The child side. Async-signal-safe calls only; never returns.
///
/// # Safety
/// Must be called in the child of `fork`, with `argv`/`envp` NULL-terminated arrays of
/// pointers into `plan`, `pid_digits` null or pointing at `PID_DIGITS` writable bytes, and
/// `high` at least `plan.sockets.len() + 3` long.
unsafe fn child(
    plan: &Plan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pid_digits: *mut u8,
    high: &mut [RawFd],
    err_fd: RawFd,
    parent_pid: libc::pid_t,
) -> ! {
    // SAFETY: only async-signal-safe libc calls (sigaction, sigemptyset, pthread_sigmask,
    // prctl, getppid, chdir, fcntl, dup2, close, syscall(close_range), getpid, execve, write,
    // _exit) on memory prepared before fork; no allocation, no locks.
    unsafe {
        let report = |step: Step, errno: i32, err_fd: RawFd| {
            let mut report = [0u8; 8];
            report[..4].copy_from_slice(&(step as u32).to_ne_bytes());
            report[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(err_fd, report.as_ptr().cast(), report.len());
        };
        let fail = |step: Step, err_fd: RawFd| -> ! {
            report(
                step,
                io::Error::last_os_error().raw_os_error().unwrap_or(0),
                err_fd,
            );
            libc::_exit(127)
        };

        default_signal_handlers();
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());

        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(sig) = plan.parent_death_signal {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) != 0 {
                fail(Step::Pdeathsig, err_fd);
            }
            // The parent may have died before prctl: then we were already reparented.
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
        }
        let _ = parent_pid;

        if plan.process_group && libc::setpgid(0, 0) != 0 {
            fail(Step::ProcessGroup, err_fd);
        }

        if let Some(cwd) = &plan.cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            fail(Step::Chdir, err_fd);
        }

        let n = plan.sockets.len();
        let first_free = 3 + n as RawFd;
        // Pass 1: everything we still need goes above the targets.
        let err_fd = match libc::fcntl(err_fd, libc::F_DUPFD_CLOEXEC, first_free) {
            -1 => fail(Step::Dup, err_fd),
            fd => fd,
        };
        for (i, src) in plan.stdio.iter().enumerate() {
            if let Some(src) = src {
                high[i] = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, first_free);
                if high[i] < 0 {
                    fail(Step::Dup, err_fd);
                }
            }
        }
        for (i, src) in plan.sockets.iter().enumerate() {
            high[3 + i] = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, first_free);
            if high[3 + i] < 0 {
                fail(Step::Dup, err_fd);
            }
        }
        // Pass 2: onto the targets. Source and target always differ, so dup2 leaves the
        // target without FD_CLOEXEC.
        for (target, &src) in high.iter().enumerate() {
            if plan.stdio.get(target).is_some_and(Option::is_none) {
                continue; // inherited stdio stays as it is
            }
            if libc::dup2(src, target as RawFd) < 0 {
                fail(Step::Dup, err_fd);
            }
        }
        // Close everything else except the status channel (close-on-exec).
        close_from(first_free, err_fd, plan.max_fd).unwrap_or_else(|()| fail(Step::Close, err_fd));

        if !pid_digits.is_null() {
            write_decimal(libc::getpid() as u64, pid_digits);
        }

        if plan.gate {
            // Fail before the gate if no candidate can be executed, so the parent reports
            // the usual errors before it prints anything.
            let mut errno = libc::ENOENT;
            let mut found = false;
            for path in &plan.candidates {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::stat(path.as_ptr(), &mut st) == 0 {
                    if st.st_mode & libc::S_IFMT == libc::S_IFREG
                        && libc::access(path.as_ptr(), libc::X_OK) == 0
                    {
                        found = true;
                        break;
                    }
                    errno = libc::EACCES;
                }
            }
            if !found {
                *libc::__errno_location() = errno;
                fail(Step::Exec, err_fd);
            }
            report(Step::AtGate, 0, err_fd);
            let mut byte = 0u8;
            let mut n = libc::read(err_fd, (&mut byte as *mut u8).cast(), 1);
            while n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                n = libc::read(err_fd, (&mut byte as *mut u8).cast(), 1);
            }
            if n != 1 {
                // The parent dropped the gate: the program never runs.
                libc::_exit(127);
            }
        }

        let mut errno = libc::ENOENT;
        for path in &plan.candidates {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOENT);
            match e {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => errno = libc::EACCES,
                _ => {
                    errno = e;
                    break;
                }
            }
        }
        // Report the most telling errno, as execvp does (EACCES beats ENOENT).
        *libc::__errno_location() = errno;
        fail(Step::Exec, err_fd)
    }
}

/// Close every fd >= `from` except `keep`. Async-signal-safe.
///
/// # Safety
/// Closes fds this process may use elsewhere: only for the child after fork.
unsafe fn close_from(from: RawFd, keep: RawFd, max_fd: RawFd) -> Result<(), ()> {
    #[cfg(target_os = "linux")]
    {
        let range = |lo: RawFd, hi: libc::c_uint| -> bool {
            // SAFETY: close_range only closes fds; the caller allows closing these.
            lo as libc::c_uint > hi
                || unsafe { libc::syscall(libc::SYS_close_range, lo as libc::c_uint, hi, 0) } == 0
        };
        if range(from, (keep - 1) as libc::c_uint) && range(keep + 1, libc::c_uint::MAX) {
            return Ok(());
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return Err(());
        }
    }
    for fd in from..max_fd.max(keep + 1) {
        if fd != keep {
            // SAFETY: closing an fd number; EBADF for unused numbers is fine.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Write `v` in decimal followed by NUL at `out` (at most `PID_DIGITS` bytes).
/// Async-signal-safe: no allocation, no formatting machinery.
///
/// # Safety
/// `out` must point at `PID_DIGITS` writable bytes.
unsafe fn write_decimal(mut v: u64, out: *mut u8) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        // SAFETY: n < PID_DIGITS (u64 has at most 20 digits... and pids far fewer), and the
        // caller guarantees PID_DIGITS bytes.
        unsafe { *out.add(i) = digits[n - 1 - i] };
    }
    // SAFETY: as above; n <= 10 for any pid_t, so n < PID_DIGITS.
    unsafe { *out.add(n) = 0 };
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
