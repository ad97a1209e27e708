//! Row 4: serving cost of activation. `wrk` (Debian package) loads demo-server on a passed
//! socket (`sd_launch::Launch`) and a second demo-server that bound its own socket
//! (`--listen`), alternately (A B A B), same threads, connections and duration.

use std::io;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::daemons::{self, Daemon};
use crate::procs::{self, connect_poll, free_port, http_get, kill_and_reap};
use crate::stats::{Summary, interleave};
use crate::{Config, Row};

/// Run wrk once against `addr`; returns requests per second. Fails on socket errors or
/// non-2xx responses.
pub fn wrk(wrk: &std::path::Path, addr: SocketAddr, secs: u32) -> io::Result<f64> {
    let text = wrk_output(wrk, addr, secs, &[])?;
    requests_per_sec(&text)
}

/// One wrk run with `--latency`: requests per second and the latency distribution.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// Run `wrk --latency` once against `addr` (same load as [`wrk`]); fails as [`wrk`] does.
pub fn wrk_latency(wrk: &std::path::Path, addr: SocketAddr, secs: u32) -> io::Result<WrkRun> {
    let text = wrk_output(wrk, addr, secs, &["--latency"])?;
    // "  Latency Distribution" then lines such as "     50%    2.09ms".
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p)?.trim().parse::<WrkTime>().ok())
            .map(|t| t.0)
            .ok_or_else(|| io::Error::other(format!("no {p} latency in wrk output: {text}")))
    };
    Ok(WrkRun {
        rps: requests_per_sec(&text)?,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
    })
}

/// A wrk duration such as `812.00us`, `2.09ms`, `1.10s`, in ms.
struct WrkTime(f64);

impl std::str::FromStr for WrkTime {
    type Err = ();
    fn from_str(s: &str) -> Result<WrkTime, ()> {
        let (number, scale) = if let Some(n) = s.strip_suffix("us") {
            (n, 1e-3)
        } else if let Some(n) = s.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60e3)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1e3)
        } else {
            return Err(());
        };
        number
            .parse::<f64>()
            .map(|n| WrkTime(n * scale))
            .map_err(|_| ())
    }
}

/// wrk's `Requests/sec:` figure.
fn requests_per_sec(text: &str) -> io::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no Requests/sec in wrk output: {text}")))
}

/// Run `wrk -t2 -c32 -dSECS --timeout 2s EXTRA http://ADDR/`; its stdout. Fails on socket
/// errors or non-2xx responses.
fn wrk_output(
    wrk: &std::path::Path,
    addr: SocketAddr,
    secs: u32,
    extra: &[&str],
) -> io::Result<String> {
    let out = Command::new(wrk)
        .args(["-t2", "-c32", &format!("-d{secs}s"), "--timeout", "2s"])
        .args(extra)
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(io::Error::other(format!("wrk failed: {text}")));
    }
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
    {
        return Err(io::Error::other(format!("wrk: {}", line.trim())));
    }
    Ok(text)
}

/// Measure row 4 (skipped with a message when wrk or demo-server is missing).
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let Some(wrk_path) = crate::config::which(&["wrk"]) else {
        eprintln!("row 4: wrk not found (apt-get install -y wrk); skipped");
        return Ok(Vec::new());
    };
    let Some(d) = Daemon::demo_server(config) else {
        eprintln!("row 4: demo-server not built next to the harness; skipped");
        return Ok(Vec::new());
    };
    let passed = daemons::launch(&d.passed())
        .spawn()
        .map_err(io::Error::other)?;
    let port = free_port()?;
    let mut own = daemons::command(&d.self_bind(port)).spawn()?;
    let own_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let ready = connect_poll(own_addr, Duration::from_millis(10)).and_then(http_get);
    let result = ready.map(|()| {
        let secs = if config.quick { 1 } else { 3 };
        let (series, errors) = interleave(
            config.reps(5, 1),
            &mut [
                &mut || wrk(&wrk_path, passed.local_addr(0), secs),
                &mut || wrk(&wrk_path, own_addr, secs),
            ],
        );
        let ours = Summary::of(&series[0]);
        let base = Summary::of(&series[1]);
        vec![Row {
            name: "4. serving, demo-server, wrk -t2 -c32".into(),
            unit: "req/s".into(),
            ours,
            baseline_name: "demo-server binding its own socket".into(),
            baseline: base,
            note: format!(
                "{secs} s per run, alternated; {} failed runs; target ratio 1.00 ± noise",
                errors.len()
            ),
        }]
    });
    drop(passed);
    kill_and_reap(own.id() as i32);
    let _ = own.try_wait();
    procs::sweep_children();
    result
}
