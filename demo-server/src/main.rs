//! `demo-server`: a small HTTP server (HTTP/1.1 and cleartext HTTP/2) that takes its sockets
//! over the `LISTEN_FDS`/`LISTEN_PID` protocol, or binds `--listen` when started on its own.
//!
//! Thin on purpose: the stop signals blocked first thing (so that none is lost while they are
//! registered, see [`signals`]), arguments, logging, receiving the sockets, exit codes.
//! Serving is in [`serve`], the routes in [`routes`].

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod routes;
mod serve;
mod signals;

const AFTER_HELP: &str = "\
Routes:
  GET /              a short greeting
  GET /healthz       \"ok\"
  GET /info          JSON: pid, whether the sockets were passed (\"activated\"), and per
                     socket its fd, name, kind and local address
  GET /slow?ms=N     answers after N milliseconds (N <= 10000), for drain tests

Examples:
  Socket-activated by sd-launch (prints LAUNCHED_PORT and LAUNCHED_PID):
    export $(sd-launch -- demo-server)
    curl http://127.0.0.1:$LAUNCHED_PORT/info
    kill $LAUNCHED_PID

  Two named sockets, TCP and Unix:
    sd-launch -l 127.0.0.1:0 -l ./demo.sock --fdname http:admin -- demo-server

  Under systemd's reference launcher (one connection per process with -a):
    systemd-socket-activate -l 127.0.0.1:8080 --fdname http demo-server
    systemd-socket-activate -a -l 127.0.0.1:8080 demo-server

  One process per connection, the connection at fd 3 or (inetd) on stdin/stdout:
    sd-launch --accept -- demo-server
    sd-launch --accept --inetd -- demo-server --inetd

  On its own (no sockets passed): binds --listen
    RUST_LOG=debug demo-server --listen 127.0.0.1:3000

Passed sockets: every listening TCP (IPv4/IPv6) and Unix stream socket is served; a
connected stream socket (systemd Accept=yes, systemd-socket-activate -a) is served as one
connection, and the server exits when it is done; with --inetd, the connected socket on stdin
likewise. LISTEN_* are validated strictly, like libsystemd, unless --lenient.

With NOTIFY_SOCKET set (systemd Type=notify, sd-launch --ready), it sends READY=1 once it
serves and STOPPING=1 when it starts draining.

SIGTERM or SIGINT: stop accepting, let in-flight requests finish (at most --drain-timeout
seconds; connections still open then are dropped), exit 0. A signal sent during start-up is
never lost: it is held until the handlers are registered, then acted on. More SIGTERMs or
SIGINTs while draining change nothing (one Ctrl-C often arrives twice, via a launcher too);
to stop at once, send SIGKILL, or press Ctrl-\\ at the terminal (SIGQUIT, not handled).

Exit codes: 0 stopped by a signal, or the passed connection was served; 1 serving failed;
2 invalid command line, malformed LISTEN_* environment, a passed fd that is not a stream
socket, or --inetd without a connected stream socket on stdin; 3 the --listen address could not be bound.

Logging goes to stderr; filter it with RUST_LOG (default: info).";

/// A small HTTP server for socket activation (LISTEN_FDS/LISTEN_PID).
///
/// Serves every socket passed by sd-launch, systemd or systemd-socket-activate; without passed
/// sockets it binds --listen.
#[derive(Debug, Parser)]
#[command(name = "demo-server", version, after_help = AFTER_HELP)]
struct Args {
    /// Address to bind when no socket is passed.
    #[arg(short, long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Lenient receiving: accept a missing LISTEN_PID (systemfd --no-pid, watchexec --socket)
    /// and honour LISTEN_FDS_FIRST_FD.
    #[arg(long)]
    lenient: bool,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    drain_timeout: u64,

    /// inetd style: serve the connected socket on stdin (and stdout) as one connection and
    /// exit when it is done (sd-launch --accept --inetd, systemd-socket-activate -a --inetd,
    /// systemd StandardInput=socket). Passed LISTEN_* sockets are not served.
    #[arg(long)]
    inetd: bool,
}

fn main() -> ExitCode {
    // First of all, while this is the only thread: hold SIGTERM/SIGINT until their tokio
    // handlers are registered, so that a `kill` during start-up is never lost (see signals.rs).
    let blocked = match signals::block() {
        Ok(blocked) => blocked,
        Err(e) => {
            eprintln!("demo-server: cannot block SIGTERM/SIGINT: {e}");
            return ExitCode::from(1);
        }
    };
    let args = Args::parse();
    init_logging();

    // Receive while this is the only thread: the receiver can then remove the LISTEN_*
    // variables soundly (a #[tokio::main] runtime would already have started its workers).
    let fds = match listenfd_core::Options::new()
        .lenient(args.lenient)
        .from_env()
    {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("demo-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Likewise NOTIFY_SOCKET (sd_notify): READY=1 once serving, STOPPING=1 when draining.
    let notifier = match listenfd_core::notify::Notifier::from_env() {
        Ok(n) => n.map(std::sync::Arc::new),
        Err(e) => {
            eprintln!("demo-server: invalid NOTIFY_SOCKET: {e}");
            return ExitCode::from(2);
        }
    };
    if let (false, Some(why)) = (args.inetd, fds.not_for_us()) {
        tracing::info!("no sockets passed ({why}); binding {}", args.listen);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-server: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Register the handlers, then unblock: a signal that arrived meanwhile is delivered now.
    let registered = {
        let _context = runtime.enter();
        blocked.register()
    };
    let signals = match registered {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("demo-server: {}", serve::Error::Signals(e));
            return ExitCode::from(1);
        }
    };
    let config = serve::Config {
        fallback: args.listen,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        notifier,
    };
    let result = if args.inetd {
        runtime.block_on(serve::run_inetd(config, signals))
    } else {
        runtime.block_on(serve::run(fds, config, signals))
    };
    // Do not wait for stray tasks (e.g. a connection stuck after the drain timeout).
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-server: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// tracing to stderr, filtered by RUST_LOG (default `info`); colours only on a terminal.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
