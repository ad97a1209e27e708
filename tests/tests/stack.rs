//! Stacks: every socket of every daemon bound first, then every daemon started at once, each
//! told the others' addresses, with no start-up order (`sd-launch --stack`, `sd_launch::Stack`);
//! a daemon that cannot take a socket (Redis) behind a proxy of its own (`proxy = true`,
//! `Stack::proxy`), its public sockets named by the others as usual.

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
    let (_dir, file) = stack_file(
        r#"
[daemon.api]
command = ["demo-server"]
ready = "http:/healthz"

[daemon.broken]
command = ["sh", "-c", "echo 'cannot open db.sqlite' >&2; exit 3"]
ready = "accepted"
"#,
    );
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

/// `text` as `stack.toml` in a new temporary directory (which the daemons run in).
fn stack_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// redis-server and redis-cli (the path of redis-cli), or a loud skip.
fn redis_tools() -> Option<PathBuf> {
    sd_launch_tests::tool("redis-server", "redis-server")?;
    sd_launch_tests::tool("redis-cli", "redis-tools")
}

/// Wait (20 s at most) until `file` holds a whole line; its text then (or what it has).
fn line_in(file: &Path) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.ends_with('\n') || std::time::Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn redis_behind_a_proxy_of_its_own_is_called_by_another_daemon_while_both_start() {
    let Some(redis_cli) = redis_tools() else {
        return;
    };
    let (dir, file) = stack_file(
        r#"
[daemon.cache]
command = ["redis-server", "--port", "0", "--unixsocket", "${backend.path}", "--save", ""]
proxy = true

[daemon.app]
command = ["sh", "-c", "redis-cli -p \"$REDIS_PORT\" ping > pong.txt; exec sleep 300"]
env = { REDIS_PORT = "${cache.port}" }
"#,
    );
    let out = sd_launch_stack(&file, &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let supervisor: u32 = var(&text, "LAUNCHED_PID").parse().unwrap();
    let _guard = Reap(supervisor);
    let cache_port = var(&text, "CACHE_PORT");
    let pids: Vec<u32> = ["CACHE_PID", "APP_PID"]
        .iter()
        .map(|k| var(&text, k).parse().unwrap())
        .collect();
    // The app's redis-cli connected at once, and waited in the proxy until redis listened.
    assert_eq!(line_in(&dir.path().join("pong.txt")), "PONG\n");
    // CACHE_PORT is the proxy's public port; CACHE_PID is redis itself.
    let cli = |args: &[&str]| {
        let out = Command::new(&redis_cli)
            .args(["-p", cache_port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["set", "greeting", "hello"]), "OK\n");
    assert_eq!(cli(&["get", "greeting"]), "hello\n");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pids[0])).unwrap();
    assert!(comm.starts_with("redis-server"), "CACHE_PID is {comm:?}");
    kill(supervisor);
    for pid in pids.iter().chain([&supervisor]) {
        assert!(
            wait_gone_within(*pid, Duration::from_secs(20)),
            "pid {pid} left running"
        );
    }
}

#[test]
fn a_proxied_daemon_with_restart_on_exit_is_started_again_behind_the_same_port() {
    let Some(redis_cli) = redis_tools() else {
        return;
    };
    // Its first start exits 1 at once; the second is redis, on the new backend it is told.
    let (_dir, file) = stack_file(
        r#"
[daemon.cache]
command = ["sh", "-c", "if [ -e first ]; then exec redis-server --port 0 --unixsocket \"$0\" --save ''; fi; : > first; exit 1", "${backend.path}"]
proxy = true
restart = "on-exit"
"#,
    );
    let out = sd_launch_stack(&file, &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let supervisor: u32 = var(&text, "LAUNCHED_PID").parse().unwrap();
    let _guard = Reap(supervisor);
    let first: u32 = var(&text, "CACHE_PID").parse().unwrap();
    // The client waits in the proxy while the daemon is started again.
    let out = Command::new(&redis_cli)
        .args(["-p", var(&text, "CACHE_PORT"), "info", "server"])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    let serving: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap_or_else(|| panic!("no process_id in {info:?}"))
        .trim()
        .parse()
        .unwrap();
    assert_ne!(
        serving, first,
        "CACHE_PID is the first start's, which exited"
    );
    assert!(wait_gone_within(first, Duration::ZERO));
    assert!(
        !wait_gone_within(supervisor, Duration::ZERO),
        "the stack goes on"
    );
    kill(supervisor);
    assert!(wait_gone_within(serving, Duration::from_secs(20)));
}

#[test]
fn a_daemon_named_backend_next_to_a_proxied_daemon_is_an_error_and_starts_nothing() {
    let (dir, file) = stack_file(
        r#"
[daemon.backend]
command = ["sh", "-c", ": > started-backend; exec sleep 300"]

[daemon.cache]
command = ["sh", "-c", ": > started-cache; exec sleep 300", "${backend.path}"]
proxy = true
"#,
    );
    let out = sd_launch_stack(&file, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("daemon backend: name:") && err.contains("give this daemon another name"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    for started in ["started-backend", "started-cache"] {
        assert!(!dir.path().join(started).exists(), "{started}");
    }
}

#[test]
fn a_proxied_daemon_never_told_its_backend_is_an_error_and_starts_nothing() {
    let (dir, file) = stack_file(
        r#"
[daemon.cache]
command = ["sh", "-c", ": > started; exec sleep 300"]
proxy = true
"#,
    );
    let out = sd_launch_stack(&file, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("daemon cache: proxy: the daemon is never told where to listen"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    assert!(!dir.path().join("started").exists());
}

#[test]
fn a_proxied_daemon_that_exits_ends_a_foreground_stack_naming_it() {
    let (_dir, file) = stack_file(
        r#"
[daemon.flaky]
command = ["sh", "-c", "sleep 0.3; exit 4", "${backend.path}"]
proxy = true

[daemon.long]
command = ["sleep", "300"]
"#,
    );
    let out = sd_launch_stack(&file, &["--foreground", "--format", "json"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon flaky") && err.contains("exit status: 4"),
        "{err}"
    );
    // The output, printed when the stack was up, covers the proxied daemon too.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flaky = &v["daemons"]["flaky"];
    let port = flaky["sockets"][0]["port"]
        .as_u64()
        .expect("its public port") as u16;
    let pids = [&flaky["pid"], &v["daemons"]["long"]["pid"]].map(|p| p.as_u64().unwrap() as u32);
    for pid in pids {
        assert!(wait_gone(pid), "pid {pid} left running");
    }
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "its public socket is closed"
    );
}

#[test]
fn a_library_stack_proxies_a_daemon_whose_public_address_the_others_are_told() {
    use std::io::{Read, Write};
    if sd_launch_tests::tool("python3", "python3").is_none() {
        return;
    }
    let started = std::time::Instant::now();
    let stack = Stack::new()
        .proxy(
            "upper",
            Launch::new("python3")
                .args([
                    "-c",
                    sd_launch_tests::UPPER_AFTER_EOF,
                    "${backend.path}",
                    "0.3",
                ])
                .wait_until(Wait::accepted(0), Duration::from_secs(20)),
        )
        .daemon(
            "app",
            Launch::new("sh")
                .args(["-c", "echo \"upper=$UPPER\"; exec sleep 30"])
                .env("UPPER", "${upper.addr}")
                .wait_until(Wait::log("^upper=").unwrap(), Duration::from_secs(10)),
        )
        .spawn()
        .unwrap();
    // `accepted` of a proxied daemon: it listens on its backend (0.3 s after it started).
    assert!(started.elapsed() >= Duration::from_millis(300));
    let proxy = stack.proxy("upper").expect("a proxied daemon");
    let public = proxy.local_addr(0);
    assert_eq!(
        stack.get("app").unwrap().stdout().unwrap(),
        format!("upper={public}\n")
    );
    assert_eq!(stack.sockets("upper").unwrap()[0].inet(), Some(public));
    assert!(stack.get("upper").is_none(), "no direct handle");
    assert!(stack.proxy("app").is_none(), "not proxied");
    let pid = stack.pid("upper").unwrap();
    assert_eq!(pid, proxy.daemon_pid());
    let mut c = std::net::TcpStream::connect(public).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"through the proxy").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "THROUGH THE PROXY");
    drop(stack);
    assert!(
        wait_gone(pid),
        "the proxied daemon is stopped with the stack"
    );
}

#[test]
fn a_stack_file_named_without_a_directory_is_found_in_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stack.toml"),
        "[daemon.db]\ncommand = [\"sh\", \"-c\", \"pwd > where.txt; exec sleep 300\"]\nlisten = [\"./db.sock\"]\n",
    )
    .unwrap();
    // `sd-launch --stack stack.toml`, run from its directory.
    let out = Command::new(bin("sd-launch"))
        .args(["--stack", "stack.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let supervisor: u32 = var(&text, "LAUNCHED_PID").parse().unwrap();
    let _guard = Reap(supervisor);
    // Relative paths are relative to that directory, and the daemon runs there.
    assert!(dir.path().join("db.sock").exists());
    let here = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        line_in(&dir.path().join("where.txt")),
        format!("{}\n", here.display())
    );
    kill(supervisor);
    assert!(wait_gone_within(supervisor, Duration::from_secs(20)));
    assert!(!dir.path().join("db.sock").exists(), "removed at the end");
}

#[test]
fn a_killed_supervisor_leaves_no_proxied_daemon_nor_its_child_behind() {
    let (dir, file) = stack_file(
        r#"
[daemon.cache]
command = ["sh", "-c", "sleep 300 & echo $! > child.pid; exec sleep 300", "${backend.path}"]
proxy = true
"#,
    );
    let out = sd_launch_stack(&file, &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let supervisor: u32 = var(&text, "LAUNCHED_PID").parse().unwrap();
    let daemon: u32 = var(&text, "CACHE_PID").parse().unwrap();
    let child: u32 = line_in(&dir.path().join("child.pid"))
        .trim()
        .parse()
        .unwrap();
    let _guards = [Reap(daemon), Reap(child)];
    // SAFETY: SIGKILL to the supervisor we were told about.
    unsafe { libc::kill(supervisor as i32, libc::SIGKILL) };
    for pid in [daemon, child] {
        assert!(
            wait_gone_within(pid, Duration::from_secs(20)),
            "pid {pid} outlived the supervisor whose proxy thread started it"
        );
    }
}

#[test]
fn a_stop_signal_to_the_command_waiting_for_the_stack_stops_the_stack() {
    // Ctrl-C on `sd-launch --stack FILE` while it waits for a readiness wait of 120 s:
    // nobody will ever know the supervisor's pid, so the stack must not run on.
    let mark = format!("sd-launch-test-{}-stack-ctrl-c", std::process::id());
    let (_dir, file) = stack_file(&format!(
        "[daemon.slow]\ncommand = [\"sleep\", \"300\"]\nenv = {{ SD_LAUNCH_TEST_MARK = \"{mark}\" }}\n\
         ready = \"notify\"\nready_timeout = 120\n"
    ));
    let with_mark = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|c| c.windows(mark.len()).any(|w| w == mark.as_bytes()))
            })
            .filter(|pid| sd_launch_tests::alive(*pid))
            .collect()
    };
    let mut command = sd_launch_tests::ChildGuard(
        Command::new(bin("sd-launch"))
            .arg("--stack")
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let daemon = loop {
        if let Some(pid) = with_mark().into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        }) {
            break pid;
        }
        assert!(std::time::Instant::now() < end, "the daemon never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    let _guard = Reap(daemon);
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(command.0.id() as libc::pid_t, libc::SIGINT) };
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while command.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < end,
            "the command did not exit on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        wait_gone_within(daemon, Duration::from_secs(30)),
        "the stack ran on after the command that started it was stopped"
    );
}
