//! What users see when things go wrong: a clear one-line message, a distinct exit code, no
//! panic, and no process left behind.

use sd_launch::{Launch, SocketSpec, Transport};
use sd_launch_tests::{bin, wait_gone};
use std::process::{Command, Output};

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The error is one line naming the problem; no Rust panic text.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = stderr_of(out);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err:?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err:?}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

#[test]
fn launching_a_missing_program_exits_127_and_prints_no_variables() {
    let out = Command::new(bin("sd-launch"))
        .args(["--", "/nonexistent/no-such-daemon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "stderr: {}", stderr_of(&out));
    assert!(
        out.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_one_line_error(&out, "no-such-daemon");
}

#[test]
fn launching_a_non_executable_file_exits_126_and_prints_no_variables() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(bin("sd-launch"))
        .arg("--")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "stderr: {}", stderr_of(&out));
    assert!(out.stdout.is_empty());
    assert_one_line_error(&out, "not-executable");
}

#[test]
fn launching_a_missing_program_through_the_api_is_an_error() {
    let err = Launch::new("/nonexistent/no-such-daemon")
        .spawn()
        .unwrap_err();
    assert!(err.to_string().contains("no-such-daemon"), "{err}");
}

#[test]
fn a_server_that_exits_at_once_reports_its_status() {
    // demo-server refuses a datagram socket (it serves streams): it exits 2 straight away.
    let mut launched = Launch::new(bin("demo-server"))
        .listen(SocketSpec::loopback().transport(Transport::Datagram))
        .stderr(sd_launch::Stdio::null())
        .spawn()
        .expect("the spawn itself succeeds");
    let status = launched.wait().unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn foreground_mode_passes_on_the_exit_code_of_a_server_that_exits_at_once() {
    let out = Command::new(bin("sd-launch"))
        .args(["--foreground", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr_of(&out));
}

/// Start demo-server directly from `sh` with LISTEN_PID set to its own pid (`exec` keeps it).
fn demo_with_env(env: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ {env} exec \"$0\" --listen 127.0.0.1:0"
        ))
        .arg(bin("demo-server"))
        .output()
        .unwrap()
}

#[test]
fn malformed_listen_fds_is_one_line_and_exit_2() {
    let out = demo_with_env("LISTEN_FDS=abc");
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr_of(&out));
    assert_one_line_error(&out, "LISTEN_FDS");
}

#[test]
fn listen_fds_naming_closed_fds_is_exit_2() {
    // fds 3..12 are not open in the child: the receiver reports EBADF-like, not a crash.
    let out = demo_with_env("LISTEN_FDS=10");
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("panicked"));
}

#[test]
fn fdnames_count_mismatch_is_exit_2() {
    let out = Command::new("sh")
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=a:b exec \"$0\" 3</dev/null")
        .arg(bin("demo-server"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr_of(&out));
    assert_one_line_error(&out, "LISTEN_FDNAMES");
}

#[test]
fn a_file_instead_of_a_socket_at_fd_3_is_exit_2() {
    let out = Command::new("sh")
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" 3</dev/null")
        .arg(bin("demo-server"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("panicked"));
}

#[test]
fn a_failing_test_still_leaves_no_daemon() {
    let launched = Launch::new(bin("demo-server"))
        .stderr(sd_launch::Stdio::null())
        .spawn()
        .unwrap();
    let pid = launched.pid();
    let result = std::panic::catch_unwind(move || {
        let _keep = launched;
        panic!("a test failing while its daemon runs");
    });
    assert!(result.is_err());
    assert!(wait_gone(pid), "daemon {pid} outlived the panicking test");
}
