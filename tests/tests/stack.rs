//! Stacks: every socket of every daemon bound first, then every daemon started at once, each
//! told the others' addresses, with no start-up order (`sd-launch --stack`, `sd_launch::Stack`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sd_launch::{Launch, Stack, Wait};
use sd_launch_tests::{bin, get_tcp, wait_gone};

/// PATH with the workspace's binaries (demo-server) and the Python venv (gunicorn) first.
fn path_with_tools() -> std::ffi::OsString {
    let mut dirs = vec![
        bin("demo-server").parent().unwrap().to_path_buf(),
        sd_launch_tests::python_venv().join("bin"),
    ];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

fn sd_launch_stack(file: &Path, extra: &[&str]) -> Output {
    Command::new(bin("sd-launch"))
        .args(extra)
        .arg("--stack")
        .arg(file)
        .env("PATH", path_with_tools())
        .output()
        .unwrap()
}

fn var<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
}

fn wait_gone_within(pid: u32, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        let gone = !sd_launch_tests::alive(pid);
        if gone || std::time::Instant::now() >= deadline {
            return gone;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill(pid: u32) {
    // SAFETY: kill with a pid we were told; at worst it is gone.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

fn the_readme_stack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("stack/stack.toml")
}

#[test]
fn the_readme_stack_works_as_written_with_no_start_up_order() {
    if sd_launch_tests::python_tool("gunicorn").is_none() {
        return;
    }
    let out = sd_launch_stack(&the_readme_stack(), &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let supervisor: u32 = var(&text, "LAUNCHED_PID").parse().unwrap();
    let pids: Vec<u32> = ["API_PID", "WEB_PID"]
        .iter()
        .map(|k| var(&text, k).parse().unwrap())
        .collect();
    let guard = Reap(supervisor);
    let api: u16 = var(&text, "API_PORT").parse().unwrap();
    let web: u16 = var(&text, "WEB_PORT").parse().unwrap();
    // web called the api while importing app.py, before either was known to be up.
    let r = get_tcp(([127, 0, 0, 1], web).into(), "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("the api said 'ok'"), "{}", r.body);
    assert_eq!(
        get_tcp(([127, 0, 0, 1], api).into(), "/healthz")
            .unwrap()
            .status,
        200
    );
    // kill $LAUNCHED_PID stops every daemon, and the supervisor exits.
    kill(supervisor);
    for pid in pids.iter().chain([&supervisor]) {
        assert!(
            wait_gone_within(*pid, Duration::from_secs(20)),
            "pid {pid} left running"
        );
    }
    drop(guard);
}

/// Kills a pid when the test ends, pass or fail.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: kill with a pid we were told; at worst it is gone.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

#[test]
fn two_daemons_each_know_the_others_address_at_start() {
    let shell = |peer: &str| {
        Launch::new("sh")
            .args(["-c", "echo \"peer=$PEER\"; exec sleep 30"])
            .env("PEER", peer)
            .wait_until(Wait::log("^peer=").unwrap(), Duration::from_secs(10))
    };
    let stack = Stack::new()
        .daemon("a", shell("${b.addr}"))
        .daemon("b", shell("${a.addr}"))
        .spawn()
        .unwrap();
    let (a, b) = (stack.get("a").unwrap(), stack.get("b").unwrap());
    assert_eq!(
        a.stdout().unwrap(),
        format!("peer={}\n", b.addr(0).unwrap())
    );
    assert_eq!(
        b.stdout().unwrap(),
        format!("peer={}\n", a.addr(0).unwrap())
    );
}

#[test]
fn demo_server_lighttpd_and_gunicorn_in_one_stack() {
    let (Some(lighttpd), Some(gunicorn)) = (
        sd_launch_tests::tool("lighttpd", "lighttpd"),
        sd_launch_tests::python_tool("gunicorn"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "static\n").unwrap();
    let conf = dir.path().join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{}\"\nserver.port = 1\nserver.systemd-socket-activation = \"enable\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::copy(
        the_readme_stack().with_file_name("app.py"),
        dir.path().join("app.py"),
    )
    .unwrap();
    let stack = Stack::new()
        .daemon("api", Launch::new(bin("demo-server")))
        .daemon("files", Launch::new(lighttpd).args(["-D", "-f"]).arg(&conf))
        .daemon(
            "web",
            Launch::new(gunicorn)
                .args(["--no-control-socket", "--workers", "1", "--chdir"])
                .arg(dir.path())
                .arg("app:app")
                .env("API_URL", "http://${api.addr}/"),
        )
        .spawn()
        .unwrap();
    for (name, path, needle) in [
        ("api", "/", "Hello"),
        ("files", "/index.html", "static"),
        ("web", "/", "api said"),
    ] {
        let r = get_tcp(stack.get(name).unwrap().addr(0).unwrap(), path).unwrap();
        assert_eq!(r.status, 200, "{name}");
        assert!(r.body.contains(needle), "{name}: {}", r.body);
    }
}

#[test]
fn fifty_demo_servers_start_at_once_and_all_answer() {
    let mut stack = Stack::new();
    for i in 0..50 {
        stack = stack.daemon(format!("d{i}"), Launch::new(bin("demo-server")));
    }
    let running = stack.spawn().unwrap();
    for name in running.names() {
        let r = get_tcp(running.get(name).unwrap().addr(0).unwrap(), "/healthz").unwrap();
        assert_eq!(r.status, 200, "{name}");
    }
}

#[test]
fn a_daemon_that_dies_at_start_stops_the_stack_with_its_stderr_tail() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.toml");
    std::fs::write(
        &file,
        r#"
[daemon.api]
command = ["demo-server"]
ready = "http:/healthz"

[daemon.broken]
command = ["sh", "-c", "echo 'cannot open db.sqlite' >&2; exit 3"]
ready = "accepted"
"#,
    )
    .unwrap();
    let out = sd_launch_stack(&file, &[]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("daemon broken"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains("cannot open db.sqlite"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing printed for a stack that is not up"
    );
}

#[test]
fn a_stack_in_the_foreground_ends_when_a_daemon_exits_and_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.toml");
    std::fs::write(
        &file,
        "[daemon.long]\ncommand = [\"sleep\", \"300\"]\n\n[daemon.short]\ncommand = [\"sh\", \"-c\", \"sleep 0.3; exit 4\"]\n",
    )
    .unwrap();
    let out = sd_launch_stack(&file, &["--foreground"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let long: u32 = var(&text, "LONG_PID").parse().unwrap();
    assert!(wait_gone(long), "the other daemon was left running");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon short") && err.contains("exit status: 4"),
        "{err}"
    );
}

#[test]
fn json_output_lists_every_daemon_and_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.toml");
    std::fs::write(
        &file,
        "[daemon.db]\ncommand = [\"sleep\", \"300\"]\nlisten = [\"127.0.0.1:0\", { address = \"./db.sock\", name = \"admin\" }]\n",
    )
    .unwrap();
    let out = sd_launch_stack(&file, &["--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let supervisor = v["pid"].as_u64().unwrap() as u32;
    let _guard = Reap(supervisor);
    let sockets = &v["daemons"]["db"]["sockets"];
    assert_eq!(sockets[1]["name"], "admin");
    assert_eq!(
        sockets[1]["address"],
        dir.path().join("db.sock").to_str().unwrap()
    );
    assert!(dir.path().join("db.sock").exists());
    kill(supervisor);
    assert!(wait_gone_within(supervisor, Duration::from_secs(20)));
    assert!(
        !dir.path().join("db.sock").exists(),
        "the socket file it created is removed"
    );
}

#[test]
fn hostile_stack_files_get_one_line_errors_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let many: String = (0..10_000)
        .map(|i| format!("[daemon.d{i}]\ncommand = [\"sleep\", \"300\"]\n"))
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown",
            "[daemon.a]\ncommand = [\"sleep\", \"1\"]\nenv = { X = \"${nope.addr}\" }\n".into(),
            "daemon a: env.X: ${nope.addr}: no daemon named \"nope\"",
        ),
        (
            "field",
            "[daemon.a]\ncommand = [\"sleep\", \"1\", \"${a.host}\"]\n".into(),
            "daemon a: command[2]",
        ),
        (
            "duplicate",
            "[daemon.a]\ncommand = [\"true\"]\n[daemon.a]\ncommand = [\"true\"]\n".into(),
            "line 3",
        ),
        ("toml", "[daemon.a\ncommand = 1\n".into(), "line 1"),
        (
            "types",
            "[daemon.a]\ncommand = \"sleep 1\"\n".into(),
            "line 2",
        ),
        (
            "typo",
            "[daemon.a]\ncommand = [\"true\"]\nredy = \"notify\"\n".into(),
            "unknown field `redy`",
        ),
        (
            "missing",
            "[daemon.a]\ncommand = [\"no-such-program-here\"]\n".into(),
            "daemon a: command[0]: no-such-program-here: command not found",
        ),
        (
            "address",
            "[daemon.a]\ncommand = [\"true\"]\nlisten = [\"example.com:80\"]\n".into(),
            "daemon a: listen",
        ),
        ("empty", "".into(), "at least one daemon"),
        ("many", many, "at most 1024 daemons"),
    ];
    for (name, text, needle) in cases {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = sd_launch_stack(&file, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}");
    }
    let out = sd_launch_stack(&dir.path().join("absent.toml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read it"));
}

#[test]
fn a_daemon_with_restart_on_exit_is_started_again_and_the_stack_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.toml");
    let log = dir.path().join("starts.log");
    std::fs::write(
        &file,
        format!(
            "[daemon.flaky]\ncommand = [\"sh\", \"-c\", \"echo start >> {}; sleep 0.1; exit 1\"]\nrestart = \"on-exit\"\n\n\
             [daemon.steady]\ncommand = [\"sleep\", \"300\"]\n",
            log.display()
        ),
    )
    .unwrap();
    let out = sd_launch_stack(&file, &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let supervisor: u32 = var(&text, "LAUNCHED_PID").parse().unwrap();
    let _guard = Reap(supervisor);
    let steady: u32 = var(&text, "STEADY_PID").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let starts = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count();
        if starts >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restarted {starts} times"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !wait_gone_within(steady, Duration::ZERO),
        "the stack stopped"
    );
    assert!(
        !wait_gone_within(supervisor, Duration::ZERO),
        "the supervisor exited"
    );
    kill(supervisor);
    assert!(wait_gone_within(steady, Duration::from_secs(20)));
}

#[test]
fn a_killed_supervisor_leaves_no_daemon_behind() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.toml");
    std::fs::write(
        &file,
        "[daemon.a]\ncommand = [\"sh\", \"-c\", \"sleep 300 & exec sleep 300\"]\n\n[daemon.b]\ncommand = [\"sleep\", \"300\"]\n",
    )
    .unwrap();
    let out = sd_launch_stack(&file, &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let supervisor: u32 = var(&text, "LAUNCHED_PID").parse().unwrap();
    let pids: Vec<u32> = ["A_PID", "B_PID"]
        .iter()
        .map(|k| var(&text, k).parse().unwrap())
        .collect();
    let _guards: Vec<Reap> = pids.iter().map(|p| Reap(*p)).collect();
    // SAFETY: SIGKILL to the supervisor we were told about.
    unsafe { libc::kill(supervisor as i32, libc::SIGKILL) };
    for pid in pids {
        assert!(
            wait_gone_within(pid, Duration::from_secs(20)),
            "daemon {pid} outlived its supervisor"
        );
    }
}
