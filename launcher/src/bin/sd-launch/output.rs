//! What `sd-launch` prints about a launch: `env` lines for `export $(...)` / `eval`, or one
//! JSON object.
//!
//! `env` format, with prefix `LAUNCHED_`:
//! * `LAUNCHED_PORT=<port>`: the first TCP socket's port (the first UDP socket's if there is no
//!   TCP one; absent when no socket has a port). The seed's `sd-popen.py` line.
//! * `LAUNCHED_PID=<pid>`: the daemon's pid.
//! * Only when more than one socket is passed, or the one socket is not TCP, one line per
//!   socket `i` (0 is fd 3): `LAUNCHED_PORT_i=<port>` and `LAUNCHED_ADDR_i=<ip:port>` for
//!   TCP/UDP, `LAUNCHED_PATH_i=<path>` for a Unix socket file (`@name` for an abstract one).
//!
//! So the default launch prints exactly the two lines `sd-popen.py` printed. Values with
//! characters a shell would split or expand (a path with a space, say) are single-quoted:
//! `eval "$(sd-launch ...)"` then gets them right, while `export $(sd-launch ...)` (no quote
//! removal) only works for such plain values: use plain paths, or `eval`.

use serde_json::{Value, json};

use sd_launch::{Address, LaunchedSocket, SocketKind};

/// The output formats of `sd-launch`.
///
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `KEY=value` lines.
    Env,
    /// One JSON object on one line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "env" => Ok(Format::Env),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown format {other:?}: use env or json")),
        }
    }
}

/// Render a launch: `pid` and its `sockets` in `format`, with `prefix` for env lines. The
/// result ends with a newline and is meant to be written in one piece.
pub(crate) fn render(format: Format, prefix: &str, pid: u32, sockets: &[LaunchedSocket]) -> String {
    match format {
        Format::Env => env(prefix, pid, sockets),
        Format::Json => format!("{}\n", json(pid, sockets)),
    }
}

fn port(s: &LaunchedSocket) -> Option<u16> {
    match &s.address {
        Some(Address::Inet(a)) => Some(a.port()),
        _ => None,
    }
}

fn env(prefix: &str, pid: u32, sockets: &[LaunchedSocket]) -> String {
    let mut out = String::new();
    let main_port = sockets
        .iter()
        .find(|s| s.kind == SocketKind::Tcp)
        .or_else(|| sockets.iter().find(|s| port(s).is_some()))
        .and_then(port);
    if let Some(p) = main_port {
        out.push_str(&format!("{prefix}PORT={p}\n"));
    }
    out.push_str(&format!("{prefix}PID={pid}\n"));
    let only_default = sockets.len() == 1 && sockets[0].kind == SocketKind::Tcp;
    if !only_default {
        for (i, s) in sockets.iter().enumerate() {
            match &s.address {
                Some(Address::Inet(a)) => {
                    out.push_str(&format!("{prefix}PORT_{i}={}\n", a.port()));
                    out.push_str(&format!(
                        "{prefix}ADDR_{i}={}\n",
                        shell_quote(&a.to_string())
                    ));
                }
                Some(a) => out.push_str(&format!(
                    "{prefix}PATH_{i}={}\n",
                    shell_quote(&a.to_string())
                )),
                None => {}
            }
        }
    }
    out
}

pub(crate) fn json(pid: u32, sockets: &[LaunchedSocket]) -> Value {
    let sockets: Vec<Value> = sockets
        .iter()
        .map(|s| {
            let mut o = json!({
                "fd": s.fd,
                "name": s.name,
                "kind": s.kind.to_string(),
                "address": s.address.as_ref().map(ToString::to_string),
            });
            if let Some(p) = port(s) {
                o["port"] = json!(p);
            }
            o
        })
        .collect();
    json!({ "pid": pid, "sockets": sockets })
}

/// Quote `v` for a POSIX shell when it has anything but plain characters.
fn shell_quote(v: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+,-./:=[]_".contains(c);
    if !v.is_empty() && v.chars().all(plain) {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(fd: i32, kind: SocketKind, address: Address) -> LaunchedSocket {
        LaunchedSocket {
            fd,
            name: None,
            kind,
            address: Some(address),
        }
    }

    #[test]
    fn several_sockets_are_listed_by_index_and_port_is_the_first_tcp_one() {
        let sockets = [
            sock(
                3,
                SocketKind::UnixStream,
                Address::Unix("/tmp/a b.sock".into()),
            ),
            sock(
                4,
                SocketKind::Udp,
                Address::Inet("127.0.0.1:53".parse().unwrap()),
            ),
            sock(
                5,
                SocketKind::Tcp,
                Address::Inet("[::1]:80".parse().unwrap()),
            ),
        ];
        assert_eq!(
            render(Format::Env, "POLIPO_", 7, &sockets),
            "POLIPO_PORT=80\nPOLIPO_PID=7\nPOLIPO_PATH_0='/tmp/a b.sock'\n\
             POLIPO_PORT_1=53\nPOLIPO_ADDR_1=127.0.0.1:53\nPOLIPO_PORT_2=80\nPOLIPO_ADDR_2=[::1]:80\n"
        );
    }

    #[test]
    fn json_is_one_parseable_line() {
        let s = sock(3, SocketKind::UnixStream, Address::Abstract(b"x".to_vec()));
        let out = render(Format::Json, "", 1, &[s]);
        assert_eq!(out.lines().count(), 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["sockets"][0]["address"], "@x");
        assert!(v["sockets"][0].get("port").is_none());
    }

    #[test]
    fn the_default_launch_prints_the_two_lines_of_sd_popen() {
        let tcp = sock(
            3,
            SocketKind::Tcp,
            Address::Inet("127.0.0.1:4000".parse().unwrap()),
        );
        assert_eq!(
            render(Format::Env, "LAUNCHED_", 42, std::slice::from_ref(&tcp)),
            "LAUNCHED_PORT=4000\nLAUNCHED_PID=42\n"
        );
        let json: Value = serde_json::from_str(&render(Format::Json, "", 42, &[tcp])).unwrap();
        assert_eq!(
            json,
            json!({"pid": 42, "sockets": [
                {"fd": 3, "name": null, "kind": "tcp", "address": "127.0.0.1:4000", "port": 4000}]})
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/x.sock"), "/tmp/x.sock");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
