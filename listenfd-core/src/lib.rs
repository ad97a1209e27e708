//! Receive sockets passed with the `LISTEN_FDS`/`LISTEN_PID` protocol (systemd socket
//! activation, `sd-launch`, `systemd-socket-activate`, systemfd, ...), with the same outcome as
//! libsystemd's `sd_listen_fds_with_names()` for every input, typed hand-out, and errors that
//! say what went wrong.
//!
//! A daemon that supports socket activation and falls back to binding (`no_run`: port 8080
//! may be taken where the docs are tested):
//!
//! ```no_run
//! fn main() -> Result<(), listenfd_core::Error> {
//!     let listener = listenfd_core::tcp_listener_or_bind("127.0.0.1:8080")?;
//!     println!("listening on {:?}", listener.local_addr());
//!     Ok(()) // for conn in listener.incoming() { ... }
//! }
//! ```
//!
//! More control — several fds, by name, lenient mode, tokio:
//!
//! ```
//! use listenfd_core::{FdKind, Options};
//! let mut fds = Options::new().lenient(true).from_env()?;
//! for i in 0..fds.len() {
//!     let info = fds.inspect(i)?;
//!     if let FdKind::Socket { listening: true, .. } = info.kind {
//!         println!("{info}");
//!     }
//! }
//! let http = fds.tcp_listener_or_bind("http", "127.0.0.1:0")?;
//! # drop(http);
//! # Ok::<(), listenfd_core::Error>(())
//! ```
//!
//! # Semantics
//!
//! * **Strict by default**, like libsystemd: fds 3.. are ours only when `LISTEN_PID` is our pid
//!   (and `LISTEN_PIDFDID`, when set, is our pidfd inode id). Otherwise the result is empty, not
//!   an error, and [`ListenFds::not_for_us`] says why (worth a log line before falling back). Malformed variables are errors ([`Error::errno`] gives libsystemd's errno).
//!   [`Options::lenient`] accepts a missing `LISTEN_PID` and honours `LISTEN_FDS_FIRST_FD`.
//! * **Owned once**: [`ListenFds::from_env`] may be called once per process; it sets
//!   `FD_CLOEXEC` on every passed fd. Each fd is taken once, by index or by name
//!   ([`Which`]); a failed take leaves it in place.
//! * **Typed**: every take first inspects the fd ([`inspect`]) and refuses a mismatch — a
//!   connected socket is not a listener, `/dev/null` is not a socket — saying what it found.
//! * **Environment**: the `LISTEN_*` variables are removed only when that is sound; see
//!   [`Options`] for the Rust 2024 `remove_var` story and [`Options::unset_env`] to never touch
//!   the environment.
//! * The pure decision logic is [`env::parse`], usable without any process state.
//!
//! # Stop signals in a tokio daemon
//!
//! Receiving before the runtime starts (above) has a twin: a daemon started by a launcher can
//! be sent `SIGTERM` at any moment of its start-up (`export $(sd-launch -- mydaemon); kill
//! $LAUNCHED_PID`), and tokio cannot lose it only if it is *blocked* until the handler is
//! registered. Before tokio's handler exists the default action kills the process, which at
//! least stops it; but `tokio::signal::unix::signal` installs the process-wide handler first
//! and connects it to the returned stream just after, and a signal in between is consumed
//! with nowhere to go: the daemon keeps running. The pattern, in this order:
//!
//! 1. first thing in `main`, while it is the only thread, block the signals you handle with
//!    `pthread_sigmask` (threads created later inherit the mask);
//! 2. receive the fds (still single-threaded), build the runtime;
//! 3. create every signal stream (inside the runtime's context);
//! 4. unblock in the main thread: a signal sent since step 1 is delivered now, to a registered
//!    handler.
//!
//! The runtime's threads keep the signals blocked, so the kernel delivers them to the main
//! thread, which is inside `block_on` until the end; child processes spawned with std's or
//! tokio's `Command` start with an empty mask regardless. This example sends itself `SIGTERM`
//! before the runtime exists (a hidden line), as an unlucky `kill` would, and stops on it:
//!
//! ```
//! use tokio::signal::unix::{SignalKind, signal};
//!
//! /// `pthread_sigmask(how, {SIGTERM, SIGINT})` for the calling thread.
//! fn stop_signals(how: libc::c_int) -> std::io::Result<()> {
//!     // SAFETY: sigemptyset initialises `set` before the other calls read it, and
//!     // pthread_sigmask changes only the calling thread's mask.
//!     let rc = unsafe {
//!         let mut set: libc::sigset_t = std::mem::zeroed();
//!         libc::sigemptyset(&mut set);
//!         libc::sigaddset(&mut set, libc::SIGTERM);
//!         libc::sigaddset(&mut set, libc::SIGINT);
//!         libc::pthread_sigmask(how, &set, std::ptr::null_mut())
//!     };
//!     match rc {
//!         0 => Ok(()),
//!         errno => Err(std::io::Error::from_raw_os_error(errno)),
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     stop_signals(libc::SIG_BLOCK)?; // 1. before any thread exists
//!     let mut fds = listenfd_core::ListenFds::from_env()?; // 2.
//!     let listener = fds.tcp_listener_or_bind(0, "127.0.0.1:0")?;
//!     # // SAFETY: kill takes plain integers; it signals this very process.
//!     # assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
//!     let runtime = tokio::runtime::Builder::new_multi_thread()
//!         .enable_all()
//!         .build()?;
//!     let (mut term, mut int) = {
//!         let _context = runtime.enter(); // 3.
//!         (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)
//!     };
//!     stop_signals(libc::SIG_UNBLOCK)?; // 4. a pending SIGTERM is delivered here
//!     runtime.block_on(async move {
//!         listener.set_nonblocking(true)?;
//!         let listener = tokio::net::TcpListener::from_std(listener)?;
//!         tokio::select! {
//!             _ = term.recv() => eprintln!("SIGTERM: stopping"),
//!             _ = int.recv() => eprintln!("SIGINT: stopping"),
//!             _ = async { loop { let _ = listener.accept().await; } } => {}
//!         }
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # Debugging
//!
//! `cargo run -p listenfd-core --example inspect` under any launcher prints what a process
//! receives as JSON, e.g. `sd-launch -- target/debug/examples/inspect`.
//!
//! # Running under systemd
//!
//! `examples/systemd/` holds a `demo-server.socket` / `demo-server.service` pair. Install both
//! in `/etc/systemd/system/` (adjust `ExecStart=`), then `systemctl start demo-server.socket`:
//! systemd listens, and starts the service with the socket at fd 3 and `LISTEN_FDNAMES=http`
//! (from `FileDescriptorName=`) on the first connection.
//!
//! # Features
//!
//! * `tokio`: [`ListenFds::tokio_tcp_listener`] and friends, which set `O_NONBLOCK` and check
//!   for a running runtime before handing the fd to tokio.

// Table of contents, in the order data flows: variables -> fds -> what they are -> typed values.

// Pure parsing of the `LISTEN_*` variables (no syscalls).
pub mod env;

// `ListenFds`, the once-only owner; `Options`; removal of the variables.
mod fds;

// What an fd is (`sd_is_socket*` as one value).
pub mod inspect;

// Readiness notification, `sd_notify()`-compatible (`NOTIFY_SOCKET`).
pub mod notify;

// Typed hand-out into std types, and into tokio types (feature `tokio`).
mod convert;

#[cfg(feature = "tokio")]
mod tokio;

// Passed socket or bind.
mod fallback;

// The error type.
mod error;

pub use error::Error;
pub use fallback::tcp_listener_or_bind;
pub use fds::{ListenFds, Options, Which, remove_env};
pub use inspect::{Family, FdInfo, FdKind, LocalAddr, SocketType};
