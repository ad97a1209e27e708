//! Row 12: proxy mode, throughput and added latency. The same server measured three ways,
//! interleaved (direct, ours, socket-proxyd, direct, ...), several rounds:
//!
//! * ours: through `sd-launch --proxy`, which started the server on a private loopback TCP
//!   port (`${backend.port}`);
//! * direct: that same server's own port, which sd-launch does not print: Redis tells it
//!   (`CONFIG GET port` through the proxy), demo-server too (`GET /info`, its listening
//!   address);
//! * socket-proxyd: `systemd-socket-proxyd 127.0.0.1:THATPORT`, socket-activated on
//!   127.0.0.1:0 by our launcher (`sd-launch -l 127.0.0.1:0 -- systemd-socket-proxyd ...`).
//!
//! So all three reach one and the same server process. For Redis a fourth way, ours with the
//! backend the docs prefer (`--port 0 --unixsocket '${backend.path}'`), is a second
//! redis-server of the same configuration, compared with direct TCP. The loads:
//! * Redis: `redis-benchmark -c 50 -n N -t ping,set,get --csv` (requests per second and
//!   its latency percentiles per test), `-t get -P 16` (pipelined), and `-t set,get -d
//!   262144` (values of 256 KiB: the bulk path, spliced);
//! * HTTP: demo-server (`--listen 127.0.0.1:${backend.port}`), `wrk -t2 -c32 -d2s --latency`.
//!
//! Each measurement is preceded by one untimed request on the same path (`PING`, `GET /`),
//! so every proxy and server is up. Everything started is stopped (SIGTERM; our proxy stops
//! its daemon) and reaped at the end.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::first_reply::{
    SETTLE, STOP_WITHIN, launched, loopback, proxy, redis_own_port, redis_ping,
};
use super::serving::wrk_latency;
use crate::procs::{PROBE_DEADLINE, http_get, stop_and_reap};
use crate::stats::Summary;
use crate::{Config, Row};

/// The ways, in the order of each round.
const DIRECT: usize = 0;
const OURS: usize = 1;
const PROXYD: usize = 2;
/// Redis only: ours with a Unix backend (`${backend.path}`), a second redis-server.
const OURS_UNIX: usize = 3;

/// How each way is named in the table.
const NAMES: [&str; 4] = [
    "direct (the server's own port)",
    "ours (TCP backend)",
    "systemd-socket-proxyd (socket-activated by sd-launch -l)",
    "ours (Unix backend)",
];

/// The redis-benchmark tests of `-t ping,set,get`, as its CSV names them.
const REDIS_TESTS: [&str; 4] = ["PING_INLINE", "PING_MBULK", "SET", "GET"];

/// The key of the pipelined run.
const PIPELINED: &str = "GET -P 16";
/// `-t set,get -d 262144`: values of 256 KiB, where the proxy splices (zero-copy).
const BULK_SET: &str = "SET 256 KiB";
const BULK_GET: &str = "GET 256 KiB";
const BULK_BYTES: &str = "262144";

/// The key of the wrk run.
const HTTP: &str = "HTTP";

/// How long one load run may take before it is killed (a bound, far above a normal run).
const RUN_WITHIN: Duration = Duration::from_secs(120);

/// One load run's figures for one test.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    p50: f64,
    p99: f64,
}

impl Sample {
    const FAILED: Sample = Sample {
        rps: f64::NAN,
        p50: f64::NAN,
        p99: f64::NAN,
    };
}

/// Processes started for the row, stopped (SIGTERM, bounded, then SIGKILL) and reaped when
/// dropped, if [`Started::stop`] did not: our proxy processes (which stop their daemons
/// first), and the socket-proxyd.
#[derive(Debug, Default)]
struct Started {
    proxies: Vec<i32>,
    proxyds: Vec<i32>,
}

impl Started {
    /// Stop everything (SIGTERM), our proxies first, then let what is left end on its own
    /// (sd-launch's guardians) and kill whatever still runs. Returns whether all our proxies
    /// and all socket-proxyd stopped in time, and how many processes were still running.
    fn stop(&mut self) -> (bool, bool, usize) {
        let mut ours = true;
        for pid in std::mem::take(&mut self.proxies) {
            ours &= stop_and_reap(pid, libc::SIGTERM, STOP_WITHIN);
        }
        let mut proxyds = true;
        for pid in std::mem::take(&mut self.proxyds) {
            proxyds &= stop_and_reap(pid, libc::SIGTERM, STOP_WITHIN);
        }
        (ours, proxyds, crate::procs::settle_children(SETTLE))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run `cmd` to its end (killed after [`RUN_WITHIN`]), its stdout and stderr in files under
/// `scratch`; returns the status and both texts.
fn run_bounded(mut cmd: Command, scratch: &Path) -> io::Result<(ExitStatus, String, String)> {
    let (out_path, err_path) = (scratch.join("row12.out"), scratch.join("row12.err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()?;
    let deadline = Instant::now() + RUN_WITHIN;
    let mut status = None;
    // Bounded by the deadline and by count (10 ms pauses).
    for _ in 0..(RUN_WITHIN.as_millis() / 10 + 1) {
        status = child.try_wait()?;
        if status.is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(status) = status else {
        crate::procs::kill_and_reap(child.id() as i32);
        let _ = child.try_wait();
        return Err(io::Error::other(format!(
            "{:?} did not finish within {RUN_WITHIN:?}",
            cmd.get_program()
        )));
    };
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    Ok((status, read(&out_path), read(&err_path)))
}

/// `redis-benchmark -h 127.0.0.1 -p PORT -c 50 --csv ARGS`: per test (CSV name), requests
/// per second and the p50/p99 latencies (ms).
fn redis_benchmark(
    tool: &Path,
    addr: SocketAddr,
    args: &[&str],
    scratch: &Path,
) -> io::Result<BTreeMap<String, Sample>> {
    let mut cmd = Command::new(tool);
    cmd.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-c", "50", "--csv"])
        .args(args);
    let (status, out, err) = run_bounded(cmd, scratch)?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "redis-benchmark failed ({status}): {}",
            err.trim()
        )));
    }
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"
    let mut tests = BTreeMap::new();
    for line in out.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        let num = |i: usize| cells.get(i).and_then(|c| c.parse::<f64>().ok());
        if let (Some(name), Some(rps), Some(p50), Some(p99)) =
            (cells.first(), num(1), num(4), num(6))
        {
            tests.insert((*name).to_owned(), Sample { rps, p50, p99 });
        }
    }
    if tests.is_empty() {
        return Err(io::Error::other(format!(
            "no results in redis-benchmark's CSV: {out:?} {}",
            err.trim()
        )));
    }
    Ok(tests)
}

/// What row 12 needs, with the reason for anything missing.
struct Tools {
    sd_launch: PathBuf,
    proxyd: Option<PathBuf>,
    redis: Option<(PathBuf, PathBuf)>,
    http: Option<(PathBuf, PathBuf)>,
}

impl Tools {
    fn find(config: &Config) -> io::Result<Tools> {
        let sd_launch = config
            .binary("sd-launch")
            .ok_or_else(|| io::Error::other("sd-launch not built next to the harness"))?;
        let proxyd = crate::config::which(&[
            "/lib/systemd/systemd-socket-proxyd",
            "/usr/lib/systemd/systemd-socket-proxyd",
        ]);
        if proxyd.is_none() {
            eprintln!(
                "row 12: systemd-socket-proxyd not found (apt-get install -y systemd); its \
                 comparisons skipped"
            );
        }
        let redis = match (
            crate::config::which(&["redis-server"]),
            crate::config::which(&["redis-benchmark"]),
        ) {
            (Some(server), Some(bench)) => Some((server, bench)),
            _ => {
                eprintln!(
                    "row 12: redis-server or redis-benchmark not found (apt-get install -y \
                     redis-server redis-tools); the Redis lines skipped"
                );
                None
            }
        };
        let http = match (config.binary("demo-server"), crate::config::which(&["wrk"])) {
            (Some(demo), Some(wrk)) => Some((demo, wrk)),
            _ => {
                eprintln!(
                    "row 12: wrk (apt-get install -y wrk) or demo-server (built next to the \
                     harness) missing; the HTTP lines skipped"
                );
                None
            }
        };
        Ok(Tools {
            sd_launch,
            proxyd,
            redis,
            http,
        })
    }
}

/// `probe` on `addr` (a new connection), retried every 10 ms while it fails, at most
/// [`PROBE_DEADLINE`]: the first request through a proxy waits for the backend anyway, this
/// only covers a server that is slow to come up.
fn first_ok(addr: SocketAddr, probe: fn(TcpStream) -> io::Result<()>) -> io::Result<()> {
    let deadline = Instant::now() + PROBE_DEADLINE;
    let mut last = None;
    for _ in 0..500 {
        match TcpStream::connect(addr).and_then(probe) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(last.unwrap_or_else(|| io::Error::other("no attempt")))
}

/// Start the three ways in front of one server: our proxy running `argv` (its backend a
/// private TCP port), socket-proxyd (if present) in front of the port `own_port` finds
/// through ours. Returns the address of each way (None: skipped; [`OURS_UNIX`] is left to
/// the caller).
fn three_ways(
    tools: &Tools,
    argv: &[std::ffi::OsString],
    probe: fn(TcpStream) -> io::Result<()>,
    own_port: fn(SocketAddr) -> io::Result<u16>,
    started: &mut Started,
) -> io::Result<[Option<SocketAddr>; 4]> {
    let (port, pid) = proxy(&tools.sd_launch, &[], argv)?;
    started.proxies.push(pid);
    let ours = loopback(port);
    first_ok(ours, probe)?;
    let direct = loopback(own_port(ours)?);
    first_ok(direct, probe)?;
    let proxyd = match &tools.proxyd {
        Some(tool) => {
            let mut cmd = Command::new(&tools.sd_launch);
            cmd.args(["-l", "127.0.0.1:0", "--"])
                .arg(tool)
                .arg(direct.to_string());
            let (port, pid) = launched(cmd)?;
            started.proxyds.push(pid);
            first_ok(loopback(port), probe)?;
            Some(loopback(port))
        }
        None => None,
    };
    let mut ways = [None; 4];
    ways[DIRECT] = Some(direct);
    ways[OURS] = Some(ours);
    ways[PROXYD] = proxyd;
    Ok(ways)
}

/// demo-server's own listening port, from `GET /info` through `addr`.
fn demo_own_port(addr: SocketAddr) -> io::Result<u16> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(PROBE_DEADLINE))?;
    conn.write_all(b"GET /info HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::new();
    conn.take(1 << 20).read_to_end(&mut reply)?;
    let reply = String::from_utf8_lossy(&reply);
    let info = reply.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let json: serde_json::Value = serde_json::from_str(info)
        .map_err(|e| io::Error::other(format!("GET /info: {e}: {info:?}")))?;
    json["sockets"][0]["local"]
        .as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other(format!("no listening address in /info: {json}")))
}

/// The samples: per test key, per way, one per round.
type Series = BTreeMap<String, [Vec<Sample>; 4]>;

fn record(series: &mut Series, key: &str, way: usize, sample: Sample) {
    series.entry(key.to_owned()).or_default()[way].push(sample);
}

/// Measure row 12: 5 rounds (1 in quick mode) of every load, each way in turn.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let tools = Tools::find(config)?;
    if tools.redis.is_none() && tools.http.is_none() {
        return Ok(Vec::new());
    }
    let scratch = config.scratch.path();
    let mut started = Started::default();
    let redis_ways = match &tools.redis {
        Some((server, _)) => {
            let argv: Vec<std::ffi::OsString> = [
                server.as_os_str(),
                "--port".as_ref(),
                "${backend.port}".as_ref(),
                "--bind".as_ref(),
                "127.0.0.1".as_ref(),
                "--save".as_ref(),
                "".as_ref(),
            ]
            .map(ToOwned::to_owned)
            .to_vec();
            let mut ways = three_ways(&tools, &argv, redis_ping, redis_own_port, &mut started)?;
            // ours again with the backend the docs prefer: a Unix socket, on a second
            // redis-server of the same configuration.
            let unix: Vec<std::ffi::OsString> = [
                server.as_os_str(),
                "--port".as_ref(),
                "0".as_ref(),
                "--unixsocket".as_ref(),
                "${backend.path}".as_ref(),
                "--save".as_ref(),
                "".as_ref(),
            ]
            .map(ToOwned::to_owned)
            .to_vec();
            let (port, pid) = proxy(&tools.sd_launch, &[], &unix)?;
            started.proxies.push(pid);
            first_ok(loopback(port), redis_ping)?;
            ways[OURS_UNIX] = Some(loopback(port));
            Some(ways)
        }
        None => None,
    };
    let http_ways = match &tools.http {
        Some((demo, _)) => {
            let argv = vec![
                demo.clone().into_os_string(),
                "--listen".into(),
                "127.0.0.1:${backend.port}".into(),
            ];
            Some(three_ways(
                &tools,
                &argv,
                http_get,
                demo_own_port,
                &mut started,
            )?)
        }
        None => None,
    };

    let n = config.reps(10_000, 2_000);
    let n_pipelined = config.reps(200_000, 20_000);
    let n_bulk = config.reps(2_000, 200);
    let secs = if config.quick { 1 } else { 2 };
    let rounds = config.reps(5, 1);
    let n_arg = n.to_string();
    let np_arg = n_pipelined.to_string();
    let plain = ["-t", "ping,set,get", "-n", &n_arg];
    let pipelined = ["-t", "get", "-P", "16", "-n", &np_arg];
    let nb_arg = n_bulk.to_string();
    let bulk = ["-t", "set,get", "-d", BULK_BYTES, "-n", &nb_arg];
    let mut series = Series::new();
    let mut errors: Vec<String> = Vec::new();
    for round in 0..rounds {
        let t0 = Instant::now();
        if let (Some(ways), Some((_, bench))) = (&redis_ways, &tools.redis) {
            for (args, keys) in [
                (&plain[..], &REDIS_TESTS[..]),
                (&pipelined[..], &[PIPELINED][..]),
                (&bulk[..], &[BULK_SET, BULK_GET][..]),
            ] {
                for (way, addr) in ways.iter().enumerate() {
                    let Some(addr) = *addr else { continue };
                    let result = first_ok(addr, redis_ping)
                        .and_then(|()| redis_benchmark(bench, addr, args, scratch));
                    for &key in keys {
                        let csv_name = match key {
                            PIPELINED | BULK_GET => "GET",
                            BULK_SET => "SET",
                            k => k,
                        };
                        let sample = match &result {
                            Ok(tests) => tests.get(csv_name).copied().unwrap_or(Sample::FAILED),
                            Err(_) => Sample::FAILED,
                        };
                        record(&mut series, key, way, sample);
                    }
                    if let Err(e) = result {
                        errors.push(format!("redis, {}: {e}", NAMES[way]));
                    }
                }
            }
        }
        if let (Some(ways), Some((_, wrk))) = (&http_ways, &tools.http) {
            for (way, addr) in ways.iter().enumerate() {
                let Some(addr) = *addr else { continue };
                let result = first_ok(addr, http_get).and_then(|()| wrk_latency(wrk, addr, secs));
                let sample = match &result {
                    Ok(r) => Sample {
                        rps: r.rps,
                        p50: r.p50_ms,
                        p99: r.p99_ms,
                    },
                    Err(_) => Sample::FAILED,
                };
                record(&mut series, HTTP, way, sample);
                if let Err(e) = result {
                    errors.push(format!("http, {}: {e}", NAMES[way]));
                }
            }
        }
        eprintln!(
            "row 12: round {}/{rounds} took {:.1} s",
            round + 1,
            t0.elapsed().as_secs_f64()
        );
    }
    let (ours_stopped, proxyd_stopped, left) = started.stop();
    if let Some(e) = errors.first() {
        eprintln!("row 12: {} failed runs, first: {e}", errors.len());
    }
    let context = |key: &str| {
        if key == HTTP {
            format!(
                "wrk -t2 -c32 -d{secs}s --latency against one demo-server (ours's daemon, \
                 --listen 127.0.0.1:${{backend.port}}; its port from GET /info)"
            )
        } else {
            let args = match key {
                PIPELINED => format!("-t get -P 16 -n {n_pipelined}"),
                BULK_SET | BULK_GET => format!("-t set,get -d {BULK_BYTES} -n {n_bulk}"),
                _ => format!("-t ping,set,get -n {n}"),
            };
            format!(
                "redis-benchmark -c 50 {args} against one redis-server (ours's daemon, --port \
                 ${{backend.port}}; its port from CONFIG GET port)"
            )
        }
    };
    let mut rows = Vec::new();
    for key in ["SET", "GET", PIPELINED, BULK_SET, BULK_GET, HTTP] {
        rows.extend(rate_rows(&series, key, &context(key), rounds));
    }
    for key in ["GET", HTTP] {
        rows.extend(latency_rows(&series, key, rounds));
    }
    if let Some(row) = rows.first_mut() {
        row.note.push_str(&format!(
            "; at the end, on SIGTERM: our proxies and their daemons stopped in time: \
             {ours_stopped}; socket-proxyd stopped in time: {proxyd_stopped}; processes still \
             running after that: {left}"
        ));
    }
    Ok(rows)
}

/// Summary of one figure of `key` for `way`.
fn summary(series: &Series, key: &str, way: usize, figure: fn(&Sample) -> f64) -> Summary {
    let values: Vec<f64> = series
        .get(key)
        .map(|s| s[way].iter().map(figure).collect())
        .unwrap_or_default();
    Summary::of(&values)
}

fn failed(series: &Series, key: &str, way: usize) -> usize {
    series
        .get(key)
        .map_or(0, |s| s[way].iter().filter(|x| x.rps.is_nan()).count())
}

/// The display name of a test key.
fn what(key: &str) -> String {
    match key {
        HTTP => "HTTP GET /, demo-server".into(),
        PIPELINED => "Redis GET pipelined (-P 16)".into(),
        BULK_SET => "Redis SET of 256 KiB values".into(),
        BULK_GET => "Redis GET of 256 KiB values".into(),
        k => format!("Redis {k}"),
    }
}

/// Requests per second: ours against direct and against socket-proxyd, and (Redis) ours with
/// a Unix backend against direct.
fn rate_rows(series: &Series, key: &str, context: &str, rounds: usize) -> Vec<Row> {
    let Some(ways) = series.get(key) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (mine, base) in [(OURS, DIRECT), (OURS, PROXYD), (OURS_UNIX, DIRECT)] {
        if ways[mine].is_empty() || ways[base].is_empty() {
            continue;
        }
        let ours = summary(series, key, mine, |s| s.rps);
        let b = summary(series, key, base, |s| s.rps);
        let p = |way, f: fn(&Sample) -> f64| summary(series, key, way, f).median;
        let order = if ways[OURS_UNIX].is_empty() {
            "direct, ours, socket-proxyd"
        } else {
            "direct, ours, socket-proxyd, ours with a Unix backend"
        };
        let mut note = format!(
            "{context}; {rounds} rounds, interleaved ({order}); ours/baseline {:.2}x ({:+.0}%); \
             latency p50 ours/baseline {:.3}/{:.3} ms, p99 {:.3}/{:.3} ms; failed runs \
             ours/baseline {}/{}",
            ours.median / b.median,
            (ours.median / b.median - 1.0) * 100.0,
            p(mine, |s| s.p50),
            p(base, |s| s.p50),
            p(mine, |s| s.p99),
            p(base, |s| s.p99),
            failed(series, key, mine),
            failed(series, key, base),
        );
        if mine == OURS_UNIX {
            note.push_str(
                "; ours here is a second redis-server of the same configuration, told \
                 --port 0 --unixsocket ${backend.path}",
            );
        }
        if key == "GET" {
            for ping in ["PING_INLINE", "PING_MBULK"] {
                let o = summary(series, ping, mine, |s| s.rps).median;
                let x = summary(series, ping, base, |s| s.rps).median;
                note.push_str(&format!("; {ping} {o:.0} vs {x:.0} req/s ({:.2}x)", o / x));
            }
        }
        rows.push(Row {
            name: format!(
                "12. throughput through the proxy, {}, ours sd-launch --proxy ({} backend)",
                what(key),
                if mine == OURS_UNIX { "Unix" } else { "TCP" }
            ),
            unit: "req/s".into(),
            ours,
            baseline_name: NAMES[base].into(),
            baseline: b,
            note,
        });
    }
    rows
}

/// p50 and p99 latency (ms), ours against direct and against socket-proxyd.
fn latency_rows(series: &Series, key: &str, rounds: usize) -> Vec<Row> {
    let Some(ways) = series.get(key) else {
        return Vec::new();
    };
    let tool = if key == HTTP {
        "wrk"
    } else {
        "redis-benchmark"
    };
    let mut rows = Vec::new();
    for (label, figure) in [
        ("p50", (|s: &Sample| s.p50) as fn(&Sample) -> f64),
        ("p99", |s: &Sample| s.p99),
    ] {
        let ours = summary(series, key, OURS, figure);
        for base in [DIRECT, PROXYD] {
            if ways[base].is_empty() {
                continue;
            }
            let b = summary(series, key, base, figure);
            rows.push(Row {
                name: format!(
                    "12. latency {label} through the proxy, {}, ours sd-launch --proxy (TCP \
                     backend)",
                    what(key)
                ),
                unit: "ms".into(),
                ours,
                baseline_name: NAMES[base].into(),
                baseline: b,
                note: format!(
                    "{tool}'s {label} per run, median of {rounds} runs; ours adds {:+.3} ms \
                     ({:.2}x) at this load",
                    ours.median - b.median,
                    ours.median / b.median
                ),
            });
        }
    }
    rows
}
