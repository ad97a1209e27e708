//! The `make bench` harness: every row of issues 7 and 8 measured side by side with the
//! alternative a user would otherwise pick, interleaved (A B A B ...), reported as medians
//! with p10/p90 spread and a ratio. See `bench/README.md` for what each row measures.
//!
//! ```
//! let s = sd_launch_bench::stats::Summary::of(&[3.0, 1.0, 2.0]);
//! assert_eq!(s.median, 2.0);
//! ```
//!
//! Modules, in the order a run uses them:
//! * [`config`]: where the binaries, the seed and the output live; quick mode;
//! * [`procs`]: child processes (subreaper, kill and reap, sweep), ports, HTTP probes;
//! * `daemons`: how to start lighttpd, demo-server and the row-6 daemon each way;
//! * [`stats`]: medians and spread of interleaved samples;
//! * `rows`: one module per row, run through [`run_row`];
//! * [`report`]: the markdown table and `report.json`.

pub mod config;
mod daemons;
pub mod procs;
pub mod report;
mod rows;
pub mod stats;

pub use config::Config;
pub use report::Row;

/// The rows, by number: 1-6 of issue 7, 7 (failed requests during restarts) of issue 8, 8
/// (spawn cost from a big parent) of issue 14, 9 (readiness strategies against port
/// polling) of issue 15, 10 (a chain of daemons as one stack) of issue 16, 11 and 12 (the
/// proxy mode, `sd-launch --proxy`: time to the first reply, throughput and added latency).
pub const ROWS: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/// Measure row `row` (1-12) and return its table lines. Children it starts are killed and
/// reaped before it returns.
///
/// ```no_run
/// let config = sd_launch_bench::Config::discover(true)?; // quick mode
/// let rows = sd_launch_bench::run_row(&config, 5)?; // receiver cost, in-process
/// assert_eq!(rows.len(), 2); // 1 fd and 64 fds
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn run_row(config: &Config, row: u8) -> std::io::Result<Vec<Row>> {
    let result = match row {
        1 => rows::launch::run(config),
        2 => rows::overhead::run(config),
        3 => rows::parallel::run(config),
        4 => rows::serving::run(config),
        5 => rows::receiver::run(config),
        6 => rows::races::run(config),
        7 => rows::restarts::run(config),
        8 => rows::spawn::run(config),
        9 => rows::readiness::run(config),
        10 => rows::stacks::run(config),
        11 => rows::first_reply::run(config),
        12 => rows::throughput::run(config),
        _ => Err(std::io::Error::other(format!(
            "no row {row}: rows are 1 to 12"
        ))),
    };
    procs::sweep_children();
    result
}
