//! Where things are: the built binaries, the seed's `sd-popen.py`, the output directory, and
//! how long to measure (full or quick).

use std::io;
use std::path::{Path, PathBuf};

/// Everything a row needs to know about its surroundings.
///
/// ```no_run
/// let config = sd_launch_bench::Config::discover(true)?;
/// assert!(config.quick);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Config {
    /// Quick mode: a few repetitions per row, for smoke tests (not for numbers).
    pub quick: bool,
    /// The directory holding `sd-launch`, `bench-daemon` and `demo-server`
    /// (the harness's own directory, e.g. `target/release`).
    pub bin_dir: PathBuf,
    /// Output directory, `target/bench`: `report.json`, the extracted `sd-popen.py`.
    pub out_dir: PathBuf,
    /// Directory of the seed markdown files (`$SD_BENCH_SEED`, default `../shared/seed`
    /// next to the workspace).
    pub seed_dir: PathBuf,
    /// Scratch directory for configs, document roots and spare sockets; removed at the end.
    pub scratch: tempfile::TempDir,
}

impl Config {
    /// Locate everything from the harness's own path (`<target>/<profile>/sd-launch-bench`),
    /// create the output directory and a scratch directory.
    ///
    /// ```no_run
    /// let config = sd_launch_bench::Config::discover(false)?;
    /// println!("report: {}", config.out_dir.join("report.json").display());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn discover(quick: bool) -> io::Result<Config> {
        let exe = std::env::current_exe()?;
        let bin_dir = exe
            .parent()
            .ok_or_else(|| io::Error::other("the harness has no parent directory"))?
            .to_path_buf();
        // target/release or target/debug/deps (test binaries) -> target
        let target = if bin_dir.ends_with("deps") {
            bin_dir.parent().and_then(Path::parent)
        } else {
            bin_dir.parent()
        }
        .ok_or_else(|| io::Error::other("cannot find the target directory"))?
        .to_path_buf();
        let workspace = target.parent().unwrap_or(Path::new(".")).to_path_buf();
        let seed_dir = std::env::var_os("SD_BENCH_SEED")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("../shared/seed"));
        let out_dir = std::env::var_os("SD_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("bench"));
        std::fs::create_dir_all(&out_dir)?;
        Ok(Config {
            quick,
            bin_dir,
            out_dir,
            seed_dir,
            scratch: tempfile::Builder::new().prefix("sd-bench-").tempdir()?,
        })
    }

    /// Path of a binary built next to the harness, if it exists.
    ///
    /// ```no_run
    /// let config = sd_launch_bench::Config::discover(true)?;
    /// let sd_launch = config.binary("sd-launch").expect("cargo build --release -p sd-launch");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn binary(&self, name: &str) -> Option<PathBuf> {
        let path = self.bin_dir.join(name);
        path.is_file().then_some(path)
    }

    /// `full` repetitions normally, `quick` in quick mode.
    ///
    /// ```no_run
    /// let config = sd_launch_bench::Config::discover(true)?;
    /// assert_eq!(config.reps(60, 3), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reps(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }
}

/// Find the first program among `candidates` (absolute paths or names in `PATH`).
///
/// ```
/// assert!(sd_launch_bench::config::which(&["/nonexistent/x", "sh"]).is_some());
/// ```
pub fn which(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() {
            if p.is_file() {
                return Some(p.to_path_buf());
            }
        } else if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let full = dir.join(c);
                if full.is_file() {
                    return Some(full);
                }
            }
        }
    }
    None
}
