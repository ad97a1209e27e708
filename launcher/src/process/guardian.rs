//! The guardian: no daemon, and none of its descendants, outlives the process that launched
//! it, however that process ends (a return from `main`, a panic that aborts, SIGTERM, SIGKILL).
//!
//! On the first guarded spawn of a process we fork (no exec) a small guardian process that
//! holds one end of a `SOCK_SEQPACKET` socket pair; only the launching process holds the
//! other end (close-on-exec, and the spawn closes every fd the daemon is not given). As
//! daemons are spawned and reaped, the launching process sends fixed-size records: "add
//! group N", "add process N", "remove N". When the guardian reads end-of-file, the launching
//! process is gone (the kernel closes a dead process's fds, whatever killed it): it sends
//! `SIGKILL` to every registered process group and leader, and exits.
//!
//! Why not `PR_SET_PDEATHSIG` alone: it fires when the spawning *thread* exits, and the test
//! harness runs each test in a thread of its own, so a daemon shared between tests (kept in a
//! `static`) would die with the first test; and it reaches the daemon only, not what the
//! daemon started.
//!
//! The guardian:
//! * is forked twice (the intermediate exits at once), so it is not our child: nothing of
//!   ours waits for it, it is never one of our zombies, and no `waitpid(-1)` elsewhere in the
//!   process reaps it;
//! * runs only async-signal-safe code after the fork, on memory prepared before it: the
//!   registry is two bitmaps over every possible pid (`PID_MAX_LIMIT`, 2^22 on 64-bit Linux),
//!   1 MiB of untouched anonymous memory mapped before the fork, so adding or removing is a
//!   bit flip, there is no capacity limit, and nothing is allocated, locked or printed;
//! * closes every fd it inherited but its socket end (the test's stdout and stderr above all:
//!   `cargo test | tail` would hang on them), leads a process group of its own (a terminal's
//!   Ctrl-C to the test's group does not reach it), ignores SIGINT, SIGTERM, SIGHUP, SIGQUIT,
//!   SIGPIPE, SIGUSR1 and SIGUSR2 (only its launcher's end, or SIGKILL, ends it), moves to `/` (it holds no directory),
//!   and is named `sd-launch-guard` in `ps`;
//! * never sets `PR_SET_PDEATHSIG`: that would tie it to the spawning thread again.
//!
//! The launcher is never blocked for long: the guardian only reads, so a send waits only
//! while the guardian has not been scheduled yet, and at most [`SEND_TIMEOUT`]; after a
//! failed send (the guardian stopped or killed by someone) the guard is given up with one
//! warning, and daemons are then stopped by their handles only, as before.
//!
//! Group ids are not reused under the guardian's feet: the process layer sends "remove" just
//! before it reaps a daemon (a group id cannot be reused while its leader is an unreaped
//! zombie), and a daemon that is never reaped keeps its pid. The residue is a daemon reaped
//! by someone else (`SIGCHLD` ignored, a `waitpid(-1)` in the process), whose id a stranger
//! could take before the launching process dies.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The largest pid Linux can hand out, plus one (`PID_MAX_LIMIT` on 64-bit).
const PID_LIMIT: usize = 1 << 22;
/// Words of one bitmap.
const WORDS: usize = PID_LIMIT / 64;

const ADD_GROUP: i32 = 1;
const ADD_PROCESS: i32 = 2;
const REMOVE: i32 = 3;

/// One message to the guardian: (what, pid). Eight bytes, sent in one `send`, so records
/// from threads spawning at once never interleave.
type Record = [i32; 2];

/// How long a send may wait for the guardian to read.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The name the guardian shows in `ps` and `/proc/<pid>/comm` (15 bytes, the kernel's most).
pub(crate) const NAME: &[u8; 16] = b"sd-launch-guard\0";

/// Signals that would end the guardian before it cleans up; it ignores them.
const IGNORED: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGPIPE,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

#[derive(Debug)]
struct Guardian {
    /// Our end of the socket pair.
    socket: OwnedFd,
    /// The process that started the guardian: a process forked from it (without exec)
    /// inherits the end but must not use it.
    owner: u32,
}

static GUARDIAN: OnceLock<Option<Guardian>> = OnceLock::new();
/// Set after the first failure (no guardian, or a send that failed): warned once.
static GIVEN_UP: AtomicBool = AtomicBool::new(false);

/// The guardian of this process, started on the first call; `None` when it could not be
/// started or has been given up (warned once).
fn guardian() -> Option<&'static Guardian> {
    let guardian = GUARDIAN.get_or_init(|| match start() {
        Ok(guardian) => Some(guardian),
        Err(e) => {
            give_up(&e);
            None
        }
    });
    guardian
        .as_ref()
        .filter(|g| g.owner == std::process::id() && !GIVEN_UP.load(Ordering::Relaxed))
}

fn give_up(why: &io::Error) {
    if !GIVEN_UP.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the sd-launch guardian is not available ({why}): daemons still running when this \
             process ends will be left running"
        );
    }
}

/// Start the guardian if this process has none yet; `true` when daemons can be guarded.
/// Called before a guarded spawn, so that the daemon never runs unguarded while we fork.
pub(crate) fn ensure() -> bool {
    guardian().is_some()
}

/// Have the guardian kill `pid` (and the process group it leads, if `group`) when this
/// process ends; `true` if registered.
pub(crate) fn register(pid: libc::pid_t, group: bool) -> bool {
    send([if group { ADD_GROUP } else { ADD_PROCESS }, pid])
}

/// Forget `pid`: about to be reaped, or detached.
pub(crate) fn unregister(pid: libc::pid_t) {
    send([REMOVE, pid]);
}

fn send(record: Record) -> bool {
    let Some(guardian) = guardian() else {
        return false;
    };
    let len = std::mem::size_of::<Record>();
    let mut error = io::Error::from_raw_os_error(libc::EINTR);
    for _ in 0..16 {
        // SAFETY: send reads `len` bytes of a local array over a socket we own; MSG_NOSIGNAL:
        // a dead guardian is an EPIPE, never a SIGPIPE.
        let sent = unsafe {
            libc::send(
                guardian.socket.as_raw_fd(),
                record.as_ptr().cast(),
                len,
                libc::MSG_NOSIGNAL,
            )
        };
        if sent == len as isize {
            return true;
        }
        error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    give_up(&error);
    false
}

/// Fork the guardian (twice: it is not our child) and return our end of its socket.
fn start() -> io::Result<Guardian> {
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two new fds into the array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and ours alone.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let timeout = libc::timeval {
        tv_sec: SEND_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads a timeval from a local of the size given.
    if unsafe {
        libc::setsockopt(
            ours.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let registry = Mapping::new(2 * WORDS * 8)?;
    let max_fd = fd_limit();
    let bits = registry.ptr.cast::<u64>();
    let socket = theirs.as_raw_fd();

    // SAFETY: fork; the child runs only async-signal-safe code (below) and never returns.
    let intermediate = unsafe { libc::fork() };
    if intermediate < 0 {
        return Err(io::Error::last_os_error());
    }
    if intermediate == 0 {
        // The intermediate: drop our copies of the launcher's fds at once (a copy of the
        // test's stdout, or of a file another thread is writing and is about to execute,
        // must not outlive this instant), fork the guardian with the raw syscall (no atfork
        // handlers: we are a copy of one thread of a possibly multi-threaded process), exit.
        // SAFETY: we are the forked child; the fds are copies of the launcher's.
        unsafe { close_all_but(socket, max_fd) };
        // SAFETY: clone with SIGCHLD and no stack is fork; both sides only make
        // async-signal-safe calls and end in _exit.
        let guardian =
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
        if guardian == 0 {
            // SAFETY: we are the guardian, a single-threaded copy holding only `socket`, our
            // end; `bits` maps 2 * WORDS words mapped before the fork.
            unsafe { guard(socket, bits) }
        }
        // SAFETY: _exit ends the intermediate without running anything of the parent's.
        unsafe { libc::_exit(if guardian > 0 { 0 } else { 1 }) }
    }
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, writing into a local.
        let r = unsafe { libc::waitpid(intermediate, &mut status, 0) };
        if r == intermediate {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // SIGCHLD ignored: the kernel reaped it. A guardian that failed to start shows
            // as a failed first send.
            Some(libc::ECHILD) => {
                status = 0;
                break;
            }
            _ => return Err(e),
        }
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(io::Error::other("the guardian could not be forked"));
    }
    drop(theirs);
    drop(registry); // the guardian has its own copy
    Ok(Guardian {
        socket: ours,
        owner: std::process::id(),
    })
}

/// The upper bound for closing fds one by one when `close_range` is missing (Linux < 5.9).
fn fd_limit() -> libc::c_uint {
    // SAFETY: rlimit is plain data that getrlimit fills in.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes into a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur.min(1 << 20) as libc::c_uint
}

/// Anonymous memory, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping at an address the kernel picks; no file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping we made; nothing of ours points into it after.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The registered pids: a bitmap of groups, then one of single processes.
struct Registry<'a> {
    bits: &'a mut [u64],
}

impl Registry<'_> {
    /// Apply one record; anything malformed is ignored. Never panics.
    fn apply(&mut self, [what, pid]: Record) {
        if pid <= 0 || pid as usize >= PID_LIMIT {
            return;
        }
        let (word, bit) = (pid as usize / 64, 1u64 << (pid as usize % 64));
        let mut set = |index: usize, on: bool| {
            if let Some(w) = self.bits.get_mut(index) {
                if on {
                    *w |= bit;
                } else {
                    *w &= !bit;
                }
            }
        };
        match what {
            ADD_GROUP => set(word, true),
            ADD_PROCESS => set(WORDS + word, true),
            REMOVE => {
                set(word, false);
                set(WORDS + word, false);
            }
            _ => {}
        }
    }

    /// Call `f(pid, group)` for every registered pid. Never panics, never allocates.
    fn for_each(&self, mut f: impl FnMut(libc::pid_t, bool)) {
        for (index, &w) in self.bits.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                let pid = ((index % WORDS) * 64 + bit) as libc::pid_t;
                f(pid, index < WORDS);
            }
        }
    }
}

/// Close every fd but `keep`. Async-signal-safe.
///
/// # Safety
/// Only in a child forked for the guardian: every other fd is a copy of the launcher's.
unsafe fn close_all_but(keep: RawFd, max_fd: libc::c_uint) {
    let keep = keep as libc::c_uint;
    let range = |lo: libc::c_uint, hi: libc::c_uint| -> bool {
        // SAFETY: close_range only closes fds; the caller allows closing these.
        lo > hi || unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) } == 0
    };
    let closed = if keep == 0 {
        range(1, libc::c_uint::MAX)
    } else {
        range(0, keep - 1) && range(keep + 1, libc::c_uint::MAX)
    };
    if !closed {
        for fd in 0..max_fd.max(keep + 1) {
            if fd != keep {
                // SAFETY: closing an fd number; EBADF for unused numbers is fine.
                unsafe { libc::close(fd as RawFd) };
            }
        }
    }
}

/// The guardian's whole life: clean up the inherited state, then read records until the
/// launching process is gone, kill what is registered, exit.
///
/// # Safety
/// Only in a single-threaded child forked for this purpose, with every fd but `socket`
/// closed; `bits` must point to 2 * WORDS writable words that nothing else uses; `socket` is
/// its end of the pair.
unsafe fn guard(socket: RawFd, bits: *mut u64) -> ! {
    // Everything below is async-signal-safe: prctl, setpgid, chdir, signal, sigemptyset,
    // sigprocmask, recv, kill, _exit.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from a static.
    unsafe { libc::prctl(libc::PR_SET_NAME, NAME.as_ptr() as libc::c_ulong, 0, 0, 0) };
    // SAFETY: setpgid(0, 0) makes us the leader of a new group; no memory involved.
    unsafe { libc::setpgid(0, 0) };
    // SAFETY: chdir to a static NUL-terminated path.
    unsafe { libc::chdir(c"/".as_ptr()) };
    for signal in IGNORED {
        // SAFETY: SIG_IGN installs no handler.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    // Unblock only now: a pending ignored signal is discarded, not delivered.
    // SAFETY: sigset_t is plain data; sigemptyset and sigprocmask write and read locals.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    // SAFETY: the caller gives us 2 * WORDS words that nothing else uses.
    let bits = unsafe { std::slice::from_raw_parts_mut(bits, 2 * WORDS) };
    let mut registry = Registry { bits };
    loop {
        let mut record: Record = [0; 2];
        let len = std::mem::size_of::<Record>();
        // SAFETY: recv writes at most `len` bytes into a local array.
        let got = unsafe { libc::recv(socket, record.as_mut_ptr().cast(), len, 0) };
        if got == len as isize {
            registry.apply(record);
        } else if got == 0 {
            break; // the launching process is gone: end-of-file
        } else if got < 0 {
            // SAFETY: reading this thread's errno.
            if unsafe { *libc::__errno_location() } != libc::EINTR {
                break; // cannot read any more: clean up now rather than never
            }
        }
    }
    registry.for_each(|pid, group| {
        if group {
            // SAFETY: kill with a negative pid signals the group the daemon leads.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        // SAFETY: kill of the daemon itself (it may have left its group).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    // SAFETY: _exit ends the guardian without running anything of the parent's.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(bits: &mut [u64]) -> Vec<(i32, bool)> {
        let mut found = Vec::new();
        Registry { bits }.for_each(|pid, group| found.push((pid, group)));
        found
    }

    #[test]
    fn the_registry_holds_what_was_added_and_not_removed() {
        let mut bits = vec![0u64; 2 * WORDS];
        let mut r = Registry { bits: &mut bits };
        for record in [
            [ADD_GROUP, 1],
            [ADD_GROUP, 64],
            [ADD_PROCESS, 65],
            [ADD_GROUP, (PID_LIMIT - 1) as i32],
            [ADD_GROUP, 300],
            [REMOVE, 300],
            // Malformed records change nothing.
            [ADD_GROUP, 0],
            [ADD_GROUP, -5],
            [ADD_GROUP, PID_LIMIT as i32],
            [ADD_GROUP, i32::MAX],
            [99, 7],
            [REMOVE, 12345],
        ] {
            r.apply(record);
        }
        assert_eq!(
            registered(&mut bits),
            [
                (1, true),
                (64, true),
                ((PID_LIMIT - 1) as i32, true),
                (65, false)
            ]
        );
    }

    #[test]
    fn a_reused_pid_is_registered_again_after_its_removal() {
        let mut bits = vec![0u64; 2 * WORDS];
        let mut r = Registry { bits: &mut bits };
        r.apply([ADD_GROUP, 4242]);
        r.apply([REMOVE, 4242]);
        r.apply([ADD_PROCESS, 4242]);
        assert_eq!(registered(&mut bits), [(4242, false)]);
    }
}
