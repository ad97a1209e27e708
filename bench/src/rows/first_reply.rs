//! Row 11: proxy mode, time to the first reply. From starting the launcher (or the daemon)
//! to the first complete reply of a daemon that does not speak `LISTEN_FDS`, whole
//! processes, every way once per round in a new order each round (the fixed-seed shuffle of
//! row 9):
//!
//! * Redis (`redis-server`), the reply `+PONG` to `PING`:
//!   * ours: `sd-launch --proxy -- redis-server --port 0 --unixsocket '${backend.path}'
//!     --save ''`, read `LAUNCHED_PORT`, connect at once (the proxy holds the connection
//!     until redis accepts on its private socket);
//!   * ours with a TCP backend: `--port '${backend.port}' --bind 127.0.0.1` instead;
//!   * baseline: pick a free port, `redis-server --port P --bind 127.0.0.1 --save ''`,
//!     `connect()` every 10 ms until it listens;
//!   * the same with `connect()` every 1 ms: about redis's own start, a near floor;
//! * PostgreSQL, the first `ReadyForQuery` (`Z`) after a `StartupMessage` (protocol 3.0,
//!   user and database `postgres`, trust authentication), on one data directory made by
//!   `initdb` once per run (untimed) and reused by every start, one after the other:
//!   * ours: `sd-launch --proxy --ready -- postgres -D DATA -h 127.0.0.1 -p
//!     '${backend.port}' -k '' -c fsync=off`, connect at once (connections wait for
//!     postgres's `READY=1`);
//!   * baseline: pick a free port, postgres binds it itself, `connect()` every 10 ms, then
//!     the startup; an error `57P03` ("the database system is starting up") is retried after
//!     10 ms on a new connection, as a real poller would.
//!
//! After each measurement (untimed) the daemon is stopped with `SIGTERM`: ours through the
//! proxy process (`LAUNCHED_PID`, which stops its daemon and then exits), the baseline
//! directly; both are reaped, and any process of ours left behind is swept and counted.
//! PostgreSQL runs as the `postgres` user when we are root (`setpriv`, both ways).

use std::cell::Cell;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::readiness::{Way, shuffled_rounds};
use crate::procs::{PROBE_DEADLINE, connect_poll, free_port, ms_since, stop_and_reap};
use crate::stats::Summary;
use crate::{Config, Row};

/// The baselines' connect poll interval, and PostgreSQL's retry after "starting up".
const POLL: Duration = Duration::from_millis(10);

/// Redis's second baseline: a poll that finds the daemon about as soon as it listens.
const FAST_POLL: Duration = Duration::from_millis(1);

/// How long a stopped daemon (or our proxy process, which stops its daemon first) may take
/// to exit: the proxy's own stop timeout (10 s, then SIGKILL) and some margin.
pub(crate) const STOP_WITHIN: Duration = Duration::from_secs(15);

/// How long PostgreSQL may take to answer its first `ReadyForQuery`.
const PG_DEADLINE: Duration = Duration::from_secs(30);

/// SQLSTATE `cannot_connect_now`: "the database system is starting up".
const PG_STARTING_UP: &str = "57P03";

/// Run a launcher that prints `LAUNCHED_PORT`/`LAUNCHED_PID` (sd-launch in the background,
/// with `--proxy` or not) and exits; returns the port and pid. Its stdout is read to its
/// end, as `export $(...)` does; its stderr (and the daemon's) goes to /dev/null.
pub(crate) fn launched(mut cmd: Command) -> io::Result<(u16, i32)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = String::new();
    let read = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let status = child.wait()?;
    read.transpose()?;
    if !status.success() {
        return Err(io::Error::other(format!("launcher failed: {status}")));
    }
    crate::procs::parse_launched(&out)
}

/// `sd-launch --proxy OPTIONS -- ARGV...` in the background: the public port and the proxy
/// process's pid (our child, once sd-launch has exited: we are the subreaper).
pub(crate) fn proxy(
    sd_launch: &Path,
    options: &[&str],
    argv: &[OsString],
) -> io::Result<(u16, i32)> {
    let mut cmd = Command::new(sd_launch);
    cmd.arg("--proxy").args(options).arg("--").args(argv);
    launched(cmd)
}

/// How long a helper of a stopped process may take to exit on its own (sd-launch's
/// guardian, our child since its parent exited, exits right after the proxy).
pub(crate) const SETTLE: Duration = Duration::from_secs(1);

/// Stop our proxy process (SIGTERM: it stops its daemon, then exits) and reap it, then let
/// the rest of ours end and reap it (sd-launch's guardian exits with the proxy), and kill
/// whatever still runs after [`SETTLE`] (nothing, if the proxy did its job). Returns
/// (stopped in time on SIGTERM, processes still running and killed). Only when no other
/// child of ours runs.
pub(crate) fn stop_proxy(pid: i32) -> (bool, usize) {
    let stopped = stop_and_reap(pid, libc::SIGTERM, STOP_WITHIN);
    (stopped, crate::procs::settle_children(SETTLE))
}

/// 127.0.0.1:`port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Send `request` on `conn` and read until the reply holds `lines` complete lines (`\r\n`);
/// returns the reply. Bounded: [`PROBE_DEADLINE`] per read, 64 KiB, 1,000 reads.
fn resp(conn: &mut TcpStream, request: &[u8], lines: usize) -> io::Result<String> {
    conn.set_read_timeout(Some(PROBE_DEADLINE))?;
    conn.write_all(request)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        if reply.windows(2).filter(|w| w == b"\r\n").count() >= lines || reply.len() > 65536 {
            break;
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// `PING` (RESP) on `conn`; requires `+PONG`.
pub(crate) fn redis_ping(mut conn: TcpStream) -> io::Result<()> {
    let reply = resp(&mut conn, b"*1\r\n$4\r\nPING\r\n", 1)?;
    if reply.starts_with("+PONG\r\n") {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "unexpected redis reply {reply:?}"
        )))
    }
}

/// `CONFIG GET port` through `addr`: the TCP port redis itself listens on (behind our proxy,
/// its private backend port, which sd-launch does not print).
pub(crate) fn redis_own_port(addr: SocketAddr) -> io::Result<u16> {
    let mut conn = TcpStream::connect(addr)?;
    let reply = resp(
        &mut conn,
        b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$4\r\nport\r\n",
        5,
    )?;
    // *2 / $4 / port / $N / value
    reply
        .split("\r\n")
        .nth(4)
        .and_then(|v| v.parse().ok())
        .filter(|&p: &u16| p != 0)
        .ok_or_else(|| io::Error::other(format!("no port in CONFIG GET port: {reply:?}")))
}

/// redis-server with the streams on /dev/null, told `args`.
fn redis_args(redis: &Path, args: &[&str]) -> Vec<OsString> {
    let mut argv = vec![redis.as_os_str().to_owned()];
    argv.extend(args.iter().map(OsString::from));
    argv
}

/// What ended one PostgreSQL startup.
#[derive(Debug, PartialEq, Eq)]
enum PgReply {
    /// `ReadyForQuery`: the first reply a client can use.
    Ready,
    /// `ErrorResponse` 57P03, "the database system is starting up".
    StartingUp,
}

/// A minimal PostgreSQL wire client: send the `StartupMessage` (protocol 3.0, user and
/// database `postgres`) and read messages until `ReadyForQuery` (then send `Terminate`), or
/// an error. Trust authentication only. Bounded: [`PROBE_DEADLINE`] per read, 1,000
/// messages of at most 1 MiB.
fn pg_startup(mut conn: TcpStream) -> io::Result<PgReply> {
    conn.set_read_timeout(Some(PROBE_DEADLINE))?;
    let params = b"user\0postgres\0database\0postgres\0\0";
    let len = (8 + params.len()) as u32;
    let mut packet = Vec::with_capacity(len as usize);
    packet.extend_from_slice(&len.to_be_bytes());
    packet.extend_from_slice(&196_608u32.to_be_bytes()); // 3.0
    packet.extend_from_slice(params);
    conn.write_all(&packet)?;
    for _ in 0..1000 {
        let mut head = [0u8; 5];
        conn.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=1 << 20).contains(&len) {
            return Err(io::Error::other(format!("bad message length {len}")));
        }
        let mut body = vec![0u8; len - 4];
        conn.read_exact(&mut body)?;
        match head[0] {
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(io::Error::other(
                    "postgres asks for a password (trust expected)",
                ));
            }
            b'E' => {
                // Fields: a type byte and a NUL-terminated string each, then a NUL.
                let fields: Vec<(u8, String)> = body
                    .split(|&b| b == 0)
                    .filter(|f| !f.is_empty())
                    .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
                    .collect();
                let field = |t: u8| fields.iter().find(|f| f.0 == t).map(|f| f.1.as_str());
                if field(b'C') == Some(PG_STARTING_UP) {
                    return Ok(PgReply::StartingUp);
                }
                return Err(io::Error::other(format!(
                    "postgres error {}: {}",
                    field(b'C').unwrap_or("?"),
                    field(b'M').unwrap_or("?")
                )));
            }
            b'Z' => {
                let _ = conn.write_all(b"X\0\0\0\x04"); // Terminate
                return Ok(PgReply::Ready);
            }
            _ => {} // AuthenticationOk, ParameterStatus, BackendKeyData, notices
        }
    }
    Err(io::Error::other("no ReadyForQuery in 1000 messages"))
}

/// Connect to `addr` (at once, or polling every `poll` while refused) and do the startup
/// until `ReadyForQuery`, retrying after [`POLL`] on "starting up"; returns how many
/// startups were answered "starting up". Bounded by [`PG_DEADLINE`] and by count.
fn pg_first_reply(addr: SocketAddr, poll: Option<Duration>) -> io::Result<usize> {
    let deadline = Instant::now() + PG_DEADLINE;
    for retries in 0..(PG_DEADLINE.as_millis() / POLL.as_millis()) as usize {
        let conn = match poll {
            Some(interval) => connect_poll(addr, interval)?,
            None => TcpStream::connect(addr)?,
        };
        match pg_startup(conn)? {
            PgReply::Ready => return Ok(retries),
            PgReply::StartingUp if Instant::now() < deadline => std::thread::sleep(POLL),
            PgReply::StartingUp => break,
        }
    }
    Err(io::Error::other(format!(
        "postgres still starting up after {PG_DEADLINE:?}"
    )))
}

/// PostgreSQL's server binaries (`initdb`, `postgres`), which Debian keeps off PATH: the
/// newest `/usr/lib/postgresql/*/bin`, or the ones on PATH.
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").is_file() && bin.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop().or_else(|| {
        let initdb = crate::config::which(&["initdb"])?;
        let dir = initdb.parent()?.to_path_buf();
        dir.join("postgres").is_file().then_some(dir)
    })
}

/// A PostgreSQL data directory made by `initdb` (untimed), and how to start postgres on it.
#[derive(Debug)]
struct Postgres {
    /// `postgres`, or `setpriv ... postgres` when we are root.
    argv: Vec<OsString>,
    data: PathBuf,
    /// "PostgreSQL 15", from the binaries' directory.
    name: String,
    _dir: tempfile::TempDir,
}

/// `id -u NAME` / `id -g NAME`.
fn id(flag: &str, name: &str) -> io::Result<u32> {
    let out = Command::new("id").args([flag, name]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, format!("no user {name}")))
}

impl Postgres {
    /// initdb a new data directory (as the `postgres` user when we are root).
    fn init(bin: &Path) -> io::Result<Postgres> {
        // Not under our scratch directory: as root, postgres could not enter it (0700).
        let dir = tempfile::Builder::new().prefix("sd-bench-pg-").tempdir()?;
        // SAFETY: getuid has no preconditions.
        let prefix: Vec<OsString> = if unsafe { libc::getuid() } == 0 {
            let setpriv = crate::config::which(&["setpriv"]).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "setpriv not found (util-linux)")
            })?;
            let (uid, gid) = (id("-u", "postgres")?, id("-g", "postgres")?);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            vec![
                setpriv.into_os_string(),
                "--reuid=postgres".into(),
                "--regid=postgres".into(),
                "--init-groups".into(),
            ]
        } else {
            Vec::new()
        };
        let data = dir.path().join("data");
        let initdb = [prefix.clone(), vec![bin.join("initdb").into_os_string()]].concat();
        let out = Command::new(&initdb[0])
            .args(&initdb[1..])
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-N"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let version = bin
            .parent()
            .and_then(Path::file_name)
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| v.chars().all(|c| c.is_ascii_digit()));
        Ok(Postgres {
            argv: [prefix, vec![bin.join("postgres").into_os_string()]].concat(),
            data,
            name: version.map_or("PostgreSQL".into(), |v| format!("PostgreSQL {v}")),
            _dir: dir,
        })
    }

    /// The postgres command line listening on 127.0.0.1:`port` (a number or the template).
    fn args(&self, port: &str) -> Vec<OsString> {
        let mut argv = self.argv.clone();
        argv.extend(["-D".into(), self.data.clone().into_os_string()]);
        for a in ["-h", "127.0.0.1", "-p", port, "-k", "", "-c", "fsync=off"] {
            argv.push(a.into());
        }
        argv
    }

    /// Wait (bounded, 5 s) until the last postgres on the data directory is gone: it removes
    /// `postmaster.pid` as it exits. A start while it is still there would fail.
    /// (After a SIGKILL the file stays: the next postgres sees that its pid is gone and
    /// starts anyway, so the wait ends there too.)
    fn wait_released(&self) {
        let pid_file = self.data.join("postmaster.pid");
        for _ in 0..500 {
            if !pid_file.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What the stops after each measurement found: stops that needed SIGKILL, and processes
/// still running after them (killed).
#[derive(Debug, Default)]
struct Stops {
    late: Cell<usize>,
    swept: Cell<usize>,
}

impl Stops {
    fn record(&self, (stopped, swept): (bool, usize)) {
        self.late.set(self.late.get() + usize::from(!stopped));
        self.swept.set(self.swept.get() + swept);
    }

    fn note(&self) -> String {
        format!(
            "stops needing SIGKILL {}, processes left running after a stop {}",
            self.late.get(),
            self.swept.get()
        )
    }
}

/// ours, Redis: `sd-launch --proxy -- redis-server ARGS`, PING at once.
fn ours_redis(sd_launch: &Path, argv: &[OsString], stops: &Stops) -> io::Result<f64> {
    let start = Instant::now();
    let (port, pid) = proxy(sd_launch, &[], argv)?;
    let result = TcpStream::connect(loopback(port)).and_then(redis_ping);
    let elapsed = ms_since(start);
    stops.record(stop_proxy(pid));
    result.map(|()| elapsed)
}

/// baseline, Redis: a picked port, redis binds it, poll connect every `interval`, PING.
fn poll_redis(redis: &Path, interval: Duration, stops: &Stops) -> io::Result<f64> {
    let port = free_port()?;
    let p = port.to_string();
    let start = Instant::now();
    let child = Command::new(redis)
        .args(["--port", &p, "--bind", "127.0.0.1", "--save", ""])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = connect_poll(loopback(port), interval).and_then(redis_ping);
    let elapsed = ms_since(start);
    let stopped = stop_and_reap(child.id() as i32, libc::SIGTERM, STOP_WITHIN);
    stops.record((stopped, crate::procs::settle_children(SETTLE)));
    result.map(|()| elapsed)
}

/// ours, PostgreSQL: `sd-launch --proxy --ready -- postgres ... -p '${backend.port}'`,
/// startup at once.
fn ours_pg(
    sd_launch: &Path,
    pg: &Postgres,
    retries: &Cell<usize>,
    stops: &Stops,
) -> io::Result<f64> {
    pg.wait_released();
    let start = Instant::now();
    let (port, pid) = proxy(sd_launch, &["--ready"], &pg.args("${backend.port}"))?;
    let result = pg_first_reply(loopback(port), None);
    let elapsed = ms_since(start);
    stops.record(stop_proxy(pid));
    let n = result?;
    retries.set(retries.get() + n);
    Ok(elapsed)
}

/// baseline, PostgreSQL: a picked port, postgres binds it, poll connect every 10 ms, startup
/// (again after 10 ms while "starting up").
fn poll_pg(pg: &Postgres, retries: &Cell<usize>, stops: &Stops) -> io::Result<f64> {
    pg.wait_released();
    let port = free_port()?;
    let argv = pg.args(&port.to_string());
    let start = Instant::now();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = pg_first_reply(loopback(port), Some(POLL));
    let elapsed = ms_since(start);
    let stopped = stop_and_reap(child.id() as i32, libc::SIGTERM, STOP_WITHIN);
    stops.record((stopped, crate::procs::settle_children(SETTLE)));
    let n = result?;
    retries.set(retries.get() + n);
    Ok(elapsed)
}

/// The Redis lines: ours with a Unix backend and with a TCP backend against the poll.
fn redis_rows(config: &Config, sd_launch: &Path, redis: &Path) -> Vec<Row> {
    let unix = redis_args(
        redis,
        &[
            "--port",
            "0",
            "--unixsocket",
            "${backend.path}",
            "--save",
            "",
        ],
    );
    let tcp = redis_args(
        redis,
        &[
            "--port",
            "${backend.port}",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ],
    );
    let stops: [Stops; 4] = Default::default();
    let mut ways: Vec<Way<'_>> = vec![
        Box::new(|| ours_redis(sd_launch, &unix, &stops[0])),
        Box::new(|| ours_redis(sd_launch, &tcp, &stops[1])),
        Box::new(|| poll_redis(redis, POLL, &stops[2])),
        Box::new(|| poll_redis(redis, FAST_POLL, &stops[3])),
    ];
    let (series, errors) = shuffled_rounds(config.reps(40, 3), &mut ways);
    drop(ways);
    if let Some(e) = errors.first() {
        eprintln!("row 11 (redis): {} failures, first: {e}", errors.len());
    }
    let s: Vec<Summary> = series.iter().map(|s| Summary::of(s)).collect();
    let failed = |i: usize| series[i].iter().filter(|x| x.is_nan()).count();
    let baseline_names = [
        "",
        "",
        "self-bind on a picked port + poll connect every 10 ms",
        "self-bind on a picked port + poll connect every 1 ms (about redis's own start)",
    ];
    let row = |i: usize, base: usize, backend: &str, extra: String| Row {
        name: format!(
            "11. launch → first reply (PING → +PONG), redis-server, ours sd-launch --proxy, \
             {backend} backend"
        ),
        unit: "ms".into(),
        ours: s[i],
        baseline_name: baseline_names[base].into(),
        baseline: s[base],
        note: format!(
            "connect at once; ours {:+.2} ms vs baseline; failures ours/baseline {}/{}; {}; \
             baseline {}{extra}",
            s[i].median - s[base].median,
            failed(i),
            failed(base),
            stops[i].note(),
            stops[base].note()
        ),
    };
    vec![
        row(0, 2, "Unix (${backend.path})", String::new()),
        row(
            1,
            2,
            "TCP (${backend.port})",
            format!(
                "; TCP/Unix backend {:.2}x ({:+.2} ms)",
                s[1].median / s[0].median,
                s[1].median - s[0].median
            ),
        ),
        row(
            0,
            3,
            "Unix (${backend.path})",
            "; the 1 ms poll is near the floor of a daemon that binds itself: what ours adds \
             on top is the launcher and the proxy (a Unix backend is connected when its \
             socket file appears, a TCP one retried from 1 ms doubling to 5 ms)"
                .into(),
        ),
    ]
}

/// The PostgreSQL line: ours with `--ready` against the poll.
fn postgres_rows(config: &Config, sd_launch: &Path) -> Vec<Row> {
    let Some(bin) = postgres_bin() else {
        eprintln!("row 11: PostgreSQL's server not found (apt-get install -y postgresql); skipped");
        return Vec::new();
    };
    let pg = match Postgres::init(&bin) {
        Ok(pg) => pg,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("row 11: PostgreSQL skipped: {e}");
            return Vec::new();
        }
        Err(e) => {
            eprintln!("row 11: PostgreSQL FAILED to set up, its line is missing: {e}");
            return Vec::new();
        }
    };
    let retries = [Cell::new(0), Cell::new(0)];
    let stops = [Stops::default(), Stops::default()];
    let mut ways: Vec<Way<'_>> = vec![
        Box::new(|| ours_pg(sd_launch, &pg, &retries[0], &stops[0])),
        Box::new(|| poll_pg(&pg, &retries[1], &stops[1])),
    ];
    let (series, errors) = shuffled_rounds(config.reps(15, 2), &mut ways);
    drop(ways);
    if let Some(e) = errors.first() {
        eprintln!("row 11 (postgres): {} failures, first: {e}", errors.len());
    }
    let (ours, base) = (Summary::of(&series[0]), Summary::of(&series[1]));
    let failed = |i: usize| series[i].iter().filter(|x| x.is_nan()).count();
    vec![Row {
        name: format!(
            "11. launch → first reply (StartupMessage → ReadyForQuery), {}, ours sd-launch \
             --proxy --ready, TCP backend",
            pg.name
        ),
        unit: "ms".into(),
        ours,
        baseline_name: "self-bind on a picked port + poll connect every 10 ms, startup again \
                        after 10 ms while 'starting up'"
            .into(),
        baseline: base,
        note: format!(
            "connect at once, connections wait for READY=1; ours {:+.2} ms vs baseline; \
             failures ours/baseline {}/{}; 'starting up' answers ours/baseline {}/{}; {}; \
             baseline {}; one data directory, initdb once (untimed), fsync=off",
            ours.median - base.median,
            failed(0),
            failed(1),
            retries[0].get(),
            retries[1].get(),
            stops[0].note(),
            stops[1].note()
        ),
    }]
}

/// Measure row 11: Redis (40 rounds of four ways, 3 in quick mode) and PostgreSQL (15 rounds, 2 in quick
/// mode); each is skipped with a line on stderr when it is not installed.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let sd_launch = config
        .binary("sd-launch")
        .ok_or_else(|| io::Error::other("sd-launch not built next to the harness"))?;
    let mut rows = Vec::new();
    match crate::config::which(&["redis-server"]) {
        Some(redis) => rows.extend(redis_rows(config, &sd_launch, &redis)),
        None => {
            eprintln!("row 11: redis-server not found (apt-get install -y redis-server); skipped")
        }
    }
    rows.extend(postgres_rows(config, &sd_launch));
    Ok(rows)
}
