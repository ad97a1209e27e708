//! Row 8 (issue 14): the cost of starting a child from a big parent. Spawn + wait of
//! `/bin/true` from this process while it holds 1 GiB of touched memory (a big test binary),
//! three ways interleaved: ours (`sd_launch::Launch`, `clone(CLONE_VM | CLONE_VFORK)`),
//! `std::process::Command` with a `pre_exec` closure (the only way std could set
//! `LISTEN_PID` to the child's pid; it forces `fork`, which copies the page tables) and plain
//! `posix_spawn` (glibc's, also `CLONE_VM | CLONE_VFORK`), the floor.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::procs::ms_since;
use crate::stats::{Summary, interleave};
use crate::{Config, Row};

/// The parent's extra memory: 1 GiB, every page written once.
const BIG: usize = 1 << 30;
const PAGE: usize = 4096;

fn ours() -> io::Result<f64> {
    let start = Instant::now();
    let mut child = sd_launch::Launch::new("/bin/true")
        .stdin(sd_launch::Stdio::null())
        .stdout(sd_launch::Stdio::null())
        .stderr(sd_launch::Stdio::null())
        .spawn()
        .map_err(io::Error::other)?;
    let status = child.wait()?;
    let elapsed = ms_since(start);
    ok(status.success(), elapsed, "ours")
}

fn std_pre_exec() -> io::Result<f64> {
    let start = Instant::now();
    let mut command = Command::new("/bin/true");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure does nothing, which is async-signal-safe; its presence alone makes
    // std fork instead of using posix_spawn, as any closure that set LISTEN_PID would.
    unsafe { command.pre_exec(|| Ok(())) };
    let status = command.status()?;
    let elapsed = ms_since(start);
    ok(status.success(), elapsed, "std pre_exec")
}

/// `posix_spawn` of /bin/true with stdin, stdout and stderr on /dev/null, then `waitpid`.
struct PosixSpawn {
    path: CString,
    null: CString,
    argv: [*mut libc::c_char; 2],
}

impl PosixSpawn {
    fn new() -> PosixSpawn {
        let path = CString::from(c"/bin/true");
        let argv = [path.as_ptr().cast_mut(), std::ptr::null_mut()];
        PosixSpawn {
            path,
            null: CString::from(c"/dev/null"),
            argv,
        }
    }

    fn run(&self) -> io::Result<f64> {
        let start = Instant::now();
        // SAFETY: posix_spawn_file_actions_t is plain data, initialised by _init before use.
        let mut actions: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
        // SAFETY: initialises the struct we own.
        let r = unsafe { libc::posix_spawn_file_actions_init(&mut actions) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        for (fd, flags) in [
            (0, libc::O_RDONLY),
            (1, libc::O_WRONLY),
            (2, libc::O_WRONLY),
        ] {
            // SAFETY: adds an action to the initialised struct; the path outlives the spawn.
            unsafe {
                libc::posix_spawn_file_actions_addopen(
                    &mut actions,
                    fd,
                    self.null.as_ptr(),
                    flags,
                    0,
                )
            };
        }
        unsafe extern "C" {
            static environ: *const *mut libc::c_char;
        }
        let mut pid = 0;
        // SAFETY: path and argv are NUL-terminated and outlive the call; `environ` is the
        // process environment (not modified by this single-threaded harness meanwhile).
        let r = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.path.as_ptr(),
                &actions,
                std::ptr::null(),
                self.argv.as_ptr(),
                environ,
            )
        };
        // SAFETY: destroys the struct initialised above.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut actions) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        let mut status = 0;
        for _ in 0..100 {
            // SAFETY: waitpid on our own child, writing into a local.
            let w = unsafe { libc::waitpid(pid, &mut status, 0) };
            if w == pid || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        let elapsed = ms_since(start);
        ok(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            elapsed,
            "posix_spawn",
        )
    }
}

fn ok(success: bool, elapsed: f64, what: &str) -> io::Result<f64> {
    if success {
        Ok(elapsed)
    } else {
        Err(io::Error::other(format!("{what}: /bin/true failed")))
    }
}

/// Measure row 8.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    // Touch every page once, so that the parent really maps 1 GiB (a fork must copy the page
    // tables of all of it); freed at the end of this row.
    let mut big = vec![0u8; BIG];
    for i in (0..BIG).step_by(PAGE) {
        big[i] = 1;
    }
    std::hint::black_box(&mut big);
    let posix = PosixSpawn::new();
    let (series, errors) = interleave(
        config.reps(200, 5),
        &mut [&mut ours, &mut std_pre_exec, &mut || posix.run()],
    );
    drop(big);
    let ours = Summary::of(&series[0]);
    let fork = Summary::of(&series[1]);
    let floor = Summary::of(&series[2]);
    let name = "8. spawn + wait, /bin/true, from a parent with 1 GiB touched";
    Ok(vec![
        Row {
            name: name.into(),
            unit: "ms".into(),
            ours,
            baseline_name: "posix_spawn (glibc, CLONE_VM/CLONE_VFORK)".into(),
            baseline: floor,
            note: format!(
                "sd_launch::Launch::spawn + wait (binds its default loopback socket too); \
                 ours/posix_spawn {:.2}, goal <= 1.2; {:+.3} ms; {} failures over the three ways",
                ours.median / floor.median,
                ours.median - floor.median,
                errors.len()
            ),
        },
        Row {
            name: name.into(),
            unit: "ms".into(),
            ours,
            baseline_name: "std::process::Command + pre_exec (forces fork)".into(),
            baseline: fork,
            note: format!(
                "fork/ours {:.1}x: fork copies the page tables of the 1 GiB; interleaved with \
                 the row above (ours, fork, posix_spawn, ...)",
                fork.median / ours.median
            ),
        },
    ])
}
