//! The row-6 daemon: exits right after getting its listening socket.
//! * no arguments: take the passed TCP listener (listenfd-core, strict); exit 0, or 1;
//! * `--port P`: bind 127.0.0.1:P itself; exit 0, 98 on EADDRINUSE, 1 otherwise.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => match listenfd_core::ListenFds::from_env() {
            Ok(mut fds) if fds.len() == 1 => match fds.tcp_listener(0) {
                Ok(_) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(1),
            },
            _ => ExitCode::from(1),
        },
        [flag, port] if flag == "--port" => {
            let Ok(port) = port.parse::<u16>() else {
                eprintln!("bench-daemon: --port needs a number, got {port:?}");
                return ExitCode::from(2);
            };
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => ExitCode::from(98),
                Err(_) => ExitCode::from(1),
            }
        }
        _ => {
            eprintln!("usage: bench-daemon [--port PORT]");
            ExitCode::from(2)
        }
    }
}
