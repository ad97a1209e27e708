//! Parent side of the process-level tests (`process.rs`, `hostile.rs`): start a child process
//! with chosen fds at chosen numbers (every other fd above stderr closed) and a chosen
//! `LISTEN_*` environment, as a launcher would. The child is the test binary itself,
//! re-executed with [`CHILD`] set to a spec string that the test binary interprets.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The variable that turns the re-executed test binary into the reporting child.
pub const CHILD: &str = "LISTENFD_TEST_CHILD";

/// A child to start.
pub struct Child {
    /// fds to place in the child, at the given numbers.
    fds: Vec<(RawFd, OwnedFd)>,
    env: Vec<(&'static str, OsString)>,
    /// Set LISTEN_PID to the child's pid.
    with_pid: bool,
    spec: &'static str,
}

impl Child {
    pub fn new(spec: &'static str) -> Child {
        Child {
            fds: Vec::new(),
            env: Vec::new(),
            with_pid: true,
            spec,
        }
    }
    pub fn fd(mut self, target: RawFd, fd: impl Into<OwnedFd>) -> Self {
        self.fds.push((target, fd.into()));
        self
    }
    pub fn env(self, key: &'static str, value: impl ToString) -> Self {
        self.env_os(key, value.to_string())
    }
    /// Any bytes (non-UTF-8 included), as `execve` allows.
    pub fn env_os(mut self, key: &'static str, value: impl Into<OsString>) -> Self {
        self.env.push((key, value.into()));
        self
    }
    pub fn without_pid(mut self) -> Self {
        self.with_pid = false;
        self
    }

    /// Run `program` (default: this test binary as the reporting child) with the fds in place.
    pub fn output(self, program: Option<&std::path::Path>) -> std::process::Output {
        let exe = match program {
            Some(p) => p.to_owned(),
            None => std::env::current_exe().unwrap(),
        };
        let mut cmd = if self.with_pid {
            let mut c = Command::new("sh");
            c.arg("-c").arg(r#"LISTEN_PID=$$ exec "$0""#).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        for var in listenfd_core::env::VARIABLES {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env(CHILD, self.spec);
        let plan: Vec<(RawFd, RawFd)> = self
            .fds
            .iter()
            .map(|(t, fd)| (*t, fd.as_raw_fd()))
            .collect();
        assert!(plan.len() <= 8);
        // SAFETY: the closure only calls async-signal-safe functions (fcntl, dup2, close) and
        // reads `plan`, which was allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                // Pass 1: move sources out of the way of the targets (high, close-on-exec copies).
                let mut high = [-1; 8];
                for (i, (_, src)) in plan.iter().enumerate() {
                    high[i] = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 200);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Close every other fd above stderr, so a closed fd 4 really is closed.
                for fd in 3..200 {
                    libc::close(fd);
                }
                // Pass 2: dup2 onto the targets (which clears FD_CLOEXEC on them).
                for (i, (target, _)) in plan.iter().enumerate() {
                    if libc::dup2(high[i], *target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.output().expect("spawn child")
    }

    /// Run the reporting child; its `key=value` lines as a map. Panics when it fails.
    pub fn run(self) -> HashMap<String, String> {
        let out = self.output(None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// `closed`, `cloexec` or `inherit`: what `fcntl(F_GETFD)` says about `fd` in this process.
pub fn fd_state(fd: RawFd) -> &'static str {
    // SAFETY: F_GETFD only reads the flags of the fd number.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        "closed"
    } else if flags & libc::FD_CLOEXEC != 0 {
        "cloexec"
    } else {
        "inherit"
    }
}

/// Run the libtest-like loop of a `harness = false` test binary: a name filter from the
/// command line, one line per test, exit 1 when one failed.
pub fn run_tests(tests: &[(&str, fn())]) {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
