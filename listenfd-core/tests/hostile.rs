//! A hostile environment for a daemon: what the receiver does with every malformed or absurd
//! `LISTEN_*` announcement we could think of, beyond the spec rows of `conformance.rs` and the
//! typed checks of `process.rs`. The bar, every time: a clear one-line error (or the same
//! outcome as libsystemd), no panic, and no fd closed that the crate does not own, checked
//! with `fcntl(F_GETFD)` in the receiving process after the error.
//!
//! The receiving process is this test binary itself, re-executed (see `child/mod.rs`); a
//! custom harness keeps it single-threaded like a daemon at the top of `main`. Values are at
//! most 100 KB in a process: the kernel refuses a single environment string above
//! 128 KiB (`MAX_ARG_STRLEN`) with E2BIG, so a 1 MB value can only reach the parser directly,
//! which the in-process tests at the end do.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use listenfd_core::env::{self, Vars};
use listenfd_core::{Error, ListenFds, Options};

mod child;

use child::{CHILD, Child, fd_state};

/// Where the receiving child keeps an fd of its own (not passed): it must survive everything.
const OWN_FD: RawFd = 100;

// ---------------------------------------------------------------------------------------------
// Child side

fn report(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{key}={value}").unwrap();
}

fn report_fds(when: &str) {
    for fd in 3..=6 {
        report(&format!("{when}.fd{fd}"), fd_state(fd));
    }
    report(&format!("{when}.own"), fd_state(OWN_FD));
}

fn outcome<T>(result: &Result<T, Error>, ok: impl Fn(&T) -> String) -> String {
    match result {
        Ok(v) => format!("ok:{}", ok(v)),
        Err(e) => {
            let msg = e.to_string();
            // One line, bounded: a 100 KB value must not become a 100 KB error message.
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
            assert!(msg.len() < 2000, "{} byte error message", msg.len());
            format!("err:{}:{msg}", e.errno().unwrap_or(0))
        }
    }
}

/// `receive`: take the fds, try each as a TCP listener, drop; report fd states at each step.
/// `owned-file`: a File of the child's own lands on fd 3 before receiving (see the test).
/// `twice`: receive, then try to receive again through every entry point.
fn child(mode: &str) {
    let null = File::open("/dev/null").unwrap();
    // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd onto the lowest free number >= OWN_FD.
    let own = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, OWN_FD) };
    assert_eq!(own, OWN_FD);
    drop(null);
    let mut file = None;
    if mode == "owned-file" {
        // fd 3 is closed in this child: the lowest free number is 3.
        let f = tempfile::tempfile().unwrap();
        assert_eq!(f.as_raw_fd(), 3);
        file = Some(f);
    }
    let result = Options::new().from_env();
    report("result", outcome(&result, |fds| fds.len().to_string()));
    report_fds("after_receive");
    let Ok(mut fds) = result else { return };
    for i in 0..fds.len().min(4) {
        let took = fds.tcp_listener(i);
        report(
            &format!("take{i}"),
            outcome(&took, |l| l.local_addr().unwrap().to_string()),
        );
        if let Ok(listener) = took {
            // Given back, so the drop below is what closes it.
            drop(listener);
        }
    }
    report_fds("after_takes");
    if let Some(name) = fds.name(0) {
        report("name0", format!("{name:?}"));
    }
    if mode == "twice" {
        report(
            "again_from_env",
            outcome(&ListenFds::from_env(), |f| f.len().to_string()),
        );
        let vars = Vars {
            listen_pid: Some("1"),
            listen_fds: Some("1"),
            ..Vars::default()
        };
        // SAFETY: the values name another process (pid 1); besides, the claim is taken, so
        // nothing can be received.
        let again = unsafe { Options::new().from_vars(&vars) };
        report("again_from_vars", outcome(&again, |f| f.len().to_string()));
        report_fds("after_again");
    }
    if let Some(f) = file.as_mut() {
        report(
            "file_write_after_failed_take",
            match f.write_all(b"still mine") {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("err:{e}"),
            },
        );
        // The crate now believes it owns fd 3 as well: keep the File from closing it twice.
        std::mem::forget(file.take());
    }
    drop(fds);
    report_fds("after_drop");
}

// ---------------------------------------------------------------------------------------------
// Parent side

fn tcp() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut ends = [0; 2];
    // SAFETY: `ends` has room for the two fds pipe2 writes.
    let rc = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0);
    // SAFETY: pipe2 just returned these two fds to us; nobody else owns them.
    unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) }
}

/// An error result: `err:<errno>:<message>`; returns the message.
fn expect_err(r: &std::collections::HashMap<String, String>, errno: i32) -> &str {
    let result = &r["result"];
    let prefix = format!("err:{errno}:");
    assert!(result.starts_with(&prefix), "{result}");
    &result[prefix.len()..]
}

/// No fd changed by a refused announcement, and the child's own fd is there at every step.
fn untouched(r: &std::collections::HashMap<String, String>, fd3: &str) {
    assert_eq!(r["after_receive.fd3"], fd3);
    assert_eq!(r["after_receive.own"], "cloexec");
}

fn values_of_100_kb_are_refused_on_one_bounded_line() {
    let big_number = "9".repeat(100_000);
    let junk = "x".repeat(100_000);
    for (var, value, errno, needle) in [
        (
            "LISTEN_FDS",
            big_number.as_str(),
            libc::ERANGE,
            "out of range",
        ),
        ("LISTEN_FDS", junk.as_str(), libc::EINVAL, "not a number"),
        (
            "LISTEN_PID",
            big_number.as_str(),
            libc::ERANGE,
            "out of range",
        ),
        ("LISTEN_PID", junk.as_str(), libc::EINVAL, "not a number"),
    ] {
        let mut c = Child::new("receive").fd(3, tcp());
        if var == "LISTEN_PID" {
            c = c.without_pid().env("LISTEN_FDS", 1);
        }
        let r = c.env(var, value).run();
        let msg = expect_err(&r, errno);
        assert!(msg.starts_with(&format!("{var}=")), "{var}: {msg}");
        assert!(msg.contains(needle), "{var}: {msg}");
        assert!(msg.contains("100000 bytes"), "says how long it was: {msg}");
        untouched(&r, "inherit");
    }
}

fn names_of_100_kb_are_received_or_refused_like_libsystemd() {
    // One huge name: libsystemd does not validate received names, neither do we.
    let huge = "n".repeat(100_000);
    let r = Child::new("receive")
        .fd(3, tcp())
        .env("LISTEN_FDS", 1)
        .env("LISTEN_FDNAMES", &huge)
        .run();
    assert_eq!(r["result"], "ok:1");
    assert_eq!(r["name0"].len(), 100_002);
    assert!(r["take0"].starts_with("ok:127.0.0.1:"), "{}", r["take0"]);
    // 50,000 names for one fd: a count mismatch, the fd is left open.
    let r = Child::new("receive")
        .fd(3, tcp())
        .env("LISTEN_FDS", 1)
        .env("LISTEN_FDNAMES", "a:".repeat(50_000))
        .run();
    let msg = expect_err(&r, libc::EINVAL);
    assert!(msg.contains("50001 name(s) but LISTEN_FDS=1"), "{msg}");
    untouched(&r, "cloexec");
    // Leading zeros are C octal: 99,999 zeros then 1 is one fd, as strtol would say.
    let r = Child::new("receive")
        .fd(3, tcp())
        .env("LISTEN_FDS", format!("{}1", "0".repeat(99_999)))
        .run();
    assert_eq!(r["result"], "ok:1");
}

fn non_utf8_bytes_are_an_error_naming_the_variable_or_a_replaced_name() {
    for (var, value) in [
        ("LISTEN_FDS", &b"1\xff"[..]),
        ("LISTEN_FDS", &b"\xc3\x28"[..]),
        ("LISTEN_FDS_FIRST_FD", &b"\xff"[..]),
    ] {
        let r = Child::new("receive")
            .fd(3, tcp())
            .env("LISTEN_FDS", 1)
            .env_os(var, os(value))
            .run();
        if var == "LISTEN_FDS_FIRST_FD" {
            // Strict mode ignores it, exactly as libsystemd.
            assert_eq!(r["result"], "ok:1");
            continue;
        }
        let msg = expect_err(&r, libc::EINVAL);
        assert!(msg.starts_with(&format!("{var}=")), "{msg}");
        untouched(&r, "inherit");
    }
    // A non-UTF-8 LISTEN_PID is no number, so not ours either way: an error, fd untouched.
    let r = Child::new("receive")
        .without_pid()
        .fd(3, tcp())
        .env("LISTEN_FDS", 1)
        .env_os("LISTEN_PID", os(b"\xff\xfe"))
        .run();
    let msg = expect_err(&r, libc::EINVAL);
    assert!(msg.starts_with("LISTEN_PID="), "{msg}");
    untouched(&r, "inherit");
    // Names: received with U+FFFD for the bad bytes (no valid FileDescriptorName has them).
    let r = Child::new("receive")
        .fd(3, tcp())
        .env("LISTEN_FDS", 1)
        .env_os("LISTEN_FDNAMES", os(b"we\xffb"))
        .run();
    assert_eq!(r["result"], "ok:1");
    assert_eq!(r["name0"], "\"we\u{fffd}b\"");
}

fn huge_counts_stop_at_the_first_closed_fd_and_close_nothing() {
    for count in ["2147483644", "1000000", "0x7ffffffc"] {
        let r = Child::new("receive")
            .fd(3, tcp())
            .env("LISTEN_FDS", count)
            .run();
        let msg = expect_err(&r, libc::EBADF);
        assert!(msg.contains("fd 4 is not open"), "{count}: {msg}");
        // FD_CLOEXEC set on fd 3 as libsystemd does, but not closed.
        untouched(&r, "cloexec");
    }
    for (count, errno) in [("2147483645", libc::EINVAL), ("2147483647", libc::EINVAL)] {
        let r = Child::new("receive")
            .fd(3, tcp())
            .env("LISTEN_FDS", count)
            .run();
        let msg = expect_err(&r, errno);
        assert!(msg.starts_with(&format!("LISTEN_FDS=\"{count}\"")), "{msg}");
        untouched(&r, "inherit");
    }
    for count in ["2147483648", "4294967299", "-1"] {
        let r = Child::new("receive")
            .fd(3, tcp())
            .env("LISTEN_FDS", count)
            .run();
        assert!(r["result"].starts_with("err:"), "{count}: {}", r["result"]);
        untouched(&r, "inherit");
    }
}

fn a_regular_file_or_a_pipe_is_diagnosed_and_left_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, "x").unwrap();
    let (read, write) = pipe();
    let r = Child::new("receive")
        .fd(3, File::open(&path).unwrap())
        .fd(4, read)
        .fd(5, tcp())
        .env("LISTEN_FDS", 3)
        .run();
    assert_eq!(r["result"], "ok:3");
    assert!(
        r["take0"].contains("fd 3") && r["take0"].contains("is a regular file ("),
        "{}",
        r["take0"]
    );
    assert!(
        r["take0"].contains("data"),
        "names the file: {}",
        r["take0"]
    );
    assert!(r["take1"].contains("is a pipe (FIFO)"), "{}", r["take1"]);
    assert!(r["take2"].starts_with("ok:127.0.0.1:"), "{}", r["take2"]);
    // The failed takes left fds 3 and 4 in place; the good one was handed out (and dropped).
    assert_eq!(
        (
            r["after_takes.fd3"].as_str(),
            r["after_takes.fd4"].as_str(),
            r["after_takes.fd5"].as_str()
        ),
        ("cloexec", "cloexec", "closed")
    );
    // Dropping the ListenFds closes what it owns (3 and 4), never the child's own fd.
    assert_eq!(r["after_drop.fd3"], "closed");
    assert_eq!(r["after_drop.fd4"], "closed");
    assert_eq!(r["after_drop.own"], "cloexec");
    drop(write);
}

fn a_closed_fd_in_the_middle_leaves_the_others_alone() {
    // fd 3 open, 4 closed, 5 open: EBADF at 4; 3 got FD_CLOEXEC (libsystemd order), 5 untouched.
    let r = Child::new("receive")
        .fd(3, tcp())
        .fd(5, tcp())
        .env("LISTEN_FDS", 3)
        .run();
    let msg = expect_err(&r, libc::EBADF);
    assert!(msg.contains("fd 4 is not open"), "{msg}");
    assert_eq!(r["after_receive.fd3"], "cloexec");
    assert_eq!(r["after_receive.fd5"], "inherit");
    assert_eq!(r["after_receive.own"], "cloexec");
    // Everything closed: EBADF at 3, nothing else touched.
    let r = Child::new("receive").env("LISTEN_FDS", 2).run();
    let msg = expect_err(&r, libc::EBADF);
    assert!(msg.contains("fd 3 is not open"), "{msg}");
    assert_eq!(r["after_receive.own"], "cloexec");
}

fn a_name_count_mismatch_closes_nothing() {
    let r = Child::new("receive")
        .fd(3, tcp())
        .fd(4, tcp())
        .env("LISTEN_FDS", 2)
        .env("LISTEN_FDNAMES", "only-one")
        .run();
    let msg = expect_err(&r, libc::EINVAL);
    assert!(msg.contains("1 name(s) but LISTEN_FDS=2"), "{msg}");
    assert_eq!(r["after_receive.fd3"], "cloexec");
    assert_eq!(r["after_receive.fd4"], "cloexec");
    assert_eq!(r["after_receive.own"], "cloexec");
}

fn a_second_receiver_gets_an_error_and_the_first_keeps_its_fds() {
    let r = Child::new("twice")
        .fd(3, File::open("/dev/null").unwrap())
        .env("LISTEN_FDS", 1)
        .run();
    assert_eq!(r["result"], "ok:1");
    assert!(
        r["again_from_env"].contains("already claimed"),
        "{}",
        r["again_from_env"]
    );
    assert!(
        r["again_from_vars"].contains("already claimed"),
        "{}",
        r["again_from_vars"]
    );
    assert_eq!(r["after_again.fd3"], "cloexec", "still owned by the first");
    assert_eq!(r["after_drop.fd3"], "closed");
    assert_eq!(r["after_drop.own"], "cloexec");
}

/// The protocol's limit: an fd number the process already uses for something else (here a
/// File opened before receiving, because fd 3 was closed at exec) cannot be told apart from
/// a passed fd, by libsystemd or by us. What holds: the typed take refuses it and leaves it
/// open, so the File keeps working.
fn an_fd_already_owned_by_the_process_survives_a_failed_take() {
    let r = Child::new("owned-file").env("LISTEN_FDS", 1).run();
    assert_eq!(r["result"], "ok:1");
    assert!(r["take0"].contains("is a regular file"), "{}", r["take0"]);
    assert_eq!(r["after_takes.fd3"], "cloexec");
    assert_eq!(r["file_write_after_failed_take"], "ok");
}

fn fds_for_another_process_are_never_touched_whatever_they_are() {
    let (read, _write) = pipe();
    let r = Child::new("receive")
        .without_pid()
        .fd(3, read)
        .fd(4, File::open("/dev/null").unwrap())
        .env("LISTEN_PID", 1)
        .env("LISTEN_FDS", 2)
        .run();
    assert_eq!(r["result"], "ok:0");
    assert_eq!(r["after_drop.fd3"], "inherit");
    assert_eq!(r["after_drop.fd4"], "inherit");
}

// ---------------------------------------------------------------------------------------------
// In-process: the pure parser with values no environment can carry

fn one_megabyte_values_reach_the_parser_without_harm() {
    let mb = 1 << 20;
    let nines = "9".repeat(mb);
    let junk = "\u{fffd}".repeat(mb / 3);
    let zeros_then_two = format!("{}2", "0".repeat(mb));
    let names = "a:".repeat(mb / 2);
    let escapes = "\\:".repeat(mb / 2);
    let backslashes = "\\".repeat(mb + 1);
    let vars = |pid: Option<&'static str>, fds: &str, names: Option<&str>| {
        let vars = Vars {
            listen_pid: pid,
            listen_fds: Some(fds),
            listen_fdnames: names,
            ..Vars::default()
        };
        env::parse(&vars, 100, None, false)
            .map(|p| p.len())
            .map_err(|e| (e.errno(), e.to_string()))
    };
    let short = |r: Result<usize, (i32, String)>| {
        if let Err((_, msg)) = &r {
            assert!(msg.len() < 2000, "{} byte message", msg.len());
        }
        r.map_err(|(errno, _)| errno)
    };
    assert_eq!(short(vars(Some("100"), &nines, None)), Err(libc::ERANGE));
    assert_eq!(short(vars(Some("100"), &junk, None)), Err(libc::EINVAL));
    assert_eq!(short(vars(Some("100"), &zeros_then_two, None)), Ok(2));
    assert_eq!(
        short(vars(Some("100"), "1", Some(&names))),
        Err(libc::EINVAL)
    );
    assert_eq!(short(vars(Some("100"), "1", Some(&escapes))), Ok(1));
    assert_eq!(
        short(vars(Some("100"), "1", Some(&backslashes))),
        Err(libc::EINVAL)
    );
    let pid = Vars {
        listen_pid: Some(&nines),
        listen_fds: Some("1"),
        ..Vars::default()
    };
    let e = env::parse(&pid, 100, None, false).unwrap_err();
    assert_eq!(e.errno(), libc::ERANGE);
    assert!(e.to_string().len() < 2000);
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        child(&mode);
        return;
    }
    child::run_tests(&[
        (
            "values_of_100_kb_are_refused_on_one_bounded_line",
            values_of_100_kb_are_refused_on_one_bounded_line,
        ),
        (
            "names_of_100_kb_are_received_or_refused_like_libsystemd",
            names_of_100_kb_are_received_or_refused_like_libsystemd,
        ),
        (
            "non_utf8_bytes_are_an_error_naming_the_variable_or_a_replaced_name",
            non_utf8_bytes_are_an_error_naming_the_variable_or_a_replaced_name,
        ),
        (
            "huge_counts_stop_at_the_first_closed_fd_and_close_nothing",
            huge_counts_stop_at_the_first_closed_fd_and_close_nothing,
        ),
        (
            "a_regular_file_or_a_pipe_is_diagnosed_and_left_open",
            a_regular_file_or_a_pipe_is_diagnosed_and_left_open,
        ),
        (
            "a_closed_fd_in_the_middle_leaves_the_others_alone",
            a_closed_fd_in_the_middle_leaves_the_others_alone,
        ),
        (
            "a_name_count_mismatch_closes_nothing",
            a_name_count_mismatch_closes_nothing,
        ),
        (
            "a_second_receiver_gets_an_error_and_the_first_keeps_its_fds",
            a_second_receiver_gets_an_error_and_the_first_keeps_its_fds,
        ),
        (
            "an_fd_already_owned_by_the_process_survives_a_failed_take",
            an_fd_already_owned_by_the_process_survives_a_failed_take,
        ),
        (
            "fds_for_another_process_are_never_touched_whatever_they_are",
            fds_for_another_process_are_never_touched_whatever_they_are,
        ),
        (
            "one_megabyte_values_reach_the_parser_without_harm",
            one_megabyte_values_reach_the_parser_without_harm,
        ),
    ]);
}
