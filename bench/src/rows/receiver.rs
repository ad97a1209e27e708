//! Row 5: receiver cost, in nanoseconds, for 1 and 64 passed fds.
//!
//! `ListenFds::from_env` may run once per process (fd ownership is taken once), so the
//! in-process loop repeats exactly the work it does, through the crate's public pieces:
//! `getpid`, the pure `listenfd_core::env::parse`, `F_GETFD`/`F_SETFD` (`FD_CLOEXEC`) and one
//! owned name per fd, then, as a typed take does, `listenfd_core::inspect::inspect_raw`
//! (`fcntl`, `fstat`, two `getsockopt`, `getsockname`) per fd. The fds are real listening
//! TCP sockets; index i maps to the i-th of them instead of fd 3 + i.
//!
//! The baseline is the bare syscalls any receiver must make (libsystemd's
//! `sd_listen_fds`): `getpid` plus `F_GETFD`/`F_SETFD` per fd.

use std::hint::black_box;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use listenfd_core::env::{Vars, parse};
use listenfd_core::inspect::inspect_raw;

use crate::stats::{Summary, interleave};
use crate::{Config, Row};

fn cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and set the close-on-exec flag of an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One full receive + typed inspection of every fd, as `from_env` + takes do it.
fn receive(vars: &Vars<'_>, fds: &[RawFd]) -> io::Result<()> {
    let parsed = parse(vars, std::process::id(), None, false).map_err(io::Error::other)?;
    for (i, fd) in fds.iter().enumerate().take(parsed.len()) {
        cloexec(*fd)?;
        black_box(parsed.name(i).unwrap_or("unknown").to_owned());
    }
    for fd in fds.iter().take(parsed.len()) {
        black_box(inspect_raw(*fd)?);
    }
    Ok(())
}

fn bare(fds: &[RawFd]) -> io::Result<()> {
    black_box(std::process::id());
    for fd in fds {
        cloexec(*fd)?;
    }
    Ok(())
}

/// ns per call of `f`, over `iters` calls.
fn ns_per(iters: usize, f: &mut dyn FnMut() -> io::Result<()>) -> io::Result<f64> {
    let t0 = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(t0.elapsed().as_nanos() as f64 / iters as f64)
}

/// Measure row 5.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in [1usize, 64] {
        let listeners = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<io::Result<Vec<_>>>()?;
        let fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
        let pid = std::process::id().to_string();
        let count = n.to_string();
        let vars = Vars {
            listen_pid: Some(&pid),
            listen_fds: Some(&count),
            ..Vars::default()
        };
        let iters = config.reps(200_000, 2_000) / n;
        let mut parse_only = || {
            black_box(parse(&vars, std::process::id(), None, false).map_err(io::Error::other)?);
            Ok(())
        };
        let (series, errors) = interleave(
            config.reps(11, 3),
            &mut [
                &mut || ns_per(iters, &mut || receive(&vars, &fds)),
                &mut || ns_per(iters, &mut || bare(&fds)),
                &mut || ns_per(iters, &mut parse_only),
            ],
        );
        if let Some(e) = errors.first() {
            return Err(io::Error::other(format!("row 5: {e}")));
        }
        let ours = Summary::of(&series[0]);
        let base = Summary::of(&series[1]);
        let parse_ns = Summary::of(&series[2]).median;
        rows.push(Row {
            name: format!("5. receiver cost, {n} fd{}", if n == 1 { "" } else { "s" }),
            unit: "ns".into(),
            ours,
            baseline_name: "bare syscalls: getpid + F_GETFD/F_SETFD per fd".into(),
            baseline: base,
            note: format!(
                "ours = parse + CLOEXEC + typed inspect per fd; of which parse {} ns, inspect ≈ {} ns/fd",
                crate::report::fmt(parse_ns),
                crate::report::fmt((ours.median - base.median - parse_ns) / n as f64)
            ),
        });
    }
    Ok(rows)
}
