//! The seed's round trip: `sd-launch` starts `demo-server` on a free port, a client talks to
//! it, and nothing is left running afterwards. Once as a shell script, once through the Rust API.

use sd_launch::Launch;
use sd_launch_tests::{PidGuard, bin, get_tcp, get_unix, wait_gone};
use std::process::Command;

#[test]
fn shell_flow_export_curl_kill() {
    let curl = match sd_launch_tests::tool("curl", "curl") {
        Some(c) => c,
        None => return,
    };
    let script = r#"
        set -e
        export $("$SD_LAUNCH" -- "$DEMO_SERVER")
        echo "pid=$LAUNCHED_PID"
        "$CURL" -sS --retry 0 http://127.0.0.1:$LAUNCHED_PORT/
        "$CURL" -sS http://127.0.0.1:$LAUNCHED_PORT/info
        echo
        kill $LAUNCHED_PID
    "#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("SD_LAUNCH", bin("sd-launch"))
        .env("DEMO_SERVER", bin("demo-server"))
        .env("CURL", curl)
        .output()
        .expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let pid: u32 = lines
        .next()
        .and_then(|l| l.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no pid line in {stdout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let _guard = PidGuard(pid);
    assert!(
        out.status.success(),
        "script failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.next(), Some("Hello from demo-server!"));
    let info: serde_json::Value = serde_json::from_str(lines.next().expect("info line")).unwrap();
    // The receiver is strict: "activated" means LISTEN_PID matched the daemon's own pid,
    // which is the LAUNCHED_PID the shell saw.
    assert_eq!(info["pid"], pid);
    assert_eq!(info["activated"], true);
    assert_eq!(info["sockets"][0]["fd"], 3);
    assert_eq!(info["sockets"][0]["kind"], "tcp");
    assert!(wait_gone(pid), "demo-server {pid} still running after kill");
}

#[test]
fn rust_api_tcp_and_unix_then_drop_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("demo.sock");
    let launched = Launch::new(bin("demo-server"))
        .listen_on("127.0.0.1:0")
        .listen_on(sock.to_str().unwrap())
        .stderr(sd_launch::Stdio::null())
        .spawn()
        .expect("spawn demo-server");
    let pid = launched.pid();

    let tcp = get_tcp(launched.local_addr(0), "/").unwrap();
    assert_eq!(
        (tcp.status, tcp.body.as_str()),
        (200, "Hello from demo-server!\n")
    );
    let health = get_unix(&sock, "/healthz").unwrap();
    assert_eq!(health.status, 200);
    let info: serde_json::Value =
        serde_json::from_str(&get_unix(&sock, "/info").unwrap().body).unwrap();
    assert_eq!(info["pid"], pid);
    assert_eq!(info["sockets"][0]["kind"], "tcp");
    assert_eq!(info["sockets"][1]["fd"], 4);
    assert_eq!(info["sockets"][1]["kind"], "unix-stream");

    drop(launched);
    assert!(
        wait_gone(pid),
        "demo-server {pid} survived dropping its Launched handle"
    );
}

#[test]
fn named_sockets_reach_info_in_order() {
    let launched = Launch::new(bin("demo-server"))
        .listen(
            "127.0.0.1:0"
                .parse::<sd_launch::SocketSpec>()
                .unwrap()
                .name("http"),
        )
        .listen(
            "[::1]:0"
                .parse::<sd_launch::SocketSpec>()
                .unwrap()
                .name("admin"),
        )
        .stderr(sd_launch::Stdio::null())
        .spawn()
        .expect("spawn demo-server");
    let info: serde_json::Value =
        serde_json::from_str(&get_tcp(launched.local_addr(0), "/info").unwrap().body).unwrap();
    let names: Vec<_> = info["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, ["http", "admin"]);
    assert_eq!(
        info["sockets"][1]["local"],
        launched.local_addr(1).to_string()
    );
    assert_eq!(
        get_tcp(launched.local_addr(1), "/healthz").unwrap().status,
        200
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut launched = Launch::new(bin("demo-server"))
        .env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn demo-server");
    let addr = launched.local_addr(0);
    let slow = std::thread::spawn(move || get_tcp(addr, "/slow?ms=1500"));
    // Wait until the server has read the request (its debug log says so), then stop it.
    let seen = (0..1500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/slow?ms=1500")
    });
    assert!(
        seen,
        "the server never logged the request: {:?}",
        std::fs::read_to_string(&log)
    );
    launched.signal(libc::SIGTERM).unwrap();
    let response = slow
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "slept 1500 ms\n")
    );
    assert_eq!(launched.wait().unwrap().code(), Some(0));
    // The listener closed with the shutdown: new connections are refused.
    assert!(get_tcp(addr, "/").is_err());
}

/// Launchers such as `systemfd --no-pid` omit LISTEN_PID: strict demo-server ignores the
/// socket and says why (then binds `--listen`); `--lenient` serves it.
#[test]
fn lenient_mode_serves_a_launch_without_listen_pid() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("strict.log");
    let strict = Launch::new(bin("demo-server"))
        .args(["--listen", "127.0.0.1:0"])
        .no_pid(true)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn demo-server");
    let lenient = Launch::new(bin("demo-server"))
        .args(["--lenient", "--listen", "127.0.0.1:0"])
        .no_pid(true)
        .stderr(sd_launch::Stdio::null())
        .spawn()
        .expect("spawn demo-server --lenient");

    let reply = get_tcp(lenient.local_addr(0), "/info").unwrap();
    let info: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(info["activated"], true);
    assert_eq!(info["pid"], lenient.pid());

    // The strict one logs the receiver's reason once it has started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("serving") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        text.contains("LISTEN_FDS is set but LISTEN_PID is not"),
        "strict demo-server log: {text}"
    );
    assert!(
        text.contains("name=fallback"),
        "strict demo-server log: {text}"
    );
    drop(strict);
}
