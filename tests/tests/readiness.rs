//! Waiting for a daemon to be ready, by each strategy of the test library, as a test writer
//! uses them: the daemon under test is the real demo-server; failures come fast, with the
//! daemon's output in the error.

use std::time::{Duration, Instant};

use sd_launch::{Error, Launch, Wait};
use sd_launch_tests::{bin, get_tcp};

const LONG: Duration = Duration::from_secs(30);

fn demo() -> Launch {
    Launch::new(bin("demo-server"))
}

#[test]
fn each_strategy_returns_a_demo_server_that_answers() {
    for wait in [
        Wait::notify(),
        Wait::accepted(0),
        Wait::http("/healthz"),
        Wait::log("serving ").unwrap(),
    ] {
        let what = format!("{wait:?}");
        let server = demo().wait_until(wait, LONG).spawn().expect(&what);
        let r = get_tcp(server.addr(0).unwrap(), "/healthz").expect(&what);
        assert_eq!(r.status, 200, "{what}");
    }
}

#[test]
fn a_daemon_that_exits_first_fails_every_strategy_at_once_with_its_output() {
    for wait in [
        Wait::notify(),
        Wait::accepted(0),
        Wait::http("/healthz"),
        Wait::log("never printed").unwrap(),
    ] {
        let what = format!("{wait:?}");
        let started = Instant::now();
        let err = Launch::new("sh")
            .args(["-c", "echo 'cannot open config.toml' >&2; exit 3"])
            .wait_until(wait, LONG)
            .spawn()
            .unwrap_err();
        assert!(
            started.elapsed() < LONG / 2,
            "{what}: waited for the deadline"
        );
        assert!(matches!(err, Error::Exited { .. }), "{what}: {err}");
        assert_eq!(err.exit_code(), 5, "{what}");
        let text = err.to_string();
        assert!(text.contains("exit status: 3"), "{what}: {text}");
        assert!(text.contains("| cannot open config.toml"), "{what}: {text}");
    }
}

#[test]
fn a_daemon_never_ready_times_out_with_its_output_and_is_stopped() {
    for wait in [
        Wait::notify(),
        Wait::accepted(0),
        Wait::http("/healthz"),
        Wait::log("^ready$").unwrap(),
    ] {
        let what = format!("{wait:?}");
        let err = Launch::new("sh")
            .args(["-c", "echo 'still loading' >&2; exec sleep 30"])
            .wait_until(wait, Duration::from_millis(300))
            .spawn()
            .unwrap_err();
        assert!(matches!(err, Error::ReadyTimeout { .. }), "{what}: {err}");
        assert_eq!(err.exit_code(), 6, "{what}");
        assert!(err.to_string().contains("| still loading"), "{what}: {err}");
    }
}

#[test]
fn an_http_check_keeps_asking_while_the_answer_is_not_2xx() {
    // demo-server answers 404 here: never ready by this check, asked again until the end.
    let err = demo()
        .wait_until(Wait::http("/no-such-path"), Duration::from_millis(500))
        .spawn()
        .unwrap_err();
    assert!(matches!(err, Error::ReadyTimeout { .. }), "{err}");
    assert!(err.to_string().contains("GET /no-such-path"), "{err}");
}

#[test]
fn addresses_by_name_and_kind_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let server = demo()
        .listen(sd_launch::SocketSpec::loopback().name("http"))
        .listen(sd_launch::SocketSpec::new(sd_launch::Address::Unix(path.clone())).name("admin"))
        .wait_until(Wait::http("/healthz"), LONG)
        .spawn()
        .unwrap();
    assert_eq!(server.path("admin").unwrap(), path);
    let url = server.url("http").unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(
        get_tcp(server.addr("http").unwrap(), "/").unwrap().status,
        200
    );
    let err = server.addr("admin").unwrap_err();
    assert!(err.to_string().contains("unix-stream"), "{err}");
    let err = server.url("metrics").unwrap_err();
    assert!(err.to_string().contains("named http, admin"), "{err}");
}

#[test]
fn one_base_launch_serves_many_tests() {
    let base = demo().wait_until(Wait::http("/healthz"), LONG);
    let a = base.spawn().unwrap();
    let b = base.clone().env("RUST_LOG", "debug").spawn().unwrap();
    assert_ne!(a.addr(0).unwrap(), b.addr(0).unwrap());
    for s in [&a, &b] {
        assert_eq!(get_tcp(s.addr(0).unwrap(), "/healthz").unwrap().status, 200);
    }
}

#[test]
fn the_captured_output_is_on_the_handle() {
    let mut server = demo()
        .wait_until(Wait::log("serving ").unwrap(), LONG)
        .spawn()
        .unwrap();
    assert!(
        server.stderr().unwrap().contains("serving "),
        "{:?}",
        server.stderr()
    );
    server.kill().unwrap();
    assert!(server.stdout().is_some());
}

mod cli {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use sd_launch_tests::{PidGuard, bin, get_tcp};

    fn env_line<'a>(out: &'a str, key: &str) -> &'a str {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {out:?}"))
    }

    #[test]
    fn ready_when_http_prints_once_demo_server_answers() {
        let out = Command::new(bin("sd-launch"))
            .args(["--ready-when=http:/healthz", "--"])
            .arg(bin("demo-server"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let _guard = PidGuard(env_line(&text, "LAUNCHED_PID").parse().unwrap());
        let port: u16 = env_line(&text, "LAUNCHED_PORT").parse().unwrap();
        let r = get_tcp(([127, 0, 0, 1], port).into(), "/healthz").unwrap();
        assert_eq!(r.status, 200);
    }

    #[test]
    fn ready_when_log_watches_the_output_and_still_shows_it() {
        let mut child = Command::new(bin("sd-launch"))
            .args(["--foreground", "--ready-when=log:serving ", "--"])
            .arg(bin("demo-server"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut port = String::new();
        out.read_line(&mut port).unwrap();
        let port: u16 = port
            .trim()
            .strip_prefix("LAUNCHED_PORT=")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            get_tcp(([127, 0, 0, 1], port).into(), "/").unwrap().status,
            200
        );
        // SAFETY: signalling the sd-launch we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(
            child.wait().unwrap().code(),
            Some(0),
            "demo-server drains and exits 0"
        );
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(
            err.contains("serving "),
            "the daemon's own log was swallowed: {err}"
        );
    }

    #[test]
    fn ready_from_a_wrapper_that_does_not_exec_is_a_loud_warning() {
        // sh stays the daemon (LISTEN_PID is sh's pid): demo-server, its child, is not the
        // receiver, binds an address of its own, and says READY=1.
        let script = format!(
            "{} --listen 127.0.0.1:0; true",
            bin("demo-server").display()
        );
        let mut child = Command::new(bin("sd-launch"))
            .args(["--foreground", "--ready=20", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("LAUNCHED_PORT="), "{line}");
        // SAFETY: signalling the sd-launch we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(err.contains("READY=1 came from pid"), "{err}");
        assert!(err.contains("exec"), "{err}");
    }

    #[test]
    fn ready_when_mistakes_are_usage_errors() {
        for args in [
            &["--ready-when=log:serving", "--", "true"][..],
            &["--ready-when=bogus", "--", "true"][..],
            &["--ready-when=http:nope", "--", "true"][..],
            &["--accept", "--ready-when=notify", "--", "true"][..],
        ] {
            let out = Command::new(bin("sd-launch")).args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            assert!(out.stdout.is_empty(), "{args:?}");
        }
    }
}

#[test]
fn a_daemon_that_keeps_notifying_after_ready_never_blocks() {
    let Some(notify) = sd_launch_tests::tool("systemd-notify", "systemd") else {
        return;
    };
    // READY=1, then 50 STATUS= messages: more than a datagram queue nobody reads holds (10).
    let script = format!(
        "{n} --ready; i=0; while [ $i -lt 50 ]; do {n} STATUS=$i; i=$((i+1)); done; echo done; exec sleep 30",
        n = notify.display()
    );
    let daemon = Launch::new("sh")
        .args(["-c", &script])
        .wait_until(Wait::notify(), LONG)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LONG;
    while !daemon.stdout().unwrap().contains("done") {
        assert!(
            Instant::now() < deadline,
            "the daemon blocked in sd_notify after READY=1"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ready_from_a_daemon_that_closed_its_sockets_is_a_loud_warning() {
    let Some(notify) = sd_launch_tests::tool("systemd-notify", "systemd") else {
        return;
    };
    let script = format!("exec 3<&-; {} --ready; exec sleep 30", notify.display());
    let out = std::process::Command::new(bin("sd-launch"))
        .args([
            "--ready=20",
            "--stderr",
            "/dev/null",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("LAUNCHED_PID="))
        .unwrap()
        .parse()
        .unwrap();
    let _guard = sd_launch_tests::PidGuard(pid);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds any of the passed sockets"), "{err}");
}
