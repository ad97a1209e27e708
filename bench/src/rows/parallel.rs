//! Row 3: parallel launch throughput. N lighttpd daemons (N = 1, 16, 64, 256) are
//! launched and each answers one GET, from at most 32 worker threads; all N stay up until
//! the last has answered, then all are killed and reaped (not timed). Ours launches through
//! `sd_launch::Launch` in-process and connects at once; the baseline picks a free port,
//! spawns the daemon binding it, and polls connect() every 10 ms.

use std::io;
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::daemons::{self, Daemon};
use crate::procs::{self, connect_poll, free_port, http_get, kill_and_reap};
use crate::stats::{Summary, interleave};
use crate::{Config, Row};

const WORKERS: usize = 32;

/// Launch `n` daemons with `start` (returns a cleanup handle) from up to 32 threads; returns
/// (launches per second, failures).
fn burst<H: Send>(n: usize, start: &(dyn Fn() -> io::Result<H> + Sync)) -> (f64, usize) {
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let handles = Mutex::new(Vec::with_capacity(n));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(n) {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    match start() {
                        Ok(h) => handles.lock().unwrap_or_else(|e| e.into_inner()).push(h),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    drop(handles); // kills and reaps every daemon
    (n as f64 / secs, failures.into_inner())
}

/// A self-bound child that is killed and reaped on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        kill_and_reap(self.0.id() as i32);
        let _ = self.0.try_wait();
    }
}

/// Measure row 3.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let d = Daemon::lighttpd(config)?;
    let ns: &[usize] = if config.quick {
        &[1, 16]
    } else {
        &[1, 16, 64, 256]
    };
    let ours = || -> io::Result<sd_launch::Launched> {
        let launched = daemons::launch(&d.passed())
            .spawn()
            .map_err(io::Error::other)?;
        TcpStream::connect(launched.local_addr(0)).and_then(http_get)?;
        Ok(launched)
    };
    let base = || -> io::Result<Reaped> {
        let port = free_port()?;
        let child = Reaped(daemons::command(&d.self_bind(port)).spawn()?);
        connect_poll(([127, 0, 0, 1], port).into(), Duration::from_millis(10))
            .and_then(http_get)?;
        Ok(child)
    };
    let mut rows = Vec::new();
    let mut per_launch_1 = None;
    for &n in ns {
        let rounds = config.reps(if n >= 64 { 3 } else { 7 }, 1);
        let (mut fail_ours, mut fail_base) = (0, 0);
        let (series, _) = interleave(
            rounds,
            &mut [
                &mut || {
                    let (rate, f) = burst(n, &ours);
                    fail_ours += f;
                    Ok(rate)
                },
                &mut || {
                    let (rate, f) = burst(n, &base);
                    fail_base += f;
                    Ok(rate)
                },
            ],
        );
        procs::sweep_children();
        let o = Summary::of(&series[0]);
        let b = Summary::of(&series[1]);
        let per_launch = 1e3 / o.median;
        let per_launch_1 = *per_launch_1.get_or_insert(per_launch);
        rows.push(Row {
            name: format!("3. parallel launch + GET, N = {n}"),
            unit: "launches/s".into(),
            ours: o,
            baseline_name: "self-bind + poll connect every 10 ms".into(),
            baseline: b,
            note: format!(
                "failures ours {fail_ours} / baseline {fail_base} (over {rounds} rounds); {:.2} ms per launch, x{:.2} of N = 1",
                per_launch,
                per_launch / per_launch_1
            ),
        });
    }
    Ok(rows)
}
