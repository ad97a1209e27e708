//! Child processes, ports and probes: become a subreaper (daemons left behind by
//! `sd-launch` or `sd-popen.py` become our children), kill and reap by pid, sweep anything
//! left, pick a free port, connect (at once or polling), and one HTTP GET.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How long any single probe may take before it counts as a failure.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// Make this process the reaper of its orphaned descendants (Linux `PR_SET_CHILD_SUBREAPER`),
/// so a daemon whose launcher exited can still be killed and reaped by us.
///
/// ```
/// sd_launch_bench::procs::become_subreaper()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers and changes only a
    // flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILL `pid` and reap it if it is our child. Waits at most [`PROBE_DEADLINE`].
///
/// ```
/// let child = std::process::Command::new("sleep").arg("60").spawn()?;
/// sd_launch_bench::procs::kill_and_reap(child.id() as i32);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn kill_and_reap(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill with a positive pid and a valid signal number has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + PROBE_DEADLINE;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid writable int; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc != 0 || Instant::now() > deadline {
            return; // reaped, or not our child (ECHILD), or gave up
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Send `signal` to our child `pid` and reap it, waiting at most `within`; if it has not
/// exited by then, SIGKILL and reap it ([`kill_and_reap`]). Returns whether it exited on
/// `signal` in time. For daemons that must stop cleanly (PostgreSQL on a reused data
/// directory) and for `sd-launch --proxy`, which stops its daemon before it exits.
///
/// ```
/// let child = std::process::Command::new("sleep").arg("60").spawn()?;
/// let within = std::time::Duration::from_secs(5);
/// assert!(sd_launch_bench::procs::stop_and_reap(child.id() as i32, libc::SIGTERM, within));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn stop_and_reap(pid: i32, signal: i32, within: Duration) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with a positive pid and a valid signal number has no memory effects.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + within;
    // Bounded by the deadline and by count (200 µs, then 1 ms pauses).
    for i in 0..100_000u32 {
        let mut status = 0;
        // SAFETY: `status` is a valid writable int; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc != 0 {
            return rc == pid; // reaped, or not our child (ECHILD: nothing to wait for)
        }
        if Instant::now() > deadline {
            break;
        }
        let pause = if i < 50 { 200 } else { 1000 };
        std::thread::sleep(Duration::from_micros(pause));
    }
    kill_and_reap(pid);
    false
}

/// Our children (pid and `/proc` state letter, `Z` for an exited one not reaped yet).
fn children() -> Vec<(i32, char)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'.
        let mut rest = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next());
        let ppid = rest.next().and_then(|s| s.parse::<u32>().ok());
        if let (Some(state), Some(me_too)) = (state, ppid) {
            if me_too == me {
                found.push((pid, state));
            }
        }
    }
    found
}

/// Let our remaining children end on their own for up to `grace`, reaping each as it exits
/// (a helper process that exits right after the one we stopped, such as sd-launch's
/// guardian, which became our child when its parent exited); then kill and reap whatever
/// still runs and return how many those were. Call only when no child of ours should be
/// running any more.
///
/// ```
/// use std::time::Duration;
/// std::process::Command::new("true").spawn()?; // exits at once: reaped, not counted
/// std::process::Command::new("sleep").arg("60").spawn()?; // still running: killed, counted
/// let left = sd_launch_bench::procs::settle_children(Duration::from_millis(300));
/// assert!(left >= 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn settle_children(grace: Duration) -> usize {
    let deadline = Instant::now() + grace;
    // Bounded by the deadline and by count (1 ms pauses).
    for _ in 0..(grace.as_millis() + 1) {
        let running: Vec<(i32, char)> = children()
            .into_iter()
            .filter(|&(pid, state)| {
                if state == 'Z' {
                    let mut status = 0;
                    // SAFETY: `status` is a valid writable int; WNOHANG never blocks.
                    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                    false
                } else {
                    true
                }
            })
            .collect();
        if running.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sweep_children()
}

/// Kill and reap every remaining child of this process (found through `/proc`); returns how
/// many there were. Call only when no `Child`/`Launched` handle is alive.
///
/// ```
/// std::process::Command::new("sleep").arg("60").spawn()?; // handle dropped, still running
/// assert!(sd_launch_bench::procs::sweep_children() >= 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn sweep_children() -> usize {
    let found = children();
    for &(pid, _) in &found {
        kill_and_reap(pid);
    }
    found.len()
}

/// A port that was free a moment ago: bind 127.0.0.1:0, read the port, close. This is the
/// racy "portpicker" way the baselines use.
///
/// ```
/// assert_ne!(sd_launch_bench::procs::free_port()?, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Connect, retrying every `interval` while the connection is refused, until [`PROBE_DEADLINE`].
///
/// ```
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let interval = std::time::Duration::from_millis(10);
/// sd_launch_bench::procs::connect_poll(listener.local_addr()?, interval)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn connect_poll(addr: SocketAddr, interval: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + PROBE_DEADLINE;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(interval)
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("connect {addr}: {e}"))),
        }
    }
}

/// Send `GET /` (HTTP/1.0) on `conn` and require a `200` status line.
///
/// ```
/// use std::io::Write;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let conn = std::net::TcpStream::connect(listener.local_addr()?)?;
/// listener.accept()?.0.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n")?;
/// assert!(sd_launch_bench::procs::http_get(conn).is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn http_get(mut conn: TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(PROBE_DEADLINE))?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    if head.starts_with("HTTP/1.") && head.get(9..12) == Some("200") {
        Ok(())
    } else {
        Err(io::Error::other(format!("unexpected HTTP reply {head:?}")))
    }
}

/// Milliseconds since `start`.
///
/// ```
/// assert!(sd_launch_bench::procs::ms_since(std::time::Instant::now()) >= 0.0);
/// ```
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Parse `LAUNCHED_PORT` and `LAUNCHED_PID` out of `KEY=value` lines (sd-launch, sd-popen.py).
///
/// ```
/// let out = "LAUNCHED_PORT=8080\nLAUNCHED_PID=42\n";
/// assert_eq!(sd_launch_bench::procs::parse_launched(out).unwrap(), (8080, 42));
/// ```
pub fn parse_launched(out: &str) -> io::Result<(u16, i32)> {
    let get = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    match (get("LAUNCHED_PORT"), get("LAUNCHED_PID")) {
        (Some(port), Some(pid)) => Ok((port as u16, pid as i32)),
        _ => Err(io::Error::other(format!("no LAUNCHED_PORT/PID in {out:?}"))),
    }
}
