//! The command line of `sd-launch`: clap's definition, and its validation into a
//! [`Mode`] and a [`Launch`].

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use sd_launch::accept::{self, Pass};
use sd_launch::restart::Restart;
use sd_launch::sockets::split_fd_names;
use sd_launch::{Error, Launch, SocketSpec, Stdio, Transport, Wait};

use crate::output::Format;

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

  Wait until the daemon answers before printing (no READY=1 needed):
    export $(sd-launch --ready-when=http:/healthz -- my-daemon)

  A daemon that cannot take a socket, behind a proxy (the address is known at once):
    export $(sd-launch --proxy -- redis-server --port 0 --unixsocket '${backend.path}' --save '')
    export $(sd-launch --proxy --ready -- postgres -D data -h 127.0.0.1 -p '${backend.port}' -k '')
    sd-launch --proxy --restart=on-exit --ready-when=accepted -- memcached -s '${backend.path}'

  A stack of daemons, every socket bound first, each told the others' addresses:
    export $(sd-launch --stack stack.toml)             # API_PORT=..., WEB_PORT=..., LAUNCHED_PID=...
    kill $LAUNCHED_PID                                 # stops every daemon of the stack

Output (env format): LAUNCHED_PORT=<first TCP port>, LAUNCHED_PID=<pid>; with several
sockets or a non-TCP one also LAUNCHED_PORT_<i>, LAUNCHED_ADDR_<i>, LAUNCHED_PATH_<i>
(i = 0 for fd 3). --format json prints one object with pid and every socket's fd, name,
kind, address and port.

Logging: RUST_LOG=debug sd-launch ... shows sockets, spawns, forwarded signals and
notifications on stderr (default: info, restarts and escalations only).

Exit codes: 0 launched; 2 invalid command line (address, fd name, name count,
conflicting options); 3 a socket could not be created (address in use, privileged
port, path taken); 4 the daemon could not be started or supervised (fork, chdir,
output files, stdout closed or unwritable); 5 the daemon exited before it was ready
(--ready); 6 it was not ready in time (--ready=TIMEOUT); 126 program not executable;
127 program not found; 128+N signal N stopped sd-launch during --ready. With
--foreground or --restart, the daemon's exit code, or 128+N when signal N killed it.";

/// Start a daemon with listening sockets at fd 3, 4, ... and LISTEN_FDS, LISTEN_PID set
/// (systemd socket activation, no systemd needed). Prints the port and pid, then exits
/// leaving the daemon running, or supervises it with --foreground.
#[derive(Debug, Parser)]
#[command(name = "sd-launch", version, after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// Listen on ADDR (repeatable, in fd order): PORT or HOST:PORT (IP address or
    /// localhost; a bare PORT is 127.0.0.1), [V6]:PORT, /path or ./path (Unix socket),
    /// @name (abstract). Default: 127.0.0.1:0, a free loopback port.
    #[arg(short, long = "listen", value_name = "ADDR")]
    pub(crate) listen: Vec<String>,

    /// Datagram sockets (UDP, Unix datagram) instead of stream.
    #[arg(short, long, conflicts_with = "seqpacket")]
    pub(crate) datagram: bool,

    /// Sequential-packet sockets (Unix only).
    #[arg(long)]
    pub(crate) seqpacket: bool,

    /// Name the sockets in LISTEN_FDNAMES, one per socket in order: repeat the option, or
    /// separate names with ':'. The count must match the sockets.
    #[arg(long = "fdname", value_name = "NAME[:NAME...]")]
    pub(crate) fdname: Vec<String>,

    /// Listen backlog (default: the kernel's maximum, net.core.somaxconn).
    #[arg(long, value_name = "N")]
    pub(crate) backlog: Option<i32>,

    /// Mode of Unix socket files, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = parse_mode)]
    pub(crate) socket_mode: u32,

    /// Set VAR for the daemon; VAR alone passes our own value of VAR.
    #[arg(short = 'E', long = "setenv", value_name = "VAR[=VALUE]")]
    pub(crate) setenv: Vec<OsString>,

    /// Do not set LISTEN_PID, for a daemon behind an intermediary (cargo run, a shell
    /// wrapper) that needs a lenient receiver. Any descendant may then take the sockets.
    #[arg(long)]
    pub(crate) no_pid: bool,

    /// Send the daemon's stdout and stderr to FILE (default: /dev/null; with --foreground,
    /// inherited).
    #[arg(long, value_name = "FILE")]
    pub(crate) outfile: Option<PathBuf>,

    /// Send the daemon's stdout to FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "outfile")]
    pub(crate) stdout: Option<PathBuf>,

    /// Send the daemon's stderr to FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "outfile")]
    pub(crate) stderr: Option<PathBuf>,

    /// Prefix of the printed variable names (default LAUNCHED_; with --stack, nothing
    /// before each daemon's NAME_).
    #[arg(long, value_name = "PFX")]
    pub(crate) prefix: Option<String>,

    /// Start the daemons of a stack file (TOML, see the README): every socket of every
    /// daemon is bound first, then all start at once, each told the others' addresses
    /// (${NAME.addr}, ${NAME.port}, ${NAME.path}). Prints NAME_PORT, NAME_PID, ... per
    /// daemon and LAUNCHED_PID of the stack's supervisor, which keeps running: kill it to
    /// stop every daemon. With --foreground it stays in front.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["accept", "proxy", "restart", "ready", "ready_when", "listen", "fdname", "datagram", "seqpacket", "setenv", "no_pid", "outfile", "stdout", "stderr"]
    )]
    pub(crate) stack: Option<PathBuf>,

    /// Output format: env (KEY=value lines) or json.
    #[arg(long, value_name = "FORMAT", default_value = "env", value_parser = parse_format)]
    pub(crate) format: Format,

    /// Stay in the foreground: forward SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 to
    /// the daemon and exit with its status. The daemon gets SIGKILL if sd-launch dies
    /// (Linux), and Unix socket files are removed at the end.
    #[arg(long, visible_alias = "wait")]
    pub(crate) foreground: bool,

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
    pub(crate) ready: Option<Duration>,

    /// How --ready tells that the daemon is ready (implies --ready): notify (READY=1, the
    /// default), accepted[:N] (it accepted a connection on TCP socket N; the launcher queues
    /// a probe on the socket it holds: no port polling), http:/PATH or http:N:/PATH (GET
    /// answers 2xx), log:REGEX (a line of its stdout or stderr matches; the output is
    /// captured and copied to ours, or to --outfile/--stdout/--stderr).
    #[arg(long, value_name = "WAIT", value_parser = parse_wait)]
    pub(crate) ready_when: Option<Wait>,

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
    pub(crate) restart: Option<String>,

    /// With --foreground: seconds a daemon may take to exit after SIGTERM, SIGINT or SIGQUIT
    /// (and an old daemon to drain after a restart) before it gets SIGKILL.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) stop_timeout: Duration,

    /// Accept mode: accept each connection and start one daemon per connection with it at
    /// fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES = the listener's --fdname or "connection",
    /// REMOTE_ADDR/REMOTE_PORT for TCP), as systemd Accept=yes and systemd-socket-activate
    /// -a do. Always in the foreground: prints the listening addresses (LAUNCHED_PID is
    /// sd-launch's own pid), reaps daemons as they exit, forwards SIGHUP, SIGQUIT, SIGUSR1,
    /// SIGUSR2 to them; SIGINT/SIGTERM stop accepting, go to every daemon (SIGKILL after
    /// --stop-timeout) and sd-launch exits 0. Daemons' stdin is /dev/null.
    #[arg(
        short = 'a',
        long,
        conflicts_with_all = ["restart", "ready", "ready_when", "datagram"]
    )]
    pub(crate) accept: bool,

    /// With --accept: pass each connection as the daemon's stdin and stdout instead, with no
    /// LISTEN_* variables (inetd style, systemd StandardInput=socket). Requires --accept, as
    /// in systemd-socket-activate, whose --inetd alone means something else.
    #[arg(long, requires = "accept", conflicts_with_all = ["fdname", "stdout", "outfile"])]
    pub(crate) inetd: bool,

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
    pub(crate) max_connections: u32,

    /// Proxy mode (systemd-socket-proxyd built in), for daemons that do not speak
    /// LISTEN_FDS: sd-launch binds the sockets as usual and tells the daemon where to listen
    /// privately with a template in its arguments or environment, ${backend.path} (a Unix
    /// socket in a private 0700 directory, preferred) or ${backend.port} / ${backend.addr}
    /// (a free loopback TCP port), then forwards every connection to it as soon as it
    /// accepts (clients wait meanwhile, up to --connect-timeout). sd-launch stays to
    /// proxy: in the background a proxy process of its own (LAUNCHED_PID; kill it to stop
    /// the daemon and the proxy), or in the foreground with --foreground. The daemon's exit
    /// closes the sockets. Streams only. With --restart, SIGHUP starts a new daemon on a new
    /// backend, which takes the new connections once it is ready (it listens, or its --ready
    /// wait says so); the old one gets SIGTERM once its connections are done; with
    /// --restart=on-exit a daemon that exits is started again (clients wait). With --ready,
    /// sd-launch prints only once the daemon is ready, and connections wait for that: READY=1
    /// (sd_notify) by default, for daemons that listen before they can serve, as PostgreSQL
    /// does; --ready-when=accepted waits until it listens on its backend, http:/PATH asks
    /// the backend, log:REGEX reads its output.
    #[arg(long, conflicts_with_all = ["accept"])]
    pub(crate) proxy: bool,

    /// With --proxy: how long a connection waits for the daemon to accept it before it is
    /// closed (logged, with the end of the daemon's stderr).
    #[arg(
        long,
        value_name = "SECS",
        default_value = "30",
        requires = "proxy",
        value_parser = parse_seconds
    )]
    pub(crate) connect_timeout: Duration,

    /// The daemon and its arguments.
    #[arg(
        required_unless_present = "stack",
        conflicts_with = "stack",
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    pub(crate) command: Vec<OsString>,
}

/// What sd-launch does, from the options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Start, print, leave the daemon running.
    Background,
    /// Start, print, supervise until the daemon exits.
    Foreground,
    /// Supervise, restarting the daemon on SIGHUP (and on exit with `on-exit`).
    Restart(Restart),
    /// One daemon per connection.
    Accept(Pass),
    /// A stack of daemons from a file.
    Stack,
    /// `--proxy`, in the foreground (`true`) or in a proxy process of its own.
    Proxy(bool),
}

impl Args {
    /// Whether sd-launch stays in the foreground (`--restart` implies it, but for
    /// `--proxy`, which restarts in its proxy process).
    pub(crate) fn in_foreground(&self) -> bool {
        self.foreground || (self.restart.is_some() && !self.proxy)
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

impl Args {
    /// The prefix of the printed names.
    pub(crate) fn prefix(&self) -> &str {
        match (&self.prefix, &self.stack) {
            (Some(p), _) => p,
            (None, Some(_)) => "",
            (None, None) => "LAUNCHED_",
        }
    }

    /// Whether sd-launch waits until the daemon is ready.
    pub(crate) fn waits(&self) -> bool {
        self.ready.is_some() || self.ready_when.is_some()
    }

    fn ready_timeout(&self) -> Duration {
        self.ready.unwrap_or(Duration::from_secs(30))
    }

    /// The mode these options ask for.
    pub(crate) fn mode(&self) -> Mode {
        if self.stack.is_some() {
            Mode::Stack
        } else if self.proxy {
            Mode::Proxy(self.foreground)
        } else if self.accept {
            Mode::Accept(if self.inetd { Pass::Inetd } else { Pass::Fd })
        } else if let Some(policy) = &self.restart {
            Mode::Restart(policy.parse().expect("clap checked the value"))
        } else if self.foreground {
            Mode::Foreground
        } else {
            Mode::Background
        }
    }

    fn transport(&self) -> Transport {
        if self.datagram {
            Transport::Datagram
        } else if self.seqpacket {
            Transport::SeqPacket
        } else {
            Transport::Stream
        }
    }

    /// The listen specs, with transport and names.
    fn specs(&self) -> Result<Vec<SocketSpec>, Error> {
        let addresses: Vec<&str> = if self.listen.is_empty() {
            vec!["127.0.0.1:0"]
        } else {
            self.listen.iter().map(String::as_str).collect()
        };
        let names = split_fd_names(&self.fdname, addresses.len())?;
        addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let spec = a.parse::<SocketSpec>()?.transport(self.transport());
                Ok(match names.get(i) {
                    Some(name) => spec.name(name),
                    None => spec,
                })
            })
            .collect()
    }

    /// The daemon's launch, without sockets (accept mode adds the connection).
    pub(crate) fn daemon(&self) -> Result<Launch, Error> {
        let (program, rest) = self.command.split_first().expect("clap requires a command");
        let mut launch = Launch::new(program).args(rest).no_pid(self.no_pid);
        for entry in &self.setenv {
            let bytes = entry.as_bytes();
            launch = match bytes.iter().position(|&b| b == b'=') {
                // Split the raw bytes: names and values pass verbatim, UTF-8 or not.
                Some(eq) => launch.env(
                    OsStr::from_bytes(&bytes[..eq]),
                    OsStr::from_bytes(&bytes[eq + 1..]),
                ),
                None => match std::env::var_os(entry) {
                    Some(v) => launch.env(entry, v),
                    None => launch,
                },
            };
        }
        // A process of ours stays with the daemon: in the foreground, or the proxy's.
        let stays = self.in_foreground() || self.accept;
        let proxy_process = self.proxy && !stays;
        if stays {
            launch = launch.parent_death_signal(libc::SIGKILL);
        }
        let watch_log = matches!(self.ready_when, Some(Wait::Log(_)));
        if watch_log && !stays && !proxy_process {
            return Err(Error::Conflict(
                "--ready-when=log:... reads the daemon's output, which sd-launch can only do \
                 while it runs: add --foreground (or --restart), or wait another way",
            ));
        }
        launch = launch.stdin(if stays && !self.accept {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        let (out, err) = self.output_files()?;
        // Where each stream goes: a file, else ours in the foreground, else /dev/null;
        // watched (captured and copied on) for --ready-when=log.
        let stream = |file: Option<File>, ours: i32| -> Result<Stdio, Error> {
            Ok(match (file, watch_log) {
                (Some(f), false) => Stdio::from(f),
                (Some(f), true) => Stdio::capture_and_copy(f),
                (None, false) if stays => Stdio::inherit(),
                (None, false) => Stdio::null(),
                // The proxy process has no terminal of the caller's to copy to.
                (None, true) if proxy_process => Stdio::capture(),
                (None, true) => Stdio::capture_and_copy(dup(ours)?),
            })
        };
        Ok(launch.stdout(stream(out, 1)?).stderr(stream(err, 2)?))
    }

    /// The files of --outfile, --stdout and --stderr, opened.
    fn output_files(&self) -> Result<(Option<File>, Option<File>), Error> {
        if let Some(path) = &self.outfile {
            let file = open_out(path, "stdout and stderr")?;
            let copy = file.try_clone().map_err(|source| Error::Stdio {
                path: path.clone(),
                stream: "stderr",
                source,
            })?;
            return Ok((Some(file), Some(copy)));
        }
        let out = self
            .stdout
            .as_deref()
            .map(|p| open_out(p, "stdout"))
            .transpose()?;
        let err = self
            .stderr
            .as_deref()
            .map(|p| open_out(p, "stderr"))
            .transpose()?;
        Ok((out, err))
    }

    /// The launch of one daemon with its sockets (every mode but accept).
    pub(crate) fn launch(&self) -> Result<Launch, Error> {
        let mut launch = self.daemon()?.socket_mode(self.socket_mode);
        for spec in self.specs()? {
            launch = launch.listen(spec);
        }
        if let Some(backlog) = self.backlog {
            launch = launch.backlog(backlog);
        }
        if self.ready.is_some() || self.ready_when.is_some() {
            let wait = self.ready_when.clone().unwrap_or(Wait::Notify);
            launch = launch.wait_until(wait, self.ready_timeout());
        }
        Ok(launch)
    }

    /// The acceptor's options (accept mode).
    pub(crate) fn acceptor(&self, pass: Pass) -> Result<accept::Options, Error> {
        let mut options = accept::Options::new()
            .pass(pass)
            .max_connections(self.max_connections as usize)
            .socket_mode(self.socket_mode)
            .stop_timeout(self.stop_timeout);
        if let Some(backlog) = self.backlog {
            options = options.backlog(backlog);
        }
        for spec in self.specs()? {
            options = options.listen(spec);
        }
        Ok(options)
    }
}

/// A copy of our own fd `fd` (1 or 2), for the daemon's watched output.
fn dup(fd: i32) -> Result<std::os::fd::OwnedFd, Error> {
    use std::os::fd::BorrowedFd;
    // SAFETY: fd 1 and 2 are open for the life of the process (std reopens closed ones on
    // /dev/null at start-up); we borrow them only to duplicate them.
    let ours = unsafe { BorrowedFd::borrow_raw(fd) };
    ours.try_clone_to_owned().map_err(|source| Error::Stdio {
        path: format!("/proc/self/fd/{fd}").into(),
        stream: if fd == 1 { "stdout" } else { "stderr" },
        source,
    })
}

fn parse_wait(s: &str) -> Result<Wait, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
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

impl Args {
    /// `--proxy`: the public sockets and the daemon behind them. The daemon dies with the
    /// proxy (it cannot be reached without it); its stderr goes where it would otherwise,
    /// and is also captured for the log of a connection that times out.
    pub(crate) fn proxy(&self) -> Result<sd_launch::proxy::Proxy, Error> {
        let mut options = sd_launch::proxy::Options::new()
            .restart_on_hup(self.restart.is_some())
            .restart_on_exit(self.restart.as_deref() == Some("on-exit"))
            .socket_mode(self.socket_mode)
            .connect_timeout(self.connect_timeout)
            .stop_timeout(self.stop_timeout);
        if let Some(backlog) = self.backlog {
            options = options.backlog(backlog);
        }
        for spec in self.specs()? {
            options = options.listen(spec);
        }
        let mut daemon = self.daemon()?.parent_death_signal(libc::SIGKILL);
        if self.waits() {
            let wait = self.ready_when.clone().unwrap_or(Wait::Notify);
            daemon = daemon.wait_until(wait, self.ready_timeout());
        }
        let watch_log = matches!(self.ready_when, Some(Wait::Log(_)));
        if self.stderr.is_none() && self.outfile.is_none() && !watch_log {
            // Captured (in the background, where it would go to /dev/null, only captured):
            // its tail explains a connection that timed out, or a port taken.
            daemon = daemon.stderr(if self.foreground {
                Stdio::capture_and_copy(dup(2)?)
            } else {
                Stdio::capture()
            });
        }
        options.bind(daemon)
    }
}
