//! The daemon of rows 6 and 10.
//! * no arguments: take the passed TCP listener (listenfd-core, strict); exit 0, or 1;
//! * `--port P`: bind 127.0.0.1:P itself; exit 0, 98 on EADDRINUSE, 1 otherwise;
//! * `chain [--start-ms MS] [--port P] [--next HOST:PORT]` (row 10): sleep MS milliseconds
//!   first (start-up work that waits, such as reading files or a database; default 0), take
//!   the passed TCP listener (or bind 127.0.0.1:P with `--port`), then, still starting, send
//!   `GET /` to the next daemon of the chain and wait for its `200` status line (none with no
//!   `--next`), then answer every client `HTTP/1.0 200 OK` until killed (at most
//!   [`MAX_CLIENTS`]). Exit 1 when the listener cannot be had or the next daemon does not
//!   answer `200` within 5 s.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// A chain daemon serves at most this many connections, then exits (a bound, not a limit
/// any bench round comes near).
const MAX_CLIENTS: usize = 100_000;

/// How long a chain daemon waits for the next daemon's answer, or for a client's request.
const DEADLINE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => match passed_listener() {
            Ok(_) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
        [flag, port] if flag == "--port" => {
            let Some(port) = parse_port(port) else {
                return ExitCode::from(2);
            };
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => ExitCode::from(98),
                Err(_) => ExitCode::from(1),
            }
        }
        [mode, rest @ ..] if mode == "chain" => chain(rest),
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: bench-daemon [--port PORT] | chain [--start-ms MS] [--port PORT] [--next HOST:PORT]"
    );
    ExitCode::from(2)
}

fn parse_port(port: &str) -> Option<u16> {
    let parsed = port.parse::<u16>().ok();
    if parsed.is_none() {
        eprintln!("bench-daemon: --port needs a number, got {port:?}");
    }
    parsed
}

/// The one TCP listener passed by LISTEN_FDS.
fn passed_listener() -> io::Result<TcpListener> {
    let mut fds = listenfd_core::ListenFds::from_env().map_err(io::Error::other)?;
    if fds.len() != 1 {
        return Err(io::Error::other(format!(
            "expected 1 passed socket, got {}",
            fds.len()
        )));
    }
    fds.tcp_listener(0).map_err(io::Error::other)
}

fn chain(args: &[String]) -> ExitCode {
    let mut port = None;
    let mut next = None;
    let mut start_ms = 0;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        match (flag.as_str(), rest.next()) {
            ("--port", Some(p)) => match parse_port(p) {
                Some(p) => port = Some(p),
                None => return ExitCode::from(2),
            },
            ("--start-ms", Some(ms)) => match ms.parse::<u64>() {
                Ok(ms) if ms <= 10_000 => start_ms = ms,
                _ => {
                    eprintln!("bench-daemon: --start-ms needs 0 to 10000, got {ms:?}");
                    return ExitCode::from(2);
                }
            },
            ("--next", Some(a)) => match a.parse::<SocketAddr>() {
                Ok(a) => next = Some(a),
                Err(_) => {
                    eprintln!("bench-daemon: --next needs HOST:PORT, got {a:?}");
                    return ExitCode::from(2);
                }
            },
            _ => return usage(),
        }
    }
    std::thread::sleep(Duration::from_millis(start_ms));
    let listener = match port {
        Some(p) => TcpListener::bind(("127.0.0.1", p)),
        None => passed_listener(),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-daemon: no listener: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(next) = next
        && let Err(e) = call(next)
    {
        eprintln!("bench-daemon: the next daemon {next} did not answer: {e}");
        return ExitCode::from(1);
    }
    for _ in 0..MAX_CLIENTS {
        match listener.accept() {
            // A client that sends nothing (a connect poll) or goes away is no error here.
            Ok((conn, _)) => drop(answer(conn)),
            Err(e) => {
                eprintln!("bench-daemon: accept: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `GET /` to `next`, requiring a `200` status line.
fn call(next: SocketAddr) -> io::Result<()> {
    let mut conn = TcpStream::connect(next)?;
    conn.set_read_timeout(Some(DEADLINE))?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    if buf[..len].starts_with(b"HTTP/1.") && buf.get(9..12) == Some(b"200") {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&buf[..len])
        )))
    }
}

/// Read the request head (up to the blank line, at most 4 KiB), answer `200`, close.
fn answer(mut conn: TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(DEADLINE))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(()); // closed without a request
        }
        len += n;
    }
    conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
}
