//! Row 2: launcher overhead. `sd-launch --foreground -- /bin/true` against `/bin/true`
//! alone (spawn to reaped exit, whole process), and, for reference, the seed's
//! `sd-popen.py -- /bin/true` against `sd-launch -- /bin/true` (both return once the
//! command is started), and the library's in-process spawn against `std::process::Command`.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::procs::{self, ms_since};
use crate::stats::{Summary, interleave};
use crate::{Config, Row};

fn time(program: &Path, args: &[&str]) -> io::Result<f64> {
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let elapsed = ms_since(start);
    if status.success() {
        Ok(elapsed)
    } else {
        Err(io::Error::other(format!(
            "{} failed: {status}",
            program.display()
        )))
    }
}

fn spawn_wait_library(program: &Path) -> io::Result<f64> {
    let start = Instant::now();
    let mut launched = sd_launch::Launch::new(program)
        .stdin(sd_launch::Stdio::null())
        .stdout(sd_launch::Stdio::null())
        .stderr(sd_launch::Stdio::null())
        .spawn()
        .map_err(io::Error::other)?;
    let status = launched.wait()?;
    let elapsed = ms_since(start);
    if status.success() {
        Ok(elapsed)
    } else {
        Err(io::Error::other(format!(
            "{} failed: {status}",
            program.display()
        )))
    }
}

/// Measure row 2.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let sd_launch = config
        .binary("sd-launch")
        .ok_or_else(|| io::Error::other("sd-launch not built next to the harness"))?;
    let truth = Path::new("/bin/true");
    let (series, errors) = interleave(
        config.reps(300, 5),
        &mut [
            &mut || time(&sd_launch, &["--foreground", "--", "/bin/true"]),
            &mut || time(truth, &[]),
        ],
    );
    let ours = Summary::of(&series[0]);
    let base = Summary::of(&series[1]);
    let mut rows = vec![Row {
        name: "2. launcher overhead, --foreground -- /bin/true".into(),
        unit: "ms".into(),
        ours,
        baseline_name: "/bin/true alone".into(),
        baseline: base,
        note: format!(
            "added {:.3} ms per run (floor: one extra fork+exec); {} failures",
            ours.median - base.median,
            errors.len()
        ),
    }];
    let (series, errors) = interleave(
        config.reps(300, 5),
        &mut [&mut || spawn_wait_library(truth), &mut || time(truth, &[])],
    );
    let ours = Summary::of(&series[0]);
    let base = Summary::of(&series[1]);
    rows.push(Row {
        name: "2. library spawn + wait, /bin/true".into(),
        unit: "ms".into(),
        ours,
        baseline_name: "std::process::Command".into(),
        baseline: base,
        note: format!(
            "sd_launch::Launch (clone CLONE_VM|CLONE_VFORK) vs std (posix_spawn), in-process; {:+.3} ms; {} failures",
            ours.median - base.median,
            errors.len()
        ),
    });
    let python = crate::config::which(&["/usr/bin/python3", "python3"]);
    let script = super::launch::extract_sd_popen(&config.seed_dir, &config.out_dir);
    if let (Some(py), Ok(script)) = (python, script) {
        let script = script.display().to_string();
        let (series, errors) = interleave(
            config.reps(30, 2),
            &mut [&mut || time(&sd_launch, &["--", "/bin/true"]), &mut || {
                time(&py, &[&script, "/bin/true"])
            }],
        );
        procs::sweep_children();
        let ours = Summary::of(&series[0]);
        let base = Summary::of(&series[1]);
        rows.push(Row {
            name: "2. launcher alone, -- /bin/true (returns once started)".into(),
            unit: "ms".into(),
            ours,
            baseline_name: "sd-popen.py /bin/true".into(),
            baseline: base,
            note: format!(
                "saves {:.1} ms per launch; {} failures",
                base.median - ours.median,
                errors.len()
            ),
        });
    }
    procs::sweep_children();
    Ok(rows)
}
