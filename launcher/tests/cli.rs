//! The `sd-launch` command as a shell script or a supervisor sees it: its output, exit
//! codes, files, and what the daemon receives.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SD_LAUNCH: &str = env!("CARGO_BIN_EXE_sd-launch");

fn sd_launch(args: &[&str]) -> Command {
    let mut cmd = Command::new(SD_LAUNCH);
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    sd_launch(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A daemon left running by sd-launch: killed when the test ends, pass or fail.
struct Daemon(libc::pid_t);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill takes a pid and a signal; at worst the pid is gone (ESRCH).
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// `KEY=VALUE` lines into a map, asserting every line has that shape.
fn parse_env(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The process state letter of `pid` (None once it is gone entirely).
fn state(pid: libc::pid_t) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Wait (bounded, as a hang guard only) until `pid` has died.
fn wait_dead(pid: libc::pid_t) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match state(pid) {
            None | Some('Z') | Some('X') => return true,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}

#[test]
fn default_output_is_exactly_the_seeds_two_lines_and_the_daemon_keeps_running() {
    let out = run(&["--", "sleep", "30"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout:?}");
    let port: u16 = lines[0]
        .strip_prefix("LAUNCHED_PORT=")
        .unwrap()
        .parse()
        .unwrap();
    let pid: libc::pid_t = lines[1]
        .strip_prefix("LAUNCHED_PID=")
        .unwrap()
        .parse()
        .unwrap();
    let _daemon = Daemon(pid);
    assert_ne!(port, 0);
    assert_eq!(
        state(pid).map(|s| s != 'Z'),
        Some(true),
        "daemon not running"
    );
    // The daemon holds the listener: connecting works though sd-launch is gone.
    TcpStream::connect(("127.0.0.1", port)).unwrap();
}

#[test]
fn prefix_replaces_launched() {
    let out = run(&["--prefix", "POLIPO_", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vars = parse_env(&text(&out.stdout));
    let _daemon = Daemon(vars["POLIPO_PID"].parse().unwrap());
    assert_eq!(
        vars.keys().collect::<Vec<_>>(),
        ["POLIPO_PID", "POLIPO_PORT"]
    );
}

#[test]
fn json_output_lists_pid_and_every_socket() {
    let out = run(&[
        "--format",
        "json",
        "-l",
        "127.0.0.1:0",
        "-l",
        "127.0.0.1:0",
        "--fdname",
        "web:admin",
        "--",
        "sleep",
        "30",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let _daemon = Daemon(v["pid"].as_i64().unwrap() as libc::pid_t);
    let sockets = v["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2);
    for (i, (s, name)) in sockets.iter().zip(["web", "admin"]).enumerate() {
        let port = s["port"].as_u64().unwrap();
        assert_eq!(
            *s,
            serde_json::json!({
                "fd": 3 + i,
                "name": name,
                "kind": "tcp",
                "address": format!("127.0.0.1:{port}"),
                "port": port,
            })
        );
        TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    }
}

#[test]
fn several_sockets_are_listed_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let out = run(&[
        "-l",
        "127.0.0.1:0",
        "-l",
        sock.to_str().unwrap(),
        "-l",
        "127.0.0.1:0",
        "--",
        "sleep",
        "30",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vars = parse_env(&text(&out.stdout));
    let _daemon = Daemon(vars["LAUNCHED_PID"].parse().unwrap());
    assert_eq!(vars["LAUNCHED_PORT"], vars["LAUNCHED_PORT_0"]);
    assert_eq!(vars["LAUNCHED_PATH_1"], sock.to_str().unwrap());
    assert_ne!(vars["LAUNCHED_PORT_2"], vars["LAUNCHED_PORT_0"]);
    // Left running in the background, the daemon keeps its socket file.
    assert!(sock.exists());
}

#[test]
fn fdname_count_mismatch_is_a_one_line_usage_error() {
    let out = run(&[
        "-l",
        "127.0.0.1:0",
        "-l",
        "127.0.0.1:0",
        "--fdname",
        "a:b:c",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("sd-launch: "), "{stderr:?}");
}

#[test]
fn a_regular_file_at_a_unix_socket_path_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("precious");
    fs::write(&file, "keep me").unwrap();
    let out = run(&["-l", file.to_str().unwrap(), "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr).lines().count(), 1);
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn exec_failures_have_distinct_codes_and_print_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    fs::write(&script, "#!/bin/sh\n").unwrap();
    let missing = dir.path().join("missing");
    for (program, code) in [
        (missing.as_path(), 127),
        (Path::new("sd-launch-no-such-program"), 127),
        (script.as_path(), 126),
        (dir.path(), 126),
    ] {
        let out = run(&["--", program.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(code), "{program:?}");
        assert_eq!(text(&out.stdout), "", "{program:?}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
        let name = program.file_name().unwrap().to_str().unwrap();
        assert!(stderr.contains(name), "{stderr:?} does not name {name}");
    }
}

#[test]
fn outfile_receives_the_daemons_stdout_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let out = run(&[
        "--foreground",
        "--outfile",
        log.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "only sd-launch's own lines"
    );
    assert_eq!(fs::read_to_string(&log).unwrap(), "to-stdout\nto-stderr\n");
}

#[test]
fn stdout_and_stderr_can_go_to_separate_files() {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("o"), dir.path().join("e"));
    let out = run(&[
        "--foreground",
        "--stdout",
        o.to_str().unwrap(),
        "--stderr",
        e.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo one; echo two >&2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read_to_string(&o).unwrap(), "one\n");
    assert_eq!(fs::read_to_string(&e).unwrap(), "two\n");
}

/// Run `script` under sd-launch --foreground with `args` and `env`, its stdout into a file;
/// return the daemon's pid as sd-launch reported it and what the daemon printed.
fn daemon_output(args: &[&str], env: &[(&str, &str)], script: &str) -> (String, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut all = vec!["--foreground", "--stdout", file.path().to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", "sh", "-c", script]);
    let out = sd_launch(&all).envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = parse_env(&text(&out.stdout))["LAUNCHED_PID"].clone();
    (pid, fs::read_to_string(file.path()).unwrap())
}

#[test]
fn setenv_passes_a_value_or_the_launchers_own_variable() {
    let (_, got) = daemon_output(
        &[
            "-E",
            "GREETING=hello=world",
            "-E",
            "FROM_PARENT",
            "-E",
            "NOT_SET_ANYWHERE",
        ],
        &[("FROM_PARENT", "inherited value")],
        r#"printf '%s|%s|%s' "$GREETING" "$FROM_PARENT" "${NOT_SET_ANYWHERE-unset}""#,
    );
    assert_eq!(got, "hello=world|inherited value|unset");
}

#[test]
fn the_daemon_gets_its_own_pid_and_never_the_launchers_listen_variables() {
    let (pid, got) = daemon_output(
        &["-l", "127.0.0.1:0", "-l", "127.0.0.1:0", "--fdname", "a:b"],
        &[
            ("LISTEN_PID", "1"),
            ("LISTEN_FDS", "7"),
            ("LISTEN_FDNAMES", "x:y:z"),
            ("LISTEN_PIDFDID", "99"),
            ("LISTEN_FDS_FIRST_FD", "9"),
        ],
        r#"printf '%s|%s|%s|%s|%s|%s' "$$" "$LISTEN_PID" "$LISTEN_FDS" "$LISTEN_FDNAMES" "${LISTEN_PIDFDID-unset}" "${LISTEN_FDS_FIRST_FD-unset}""#,
    );
    assert_eq!(got, format!("{pid}|{pid}|2|a:b|unset|unset"));
}

#[test]
fn foreground_prints_its_lines_before_the_daemon_writes_anything() {
    // The daemon shares sd-launch's stdout and writes at once: a caller reading the pipe
    // must still get the port first (sd-launch holds the daemon before exec until it has
    // printed). A race would show up over a few runs.
    for _ in 0..20 {
        let out = run(&["--foreground", "--", "sh", "-c", "echo first"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{stdout}");
        assert!(lines[0].starts_with("LAUNCHED_PORT="), "{stdout}");
        assert!(lines[1].starts_with("LAUNCHED_PID="), "{stdout}");
        assert_eq!(lines[2], "first", "{stdout}");
    }
}

#[test]
fn foreground_exits_with_the_daemons_code_or_128_plus_its_signal() {
    for (script, code) in [
        ("kill -INT $$", 130),
        ("exit 0", 0),
        ("exit 42", 42),
        ("kill -TERM $$", 143),
        ("kill -KILL $$", 137),
    ] {
        let out = run(&["--foreground", "--", "sh", "-c", script]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{script}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).lines().count(), 2, "{script}");
    }
}

/// sd-launch --foreground running `script`, with stdout piped and its own two lines read.
struct Foreground {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    daemon_pid: libc::pid_t,
}

impl Foreground {
    /// Start it and read up to the daemon's `ready` line (sd-launch's own lines come first:
    /// see `foreground_prints_its_lines_before_the_daemon_writes_anything`).
    fn start(args: &[&str], script: &str) -> Foreground {
        let mut all = vec!["--foreground"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "sh", "-c", script]);
        let mut child = sd_launch(&all).stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut ours = String::new();
        let mut ready = false;
        while !(ready && ours.contains("LAUNCHED_PID=")) {
            let line = lines.next().expect("output ended early").unwrap();
            if line == "ready" {
                ready = true;
            } else {
                ours.push_str(&line);
                ours.push('\n');
            }
        }
        let daemon_pid = parse_env(&ours)["LAUNCHED_PID"].parse().unwrap();
        Foreground {
            child,
            lines,
            daemon_pid,
        }
    }

    /// The daemon's next line.
    fn next_line(&mut self) -> String {
        self.lines.next().expect("daemon output ended").unwrap()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill on our own unreaped child.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        // SAFETY: kill takes a pid and a signal; at worst the pid is gone (ESRCH).
        unsafe { libc::kill(self.daemon_pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TRAPPING: &str = r#"
trap 'echo got-usr1' USR1
trap 'echo got-hup' HUP
trap 'echo got-usr2' USR2
trap 'echo got-int' INT
trap 'echo got-quit' QUIT
trap 'echo got-term; exit 7' TERM
echo ready
while :; do sleep 0.05; done
"#;

#[test]
fn foreground_forwards_signals_to_the_daemon() {
    let mut fg = Foreground::start(&[], TRAPPING);
    fg.signal(libc::SIGUSR1);
    assert_eq!(fg.next_line(), "got-usr1");
    fg.signal(libc::SIGHUP);
    assert_eq!(fg.next_line(), "got-hup");
    fg.signal(libc::SIGUSR2);
    assert_eq!(fg.next_line(), "got-usr2");
    fg.signal(libc::SIGINT);
    assert_eq!(fg.next_line(), "got-int");
    fg.signal(libc::SIGQUIT);
    assert_eq!(fg.next_line(), "got-quit");
    fg.signal(libc::SIGTERM);
    assert_eq!(fg.next_line(), "got-term");
    let status = fg.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(7),
        "sd-launch exits with the daemon's code"
    );
}

#[test]
fn foreground_removes_its_unix_socket_files_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    // The daemon exits on its own.
    let out = run(&[
        "--foreground",
        "-l",
        sock.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "test -S $1",
        "sh",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the socket existed while the daemon ran"
    );
    assert!(!sock.exists(), "socket file left behind after a clean exit");

    // The daemon is stopped through sd-launch.
    let mut fg = Foreground::start(&["-l", sock.to_str().unwrap()], TRAPPING);
    assert!(sock.exists());
    fg.signal(libc::SIGTERM);
    assert_eq!(fg.next_line(), "got-term");
    assert_eq!(fg.child.wait().unwrap().code(), Some(7));
    assert!(!sock.exists(), "socket file left behind after SIGTERM");
}

#[test]
fn the_daemon_dies_with_a_foreground_launcher_that_is_killed() {
    let mut fg = Foreground::start(&[], TRAPPING);
    fg.signal(libc::SIGKILL);
    fg.child.wait().unwrap();
    assert!(
        wait_dead(fg.daemon_pid),
        "daemon {} orphaned",
        fg.daemon_pid
    );
}

#[test]
fn help_and_version_work() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(help.contains("Examples:") && help.contains("--foreground"));
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("sd-launch "));
}

#[test]
fn a_background_daemons_stdio_is_dev_null() {
    let out = run(&["--", "sleep", "30"]);
    assert!(out.status.success());
    let pid: libc::pid_t = parse_env(&text(&out.stdout))["LAUNCHED_PID"]
        .parse()
        .unwrap();
    let _daemon = Daemon(pid);
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
}

#[test]
fn unix_sockets_are_private_unless_socket_mode_says_otherwise() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (extra, mode) in [(&[][..], 0o600), (&["--socket-mode", "660"][..], 0o660)] {
        let sock = dir.path().join("s.sock");
        let mut args = vec!["-l", sock.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sleep", "30"]);
        let out = run(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let _daemon = Daemon(
            parse_env(&text(&out.stdout))["LAUNCHED_PID"]
                .parse()
                .unwrap(),
        );
        let meta = fs::metadata(&sock).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{extra:?}");
        fs::remove_file(&sock).unwrap();
    }
}

#[test]
fn foreground_kills_a_daemon_that_ignores_sigterm_after_the_stop_timeout() {
    let mut fg = Foreground::start(
        &["--stop-timeout", "0.3"],
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    fg.signal(libc::SIGTERM);
    let status = fg.child.wait().unwrap();
    // The daemon ignored SIGTERM, got SIGKILL: sd-launch exits 128 + 9.
    assert_eq!(status.code(), Some(137));
    assert!(
        wait_dead(fg.daemon_pid),
        "daemon {} survived",
        fg.daemon_pid
    );
}

#[test]
fn ready_failure_exits_5_with_the_daemons_stderr_tail_and_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let out = run(&[
        "--ready",
        "--stderr",
        log.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo loading >&2; echo 'config.toml: no such file' >&2; exit 1",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("exited before it was ready"), "{err}");
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(err.contains("| config.toml: no such file"), "{err}");
}

#[test]
fn rust_log_debug_shows_the_spawn_and_the_default_is_quiet() {
    let quiet = run(&["--foreground", "--", "true"]);
    assert_eq!(text(&quiet.stderr), "");
    let out = sd_launch(&["--foreground", "--", "true"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let pid = parse_env(&text(&out.stdout))["LAUNCHED_PID"].clone();
    let err = text(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("sd-launch: debug: started true as pid ") && l.contains(&pid)),
        "{err}"
    );
}

#[test]
fn the_daemon_starts_with_default_signal_dispositions_even_under_nohup() {
    // sd-launch started with SIGHUP and SIGUSR1 ignored (as `nohup` and some CI runners do):
    // the daemon must still see them at their defaults, or it could not even trap them.
    // grep is the daemon itself: what it reads of itself is what sd-launch passed on (a
    // shell would block signals of its own while it waits for a child).
    let out = sd_launch(&[
        "--foreground",
        "--",
        "grep",
        "-E",
        "^Sig(Ign|Blk):",
        "/proc/self/status",
    ])
    .env_remove("RUST_LOG")
    .stdout(Stdio::piped())
    .spawn_with_ignored(&[libc::SIGHUP, libc::SIGUSR1]);
    let text = text(&out.stdout);
    // SIGHUP is bit 0, SIGUSR1 bit 9.
    let ign = text
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .expect("SigIgn line");
    assert_eq!(ign & (1 << 0 | 1 << 9), 0, "{text}");
    let blk = text
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(blk, 0, "{text}");
}

/// Run a command with some signals ignored in it (set between fork and exec).
trait SpawnWithIgnored {
    fn spawn_with_ignored(&mut self, signals: &[libc::c_int]) -> Output;
}

impl SpawnWithIgnored for Command {
    fn spawn_with_ignored(&mut self, signals: &[libc::c_int]) -> Output {
        use std::os::unix::process::CommandExt;
        let signals = signals.to_vec();
        // SAFETY: signal() is async-signal-safe; the closure allocates nothing.
        unsafe {
            self.pre_exec(move || {
                for sig in &signals {
                    libc::signal(*sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        self.output().unwrap()
    }
}
