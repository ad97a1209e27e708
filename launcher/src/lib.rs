//! Launch daemons with pre-opened sockets over the `LISTEN_FDS`/`LISTEN_PID` protocol
//! (systemd socket activation, no systemd needed), from Rust tests or with the `sd-launch`
//! command.
//!
//! The launcher opens the listening socket itself — by default TCP on `127.0.0.1` with a port
//! the kernel picks — and starts the daemon with it at fd 3. The port is known before the
//! daemon runs, and connections queue in the kernel's backlog while it starts: no port
//! clashes between parallel tests, no polling, no sleeping.
//!
//! The key property, runnable anywhere: a connection succeeds before the daemon accepts
//! (here a "daemon" that never does), because the socket is listening before it starts.
//!
//! ```
//! let daemon = sd_launch::Launch::new("sleep").arg("10").spawn()?; // holds fd 3, never accepts
//! let conn = std::net::TcpStream::connect(daemon.addr(0)?)?; // at once: queued by the kernel
//! # drop(conn);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A real test talks to a real daemon, with no sleep and no retry:
//!
//! ```no_run
//! use std::io::{Read, Write};
//! let server = sd_launch::Launch::new("my-http-daemon").spawn()?; // 127.0.0.1:0 by default
//! let mut conn = std::net::TcpStream::connect(server.local_addr(0))?; // no waiting
//! conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
//! let mut reply = String::new();
//! conn.read_to_string(&mut reply)?;
//! // dropping `server` kills and reaps the daemon, even when the test panics
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules, in the order data flows through them (each uses only the ones above it):
//! 1. [`sockets`]: what to listen on ([`SocketSpec`], the `-l` syntax) and the one builder of
//!    socket sets every mode shares (names, backlog, Unix socket modes, created files);
//! 2. `process`: the bare child: spawn (fds into place, `LISTEN_PID`, `execve`), pidfd,
//!    process group, signals, wait with a deadline, stop with a grace period, and the
//!    guardian that kills every daemon's group when the launching process dies
//!    ([`Launch::kill_on_exit`]); `capture`: its stdout and stderr drained into bounded
//!    buffers;
//! 3. [`supervisor`]: the one event loop (signals, pidfds, the notify socket, listeners, one
//!    deadline) and the policies that need only a process: readiness, foreground;
//! 4. `launch` and `launched`: the [`Launch`] builder and the [`Launched`] handle a test
//!    holds (drop stops everything it owns); [`Shared`]: one daemon for a whole test binary;
//! 5. the modes built on handles and the loop: [`restart`] (a [`Service`](restart::Service)
//!    whose sockets outlive its daemons), [`accept`] (one daemon per connection), [`proxy`]
//!    (connections forwarded to a daemon that binds its own socket) and [`stack`] (daemons
//!    started at once, each told the others' addresses; a proxied one behind a [`proxy`]).
//!
//! Feature `tokio`: `Launch::spawn_async` and `Launched::wait_async` for async tests.
//!
//! Linux only: the launcher is built on pidfds (Linux 5.3 or later), `signalfd` and
//! `clone(CLONE_VM | CLONE_VFORK)`.

#[cfg(not(target_os = "linux"))]
compile_error!("sd-launch is Linux-only: it is built on pidfds, signalfd and clone");

pub mod accept;
#[cfg(feature = "tokio")]
mod asynchronous;
mod capture;
mod error;
mod launch;
mod launched;
mod process;
pub mod proxy;
pub mod restart;
mod shared;
pub mod sockets;
pub mod stack;
pub mod supervisor;
mod template;

pub use error::Error;
pub use launch::{Held, Launch, Stdio, cargo_bin};
pub use launched::Launched;
pub use shared::Shared;
pub use sockets::{Address, LaunchedSocket, SocketKind, SocketSpec, Transport};
pub use stack::{RunningStack, Stack};
pub use supervisor::Wait;
