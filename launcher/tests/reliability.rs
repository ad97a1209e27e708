//! Reliability of `sd-launch` under hostile use (issue 13): process groups, signals that must
//! act at once, a SIGCHLD ignored by our parent, a closed stdout, a stderr that is gone.
//! Each of these failed before the launcher had its own process groups and one event loop.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SD_LAUNCH: &str = env!("CARGO_BIN_EXE_sd-launch");

fn sd_launch(args: &[&str]) -> Command {
    let mut cmd = Command::new(SD_LAUNCH);
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Field `n` (1-based, after the command name) of `/proc/<pid>/stat`.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(n - 3).map(str::to_owned)
}

/// Whether `pid` is gone or a zombie.
fn dead(pid: i32) -> bool {
    matches!(stat_field(pid, 3).as_deref(), None | Some("Z") | Some("X"))
}

/// Wait (bounded: a hang guard, not a timing) until `pid` is dead.
fn wait_dead(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    dead(pid)
}

/// Kills a pid we learned about when the test ends, pass or fail.
struct Reap(i32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: kill takes a pid and a signal; at worst the pid is gone (ESRCH).
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Read `KEY=VALUE` lines from `out` until `key` appears.
fn read_var(out: &mut impl BufRead, key: &str) -> String {
    for _ in 0..16 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(v) = line.trim_end().strip_prefix(&format!("{key}=")) {
            return v.to_owned();
        }
    }
    panic!("no {key}= line");
}

#[test]
fn the_daemon_leads_a_process_group_of_its_own() {
    let mut child = sd_launch(&["--foreground", "--", "sleep", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let pid: i32 = read_var(&mut out, "LAUNCHED_PID").parse().unwrap();
    let _reap = Reap(pid);
    assert_eq!(
        stat_field(pid, 5),
        Some(pid.to_string()),
        "pgid of the daemon"
    );
    assert_ne!(stat_field(child.id() as i32, 5), Some(pid.to_string()));
    // SAFETY: signalling the sd-launch we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
}

#[test]
fn stopping_the_daemon_stops_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let helper_file = dir.path().join("helper.pid");
    let script = format!(
        "sleep 300 & echo $! > {}; exec sleep 300",
        helper_file.display()
    );
    let mut child = sd_launch(&["--foreground", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let pid: i32 = read_var(&mut out, "LAUNCHED_PID").parse().unwrap();
    let _reap = Reap(pid);
    let helper = wait_for_pid_file(&helper_file);
    let _reap_helper = Reap(helper);
    assert!(!dead(helper));
    // SAFETY: signalling the sd-launch we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(
        wait_dead(helper, Duration::from_secs(5)),
        "the daemon's helper {helper} outlived the stop"
    );
}

#[test]
fn a_sigchld_ignored_by_our_parent_does_not_hide_the_daemons_exit_code() {
    let mut cmd = sd_launch(&["--foreground", "--", "sh", "-c", "exit 7"]);
    cmd.stdout(Stdio::null());
    // SAFETY: signal() is async-signal-safe; the closure runs in the forked child only.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        })
    };
    let status = cmd.status().unwrap();
    assert_eq!(status.code(), Some(7));
}

#[test]
fn a_stop_signal_during_ready_acts_at_once_and_leaves_nothing() {
    for mode in [&["--foreground"][..], &[][..], &["--restart"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("daemon.pid");
        let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
        let mut args = mode.to_vec();
        args.extend(["--ready=60", "--", "sh", "-c", &script]);
        let mut child = sd_launch(&args).stdout(Stdio::piped()).spawn().unwrap();
        let daemon = wait_for_pid_file(&pid_file);
        let _reap = Reap(daemon);
        let started = Instant::now();
        // SAFETY: signalling the sd-launch we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{mode:?}: the stop waited for the readiness timeout"
        );
        assert_eq!(status.code(), Some(143), "{mode:?}");
        assert!(
            wait_dead(daemon, Duration::from_secs(5)),
            "{mode:?}: daemon left"
        );
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        assert_eq!(
            stdout, "",
            "{mode:?}: nothing printed for a daemon never ready"
        );
    }
}

/// The pid a script wrote to `path` (bounded wait: a hang guard).
fn wait_for_pid_file(path: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return p;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_closed_stdout_is_an_error_not_a_silent_success() {
    let mut cmd = sd_launch(&["--", "sleep", "30"]);
    cmd.stderr(Stdio::piped());
    // SAFETY: close() is async-signal-safe; the closure runs in the forked child only.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(1);
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdout is closed"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_restart_service_survives_a_stderr_that_is_gone() {
    // Its log reader has gone: every log line meets a broken pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = sd_launch(&["--restart", "--", "sleep", "30"])
        .stdout(Stdio::piped())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let first: i32 = read_var(&mut out, "LAUNCHED_PID").parse().unwrap();
    let _reap = Reap(first);
    // SAFETY: signalling the sd-launch we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert!(
        wait_dead(first, Duration::from_secs(10)),
        "no restart after SIGHUP"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "sd-launch died logging the restart"
    );
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
}

#[test]
fn accept_mode_at_the_fd_limit_waits_instead_of_resetting_connections() {
    use std::io::Read as _;
    let mut cmd = sd_launch(&[
        "--accept",
        "--inetd",
        "--",
        "sh",
        "-c",
        "sleep 0.2; echo hi",
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; the closure runs in the forked child only.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 20,
                rlim_max: 4096,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let port: u16 = read_var(&mut out, "LAUNCHED_PORT").parse().unwrap();
    let clients: Vec<_> = (0..30)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut answered = 0;
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reply = String::new();
        if c.read_to_string(&mut reply).is_ok() && reply == "hi\n" {
            answered += 1;
        }
    }
    // SAFETY: signalling the sd-launch we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(
        answered, 30,
        "connections lost at the fd limit; stderr: {err}"
    );
    assert!(!err.contains("closed unanswered"), "{err}");
    assert!(err.contains("the fd limit"), "the cause is named: {err}");
}

#[test]
fn in_the_foreground_a_script_that_cannot_run_prints_nothing_and_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let no_shebang = dir.path().join("no-shebang");
    fs::write(&no_shebang, "echo this is not a program\n").unwrap();
    let no_interpreter = dir.path().join("no-interpreter");
    fs::write(&no_interpreter, "#!/no/such/interpreter -x\necho hi\n").unwrap();
    for p in [&no_shebang, &no_interpreter] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for mode in [&["--foreground"][..], &[][..]] {
        let run = |script: &std::path::Path| {
            let mut args = mode.to_vec();
            args.extend(["--", script.to_str().unwrap()]);
            sd_launch(&args).output().unwrap()
        };
        let out = run(&no_shebang);
        assert_eq!(out.status.code(), Some(126), "{mode:?}: {out:?}");
        assert!(
            out.stdout.is_empty(),
            "{mode:?}: printed before a failed exec"
        );
        let out = run(&no_interpreter);
        assert_eq!(out.status.code(), Some(127), "{mode:?}: {out:?}");
        assert!(
            out.stdout.is_empty(),
            "{mode:?}: printed before a failed exec"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("interpreter /no/such/interpreter"),
            "{mode:?}: {err}"
        );
        assert!(!err.contains("command not found"), "{mode:?}: {err}");
    }
}

#[test]
fn in_the_foreground_the_daemon_gets_the_terminal_and_gives_it_back() {
    // `script` (util-linux) runs sd-launch on a pseudo-terminal of its own.
    if !std::path::Path::new("/usr/bin/script").is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "script is missing"
        );
        eprintln!(
            "SKIPPED: /usr/bin/script not found; install it with `apt-get install -y util-linux`"
        );
        return;
    }
    let inner = format!(
        "{SD_LAUNCH} --foreground -- sh -c 'ps -o tpgid=,pgid= -p $$'; ps -o tpgid=,pgid= -p $$"
    );
    let out = Command::new("/usr/bin/script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("LAUNCHED_PID="))
        .unwrap_or_else(|| panic!("{text}"))
        .trim()
        .to_owned();
    let pairs: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 2 && w.iter().all(|x| x.bytes().all(|b| b.is_ascii_digit())))
        .collect();
    assert_eq!(pairs.len(), 2, "{text}");
    // The daemon's group is the terminal's foreground group while it runs...
    assert_eq!(pairs[0], [pid.as_str(), pid.as_str()], "{text}");
    // ...and the shell that ran sd-launch has it back afterwards.
    assert_eq!(pairs[1][0], pairs[1][1], "{text}");
}

#[test]
fn an_error_with_stderr_gone_keeps_its_exit_code() {
    // The log reader has gone: the one-line error meets a broken pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = sd_launch(&["-l", "not an address", "--", "true"])
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "a panic would be 101");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = sd_launch(&["--", "no-such-program-anywhere"])
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(127), "a panic would be 101");
}
