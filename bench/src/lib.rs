//! The `make bench` harness: every row of issue 7 measured side by side with the
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
//! * [`daemons`]: how to start lighttpd, demo-server and the row-6 daemon each way;
//! * [`stats`]: medians and spread of interleaved samples;
//! * [`rows`]: one module per row of the issue;
//! * [`report`]: the markdown table and `report.json`.

pub mod config;
pub mod daemons;
pub mod procs;
pub mod report;
pub mod rows;
pub mod stats;

pub use config::Config;
pub use report::Row;
