//! Row 1: from "start the daemon" to the first successful HTTP response, whole process.
//!
//! * ours: the `sd-launch` binary (prints the port and exits), then connect at once;
//! * (a) the daemon binds a port picked by us, and we poll connect() every 10 ms;
//! * (b) the seed's `sd-popen.py` with the system python3, then connect at once;
//! * (c) `systemd-socket-activate -l 127.0.0.1:PORT` (it cannot take port 0), polling
//!   connect() every 1 ms until it listens (its best case); it execs the daemon on the
//!   first connection;
//! * (d) the floor: this harness forks the daemon itself with an already-bound socket,
//!   through the `sd_launch::Launch` library in-process (no launcher process at all).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::daemons::{self, Daemon, Invocation};
use crate::procs::{self, connect_poll, free_port, http_get, kill_and_reap, ms_since};
use crate::stats::{Summary, interleave};
use crate::{Config, Row};

/// Extract the seed's `sd-popen.py` from the markdown in `seed_dir` into `out_dir`, binding
/// `127.0.0.1` instead of every interface (loopback only; no effect on timing).
pub fn extract_sd_popen(seed_dir: &Path, out_dir: &Path) -> io::Result<PathBuf> {
    for entry in std::fs::read_dir(seed_dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let Some(start) = text.find("```python\n") else {
            continue;
        };
        let body = &text[start + "```python\n".len()..];
        let Some(end) = body.find("```") else {
            continue;
        };
        let script = body[..end].replace("s.bind(('', 0))", "s.bind(('127.0.0.1', 0))");
        let dest = out_dir.join("sd-popen.py");
        std::fs::write(&dest, script)?;
        return Ok(dest);
    }
    Err(io::Error::other(format!(
        "no ```python block (sd-popen.py) in {}/*.md; set SD_BENCH_SEED",
        seed_dir.display()
    )))
}

/// Run a launcher that prints `LAUNCHED_PORT`/`LAUNCHED_PID` and exits, then GET at once.
fn via_printing_launcher(mut cmd: std::process::Command) -> io::Result<f64> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = String::new();
    let read = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let status = child.wait()?;
    read.transpose()?;
    if !status.success() {
        return Err(io::Error::other(format!("launcher failed: {status}")));
    }
    let (port, pid) = procs::parse_launched(&out)?;
    let result = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).and_then(http_get);
    let elapsed = ms_since(start);
    kill_and_reap(pid);
    result.map(|()| elapsed)
}

/// ours: the `sd-launch` binary.
pub fn ours(sd_launch: &Path, d: &Daemon) -> io::Result<f64> {
    let (argv, env) = d.passed();
    let mut cmd = std::process::Command::new(sd_launch);
    for (k, v) in &env {
        cmd.arg("-E").arg(format!("{k}={v}"));
    }
    cmd.arg("--").args(&argv);
    via_printing_launcher(cmd)
}

/// (b): the seed's `sd-popen.py` under `python`.
pub fn sd_popen(python: &Path, script: &Path, d: &Daemon) -> io::Result<f64> {
    let (argv, env) = d.passed();
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script).args(&argv).envs(env);
    via_printing_launcher(cmd)
}

/// (a): pick a port, the daemon binds it, poll connect() every 10 ms.
pub fn poll_self_bind(d: &Daemon) -> io::Result<f64> {
    let port = free_port()?;
    let start = Instant::now();
    let mut child = daemons::command(&d.self_bind(port)).spawn()?;
    let result =
        connect_poll(([127, 0, 0, 1], port).into(), Duration::from_millis(10)).and_then(http_get);
    let elapsed = ms_since(start);
    kill_and_reap(child.id() as i32);
    let _ = child.try_wait();
    result.map(|()| elapsed)
}

/// (c): systemd-socket-activate on a free port, polling connect() every 1 ms.
pub fn socket_activate(tool: &Path, d: &Daemon) -> io::Result<f64> {
    let port = free_port()?;
    let (argv, env): Invocation = d.passed();
    let mut cmd = std::process::Command::new(tool);
    cmd.arg("-l").arg(format!("127.0.0.1:{port}"));
    for (k, v) in &env {
        cmd.arg("-E").arg(format!("{k}={v}"));
    }
    cmd.args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let result =
        connect_poll(([127, 0, 0, 1], port).into(), Duration::from_millis(1)).and_then(http_get);
    let elapsed = ms_since(start);
    kill_and_reap(child.id() as i32);
    let _ = child.try_wait();
    result.map(|()| elapsed)
}

/// (d): the floor, `sd_launch::Launch` in-process.
pub fn floor(d: &Daemon) -> io::Result<f64> {
    let start = Instant::now();
    let launched = daemons::launch(&d.passed())
        .spawn()
        .map_err(io::Error::other)?;
    let result = TcpStream::connect(launched.local_addr(0)).and_then(http_get);
    let elapsed = ms_since(start);
    drop(launched); // SIGKILL and reap
    result.map(|()| elapsed)
}

/// One named way of starting a daemon, returning milliseconds to the first response.
type Way<'a> = Box<dyn FnMut() -> io::Result<f64> + 'a>;

/// Measure row 1 for every daemon available.
pub fn run(config: &Config) -> io::Result<Vec<Row>> {
    let sd_launch = config
        .binary("sd-launch")
        .ok_or_else(|| io::Error::other("sd-launch not built next to the harness"))?;
    let python = crate::config::which(&["/usr/bin/python3", "python3"]);
    let script = extract_sd_popen(&config.seed_dir, &config.out_dir);
    let activate = crate::config::which(&["systemd-socket-activate"]);
    let mut daemons = vec![Daemon::lighttpd(config)?];
    match Daemon::demo_server(config) {
        Some(d) => daemons.push(d),
        None => eprintln!("row 1: demo-server not built next to the harness; skipped"),
    }
    let rounds = config.reps(60, 3);
    let mut rows = Vec::new();
    for d in &daemons {
        let mut ways: Vec<(String, Way<'_>)> = vec![
            ("ours".into(), Box::new(|| ours(&sd_launch, d))),
            (
                "(a) self-bind + poll connect every 10 ms".into(),
                Box::new(|| poll_self_bind(d)),
            ),
        ];
        match (&python, &script) {
            (Some(py), Ok(sc)) => ways.push((
                format!("(b) sd-popen.py ({})", py.display()),
                Box::new(move || sd_popen(py, sc, d)),
            )),
            (None, _) => eprintln!("row 1: no python3; (b) skipped"),
            (_, Err(e)) => eprintln!("row 1: (b) skipped: {e}"),
        }
        match &activate {
            Some(tool) => ways.push((
                "(c) systemd-socket-activate + poll connect every 1 ms".into(),
                Box::new(move || socket_activate(tool, d)),
            )),
            None => eprintln!("row 1: systemd-socket-activate not found; (c) skipped"),
        }
        ways.push((
            "(d) floor: harness forks with a bound socket (sd_launch::Launch in-process)".into(),
            Box::new(|| floor(d)),
        ));
        let (names, mut fns): (Vec<String>, Vec<_>) = ways.into_iter().unzip();
        let mut refs: Vec<&mut dyn FnMut() -> io::Result<f64>> =
            fns.iter_mut().map(|f| &mut **f as _).collect();
        let (series, errors) = interleave(rounds, &mut refs);
        drop(refs);
        drop(fns);
        procs::sweep_children();
        let ours_s = Summary::of(&series[0]);
        for (i, name) in names.iter().enumerate().skip(1) {
            let failed = series[i].iter().filter(|x| x.is_nan()).count();
            let failed_ours = series[0].iter().filter(|x| x.is_nan()).count();
            let base = Summary::of(&series[i]);
            rows.push(Row {
                name: format!("1. launch → first HTTP 200, {}", d.name()),
                unit: "ms".into(),
                ours: ours_s,
                baseline_name: name.clone(),
                baseline: base,
                note: format!(
                    "ours = sd-launch binary + connect at once; ours {:+.2} ms vs baseline; failures ours/baseline {failed_ours}/{failed}",
                    ours_s.median - base.median
                ),
            });
        }
        if let Some(e) = errors.first() {
            eprintln!(
                "row 1 ({}): {} failures, first: {e}",
                d.name(),
                errors.len()
            );
        }
    }
    Ok(rows)
}
