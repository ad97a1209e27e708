//! Templates in a daemon's arguments and environment: `${NAME.addr}`, `${NAME.port}`,
//! `${NAME.path}`, and `${NAME.SOCKET.addr}` (etc.) for a socket named in `LISTEN_FDNAMES`
//! or given by index. They are expanded once every socket is bound and before any daemon
//! starts, so each daemon can be told the others' addresses, in any direction: a template
//! names an address, never another template, so every cycle resolves.
//!
//! * `addr`: `host:port` of an IP socket (`[v6]:port`), the path of a Unix socket file,
//!   `@name` of an abstract one;
//! * `port`: the port of an IP socket;
//! * `path`: the path of a Unix socket file.
//!
//! `$$` is a literal `$`; any other `$` is left as it is (a shell variable in an argument
//! stays a shell variable).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::sockets::{Address, LaunchedSocket};

/// What a template asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Addr,
    Port,
    Path,
}

/// The sockets of every daemon, by name, that templates can name.
#[derive(Debug, Default)]
pub(crate) struct Addresses<'a> {
    daemons: Vec<(&'a str, &'a [LaunchedSocket])>,
}

impl<'a> Addresses<'a> {
    pub(crate) fn add(&mut self, name: &'a str, sockets: &'a [LaunchedSocket]) {
        self.daemons.push((name, sockets));
    }

    /// The value of `${daemon.socket.field}` (`socket` `None`: the first socket).
    fn lookup(&self, daemon: &str, socket: Option<&str>, field: Field) -> Result<String, String> {
        let names: Vec<&str> = self.daemons.iter().map(|(n, _)| *n).collect();
        let (_, sockets) = self
            .daemons
            .iter()
            .find(|(n, _)| *n == daemon)
            .ok_or_else(|| {
                format!(
                    "no daemon named {daemon:?} (there are: {})",
                    names.join(", ")
                )
            })?;
        let s = match socket {
            None => sockets.first(),
            Some(key) => match key.parse::<usize>() {
                Ok(i) => sockets.get(i),
                Err(_) => sockets.iter().find(|s| s.name.as_deref() == Some(key)),
            },
        }
        .ok_or_else(|| match socket {
            None => format!("{daemon} has no socket"),
            Some(key) => format!("{daemon} has no socket {key:?}"),
        })?;
        let described = || format!("{daemon}'s socket is {}", s.kind);
        match (field, &s.address) {
            (Field::Addr, Some(a)) => Ok(a.to_string()),
            (Field::Port, Some(Address::Inet(a))) => Ok(a.port().to_string()),
            (Field::Path, Some(Address::Unix(p))) => Ok(p.to_string_lossy().into_owned()),
            (Field::Port, _) => Err(format!("{}: it has no port", described())),
            (Field::Path, _) => Err(format!("{}: it has no path", described())),
            (Field::Addr, None) => Err(format!("{}: it has no address", described())),
        }
    }
}

/// Expand every template of `input`; the error says which template is wrong and why.
pub(crate) fn expand(input: &OsStr, addresses: &Addresses<'_>) -> Result<OsString, String> {
    let bytes = input.as_bytes();
    if !bytes.contains(&b'$') {
        return Ok(input.to_owned());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'$', Some(b'$')) => {
                out.push(b'$');
                i += 2;
            }
            (b'$', Some(b'{')) => {
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or_else(|| "a \"${\" without its \"}\"".to_owned())?;
                let inner = std::str::from_utf8(&bytes[i + 2..i + end])
                    .map_err(|_| "a template that is not UTF-8".to_owned())?;
                out.extend_from_slice(resolve(inner, addresses)?.as_bytes());
                i += end + 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(OsString::from_vec(out))
}

fn resolve(inner: &str, addresses: &Addresses<'_>) -> Result<String, String> {
    let parts: Vec<&str> = inner.split('.').collect();
    let (daemon, socket, field) = match parts.as_slice() {
        [d, f] => (*d, None, *f),
        [d, s, f] => (*d, Some(*s), *f),
        _ => {
            return Err(format!(
                "${{{inner}}} is not NAME.FIELD or NAME.SOCKET.FIELD (FIELD: addr, port, path)"
            ));
        }
    };
    let field = match field {
        "addr" => Field::Addr,
        "port" => Field::Port,
        "path" => Field::Path,
        other => {
            return Err(format!(
                "${{{inner}}}: unknown field {other:?} (addr, port or path)"
            ));
        }
    };
    addresses
        .lookup(daemon, socket, field)
        .map_err(|e| format!("${{{inner}}}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::SocketKind;

    fn sockets() -> Vec<LaunchedSocket> {
        vec![
            LaunchedSocket {
                fd: 3,
                name: Some("http".into()),
                kind: SocketKind::Tcp,
                address: Some(Address::Inet("127.0.0.1:4000".parse().unwrap())),
            },
            LaunchedSocket {
                fd: 4,
                name: Some("admin".into()),
                kind: SocketKind::UnixStream,
                address: Some(Address::Unix("/run/x/admin.sock".into())),
            },
        ]
    }

    fn ex(input: &str) -> Result<String, String> {
        let s = sockets();
        let mut a = Addresses::default();
        a.add("api", &s);
        expand(OsStr::new(input), &a).map(|o| o.into_string().unwrap())
    }

    #[test]
    fn templates_name_addresses_ports_and_paths() {
        assert_eq!(ex("http://${api.addr}/").unwrap(), "http://127.0.0.1:4000/");
        assert_eq!(ex("--port=${api.port}").unwrap(), "--port=4000");
        assert_eq!(ex("${api.admin.path}").unwrap(), "/run/x/admin.sock");
        assert_eq!(ex("${api.1.addr}").unwrap(), "/run/x/admin.sock");
        assert_eq!(ex("${api.http.port}:${api.port}").unwrap(), "4000:4000");
        assert_eq!(ex("$$HOME and $PATH stay").unwrap(), "$HOME and $PATH stay");
    }

    #[test]
    fn a_wrong_template_says_what_is_wrong() {
        for (input, needle) in [
            ("${web.addr}", "no daemon named \"web\" (there are: api)"),
            ("${api.metrics.port}", "api has no socket \"metrics\""),
            ("${api.admin.port}", "unix-stream: it has no port"),
            ("${api.path}", "tcp: it has no path"),
            ("${api.host}", "unknown field \"host\""),
            ("${api}", "is not NAME.FIELD"),
            ("${api.addr", "without its"),
        ] {
            let err = ex(input).unwrap_err();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }
}
