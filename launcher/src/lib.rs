//! Launch daemons with pre-opened sockets over the `LISTEN_FDS`/`LISTEN_PID` protocol
//! (systemd socket activation, no systemd needed), from Rust tests or with the `sd-launch`
//! command.
//!
//! The launcher opens the listening socket itself — by default TCP on `127.0.0.1` with a port
//! the kernel picks — and starts the daemon with it at fd 3. The port is known before the
//! daemon runs, and connections queue in the kernel's backlog while it starts: no port
//! clashes between parallel tests, no polling, no sleeping.
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
//! Modules, in the order data flows through them:
//! * [`spec`]: what to listen on ([`SocketSpec`], `-l` address syntax);
//! * [`socket`]: creating the sockets (backlog, Unix socket modes, stale files);
//! * `launch`: the [`Launch`] builder;
//! * `spawn`: fork, fds into place, `LISTEN_PID`, execve;
//! * `launched`: the [`Launched`] handle (signals, wait, kill and reap on drop);
//! * [`supervise`]: foreground mode of the command (signal forwarding, stop timeout);
//! * [`service`]: a daemon whose sockets outlive it, restarted without refusing a connection;
//! * `ready`: the private `NOTIFY_SOCKET` and the wait for `READY=1`;
//! * [`accept`]: accept mode, one daemon per connection (`Accept=yes`, inetd style);
//! * [`output`]: the `env` and `json` formats the command prints.

pub mod accept;
mod error;
mod launch;
mod launched;
pub mod output;
mod ready;
pub mod service;
pub mod socket;
mod spawn;
pub mod spec;
pub mod supervise;

pub use error::Error;
pub use launch::{Held, Launch, PROTOCOL_VARIABLES, Stdio};
pub use launched::{Launched, LaunchedSocket};
pub use spec::{Address, SocketSpec, Transport};
