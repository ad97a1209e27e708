//! Accept mode (systemd `Accept=yes`, `systemd-socket-activate -a [--inetd]`): one daemon per
//! connection, from the library (`sd_launch::accept`) and from `sd-launch --accept`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_launch::accept::{Options, Pass, Served};
use sd_launch::{Error, Launch};

const SD_LAUNCH: &str = env!("CARGO_BIN_EXE_sd-launch");

/// A hang guard for reads, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(20);

/// What a daemon reports about itself: its pid and protocol variables, written to the
/// connection (fd 3), then it keeps the connection until the client closes it.
const REPORT: &str = r#"echo "pid=$$ fds=$LISTEN_FDS listen_pid=$LISTEN_PID names=$LISTEN_FDNAMES remote=$REMOTE_ADDR" >&3; read -r _ <&3"#;

fn connect(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn
}

/// Read one line from `conn` (the daemon's report), as `key=value` pairs.
fn report(conn: &TcpStream) -> BTreeMap<String, String> {
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    assert!(line.ends_with('\n'), "no report, got {line:?}");
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn pid_of(report: &BTreeMap<String, String>) -> libc::pid_t {
    report["pid"].parse().unwrap()
}

/// The process state letter of `pid`; `None` once it is gone entirely (reaped).
fn state(pid: libc::pid_t) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Wait (bounded, as a hang guard) until `pid` is gone entirely: exited *and* reaped.
fn reaped(pid: libc::pid_t) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if state(pid).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// An acceptor serving `script` (`sh -c`) in a thread; stopped and joined when dropped.
struct Serving {
    addrs: Vec<SocketAddr>,
    stopper: sd_launch::accept::Stopper,
    thread: Option<JoinHandle<Result<Served, Error>>>,
}

impl Serving {
    fn start(options: Options, script: &'static str) -> Serving {
        let acceptor = options.bind().unwrap();
        let addrs = (0..acceptor.sockets().len())
            .map(|i| acceptor.local_addr(i))
            .collect();
        let stopper = acceptor.stopper();
        let thread = std::thread::spawn(move || {
            acceptor.serve(None, |_conn| {
                Launch::new("sh")
                    .args(["-c", script])
                    .stdin(sd_launch::Stdio::null())
            })
        });
        Serving {
            addrs,
            stopper,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Served {
        self.stopper.stop();
        self.thread.take().unwrap().join().unwrap().unwrap()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn each_connection_gets_its_own_daemon_with_the_connection_at_fd_3() {
    let serving = Serving::start(Options::new(), REPORT);
    let first = connect(serving.addrs[0]);
    let second = connect(serving.addrs[0]);
    let (a, b) = (report(&first), report(&second));
    for r in [&a, &b] {
        // The report arrived over the connection: fd 3 is the connected socket.
        assert_eq!(r["fds"], "1", "{r:?}");
        assert_eq!(
            r["listen_pid"], r["pid"],
            "LISTEN_PID is the daemon's own pid"
        );
        assert_eq!(r["names"], "connection", "systemd's name for Accept=yes");
        assert_eq!(r["remote"], "127.0.0.1");
        assert_ne!(pid_of(r), std::process::id() as libc::pid_t);
    }
    assert_ne!(a["pid"], b["pid"], "one daemon per connection");
    drop((first, second));
    assert_eq!(serving.stop().connections, 2);
}

#[test]
fn a_connection_is_named_after_the_listener_it_came_in_on() {
    let options = Options::new()
        .listen(sd_launch::SocketSpec::loopback().name("api"))
        .listen_on("127.0.0.1:0");
    let serving = Serving::start(options, REPORT);
    let api = connect(serving.addrs[0]);
    let other = connect(serving.addrs[1]);
    assert_eq!(report(&api)["names"], "api");
    assert_eq!(report(&other)["names"], "connection");
}

#[test]
fn inetd_daemons_talk_over_stdin_and_stdout_and_get_no_listen_variables() {
    let options = Options::new().pass(Pass::Inetd);
    let serving = Serving::start(
        options,
        r#"read -r line; echo "echo $line fds=${LISTEN_FDS:-none} pid=$$""#,
    );
    let mut pids = Vec::new();
    for word in ["one", "two"] {
        let mut conn = connect(serving.addrs[0]);
        writeln!(conn, "{word}").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        let (head, pid) = reply.trim_end().rsplit_once(" pid=").unwrap();
        assert_eq!(head, format!("echo {word} fds=none"));
        pids.push(pid.to_owned());
    }
    assert_ne!(pids[0], pids[1]);
}

#[test]
fn the_client_sees_the_end_when_the_daemon_closes_the_connection_not_when_it_exits() {
    // Our copy of the connection is closed once the daemon runs: when the daemon closes
    // fd 3 and keeps running, the client reads end-of-file.
    let serving = Serving::start(
        Options::new(),
        r#"echo "pid=$$" >&3; exec 3>&-; exec sleep 30"#,
    );
    let mut conn = connect(serving.addrs[0]);
    let mut all = String::new();
    conn.read_to_string(&mut all)
        .expect("end of file, not a read timeout: someone still holds the connection");
    let pid: libc::pid_t = all.trim().strip_prefix("pid=").unwrap().parse().unwrap();
    assert!(
        matches!(state(pid), Some(c) if c != 'Z'),
        "the daemon still runs"
    );
    serving.stop();
    assert!(reaped(pid), "stopping killed and reaped the daemon");
}

#[test]
fn finished_daemons_are_reaped_while_serving_goes_on() {
    let serving = Serving::start(Options::new(), REPORT);
    for _ in 0..3 {
        let conn = connect(serving.addrs[0]);
        let pid = pid_of(&report(&conn));
        drop(conn); // the daemon's `read` ends: it exits
        assert!(reaped(pid), "daemon {pid} left as a zombie");
    }
    assert_eq!(serving.stop().connections, 3);
}

#[test]
fn max_connections_keeps_further_connections_in_the_backlog_until_a_daemon_exits() {
    let serving = Serving::start(Options::new().max_connections(2), REPORT);
    let first = connect(serving.addrs[0]);
    let second = connect(serving.addrs[0]);
    let (a, b) = (report(&first), report(&second));
    // The third connection is accepted by the kernel (backlog) but gets no daemon while
    // two run. A non-event has no signal to wait for: look for a while.
    let third = connect(serving.addrs[0]);
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = (&third).read(&mut byte);
    assert!(
        early
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a third daemon answered while two ran: {early:?}"
    );
    third.set_read_timeout(Some(PATIENCE)).unwrap();
    drop(first); // one daemon exits: the waiting connection gets its daemon
    let c = report(&third);
    assert_ne!(c["pid"], a["pid"]);
    assert_ne!(c["pid"], b["pid"]);
    drop((second, third));
    assert_eq!(serving.stop().connections, 3);
}

#[test]
fn stopping_sends_sigterm_to_running_daemons_and_reaps_them() {
    let serving = Serving::start(Options::new(), r#"echo "pid=$$" >&3; exec sleep 30"#);
    let conn = connect(serving.addrs[0]);
    let pid = pid_of(&report(&conn));
    let served = serving.stop();
    assert_eq!(
        served,
        Served {
            connections: 1,
            failed: 0,
            signal: None
        }
    );
    assert_eq!(state(pid), None, "serve returned with its daemon reaped");
}

#[test]
fn a_missing_program_stops_serving_with_its_error() {
    let acceptor = Options::new().bind().unwrap();
    let addr = acceptor.local_addr(0);
    let client = std::thread::spawn(move || {
        let mut conn = connect(addr);
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).map(|_| rest)
    });
    let err = acceptor
        .serve(None, |_| Launch::new("no-such-program-anywhere"))
        .unwrap_err();
    assert_eq!(err.exit_code(), 127, "{err}");
    // The client is not left hanging: its connection was closed unanswered.
    assert!(client.join().unwrap().unwrap_or_default().is_empty());
}

// ---- the command ----------------------------------------------------------------------

/// `sd-launch --accept ...` in the background; killed when dropped.
struct Cli {
    child: Child,
    port: u16,
}

impl Cli {
    fn start(args: &[&str]) -> Cli {
        let mut child = Command::new(SD_LAUNCH)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut vars = BTreeMap::new();
        while !vars.contains_key("LAUNCHED_PID") {
            let mut line = String::new();
            assert_ne!(
                out.read_line(&mut line).unwrap(),
                0,
                "sd-launch exited early"
            );
            let (k, v) = line.trim_end().split_once('=').unwrap();
            vars.insert(k.to_owned(), v.to_owned());
        }
        // In accept mode the pid is sd-launch's own: the one to signal.
        assert_eq!(vars["LAUNCHED_PID"], child.id().to_string());
        let port = vars["LAUNCHED_PORT"].parse().unwrap();
        Cli { child, port }
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill with our own (unreaped) child's pid and a valid signal.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cli_accept_starts_one_daemon_per_connection_with_the_connection_at_fd_3() {
    let cli = Cli::start(&["--accept", "--", "sh", "-c", REPORT]);
    let first = connect(cli.addr());
    let second = connect(cli.addr());
    let (a, b) = (report(&first), report(&second));
    for r in [&a, &b] {
        assert_eq!(r["fds"], "1");
        assert_eq!(r["listen_pid"], r["pid"]);
        assert_eq!(r["names"], "connection");
    }
    assert_ne!(a["pid"], b["pid"]);
}

#[test]
fn cli_fdname_names_the_connections_of_each_listener() {
    let cli = Cli::start(&[
        "--accept",
        "-l",
        "127.0.0.1:0",
        "--fdname",
        "web",
        "--",
        "sh",
        "-c",
        REPORT,
    ]);
    assert_eq!(report(&connect(cli.addr()))["names"], "web");
}

#[test]
fn cli_inetd_passes_the_connection_on_stdin_and_stdout() {
    let cli = Cli::start(&[
        "--accept",
        "--inetd",
        "--",
        "sh",
        "-c",
        r#"while read -r line; do echo "echo $line ${LISTEN_FDS:-no-listen-fds}"; done"#,
    ]);
    let mut conn = connect(cli.addr());
    writeln!(conn, "hello").unwrap();
    writeln!(conn, "again").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert_eq!(
        reply,
        "echo hello no-listen-fds\necho again no-listen-fds\n"
    );
}

#[test]
fn cli_sigterm_or_sigint_stop_accept_mode_with_0_and_no_daemon_left() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut cli = Cli::start(&["--accept", "--", "sh", "-c", REPORT]);
        let conns: Vec<TcpStream> = (0..2).map(|_| connect(cli.addr())).collect();
        let pids: Vec<libc::pid_t> = conns.iter().map(|c| pid_of(&report(c))).collect();
        cli.signal(sig);
        let status = cli.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "signal {sig}");
        for pid in pids {
            // sd-launch reaped them before exiting: not even a zombie is left.
            assert_eq!(
                state(pid),
                None,
                "daemon {pid} outlived sd-launch (signal {sig})"
            );
        }
        // And it no longer listens.
        assert!(TcpStream::connect(cli.addr()).is_err());
    }
}

#[test]
fn cli_forwards_sighup_to_every_running_daemon_and_keeps_serving() {
    let cli = Cli::start(&[
        "--accept",
        "--",
        "sh",
        "-c",
        r#"trap 'echo hup >&3' HUP; echo "pid=$$" >&3; while :; do sleep 0.05; done"#,
    ]);
    let conn = connect(cli.addr());
    let mut lines = BufReader::new(&conn).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("pid="));
    cli.signal(libc::SIGHUP);
    assert_eq!(lines.next().unwrap().unwrap(), "hup");
    // Still accepting.
    assert!(report(&connect(cli.addr())).contains_key("pid"));
}

#[test]
fn cli_rejects_what_accept_mode_cannot_do_with_exit_2_and_prints_nothing() {
    let cases: &[&[&str]] = &[
        &["--accept", "--datagram", "--", "cat"],
        &["--inetd", "--", "cat"],
        &["--accept", "--inetd", "--fdname", "x", "--", "cat"],
        &["--accept", "--inetd", "--stdout", "/dev/null", "--", "cat"],
        &["--accept", "--restart", "--", "cat"],
        &["--accept", "--ready", "--", "cat"],
        &["--accept", "--max-connections", "0", "--", "cat"],
        &["--max-connections", "3", "--", "cat"],
        &["--accept", "-l", "0", "--fdname", "a:b", "--", "cat"],
    ];
    for args in cases {
        let out = Command::new(SD_LAUNCH)
            .args(*args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn cli_reports_a_missing_program_before_printing_anything() {
    let out = Command::new(SD_LAUNCH)
        .args(["--accept", "--", "no-such-program-anywhere"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
