//! `sd-launch --stack FILE`: the stack file (TOML) into a [`Stack`], the output, and the
//! supervisor that outlives the command in the background.
//!
//! ```toml
//! [daemon.api]
//! command = ["demo-server"]
//! listen = ["127.0.0.1:0", { address = "./admin.sock", name = "admin" }]
//! env = { PEER_URL = "http://${web.addr}/" }
//! ready = "http:/healthz"      # notify | accepted[:N] | http:/PATH | log:REGEX
//! ready_timeout = 30           # seconds
//! restart = "on-exit"          # or "never" (the default)
//!
//! [daemon.cache]                # a daemon that cannot take a socket, behind a proxy
//! command = ["redis-server", "--port", "0", "--unixsocket", "${backend.path}", "--save", ""]
//! proxy = true                  # `listen` is then the proxy's; `ready = "accepted"`
//!                               # means "listens on ${backend...}"
//! ```
//!
//! Decisions:
//! * Relative paths (the command when it has a `/`, `dir`, Unix socket paths, output
//!   files) are relative to the file's directory, and each daemon runs in that directory
//!   unless `dir` says otherwise: a stack file and its apps travel together.
//! * Without `stdout`/`stderr`, a daemon's output is captured in the background (its tail
//!   is in the error when it fails) and inherited with `--foreground`.
//! * Unknown keys are errors: a misspelt `redy` must not silently mean "no wait".

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_launch::stack::{self, Ended, RunningStack};
use sd_launch::supervisor::Signals;
use sd_launch::{Error, Launch, SocketSpec, Stack, Stdio, Wait};
use serde::Deserialize;

use crate::args::Args;
use crate::logging::say;
use crate::output::{self, Format};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFile {
    #[serde(default)]
    daemon: BTreeMap<String, Daemon>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Daemon {
    command: Vec<String>,
    #[serde(default)]
    listen: Vec<Listen>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    dir: Option<PathBuf>,
    stdout: Option<String>,
    stderr: Option<String>,
    ready: Option<String>,
    ready_timeout: Option<f64>,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default)]
    no_pid: bool,
    /// Behind a proxy of its own ([`Stack::proxy`]).
    #[serde(default)]
    proxy: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Listen {
    Address(String),
    Named {
        address: String,
        name: Option<String>,
    },
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum RestartPolicy {
    #[default]
    Never,
    OnExit,
}

/// Read and check `path` into a stack: every daemon's launch, nothing bound yet.
fn read(path: &Path, foreground: bool) -> Result<Stack, Error> {
    let bad = |reason: String| Error::StackFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let file: StackFile = toml::from_str(&text).map_err(|e| bad(toml_error(&text, &e)))?;
    if file.daemon.is_empty() {
        return Err(bad(
            "no [daemon.NAME] table: a stack needs at least one daemon".into(),
        ));
    }
    // `stack.toml` alone has the parent "": the current directory.
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let base = std::path::absolute(dir.unwrap_or(Path::new(".")))
        .map_err(|e| bad(format!("cannot resolve its directory: {e}")))?;
    let mut stack = Stack::new();
    for (name, d) in file.daemon {
        let restart = d.restart == RestartPolicy::OnExit;
        let proxied = d.proxy;
        let launch =
            daemon(&name, d, &base, foreground).map_err(|(key, reason)| Error::Template {
                daemon: name.clone(),
                key,
                reason,
            })?;
        stack = if proxied {
            stack.proxy(&name, launch)
        } else {
            stack.daemon(&name, launch)
        };
        if restart {
            stack = stack.restart_on_exit(&name);
        }
    }
    Ok(stack)
}

/// One daemon's launch; the error names the key.
fn daemon(name: &str, d: Daemon, base: &Path, fg: bool) -> Result<Launch, (String, String)> {
    let relative = |p: &str| -> String {
        if p.starts_with("./") || p.starts_with("../") {
            base.join(p).to_string_lossy().into_owned()
        } else {
            p.to_owned()
        }
    };
    let (program, args) = d.command.split_first().ok_or_else(|| {
        (
            "command".to_owned(),
            "empty: give the program and its arguments".to_owned(),
        )
    })?;
    let program = if program.contains('/') && !program.starts_with('/') {
        base.join(program).to_string_lossy().into_owned()
    } else {
        program.clone()
    };
    let mut launch = Launch::new(program)
        .args(args)
        .current_dir(d.dir.map_or_else(|| base.to_owned(), |dir| base.join(dir)))
        .no_pid(d.no_pid)
        // Both the parent-death signal and the guardian stop the daemons if the supervisor
        // dies; the guardian also stops what they started.
        .parent_death_signal(libc::SIGKILL)
        .stdin(Stdio::null());
    for (k, v) in d.env {
        launch = launch.env(k, v);
    }
    for (i, l) in d.listen.into_iter().enumerate() {
        let (address, fd_name) = match l {
            Listen::Address(a) => (a, None),
            Listen::Named { address, name } => (address, name),
        };
        let spec: SocketSpec = relative(&address)
            .parse()
            .map_err(|e: Error| (format!("listen[{i}]"), e.to_string()))?;
        launch = launch.listen(match fd_name {
            Some(n) => spec.name(n),
            None => spec,
        });
    }
    let stream = |key: &str, value: Option<String>| -> Result<Stdio, (String, String)> {
        Ok(match value.as_deref() {
            None if fg => Stdio::inherit(),
            None | Some("capture") => Stdio::capture(),
            Some("inherit") => Stdio::inherit(),
            Some("null") => Stdio::null(),
            Some(file) => {
                let path = base.join(file);
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        (
                            key.to_owned(),
                            format!("cannot open {}: {e}", path.display()),
                        )
                    })?;
                Stdio::from(f)
            }
        })
    };
    launch = launch
        .stdout(stream("stdout", d.stdout)?)
        .stderr(stream("stderr", d.stderr)?);
    if let Some(ready) = d.ready {
        let wait: Wait = ready
            .parse()
            .map_err(|e: Error| ("ready".to_owned(), e.to_string()))?;
        let secs = d.ready_timeout.unwrap_or(30.0);
        if !(secs.is_finite() && secs > 0.0 && secs <= 1e6) {
            return Err((
                "ready_timeout".into(),
                format!("{secs} is not a number of seconds"),
            ));
        }
        launch = launch.wait_until(wait, Duration::from_secs_f64(secs));
    }
    let _ = name;
    Ok(launch)
}

/// A TOML error as one line: `line L, column C: message`.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
            format!("line {line}, column {col}: {message}")
        }
        None => message,
    }
}

/// `sd-launch --stack FILE`.
pub(crate) fn run(args: &Args) -> Result<i32, Error> {
    let path = args.stack.as_deref().expect("the mode is Stack");
    let stack = read(path, args.foreground)?;
    if args.foreground {
        let signals = Signals::block().map_err(os("block signals"))?;
        let running = stack.spawn_until(&signals)?;
        let text = render(args, std::process::id(), &running);
        write_out(&text).map_err(os("write the output; stopped the stack"))?;
        return supervise(&signals, running, args.stop_timeout);
    }
    background(args, &stack)
}

/// In the background the stack needs a supervisor that outlives this command: a child of
/// ours, in a session of its own, starts the stack and reports (the output, or the error)
/// through a socket pair; this process prints the report and exits with its code.
fn background(args: &Args, stack: &Stack) -> Result<i32, Error> {
    let (mut report, theirs) = UnixStream::pair().map_err(os("create the report channel"))?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: sd-launch has one thread here (no runtime, no capture yet), so the child may
    // do anything a new process may.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Os {
            context: "fork the stack's supervisor",
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        drop(report);
        std::process::exit(supervisor(args, stack, theirs, parent));
    }
    drop(theirs);
    let mut text = String::new();
    let _ = report.read_to_string(&mut text);
    let Some((code, body)) = text.split_once('\n') else {
        return Err(Error::Os {
            context: "start the stack: its supervisor died before it reported",
            source: std::io::Error::other("no report"),
        });
    };
    let code: i32 = code.parse().unwrap_or(4);
    if code == 0 {
        write_out(body).map_err(os("write the output (the stack runs; kill its supervisor)"))?;
    } else {
        say(body.trim_end());
    }
    Ok(code)
}

/// The supervisor process: start, report, supervise; returns its exit code.
fn supervisor(args: &Args, stack: &Stack, mut report: UnixStream, parent: libc::pid_t) -> i32 {
    // Its SIGTERM (blocked below) is a stop signal of the readiness wait.
    if !crate::tie_to(parent) {
        return 4; // the command is gone already: nothing was started
    }
    // SAFETY: setsid has no memory effects; a session of its own keeps the supervisor out
    // of the terminal's signals to the caller's job.
    unsafe { libc::setsid() };
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            let _ = write!(report, "4\ncannot block signals: {e}");
            return 4;
        }
    };
    let running = match stack.spawn_until(&signals) {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(report, "{}\n{e}", e.exit_code());
            return e.exit_code();
        }
    };
    let text = render(args, std::process::id(), &running);
    // From now on the stack outlives the command; if that one is gone already, the write
    // fails and the stack stops.
    crate::untie();
    if write!(report, "0\n{text}").is_err() {
        return 4; // the command is gone: the daemons are stopped as `running` drops
    }
    drop(report);
    // Our stdout and stderr are the caller's (`$(...)`, a test's pipes): they must see the
    // end of them, as with a background daemon. Later messages go nowhere: --foreground
    // shows them.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in [1, 2] {
            // SAFETY: dup2 of an fd we own onto a standard stream of ours.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    match supervise(&signals, running, args.stop_timeout) {
        Ok(code) => code,
        Err(e) => {
            say(&e);
            e.exit_code()
        }
    }
}

/// Supervise until a stop signal (exit 0) or a daemon's unexpected exit (exit 5).
fn supervise(
    signals: &Signals,
    running: RunningStack,
    stop_timeout: Duration,
) -> Result<i32, Error> {
    match stack::supervise(signals, running, stop_timeout)? {
        Ended::Signal(_) => Ok(0),
        Ended::Exited(e) => {
            say(format_args!("{e}; stopped the stack"));
            Ok(5)
        }
    }
}

/// The output: per daemon `NAME_PORT`, `NAME_PID`, ... (the name upper-cased, other
/// characters as `_`), then `LAUNCHED_PID` of the supervisor; or one JSON object.
fn render(args: &Args, supervisor: u32, running: &RunningStack) -> String {
    let prefix = args.prefix();
    match args.format {
        Format::Env => {
            let mut out = String::new();
            for name in running.names() {
                let var: String = name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                out += &output::render(
                    Format::Env,
                    &format!("{prefix}{var}_"),
                    running.pid(name).expect("a name of the stack"),
                    running.sockets(name).expect("a name of the stack"),
                );
            }
            out + &format!("{prefix}LAUNCHED_PID={supervisor}\n")
        }
        Format::Json => {
            let daemons: serde_json::Map<String, serde_json::Value> = running
                .names()
                .map(|n| {
                    let pid = running.pid(n).expect("a name of the stack");
                    let sockets = running.sockets(n).expect("a name of the stack");
                    (n.to_owned(), output::json(pid, sockets))
                })
                .collect();
            format!(
                "{}\n",
                serde_json::json!({ "pid": supervisor, "daemons": daemons })
            )
        }
    }
}

fn write_out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

fn os(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Os { context, source }
}
