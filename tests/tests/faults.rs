//! Faults: a daemon that dies while starting or in the middle of a request, and one that
//! ignores SIGTERM. Clients must fail fast (never hang in a backlog nobody accepts from), and
//! the test API must say what happened to the daemon.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use sd_launch::{Error, Launch};
use sd_launch_tests::{alive, bin, get_tcp};

#[test]
fn a_daemon_that_dies_while_starting_refuses_clients_and_says_why() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut daemon = Launch::new("sh")
        .args([
            "-c",
            "echo 'reading config.toml' >&2; echo 'bad port number' >&2; exit 3",
        ])
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let addr = daemon.local_addr(0);
    assert_eq!(daemon.wait().unwrap().code(), Some(3));
    // Our copy of the socket was closed when the daemon started: with the daemon gone, the
    // socket is gone, and a client is refused at once instead of waiting in a backlog.
    let err = TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    // The test API tells why.
    let err = daemon.ensure_running().unwrap_err();
    assert!(matches!(err, Error::Exited { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("| bad port number"), "{text}");
}

#[test]
fn a_daemon_killed_mid_request_fails_that_request_and_refuses_the_next() {
    let mut daemon = Launch::new(bin("demo-server"))
        .stderr(sd_launch::Stdio::null())
        .spawn()
        .unwrap();
    let addr = daemon.local_addr(0);
    assert_eq!(get_tcp(addr, "/healthz").unwrap().status, 200);
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /slow?ms=10000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The slow connection was accepted before this one (one accept loop, in order); whether
    // its request was read yet or not, killing the daemon must end it at once.
    assert_eq!(get_tcp(addr, "/healthz").unwrap().status, 200);
    let status = daemon.kill().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // The in-flight request ends with EOF or a reset, not the 30 s read timeout.
    let mut got = Vec::new();
    match slow.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "an answer after SIGKILL?"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset),
            "expected a reset, got {e}"
        ),
    }
    let err = TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn shutdown_escalates_to_sigkill_when_sigterm_is_ignored() {
    // The daemon says when its trap is set, so SIGTERM cannot come before it.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut daemon = Launch::new("sh")
        .args([
            "-c",
            "trap '' TERM; echo trapped; while :; do sleep 0.05; done",
        ])
        .stdout(std::os::fd::OwnedFd::from(theirs))
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(ours), &mut line).unwrap();
    assert_eq!(line, "trapped\n");
    let pid = daemon.pid();
    let status = daemon.shutdown(Duration::from_millis(300)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!alive(pid));
}

#[test]
fn shutdown_of_a_cooperative_daemon_is_a_clean_exit() {
    let mut daemon = Launch::new(bin("demo-server"))
        .stderr(sd_launch::Stdio::null())
        .ready(Duration::from_secs(30))
        .spawn()
        .unwrap();
    let status = daemon.shutdown(Duration::from_secs(30)).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "demo-server drains and exits 0 on SIGTERM"
    );
}
