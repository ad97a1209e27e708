//! How demo-server reacts to stop signals, tested on the built binary with a loopback listener
//! passed at fd 3 (`LISTEN_FDS=1`, `--lenient`, as a launcher that omits `LISTEN_PID` would).
//!
//! * A stop signal is never lost, whenever it arrives during start-up: at random points, and at
//!   the worst one, held there with ptrace (see [`Server::start_held_at_handler_install`]).
//! * Once draining, more stop signals change nothing: the requests in flight are answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped demo-server may take to exit. Generous for a loaded CI machine; a lost
/// signal means it never exits at all.
const EXIT_BOUND: Duration = Duration::from_secs(5);

/// A demo-server of this test, killed (SIGKILL) and reaped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Start demo-server with a fresh loopback listener at fd 3.
    fn start(args: &[&str]) -> Server {
        Server::spawn(args, false)
    }

    /// Start demo-server with a fresh loopback listener at fd 3; `traced`: it stops at its
    /// `execve` as a ptrace tracee of the calling thread (`PTRACE_TRACEME`).
    fn spawn(args: &[&str], traced: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let addr = listener.local_addr().unwrap();
        let raw = listener.as_raw_fd();
        let mut command = Command::new(env!("CARGO_BIN_EXE_demo-server"));
        command
            .arg("--lenient")
            .args(args)
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_PIDFDID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LISTEN_FDS_FIRST_FD")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and calls only dup2, fcntl
        // and ptrace, which are async-signal-safe system calls; it allocates nothing and takes
        // no lock.
        unsafe {
            command.pre_exec(move || {
                if traced && libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 onto fd 3 clears FD_CLOEXEC on the copy; if the listener already is
                // fd 3, clear the flag by hand.
                let rc = if raw == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn demo-server");
        Server { child, addr }
    }

    /// Start demo-server and send it `signal` at the worst moment of its start-up: the
    /// instant its handler for `signal` is installed (`rt_sigaction` has returned), before
    /// the code that installed it has recorded where the signal should go.
    ///
    /// A random delay hits that window (a few instructions) too rarely to test, so the main
    /// thread, the one that registers the handlers, is run under ptrace one system call at a
    /// time until `SigCgt` shows the handler, and held there: the signal is sent, the other
    /// threads (not traced) get [`HOLD`] to take it, then the main thread is let go.
    fn start_held_at_handler_install(signal: libc::c_int) -> Server {
        /// How long the main thread is held after the signal was sent.
        const HOLD: Duration = Duration::from_millis(50);
        let server = Server::spawn(&[], true);
        let pid = server.pid();
        let deadline = Instant::now() + EXIT_BOUND;
        // The first stop is the SIGTRAP of execve.
        let status = server.wait_traced(deadline);
        assert!(libc::WIFSTOPPED(status), "not stopped at exec: {status:#x}");
        let options = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL;
        // SAFETY: ptrace on our stopped tracee with integer arguments; no memory is shared.
        let rc = unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options) };
        assert_eq!(
            rc,
            0,
            "PTRACE_SETOPTIONS: {}",
            std::io::Error::last_os_error()
        );
        let mut pass_on = 0; // a signal that arrived while traced is passed on, not swallowed
        loop {
            // SAFETY: as above; resumes the tracee until its next system call entry or exit.
            let rc = unsafe { libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, pass_on) };
            assert_eq!(rc, 0, "PTRACE_SYSCALL: {}", std::io::Error::last_os_error());
            pass_on = 0;
            let status = server.wait_traced(deadline);
            assert!(
                libc::WIFSTOPPED(status),
                "demo-server ended before installing a handler for signal {signal}: {status:#x}"
            );
            if libc::WSTOPSIG(status) != libc::SIGTRAP | 0x80 {
                pass_on = libc::WSTOPSIG(status);
            } else if server.catches(signal) {
                break; // the exit of the rt_sigaction that installed it
            }
        }
        server.signal(signal);
        std::thread::sleep(HOLD);
        // SAFETY: as above; the tracee is stopped, as PTRACE_DETACH requires.
        let rc = unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
        assert_eq!(rc, 0, "PTRACE_DETACH: {}", std::io::Error::last_os_error());
        server
    }

    /// The next ptrace stop (or the end) of our tracee, polled until `deadline`. Stops are
    /// frequent (every system call), so this spins rather than sleeps.
    fn wait_traced(&self, deadline: Instant) -> libc::c_int {
        let mut status = 0;
        loop {
            // SAFETY: waitpid writes the status into a valid `c_int`; WNOHANG never blocks.
            let rc = unsafe { libc::waitpid(self.pid(), &mut status, libc::WNOHANG) };
            assert!(rc >= 0, "waitpid: {}", std::io::Error::last_os_error());
            if rc > 0 {
                return status;
            }
            assert!(Instant::now() < deadline, "demo-server stuck while traced");
            std::thread::yield_now();
        }
    }

    /// Send `GET path` on a new connection (`Connection: close`); the caller reads the answer.
    fn request(&self, path: &str) -> TcpStream {
        let mut conn = TcpStream::connect(self.addr).expect("connect");
        conn.set_read_timeout(Some(EXIT_BOUND)).unwrap();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        conn
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill takes plain integers; the pid is our unreaped child, so it cannot have
        // been recycled for another process.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Whether the process has a handler installed for `signal` (`SigCgt` in
    /// `/proc/PID/status`); false once it is gone.
    fn catches(&self, signal: libc::c_int) -> bool {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid())) else {
            return false;
        };
        status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
    }

    /// Wait up to `bound` for the process to exit.
    fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stopped as asked: exit 0 after a drain, or killed by the signal itself (it arrived before
/// `main` could handle it, when the default action applies).
fn stopped_by(status: ExitStatus, signal: libc::c_int) -> bool {
    status.code() == Some(0) || status.signal() == Some(signal)
}

/// Start-up points to aim a stop signal at: at once (before `main`), after a few growing
/// delays, and, the dangerous one, the moment the signal handler appears in `SigCgt` (the
/// handler is installed, the tokio stream that reads it may not be yet).
#[derive(Debug, Clone, Copy)]
enum When {
    AtOnce,
    After(Duration),
    HandlerInstalled,
}

fn moments(iterations: u32) -> impl Iterator<Item = When> {
    (0..iterations).map(|i| match i % 4 {
        0 => When::AtOnce,
        1 => When::After(Duration::from_micros(u64::from(i % 40) * 50)),
        _ => When::HandlerInstalled,
    })
}

fn stop_during_start_up(signal: libc::c_int, iterations: u32) {
    let mut lost = Vec::new();
    for (i, when) in moments(iterations).enumerate() {
        let mut server = Server::start(&[]);
        match when {
            When::AtOnce => {}
            When::After(delay) => std::thread::sleep(delay),
            When::HandlerInstalled => {
                // Bounded busy poll: start-up takes milliseconds.
                let deadline = Instant::now() + EXIT_BOUND;
                while !server.catches(signal) && Instant::now() < deadline {}
            }
        }
        server.signal(signal);
        match server.wait_exit(EXIT_BOUND) {
            Some(status) => assert!(
                stopped_by(status, signal),
                "iteration {i} ({when:?}): {status}"
            ),
            None => lost.push(format!("{i} ({when:?})")),
        }
    }
    assert!(
        lost.is_empty(),
        "signal {signal} lost: demo-server still running {EXIT_BOUND:?} later in {} of \
         {iterations} start-ups: {}",
        lost.len(),
        lost.join(", ")
    );
}

#[test]
fn sigterm_at_any_point_of_start_up_stops_the_server() {
    stop_during_start_up(libc::SIGTERM, 200);
}

#[test]
fn sigint_at_any_point_of_start_up_stops_the_server() {
    stop_during_start_up(libc::SIGINT, 200);
}

/// The signal arrives the instant the handler is installed, before tokio knows where to send
/// it: it must still stop the server gracefully (exit 0 after the drain), every time.
fn stop_at_handler_install(signal: libc::c_int) {
    for i in 0..10 {
        let mut server = Server::start_held_at_handler_install(signal);
        let Some(status) = server.wait_exit(EXIT_BOUND) else {
            // Show that it is alive and well, just deaf to the first signal.
            server.signal(signal);
            let again = server.wait_exit(EXIT_BOUND);
            panic!(
                "attempt {i}: signal {signal}, sent just as its handler was installed, was \
                 lost: demo-server still running {EXIT_BOUND:?} later (the same signal sent \
                 again then: {again:?})"
            );
        };
        assert_eq!(status.code(), Some(0), "attempt {i}: {status}");
    }
}

#[test]
fn sigterm_just_as_its_handler_is_installed_stops_the_server() {
    stop_at_handler_install(libc::SIGTERM);
}

#[test]
fn sigint_just_as_its_handler_is_installed_stops_the_server() {
    stop_at_handler_install(libc::SIGINT);
}

/// The whole answer on `conn` (the server closes it after one response), or the I/O error.
fn read_answer(mut conn: TcpStream) -> std::io::Result<String> {
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A request is in flight when the first stop signal arrives, and `more` stop signals follow
/// within a few milliseconds, as when a terminal's Ctrl-C reaches both the daemon and a
/// launcher that forwards it: the request must still be answered, and the server exit 0
/// once it is.
fn drain_survives(first: libc::c_int, more: &[libc::c_int]) {
    let mut server = Server::start(&[]);
    let healthz = read_answer(server.request("/healthz")).expect("GET /healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let in_flight = server.request("/slow?ms=700");
    std::thread::sleep(Duration::from_millis(200)); // accepted and read: now in flight
    let started = Instant::now();
    server.signal(first);
    for &signal in more {
        std::thread::sleep(Duration::from_millis(2));
        server.signal(signal);
    }
    let answer = read_answer(in_flight);
    let answer = answer.as_deref().unwrap_or_else(|e| {
        panic!("the in-flight request got no answer after signals {first} then {more:?}: {e}")
    });
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("slept 700 ms\n"),
        "the in-flight request was cut off after signals {first} then {more:?}: {answer:?}"
    );
    let status = server.wait_exit(EXIT_BOUND).expect("exits after the drain");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(400), "no drain?");
}

#[test]
fn a_sigterm_lets_the_request_in_flight_finish() {
    drain_survives(libc::SIGTERM, &[]);
}

#[test]
fn a_repeated_sigterm_does_not_cut_the_drain_short() {
    drain_survives(libc::SIGTERM, &[libc::SIGTERM]);
}

#[test]
fn sigint_twice_like_ctrl_c_seen_by_the_daemon_and_its_launcher_still_drains() {
    drain_survives(libc::SIGINT, &[libc::SIGINT]);
}

#[test]
fn any_mix_of_repeated_stop_signals_still_drains() {
    drain_survives(libc::SIGTERM, &[libc::SIGINT, libc::SIGTERM, libc::SIGINT]);
}
