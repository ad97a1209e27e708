//! Interop with the reference implementations, both directions:
//! demo-server (our receiver) under systemd's own `systemd-socket-activate`, and `sd-launch`
//! (our launcher) starting a third-party daemon from Debian that speaks the protocol (lighttpd).

use sd_launch::Launch;
use sd_launch_tests::{ChildGuard, Response, bin, get_tcp, get_unix, tool, wait_gone};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Poll `request` until it succeeds; `systemd-socket-activate` binds, then execs the daemon on
/// the first connection. Panics (with the launcher's stderr) if the launcher exits first.
fn first_answer(
    child: &mut ChildGuard,
    mut request: impl FnMut() -> std::io::Result<Response>,
) -> Option<Response> {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Ok(r) = request() {
            return Some(r);
        }
        if child.0.try_wait().unwrap().is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no answer within 30 s");
}

fn ssa(args: &[&str]) -> Option<Command> {
    let ssa = tool("systemd-socket-activate", "systemd")?;
    let mut cmd = Command::new(ssa);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Some(cmd)
}

fn info(r: &Response) -> serde_json::Value {
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn demo_server_under_systemd_socket_activate_tcp_with_fdname() {
    // systemd-socket-activate rejects port 0, so pick a free port and retry if we lose a race.
    for _ in 0..5 {
        let addr = sd_launch_tests::free_loopback_addr();
        let Some(mut cmd) = ssa(&["-l", &addr.to_string(), "--fdname", "web"]) else {
            return;
        };
        let mut child = ChildGuard(cmd.arg(bin("demo-server")).spawn().unwrap());
        let Some(r) = first_answer(&mut child, || get_tcp(addr, "/info")) else {
            continue;
        };
        let info = info(&r);
        // systemd-socket-activate execs the daemon in its own process: LISTEN_PID is that pid.
        assert_eq!(info["pid"], child.0.id());
        assert_eq!(info["activated"], true);
        assert_eq!(info["sockets"][0]["name"], "web");
        assert_eq!(info["sockets"][0]["kind"], "tcp");
        assert_eq!(info["sockets"][0]["local"], addr.to_string());
        assert_eq!(
            get_tcp(addr, "/").unwrap().body,
            "Hello from demo-server!\n"
        );
        return;
    }
    panic!("could not start systemd-socket-activate on a free port in 5 tries");
}

#[test]
fn demo_server_under_systemd_socket_activate_unix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.sock");
    let Some(mut cmd) = ssa(&["-l", path.to_str().unwrap(), "--fdname", "local"]) else {
        return;
    };
    let mut child = ChildGuard(cmd.arg(bin("demo-server")).spawn().unwrap());
    let r = first_answer(&mut child, || get_unix(&path, "/info")).expect("launcher exited");
    let info = info(&r);
    assert_eq!(info["pid"], child.0.id());
    assert_eq!(info["sockets"][0]["name"], "local");
    assert_eq!(info["sockets"][0]["kind"], "unix-stream");
    assert_eq!(get_unix(&path, "/healthz").unwrap().body.trim(), "ok");
}

#[test]
fn demo_server_under_systemd_socket_activate_accept_serves_one_connection_per_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accept.sock");
    let Some(mut cmd) = ssa(&["-a", "-l", path.to_str().unwrap()]) else {
        return;
    };
    let mut child = ChildGuard(cmd.arg(bin("demo-server")).spawn().unwrap());
    let first =
        info(&first_answer(&mut child, || get_unix(&path, "/info")).expect("launcher exited"));
    let second = info(&get_unix(&path, "/info").unwrap());
    // Each connection got its own demo-server, with the connected socket at fd 3.
    for i in [&first, &second] {
        assert_eq!(i["activated"], true);
        assert_eq!(i["sockets"][0]["fd"], 3);
        assert_eq!(i["sockets"][0]["listening"], false);
        assert_ne!(i["pid"], child.0.id());
    }
    assert_ne!(first["pid"], second["pid"]);
    // A connection's server exits once its connection is done.
    for i in [&first, &second] {
        let pid = i["pid"].as_u64().unwrap() as u32;
        assert!(
            wait_gone(pid),
            "per-connection demo-server {pid} kept running"
        );
    }
}

fn lighttpd_config(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(
        root.join("index.html"),
        "hello from lighttpd via sd-launch\n",
    )
    .unwrap();
    let conf = dir.join("lighttpd.conf");
    // server.port is required by the parser but unused: with socket activation lighttpd
    // serves the passed sockets instead of binding its own.
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{}\"\nserver.port = 1\nserver.systemd-socket-activation = \"enable\"\n\
             server.errorlog = \"{}\"\nindex-file.names = (\"index.html\")\n",
            root.display(),
            dir.join("error.log").display()
        ),
    )
    .unwrap();
    conf
}

#[test]
fn sd_launch_library_starts_lighttpd() {
    let Some(lighttpd) = tool("lighttpd", "lighttpd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = lighttpd_config(dir.path());
    let launched = Launch::new(lighttpd)
        .args(["-D", "-f"])
        .arg(&conf)
        .spawn()
        .expect("spawn lighttpd");
    let r = get_tcp(launched.local_addr(0), "/").unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from lighttpd via sd-launch\n")
    );
    let pid = launched.pid();
    drop(launched);
    assert!(wait_gone(pid));
}

#[test]
fn sd_launch_cli_starts_lighttpd_in_a_shell_script() {
    let Some(lighttpd) = tool("lighttpd", "lighttpd") else {
        return;
    };
    let Some(curl) = tool("curl", "curl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = lighttpd_config(dir.path());
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            r#"set -e
            export $("$SD_LAUNCH" -- "$LIGHTTPD" -D -f "$CONF")
            echo "$LAUNCHED_PID"
            "$CURL" -sS -o /dev/null -w '%{http_code}\n' http://127.0.0.1:$LAUNCHED_PORT/
            "$CURL" -sS http://127.0.0.1:$LAUNCHED_PORT/
            kill $LAUNCHED_PID"#,
        )
        .env("SD_LAUNCH", bin("sd-launch"))
        .env("LIGHTTPD", lighttpd)
        .env("CONF", &conf)
        .env("CURL", curl)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let pid: u32 = lines.next().and_then(|p| p.parse().ok()).expect("pid line");
    let _guard = sd_launch_tests::PidGuard(pid);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.next(), Some("200"));
    assert_eq!(lines.next(), Some("hello from lighttpd via sd-launch"));
    assert!(wait_gone(pid));
}
