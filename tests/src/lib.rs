//! Helpers for the end-to-end suite: find the real built binaries, talk plain HTTP/1.1 over
//! TCP or Unix sockets, wait for a process to be gone, and skip loudly when a tool is absent.
//!
//! The binaries live in other packages of the workspace, so Cargo's `CARGO_BIN_EXE_*` is not
//! available here; [`bin`] finds them in the target directory next to the test executable.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace (`sd-launch`, `demo-server`).
///
/// Test executables live in `target/<profile>/deps/`; the binaries in `target/<profile>/`.
/// Panics with the command to run when the binary has not been built.
///
/// ```no_run
/// let demo = sd_launch_tests::bin("demo-server");
/// assert!(demo.ends_with("demo-server"));
/// ```
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// A loopback address with a port that was free a moment ago, for tools that cannot take
/// port 0 (systemd-socket-activate) or for the self-binding baselines. It can be taken by
/// someone else before it is used: that race is exactly what socket passing avoids, so
/// callers retry.
///
/// ```
/// let addr = sd_launch_tests::free_loopback_addr();
/// assert!(addr.ip().is_loopback() && addr.port() != 0);
/// ```
pub fn free_loopback_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

/// An HTTP response: status code and body.
///
/// ```
/// let r = sd_launch_tests::Response { status: 404, body: String::new() };
/// assert_ne!(r.status, 200);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

/// `GET path` over TCP with HTTP/1.1 and `Connection: close`.
///
/// ```no_run
/// let r = sd_launch_tests::get_tcp("127.0.0.1:8080".parse().unwrap(), "/healthz").unwrap();
/// assert_eq!(r.status, 200);
/// ```
pub fn get_tcp(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    exchange(s, path)
}

/// `GET path` over a Unix stream socket.
///
/// ```no_run
/// let r = sd_launch_tests::get_unix("/tmp/demo.sock".as_ref(), "/").unwrap();
/// assert_eq!(r.status, 200);
/// ```
pub fn get_unix(path: &Path, url_path: &str) -> std::io::Result<Response> {
    exchange(UnixStream::connect(path)?, url_path)
}

fn exchange<S: Read + Write>(mut s: S, path: &str) -> std::io::Result<Response> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Parse a whole HTTP/1.1 response (identity or chunked body).
///
/// ```
/// let r = sd_launch_tests::parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
/// assert_eq!((r.status, r.body.as_str()), (200, "ok"));
/// ```
pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Response { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Whether a process with this pid exists and is not a zombie.
///
/// ```
/// assert!(sd_launch_tests::alive(std::process::id()));
/// ```
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state field follows the parenthesised command name.
        Ok(stat) => {
            !matches!(stat.rsplit_once(')').map(|(_, r)| r.trim_start()), Some(r) if r.starts_with('Z') || r.starts_with('X'))
        }
        Err(_) => false,
    }
}

/// Wait (up to 30 s, a generous bound, not a timing assertion) until `pid` is gone;
/// true when it is.
///
/// ```
/// assert!(sd_launch_tests::wait_gone(u32::MAX - 1));
/// ```
pub fn wait_gone(pid: u32) -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// Find a tool on PATH; when absent print a loud SKIPPED line with the apt hint and return
/// `None`. With `CI=true` an absent tool is a failure instead (CI installs everything).
///
/// ```
/// assert!(sd_launch_tests::tool("sh", "dash").is_some());
/// ```
pub fn tool(name: &str, apt_package: &str) -> Option<PathBuf> {
    tool_or_skip(name, &format!("apt-get install -y {apt_package}"))
}

/// Kills and reaps a `std::process::Child` on drop so a failing test leaves nothing behind.
///
/// ```
/// let guard = sd_launch_tests::ChildGuard(std::process::Command::new("sleep").arg("60").spawn().unwrap());
/// let pid = guard.0.id();
/// drop(guard);
/// assert!(!sd_launch_tests::alive(pid));
/// ```
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills a pid (not our child, e.g. a daemon started by `sd-launch`) on drop.
///
/// ```
/// let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
/// drop(sd_launch_tests::PidGuard(child.id()));
/// assert!(!child.wait().unwrap().success()); // killed by the guard
/// ```
#[derive(Debug)]
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        // Never a pid <= 0: kill(2) would then signal a process group or every process.
        let pid = libc::pid_t::try_from(self.0).unwrap_or(0);
        if pid > 0 && alive(self.0) {
            // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Report a missing prerequisite: a loud `SKIPPED` line with how to install it, or, with
/// `CI=true` (CI installs everything), a failure. Always `None`, for `let Some(x) = .. else`.
///
/// ```
/// if std::env::var("CI").as_deref() != Ok("true") {
///     assert!(sd_launch_tests::skip::<()>("`frobd` not found", "apt-get install -y frobd").is_none());
/// }
/// ```
pub fn skip<T>(what: &str, install: &str) -> Option<T> {
    let msg = format!("SKIPPED: {what}; install it with `{install}`");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg} (CI=true: skips are failures)"
    );
    // Straight to the stderr stream, not through eprintln!, which the test harness captures
    // (and hides) for a test that passes.
    let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
    None
}

/// The Python virtual environment of the Python servers (uvicorn, hypercorn, gunicorn):
/// `$SD_LAUNCH_TESTS_VENV` when set (`.ci/run` sets it), else `target/pyvenv` of this build.
///
/// ```no_run
/// assert!(sd_launch_tests::python_venv().ends_with("pyvenv"));
/// ```
pub fn python_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("SD_LAUNCH_TESTS_VENV") {
        return PathBuf::from(dir);
    }
    // Test executables are in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("pyvenv")
}

/// A Python server's executable from [`python_venv`] (or PATH); when absent, [`skip`] with the
/// pip command that installs it.
///
/// ```
/// if std::env::var("CI").as_deref() != Ok("true") {
///     assert!(sd_launch_tests::python_tool("no-such-server-xyz").is_none());
/// }
/// ```
pub fn python_tool(name: &str) -> Option<PathBuf> {
    let venv = python_venv();
    let in_venv = venv.join("bin").join(name);
    if in_venv.is_file() {
        return Some(in_venv);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        skip(
            &format!(
                "`{name}` not found in {} (SD_LAUNCH_TESTS_VENV) or PATH",
                venv.display()
            ),
            &format!(
                "python3 -m venv {0} && {0}/bin/pip install {name}",
                venv.display()
            ),
        )
    })
}

/// Like [`tool`], for a tool whose install hint is more than one apt package name.
///
/// ```
/// assert!(sd_launch_tests::tool_or_skip("sh", "apt-get install -y dash").is_some());
/// ```
pub fn tool_or_skip(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.or_else(|| skip(&format!("`{name}` not found"), install))
}

/// A daemon started by the real `sd-launch --foreground --format json` CLI (or `--accept`,
/// which is always in the foreground), as a supervisor or a test script would: sd-launch stays
/// our child, forwards the signals we send it and exits with the daemon's status.
/// Dropping it SIGKILLs sd-launch (the daemon dies with it) and the daemon too.
#[derive(Debug)]
pub struct Supervised {
    child: std::process::Child,
    /// `LAUNCHED_PID`: the daemon's pid (sd-launch's own in accept mode).
    pub pid: u32,
    /// sd-launch's JSON output: `pid` and each socket's `fd`, `name`, `kind`, `address`, `port`.
    pub info: serde_json::Value,
    log: Option<PathBuf>,
}

impl Supervised {
    /// Run `sd-launch --format json <args>` (`args` holds sd-launch's options, `--`, the
    /// daemon and its arguments; add `--foreground` unless `--accept`) and wait (30 s at most)
    /// for its output line. Send the daemon's output to a file (`--outfile`, or `--stderr`
    /// with `--inetd`), not to our pipe; `log` names that file, shown when something fails.
    ///
    /// ```no_run
    /// use sd_launch_tests::{Supervised, bin};
    /// let demo = bin("demo-server");
    /// let args = ["--foreground", "--outfile", "/dev/null", "--", demo.to_str().unwrap()];
    /// let d = Supervised::start(None, args);
    /// assert_eq!(sd_launch_tests::get_tcp(d.addr(0), "/healthz").unwrap().status, 200);
    /// assert!(d.stop(libc::SIGTERM).success());
    /// ```
    pub fn start<I, S>(log: Option<&Path>, args: I) -> Supervised
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin("sd-launch"))
            .args(["--format", "json"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sd-launch");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut supervised = Supervised {
            child,
            pid: 0,
            info: serde_json::Value::Null,
            log: log.map(Path::to_path_buf),
        };
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Ok(info) = serde_json::from_str::<serde_json::Value>(&line) else {
            let status = supervised.wait_exit(Duration::from_secs(5));
            panic!(
                "sd-launch printed no JSON line ({line:?}), status {status:?}; daemon log:\n{}",
                supervised.log()
            );
        };
        supervised.pid = info["pid"].as_u64().expect("pid in the output") as u32;
        supervised.info = info;
        supervised
    }

    /// The address of socket `index` (0 is fd 3) when it is TCP.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.info["sockets"][index]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("socket {index} has no TCP address: {}", self.info))
    }

    /// The daemon's output so far (empty without a log file).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned())
            .unwrap_or_default()
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `signal` to sd-launch (which forwards it), wait up to 30 s for it to exit with
    /// the daemon's status, check the daemon is gone, and return that status.
    pub fn stop(mut self, signal: i32) -> std::process::ExitStatus {
        let launcher = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(launcher, signal) };
        let status = self.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "sd-launch did not exit within 30 s of signal {signal}; daemon log:\n{}",
                self.log()
            )
        });
        assert!(
            wait_gone(self.pid),
            "daemon {} still running after sd-launch exited",
            self.pid
        );
        status
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(PidGuard(self.pid));
    }
}

/// A daemon in Python (`python3 -c UPPER_AFTER_EOF PATH DELAY`) that binds the Unix path
/// `PATH` after `DELAY` seconds and answers each connection, once the client has sent its
/// end, with what it read upper-cased: a real process that listens late, for the proxy's
/// tests.
pub const UPPER_AFTER_EOF: &str = "import socket,sys,time\n\
     time.sleep(float(sys.argv[2]))\n\
     s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(128)\n\
     while True:\n\
     \x20   c,_=s.accept(); d=b''\n\
     \x20   while True:\n\
     \x20       b=c.recv(65536)\n\
     \x20       if not b: break\n\
     \x20       d+=b\n\
     \x20   c.sendall(d.upper()); c.close()\n";
