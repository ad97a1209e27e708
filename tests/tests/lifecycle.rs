//! Readiness and zero-downtime restart, end to end: demo-server sends `READY=1` over the
//! private `NOTIFY_SOCKET` of `sd-launch --ready`, and `sd-launch --restart` replaces it on
//! SIGHUP while clients keep sending requests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sd_launch::Launch;
use sd_launch_tests::{ChildGuard, PidGuard, alive, bin, get_tcp, wait_gone};

fn info_pid(addr: SocketAddr) -> u32 {
    let r = get_tcp(addr, "/info").expect("GET /info");
    let info: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    info["pid"].as_u64().expect("pid") as u32
}

#[test]
fn ready_returns_once_demo_server_serves() {
    let server = Launch::new(bin("demo-server"))
        .stderr(sd_launch::Stdio::null())
        .ready(Duration::from_secs(30))
        .spawn()
        .expect("demo-server sends READY=1");
    assert_eq!(info_pid(server.local_addr(0)), server.pid());
}

#[test]
fn ready_counts_a_notification_from_the_daemons_child() {
    // A shell wrapper that does not exec: demo-server is the shell's child and sends
    // READY=1 from its own pid. Without LISTEN_PID (the wrapper's pid would not match),
    // demo-server needs --lenient.
    let server = Launch::new("sh")
        .args(["-c", "\"$0\" --lenient; exit 0"])
        .arg(bin("demo-server"))
        .no_pid(true)
        .stderr(sd_launch::Stdio::null())
        .ready(Duration::from_secs(30))
        .spawn()
        .expect("a descendant's READY=1 counts");
    let daemon = info_pid(server.local_addr(0));
    assert_ne!(daemon, server.pid(), "served by the wrapper's child");
    let _guard = PidGuard(daemon);
}

#[test]
fn sd_launch_ready_prints_after_ready_and_fails_clearly_otherwise() {
    let out = Command::new(bin("sd-launch"))
        .args(["--ready", "--"])
        .arg(bin("demo-server"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LAUNCHED_PID="))
        .and_then(|p| p.parse().ok())
        .expect("LAUNCHED_PID");
    let _guard = PidGuard(pid);
    let port: u16 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LAUNCHED_PORT="))
        .and_then(|p| p.parse().ok())
        .expect("LAUNCHED_PORT");
    assert_eq!(info_pid(([127, 0, 0, 1], port).into()), pid);

    // A daemon that never notifies: exit 6 after the timeout, nothing on stdout, and the
    // daemon is gone (it was killed, not left running).
    let out = Command::new(bin("sd-launch"))
        .args(["--ready=0.3", "--", "sleep", "30"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not send READY=1"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Clients that keep sending requests, each on a new connection, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match get_tcp(addr, "/healthz") {
                            Ok(r) if r.status == 200 && r.body == "ok\n" => {
                                ok.fetch_add(1, Ordering::Relaxed)
                            }
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stop the clients; (answered, failed).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child of ours that we have not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// Wait (bounded) until the server at `addr` answers from a pid other than `old`.
fn wait_new_pid(addr: SocketAddr, old: u32) -> u32 {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let pid = info_pid(addr);
        if pid != old {
            return pid;
        }
        assert!(Instant::now() < end, "still served by {old}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ten_restarts_under_load_fail_not_one_request() {
    let mut launcher = Command::new(bin("sd-launch"))
        .args(["--restart", "--ready", "--stderr", "/dev/null", "--"])
        .arg(bin("demo-server"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(launcher.stdout.take().unwrap()).lines();
    let launcher = ChildGuard(launcher);
    let port: u16 = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("LAUNCHED_PORT=")
        .expect("LAUNCHED_PORT first")
        .parse()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut pid = info_pid(addr);
    let mut pids = vec![pid];

    let load = Load::start(addr, 4);
    for _ in 0..10 {
        signal(launcher.0.id(), libc::SIGHUP);
        pid = wait_new_pid(addr, pid);
        pids.push(pid);
    }
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 0);

    // SIGTERM stops the last daemon and sd-launch exits with its status (0: drained).
    let mut launcher = launcher;
    signal(launcher.0.id(), libc::SIGTERM);
    let status = launcher.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    for pid in pids {
        assert!(wait_gone(pid), "daemon {pid} left running");
    }
    eprintln!("sd-launch --restart: 10 restarts, {ok} requests answered, 0 failed");
}

/// The alternative without socket passing: the daemon binds its own port, and a restart is
/// "stop it, start a new one on the same port". Reports the failures, asserts nothing about
/// their number (it depends on timing), only that the comparison ran.
#[test]
fn restart_by_rebinding_for_comparison() {
    let addr = sd_launch_tests::free_loopback_addr();
    let start = || {
        let child = Command::new(bin("demo-server"))
            .args(["--listen", &addr.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let guard = ChildGuard(child);
        let end = Instant::now() + Duration::from_secs(30);
        while get_tcp(addr, "/healthz").is_err() {
            assert!(Instant::now() < end, "demo-server did not bind {addr}");
            thread::sleep(Duration::from_millis(10));
        }
        guard
    };
    let mut server = start();
    let load = Load::start(addr, 4);
    for _ in 0..10 {
        signal(server.0.id(), libc::SIGTERM);
        server.0.wait().unwrap();
        server = start();
    }
    let (ok, failed) = load.finish();
    assert!(alive(server.0.id()));
    eprintln!("restart by rebinding: 10 restarts, {ok} answered, {failed} failed");
}

#[test]
fn on_exit_restarts_a_crashed_daemon_and_clients_wait_in_the_backlog() {
    let mut launcher = Command::new(bin("sd-launch"))
        .args(["--restart=on-exit", "--stderr", "/dev/null", "--"])
        .arg(bin("demo-server"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(launcher.stdout.take().unwrap()).lines();
    let stderr = launcher.stderr.take().unwrap();
    let mut launcher = ChildGuard(launcher);
    let port: u16 = lines.next().unwrap().unwrap()["LAUNCHED_PORT=".len()..]
        .parse()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let first = info_pid(addr);
    signal(first, libc::SIGKILL);
    // The socket stays open: this request waits in the backlog until the new daemon runs.
    let second = wait_new_pid(addr, first);
    assert_ne!(second, first);
    signal(launcher.0.id(), libc::SIGTERM);
    assert_eq!(launcher.0.wait().unwrap().code(), Some(0));
    let log: Vec<String> = BufReader::new(stderr).lines().map(Result::unwrap).collect();
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("(pid {first}) exited")) && l.contains("restarting in")),
        "{log:?}"
    );
    assert!(wait_gone(second));
}
