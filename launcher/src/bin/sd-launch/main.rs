//! `sd-launch`: start a daemon with pre-opened sockets (LISTEN_FDS/LISTEN_PID protocol).
//! Thin, as ripgrep's binary is: parse the arguments, validate them into a [`Mode`], run one
//! short function per mode over the library, map errors to exit codes.
//!
//! `no_main`: std's start-up would silently reopen a closed stdout on /dev/null, and
//! `sd-launch -- daemon >&-` would then print the port nowhere and exit 0 with a daemon
//! nobody can find. [`main`] looks first, then does what std's start-up does.

#![cfg_attr(not(test), no_main)]
// The unit tests (of the output formats) run under the test harness's own main.
#![cfg_attr(test, allow(dead_code, unused_imports))]

mod args;
mod logging;
mod output;
mod stack;

use std::io::Write;

use clap::Parser;
use sd_launch::accept::Pass;
use sd_launch::restart::{self, Restart};
use sd_launch::supervisor::{self, Signals};
use sd_launch::{Error, LaunchedSocket};

use crate::args::{Args, Mode};
use crate::logging::say;

/// The C entry point (see the crate docs): note a closed stdout, set up as std would (ignore
/// SIGPIPE, so a closed pipe is an error and not death; reopen closed standard fds on
/// /dev/null, so no socket lands on them), then run and exit through std (flushing stdout).
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: F_GETFD on fd 1 only reads its flags.
    let stdout_closed = unsafe { libc::fcntl(1, libc::F_GETFD) } < 0;
    // SAFETY: installing SIG_IGN runs no code of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    for fd in 0..=2 {
        // SAFETY: F_GETFD only reads flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: open of a NUL-terminated literal; it returns the lowest free fd, which
            // is `fd` (the lower ones are open by now).
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
    let args = Args::parse();
    logging::init();
    let result = if stdout_closed {
        Err(Error::Os {
            context: "print the port and pid: stdout is closed (give sd-launch a stdout, \
                      >/dev/null if no output is wanted)",
            source: std::io::Error::from_raw_os_error(libc::EBADF),
        })
    } else {
        run(&args)
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            say(&e);
            e.exit_code()
        }
    };
    std::process::exit(code.clamp(0, 255))
}

fn run(args: &Args) -> Result<i32, Error> {
    // A SIGCHLD ignored by whoever started us would make the kernel reap our daemons
    // behind our back; we wait for them, so it must be the default.
    // SAFETY: signal() with SIG_DFL installs no handler.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    match args.mode() {
        Mode::Background => background(args),
        Mode::Foreground => foreground(args),
        Mode::Restart(policy) => restart(args, policy),
        Mode::Accept(pass) => accept(args, pass),
        Mode::Stack => stack::run(args),
        Mode::Proxy(foreground) => proxy(args, foreground),
    }
}

/// Start, print, leave the daemon running. With `--ready` a stop signal during the wait
/// stops the daemon and sd-launch exits 128+N; nothing is printed unless the daemon runs.
fn background(args: &Args) -> Result<i32, Error> {
    let signals = block_signals()?;
    let mut daemon = args
        .launch()?
        // Guarded only while sd-launch waits for readiness (killed then, the daemon must
        // not stay); without a wait it is detached at once, and the guardian's fork is saved.
        .kill_on_exit(args.waits())
        .stop_on(&signals)
        .map_err(os("copy the signal fd"))?
        .spawn()?;
    if let Err(source) = print(args, daemon.pid(), daemon.sockets()) {
        let _ = daemon.kill();
        return Err(output_error(source, "write the output; stopped the daemon"));
    }
    daemon.detach();
    Ok(0)
}

/// Start, print (before the daemon runs, unless `--ready`: then once it is ready), and
/// supervise it until it exits.
fn foreground(args: &Args) -> Result<i32, Error> {
    let signals = block_signals()?;
    let launch = args
        .launch()?
        .foreground_terminal(true)
        .stop_on(&signals)
        .map_err(os("copy the signal fd"))?;
    // A background group writing to the terminal must not be stopped (`stty tostop`).
    // SAFETY: installing SIG_IGN runs no code of ours; the daemon starts with defaults.
    unsafe { libc::signal(libc::SIGTTOU, libc::SIG_IGN) };
    let mut daemon = if args.waits() {
        let mut daemon = launch.spawn()?;
        if let Err(source) = print(args, daemon.pid(), daemon.sockets()) {
            let _ = daemon.kill();
            return Err(output_error(source, "write the output; stopped the daemon"));
        }
        daemon
    } else {
        // The daemon shares our stdout: it is held before exec until our output is out.
        launch.spawn_with(|pid, sockets| print(args, pid, sockets))?
    };
    let status = daemon.supervise(&signals, args.stop_timeout)?;
    Ok(supervisor::exit_code(status))
}

/// `--restart`: the sockets outlive the daemons; SIGHUP replaces the running one.
fn restart(args: &Args, policy: Restart) -> Result<i32, Error> {
    let signals = block_signals()?;
    let launch = args
        .launch()?
        .stop_on(&signals)
        .map_err(os("copy the signal fd"))?;
    let mut service = launch.service()?;
    if args.waits() {
        service.start()?;
        let pid = service.current().map_or(0, |d| d.pid());
        print(args, pid, service.sockets())
            .map_err(|source| output_error(source, "write the output; stopped the daemon"))?;
    } else {
        service.start_with(|pid, sockets| print(args, pid, sockets))?;
    }
    let status = restart::supervise(&signals, &mut service, policy, args.stop_timeout)?;
    Ok(supervisor::exit_code(status))
}

/// `--accept`: one daemon per connection until SIGINT/SIGTERM (exit 0).
fn accept(args: &Args, pass: Pass) -> Result<i32, Error> {
    // A missing program or an unopenable output file is reported now, before printing.
    args.daemon()?.find_program()?;
    let signals = block_signals()?;
    let acceptor = args.acceptor(pass)?.bind()?;
    print(args, std::process::id(), acceptor.sockets())
        .map_err(|source| output_error(source, "write the output; not accepting connections"))?;
    let served = acceptor.serve(Some(&signals), |_conn| args.daemon())?;
    if served.failed > 0 {
        say(format_args!(
            "{} connection(s) were closed unanswered: their daemon could not be started \
             (out of processes or memory?)",
            served.failed
        ));
    }
    Ok(0)
}

/// `--proxy`: forward connections to a daemon listening where its templates say. In the
/// foreground until the daemon exits (its status) or SIGINT/SIGTERM (exit 0); else in a
/// proxy process of our own, whose pid is printed, while this one exits 0. Either way the
/// output is printed once the daemon runs, or, with `--ready`, once it is ready; a daemon
/// that fails before is an error (exit 5 or 6, said by the proxy process itself in the
/// background, whose exit code this one then takes).
fn proxy(args: &Args, foreground: bool) -> Result<i32, Error> {
    let signals = block_signals()?;
    let proxy = args.proxy()?;
    if foreground {
        let sockets = proxy.sockets().to_vec();
        let mut printed = Ok(());
        let stopper = proxy.stopper();
        let proxied = proxy.serve_with(Some(&signals), |_| {
            printed = print(args, std::process::id(), &sockets);
            if printed.is_err() {
                stopper.stop();
            }
        });
        printed.map_err(|source| output_error(source, "write the output; stopped the proxy"))?;
        return Ok(proxied?.status.map_or(0, supervisor::exit_code));
    }
    let (mut ready_rx, ready_tx) =
        std::os::unix::net::UnixStream::pair().map_err(os("create the readiness channel"))?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork in a process with one thread (ours): the child runs on with a copy of
    // everything, as a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => Err(os("fork the proxy process")(std::io::Error::last_os_error())),
        0 => {
            drop(ready_rx);
            // Its SIGTERM is blocked: the loop takes it and stops the daemon.
            if !tie_to(parent) {
                return Ok(0); // the command is gone already: nothing was started
            }
            // The proxy process: out of the caller's session, and off its stdout, so that
            // `export $(sd-launch --proxy ...)` returns once the parent has printed.
            // SAFETY: setsid takes no arguments; it fails only for a group leader, which a
            // forked child is not.
            unsafe { libc::setsid() };
            let null = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .map_err(os("open /dev/null for the proxy's stdout"))?;
            // SAFETY: dup2 onto fd 1, which we own; `null` stays open until it returns.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) } < 0 {
                return Err(os("redirect the proxy's stdout")(
                    std::io::Error::last_os_error(),
                ));
            }
            drop(null);
            let mut ready_tx = Some(ready_tx);
            let stopper = proxy.stopper();
            let proxied = proxy.serve_with(Some(&signals), |_| {
                // Ready: from now on the proxy outlives the command, which prints and
                // exits; if it is gone already, nobody will know this proxy: stop.
                untie();
                if let Some(mut tx) = ready_tx.take()
                    && tx.write_all(b"R").is_err()
                {
                    stopper.stop();
                }
                let_go_of_a_piped_stderr();
            })?;
            Ok(proxied.status.map_or(0, supervisor::exit_code))
        }
        pid => {
            drop(ready_tx);
            // Ours are the caller's signals again while we wait for the report: a Ctrl-C
            // ends this command (and, through its parent-death signal, the proxy process).
            drop(signals);
            // The proxy process owns the sockets, the backend directory and the socket
            // files from now on: ours must not remove them on the way out.
            let sockets = proxy.sockets().to_vec();
            std::mem::forget(proxy);
            let mut byte = [0u8; 1];
            let ready = loop {
                match std::io::Read::read(&mut ready_rx, &mut byte) {
                    Ok(n) => break n == 1,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break false,
                }
            };
            if !ready {
                // The proxy process failed before the daemon was ready, and said why on
                // stderr: its exit code is ours.
                let mut status = 0;
                // SAFETY: waitpid on the child we forked, into a local.
                while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                }
                return Ok(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    1
                });
            }
            if let Err(source) = print(args, pid as u32, &sockets) {
                // SAFETY: kill sends a signal to the child we just forked.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                return Err(output_error(source, "write the output; stopped the proxy"));
            }
            Ok(0)
        }
    }
}

/// In a process forked to stay in the background (the proxy process, a stack's
/// supervisor), until it has reported: live only as long as the command `parent` that waits
/// for the report, so that a stop signal to that one (Ctrl-C) ends this one too, through
/// SIGTERM, instead of leaving a process whose pid nobody knows to run on until its
/// readiness timeout. `false`: the command is gone already.
pub(crate) fn tie_to(parent: libc::pid_t) -> bool {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a valid signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() == parent }
}

/// Before the report of a [`tie_to`] process: from now on it outlives the command (whose
/// exit after the report must not stop it; if the command is gone already, the report's
/// write fails and says so).
pub(crate) fn untie() {
    // SAFETY: prctl with PR_SET_PDEATHSIG 0 clears the parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
}

/// The background proxy process keeps the caller's stderr for its log when it is a file or
/// a terminal, but not a pipe or a socket: whoever reads that (`$(...) 2>&1`, a test's
/// `Command::output()`) would wait for its end as long as the proxy runs. Its later
/// messages then go nowhere (`--foreground` shows them).
fn let_go_of_a_piped_stderr() {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return;
    };
    let kind = meta.file_type();
    if !(kind.is_fifo() || kind.is_socket()) {
        return;
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 of an fd we own onto fd 2, ours.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 2) };
    }
}

/// Write the launch's output to stdout in one piece.
fn print(args: &Args, pid: u32, sockets: &[LaunchedSocket]) -> std::io::Result<()> {
    let text = output::render(args.format, args.prefix(), pid, sockets);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

fn block_signals() -> Result<Signals, Error> {
    Signals::block().map_err(os("block signals"))
}

fn os(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Os { context, source }
}

/// The output could not be written (stdout gone): the launch is undone, and `what` says how.
fn output_error(source: std::io::Error, what: &'static str) -> Error {
    Error::Os {
        context: what,
        source,
    }
}
