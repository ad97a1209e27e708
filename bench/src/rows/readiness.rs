//! Row 9 (issue 15): a test starts demo-server, waits until it is ready, and gets its first
//! response. Time from "start" to a `200` status line of `GET /`, every way once per round,
//! in a new order each round:
//!
//! * ours, no wait: `sd_launch::Launch::new(demo_server).spawn()`, then GET at once (the
//!   connection waits in the passed socket's backlog): what the docs recommend;
//! * ours with each [`sd_launch::Wait`] strategy before the GET: `READY=1`, an accepted
//!   connection, `GET /healthz` answering 2xx, the log line `serving ...` on stderr;
//! * testcontainers-style: pick a free port, demo-server binds it itself (`--listen`), try
//!   `connect()` every 100 ms (and, second variant, every 10 ms) until it succeeds, then GET.
//!
//! The library's launches keep its defaults (stdout and stderr captured, which the log
//! strategy needs); the self-binding daemon's streams go to /dev/null. Every demo-server gets
//! `RUST_LOG=info`, its default level, so the `serving` line is written whatever ours is.

use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use sd_launch::{Launch, Wait};

use crate::daemons;
use crate::procs::{PROBE_DEADLINE, connect_poll, free_port, http_get, kill_and_reap, ms_since};
use crate::stats::{Summary, interleave};
use crate::{Config, Row};

/// The log line demo-server writes for each socket it serves (tracing, on stderr).
const SERVING: &str = "serving ";

/// ours: spawn through the library (waiting by `wait`, if any), then GET at once.
fn ours(launch: &Launch) -> io::Result<f64> {
    let start = Instant::now();
    let mut launched = launch.spawn().map_err(io::Error::other)?;
    let result = launched
        .addr(0)
        .map_err(io::Error::other)
        .and_then(TcpStream::connect)
        .and_then(http_get);
    let elapsed = ms_since(start);
    let _ = launched.kill(); // SIGKILL and reap (untimed)
    result.map(|()| elapsed)
}

/// testcontainers-style: the daemon binds a picked port, connect() every `interval`.
fn poll(demo_server: &daemons::Daemon, interval: Duration) -> io::Result<f64> {
    let port = free_port()?;
    let start = Instant::now();
    let mut child = daemons::command(&demo_server.self_bind(port))
        .env("RUST_LOG", "info")
        .spawn()?;
    let result = connect_poll(([127, 0, 0, 1], port).into(), interval).and_then(http_get);
    let elapsed = ms_since(start);
    kill_and_reap(child.id() as i32);
    let _ = child.try_wait();
    result.map(|()| elapsed)
}

/// One way of starting demo-server, returning milliseconds to the first response.
pub(crate) type Way<'a> = Box<dyn FnMut() -> io::Result<f64> + 'a>;

/// The library launch of demo-server, with its default log level whatever our `RUST_LOG`
/// says (the log strategy needs the `info` line).
fn launch(program: &Path) -> Launch {
    Launch::new(program).env("RUST_LOG", "info")
}

/// The library launch of demo-server waiting by `wait` (at most [`PROBE_DEADLINE`]).
fn waiting(program: &Path, wait: Wait) -> Launch {
    launch(program).wait_until(wait, PROBE_DEADLINE)
}

/// Every way once per round, like [`interleave`], but in a new order each round (a fixed
/// pseudo-random shuffle): the way measured right after a poll's sleeps runs a few tenths of
/// a millisecond slower (a cold CPU), and in a fixed order that would always be the same way.
pub(crate) fn shuffled_rounds(rounds: usize, ways: &mut [Way<'_>]) -> (Vec<Vec<f64>>, Vec<String>) {
    let mut series = vec![Vec::with_capacity(rounds); ways.len()];
    let mut errors = Vec::new();
    let mut order: Vec<usize> = (0..ways.len()).collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..rounds {
        // Fisher-Yates with xorshift64: reproducible, no dependency.
        for i in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut refs: Vec<&mut dyn FnMut() -> io::Result<f64>> = Vec::new();
        let mut picked: Vec<Option<&mut Way<'_>>> = ways.iter_mut().map(Some).collect();
        for &i in &order {
            if let Some(way) = picked[i].take() {
                refs.push(&mut **way);
            }
        }
        let (one, errs) = interleave(1, &mut refs);
        for (k, &i) in order.iter().enumerate() {
            series[i].extend_from_slice(&one[k]);
        }
        errors.extend(errs);
    }
    (series, errors)
}

/// Measure row 9: 60 rounds (3 in quick mode) of all seven ways, shuffled in each round.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let demo = daemons::Daemon::demo_server(config)
        .ok_or_else(|| io::Error::other("demo-server not built next to the harness"))?;
    let program = demo.program.clone();
    let no_wait = launch(&program);
    let strategies = [
        (
            "Wait::notify() (READY=1)".to_owned(),
            waiting(&program, Wait::notify()),
        ),
        (
            "Wait::accepted(0)".to_owned(),
            waiting(&program, Wait::accepted(0)),
        ),
        (
            "Wait::http(\"/healthz\")".to_owned(),
            waiting(&program, Wait::http("/healthz")),
        ),
        (
            format!("Wait::log({SERVING:?}) (stderr)"),
            waiting(&program, Wait::log(SERVING).map_err(io::Error::other)?),
        ),
    ];
    let polls = [
        ("self-bind + poll connect every 100 ms", 100),
        ("self-bind + poll connect every 10 ms", 10),
    ];

    let mut ways: Vec<(String, Way<'_>)> = vec![(
        "ours, no wait (GET at once)".into(),
        Box::new(|| ours(&no_wait)),
    )];
    for (name, launch) in &strategies {
        ways.push((format!("ours, {name}"), Box::new(move || ours(launch))));
    }
    for (name, ms) in polls {
        let demo = &demo;
        ways.push((
            name.into(),
            Box::new(move || poll(demo, Duration::from_millis(ms))),
        ));
    }
    let (names, mut fns): (Vec<String>, Vec<_>) = ways.into_iter().unzip();
    let (series, errors) = shuffled_rounds(config.reps(60, 3), &mut fns);
    drop(fns);
    crate::procs::sweep_children();
    if let Some(e) = errors.first() {
        eprintln!("row 9: {} failures, first: {e}", errors.len());
    }

    let summaries: Vec<Summary> = series.iter().map(|s| Summary::of(s)).collect();
    let failed = |i: usize| series[i].iter().filter(|x| x.is_nan()).count();
    let row = |ours: usize, base: usize, what: &str| Row {
        name: format!(
            "9. start → ready → first HTTP 200, demo-server, {}",
            names[ours]
        ),
        unit: "ms".into(),
        ours: summaries[ours],
        baseline_name: names[base].clone(),
        baseline: summaries[base],
        note: format!(
            "{what}; ours {:+.2} ms vs baseline; failures ours/baseline {}/{}",
            summaries[ours].median - summaries[base].median,
            failed(ours),
            failed(base)
        ),
    };
    let polls_at = 1 + strategies.len();
    let mut rows = Vec::new();
    // What each wait costs on top of no wait at all: ours = the strategy, baseline = no wait.
    for i in 1..polls_at {
        rows.push(row(
            i,
            0,
            "the cost of waiting: ratio = this strategy / no wait",
        ));
    }
    // Polling against no wait, then against the fastest strategy of this run (by median).
    let fastest = (1..polls_at)
        .filter(|&i| !summaries[i].median.is_nan())
        .min_by(|&a, &b| summaries[a].median.total_cmp(&summaries[b].median));
    for i in polls_at..names.len() {
        rows.push(row(0, i, "the docs' way against polling"));
        if let Some(f) = fastest {
            rows.push(row(
                f,
                i,
                "the fastest wait strategy of this run against polling",
            ));
        }
    }
    Ok(rows)
}
