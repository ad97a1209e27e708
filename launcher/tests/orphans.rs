//! No orphans from tests (issue 13): no daemon, and none of its descendants, outlives the
//! process that launched it, however that process ends, while a daemon spawned from a thread
//! that has finished keeps running until the process ends.
//!
//! Each test runs a *launching process*: this test binary again, running only
//! [`launching_process`] with `ORPHANS_MODE` saying what to do. It launches
//! `sh -c 'sleep 300 & exec sleep 300'` through `sd_launch::Launch` (a daemon with a child of
//! its own, in the daemon's process group), keeps the handle in a `static` (never dropped),
//! prints the pids, and then is killed or ends as the test decides. The daemon and its child
//! inherit the launching process's stdout, a pipe this test reads: `cargo test | tail` hangs
//! exactly when that pipe never reaches end-of-file.
//!
//! Every process the tests start is killed at the end of the test whatever happened (when it
//! is still the same process: pid and start time), so a failing test leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use sd_launch::{Launch, Launched};

const MODE: &str = "ORPHANS_MODE";
/// Unique per launching process: found in the environment of its guardian.
const TOKEN: &str = "ORPHANS_TOKEN";
/// How long anything that should happen "at once" may take on a loaded 2-core machine.
const PROMPTLY: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The launching process.

/// Daemons of the launching process, kept for the whole process and never dropped.
static KEPT: Mutex<Vec<Launched>> = Mutex::new(Vec::new());

/// Not a test of its own: the launching process of the tests below, when `ORPHANS_MODE` is
/// set (it does nothing otherwise).
#[test]
fn launching_process() {
    let Ok(mode) = env::var(MODE) else { return };
    let daemon = |launch: Launch| {
        let daemon = launch
            .args([
                "-c",
                "sleep 300 & echo ORPHANS grandchild=$!; exec sleep 300",
            ])
            // The daemon shares the launching process's stdout (the pipe whose end of
            // file the tests wait for), instead of the library's default capture.
            .stdout(sd_launch::Stdio::inherit())
            .spawn()
            .unwrap();
        println!("ORPHANS daemon={}", daemon.pid());
        // Once the daemon has exec'd `sleep`, its child runs and its line has been written.
        let comm = format!("/proc/{}/comm", daemon.pid());
        let started = wait_for(PROMPTLY, || {
            (fs::read_to_string(&comm).ok()?.trim_end() == "sleep").then_some(())
        });
        assert!(started.is_some(), "the daemon did not start");
        daemon
    };
    match mode.as_str() {
        // Kept in a static, then killed by the test or returning from main.
        "keep" | "exit" => KEPT.lock().unwrap().push(daemon(Launch::new("sh"))),
        // Spawned from a thread that has ended before anything else happens.
        "thread" => thread::spawn(move || KEPT.lock().unwrap().push(daemon(Launch::new("sh"))))
            .join()
            .unwrap(),
        "own_group_false" => KEPT
            .lock()
            .unwrap()
            .push(daemon(Launch::new("sh").process_group(false))),
        "detach" => {
            daemon(Launch::new("sh")).detach();
        }
        "kill_on_drop_false" => drop(daemon(Launch::new("sh").kill_on_drop(false))),
        "kill_on_exit_false" => KEPT
            .lock()
            .unwrap()
            .push(daemon(Launch::new("sh").kill_on_exit(false))),
        other => panic!("unknown {MODE} {other:?}"),
    }
    println!("ORPHANS ready");
    if mode != "exit" {
        // Until the test kills us; bounded all the same.
        thread::sleep(Duration::from_secs(120));
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn a_daemon_and_its_child_die_with_a_launching_process_killed_by_sigkill() {
    let mut launcher = Launcher::start("keep");
    launcher.assert_daemons_alive("before the launching process is killed");
    launcher.signal(libc::SIGKILL);
    launcher.assert_daemons_gone("after SIGKILL to the launching process");
}

#[test]
fn a_daemon_and_its_child_die_with_a_launching_process_stopped_by_sigterm() {
    let mut launcher = Launcher::start("keep");
    launcher.signal(libc::SIGTERM);
    launcher.assert_daemons_gone("after SIGTERM to the launching process");
}

#[test]
fn a_daemon_in_a_static_dies_when_the_launching_process_returns_from_main() {
    let mut launcher = Launcher::start("exit");
    let status = launcher.wait_exit();
    assert!(status.success(), "the launching process failed: {status}");
    launcher.assert_daemons_gone("after the launching process returned from main");
}

#[test]
fn ctrl_c_to_the_launching_process_group_does_not_spare_the_daemons() {
    // A terminal's Ctrl-C goes to the foreground group: the launching process's, not the
    // daemons' (each leads its own) nor the guardian's.
    let mut launcher = Launcher::start("keep");
    launcher.signal_group(libc::SIGINT);
    launcher.assert_daemons_gone("after SIGINT to the launching process's group");
}

#[test]
fn a_daemon_spawned_from_a_finished_thread_runs_until_the_process_ends() {
    let mut launcher = Launcher::start("thread");
    // The spawning thread has been joined; a thread-bound PR_SET_PDEATHSIG would have fired.
    thread::sleep(Duration::from_millis(300));
    launcher.assert_daemons_alive("after the spawning thread ended");
    launcher.signal(libc::SIGKILL);
    launcher.assert_daemons_gone("after SIGKILL to the launching process");
}

#[test]
fn the_stdout_of_a_killed_launching_process_reaches_end_of_file_at_once() {
    // `cargo test | tail`: tail waits for end-of-file, which comes only when every holder of
    // the pipe is gone: the daemons (which inherited it) and the guardian.
    let mut launcher = Launcher::start("keep");
    launcher.signal(libc::SIGKILL);
    let started = Instant::now();
    assert!(
        launcher.stdout_closed_within(PROMPTLY),
        "the launching process's stdout still open {PROMPTLY:?} after it died: \
         `cargo test | tail` would hang"
    );
    eprintln!("end-of-file {:?} after SIGKILL", started.elapsed());
}

#[test]
fn the_guardian_holds_none_of_the_launching_process_fds_and_ends_with_it() {
    let mut launcher = Launcher::start("keep");
    let guardian = launcher
        .guardian()
        .expect("a guardian (sd-launch-guard) is running");
    let fds = fs::read_dir(format!("/proc/{}/fd", guardian.pid))
        .unwrap()
        .count();
    assert_eq!(fds, 1, "the guardian holds only its socket");
    assert_ne!(
        guardian.stat_field(1),
        launcher.process.id().to_string(),
        "the guardian is not the launching process's child (never its zombie)"
    );
    assert_eq!(
        guardian.stat_field(2),
        guardian.pid.to_string(),
        "the guardian leads a process group of its own"
    );
    launcher.signal(libc::SIGKILL);
    assert!(
        guardian.gone_within(PROMPTLY),
        "the guardian outlived its launcher"
    );
}

#[test]
fn a_daemon_whose_handle_was_dropped_without_kill_on_drop_still_dies_with_the_process() {
    let mut launcher = Launcher::start("kill_on_drop_false");
    launcher.assert_daemons_alive("after its handle was dropped with kill_on_drop(false)");
    launcher.signal(libc::SIGKILL);
    launcher.assert_daemons_gone("after SIGKILL to the launching process");
}

#[test]
fn a_daemon_left_in_the_launching_process_group_still_dies_with_the_process() {
    // process_group(false): no group of its own to kill, so the daemon alone is guarded (its
    // child, in the launching process's group, is not the launcher's to kill).
    let mut launcher = Launcher::start("own_group_false");
    launcher.signal(libc::SIGKILL);
    let daemon = launcher
        .daemon
        .as_ref()
        .expect("the daemon reported its pid");
    assert!(
        daemon.gone_within(PROMPTLY),
        "the daemon ({}) still running {PROMPTLY:?} after SIGKILL to the launching process",
        daemon.pid
    );
}

#[test]
fn a_detached_daemon_outlives_the_launching_process() {
    let mut launcher = Launcher::start("detach");
    launcher.signal(libc::SIGKILL);
    launcher.wait_exit();
    // Past the point where a guardian would have killed it.
    thread::sleep(Duration::from_millis(500));
    launcher.assert_daemons_alive("after the launching process died: detached");
}

#[test]
fn a_daemon_launched_with_kill_on_exit_false_outlives_the_launching_process() {
    let mut launcher = Launcher::start("kill_on_exit_false");
    launcher.signal(libc::SIGKILL);
    launcher.wait_exit();
    thread::sleep(Duration::from_millis(500));
    launcher.assert_daemons_alive("after the launching process died: kill_on_exit(false)");
}

#[test]
fn a_killed_sd_launch_foreground_takes_the_daemons_child_with_it() {
    // PR_SET_PDEATHSIG reaches the daemon only; the guardian kills its whole group.
    let mut launcher = Launcher::command(Command::new(env!("CARGO_BIN_EXE_sd-launch")).args([
        "--foreground",
        "--",
        "sh",
        "-c",
        "sleep 300 & echo ORPHANS grandchild=$!; echo ORPHANS ready; exec sleep 300",
    ]));
    launcher.assert_daemons_alive("under sd-launch --foreground");
    launcher.signal(libc::SIGKILL);
    launcher.assert_daemons_gone("after SIGKILL to sd-launch --foreground");
}

#[test]
fn a_background_sd_launch_leaves_its_daemon_and_the_daemons_child_running() {
    // Without --foreground the daemon is meant to outlive sd-launch (`export $(sd-launch ..)`).
    let mut launcher = Launcher::command(
        Command::new(env!("CARGO_BIN_EXE_sd-launch"))
            .args(["--stdout", "/dev/null", "--", "sh", "-c"])
            .arg("sleep 300 & echo $! > \"$0\"; exec sleep 300")
            .arg(env::temp_dir().join(format!("orphans-{}.pid", std::process::id()))),
    );
    let status = launcher.wait_exit();
    assert!(status.success(), "sd-launch failed: {status}");
    let pidfile = env::temp_dir().join(format!("orphans-{}.pid", std::process::id()));
    let grandchild = wait_for(PROMPTLY, || {
        fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .expect("the daemon wrote its child's pid");
    let _ = fs::remove_file(&pidfile);
    launcher.grandchild = Proc::of(grandchild);
    thread::sleep(Duration::from_millis(500));
    launcher.assert_daemons_alive("after sd-launch exited");
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// A launching process the test started, and the daemon and daemon's child it reported.
struct Launcher {
    process: std::process::Child,
    token: String,
    lines: mpsc::Receiver<String>,
    daemon: Option<Proc>,
    grandchild: Option<Proc>,
}

impl Launcher {
    /// This binary as a launching process in `mode`, once it has launched its daemon.
    fn start(mode: &str) -> Launcher {
        let exe = env::current_exe().unwrap();
        Launcher::command(
            Command::new(exe)
                .args([
                    "--exact",
                    "launching_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(MODE, mode),
        )
    }

    /// Run `command` (which prints `ORPHANS daemon=`, `ORPHANS grandchild=` and `ORPHANS
    /// ready` lines, or some of them) with its stdout a pipe, in a process group of its own,
    /// until it is ready and the daemon's child has reported, or until its stdout ends.
    fn command(command: &mut Command) -> Launcher {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let token = format!(
            "{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let mut process = command
            .env(TOKEN, &token)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut launcher = Launcher {
            process,
            token,
            lines,
            daemon: None,
            grandchild: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ready = false;
        loop {
            if ready && launcher.grandchild.is_some() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match launcher.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("no `ORPHANS ready` within 30 s"),
            };
            // libtest may print `test launching_process ... ` before a daemon's line.
            let line = line.find("ORPHANS ").map_or(&*line, |at| &line[at..]);
            let pid = |prefix: &str| line.strip_prefix(prefix)?.parse().ok();
            if let Some(pid) = pid("ORPHANS daemon=") {
                launcher.daemon = Proc::of(pid);
            } else if let Some(pid) = pid("ORPHANS grandchild=") {
                launcher.grandchild = Proc::of(pid);
            } else if line == "ORPHANS ready" {
                ready = true;
            } else if let Some(pid) = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("LAUNCHED_PID="))
            {
                launcher.daemon = pid.parse().ok().and_then(Proc::of); // sd-launch's output
            }
        }
        launcher
    }

    fn daemons(&self) -> impl Iterator<Item = (&'static str, &Proc)> {
        [
            ("the daemon", &self.daemon),
            ("the daemon's child", &self.grandchild),
        ]
        .into_iter()
        .filter_map(|(what, p)| Some((what, p.as_ref()?)))
    }

    fn assert_daemons_alive(&self, when: &str) {
        assert!(
            self.grandchild.is_some(),
            "the daemon's child reported its pid"
        );
        for (what, p) in self.daemons() {
            assert!(p.alive(), "{what} ({}) is not running {when}", p.pid);
        }
    }

    fn assert_daemons_gone(&self, when: &str) {
        assert!(
            self.grandchild.is_some(),
            "the daemon's child reported its pid"
        );
        for (what, p) in self.daemons() {
            assert!(
                p.gone_within(PROMPTLY),
                "{what} ({}) still running {PROMPTLY:?} {when}",
                p.pid
            );
        }
    }

    /// `signal` to the launching process.
    fn signal(&mut self, signal: i32) {
        // SAFETY: kill of our own unreaped child (its pid cannot have been reused).
        assert_eq!(unsafe { libc::kill(self.process.id() as i32, signal) }, 0);
    }

    /// `signal` to the launching process's group, as a terminal sends Ctrl-C.
    fn signal_group(&mut self, signal: i32) {
        let group = -(self.process.id() as i32);
        // SAFETY: kill of the group our unreaped child leads (process_group(0)).
        let sent = unsafe { libc::kill(group, signal) };
        assert_eq!(sent, 0);
    }

    /// Wait (bounded) for the launching process to end.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_for(PROMPTLY, || self.process.try_wait().unwrap())
            .expect("the launching process ended")
    }

    /// Whether the launching process's stdout reaches end-of-file within `timeout`.
    fn stdout_closed_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// The launching process's guardian: named `sd-launch-guard`, with our token in its
    /// environment (it is a fork of the launching process).
    fn guardian(&self) -> Option<Proc> {
        wait_for(PROMPTLY, || self.guardian_now())
    }
}

impl Drop for Launcher {
    /// Nothing left behind, whatever the test found.
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        for (_, p) in self.daemons() {
            p.kill();
        }
        if let Some(guardian) = self.guardian_now() {
            guardian.kill();
        }
    }
}

impl Launcher {
    /// The guardian, if it runs now.
    fn guardian_now(&self) -> Option<Proc> {
        let token = format!("{TOKEN}={}", self.token);
        fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
            (comm.trim_end() == "sd-launch-guard"
                && environ.split(|&b| b == 0).any(|v| v == token.as_bytes()))
            .then(|| Proc::of(pid))
            .flatten()
        })
    }
}

/// A process identified by pid and start time, so a recycled pid is never taken for it.
struct Proc {
    pid: u32,
    start: String,
}

impl Proc {
    fn of(pid: u32) -> Option<Proc> {
        let start = stat(pid)?.get(19)?.clone();
        Some(Proc { pid, start })
    }

    /// Field `n` of /proc/<pid>/stat counted from the state (0), as in proc(5) minus 3.
    fn stat_field(&self, n: usize) -> String {
        stat(self.pid)
            .and_then(|f| f.get(n).cloned())
            .unwrap_or_default()
    }

    /// Running (or stopped), not a zombie, and still the same process.
    fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|f| f[0] != "Z" && f[0] != "X" && f[19] == self.start)
    }

    fn gone_within(&self, timeout: Duration) -> bool {
        wait_for(timeout, || (!self.alive()).then_some(())).is_some()
    }

    /// SIGKILL through a pidfd, if it is still the same process.
    fn kill(&self) {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) } as i32;
        if fd < 0 {
            return;
        }
        if self.alive() {
            // SAFETY: a signal through the pidfd we just opened, checked to be our process.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
        // SAFETY: closing the pidfd we opened.
        unsafe { libc::close(fd) };
    }
}

/// The fields of /proc/<pid>/stat after the command name: state first.
fn stat(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split(' ').map(str::to_owned).collect())
}

/// Poll `f` every 10 ms until it gives `Some` or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
