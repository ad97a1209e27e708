//! `sd-launch`: start a daemon with pre-opened sockets (LISTEN_FDS/LISTEN_PID protocol).
//! Thin: arguments in, library calls, exit codes out.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sd_launch::output::{self, Format};
use sd_launch::service::{self, Restart};
use sd_launch::{Error, Launch, LaunchedSocket, SocketSpec, Stdio, Transport, supervise};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

const AFTER_HELP: &str = "\
Examples:
  A shell test script (the daemon keeps running after sd-launch exits):
    export $(sd-launch -- my-daemon --config test.conf)
    curl http://127.0.0.1:$LAUNCHED_PORT/
    kill $LAUNCHED_PID

  A supervisor (stays in the foreground, forwards signals, exits with the daemon's status):
    sd-launch --foreground -l 8080 -l /run/app/admin.sock --fdname http:admin -- my-daemon

  A quick curl demo:
    eval \"$(sd-launch --outfile server.log -- demo-server)\" && curl -s localhost:$LAUNCHED_PORT/

  Accept mode, one daemon per connection (systemd Accept=yes; runs in the foreground,
  LAUNCHED_PID is sd-launch's own pid, SIGINT/SIGTERM stop it and its daemons, exit 0):
    sd-launch --accept -l 8080 -- my-daemon            # connection at fd 3, LISTEN_FDS=1,
                                                       # LISTEN_FDNAMES=connection
    sd-launch --accept --inetd -l 7000 -- cat          # inetd: connection on stdin/stdout
    sd-launch --accept --max-connections 4 -l ./app.sock --fdname api -- my-daemon

Output (env format): LAUNCHED_PORT=<first TCP port>, LAUNCHED_PID=<pid>; with several
sockets or a non-TCP one also LAUNCHED_PORT_<i>, LAUNCHED_ADDR_<i>, LAUNCHED_PATH_<i>
(i = 0 for fd 3). --format json prints one object with pid and every socket's fd, name,
kind, address and port.

Logging: RUST_LOG=debug sd-launch ... shows sockets, spawns, forwarded signals and
notifications on stderr (default: info, restarts and escalations only).

Exit codes: 0 launched; 2 invalid command line (address, fd name, name count);
3 a socket could not be created (address in use, privileged port, path taken);
4 the daemon could not be started (fork, chdir, output files); 126 program not
executable; 127 program not found. With --foreground, the daemon's exit code, or
128+N when signal N killed it.";

/// Start a daemon with listening sockets at fd 3, 4, ... and LISTEN_FDS, LISTEN_PID set
/// (systemd socket activation, no systemd needed). Prints the port and pid, then exits
/// leaving the daemon running, or supervises it with --foreground.
#[derive(Debug, Parser)]
#[command(name = "sd-launch", version, after_help = AFTER_HELP)]
struct Args {
    /// Listen on ADDR (repeatable, in fd order): PORT or HOST:PORT (IP address or
    /// localhost; a bare PORT is 127.0.0.1), [V6]:PORT, /path or ./path (Unix socket),
    /// @name (abstract). Default: 127.0.0.1:0, a free loopback port.
    #[arg(short, long = "listen", value_name = "ADDR")]
    listen: Vec<String>,

    /// Datagram sockets (UDP, Unix datagram) instead of stream.
    #[arg(short, long, conflicts_with = "seqpacket")]
    datagram: bool,

    /// Sequential-packet sockets (Unix only).
    #[arg(long)]
    seqpacket: bool,

    /// Name the sockets in LISTEN_FDNAMES, one per socket in order: repeat the option, or
    /// separate names with ':'. The count must match the sockets.
    #[arg(long = "fdname", value_name = "NAME[:NAME...]")]
    fdname: Vec<String>,

    /// Listen backlog (default: the kernel's maximum, net.core.somaxconn).
    #[arg(long, value_name = "N")]
    backlog: Option<i32>,

    /// Mode of Unix socket files, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,

    /// Set VAR for the daemon; VAR alone passes our own value of VAR.
    #[arg(short = 'E', long = "setenv", value_name = "VAR[=VALUE]")]
    setenv: Vec<OsString>,

    /// Do not set LISTEN_PID, for a daemon behind an intermediary (cargo run, a shell
    /// wrapper) that needs a lenient receiver. Any descendant may then take the sockets.
    #[arg(long)]
    no_pid: bool,

    /// Send the daemon's stdout and stderr to FILE (default: /dev/null; with --foreground,
    /// inherited).
    #[arg(long, value_name = "FILE")]
    outfile: Option<PathBuf>,

    /// Send the daemon's stdout to FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "outfile")]
    stdout: Option<PathBuf>,

    /// Send the daemon's stderr to FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "outfile")]
    stderr: Option<PathBuf>,

    /// Prefix of the printed variable names.
    #[arg(long, value_name = "PFX", default_value = "LAUNCHED_")]
    prefix: String,

    /// Output format: env (KEY=value lines) or json.
    #[arg(long, value_name = "FORMAT", default_value = "env")]
    format: Format,

    /// Stay in the foreground: forward SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 to
    /// the daemon and exit with its status. The daemon gets SIGKILL if sd-launch dies
    /// (Linux), and Unix socket files are removed at the end.
    #[arg(long, visible_alias = "wait")]
    foreground: bool,

    /// Wait until the daemon sends READY=1 (sd_notify, through a private NOTIFY_SOCKET)
    /// before printing the output; fail (exit 5) if it exits first, or (exit 6) after
    /// TIMEOUT seconds (default 30). The daemon's own output may then come before ours.
    #[arg(
        long,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "30",
        value_parser = parse_seconds
    )]
    ready: Option<Duration>,

    /// Keep the sockets open and restart the daemon on SIGHUP: the new one starts (and,
    /// with --ready, is ready) before the old one gets SIGTERM, so no connection is refused.
    /// on-exit also restarts a daemon that exits by itself, with a backoff (100 ms to 10 s).
    /// Implies --foreground.
    #[arg(
        long,
        value_name = "POLICY",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "on-hup",
        value_parser = ["on-hup", "on-exit"]
    )]
    restart: Option<String>,

    /// With --foreground: seconds a daemon may take to exit after SIGTERM, SIGINT or SIGQUIT
    /// (and an old daemon to drain after a restart) before it gets SIGKILL.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    stop_timeout: Duration,

    /// Accept mode: accept each connection and start one daemon per connection with it at
    /// fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES = the listener's --fdname or "connection",
    /// REMOTE_ADDR/REMOTE_PORT for TCP), as systemd Accept=yes and systemd-socket-activate
    /// -a do. Always in the foreground: prints the listening addresses (LAUNCHED_PID is
    /// sd-launch's own pid), reaps daemons as they exit, forwards SIGHUP, SIGQUIT, SIGUSR1,
    /// SIGUSR2 to them; SIGINT/SIGTERM stop accepting, go to every daemon (SIGKILL after
    /// --stop-timeout) and sd-launch exits 0. Daemons' stdin is /dev/null.
    #[arg(short = 'a', long)]
    accept: bool,

    /// With --accept: pass each connection as the daemon's stdin and stdout instead, with no
    /// LISTEN_* variables (inetd style, systemd StandardInput=socket). Requires --accept, as
    /// in systemd-socket-activate, whose --inetd alone means something else.
    #[arg(long, requires = "accept")]
    inetd: bool,

    /// With --accept: at most N daemons at once (systemd's MaxConnections= default is 64).
    /// Further connections wait in the listen backlog until one exits (systemd refuses
    /// them instead).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        requires = "accept",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_connections: u32,

    /// The daemon and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    command: Vec<OsString>,
}

/// What sd-launch says while it supervises (restarts, escalations) goes to stderr as
/// `sd-launch: [warning: ]message`, filtered by RUST_LOG (default `info`; `debug` shows spawns,
/// forwarded signals and notifications).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Prefixed)
        .init();
}

/// `sd-launch: [warning: |error: |debug: ]message`, like the tool's other messages.
struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(writer, "sd-launch: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

impl Args {
    /// Whether sd-launch stays in the foreground (`--restart` implies it).
    fn stays(&self) -> bool {
        self.foreground || self.restart.is_some()
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs <= 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds such as 5 or 0.5"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 600 or 660"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    match run(args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("sd-launch: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run(args: Args) -> Result<i32, Error> {
    if args.accept {
        return accept_main(args);
    }
    let launch = build(&args)?;
    let foreground = args.stays();
    let blocked = if foreground {
        Some(supervise::block_signals().map_err(|source| Error::Spawn {
            program: "sd-launch".into(),
            step: "blocking signals",
            source,
        })?)
    } else {
        None
    };
    let print = |pid: u32, sockets: &[LaunchedSocket]| {
        let text = output::render(args.format, &args.prefix, pid, sockets);
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
    };
    let write_failed = |e: std::io::Error, started: bool| {
        let what = if started {
            "stopped the daemon"
        } else {
            "the daemon was not started"
        };
        eprintln!("sd-launch: cannot write the output ({e}); {what}");
        Ok(4)
    };

    if let Some(policy) = &args.restart {
        let policy: Restart = policy.parse().expect("clap checked the value");
        let blocked = blocked.expect("--restart implies --foreground");
        let mut service = launch.service()?;
        let printed = if args.ready.is_some() {
            // Ready first, then print: the daemon may have written already.
            let pid = service.start()?;
            print(pid, service.sockets())
        } else {
            // Print while the daemon is held before exec: our lines come first.
            let mut unwritten = None;
            let started = service.start_with(|pid, sockets| {
                print(pid, sockets).inspect_err(|e| unwritten = Some(e.to_string()))
            });
            match (started, unwritten) {
                (Ok(_), _) => Ok(()),
                (Err(_), Some(e)) => Err(std::io::Error::other(e)),
                (Err(e), None) => return Err(e),
            }
        };
        if let Err(e) = printed {
            return write_failed(e, args.ready.is_some());
        }
        return Ok(supervise_exit(service::supervise(
            &blocked,
            &mut service,
            policy,
            args.stop_timeout,
        )));
    }

    let mut daemon = if args.ready.is_some() || !foreground {
        // With --ready: ready first, then print (the daemon may have written already).
        // In the background the daemon's output goes to /dev/null or files, never to our
        // stdout, so there is no order to keep and no reason to hold it: the cheaper
        // spawn (vfork) it is. Either way nothing is printed if the program cannot start.
        let mut daemon = launch.spawn()?;
        if let Err(e) = print(daemon.pid(), daemon.sockets()) {
            let _ = daemon.kill();
            return write_failed(e, true);
        }
        daemon
    } else {
        // In the foreground the daemon shares our stdout: hold it before exec until our
        // output is out, so a caller reading the pipe gets the port first.
        let held = launch.spawn_held()?;
        if let Err(e) = print(held.pid(), held.sockets()) {
            drop(held); // never ran; reaped
            return write_failed(e, false);
        }
        held.release()?
    };
    let Some(blocked) = blocked else {
        daemon.detach();
        return Ok(0);
    };
    Ok(supervise_exit(
        blocked.supervise_with(&mut daemon, args.stop_timeout),
    ))
}

/// The exit code of a supervising sd-launch: the daemon's, or 4 when supervising failed (the
/// daemons are killed when their handles drop).
fn supervise_exit(result: std::io::Result<std::process::ExitStatus>) -> i32 {
    match result {
        Ok(status) => supervise::exit_code(status),
        Err(e) => {
            eprintln!("sd-launch: supervising the daemon failed ({e}); killing it");
            4
        }
    }
}

fn build(args: &Args) -> Result<Launch, Error> {
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut launch = Launch::new(program).args(rest);
    let transport = if args.datagram {
        Transport::Datagram
    } else if args.seqpacket {
        Transport::SeqPacket
    } else {
        Transport::Stream
    };
    let mut specs = if args.listen.is_empty() {
        vec![SocketSpec::loopback()]
    } else {
        args.listen
            .iter()
            .map(|a| a.parse::<SocketSpec>())
            .collect::<Result<Vec<_>, _>>()?
    };
    let names: Vec<&str> = args.fdname.iter().flat_map(|n| n.split(':')).collect();
    if !names.is_empty() && names.len() != specs.len() {
        return Err(Error::NameCount {
            names: names.len(),
            sockets: specs.len(),
        });
    }
    for (i, spec) in specs.iter_mut().enumerate() {
        spec.transport = transport;
        if let Some(name) = names.get(i) {
            spec.name = Some((*name).to_owned());
        }
    }
    for spec in specs {
        launch = launch.listen(spec);
    }
    if let Some(backlog) = args.backlog {
        launch = launch.backlog(backlog);
    }
    launch = launch.socket_mode(args.socket_mode).no_pid(args.no_pid);
    launch = setenv(launch, args);
    launch = stdio(launch, args)?;
    if args.stays() {
        launch = launch.parent_death_signal(libc::SIGKILL);
    } else {
        launch = launch.kill_on_drop(true);
    }
    if let Some(timeout) = args.ready {
        launch = launch.ready(timeout);
    }
    Ok(launch)
}

/// `-E VAR[=VALUE]` entries.
fn setenv(mut launch: Launch, args: &Args) -> Launch {
    for entry in &args.setenv {
        let bytes = entry.as_bytes();
        match bytes.iter().position(|&b| b == b'=') {
            // Split the raw bytes: names and values pass verbatim, UTF-8 or not.
            Some(eq) => {
                launch = launch.env(
                    OsStr::from_bytes(&bytes[..eq]),
                    OsStr::from_bytes(&bytes[eq + 1..]),
                );
            }
            None => {
                if let Some(v) = std::env::var_os(entry) {
                    launch = launch.env(entry, v);
                }
            }
        }
    }
    launch
}

fn stdio(mut launch: Launch, args: &Args) -> Result<Launch, Error> {
    let default = |fg: bool| if fg { Stdio::inherit() } else { Stdio::null() };
    let foreground = args.stays();
    launch = launch.stdin(default(foreground));
    if let Some(path) = &args.outfile {
        let file = open_out(path, "stdout and stderr")?;
        let copy = file.try_clone().map_err(|source| Error::Stdio {
            path: path.clone(),
            stream: "stderr",
            source,
        })?;
        return Ok(launch.stdout(file).stderr(copy));
    }
    launch = match &args.stdout {
        Some(p) => launch.stdout(open_out(p, "stdout")?),
        None => launch.stdout(default(foreground)),
    };
    launch = match &args.stderr {
        Some(p) => launch.stderr(open_out(p, "stderr")?),
        None => launch.stderr(default(foreground)),
    };
    Ok(launch)
}

fn open_out(path: &Path, stream: &'static str) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::Stdio {
            path: path.to_owned(),
            stream,
            source,
        })
}

/// `--accept`: the library's accept loop (sd_launch::accept) with one daemon per connection.
fn accept_main(mut args: Args) -> Result<i32, Error> {
    use sd_launch::accept::{Options, Pass};
    if args.datagram {
        return Err(Error::Conflict(
            "--accept needs stream sockets: datagram sockets have no connections to accept",
        ));
    }
    if args.restart.is_some() || args.ready.is_some() {
        return Err(Error::Conflict(
            "--accept starts a daemon per connection: it cannot be combined with --restart \
             or --ready",
        ));
    }
    if args.inetd && !args.fdname.is_empty() {
        return Err(Error::Conflict(
            "--inetd passes no LISTEN_* variables, so --fdname has no effect: drop it",
        ));
    }
    if args.inetd && (args.stdout.is_some() || args.outfile.is_some()) {
        return Err(Error::Conflict(
            "with --inetd the daemon's stdout is the connection: use --stderr instead of \
             --stdout/--outfile",
        ));
    }
    args.foreground = true; // accept mode always stays: stdout/stderr are inherited
    let pass = if args.inetd { Pass::Inetd } else { Pass::Fd };
    let transport = if args.seqpacket {
        Transport::SeqPacket
    } else {
        Transport::Stream
    };
    let addresses = if args.listen.is_empty() {
        vec!["127.0.0.1:0".to_owned()]
    } else {
        args.listen.clone()
    };
    let names: Vec<&str> = args.fdname.iter().flat_map(|n| n.split(':')).collect();
    if !names.is_empty() && names.len() != addresses.len() {
        return Err(Error::NameCount {
            names: names.len(),
            sockets: addresses.len(),
        });
    }
    let mut options = Options::new()
        .pass(pass)
        .max_connections(args.max_connections as usize)
        .socket_mode(args.socket_mode)
        .stop_timeout(args.stop_timeout);
    if let Some(backlog) = args.backlog {
        options = options.backlog(backlog);
    }
    for (i, address) in addresses.iter().enumerate() {
        let mut spec = address.parse::<SocketSpec>()?.transport(transport);
        if let Some(name) = names.get(i) {
            spec = spec.name(*name);
        }
        options = options.listen(spec);
    }

    let blocked = supervise::block_signals().map_err(|source| Error::Spawn {
        program: "sd-launch".into(),
        step: "blocking signals",
        source,
    })?;
    let acceptor = options.bind()?;
    let daemon = |args: &Args| -> Result<Launch, Error> {
        let (program, rest) = args.command.split_first().expect("clap requires a command");
        let launch = setenv(Launch::new(program).args(rest), args);
        let launch = stdio(launch, args)?.stdin(Stdio::null());
        Ok(launch
            .no_pid(args.no_pid)
            .parent_death_signal(libc::SIGKILL))
    };
    // Report a missing program, bad arguments or output files now, before printing, as
    // without --accept: a held launch that is dropped never runs the program.
    let devnull = File::open("/dev/null").map_err(|source| Error::Stdio {
        path: "/dev/null".into(),
        stream: "stdin",
        source,
    })?;
    let probe = match pass {
        Pass::Fd => daemon(&args)?.fd(devnull),
        Pass::Inetd => daemon(&args)?.inetd(devnull),
    };
    drop(probe.spawn_held()?);

    let text = output::render(
        args.format,
        &args.prefix,
        std::process::id(),
        acceptor.sockets(),
    );
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("sd-launch: cannot write the output ({e}); not accepting connections");
        return Ok(4);
    }
    drop(stdout);

    let mut failure = None;
    let served = acceptor.serve(Some(&blocked), |_conn| match daemon(&args) {
        Ok(launch) => launch,
        Err(e) => {
            // An output file that can no longer be opened: stop with its error.
            failure.get_or_insert(e);
            Launch::new("")
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let served = served?;
    if served.failed > 0 {
        eprintln!(
            "sd-launch: {} connection(s) were closed unanswered: their daemon could not be \
             started (out of processes or memory?)",
            served.failed
        );
    }
    Ok(0)
}
