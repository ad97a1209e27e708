//! Row 6: port races. At least 10,000 starts of `bench-daemon` (a tiny bin target of this
//! crate that exits right after taking its socket) at 32-way parallelism, each way, in
//! alternating batches:
//! * ours: `sd_launch::Launch` binds 127.0.0.1:0 and passes the socket; the daemon takes it
//!   with listenfd-core (exit 0) or fails (exit 1);
//! * baseline: pick a free port (bind 127.0.0.1:0, read it, close), pass the number, the
//!   daemon binds it (exit 0), or fails with EADDRINUSE (exit 98) or anything else (exit 1).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::daemons::{self, Daemon};
use crate::procs::{self, free_port};
use crate::stats::Summary;
use crate::{Config, Row};

const WORKERS: usize = 32;

/// Counts of one batch.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: usize,
    in_use: usize,
    other: usize,
}

fn batch(n: usize, start: &(dyn Fn() -> io::Result<Option<i32>> + Sync)) -> (Counts, f64) {
    let next = AtomicUsize::new(0);
    let (ok, in_use, other) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(n) {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let counter = match start() {
                        Ok(Some(0)) => &ok,
                        Ok(Some(98)) => &in_use,
                        _ => &other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let counts = Counts {
        ok: ok.into_inner(),
        in_use: in_use.into_inner(),
        other: other.into_inner(),
    };
    (counts, n as f64 / secs)
}

/// Measure row 6.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let d = Daemon::bench_daemon(config)?;
    let (batches, per_batch) = if config.quick { (2, 50) } else { (10, 1000) };
    let ours = || -> io::Result<Option<i32>> {
        let mut launched = daemons::launch(&d.passed())
            .spawn()
            .map_err(io::Error::other)?;
        Ok(launched.wait()?.code())
    };
    let base = || -> io::Result<Option<i32>> {
        let port = free_port()?;
        Ok(daemons::command(&d.self_bind(port)).status()?.code())
    };
    let (mut o, mut b) = (Counts::default(), Counts::default());
    let (mut o_rate, mut b_rate) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        for (way, total, rates) in [
            (
                &ours as &(dyn Fn() -> io::Result<Option<i32>> + Sync),
                &mut o,
                &mut o_rate,
            ),
            (&base, &mut b, &mut b_rate),
        ] {
            let (c, rate) = batch(per_batch, way);
            total.ok += c.ok;
            total.in_use += c.in_use;
            total.other += c.other;
            rates.push(rate);
        }
    }
    procs::sweep_children();
    let n = batches * per_batch;
    let count = |c: &Counts| Summary {
        median: (c.in_use + c.other) as f64,
        p10: f64::NAN,
        p90: f64::NAN,
        n,
    };
    let (or, br) = (Summary::of(&o_rate), Summary::of(&b_rate));
    Ok(vec![Row {
        name: format!("6. port races, {n} starts each way, 32-way parallel"),
        unit: "failed starts".into(),
        ours: count(&o),
        baseline_name: "pick free port, close, daemon rebinds".into(),
        baseline: count(&b),
        note: format!(
            "ours: {} EADDRINUSE, {} other; baseline: {} EADDRINUSE ({:.1e} per start), {} other; starts/s ours {:.0}, baseline {:.0} (daemon = bench-daemon bin of this crate)",
            o.in_use,
            o.other,
            b.in_use,
            b.in_use as f64 / n as f64,
            b.other,
            or.median,
            br.median
        ),
    }])
}
