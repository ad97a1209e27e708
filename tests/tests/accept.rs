//! One demo-server per connection: `sd-launch --accept` (connection at fd 3) and
//! `sd-launch --accept --inetd` (connection on stdin/stdout), and the same demo-server under
//! systemd's `systemd-socket-activate -a --inetd`.

use sd_launch_tests::{ChildGuard, Response, bin, get_tcp, tool, wait_gone};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn info(r: &Response) -> serde_json::Value {
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

/// `sd-launch <args>` in the background, with its printed port and pid.
fn sd_launch(args: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut child = ChildGuard(
        Command::new(bin("sd-launch"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let (mut port, mut pid) = (None, None);
    while pid.is_none() {
        let mut line = String::new();
        assert_ne!(out.read_line(&mut line).unwrap(), 0, "sd-launch exited");
        match line.trim_end().split_once('=') {
            Some(("LAUNCHED_PORT", p)) => port = Some(p.parse::<u16>().unwrap()),
            Some(("LAUNCHED_PID", p)) => pid = Some(p.parse::<u32>().unwrap()),
            _ => panic!("unexpected output line {line:?}"),
        }
    }
    // Accept mode prints sd-launch's own pid: the daemons come and go with connections.
    assert_eq!(pid, Some(child.0.id()));
    (child, ([127, 0, 0, 1], port.unwrap()).into())
}

/// Several requests, each on its own connection: each answered by its own demo-server,
/// which serves `fd` and is gone once its connection is done.
fn each_request_gets_its_own_server(
    launcher_pid: u32,
    mut get: impl FnMut() -> Response,
    fd: i32,
    name: &str,
) {
    let infos: Vec<serde_json::Value> = (0..3).map(|_| info(&get())).collect();
    let mut pids: Vec<u64> = infos.iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    for i in &infos {
        assert_eq!(i["activated"], true, "{i}");
        assert_eq!(i["sockets"].as_array().unwrap().len(), 1, "{i}");
        assert_eq!(i["sockets"][0]["fd"], fd, "{i}");
        assert_eq!(i["sockets"][0]["name"], name, "{i}");
        assert_eq!(i["sockets"][0]["listening"], false, "{i}");
        assert_ne!(i["pid"], launcher_pid);
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "one demo-server per connection: {infos:?}");
    for pid in pids {
        assert!(
            wait_gone(pid as u32),
            "demo-server {pid} outlived its connection"
        );
    }
}

fn stop(mut launcher: ChildGuard, addr: SocketAddr) {
    // SAFETY: kill with our own unreaped child's pid and a valid signal.
    let r = unsafe { libc::kill(launcher.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    let status = launcher.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stopped by SIGTERM: exit 0");
    assert!(
        get_tcp(addr, "/").is_err(),
        "nothing listens after the stop"
    );
}

#[test]
fn sd_launch_accept_starts_a_demo_server_per_connection_with_it_at_fd_3() {
    let demo = bin("demo-server");
    let (launcher, addr) = sd_launch(&["--accept", "--", demo.to_str().unwrap()]);
    let pid = launcher.0.id();
    each_request_gets_its_own_server(pid, || get_tcp(addr, "/info").unwrap(), 3, "connection");
    assert_eq!(
        get_tcp(addr, "/").unwrap().body,
        "Hello from demo-server!\n"
    );
    stop(launcher, addr);
}

#[test]
fn sd_launch_accept_inetd_serves_demo_server_inetd_over_stdin_with_curl() {
    let Some(curl) = tool("curl", "curl") else {
        return;
    };
    let demo = bin("demo-server");
    let (launcher, addr) = sd_launch(&[
        "--accept",
        "--inetd",
        "--",
        demo.to_str().unwrap(),
        "--inetd",
    ]);
    let url = format!("http://{addr}/info");
    let curl_get = || {
        let out = Command::new(&curl)
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        Response {
            status: code.parse().unwrap(),
            body: body.to_owned(),
        }
    };
    each_request_gets_its_own_server(launcher.0.id(), curl_get, 0, "stdin");
    stop(launcher, addr);
}

#[test]
fn demo_server_inetd_under_systemd_socket_activate_accept_inetd() {
    let Some(ssa) = tool("systemd-socket-activate", "systemd") else {
        return;
    };
    let demo = bin("demo-server");
    // systemd-socket-activate rejects port 0: pick a free port, retry if we lose a race.
    for _ in 0..5 {
        let addr = sd_launch_tests::free_loopback_addr();
        let mut launcher = ChildGuard(
            Command::new(&ssa)
                .args(["-l", &addr.to_string(), "-a", "--inetd"])
                .arg(&demo)
                .arg("--inetd")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // It binds after it starts: the first request may come too early.
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Ok(r) = get_tcp(addr, "/info") {
                break Some(r);
            }
            if launcher.0.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break None; // lost the port to someone else
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(first) = first else { continue };
        let mut pending = Some(first);
        let pid = launcher.0.id();
        each_request_gets_its_own_server(
            pid,
            || {
                pending
                    .take()
                    .unwrap_or_else(|| get_tcp(addr, "/info").unwrap())
            },
            0,
            "stdin",
        );
        return;
    }
    panic!("could not start systemd-socket-activate on a free port in 5 tries");
}
