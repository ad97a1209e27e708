//! Row 10 (issue 16): a chain of N daemons (N = 3 and 10), each of which calls the next
//! while it starts (`bench-daemon chain`: one `GET /` to the next, waiting for its `200`,
//! before it answers its own clients), so the head answers only once the whole chain has
//! started. Each chain twice: bare daemons (start-up = exec and the call), and daemons with
//! 20 ms of start-up work before they listen and call (`--start-ms 20`, a sleep: work that
//! waits, as for files or a database). Time from the start to a `200` status line from the
//! head, d0:
//!
//! * ours: one [`sd_launch::Stack`] of d0..dN-1, di told `--next ${d(i+1).addr}`, from
//!   `Stack::spawn` to d0's reply (every socket is bound before any daemon runs, so the
//!   calls wait in backlogs and the daemons start side by side);
//! * compose style: dN-1 first, binding a picked port itself, `connect()` every 10 ms until
//!   it listens, then dN-2 told that port, ..., d0, then d0's reply;
//! * a sum of single launches: dN-1, dN-2, ..., d0 one at a time, each an
//!   `sd_launch::Launch::spawn` (told the previous one's address) and its first reply.
//!
//! The goal is the slowest single daemon's start, not the sum: the reference is the
//! slowest step of the same round's single launches (one daemon's spawn + first reply).
//! Every daemon's streams go to /dev/null; all are SIGKILLed and reaped after each
//! measurement (untimed).

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sd_launch::{Launch, Stack};

use super::readiness::{Way, shuffled_rounds};
use crate::procs::{connect_poll, free_port, http_get, kill_and_reap, ms_since};
use crate::stats::Summary;
use crate::{Config, Row};

/// The chain lengths measured.
const LENGTHS: [usize; 2] = [3, 10];

/// The start-up work of each daemon, in ms: none, and 20 ms.
const START_MS: [u64; 2] = [0, 20];

/// The compose-style poll interval.
const POLL: Duration = Duration::from_millis(10);

/// What a chain daemon is: its program and its start-up work.
#[derive(Debug, Clone, Copy)]
struct Chain<'a> {
    program: &'a Path,
    start_ms: u64,
    n: usize,
}

/// A chain daemon on a passed socket, calling `next` (if any) while it starts.
fn chain_launch(chain: Chain<'_>, next: Option<&str>) -> Launch {
    let mut launch = Launch::new(chain.program)
        .args(["chain", "--start-ms", &chain.start_ms.to_string()])
        .stdin(sd_launch::Stdio::null())
        .stdout(sd_launch::Stdio::null())
        .stderr(sd_launch::Stdio::null());
    if let Some(next) = next {
        launch = launch.args(["--next", next]);
    }
    launch
}

/// The stack d0..dN-1, di told `${d(i+1).addr}`.
fn chain_stack(chain: Chain<'_>) -> Stack {
    let n = chain.n;
    (0..n).fold(Stack::new(), |stack, i| {
        let next = (i + 1 < n).then(|| format!("${{d{}.addr}}", i + 1));
        stack.daemon(format!("d{i}"), chain_launch(chain, next.as_deref()))
    })
}

/// ours: `Stack::spawn`, then GET d0 at once. How long `Stack::spawn` itself took (every
/// socket bound, every daemon exec'd) is appended to `spawned`.
fn ours(stack: &Stack, spawned: &RefCell<Vec<f64>>) -> io::Result<f64> {
    let start = Instant::now();
    let running = stack.spawn().map_err(io::Error::other)?;
    spawned.borrow_mut().push(ms_since(start));
    let result = running
        .get("d0")
        .ok_or_else(|| io::Error::other("no daemon d0"))
        .and_then(|d| d.addr(0).map_err(io::Error::other))
        .and_then(TcpStream::connect)
        .and_then(http_get);
    let elapsed = ms_since(start);
    drop(running); // SIGKILL and reap every daemon (untimed)
    result.map(|()| elapsed)
}

/// compose style: last daemon first, each binding a picked port, connect poll in between.
fn compose(chain: Chain<'_>) -> io::Result<f64> {
    let mut children: Vec<Child> = Vec::with_capacity(chain.n);
    let start = Instant::now();
    let result = (|| {
        let mut next: Option<SocketAddr> = None;
        for i in (0..chain.n).rev() {
            let port = free_port()?;
            let mut cmd = Command::new(chain.program);
            cmd.args(["chain", "--start-ms", &chain.start_ms.to_string()])
                .args(["--port", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(next) = next {
                cmd.args(["--next", &next.to_string()]);
            }
            children.push(cmd.spawn()?);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let conn = connect_poll(addr, POLL)?;
            if i == 0 {
                return http_get(conn);
            }
            drop(conn); // it listens: start the one that calls it
            next = Some(addr);
        }
        Err(io::Error::other("an empty chain"))
    })();
    let elapsed = ms_since(start);
    for child in &mut children {
        kill_and_reap(child.id() as i32);
        let _ = child.try_wait();
    }
    result.map(|()| elapsed)
}

/// N single launches in dependency order, each spawn + first reply; the total. Each step's
/// time is appended to `steps`, and the round's slowest step to `slowest`.
fn singles(
    chain: Chain<'_>,
    steps: &RefCell<Vec<f64>>,
    slowest: &RefCell<Vec<f64>>,
) -> io::Result<f64> {
    let mut running = Vec::with_capacity(chain.n);
    let mut times = Vec::with_capacity(chain.n);
    let start = Instant::now();
    let result: io::Result<()> = (|| {
        let mut next: Option<String> = None;
        for _ in 0..chain.n {
            let t = Instant::now();
            let launched = chain_launch(chain, next.as_deref())
                .spawn()
                .map_err(io::Error::other)?;
            let addr = launched.addr(0).map_err(io::Error::other);
            running.push(launched);
            let addr = addr?;
            http_get(TcpStream::connect(addr)?)?;
            times.push(ms_since(t));
            next = Some(addr.to_string());
        }
        Ok(())
    })();
    let elapsed = ms_since(start);
    for mut launched in running {
        let _ = launched.kill(); // SIGKILL and reap (untimed)
    }
    result?;
    slowest
        .borrow_mut()
        .push(times.iter().copied().fold(0.0, f64::max));
    steps.borrow_mut().extend(times);
    Ok(elapsed)
}

/// Measure row 10: 40 rounds (3 in quick mode) of the three ways for each length and
/// start-up work, all twelve in a new order each round.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let program = config
        .binary("bench-daemon")
        .ok_or_else(|| io::Error::other("bench-daemon not built next to the harness"))?;
    let chains: Vec<Chain<'_>> = START_MS
        .iter()
        .flat_map(|&start_ms| {
            let program = &program;
            LENGTHS.iter().map(move |&n| Chain {
                program,
                start_ms,
                n,
            })
        })
        .collect();
    let stacks: Vec<Stack> = chains.iter().map(|&c| chain_stack(c)).collect();
    let steps: Vec<RefCell<Vec<f64>>> = chains.iter().map(|_| RefCell::default()).collect();
    let slowest: Vec<RefCell<Vec<f64>>> = chains.iter().map(|_| RefCell::default()).collect();
    let spawned: Vec<RefCell<Vec<f64>>> = chains.iter().map(|_| RefCell::default()).collect();

    let mut ways: Vec<Way<'_>> = Vec::new();
    for (k, &chain) in chains.iter().enumerate() {
        let stack = &stacks[k];
        let (steps, slowest, spawned) = (&steps[k], &slowest[k], &spawned[k]);
        ways.push(Box::new(move || ours(stack, spawned)));
        ways.push(Box::new(move || compose(chain)));
        ways.push(Box::new(move || singles(chain, steps, slowest)));
    }
    let (series, errors) = shuffled_rounds(config.reps(40, 3), &mut ways);
    drop(ways);
    crate::procs::sweep_children();
    if let Some(e) = errors.first() {
        eprintln!("row 10: {} failures, first: {e}", errors.len());
    }

    let mut rows = Vec::new();
    for (k, chain) in chains.iter().enumerate() {
        let n = chain.n;
        let s = |i: usize| Summary::of(&series[3 * k + i]);
        let failed = |i: usize| series[3 * k + i].iter().filter(|x| x.is_nan()).count();
        let (ours_s, compose_s, sum_s) = (s(0), s(1), s(2));
        let goal = Summary::of(&slowest[k].borrow());
        let single = Summary::of(&steps[k].borrow());
        let spawn = Summary::of(&spawned[k].borrow());
        let row = |baseline_name: String, baseline: Summary, note: String| Row {
            name: format!(
                "10. stack of {n} daemons, {} ms start-up work each, each calls the next while \
                 starting → first reply through the chain, ours sd_launch::Stack::spawn",
                chain.start_ms
            ),
            unit: "ms".into(),
            ours: ours_s,
            baseline_name,
            baseline,
            note,
        };
        rows.push(row(
            "compose style: last first, each binds a picked port, connect poll every 10 ms".into(),
            compose_s,
            format!(
                "compose/ours {:.2}x; ours {:+.2} ms; failures ours/compose {}/{}",
                compose_s.median / ours_s.median,
                ours_s.median - compose_s.median,
                failed(0),
                failed(1)
            ),
        ));
        rows.push(row(
            format!("sum of {n} single Launch::spawn + first reply, in dependency order"),
            sum_s,
            format!(
                "sum/ours {:.2}x; ours {:+.2} ms; failures ours/sum {}/{}; of ours, \
                 Stack::spawn itself (bind all, exec all) took {:.2} ms [p10 {:.2}, p90 {:.2}]",
                sum_s.median / ours_s.median,
                ours_s.median - sum_s.median,
                failed(0),
                failed(2),
                spawn.median,
                spawn.p10,
                spawn.p90
            ),
        ));
        rows.push(row(
            format!(
                "goal: the slowest single daemon's start (slowest of the {n} single launches, \
                 per round)"
            ),
            goal,
            format!(
                "ours/goal {:.2}; one daemon's spawn + first reply: median {:.2} ms \
                 [p10 {:.2}, p90 {:.2}] over {} single launches",
                ours_s.median / goal.median,
                single.median,
                single.p10,
                single.p90,
                single.n
            ),
        ));
    }
    Ok(rows)
}
