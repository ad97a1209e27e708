//! Row 7 (issue 8): failed requests while demo-server is restarted 10 times under a steady
//! stream of requests, each way in turn (A B A B ...), several rounds:
//! * ours: `sd-launch --restart --ready=5 -- demo-server`, restarted with `SIGHUP` to
//!   sd-launch: the new daemon starts on the same socket and sends `READY=1`, then the old
//!   one gets `SIGTERM` and drains; a restart is done when sd-launch says so on stderr and
//!   the old daemon has exited (pidfd);
//! * baseline, restart-by-rebind: `demo-server --listen 127.0.0.1:PORT` binds its own port;
//!   a restart is `SIGTERM`, wait for it to exit, start a new one on the same port (what a
//!   naive supervisor, or `cargo watch` without systemfd, does). A new one that cannot bind
//!   yet (exit 3) is started again after 10 ms. It is done when the new one sends `READY=1`
//!   to a notify socket of ours (used only to pace the restarts, as sd-launch's --ready).
//!
//! The load: [`CLIENTS`] threads, each sending one `GET /` per [`PACE`] on a new connection
//! (`Connection: close`), reading the reply to the end and requiring status 200. Refused
//! connections, resets, a close without a full reply, a timeout or another status count as
//! failed requests. Restarts start every [`SLOT`]; the load runs from [`SETTLE`] before the
//! first to [`SETTLE`] after the last, and every wait is bounded.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::procs::{self, PROBE_DEADLINE, free_port, kill_and_reap, ms_since};
use crate::stats::Summary;
use crate::{Config, Row};

/// Restarts per round.
pub const RESTARTS: usize = 10;
/// Concurrent clients.
pub const CLIENTS: usize = 4;
/// Each client starts one request per `PACE` (a slow reply delays the next).
pub const PACE: Duration = Duration::from_millis(2);
/// One restart starts every `SLOT` (or as soon as the previous one is done, if later).
pub const SLOT: Duration = Duration::from_millis(300);
/// Load before the first restart and after the last one.
pub const SETTLE: Duration = Duration::from_millis(300);
/// Longest a restart may take before the round counts as failed.
const RESTART_DEADLINE: Duration = Duration::from_secs(10);

/// Outcome counts of the load of one round.
#[derive(Debug, Default)]
struct Load {
    ok: AtomicUsize,
    refused: AtomicUsize,
    reset: AtomicUsize,
    timeout: AtomicUsize,
    other: AtomicUsize,
}

/// Plain counts, summed over rounds.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: usize,
    refused: usize,
    reset: usize,
    timeout: usize,
    other: usize,
}

impl Counts {
    fn failed(&self) -> usize {
        self.refused + self.reset + self.timeout + self.other
    }
    fn total(&self) -> usize {
        self.ok + self.failed()
    }
    fn add(&mut self, o: &Counts) {
        self.ok += o.ok;
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.other += o.other;
    }
}

impl Load {
    fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            reset: self.reset.load(Ordering::Relaxed),
            timeout: self.timeout.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }

    fn record(&self, result: io::Result<()>) {
        use io::ErrorKind as K;
        let counter = match result {
            Ok(()) => &self.ok,
            Err(e) => match e.kind() {
                K::ConnectionRefused => &self.refused,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    &self.reset
                }
                K::TimedOut | K::WouldBlock => &self.timeout,
                _ => &self.other,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request on a new connection: `GET /`, read to EOF, require status 200.
fn request(addr: SocketAddr) -> io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, PROBE_DEADLINE)?;
    conn.set_read_timeout(Some(PROBE_DEADLINE))?;
    conn.set_write_timeout(Some(PROBE_DEADLINE))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::with_capacity(256);
    conn.read_to_end(&mut reply)?;
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without a reply",
        ));
    }
    if reply.starts_with(b"HTTP/1.1 200 ") || reply.starts_with(b"HTTP/1.0 200 ") {
        Ok(())
    } else {
        Err(io::Error::other("not a 200 reply"))
    }
}

/// Run the paced clients against `addr` until `stop` (or `limit` elapses).
fn load(addr: SocketAddr, counts: &Load, stop: &AtomicBool, limit: Duration) {
    let end = Instant::now() + limit;
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    counts.record(request(addr));
                    next += PACE;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now; // behind (a slow reply): no burst to catch up
                    }
                }
            });
        }
    });
}

/// A way to run and restart the server.
trait Server {
    fn addr(&self) -> SocketAddr;
    /// One restart; returns once the new daemon serves and the old one is gone.
    fn restart(&mut self) -> io::Result<()>;
    /// Stop everything; kill and reap.
    fn stop(self);
}

/// Open a pidfd for `pid` (the process may be someone else's child).
fn pidfd(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
    // passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns; taken once here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Wait until the process behind `fd` has exited (readable pidfd), at most `timeout`.
fn wait_exit(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("a process did not exit within {timeout:?}"),
        )),
        _ => Ok(()),
    }
}

/// ours: `sd-launch --restart --ready=5 -- demo-server`, restarted with SIGHUP.
struct Ours {
    child: Child,
    addr: SocketAddr,
    daemon: i32,
    lines: mpsc::Receiver<String>,
}

impl Ours {
    fn start(sd_launch: &Path, demo: &Path, log: &Path) -> io::Result<Ours> {
        let mut child = Command::new(sd_launch)
            .arg("--restart")
            .arg("--ready=5")
            .arg("--outfile")
            .arg(log)
            .arg("--")
            .arg(demo)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("piped");
        let lines = forward_lines(stderr);
        let mut out = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        // sd-launch prints once the first daemon is ready, two lines.
        for _ in 0..2 {
            if stdout.read_line(&mut out)? == 0 {
                break;
            }
        }
        match procs::parse_launched(&out) {
            Ok((port, daemon)) => Ok(Ours {
                child,
                addr: ([127, 0, 0, 1], port).into(),
                daemon,
                lines,
            }),
            Err(e) => {
                kill_and_reap(child.id() as i32);
                let said: Vec<String> = lines.try_iter().collect();
                Err(io::Error::other(format!("{e}; sd-launch said {said:?}")))
            }
        }
    }
}

/// A thread reading sd-launch's stderr into a channel, one line at a time.
fn forward_lines(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Server for Ours {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn restart(&mut self) -> io::Result<()> {
        let old = pidfd(self.daemon)?;
        // SAFETY: kill with our child's pid and a valid signal number has no memory effects.
        if unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let deadline = Instant::now() + RESTART_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "sd-launch did not restart")
            })?;
            if let Some(pid) = line.strip_prefix("sd-launch: SIGHUP: restarted, new pid ") {
                self.daemon = pid
                    .trim()
                    .parse()
                    .map_err(|_| io::Error::other(format!("unexpected line {line:?}")))?;
                break;
            }
            if line.contains("restart failed") {
                return Err(io::Error::other(line));
            }
        }
        wait_exit(&old, deadline.saturating_duration_since(Instant::now()))
    }

    fn stop(mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: as in restart.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + PROBE_DEADLINE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            // Its daemon gets SIGKILL with it (parent-death signal); the caller's sweep
            // reaps whatever is left (we are the subreaper).
            kill_and_reap(pid);
        }
    }
}

/// baseline: demo-server binding its own port, restarted by SIGTERM + start again.
struct Rebind {
    demo: PathBuf,
    notify_dir: PathBuf,
    port: u16,
    child: Child,
    spawned: usize,
    /// Starts that failed to bind (exit 3) and were retried.
    rebind_failures: usize,
}

impl Rebind {
    fn start(demo: &Path, notify_dir: &Path) -> io::Result<Rebind> {
        let port = free_port()?;
        let mut spawned = 0;
        let mut rebind_failures = 0;
        let child =
            Rebind::spawn_ready(demo, notify_dir, port, &mut spawned, &mut rebind_failures)?;
        Ok(Rebind {
            demo: demo.to_path_buf(),
            notify_dir: notify_dir.to_path_buf(),
            port,
            child,
            spawned,
            rebind_failures,
        })
    }

    /// Start demo-server on `port` and wait for its `READY=1`; a start that fails to bind
    /// is retried after 10 ms until [`RESTART_DEADLINE`].
    fn spawn_ready(
        demo: &Path,
        notify_dir: &Path,
        port: u16,
        spawned: &mut usize,
        rebind_failures: &mut usize,
    ) -> io::Result<Child> {
        let deadline = Instant::now() + RESTART_DEADLINE;
        loop {
            *spawned += 1;
            let path = notify_dir.join(format!("notify-{spawned}.sock"));
            let _ = std::fs::remove_file(&path);
            let notify = UnixDatagram::bind(&path)?;
            let mut child = Command::new(demo)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .env("NOTIFY_SOCKET", &path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let ready = wait_ready(&notify, &mut child, deadline);
            let _ = std::fs::remove_file(&path);
            match ready {
                Ok(true) => return Ok(child),
                Ok(false) if Instant::now() < deadline => {
                    *rebind_failures += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(false) => {
                    return Err(io::Error::other(format!(
                        "demo-server could not bind 127.0.0.1:{port} within {RESTART_DEADLINE:?}"
                    )));
                }
                Err(e) => {
                    kill_and_reap(child.id() as i32);
                    return Err(e);
                }
            }
        }
    }
}

/// Wait for `READY=1` on `notify` (true), or for `child` to exit first (false).
fn wait_ready(notify: &UnixDatagram, child: &mut Child, deadline: Instant) -> io::Result<bool> {
    notify.set_read_timeout(Some(Duration::from_millis(5)))?;
    let mut buf = [0u8; 512];
    loop {
        match notify.recv(&mut buf) {
            Ok(n) => {
                if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") {
                    return Ok(true);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "demo-server sent no READY=1",
            ));
        }
    }
}

impl Server for Rebind {
    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn restart(&mut self) -> io::Result<()> {
        let old = pidfd(self.child.id() as i32)?;
        // SAFETY: kill with our child's pid and a valid signal number has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_exit(&old, RESTART_DEADLINE)?;
        self.child.wait()?;
        self.child = Rebind::spawn_ready(
            &self.demo,
            &self.notify_dir,
            self.port,
            &mut self.spawned,
            &mut self.rebind_failures,
        )?;
        Ok(())
    }

    fn stop(mut self) {
        kill_and_reap(self.child.id() as i32);
        let _ = self.child.wait();
    }
}

/// One round of one way: load, `restarts` restarts, load; returns the counts and the
/// median restart time (ms).
fn round<S: Server>(server: &mut S, restarts: usize) -> io::Result<(Counts, f64)> {
    let counts = Load::default();
    let stop = AtomicBool::new(false);
    let addr = server.addr();
    let limit = SETTLE * 2 + (SLOT + RESTART_DEADLINE) * restarts as u32;
    let result = std::thread::scope(|s| {
        s.spawn(|| load(addr, &counts, &stop, limit));
        let mut times = Vec::with_capacity(restarts);
        let run = (|| {
            std::thread::sleep(SETTLE);
            for _ in 0..restarts {
                let t0 = Instant::now();
                server.restart()?;
                times.push(ms_since(t0));
                if let Some(rest) = SLOT.checked_sub(t0.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            std::thread::sleep(SETTLE);
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        run.map(|()| Summary::of(&times).median)
    });
    result.map(|ms| (counts.counts(), ms))
}

/// Measure row 7 (skipped with a message when sd-launch or demo-server is missing).
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let (Some(sd_launch), Some(demo)) = (config.binary("sd-launch"), config.binary("demo-server"))
    else {
        eprintln!("row 7: sd-launch or demo-server not built next to the harness; skipped");
        return Ok(Vec::new());
    };
    let dir = config.scratch.path().join("restarts");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("demo-server.log");
    let rounds = config.reps(5, 1);
    let restarts = if config.quick { 3 } else { RESTARTS };
    let (mut o_total, mut b_total) = (Counts::default(), Counts::default());
    let (mut o_failed, mut b_failed) = (Vec::new(), Vec::new());
    let (mut o_rate, mut b_rate) = (Vec::new(), Vec::new());
    let (mut o_ms, mut b_ms) = (Vec::new(), Vec::new());
    let mut rebind_failures = 0;
    let mut errors = Vec::new();
    for _ in 0..rounds {
        let ours = Ours::start(&sd_launch, &demo, &log).and_then(|mut s| {
            let result = round(&mut s, restarts);
            s.stop();
            result
        });
        procs::sweep_children();
        match ours {
            Ok((c, ms)) => {
                o_failed.push(c.failed() as f64);
                o_rate.push(100.0 * c.failed() as f64 / c.total().max(1) as f64);
                o_ms.push(ms);
                o_total.add(&c);
            }
            Err(e) => errors.push(format!("ours: {e}")),
        }
        let base = Rebind::start(&demo, &dir).and_then(|mut s| {
            let before = s.rebind_failures;
            let result = round(&mut s, restarts);
            rebind_failures += s.rebind_failures - before;
            s.stop();
            result
        });
        procs::sweep_children();
        match base {
            Ok((c, ms)) => {
                b_failed.push(c.failed() as f64);
                b_rate.push(100.0 * c.failed() as f64 / c.total().max(1) as f64);
                b_ms.push(ms);
                b_total.add(&c);
            }
            Err(e) => errors.push(format!("baseline: {e}")),
        }
    }
    for e in &errors {
        eprintln!("row 7: {e}");
    }
    if o_failed.is_empty() || b_failed.is_empty() {
        return Err(io::Error::other(format!(
            "no complete round: {}",
            errors.join("; ")
        )));
    }
    let split = |c: &Counts| {
        format!(
            "{} of {} failed ({:.2}%: {} refused, {} reset/closed, {} timed out, {} other)",
            c.failed(),
            c.total(),
            100.0 * c.failed() as f64 / c.total().max(1) as f64,
            c.refused,
            c.reset,
            c.timeout,
            c.other
        )
    };
    let how = format!(
        "{} rounds of {restarts} restarts, alternated; {CLIENTS} clients, one request each per {} ms, new connection each",
        o_failed.len().min(b_failed.len()),
        PACE.as_millis()
    );
    let restart_ms = format!(
        "restart took {:.0} ms ours (SIGHUP to old exited), {:.0} ms baseline (SIGTERM to new ready); {rebind_failures} rebind retries; {} failed rounds",
        Summary::of(&o_ms).median,
        Summary::of(&b_ms).median,
        errors.len()
    );
    let baseline_name = "restart-by-rebind: SIGTERM, then a new demo-server binds the port";
    Ok(vec![
        Row {
            name: format!("7. restarts under load, demo-server, {restarts} restarts"),
            unit: "failed requests".into(),
            ours: Summary::of(&o_failed),
            baseline_name: baseline_name.into(),
            baseline: Summary::of(&b_failed),
            note: format!(
                "per round; totals ours {}, baseline {}; {how}",
                split(&o_total),
                split(&b_total)
            ),
        },
        Row {
            name: format!("7. restarts under load, demo-server, {restarts} restarts"),
            unit: "% requests failed".into(),
            ours: Summary::of(&o_rate),
            baseline_name: baseline_name.into(),
            baseline: Summary::of(&b_rate),
            note: format!(
                "per round; requests ours {}, baseline {}; {restart_ms}",
                o_total.total(),
                b_total.total()
            ),
        },
    ])
}
