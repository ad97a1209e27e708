//! Differential test: every strict row of the conformance table (`common/mod.rs`) is also run
//! through the real libsystemd's `sd_listen_fds_with_names()`, loaded with `dlopen`, and must
//! give the row's outcome — so the table itself is checked against the reference.
//!
//! Rows with `LISTEN_PIDFDID` (systemd >= 259) and lenient rows are skipped. Without
//! `libsystemd.so.0` the test reports "skipped" and passes, unless
//! `LISTENFD_REQUIRE_LIBSYSTEMD=1` is set. A custom harness keeps the process single-threaded,
//! which makes setting the environment sound.

mod common;

use std::ffi::{CStr, c_char, c_int};
use std::os::fd::AsRawFd;

use common::{Outcome, cases};

type ListenFdsWithNames = unsafe extern "C" fn(c_int, *mut *mut *mut c_char) -> c_int;

fn load() -> Option<ListenFdsWithNames> {
    // SAFETY: dlopen/dlsym with NUL-terminated names; the library stays loaded (never closed).
    unsafe {
        let lib = libc::dlopen(c"libsystemd.so.0".as_ptr(), libc::RTLD_NOW);
        if lib.is_null() {
            return None;
        }
        let sym = libc::dlsym(lib, c"sd_listen_fds_with_names".as_ptr());
        // SAFETY: the symbol has this C signature (sd-daemon.h).
        (!sym.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, ListenFdsWithNames>(sym))
    }
}

/// Ask libsystemd, with exactly the row's variables in the environment.
fn libsystemd_outcome(f: ListenFdsWithNames, case: &common::Case) -> Outcome {
    let vars = case.vars();
    let values = [
        ("LISTEN_PID", vars.listen_pid),
        ("LISTEN_PIDFDID", vars.listen_pidfdid),
        ("LISTEN_FDS", vars.listen_fds),
        ("LISTEN_FDNAMES", vars.listen_fdnames),
        ("LISTEN_FDS_FIRST_FD", vars.listen_fds_first_fd),
    ];
    for (name, value) in values {
        // SAFETY: this harness-less test runs on one thread; nothing reads the environment
        // concurrently.
        unsafe {
            match value {
                Some(v) => std::env::set_var(name, v),
                None => std::env::remove_var(name),
            }
        }
    }
    let mut names: *mut *mut c_char = std::ptr::null_mut();
    // SAFETY: `names` is a valid out-pointer; unset_environment = 0.
    let r = unsafe { f(0, &mut names) };
    if r < 0 {
        return Outcome::Errno(-r);
    }
    if r == 0 {
        return Outcome::NotForUs;
    }
    let mut list = Vec::new();
    for i in 0..r as usize {
        // SAFETY: on success libsystemd returns an array of r NUL-terminated strings.
        unsafe {
            let p = *names.add(i);
            list.push(CStr::from_ptr(p).to_string_lossy().into_owned());
            libc::free(p.cast());
        }
    }
    // SAFETY: the array was malloc'ed by libsystemd and is not used any more.
    unsafe { libc::free(names.cast()) };
    Outcome::Fds {
        first: 3,
        names: list,
    }
}

fn main() {
    let Some(f) = load() else {
        if std::env::var_os("LISTENFD_REQUIRE_LIBSYSTEMD").is_some() {
            eprintln!("libsystemd.so.0 not found but LISTENFD_REQUIRE_LIBSYSTEMD is set");
            std::process::exit(1);
        }
        println!("test differential_against_libsystemd ... skipped (libsystemd.so.0 not found)");
        return;
    };
    // Rows with n fds need fds 3..3+n open (at most 8 in the table), else libsystemd says
    // EBADF: put /dev/null there.
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd >= 100 that we own until exit.
    let spare = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    assert!(spare >= 100);
    drop(null);
    for fd in 3..=10 {
        // SAFETY: fds 3..=10 are not used by this harness-less test binary; dup2 replaces them.
        assert!(unsafe { libc::dup2(spare, fd) } == fd);
    }

    let pid = std::process::id();
    let (mut ran, mut failures) = (0, Vec::new());
    for case in cases(pid).iter().filter(|c| c.in_systemd_252()) {
        ran += 1;
        let reference = libsystemd_outcome(f, case);
        let ours = case.parse(pid);
        if reference != case.expect || ours != reference {
            failures.push(format!(
                "{}: table says {:?}, libsystemd says {reference:?}, we say {ours:?}",
                case.row, case.expect
            ));
        }
    }
    if failures.is_empty() {
        println!("test differential_against_libsystemd ({ran} rows) ... ok");
    } else {
        println!(
            "test differential_against_libsystemd ... FAILED\n{}",
            failures.join("\n")
        );
        std::process::exit(1);
    }
}
