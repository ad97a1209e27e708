//! `sd-launch-bench`: run the rows of issues 7 and 8, print a markdown table, write
//! `target/bench/report.json`. Build with `--release`; `make bench` runs it.

use std::process::ExitCode;

use clap::Parser;
use sd_launch_bench::{Config, ROWS, procs, report};

/// Benchmarks of sd-launch against the alternatives, as ratios (issue 7)
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  make bench\n  cargo run --release -p sd-launch-bench -- --quick --rows 2,5\n\n\
Environment: SD_BENCH_QUICK=1 (same as --quick), SD_BENCH_SEED (seed dir with sd-popen.py),\n\
SD_BENCH_OUT (output dir, default target/bench).\n\
Exit codes: 0 all rows ran; 1 a row failed to run (the others are still reported);\n\
2 invalid command line."
)]
struct Args {
    /// Few repetitions: a smoke test, not numbers
    #[arg(long)]
    quick: bool,
    /// Rows to run, comma-separated (1-12)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,3,4,5,6,7,8,9,10,11,12"
    )]
    rows: Vec<u8>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = procs::become_subreaper() {
        eprintln!("sd-launch-bench: cannot become a subreaper ({e}); orphaned daemons may leak");
    }
    let quick =
        args.quick || std::env::var_os("SD_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty());
    let config = match Config::discover(quick) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sd-launch-bench: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(bad) = args.rows.iter().find(|r| !ROWS.contains(r)) {
        eprintln!("sd-launch-bench: no row {bad}: --rows takes numbers 1 to 12");
        return ExitCode::from(2);
    }
    let mut all = Vec::new();
    let mut failed = false;
    for n in ROWS {
        if !args.rows.contains(&n) {
            continue;
        }
        let t0 = std::time::Instant::now();
        match sd_launch_bench::run_row(&config, n) {
            Ok(rows) => all.extend(rows),
            Err(e) => {
                eprintln!("sd-launch-bench: row {n} failed: {e}");
                failed = true;
            }
        }
        eprintln!("row {n}: {:.1} s", t0.elapsed().as_secs_f64());
    }
    print!("{}", report::markdown(&all));
    let path = config.out_dir.join("report.json");
    let tmp = config.out_dir.join("report.json.tmp");
    if let Err(e) =
        std::fs::write(&tmp, report::json(&all)).and_then(|()| std::fs::rename(&tmp, &path))
    {
        eprintln!("sd-launch-bench: cannot write {}: {e}", path.display());
        return ExitCode::from(1);
    }
    eprintln!("wrote {}", path.display());
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
