//! Print what this process received through `LISTEN_FDS`, as one JSON object:
//!
//! ```text
//! {"pid":N,"fds":[{"fd":3,"name":"http","family":"inet","type":"stream","listening":true,"local":"127.0.0.1:1234"}]}
//! ```
//!
//! Run it under any launcher to see what a daemon would get, e.g.
//! `sd-launch -- target/debug/examples/inspect` or
//! `systemd-socket-activate -l 8080 target/debug/examples/inspect`.
//! A non-socket fd shows `"family":"other","type":"other","listening":false,"local":null`.
//! `--lenient` switches on lenient mode. Exit 0 on success; a malformed environment prints
//! the error on stderr and exits 2.

use std::process::ExitCode;

use listenfd_core::env::NotForUs;
use listenfd_core::{FdKind, ListenFds, Options};
use serde::Serialize;

/// The output object; field order is the documented key order.
#[derive(Serialize)]
struct Report {
    pid: u32,
    fds: Vec<Fd>,
}

#[derive(Serialize)]
struct Fd {
    fd: i32,
    name: String,
    family: String,
    #[serde(rename = "type")]
    socket_type: String,
    listening: bool,
    local: Option<String>,
}

const USAGE: &str = "usage: inspect [--lenient]

Print the fds passed with LISTEN_FDS as JSON.

Examples:
  sd-launch -- target/debug/examples/inspect
  LISTEN_FDS=1 target/debug/examples/inspect --lenient 3<&0";

fn describe(fds: &ListenFds) -> Result<Report, listenfd_core::Error> {
    let mut list = Vec::new();
    for index in 0..fds.len() {
        let info = fds.inspect(index)?;
        let (family, socket_type, listening, local) = match &info.kind {
            FdKind::Socket {
                family,
                socket_type,
                listening,
                local,
            } => (
                family.to_string(),
                socket_type.to_string(),
                *listening,
                local.as_ref().map(ToString::to_string),
            ),
            _ => ("other".to_owned(), "other".to_owned(), false, None),
        };
        list.push(Fd {
            fd: info.fd,
            name: info.name,
            family,
            socket_type,
            listening,
            local,
        });
    }
    Ok(Report {
        pid: std::process::id(),
        fds: list,
    })
}

fn main() -> ExitCode {
    let mut lenient = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--lenient" => lenient = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("inspect: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let result = Options::new().lenient(lenient).from_env().and_then(|fds| {
        // Say why nothing was received (on stderr, so stdout stays one JSON object).
        if let Some(why) = fds.not_for_us().filter(|w| *w != NotForUs::NothingPassed) {
            eprintln!("inspect: nothing received: {why}");
        }
        describe(&fds)
    });
    match result {
        Ok(report) => {
            let line = serde_json::to_string(&report).expect("plain strings and numbers serialize");
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("inspect: {err}");
            ExitCode::from(2)
        }
    }
}
