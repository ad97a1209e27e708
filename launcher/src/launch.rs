//! [`Launch`]: the builder, like `std::process::Command`, that creates the sockets and starts
//! the daemon with them.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::capture::{Capture, Writers};
use crate::error::Error;
use crate::launched::{Launched, Readiness};
use crate::process::{Child, Gate, Plan};
use crate::sockets::{BoundSockets, CreatedPath, LaunchedSocket, SocketSet, SocketSpec};
use crate::supervisor::notify::{NOTIFY_SOCKET, NotifySocket};
use crate::supervisor::{Signals, Wait};

/// Variables of the protocol that a launcher sets itself (listenfd-core's list): never
/// inherited from our own environment, which would hand the daemon a stale or foreign
/// announcement.
const PROTOCOL_VARIABLES: [&str; 5] = listenfd_core::env::VARIABLES;

/// Where one of the daemon's standard streams goes.
///
/// ```
/// use sd_launch::Stdio;
/// let _ = (Stdio::inherit(), Stdio::null(), Stdio::capture());
/// let _ = Stdio::from(std::fs::File::open("/dev/null")?);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Stdio(StdioKind);

#[derive(Debug, Clone)]
enum StdioKind {
    Inherit,
    Null,
    Fd(Arc<OwnedFd>),
    /// Captured, and copied to the fd if there is one.
    Capture(Option<Arc<OwnedFd>>),
}

impl Stdio {
    /// Captured (the default for stdout and stderr): read by the launcher into a bounded
    /// buffer (the last 256 KiB of each stream), never blocking the daemon; the text is on
    /// [`Launched::stdout`] and [`Launched::stderr`], its tail is in every error about the
    /// daemon, and it is printed with the test's own output when a test panics while it
    /// holds the [`Launched`] handle (so `cargo test` shows it only for failures).
    ///
    /// ```
    /// let mut daemon = sd_launch::Launch::new("sh").args(["-c", "echo hello"]).spawn()?;
    /// daemon.wait()?;
    /// assert_eq!(daemon.stdout().as_deref(), Some("hello\n"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capture() -> Stdio {
        Stdio(StdioKind::Capture(None))
    }

    /// Captured as with [`capture`](Stdio::capture), and every byte also copied to `copy`
    /// (our own stdout, a log file) as it comes: `sd-launch --ready-when=log:...` watches
    /// the output this way while the user still sees it.
    ///
    /// ```
    /// let copy = tempfile::tempfile()?;
    /// let _ = sd_launch::Stdio::capture_and_copy(copy);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn capture_and_copy(copy: impl Into<OwnedFd>) -> Stdio {
        Stdio(StdioKind::Capture(Some(Arc::new(copy.into()))))
    }

    /// The same as ours (the default for stdin).
    ///
    /// ```
    /// let _ = sd_launch::Stdio::inherit();
    /// ```
    pub fn inherit() -> Stdio {
        Stdio(StdioKind::Inherit)
    }

    /// `/dev/null`.
    ///
    /// ```
    /// let _ = sd_launch::Stdio::null();
    /// ```
    pub fn null() -> Stdio {
        Stdio(StdioKind::Null)
    }
}

impl From<OwnedFd> for Stdio {
    fn from(fd: OwnedFd) -> Stdio {
        Stdio(StdioKind::Fd(Arc::new(fd)))
    }
}

impl From<File> for Stdio {
    fn from(file: File) -> Stdio {
        Stdio(StdioKind::Fd(Arc::new(file.into())))
    }
}

/// Builds and starts a socket-activated daemon: creates the sockets, starts the program with
/// them at fds 3, 4, ... and `LISTEN_FDS`, `LISTEN_PID` (the child's own pid) and, when names
/// are given, `LISTEN_FDNAMES`.
///
/// Without any [`listen`](Launch::listen) or [`fd`](Launch::fd) call, the daemon gets one TCP
/// socket on `127.0.0.1` with a port the kernel picks, so tests never clash over ports.
///
/// ```no_run
/// use sd_launch::Launch;
/// let server = Launch::new("my-daemon").arg("--verbose").spawn()?;
/// let url = format!("http://{}/", server.local_addr(0));
/// // ... connect at once: the kernel queues connections while the daemon starts ...
/// drop(server); // kills and reaps the daemon, also when a test panics
/// # Ok::<(), sd_launch::Error>(())
/// ```
///
/// Decisions:
/// * The environment is ours (like `Command`), minus any `LISTEN_*` variables we received
///   ourselves (`listenfd_core::env::VARIABLES`), plus the ones for the daemon.
/// * Our copies of the sockets are closed once the daemon runs, so a daemon that dies makes
///   clients fail at once (connection refused) instead of hanging in a backlog nobody accepts
///   from. Addresses stay available through [`Launched::sockets`].
/// * stdin is inherited, as with `Command`; stdout and stderr are captured
///   ([`Stdio::capture`]): a test's output is not mixed with its daemons', and a failing
///   test shows them.
#[derive(Debug, Clone)]
pub struct Launch {
    program: OsString,
    args: Vec<OsString>,
    env: BTreeMap<OsString, Option<OsString>>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    stdio: [Stdio; 3],
    sockets: SocketSet,
    with_pid: bool,
    kill_on_drop: bool,
    kill_on_exit: bool,
    parent_death_signal: Option<i32>,
    process_group: bool,
    terminal: bool,
    inetd: Option<Arc<OwnedFd>>,
    ready: Option<(Wait, Duration)>,
    signals: Option<Arc<Signals>>,
}

impl Launch {
    /// A launch of `program` (looked up in `PATH` unless it contains a `/`).
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("true");
    /// # let _ = launch;
    /// ```
    pub fn new(program: impl AsRef<OsStr>) -> Launch {
        Launch {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_clear: false,
            cwd: None,
            stdio: [Stdio::inherit(), Stdio::capture(), Stdio::capture()],
            sockets: SocketSet::new(),
            with_pid: true,
            kill_on_drop: true,
            kill_on_exit: true,
            parent_death_signal: None,
            process_group: true,
            terminal: false,
            inetd: None,
            ready: None,
            signals: None,
        }
    }

    /// A launch of `name`, a binary of the Cargo workspace under test, by name instead of
    /// path: `CARGO_BIN_EXE_<name>` when Cargo set it, else the target directory of the
    /// running test executable (`target/<profile>/<name>`, as assert_cmd and escargot find
    /// it). An error names the path looked at and the command that builds it.
    ///
    /// ```
    /// let err = sd_launch::Launch::cargo_bin("no-such-binary").unwrap_err();
    /// assert_eq!(err.exit_code(), 127);
    /// assert!(err.to_string().contains("cargo build --bin no-such-binary"), "{err}");
    /// ```
    pub fn cargo_bin(name: &str) -> Result<Launch, Error> {
        cargo_bin(name).map(Launch::new)
    }

    /// Add an argument.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("sleep").arg("10");
    /// # let _ = launch;
    /// ```
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Add arguments.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("sh").args(["-c", "exit 0"]);
    /// # let _ = launch;
    /// ```
    pub fn args<I, S>(mut self, args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Set an environment variable for the daemon.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("env").env("RUST_LOG", "debug");
    /// # let _ = launch;
    /// ```
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.env
            .insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    /// Do not pass this variable of ours to the daemon.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("env").env_remove("HOME");
    /// # let _ = launch;
    /// ```
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Launch {
        self.env.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Start from an empty environment (only variables set with [`env`](Launch::env), and
    /// the protocol's own).
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("/usr/bin/env").env_clear();
    /// # let _ = launch;
    /// ```
    pub fn env_clear(mut self) -> Launch {
        self.env_clear = true;
        self.env.retain(|_, v| v.is_some());
        self
    }

    /// Run the daemon in `dir`.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("pwd").current_dir("/");
    /// # let _ = launch;
    /// ```
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Launch {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Where the daemon's stdin comes from (default: inherited).
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("cat").stdin(sd_launch::Stdio::null());
    /// # let _ = launch;
    /// ```
    pub fn stdin(mut self, stdio: impl Into<Stdio>) -> Launch {
        self.stdio[0] = stdio.into();
        self
    }

    /// Where the daemon's stdout goes (default: [captured](Stdio::capture)).
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("echo").stdout(sd_launch::Stdio::null());
    /// # let _ = launch;
    /// ```
    pub fn stdout(mut self, stdio: impl Into<Stdio>) -> Launch {
        self.stdio[1] = stdio.into();
        self
    }

    /// Where the daemon's stderr goes (default: [captured](Stdio::capture)).
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("ls").stderr(sd_launch::Stdio::null());
    /// # let _ = launch;
    /// ```
    pub fn stderr(mut self, stdio: impl Into<Stdio>) -> Launch {
        self.stdio[2] = stdio.into();
        self
    }

    /// Create a socket from `spec` and pass it as the next fd.
    ///
    /// ```
    /// use sd_launch::{Launch, SocketSpec, Transport};
    /// let launch = Launch::new("my-daemon")
    ///     .listen(SocketSpec::loopback().name("http"))
    ///     .listen(SocketSpec::loopback().transport(Transport::Datagram).name("dns"));
    /// # let _ = launch;
    /// ```
    pub fn listen(mut self, spec: SocketSpec) -> Launch {
        self.sockets.listen(spec);
        self
    }

    /// Create a socket from an address in `sd-launch -l` syntax (see [`SocketSpec`]) and
    /// pass it as the next fd. A malformed address is reported by [`spawn`](Launch::spawn).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let launch = sd_launch::Launch::new("my-daemon")
    ///     .listen_on("127.0.0.1:0")
    ///     .listen_on(dir.path().join("api.sock").to_str().unwrap());
    /// # let _ = launch;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn listen_on(mut self, address: &str) -> Launch {
        self.sockets.listen_on(address);
        self
    }

    /// Pass a socket (or any fd) of the caller's own as the next fd.
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let launch = sd_launch::Launch::new("my-daemon").fd(listener);
    /// # let _ = launch;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fd(mut self, fd: impl Into<OwnedFd>) -> Launch {
        self.sockets.fd(fd.into(), None);
        self
    }

    /// Pass a socket of the caller's own as the next fd, named in `LISTEN_FDNAMES`.
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let launch = sd_launch::Launch::new("my-daemon").named_fd("http", listener);
    /// # let _ = launch;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn named_fd(mut self, name: impl Into<String>, fd: impl Into<OwnedFd>) -> Launch {
        self.sockets.fd(fd.into(), Some(name.into()));
        self
    }

    /// Listen backlog for stream sockets (default: the kernel's maximum,
    /// [`sockets::DEFAULT_BACKLOG`](crate::sockets::DEFAULT_BACKLOG)).
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("my-daemon").backlog(128);
    /// # let _ = launch;
    /// ```
    pub fn backlog(mut self, backlog: i32) -> Launch {
        self.sockets.backlog(backlog);
        self
    }

    /// Mode of created Unix socket files (default `0o600`).
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("my-daemon").socket_mode(0o660);
    /// # let _ = launch;
    /// ```
    pub fn socket_mode(mut self, mode: u32) -> Launch {
        self.sockets.socket_mode(mode);
        self
    }

    /// Omit `LISTEN_PID` (default: set it). For daemons behind an intermediary such as
    /// `cargo run` or a shell wrapper, whose pid differs from the process we start. The
    /// trade-off: with no pid to match, any descendant that inherits the variables may take
    /// the fds as its own, so the daemon must use a lenient receiver and should remove the
    /// variables.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("cargo").args(["run", "--"]).no_pid(true);
    /// # let _ = launch;
    /// ```
    pub fn no_pid(mut self, no_pid: bool) -> Launch {
        self.with_pid = !no_pid;
        self
    }

    /// Kill (`SIGKILL`) and reap the daemon when the [`Launched`] handle is dropped (default
    /// `true`). With `false`, dropping the handle leaves the daemon running until this
    /// process ends ([`kill_on_exit`](Launch::kill_on_exit)).
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("my-daemon").kill_on_drop(false);
    /// # let _ = launch;
    /// ```
    pub fn kill_on_drop(mut self, kill: bool) -> Launch {
        self.kill_on_drop = kill;
        self
    }

    /// Kill the daemon, and every process of its group, when this process ends, however it
    /// ends: a return from `main` with the handle never dropped (a daemon kept in a
    /// `static`), a panic that aborts, SIGTERM, SIGKILL (default `true`). A daemon spawned from
    /// a thread keeps running after the thread ends. With `false` the daemon outlives this
    /// process when its handle is never dropped; [`Launched::detach`] makes a guarded daemon
    /// outlive it too.
    ///
    /// It works with a guardian: on the first guarded spawn of a process, a small process
    /// forked from it (`sd-launch-guard` in `ps`) that holds no fd of ours but one end of a
    /// socket pair; when it reads end-of-file there (our end is closed by the kernel however
    /// this process dies), it sends `SIGKILL` to every daemon's process group still registered.
    /// [`kill_on_drop(false)`](Launch::kill_on_drop) leaves a dropped handle's daemon running
    /// until this process ends, not beyond.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("my-daemon").kill_on_exit(false);
    /// # let _ = launch;
    /// ```
    pub fn kill_on_exit(mut self, kill: bool) -> Launch {
        self.kill_on_exit = kill;
        self
    }

    /// Linux: have the kernel send `signal` to the daemon when the thread that spawned it
    /// exits (`PR_SET_PDEATHSIG`). Off by default: in a test harness every test runs in its own
    /// thread, so a daemon shared between tests would die with the first one. Use it from a
    /// process's main thread, as `sd-launch --foreground` does.
    /// [`kill_on_exit`](Launch::kill_on_exit) (the default) is bound to the process instead
    /// of the thread, and reaches the daemon's whole process group.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("my-daemon").parent_death_signal(libc::SIGKILL);
    /// # let _ = launch;
    /// ```
    pub fn parent_death_signal(mut self, signal: i32) -> Launch {
        self.parent_death_signal = Some(signal);
        self
    }

    /// Start the daemon as the leader of a process group of its own (default `true`).
    /// Stopping it (drop, kill, a stop timeout) then stops every process it started, and a
    /// signal to our own process group (a terminal's Ctrl-C) does not reach it a second time
    /// when `sd-launch` forwards it. With `false` the daemon stays in our group.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("my-daemon").process_group(false);
    /// # let _ = launch;
    /// ```
    pub fn process_group(mut self, own: bool) -> Launch {
        self.process_group = own;
        self
    }

    /// Give the daemon's process group the terminal on our stdin, when it is ours (we are
    /// its foreground group): its Ctrl-C and Ctrl-Z then reach the daemon, once, and the
    /// daemon can read from it, as a shell does for a foreground job. The terminal comes back
    /// to us when the daemon is reaped. Off by default (a test has no business with the
    /// terminal); `sd-launch --foreground` turns it on.
    ///
    /// ```
    /// let launch = sd_launch::Launch::new("my-daemon").foreground_terminal(true);
    /// # let _ = launch;
    /// ```
    pub fn foreground_terminal(mut self, take: bool) -> Launch {
        self.terminal = take;
        self
    }

    /// inetd style, systemd's `Accept=yes` with `StandardInput=socket`: `conn` (usually an
    /// accepted connection) becomes the daemon's stdin and stdout, and the daemon gets no
    /// sockets at fd 3 and no `LISTEN_*` variables. Combining it with
    /// [`listen`](Launch::listen) or [`fd`](Launch::fd) is an error; a later
    /// [`stdin`](Launch::stdin) or [`stdout`](Launch::stdout) is overridden.
    ///
    /// ```
    /// use std::io::Read;
    /// use std::os::unix::net::UnixStream;
    /// let (mut ours, theirs) = UnixStream::pair()?;
    /// let mut daemon = sd_launch::Launch::new("sh")
    ///     .args(["-c", "echo \"fds=${LISTEN_FDS:-none}\""])
    ///     .inetd(theirs)
    ///     .spawn()?;
    /// daemon.wait()?;
    /// let mut got = String::new();
    /// ours.read_to_string(&mut got)?;
    /// assert_eq!(got, "fds=none\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inetd(mut self, conn: impl Into<OwnedFd>) -> Launch {
        self.inetd = Some(Arc::new(conn.into()));
        self
    }

    /// Wait until the daemon says it is ready, `sd_notify(READY=1)`, before
    /// [`spawn`](Launch::spawn) returns (or [`Held::release`], for a held launch): the daemon
    /// gets a private `NOTIFY_SOCKET` (a Unix datagram socket in a new 0700 directory), and
    /// only messages from the daemon or its descendants count, checked by the kernel's
    /// `SO_PASSCRED` credentials. When the daemon exits first or `timeout` passes, it is
    /// killed and reaped, and the error says which ([`Error::Exited`] with the status and
    /// stderr tail, or [`Error::ReadyTimeout`]).
    ///
    /// Without it, nothing needs waiting for: connections queue in the socket's backlog
    /// until the daemon accepts. Use it when "accepting" is not "ready" (a daemon that
    /// loads data before it answers, or a test that wants start-up errors as errors).
    ///
    /// ```
    /// use std::time::Duration;
    /// // A "daemon" that prepares, then notifies (systemd-notify is the shell's sd_notify;
    /// // here a tiny Rust or socat sender would do the same).
    /// let err = sd_launch::Launch::new("sh")
    ///     .args(["-c", "echo cannot load config >&2; exit 1"])
    ///     .stderr(tempfile::tempfile()?)
    ///     .ready(Duration::from_secs(5))
    ///     .spawn()
    ///     .unwrap_err();
    /// assert_eq!(err.exit_code(), 5);
    /// assert!(err.to_string().contains("cannot load config"), "{err}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ready(self, timeout: Duration) -> Launch {
        self.wait_until(Wait::Notify, timeout)
    }

    /// Wait until the daemon is ready by `wait`, at most `timeout`, before
    /// [`spawn`](Launch::spawn) returns: `READY=1` ([`ready`](Launch::ready)), an accepted
    /// connection, an HTTP path answering 2xx, or a line of its output (see [`Wait`]). When
    /// the daemon exits first or `timeout` passes, it is killed and reaped, and the error
    /// says which, with the tail of its output.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sd_launch::{Launch, Wait};
    /// let daemon = Launch::new("sh")
    ///     .args(["-c", "echo loading >&2; sleep 0.1; echo listening on fd 3; exec sleep 30"])
    ///     .wait_until(Wait::log("^listening")?, Duration::from_secs(10))
    ///     .spawn()?;
    /// assert!(daemon.stdout().unwrap().contains("listening on fd 3"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_until(mut self, wait: Wait, timeout: Duration) -> Launch {
        self.ready = Some((wait, timeout));
        self
    }

    /// With [`ready`](Launch::ready): let a stop signal among `signals` (SIGTERM, SIGINT,
    /// SIGQUIT) end the wait at once, stopping the daemon ([`Error::Interrupted`]); the other
    /// signals of the set are forwarded to the daemon meanwhile. This is what `sd-launch
    /// --ready` does, so that a stop never waits for the readiness timeout.
    ///
    /// ```
    /// let signals = sd_launch::supervisor::Signals::block()?;
    /// let launch = sd_launch::Launch::new("my-daemon").stop_on(&signals)?;
    /// # let _ = launch;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stop_on(mut self, signals: &Signals) -> io::Result<Launch> {
        self.signals = Some(Arc::new(signals.try_clone()?));
        Ok(self)
    }

    /// Create the sockets and start the daemon. Returns once the program has been executed
    /// (its `execve` succeeded); nothing has been printed, and on error nothing is left
    /// running or created.
    ///
    /// ```
    /// let err = sd_launch::Launch::new("no-such-program-anywhere").spawn().unwrap_err();
    /// assert_eq!(err.exit_code(), 127);
    /// ```
    pub fn spawn(&self) -> Result<Launched, Error> {
        let (launched, _) = self.start(false)?;
        launched.wait_ready()
    }

    /// Like [`spawn`](Launch::spawn), but `before_exec` runs while the daemon is held just
    /// before `execve` (its pid and sockets known, its program not running yet). This is how
    /// `sd-launch --foreground` prints the port before the daemon can write to the same
    /// stdout. If `before_exec` fails, the daemon never runs ([`Error::BeforeExec`]).
    ///
    /// ```
    /// let mut daemon = sd_launch::Launch::new("true").spawn_with(|pid, sockets| {
    ///     println!("LAUNCHED_PID={pid} LAUNCHED_PORT={}", sockets[0].fd);
    ///     Ok(())
    /// })?;
    /// assert!(daemon.wait()?.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_with(
        &self,
        before_exec: impl FnOnce(u32, &[LaunchedSocket]) -> io::Result<()>,
    ) -> Result<Launched, Error> {
        let held = self.spawn_held()?;
        if let Err(source) = before_exec(held.pid(), held.sockets()) {
            let program = held.launched().program().to_owned();
            drop(held); // never ran; reaped
            return Err(Error::BeforeExec { program, source });
        }
        held.release()
    }

    /// Check that the program can be found and executed, as [`spawn`](Launch::spawn) would
    /// look it up (`PATH` unless it contains a `/`), without starting anything; returns its
    /// path.
    ///
    /// ```
    /// let path = sd_launch::Launch::new("sh").find_program()?;
    /// assert!(path.is_absolute());
    /// let err = sd_launch::Launch::new("no-such-program-anywhere").find_program().unwrap_err();
    /// assert_eq!(err.exit_code(), 127);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn find_program(&self) -> Result<PathBuf, Error> {
        let path = self.env.get(OsStr::new("PATH")).map_or_else(
            || {
                if self.env_clear {
                    None
                } else {
                    std::env::var_os("PATH")
                }
            },
            Clone::clone,
        );
        crate::process::find_program(&self.program, path.as_deref())
    }

    /// Like [`spawn`](Launch::spawn), but the daemon is held just before `execve` until
    /// [`Held::release`]: its pid and sockets are known, and it has not run yet. This is how
    /// `sd-launch --foreground` prints the port before the daemon can write to the same
    /// stdout. A missing or non-executable program is reported here, before the hold; the
    /// rarer `execve` failures (a bad binary format, say) by `release`.
    ///
    /// ```
    /// let held = sd_launch::Launch::new("true").spawn_held()?;
    /// println!("LAUNCHED_PID={}", held.pid()); // before the daemon runs
    /// let mut daemon = held.release()?;
    /// assert!(daemon.wait()?.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_held(&self) -> Result<Held, Error> {
        let (launched, gate) = self.start(true)?;
        Ok(Held {
            launched: Some(launched),
            gate: Some(gate.expect("a gated spawn returns its gate")),
        })
    }

    fn start(&self, gate: bool) -> Result<(Launched, Option<Gate>), Error> {
        let mut prepared = self.clone().prepare()?;
        let (child, gate) = prepared.spawn_child(gate)?;
        Ok((prepared.into_launched(child), gate))
    }

    /// Bind the sockets and build the spawn plan; nothing runs yet.
    pub(crate) fn prepare(self) -> Result<Prepared, Error> {
        let bound = self.bind_sockets()?;
        self.prepare_bound(bound)
    }

    /// The program as given, for messages.
    pub(crate) fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// Check every listen address without binding anything.
    pub(crate) fn check_addresses(&self) -> Result<(), Error> {
        self.sockets.specs().map(drop)
    }

    /// Bind this launch's sockets (none in inetd mode): the first half of
    /// [`prepare`](Launch::prepare), which a stack does for every daemon before any starts.
    pub(crate) fn bind_sockets(&self) -> Result<Option<BoundSockets>, Error> {
        if self.inetd.is_some() {
            if !self.sockets.is_empty() {
                return Err(Error::Conflict(
                    "inetd mode passes the connection on stdin/stdout and no sockets: \
                     drop the listen/fd sockets or the inetd connection",
                ));
            }
            return Ok(None);
        }
        self.sockets.clone().bind().map(Some)
    }

    /// Expand the templates (`${NAME.addr}`, ...) of the program, the arguments and the
    /// environment values; the error names the key (`command[1]`, `env.API_URL`) and why.
    pub(crate) fn expand_templates(
        &mut self,
        addresses: &crate::template::Addresses<'_>,
    ) -> Result<(), (String, String)> {
        use crate::template::expand;
        self.program = expand(&self.program, addresses).map_err(|e| ("command[0]".into(), e))?;
        for (i, arg) in self.args.iter_mut().enumerate() {
            *arg = expand(arg, addresses).map_err(|e| (format!("command[{}]", i + 1), e))?;
        }
        for (k, v) in self.env.iter_mut() {
            if let Some(v) = v {
                *v = expand(v, addresses)
                    .map_err(|e| (format!("env.{}", k.to_string_lossy()), e))?;
            }
        }
        Ok(())
    }

    /// The texts templates are expanded in: the program, the arguments, the environment
    /// values.
    pub(crate) fn template_texts(&self) -> Vec<&OsStr> {
        let mut texts = vec![self.program.as_os_str()];
        texts.extend(self.args.iter().map(OsString::as_os_str));
        texts.extend(self.env.values().flatten().map(OsString::as_os_str));
        texts
    }

    /// Take the sockets this launch would listen on (it is left with none added).
    pub(crate) fn take_sockets(&mut self) -> SocketSet {
        std::mem::take(&mut self.sockets)
    }

    /// The second half of [`prepare`](Launch::prepare), with sockets bound already.
    pub(crate) fn prepare_bound(self, bound: Option<BoundSockets>) -> Result<Prepared, Error> {
        let Launch {
            program,
            args,
            env,
            env_clear,
            cwd,
            mut stdio,
            sockets,
            with_pid,
            kill_on_drop,
            kill_on_exit,
            parent_death_signal,
            process_group,
            terminal,
            inetd,
            ready,
            signals,
        } = self;
        let _ = sockets; // bound by the caller
        let announce = inetd.is_none();
        if let Some(conn) = inetd {
            stdio[0] = Stdio(StdioKind::Fd(Arc::clone(&conn)));
            stdio[1] = Stdio(StdioKind::Fd(conn));
        }

        let mut vars: Vec<(OsString, OsString)> = if env_clear {
            Vec::new()
        } else {
            std::env::vars_os().collect()
        };
        let ours = |k: &OsString| PROTOCOL_VARIABLES.iter().any(|p| OsStr::new(p) == k);
        vars.retain(|(k, _)| !env.contains_key(k) && !ours(k));
        vars.extend(
            env.into_iter()
                .filter(|(k, _)| !ours(k))
                .filter_map(|(k, v)| v.map(|v| (k, v))),
        );
        if let Some(bound) = &bound {
            vars.push((
                "LISTEN_FDS".into(),
                bound.sockets().len().to_string().into(),
            ));
            if let Some(names) = bound.names() {
                vars.push(("LISTEN_FDNAMES".into(), names.into()));
            }
        }
        let notify = match &ready {
            Some((Wait::Notify, _)) => {
                let socket = NotifySocket::new().map_err(|source| Error::Os {
                    context: "create the notification socket",
                    source,
                })?;
                vars.retain(|(k, _)| k != NOTIFY_SOCKET);
                vars.push((NOTIFY_SOCKET.into(), socket.address().into()));
                Some(socket)
            }
            _ => None,
        };

        let mut plan = Plan::new(&program, &args, &vars, with_pid && announce, cwd.as_deref())?;
        let null = open_null_if_needed(&stdio)?;
        let stderr_copy = match &stdio[2].0 {
            StdioKind::Fd(fd) => regular_file_copy(fd),
            _ => None,
        };
        let os = |source| Error::Os {
            context: "create the pipes that capture the daemon's output",
            source,
        };
        let captured = |i: usize| -> Result<Option<Option<OwnedFd>>, Error> {
            match &stdio[i].0 {
                StdioKind::Capture(None) => Ok(Some(None)),
                StdioKind::Capture(Some(copy)) => Ok(Some(Some(copy.try_clone().map_err(os)?))),
                _ => Ok(None),
            }
        };
        let streams = [captured(1)?, captured(2)?];
        let (capture, writers) = if streams.iter().any(Option::is_some) {
            let (capture, writers) =
                Capture::start(streams, &program.to_string_lossy()).map_err(os)?;
            (Some(capture), Some(writers))
        } else {
            (None, None)
        };
        for (i, s) in stdio.iter().enumerate() {
            plan.stdio[i] = match &s.0 {
                StdioKind::Inherit => None,
                StdioKind::Null => null.as_ref().map(AsRawFd::as_raw_fd),
                StdioKind::Fd(fd) => Some(fd.as_raw_fd()),
                StdioKind::Capture(_) => writers.as_ref().and_then(|w| {
                    let fd = if i == 1 { &w.stdout } else { &w.stderr };
                    fd.as_ref().map(AsRawFd::as_raw_fd)
                }),
            };
        }
        let (fds, sockets, created) = match bound {
            Some(bound) => bound.into_parts(),
            None => Default::default(),
        };
        plan.sockets = fds.iter().map(AsRawFd::as_raw_fd).collect();
        plan.parent_death_signal = parent_death_signal;
        plan.process_group = process_group;
        plan.foreground_tty = (terminal && process_group && our_terminal(0)).then_some(0);
        Ok(Prepared {
            program: program.to_string_lossy().into_owned(),
            plan,
            _fds: fds,
            _stdio: stdio,
            _null: null,
            _writers: writers,
            capture,
            stderr_copy,
            sockets,
            created,
            kill_on_drop,
            kill_on_exit,
            notify,
            ready,
            signals,
        })
    }
}

/// A launch with its sockets bound and its plan built: it can start the daemon, and start it
/// again (a restart keeps the same sockets).
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) program: String,
    plan: Plan,
    /// Our copies of the sockets (`plan.sockets` points into them), passed to every child.
    _fds: Vec<OwnedFd>,
    // The fds in `plan.stdio` point into these two: they live as long as the plan.
    _stdio: [Stdio; 3],
    _null: Option<OwnedFd>,
    /// The write ends of the capture pipes, for every child of the plan.
    _writers: Option<Writers>,
    capture: Option<Capture>,
    stderr_copy: Option<File>,
    pub(crate) sockets: Vec<LaunchedSocket>,
    created: Vec<CreatedPath>,
    kill_on_drop: bool,
    /// Register every child with the guardian ([`Launch::kill_on_exit`]).
    kill_on_exit: bool,
    pub(crate) notify: Option<NotifySocket>,
    pub(crate) ready: Option<(Wait, Duration)>,
    /// Stop signals that end a readiness wait ([`Launch::stop_on`]).
    pub(crate) signals: Option<Arc<Signals>>,
}

impl Prepared {
    /// No more children of this plan: our ends of the capture pipes close, so that the
    /// capture sees the end of the output when its child's ends close (an exited child's
    /// output tail is then whole at once, without waiting out the drain's timeout).
    pub(crate) fn last_child(&mut self) {
        self._writers = None;
    }

    /// Start one child with the sockets (held before exec if `gate`).
    pub(crate) fn spawn_child(&mut self, gate: bool) -> Result<(Child, Option<Gate>), Error> {
        self.plan.gate = gate;
        let spawned = Child::spawn(&mut self.plan, self.kill_on_exit)?;
        tracing::debug!(
            "started {} as pid {}{} with {} socket(s)",
            self.program,
            spawned.0.pid(),
            if gate { " (held before exec)" } else { "" },
            self.sockets.len()
        );
        Ok(spawned)
    }

    /// Like [`child`](Prepared::child), with the plan's readiness wait attached, for
    /// [`Launched::wait_ready`] and the stack's wait for all.
    pub(crate) fn child_with_ready(&self, child: Child) -> Result<Launched, Error> {
        self.with_readiness(self.child(child))
    }

    /// `daemon`, a child of this plan, with the plan's readiness wait attached: copies of
    /// the notify socket and of our sockets, closed once it is ready.
    fn with_readiness(&self, daemon: Launched) -> Result<Launched, Error> {
        let os = |source| Error::Os {
            context: "copy the sockets for a readiness wait",
            source,
        };
        let notify = self
            .notify
            .as_ref()
            .map(NotifySocket::try_clone)
            .transpose()
            .map_err(os)?;
        let listeners = self
            ._fds
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<Result<_, _>>()
            .map_err(os)?;
        let ready = self.ready.clone().map(|(wait, timeout)| Readiness {
            wait,
            timeout,
            signals: self.signals.clone(),
            listeners,
        });
        Ok(daemon.with_notify(notify).with_ready(ready))
    }

    /// A handle for a child of this plan that shares its sockets with later children: no
    /// socket files, no notification socket of its own (they stay with the plan).
    pub(crate) fn child(&self, child: Child) -> Launched {
        let stderr = self.stderr_copy.as_ref().and_then(|f| f.try_clone().ok());
        Launched::new(
            self.program.clone(),
            child,
            self.sockets.clone(),
            Vec::new(),
            true,
        )
        .with_stderr(stderr)
        .with_capture(self.capture.as_ref().map(Capture::share))
    }

    /// The handle of the one child of this plan: it takes the socket files, the
    /// notification socket and the readiness settings; our socket copies are closed (the
    /// daemon has its own).
    pub(crate) fn into_launched(self, child: Child) -> Launched {
        Launched::new(
            self.program,
            child,
            self.sockets,
            self.created,
            self.kill_on_drop,
        )
        .with_stderr(self.stderr_copy)
        .with_capture(self.capture)
        .with_notify(self.notify)
        .with_ready(self.ready.map(|(wait, timeout)| Readiness {
            wait,
            timeout,
            signals: self.signals,
            // The accepted-connection probe looks at our copies of the sockets.
            listeners: self._fds,
        }))
    }

    /// Wait until `daemon`, a child of this plan, is ready (when readiness is asked for);
    /// on failure it is killed and reaped.
    pub(crate) fn wait_ready(&self, daemon: Launched) -> Result<Launched, Error> {
        if self.ready.is_none() {
            return Ok(daemon);
        }
        self.with_readiness(daemon)?.wait_ready()
    }
}

/// A daemon started by [`Launch::spawn_held`] and held just before `execve`: its pid and
/// sockets are known, its program has not run yet. Dropping it without
/// [`release`](Held::release) lets the child exit without running the program, and reaps it.
///
/// ```
/// let held = sd_launch::Launch::new("sleep").arg("5").spawn_held()?;
/// assert_eq!(held.sockets().len(), 1);
/// drop(held); // never ran; killed and reaped
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug)]
pub struct Held {
    // Both are `Some` until `release` or `drop` takes them.
    launched: Option<Launched>,
    gate: Option<Gate>,
}

impl Held {
    /// The daemon's pid (its `LISTEN_PID`).
    ///
    /// ```
    /// let held = sd_launch::Launch::new("true").spawn_held()?;
    /// assert!(held.pid() > 1);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn pid(&self) -> u32 {
        self.launched().pid()
    }

    /// The sockets passed, in fd order.
    ///
    /// ```
    /// let held = sd_launch::Launch::new("true").spawn_held()?;
    /// assert_eq!(held.sockets()[0].kind, sd_launch::SocketKind::Tcp);
    /// # Ok::<(), sd_launch::Error>(())
    /// ```
    pub fn sockets(&self) -> &[LaunchedSocket] {
        self.launched().sockets()
    }

    fn launched(&self) -> &Launched {
        self.launched
            .as_ref()
            .expect("held until released or dropped")
    }

    /// Let the daemon run: returns its handle once `execve` succeeded. On error the child
    /// has been reaped.
    ///
    /// ```
    /// let mut daemon = sd_launch::Launch::new("true").spawn_held()?.release()?;
    /// assert!(daemon.wait()?.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release(mut self) -> Result<Launched, Error> {
        let gate = self.gate.take().expect("held until released or dropped");
        let mut launched = self
            .launched
            .take()
            .expect("held until released or dropped");
        match gate.release() {
            Ok(()) => launched.wait_ready(),
            Err(e) => {
                let _ = launched.wait();
                Err(e)
            }
        }
    }
}

/// Whether `fd` is a terminal whose foreground process group is ours.
fn our_terminal(fd: i32) -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only read their arguments and process state.
    unsafe { libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp() }
}

/// Where a binary of the workspace under test is (see [`Launch::cargo_bin`]).
///
/// ```
/// assert!(sd_launch::cargo_bin("no-such-binary").is_err());
/// ```
pub fn cargo_bin(name: &str) -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|source| Error::Os {
        context: "find the running test executable",
        source,
    })?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::NotBuilt {
            name: name.to_owned(),
            looked: path,
        })
    }
}

/// A readable handle on `fd` if it is a regular file (to read the daemon's stderr tail
/// from): the file reopened for reading through /proc (an output file is usually opened
/// write-only), else a copy of the fd.
fn regular_file_copy(fd: &OwnedFd) -> Option<File> {
    let file = File::from(fd.try_clone().ok()?);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .or(Some(file))
}

impl Drop for Held {
    fn drop(&mut self) {
        if let (Some(gate), Some(mut launched)) = (self.gate.take(), self.launched.take()) {
            drop(gate); // the child sees the channel close without a release and exits
            let _ = launched.wait();
        }
    }
}

fn open_null_if_needed(stdio: &[Stdio; 3]) -> Result<Option<OwnedFd>, Error> {
    if !stdio.iter().any(|s| matches!(s.0, StdioKind::Null)) {
        return Ok(None);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(|f| Some(f.into()))
        .map_err(|source| Error::Stdio {
            path: "/dev/null".into(),
            stream: "stdio",
            source,
        })
}
