//! Process-level tests: fds are really passed to a child process, which receives them with
//! this crate and reports what it saw. The child is this test binary itself, re-executed with
//! `LISTENFD_TEST_CHILD` set; `LISTEN_PID` is set with `sh -c 'LISTEN_PID=$$ exec ...'`, as
//! a launcher would. A custom harness (`harness = false`) keeps the child single-threaded, like
//! a daemon at the top of `main`.
//!
//! Covers the spec rows that need a process: EBADF for a closed fd, FD_CLOEXEC on every
//! passed fd, removal of the variables on success and error paths, plus the typed checks.

use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::process::Command;

use listenfd_core::{ListenFds, Options, Which};

mod child;

use child::{CHILD, Child, fd_state};

// ---------------------------------------------------------------------------------------------
// Child side

/// Child spec: `opt,opt;take,take` with opts `lenient`, `keep-env`, `threads`, `from-vars`
/// (receive with `Options::from_vars` from the values of the environment, copied) and takes
/// `kind:index-or-name`.
fn child(spec: &str) {
    let (opts, takes) = spec.split_once(';').unwrap_or((spec, ""));
    let mut options = Options::new();
    let mut _thread = None;
    let mut from_vars = false;
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "lenient" => options = options.lenient(true),
            "keep-env" => options = options.unset_env(false),
            "from-vars" => from_vars = true,
            "threads" => {
                _thread = Some(std::thread::spawn(|| {
                    std::thread::sleep(std::time::Duration::from_secs(30))
                }))
            }
            other => panic!("unknown child option {other}"),
        }
    }
    let result = if from_vars {
        let saved: Vec<Option<String>> = listenfd_core::env::VARIABLES
            .iter()
            .map(|name| std::env::var(name).ok())
            .collect();
        let vars = listenfd_core::env::Vars {
            listen_pid: saved[0].as_deref(),
            listen_pidfdid: saved[1].as_deref(),
            listen_fds: saved[2].as_deref(),
            listen_fdnames: saved[3].as_deref(),
            listen_fds_first_fd: saved[4].as_deref(),
        };
        // SAFETY: the values are this child's own environment, read at the top of main; the
        // parent put the announced fds in place at exec, and nothing in this process has
        // opened, wrapped or closed any of them since.
        unsafe { options.from_vars(&vars) }
    } else {
        options.from_env()
    };
    report(
        "result",
        match &result {
            Ok(fds) => format!("ok:{}", fds.len()),
            Err(e) => format!("err:{}:{e}", e.errno().unwrap_or(0)),
        },
    );
    for var in [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "LISTEN_FDS_FIRST_FD",
    ] {
        report(
            var,
            if std::env::var_os(var).is_some() {
                "set"
            } else {
                "unset"
            },
        );
    }
    for fd in 3..=6 {
        report(&format!("fd{fd}"), fd_state(fd));
    }
    let Ok(mut fds) = result else { return };
    report("env_unset", fds.env_unset());
    // Nothing passed to us may reach a process we start.
    let out = Command::new("sh")
        .arg("-c")
        .arg("for f in 3 4 5 6; do [ -e /proc/self/fd/$f ] && printf '%s ' $f; done; true")
        .output()
        .expect("run sh");
    report(
        "grandchild_fds",
        String::from_utf8_lossy(&out.stdout).trim(),
    );
    for (i, take) in takes.split(',').filter(|t| !t.is_empty()).enumerate() {
        let (kind, which) = take.split_once(':').expect("kind:which");
        let which = match which.parse::<usize>() {
            Ok(index) => Which::Index(index),
            Err(_) => Which::Name(which),
        };
        let outcome = match kind {
            "tcp_listener" => fds
                .tcp_listener(which)
                .map(|s| s.local_addr().unwrap().to_string()),
            "tcp_stream" => fds
                .tcp_stream(which)
                .map(|s| s.peer_addr().unwrap().to_string()),
            "udp_socket" => fds
                .udp_socket(which)
                .map(|s| s.local_addr().unwrap().to_string()),
            "unix_listener" => fds
                .unix_listener(which)
                .map(|s| format!("{:?}", s.local_addr().unwrap())),
            "take_fd" => fds.take_fd(which).map(|fd| fd.as_raw_fd().to_string()),
            other => panic!("unknown take {other}"),
        };
        report(
            &format!("take{i}"),
            match outcome {
                Ok(v) => format!("ok:{v}"),
                Err(e) => format!("err:{e}"),
            },
        );
    }
    report(
        "second",
        match ListenFds::from_env() {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("err:{e}"),
        },
    );
}

fn report(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{key}={value}").unwrap();
}

// ---------------------------------------------------------------------------------------------
// Parent side

fn tcp_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Whether this kernel gives pidfds unique inode ids (pidfs), so LISTEN_PIDFDID is compared.
fn pidfs_supported() -> bool {
    // SAFETY: plain syscall on our own pid.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: all-zero statfs is valid; fd is open until closed below.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid buffer, open fd.
    let rc = unsafe { libc::fstatfs(fd as RawFd, &mut sfs) };
    // SAFETY: we own fd.
    unsafe { libc::close(fd as RawFd) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type width differs between targets"
    )]
    let f_type = sfs.f_type as i64;
    rc == 0 && f_type == 0x5049_4446
}

// ---------------------------------------------------------------------------------------------
// The tests

fn listening_socket_is_received_with_cloexec_and_env_removed() {
    let listener = tcp_listener();
    let addr = listener.local_addr().unwrap();
    let r = Child::new(";tcp_listener:http")
        .fd(3, listener)
        .env("LISTEN_FDS", 1)
        .env("LISTEN_FDNAMES", "http")
        .run();
    assert_eq!(r["result"], "ok:1");
    assert_eq!(r["fd3"], "cloexec");
    assert_eq!(r["fd4"], "closed");
    assert_eq!(
        (
            r["LISTEN_PID"].as_str(),
            r["LISTEN_FDS"].as_str(),
            r["LISTEN_FDNAMES"].as_str()
        ),
        ("unset", "unset", "unset")
    );
    assert_eq!(r["env_unset"], "true");
    assert_eq!(
        r["grandchild_fds"], "",
        "a passed fd leaked into a grandchild"
    );
    assert_eq!(r["take0"], format!("ok:{addr}"));
    assert!(r["second"].contains("already claimed"), "{}", r["second"]);
}

fn closed_fd_is_ebadf_and_env_is_still_removed() {
    let r = Child::new("")
        .fd(3, tcp_listener())
        .env("LISTEN_FDS", 2)
        .run();
    assert!(
        r["result"].starts_with(&format!("err:{}:", libc::EBADF)),
        "{}",
        r["result"]
    );
    assert!(r["result"].contains("fd 4 is not open"), "{}", r["result"]);
    assert!(r["result"].contains("inherited"), "{}", r["result"]);
    // libsystemd sets FD_CLOEXEC in order and stops at the closed one; the fd stays open.
    assert_eq!(r["fd3"], "cloexec");
    assert_eq!(
        (r["LISTEN_PID"].as_str(), r["LISTEN_FDS"].as_str()),
        ("unset", "unset")
    );
}

fn dev_null_at_fd_3_is_diagnosed_and_not_closed() {
    let null = std::fs::File::open("/dev/null").unwrap();
    let r = Child::new(";tcp_listener:0,take_fd:0")
        .fd(3, null)
        .env("LISTEN_FDS", 1)
        .run();
    // Like libsystemd, receiving does not check the type (ListenSpecial= passes files).
    assert_eq!(r["result"], "ok:1");
    let err = &r["take0"];
    assert!(err.starts_with("err:LISTEN_FDS=1 but fd 3"), "{err}");
    assert!(
        err.contains("is a character device (/dev/null), not a listening TCP socket"),
        "{err}"
    );
    assert!(
        err.contains("inherited by a process that did not inherit the sockets"),
        "{err}"
    );
    assert_eq!(
        r["take1"], "ok:3",
        "the fd must still be there after the failed take"
    );
}

fn wrong_type_is_an_error_and_the_fd_can_be_taken_as_its_type() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let r = Child::new(";tcp_listener:0,udp_socket:0")
        .fd(3, udp)
        .env("LISTEN_FDS", 1)
        .run();
    assert!(
        r["take0"].contains(&format!(
            "is a UDP socket ({addr}), not a listening TCP socket"
        )),
        "{}",
        r["take0"]
    );
    assert_eq!(r["take1"], format!("ok:{addr}"));
}

fn connected_socket_is_not_accepted_as_a_listener() {
    let listener = tcp_listener();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server_side, _) = listener.accept().unwrap();
    let r = Child::new(";tcp_listener:0,tcp_stream:0")
        .fd(3, server_side)
        .env("LISTEN_FDS", 1)
        .run();
    assert!(
        r["take0"].contains("is a connected TCP socket"),
        "{}",
        r["take0"]
    );
    assert!(r["take0"].contains("accepted connection"), "{}", r["take0"]);
    assert_eq!(r["take1"], format!("ok:{}", client.local_addr().unwrap()));
}

fn take_by_name_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let unix = UnixListener::bind(&path).unwrap();
    let r = Child::new(";unix_listener:ctl,tcp_listener:web,tcp_listener:web")
        .fd(3, tcp_listener())
        .fd(4, unix)
        .env("LISTEN_FDS", 2)
        .env("LISTEN_FDNAMES", "web:ctl")
        .run();
    assert!(
        r["take0"].starts_with("ok:") && r["take0"].contains("ctl.sock"),
        "{}",
        r["take0"]
    );
    assert!(r["take1"].starts_with("ok:127.0.0.1:"), "{}", r["take1"]);
    assert!(r["take2"].contains("already taken"), "{}", r["take2"]);
}

fn fds_for_another_process_are_left_alone() {
    let r = Child::new("")
        .without_pid()
        .fd(3, tcp_listener())
        .env("LISTEN_PID", 1)
        .env("LISTEN_FDS", 1)
        .run();
    assert_eq!(r["result"], "ok:0");
    assert_eq!(
        r["fd3"], "inherit",
        "fds not meant for us must not be touched"
    );
    assert_eq!(
        r["LISTEN_PID"], "unset",
        "variables are removed on every path"
    );
}

fn strict_mode_needs_listen_pid() {
    let r = Child::new("")
        .without_pid()
        .fd(3, tcp_listener())
        .env("LISTEN_FDS", 1)
        .run();
    assert_eq!(r["result"], "ok:0");
    assert_eq!(r["fd3"], "inherit");
}

fn lenient_mode_accepts_missing_pid_and_first_fd() {
    let listener = tcp_listener();
    let addr = listener.local_addr().unwrap();
    let r = Child::new("lenient;tcp_listener:0")
        .without_pid()
        .fd(5, listener)
        .env("LISTEN_FDS", 1)
        .env("LISTEN_FDS_FIRST_FD", 5)
        .run();
    assert_eq!(r["result"], "ok:1");
    assert_eq!(r["fd5"], "cloexec");
    assert_eq!(r["LISTEN_FDS_FIRST_FD"], "unset");
    assert_eq!(r["take0"], format!("ok:{addr}"));
}

fn strict_mode_ignores_first_fd() {
    let r = Child::new("")
        .fd(5, tcp_listener())
        .env("LISTEN_FDS", 1)
        .env("LISTEN_FDS_FIRST_FD", 5)
        .run();
    assert!(r["result"].contains("fd 3 is not open"), "{}", r["result"]);
    assert_eq!(r["fd5"], "inherit");
}

fn keep_env_never_touches_the_environment() {
    let r = Child::new("keep-env")
        .fd(3, tcp_listener())
        .env("LISTEN_FDS", 1)
        .run();
    assert_eq!(r["result"], "ok:1");
    assert_eq!(
        (r["LISTEN_PID"].as_str(), r["LISTEN_FDS"].as_str()),
        ("set", "set")
    );
    assert_eq!(r["env_unset"], "false");
}

fn from_vars_receives_what_the_values_announce_and_leaves_the_environment() {
    let listener = tcp_listener();
    let addr = listener.local_addr().unwrap();
    let r = Child::new("from-vars;tcp_listener:http")
        .fd(3, listener)
        .env("LISTEN_FDS", 1)
        .env("LISTEN_FDNAMES", "http")
        .run();
    assert_eq!(r["result"], "ok:1");
    assert_eq!(r["fd3"], "cloexec");
    assert_eq!(r["take0"], format!("ok:{addr}"));
    assert_eq!(
        (r["LISTEN_PID"].as_str(), r["LISTEN_FDS"].as_str()),
        ("set", "set"),
        "from_vars neither reads nor changes the environment"
    );
    assert_eq!(r["env_unset"], "false");
    assert!(r["second"].contains("already claimed"), "{}", r["second"]);
}

fn multi_threaded_process_keeps_the_environment() {
    let r = Child::new("threads")
        .fd(3, tcp_listener())
        .env("LISTEN_FDS", 1)
        .run();
    assert_eq!(r["result"], "ok:1");
    assert_eq!(
        r["env_unset"], "false",
        "remove_var is unsound with other threads running"
    );
    assert_eq!(r["LISTEN_PID"], "set");
    assert_eq!(
        r["fd3"], "cloexec",
        "the fds are still protected from leaking"
    );
}

fn malformed_environment_is_einval_and_removed() {
    let r = Child::new("")
        .fd(3, tcp_listener())
        .env("LISTEN_FDS", "1x")
        .run();
    assert!(
        r["result"].starts_with(&format!("err:{}:LISTEN_FDS=\"1x\"", libc::EINVAL)),
        "{}",
        r["result"]
    );
    assert_eq!(r["LISTEN_FDS"], "unset");
    assert_eq!(r["fd3"], "inherit");
}

fn foreign_pidfd_id_means_not_for_us() {
    let r = Child::new("")
        .fd(3, tcp_listener())
        .env("LISTEN_FDS", 1)
        .env("LISTEN_PIDFDID", 1)
        .run();
    // Inode ids on pidfs are never 1; without pidfs, libsystemd skips the comparison.
    let expected = if pidfs_supported() { "ok:0" } else { "ok:1" };
    assert_eq!(r["result"], expected);
}

/// `target/<profile>/examples/inspect`, which `cargo test` builds (but not `--test process`).
fn inspect_example() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent()?.parent()?.join("examples").join("inspect");
    path.exists().then_some(path)
}

fn inspect_example_prints_the_documented_json() {
    let Some(example) = inspect_example() else {
        println!("(skipped: examples/inspect not built; plain `cargo test` builds it)");
        return;
    };
    let listener = tcp_listener();
    let addr = listener.local_addr().unwrap();
    let out = Child::new("")
        .fd(3, listener)
        .env("LISTEN_FDS", 1)
        .env("LISTEN_FDNAMES", "http")
        .output(Some(&example));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (head, tail) = stdout.trim_end().split_once(',').unwrap();
    assert!(head.starts_with(r#"{"pid":"#), "{stdout}");
    assert_eq!(
        tail,
        format!(
            r#""fds":[{{"fd":3,"name":"http","family":"inet","type":"stream","listening":true,"local":"{addr}"}}]}}"#
        )
    );

    let bad = Command::new(&example)
        .env("LISTEN_PID", "12x")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stdout.is_empty());
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(r#"LISTEN_PID="12x" is not a number"#),
        "{stderr}"
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
        return;
    }
    let tests: &[(&str, fn())] = &[
        (
            "listening_socket_is_received_with_cloexec_and_env_removed",
            listening_socket_is_received_with_cloexec_and_env_removed,
        ),
        (
            "closed_fd_is_ebadf_and_env_is_still_removed",
            closed_fd_is_ebadf_and_env_is_still_removed,
        ),
        (
            "dev_null_at_fd_3_is_diagnosed_and_not_closed",
            dev_null_at_fd_3_is_diagnosed_and_not_closed,
        ),
        (
            "wrong_type_is_an_error_and_the_fd_can_be_taken_as_its_type",
            wrong_type_is_an_error_and_the_fd_can_be_taken_as_its_type,
        ),
        (
            "connected_socket_is_not_accepted_as_a_listener",
            connected_socket_is_not_accepted_as_a_listener,
        ),
        ("take_by_name_in_any_order", take_by_name_in_any_order),
        (
            "fds_for_another_process_are_left_alone",
            fds_for_another_process_are_left_alone,
        ),
        ("strict_mode_needs_listen_pid", strict_mode_needs_listen_pid),
        (
            "lenient_mode_accepts_missing_pid_and_first_fd",
            lenient_mode_accepts_missing_pid_and_first_fd,
        ),
        ("strict_mode_ignores_first_fd", strict_mode_ignores_first_fd),
        (
            "keep_env_never_touches_the_environment",
            keep_env_never_touches_the_environment,
        ),
        (
            "from_vars_receives_what_the_values_announce_and_leaves_the_environment",
            from_vars_receives_what_the_values_announce_and_leaves_the_environment,
        ),
        (
            "multi_threaded_process_keeps_the_environment",
            multi_threaded_process_keeps_the_environment,
        ),
        (
            "malformed_environment_is_einval_and_removed",
            malformed_environment_is_einval_and_removed,
        ),
        (
            "inspect_example_prints_the_documented_json",
            inspect_example_prints_the_documented_json,
        ),
        (
            "foreign_pidfd_id_means_not_for_us",
            foreign_pidfd_id_means_not_for_us,
        ),
    ];
    child::run_tests(tests);
}
