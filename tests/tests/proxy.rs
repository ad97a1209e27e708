//! `sd-launch --proxy`: daemons that do not speak LISTEN_FDS, behind sockets whose address is
//! known before they start and that a client can connect to at once; with a readiness wait
//! (`--ready`, `--ready-when`) the launch and the connections wait for the daemon, and with
//! `--restart=on-exit` a daemon that exits is started again behind the same port. Real
//! daemons (Redis, memcached, demo-server binding its own `--listen`, small Python
//! servers), the real CLI, loopback and Unix traffic only; each test stops what it started.

use sd_launch_tests::{ChildGuard, bin, get_tcp, tool, wait_gone};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `sd-launch --proxy ARGS` in the background, as `export $(...)` runs it: the command
/// returns (its stdout closed) once it has printed; the proxy process runs on, its log (and
/// the daemon's, if sent there) in a file. Dropping it stops the proxy, which stops the
/// daemon.
struct Background {
    port: u16,
    pid: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Background {
    fn start<S: AsRef<OsStr>>(args: &[S]) -> Background {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("proxy.log");
        // `output()` reads stdout to its end: it returns only because the proxy process
        // does not hold it.
        let out = Command::new(bin("sd-launch"))
            .arg("--proxy")
            .args(args)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sd-launch --proxy failed ({}): {text}\n{}",
            out.status,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {text:?}"))
                .parse::<u32>()
                .unwrap()
        };
        Background {
            port: value("LAUNCHED_PORT=") as u16,
            pid: value("LAUNCHED_PID="),
            log,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many fds the proxy process holds.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.pid).unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill(2) on the proxy process this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            // The proxy exits only once its daemon has (SIGKILL after the stop timeout).
            assert!(wait_gone(self.pid), "the proxy did not exit on SIGTERM");
        }
    }
}

/// `sd-launch --proxy --foreground ARGS`, our child, with its printed port.
fn foreground<S: AsRef<OsStr>>(args: &[S], log: &std::path::Path) -> (ChildGuard, SocketAddr) {
    let mut child = ChildGuard(
        Command::new(bin("sd-launch"))
            .args(["--proxy", "--foreground"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim_end()
        .strip_prefix("LAUNCHED_PORT=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse::<u16>()
        .unwrap();
    (child, ([127, 0, 0, 1], port).into())
}

/// Wait (bounded) for our child to exit.
fn exit_within(child: &mut ChildGuard, within: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A daemon in Python that listens where it is told (a Unix path), after `delay` seconds,
/// and answers each connection once the client has sent its end: what it read, upper-cased.
fn upper_after_eof(delay: &str) -> Vec<String> {
    [
        "python3",
        "-c",
        sd_launch_tests::UPPER_AFTER_EOF,
        "${backend.path}",
        delay,
    ]
    .map(String::from)
    .to_vec()
}

/// Send `request`, read until the reply ends with `end` (or the peer's end).
fn send(addr: SocketAddr, request: &[u8], end: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(20)))?;
    c.write_all(request)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf)?;
        reply.extend_from_slice(&buf[..n]);
        if n == 0 || reply.ends_with(end) {
            return Ok(reply);
        }
    }
}

/// A marker unique to this test run and `test`, for [`left_running`]: pass it as an
/// argument or in the environment of what a test starts.
fn marker(test: &str) -> String {
    format!("sd-launch-test-{}-{test}", std::process::id())
}

/// The processes with `marker` in an argument or an environment variable: the daemons a
/// test started, and the sd-launch processes that started them (their arguments hold it).
fn with_marker(marker: &str) -> Vec<u32> {
    let has = |pid: u32, file: &str| {
        std::fs::read(format!("/proc/{pid}/{file}")).is_ok_and(|text| {
            text.split(|b| *b == 0)
                .any(|arg| arg.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| sd_launch_tests::alive(pid) && (has(pid, "cmdline") || has(pid, "environ")))
        .collect()
}

/// Wait (30 s at most) until no process with `marker` runs; those left otherwise.
fn left_running(marker: &str) -> Vec<u32> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let left = with_marker(marker);
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: the fields after the parenthesised name.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// The arguments of process `pid`.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Whether a Unix stream socket listens on `path`, by the kernel's table (no connection:
/// the daemon sees nothing).
fn unix_listening(path: &str) -> bool {
    // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 is __SO_ACCEPTCON.
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.len() == 8 && f[3] == "00010000" && f[7] == path)
}

/// `sd-launch --proxy ARGS` run to its end (a launch expected to fail: it returns once
/// the readiness wait has ended, bounded by the wait's own timeout).
fn launch<S: AsRef<OsStr>>(args: &[S]) -> std::process::Output {
    Command::new(bin("sd-launch"))
        .arg("--proxy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A daemon in Python that listens where it is told (a Unix path) at once, and becomes
/// ready `delay` seconds later: it then prints "ready to serve" and sends READY=1 when it
/// has a `NOTIFY_SOCKET`. Each connection is answered "early" before that, "ready" after,
/// and closed.
fn ready_later(delay: &str) -> Vec<String> {
    [
        "python3",
        "-c",
        "import os,socket,sys,threading\n\
         ready=threading.Event()\n\
         def become_ready():\n\
         \x20   ready.set(); print('ready to serve', flush=True)\n\
         \x20   a=os.environ.get('NOTIFY_SOCKET')\n\
         \x20   if a:\n\
         \x20       n=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         \x20       n.sendto(b'READY=1', '\\0'+a[1:] if a[0]=='@' else a)\n\
         s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(128)\n\
         threading.Timer(float(sys.argv[2]), become_ready).start()\n\
         while True:\n\
         \x20   c,_=s.accept(); c.sendall(b'ready' if ready.is_set() else b'early'); c.close()\n",
        "${backend.path}",
        delay,
    ]
    .map(String::from)
    .to_vec()
}

/// A client on the Unix socket `path`, in a thread: it connects as soon as the socket
/// takes connections (retrying, 30 s at most), then reads the reply to its end. It
/// returns when it was connected, and the reply.
fn client_as_soon_as_it_listens(path: PathBuf) -> std::thread::JoinHandle<(Instant, String)> {
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        let mut c = loop {
            match std::os::unix::net::UnixStream::connect(&path) {
                Ok(c) => break c,
                Err(e) if Instant::now() >= end => panic!("{}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        let connected = Instant::now();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        (connected, reply)
    })
}

#[test]
fn the_redis_example_of_the_readme_works_as_written() {
    let (Some(_), Some(_)) = (
        tool("redis-server", "redis-server"),
        tool("redis-cli", "redis-tools"),
    ) else {
        return;
    };
    let sd_launch = bin("sd-launch");
    let script = format!(
        "export $({} --proxy -- redis-server --port 0 --unixsocket '${{backend.path}}' --save '') \
         && redis-cli -p $LAUNCHED_PORT ping; kill $LAUNCHED_PID; echo pid=$LAUNCHED_PID",
        sd_launch.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("PONG\n"), "{text:?}");
    let pid: u32 = text.trim().rsplit("pid=").next().unwrap().parse().unwrap();
    assert!(
        wait_gone(pid),
        "the proxy (and redis with it) stops on SIGTERM"
    );
}

#[test]
fn redis_answers_the_first_command_sent_before_it_listens() {
    if tool("redis-server", "redis-server").is_none() {
        return;
    }
    let proxy = Background::start(&[
        "--",
        "redis-server",
        "--port",
        "0",
        "--unixsocket",
        "${backend.path}",
        "--save",
        "",
    ]);
    // Sent at once, while redis may still be starting: it waits, is not refused.
    let request = b"SET greeting hello\r\nGET greeting\r\n";
    let reply = send(proxy.addr(), request, b"hello\r\n").unwrap();
    let reply = String::from_utf8(reply).unwrap();
    assert_eq!(reply, "+OK\r\n$5\r\nhello\r\n", "{}", proxy.log());
}

#[test]
fn memcached_speaks_its_text_protocol_through_the_proxy() {
    if tool("memcached", "memcached").is_none() {
        return;
    }
    // memcached refuses to run as root unless told which user to be.
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let mut args = vec!["--", "memcached", "-s", "${backend.path}"];
    if root {
        args.extend(["-u", "root"]);
    }
    let proxy = Background::start(&args);
    let stored = send(proxy.addr(), b"set k 0 0 5\r\nvalue\r\n", b"\r\n").unwrap();
    assert_eq!(stored, b"STORED\r\n", "{}", proxy.log());
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"get k\r\nquit\r\n").unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap(); // `quit`: memcached closes, we pass it on
    assert_eq!(reply, "VALUE k 0 5\r\nvalue\r\nEND\r\n");
}

#[test]
fn demo_server_binding_its_own_listen_address_is_served_behind_the_proxy() {
    let proxy = Background::start(&[
        OsStr::new("--"),
        bin("demo-server").as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:${backend.port}"),
    ]);
    let info = get_tcp(proxy.addr(), "/info").unwrap();
    assert_eq!(info.status, 200, "{}", proxy.log());
    let info: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(info["activated"], false, "it got no socket of ours: {info}");
    let own = info["sockets"][0]["local"].as_str().unwrap();
    assert_ne!(own, proxy.addr().to_string(), "it listens privately");
}

#[test]
fn a_thousand_clients_that_connect_before_the_daemon_listens_are_all_served() {
    // demo-server starts one second late: every client is connected (to us) before.
    let proxy = Background::start(&[
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new("sleep 1; exec \"$0\" --listen 127.0.0.1:$1"),
        bin("demo-server").as_os_str(),
        OsStr::new("${backend.port}"),
    ]);
    let started = Instant::now();
    let mut clients: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut c = TcpStream::connect(proxy.addr())
                .unwrap_or_else(|e| panic!("client {i} refused: {e}"));
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "all connected before the daemon could listen ({:?})",
        started.elapsed()
    );
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut raw = Vec::new();
        c.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("client {i}: {e}\n{}", proxy.log()));
        let r = sd_launch_tests::parse_response(&raw).unwrap();
        assert_eq!(r.status, 200, "client {i}");
    }
}

#[test]
fn a_client_that_sends_its_end_still_gets_the_reply() {
    if tool("python3", "python3").is_none() {
        return;
    }
    let proxy = Background::start(&[&["--".to_string()], &upper_after_eof("0")[..]].concat());
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"half closed").unwrap();
    c.shutdown(Shutdown::Write).unwrap(); // the daemon answers only after this end
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "HALF CLOSED", "{}", proxy.log());
}

#[test]
fn no_fd_is_left_behind_per_connection() {
    if tool("python3", "python3").is_none() {
        return;
    }
    let proxy = Background::start(&[&["--".to_string()], &upper_after_eof("0")[..]].concat());
    let once = |i: usize| {
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(format!("n{i}").as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, format!("N{i}"));
    };
    once(0); // the backend is up: from now on every connection is served the same way
    // The proxy closes its side right after passing the end on, a moment after the client
    // may see it: the count is taken once it holds still (bounded).
    let mut before = proxy.fds();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = proxy.fds();
        if now == before {
            break;
        }
        before = now;
    }
    for i in 1..=300 {
        once(i);
    }
    // Bounded wait for the last connection's moment, then the count must be back.
    let end = Instant::now() + Duration::from_secs(10);
    while proxy.fds() != before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        proxy.fds(),
        before,
        "fds of the proxy after 300 connections"
    );
}

#[test]
fn when_the_daemon_dies_clients_are_closed_and_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let (mut child, addr) = foreground(
        &["--", "sh", "-c", "sleep 0.5; exit 3", "${backend.path}"],
        &log,
    );
    let mut waiting = TcpStream::connect(addr).unwrap(); // the daemon never listens
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let status = exit_within(&mut child, Duration::from_secs(10)).expect("sd-launch exits");
    assert_eq!(status.code(), Some(3), "the daemon's status");
    let started = Instant::now();
    let mut buf = [0u8; 1];
    assert!(matches!(waiting.read(&mut buf), Ok(0) | Err(_)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed, not hung"
    );
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn a_daemon_that_never_listens_costs_a_client_the_connect_timeout_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let (mut child, addr) = foreground(
        &[
            "--connect-timeout",
            "0.5",
            "--",
            "sh",
            "-c",
            "echo 'FATAL: no config file' >&2; sleep 30",
            "${backend.path}",
        ],
        &log,
    );
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    assert!(
        matches!(c.read(&mut buf), Ok(0) | Err(_)),
        "closed unanswered"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let status = exit_within(&mut child, Duration::from_secs(20)).expect("sd-launch exits");
    assert_eq!(status.code(), Some(0), "stopped by SIGTERM");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("did not accept it within 500ms"), "{log}");
    assert!(
        log.contains("FATAL: no config file"),
        "the daemon's tail: {log}"
    );
}

#[test]
fn a_daemon_never_told_where_to_listen_is_a_usage_error() {
    let out = Command::new(bin("sd-launch"))
        .args(["--proxy", "--", "redis-server", "--port", "6379"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the daemon is never told where to listen"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = Command::new(bin("sd-launch"))
        .args(["--proxy", "--datagram", "--", "d", "${backend.port}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream connections"));
}

#[test]
fn sighup_restarts_under_load_fail_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // demo-server binds its own --listen: a new port for every daemon.
    let proxy = Background::start(&[
        OsStr::new("--restart"),
        OsStr::new("--"),
        bin("demo-server").as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:${backend.port}"),
    ]);
    let addr = proxy.addr();
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (done, tx) = (done.clone(), tx.clone());
            std::thread::spawn(move || {
                let (mut served, mut failures) = (0u32, Vec::new());
                while !done.load(Ordering::Relaxed) {
                    match get_tcp(addr, "/info") {
                        Ok(r) if r.status == 200 => {
                            let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                            let _ = tx.send(info["pid"].as_u64().unwrap());
                            served += 1;
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                }
                (served, failures)
            })
        })
        .collect();
    let mut pids = vec![
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a first reply"),
    ];
    for _ in 0..5 {
        // SAFETY: kill(2) on the proxy process this test started.
        unsafe { libc::kill(proxy.pid as libc::pid_t, libc::SIGHUP) };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let pid = rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no reply from a new daemon\n{}", proxy.log()));
            if !pids.contains(&pid) {
                pids.push(pid);
                break;
            }
        }
        // Under load for 100 more requests before the next restart.
        for _ in 0..100 {
            rx.recv_timeout(Duration::from_secs(20))
                .expect("replies go on");
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut served = 0;
    for client in clients {
        let (n, failures) = client.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} failed: {failures:?}\n{}",
            failures.len(),
            proxy.log()
        );
        served += n;
    }
    assert_eq!(pids.len(), 6, "six daemons served in turn: {pids:?}");
    eprintln!("{served} requests over 5 restarts, 0 failed");
}

/// PostgreSQL's server binaries (`initdb`, `postgres`), which Debian keeps off PATH.
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").is_file() && bin.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .or_else(|| sd_launch_tests::skip("PostgreSQL's server", "apt-get install -y postgresql"))
}

#[test]
fn postgresql_answers_psql_at_once_behind_the_proxy() {
    let (Some(pg), Some(psql)) = (postgres_bin(), tool("psql", "postgresql-client")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL refuses to run as root: then it runs as the postgres user, on a data
    // directory of its own.
    // SAFETY: getuid has no preconditions.
    let as_user: Vec<String> = if unsafe { libc::getuid() } == 0 {
        let out = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let out = Command::new("id")
            .args(["-g", "postgres"])
            .output()
            .unwrap();
        let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    };
    let data = dir.path().join("data");
    let initdb = Command::new(as_user.first().map_or(pg.join("initdb"), PathBuf::from))
        .args(as_user.iter().skip(1))
        .args(
            as_user
                .is_empty()
                .then(Vec::new)
                .unwrap_or_else(|| vec![pg.join("initdb")]),
        )
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-N"])
        .output()
        .unwrap();
    assert!(
        initdb.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    let mut args: Vec<OsString> = vec!["--".into()];
    args.extend(as_user.iter().map(OsString::from));
    args.push(pg.join("postgres").into());
    args.extend(["-D".into(), data.into_os_string()]);
    for a in [
        "-h",
        "127.0.0.1",
        "-p",
        "${backend.port}",
        "-k",
        "",
        "-c",
        "fsync=off",
    ] {
        args.push(a.into());
    }
    // PostgreSQL listens before it can serve ("the database system is starting up"), and
    // says READY=1 when it can: --ready makes connections wait for that.
    args.insert(0, "--ready".into());
    let proxy = Background::start(&args);
    // At once: psql's connection waits in the proxy while PostgreSQL starts.
    let out = Command::new(psql)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-tAc", "select 40 + 2"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
}

#[test]
fn ready_when_accepted_returns_only_once_the_daemon_listens_on_its_backend() {
    if tool("python3", "python3").is_none() {
        return;
    }
    // The daemon binds its backend 0.3 s after it starts.
    let started = Instant::now();
    let args = [
        &["--ready-when=accepted".to_string(), "--".to_string()],
        &upper_after_eof("0.3")[..],
    ]
    .concat();
    let proxy = Background::start(&args);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "returned after {took:?}"
    );
    // It listens now: its backend, named in its arguments, takes a connection directly.
    let daemon = children(proxy.pid);
    assert_eq!(daemon.len(), 1, "the proxy's children: {daemon:?}");
    let args = cmdline(daemon[0]);
    let backend = args
        .iter()
        .position(|a| a == "-c")
        .and_then(|i| args.get(i + 2))
        .unwrap_or_else(|| panic!("no backend path in {args:?}"));
    assert!(
        unix_listening(backend),
        "the backend {backend} does not listen"
    );
    // And a client through the proxy is served.
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"listening").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "LISTENING", "{}", proxy.log());
}

#[test]
fn redis_launched_with_ready_when_accepted_answers_ping() {
    let (Some(_), Some(redis_cli)) = (
        tool("redis-server", "redis-server"),
        tool("redis-cli", "redis-tools"),
    ) else {
        return;
    };
    let proxy = Background::start(&[
        "--ready-when=accepted",
        "--",
        "redis-server",
        "--port",
        "0",
        "--unixsocket",
        "${backend.path}",
        "--save",
        "",
    ]);
    let out = Command::new(redis_cli)
        .args(["-p", &proxy.port.to_string(), "ping"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PONG\n",
        "{}",
        proxy.log()
    );
    let reply = send(proxy.addr(), b"PING\r\n", b"\r\n").unwrap();
    assert_eq!(reply, b"+PONG\r\n");
}

#[test]
fn a_daemon_that_exits_before_it_is_ready_fails_the_launch_with_exit_5_and_its_stderr_tail() {
    let marker = marker("exits-before-ready");
    let out = launch(&[
        "--ready",
        "--",
        "sh",
        "-c",
        "echo 'cannot read redis.conf' >&2; exit 3",
        "${backend.path}",
        &marker,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("sh exited before it was ready (exit status: 3)"),
        "{err}"
    );
    assert!(err.contains("cannot read redis.conf"), "its tail: {err}");
    assert!(
        out.stdout.is_empty(),
        "nothing printed: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(left_running(&marker), Vec::<u32>::new(), "left running");
}

#[test]
fn a_daemon_not_ready_in_time_fails_the_launch_with_exit_6_and_nothing_left_running() {
    let marker = marker("never-listens");
    let started = Instant::now();
    let out = launch(&[
        "--ready=0.5",
        "--ready-when=accepted",
        "--",
        "sh",
        "-c",
        "sleep 300",
        "${backend.path}",
        &marker,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        err.contains("did not listen on its backend within 500ms"),
        "it says what it waited for: {err}"
    );
    assert!(out.stdout.is_empty());
    // Neither the proxy process nor the daemon (nor the `sleep` it runs) is left.
    assert_eq!(left_running(&marker), Vec::<u32>::new(), "left running");
}

#[test]
fn ready_when_http_returns_once_get_over_the_backend_answers_2xx() {
    // demo-server binds its own --listen 0.3 s after it starts.
    let started = Instant::now();
    let proxy = Background::start(&[
        OsStr::new("--ready-when=http:/healthz"),
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new("sleep 0.3; exec \"$0\" --listen \"$1\""),
        bin("demo-server").as_os_str(),
        OsStr::new("${backend.addr}"),
    ]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "returned after {took:?}"
    );
    let r = get_tcp(proxy.addr(), "/healthz").unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok\n"),
        "{}",
        proxy.log()
    );
}

#[test]
fn an_http_wait_never_answered_with_2xx_fails_with_exit_6_naming_the_path() {
    let marker = marker("http-404");
    let out = launch(&[
        OsStr::new("--ready=1"),
        OsStr::new("--ready-when=http:/no-such-page"),
        OsStr::new("--setenv"),
        OsStr::new(&format!("TEST_MARKER={marker}")),
        OsStr::new("--"),
        bin("demo-server").as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("${backend.addr}"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("did not answer GET /no-such-page with 2xx"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(left_running(&marker), Vec::<u32>::new(), "left running");
}

#[test]
fn ready_when_log_holds_connections_until_the_line_in_the_background() {
    if tool("python3", "python3").is_none() {
        return;
    }
    // A public Unix socket, whose path is known before sd-launch prints: a client can
    // connect while the daemon is still starting.
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("public.sock");
    let client = client_as_soon_as_it_listens(public.clone());
    let args = [
        &[
            "-l".to_string(),
            "127.0.0.1:0".to_string(),
            "-l".to_string(),
            public.to_str().unwrap().to_string(),
            "--ready-when=log:^ready to serve$".to_string(),
            "--".to_string(),
        ],
        &ready_later("0.5")[..],
    ]
    .concat();
    let started = Instant::now();
    let proxy = Background::start(&args);
    let returned = Instant::now();
    assert!(returned - started >= Duration::from_millis(500));
    let (connected, reply) = client.join().unwrap();
    assert!(
        connected < returned,
        "the client connected while it started"
    );
    assert_eq!(reply, "ready", "it waited for the line\n{}", proxy.log());
    assert_eq!(
        send(proxy.addr(), b"", b"ready").unwrap(),
        b"ready",
        "and TCP clients are served too"
    );
}

#[test]
fn in_the_foreground_with_ready_it_prints_once_the_daemon_sent_ready_then_serves() {
    if tool("python3", "python3").is_none() {
        return;
    }
    let marker = marker("foreground-ready");
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("public.sock");
    let client = client_as_soon_as_it_listens(public.clone());
    let mut args = vec![
        "-l".to_string(),
        "127.0.0.1:0".to_string(),
        "-l".to_string(),
        public.to_str().unwrap().to_string(),
        "--ready".to_string(),
        // The daemon's stdout would be ours (the test's pipe) in the foreground.
        "--outfile".to_string(),
        dir.path().join("daemon.log").to_str().unwrap().to_string(),
        "--setenv".to_string(),
        format!("TEST_MARKER={marker}"),
        "--".to_string(),
    ];
    args.extend(ready_later("0.5"));
    let log = dir.path().join("log");
    let started = Instant::now();
    let (mut child, addr) = foreground(&args, &log);
    let printed = Instant::now();
    assert!(
        printed - started >= Duration::from_millis(500),
        "printed after {:?}",
        printed - started
    );
    let (connected, reply) = client.join().unwrap();
    assert!(connected < printed, "the client connected while it started");
    assert_eq!(reply, "ready", "it waited for READY=1");
    assert_eq!(send(addr, b"", b"ready").unwrap(), b"ready", "it serves");
    assert!(
        exit_within(&mut child, Duration::ZERO).is_none(),
        "still in the foreground"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let status =
        exit_within(&mut child, Duration::from_secs(20)).expect("sd-launch exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "stopped by SIGTERM");
    assert_eq!(left_running(&marker), Vec::<u32>::new(), "left running");
}

/// A server in Python on the Unix path `sys.argv[1]` that answers each connection with
/// its pid and closes it.
const PID_SERVER: &str = "import os,socket,sys\n\
     s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(128)\n\
     while True:\n\
     \x20   c,_=s.accept(); c.sendall(b'pid=%d' % os.getpid()); c.close()\n";

/// Connect to `addr` and read the `pid=N` reply of [`PID_SERVER`].
fn served_by(addr: SocketAddr) -> u32 {
    pid_in_reply(TcpStream::connect(addr).unwrap())
}

/// Read the `pid=N` reply of [`PID_SERVER`] on `c`, to its end.
fn pid_in_reply(mut c: TcpStream) -> u32 {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    reply
        .strip_prefix("pid=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("reply {reply:?}"))
}

#[test]
fn restart_on_exit_serves_a_client_waiting_for_a_daemon_that_exited_by_its_next_start() {
    if tool("python3", "python3").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (first, go) = (dir.path().join("first"), dir.path().join("go"));
    // First start: never listens, and exits 1 once the test says so (at most 30 s).
    // Second start: the server, on the new backend it is told.
    let script = "if [ -e \"$1\" ]; then exec python3 -c \"$3\" \"$0\"; fi; : > \"$1\"; \
                  i=0; while [ ! -e \"$2\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
                  exit 1";
    let proxy = Background::start(&[
        OsStr::new("--restart=on-exit"),
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new(script),
        OsStr::new("${backend.path}"),
        first.as_os_str(),
        go.as_os_str(),
        OsStr::new(PID_SERVER),
    ]);
    // Connected while the first daemon runs (and never listens); then it exits.
    let waiting = TcpStream::connect(proxy.addr()).unwrap();
    std::fs::write(&go, "").unwrap();
    let second = pid_in_reply(waiting);
    let log = proxy.log();
    assert!(
        log.contains("exited (exit status: 1); starting it again in 100ms ("),
        "{log}"
    );
    assert!(
        log.contains(&format!("restarted: new pid {second}")),
        "{log}"
    );
    // The same public port, the same daemon from now on.
    assert_eq!(served_by(proxy.addr()), second, "{}", proxy.log());
}

#[test]
fn restart_on_exit_replaces_a_killed_daemon_behind_the_same_port() {
    if tool("python3", "python3").is_none() {
        return;
    }
    let proxy = Background::start(&[
        "--restart=on-exit",
        "--",
        "python3",
        "-c",
        PID_SERVER,
        "${backend.path}",
    ]);
    let first = served_by(proxy.addr());
    assert_eq!(children(proxy.pid), [first], "the proxy's daemon");
    // SAFETY: kill(2) on the daemon this test's proxy started (its child, checked above).
    unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
    assert!(wait_gone(first));
    // The next client waits for the new daemon, on the same port.
    let second = served_by(proxy.addr());
    assert_ne!(second, first, "{}", proxy.log());
    assert_eq!(served_by(proxy.addr()), second);
    let log = proxy.log();
    assert!(
        log.contains(&format!("(pid {first}) exited (signal: 9")),
        "{log}"
    );
}

#[test]
fn a_reader_of_its_piped_stderr_sees_the_end_once_the_proxy_is_ready() {
    // `Command::output()`, `$(sd-launch ... 2>&1)`: the reader waits for the end of stderr
    // too, so the proxy process must not keep a pipe as its stderr while it runs.
    let mut child = ChildGuard(
        Command::new(bin("sd-launch"))
            .args([
                "--proxy",
                "--",
                "sh",
                "-c",
                "exec sleep 30",
                "${backend.path}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let pid: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("LAUNCHED_PID="))
        .unwrap_or_else(|| panic!("no LAUNCHED_PID in {out:?}"))
        .parse()
        .unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let ended = rx.recv_timeout(Duration::from_secs(10));
    // SAFETY: kill(2) on the proxy process this test started (its pid was printed).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert!(wait_gone(pid), "the proxy did not exit on SIGTERM");
    assert!(
        ended.is_ok(),
        "stderr stayed open while the proxy ran: a reader of it would wait for ever"
    );
}

#[test]
fn retries_of_a_tcp_backend_that_refuses_back_off_instead_of_spinning() {
    // On loopback a non-blocking connect is under way first and refused a moment later:
    // that must count as a refusal, so the retries double (to 5 ms) as for a Unix backend.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("proxy.log");
    let mut child = ChildGuard(
        Command::new(bin("sd-launch"))
            .args(["--proxy", "--foreground", "--", "sh", "-c", "exec sleep 30"])
            .arg("${backend.port}")
            .env("RUST_LOG", "sd_launch=trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim_end()
        .strip_prefix("LAUNCHED_PORT=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap(); // waits: nobody listens
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    assert!(exit_within(&mut child, Duration::from_secs(20)).is_some());
    let text = std::fs::read_to_string(&log).unwrap();
    let at_first = text.matches("retry in 1ms").count();
    assert!(
        (1..10).contains(&at_first),
        "{at_first} retries at the first delay in 300 ms: the backoff was reset each time"
    );
    assert!(text.contains("retry in 5ms"), "{text}");
}

#[test]
fn a_stop_signal_to_the_command_waiting_for_readiness_stops_the_proxy_and_its_daemon() {
    // Ctrl-C on `sd-launch --proxy --ready ...` while it waits: nobody will ever know the
    // proxy's pid, so it must not run on until its readiness timeout (here 120 s).
    let mark = marker("ctrl-c-while-waiting");
    let mut child = ChildGuard(
        Command::new(bin("sd-launch"))
            .args(["--proxy", "--ready=120", "--", "sh", "-c", "exec sleep 300"])
            .arg("${backend.path}")
            .env("SD_LAUNCH_TEST_MARK", &mark)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The daemon runs (and waits for a READY=1 it never sends).
    let end = Instant::now() + Duration::from_secs(20);
    while !with_marker(&mark)
        .iter()
        .any(|&p| cmdline(p).first().is_some_and(|a| a == "sleep"))
    {
        assert!(Instant::now() < end, "the daemon never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGINT) };
    let status = exit_within(&mut child, Duration::from_secs(20)).expect("it exits");
    assert!(!status.success(), "{status:?}");
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.is_empty(), "printed {out:?}");
    assert_eq!(
        left_running(&mark),
        Vec::<u32>::new(),
        "the proxy or its daemon ran on after the command was stopped"
    );
}
