//! What to listen on: [`SocketSpec`], parsed from `systemd-socket-activate`'s `-l` syntax.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// Where a socket listens.
///
/// ```
/// use sd_launch::Address;
/// let a: Address = "[::1]:8080".parse::<sd_launch::SocketSpec>()?.address;
/// assert_eq!(a, Address::Inet("[::1]:8080".parse().unwrap()));
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An IPv4 or IPv6 address and port (port 0: the kernel picks a free one).
    Inet(SocketAddr),
    /// A Unix socket file.
    Unix(PathBuf),
    /// A Linux abstract Unix socket name (given as `@name`; stored without the `@`).
    Abstract(Vec<u8>),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// The socket type: stream (TCP or Unix stream), datagram (UDP or Unix datagram), or
/// sequential packets (Unix only).
///
/// ```
/// assert_eq!(sd_launch::Transport::default(), sd_launch::Transport::Stream);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// `SOCK_STREAM`, listening.
    #[default]
    Stream,
    /// `SOCK_DGRAM`, bound.
    Datagram,
    /// `SOCK_SEQPACKET`, listening (Unix only).
    SeqPacket,
}

/// One socket to create and pass: an address, a transport, and an optional name for
/// `LISTEN_FDNAMES`.
///
/// Parsing accepts `systemd-socket-activate`'s `-l` syntax, with one deliberate difference
/// for secure defaults: a bare `PORT` binds **loopback** (`127.0.0.1:PORT`), where systemd binds
/// every interface; say `0.0.0.0:PORT` or `[::]:PORT` (dual-stack) for that.
///
/// | input | address |
/// | --- | --- |
/// | `8080`, `0` | `127.0.0.1:8080`, `127.0.0.1:<free port>` |
/// | `127.0.0.1:0`, `0.0.0.0:80`, `localhost:8080` | that IPv4 address (`localhost` is `127.0.0.1`; no DNS lookups, like systemd) |
/// | `[::1]:0`, `[::]:8080` | IPv6 (`[::]` is dual-stack) |
/// | `/run/app.sock`, `./app.sock` | Unix socket file |
/// | `@app` | Linux abstract Unix socket |
///
/// ```
/// use sd_launch::{Address, SocketSpec, Transport};
/// let spec: SocketSpec = "8080".parse()?;
/// assert_eq!(spec.address, Address::Inet("127.0.0.1:8080".parse().unwrap()));
/// let spec = "@app".parse::<SocketSpec>()?.transport(Transport::Datagram).name("app");
/// assert_eq!(spec.to_string(), "unix-dgram:@app");
/// # Ok::<(), sd_launch::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// Where to listen.
    pub address: Address,
    /// Stream, datagram or seqpacket.
    pub transport: Transport,
    /// Name announced in `LISTEN_FDNAMES`.
    pub name: Option<String>,
}

impl SocketSpec {
    /// A stream socket on `address`, unnamed.
    ///
    /// ```
    /// let spec = sd_launch::SocketSpec::new(sd_launch::Address::Unix("/tmp/x.sock".into()));
    /// assert_eq!(spec.to_string(), "unix-stream:/tmp/x.sock");
    /// ```
    pub fn new(address: Address) -> SocketSpec {
        SocketSpec {
            address,
            transport: Transport::Stream,
            name: None,
        }
    }

    /// TCP on `127.0.0.1:0`: the default socket, a free loopback port.
    ///
    /// ```
    /// assert_eq!(sd_launch::SocketSpec::loopback().to_string(), "tcp:127.0.0.1:0");
    /// ```
    pub fn loopback() -> SocketSpec {
        SocketSpec::new(Address::Inet(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            0,
        )))
    }

    /// Set the transport.
    ///
    /// ```
    /// let spec = sd_launch::SocketSpec::loopback().transport(sd_launch::Transport::Datagram);
    /// assert_eq!(spec.to_string(), "udp:127.0.0.1:0");
    /// ```
    pub fn transport(mut self, transport: Transport) -> SocketSpec {
        self.transport = transport;
        self
    }

    /// Set the name announced in `LISTEN_FDNAMES`.
    ///
    /// ```
    /// let spec = sd_launch::SocketSpec::loopback().name("http");
    /// assert_eq!(spec.name.as_deref(), Some("http"));
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> SocketSpec {
        self.name = Some(name.into());
        self
    }

    /// The kind of socket this spec creates.
    ///
    /// ```
    /// use sd_launch::{SocketKind, SocketSpec};
    /// assert_eq!(SocketSpec::loopback().kind(), SocketKind::Tcp);
    /// ```
    pub fn kind(&self) -> SocketKind {
        SocketKind::of(&self.address, self.transport)
    }
}

/// What kind of socket (or fd) a daemon gets. `Display` is the name used in `sd-launch`'s
/// output and in a [`SocketSpec`]'s `kind:address` form: `tcp`, `udp`, `unix-stream`,
/// `unix-dgram`, `unix-seqpacket`, `socket` (a passed socket of another kind) or `fd` (a
/// passed fd that is not a socket).
///
/// ```
/// use sd_launch::SocketKind;
/// assert_eq!(SocketKind::UnixDgram.to_string(), "unix-dgram");
/// assert_eq!("udp".parse::<SocketKind>(), Ok(SocketKind::Udp));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// TCP (stream over IPv4 or IPv6).
    Tcp,
    /// UDP (datagram over IPv4 or IPv6).
    Udp,
    /// A Unix stream socket.
    UnixStream,
    /// A Unix datagram socket.
    UnixDgram,
    /// A Unix sequential-packet socket.
    UnixSeqPacket,
    /// A passed socket of another family or type.
    Socket,
    /// A passed fd that is not a socket.
    Fd,
}

impl SocketKind {
    const NAMES: [(SocketKind, &'static str); 7] = [
        (SocketKind::Tcp, "tcp"),
        (SocketKind::Udp, "udp"),
        (SocketKind::UnixStream, "unix-stream"),
        (SocketKind::UnixDgram, "unix-dgram"),
        (SocketKind::UnixSeqPacket, "unix-seqpacket"),
        (SocketKind::Socket, "socket"),
        (SocketKind::Fd, "fd"),
    ];

    /// The kind of socket created on `address` with `transport` (an IP address with
    /// seqpacket, which cannot be created, is [`SocketKind::Socket`]).
    ///
    /// ```
    /// use sd_launch::{Address, SocketKind, Transport};
    /// let path = Address::Unix("/run/x.sock".into());
    /// assert_eq!(SocketKind::of(&path, Transport::Stream), SocketKind::UnixStream);
    /// ```
    pub fn of(address: &Address, transport: Transport) -> SocketKind {
        match (address, transport) {
            (Address::Inet(_), Transport::Stream) => SocketKind::Tcp,
            (Address::Inet(_), Transport::Datagram) => SocketKind::Udp,
            (Address::Inet(_), Transport::SeqPacket) => SocketKind::Socket,
            (_, Transport::Stream) => SocketKind::UnixStream,
            (_, Transport::Datagram) => SocketKind::UnixDgram,
            (_, Transport::SeqPacket) => SocketKind::UnixSeqPacket,
        }
    }

    /// The kind of a socket as the receiver inspects it (listenfd-core's vocabulary).
    ///
    /// ```
    /// use listenfd_core::{Family, SocketType};
    /// use sd_launch::SocketKind;
    /// assert_eq!(SocketKind::from_socket(Family::Inet6, SocketType::Dgram), SocketKind::Udp);
    /// ```
    pub fn from_socket(
        family: listenfd_core::Family,
        socket_type: listenfd_core::SocketType,
    ) -> SocketKind {
        use listenfd_core::{Family, SocketType};
        match (family, socket_type) {
            (Family::Inet | Family::Inet6, SocketType::Stream) => SocketKind::Tcp,
            (Family::Inet | Family::Inet6, SocketType::Dgram) => SocketKind::Udp,
            (Family::Unix, SocketType::Stream) => SocketKind::UnixStream,
            (Family::Unix, SocketType::Dgram) => SocketKind::UnixDgram,
            (Family::Unix, SocketType::SeqPacket) => SocketKind::UnixSeqPacket,
            _ => SocketKind::Socket,
        }
    }

    /// The transport of a kind that a [`SocketSpec`] can create.
    fn transport(self) -> Option<Transport> {
        match self {
            SocketKind::Tcp | SocketKind::UnixStream => Some(Transport::Stream),
            SocketKind::Udp | SocketKind::UnixDgram => Some(Transport::Datagram),
            SocketKind::UnixSeqPacket => Some(Transport::SeqPacket),
            SocketKind::Socket | SocketKind::Fd => None,
        }
    }

    /// Whether this kind has an IP address and port.
    ///
    /// ```
    /// assert!(sd_launch::SocketKind::Udp.is_inet());
    /// ```
    pub fn is_inet(self) -> bool {
        matches!(self, SocketKind::Tcp | SocketKind::Udp)
    }
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = SocketKind::NAMES
            .iter()
            .find(|(k, _)| k == self)
            .map_or("socket", |(_, n)| n);
        f.write_str(name)
    }
}

impl FromStr for SocketKind {
    type Err = String;

    fn from_str(s: &str) -> Result<SocketKind, String> {
        SocketKind::NAMES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(k, _)| *k)
            .ok_or_else(|| format!("unknown socket kind {s:?}"))
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.address)
    }
}

impl FromStr for SocketSpec {
    type Err = Error;

    /// An address in `-l` syntax, optionally after the kind that `Display` prints
    /// (`tcp:127.0.0.1:0`, `unix-dgram:@app`): `Display` and `FromStr` round-trip.
    fn from_str(input: &str) -> Result<SocketSpec, Error> {
        if let Some((kind, rest)) = input.split_once(':')
            && let Ok(kind) = kind.parse::<SocketKind>()
        {
            let address = parse_address(rest)?;
            let transport = kind
                .transport()
                .filter(|t| SocketKind::of(&address, *t) == kind)
                .ok_or_else(|| {
                    invalid(input, format!("a {kind} socket cannot listen on {address}"))
                })?;
            return Ok(SocketSpec::new(address).transport(transport));
        }
        parse_address(input).map(SocketSpec::new)
    }
}

fn invalid(input: &str, reason: impl Into<String>) -> Error {
    Error::Address {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

fn parse_address(input: &str) -> Result<Address, Error> {
    if input.is_empty() {
        return Err(invalid(
            input,
            "empty; expected PORT, HOST:PORT, [V6]:PORT, /path, ./path or @name",
        ));
    }
    if let Some(name) = input.strip_prefix('@') {
        if name.is_empty() {
            return Err(invalid(input, "an abstract socket needs a name after '@'"));
        }
        return Ok(Address::Abstract(name.as_bytes().to_vec()));
    }
    if input.starts_with('/') || input.starts_with("./") || input.starts_with("../") {
        return Ok(Address::Unix(PathBuf::from(OsString::from_vec(
            input.as_bytes().to_vec(),
        ))));
    }
    if input.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(input, input)?;
        return Ok(Address::Inet(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        )));
    }
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(Address::Inet(addr));
    }
    let Some((host, port)) = input.rsplit_once(':') else {
        return Err(invalid(
            input,
            "expected PORT, HOST:PORT, [V6]:PORT, /path, ./path or @name (a Unix path must start with / or ./)",
        ));
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(invalid(input, "an IPv6 address needs brackets: [V6]:PORT"));
    }
    let port = parse_port(input, port)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid(input, "missing host before ':'"));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(Address::Inet(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        )));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(Address::Inet(SocketAddr::new(ip, port))),
        Err(_) => Err(invalid(
            input,
            format!("unknown host {host:?}: give an IP address or localhost (no DNS lookups)"),
        )),
    }
}

fn parse_port(input: &str, port: &str) -> Result<u16, Error> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            input,
            format!("port {port:?} is not a number from 0 to 65535"),
        ));
    }
    port.parse::<u16>()
        .map_err(|_| invalid(input, format!("port {port} is out of range (0 to 65535)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(s: &str) -> Address {
        Address::Inet(s.parse().unwrap())
    }

    #[test]
    fn accepted_forms_and_what_they_mean() {
        let cases = [
            ("0", inet("127.0.0.1:0")),
            ("8080", inet("127.0.0.1:8080")),
            ("127.0.0.1:0", inet("127.0.0.1:0")),
            ("0.0.0.0:80", inet("0.0.0.0:80")),
            ("[::1]:0", inet("[::1]:0")),
            ("[::]:8080", inet("[::]:8080")),
            ("/run/x.sock", Address::Unix("/run/x.sock".into())),
            ("./x.sock", Address::Unix("./x.sock".into())),
            ("../x.sock", Address::Unix("../x.sock".into())),
            ("@name", Address::Abstract(b"name".to_vec())),
        ];
        for (input, want) in cases {
            let got = input
                .parse::<SocketSpec>()
                .unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.address, want, "{input}");
        }
    }

    #[test]
    fn localhost_resolves_to_loopback() {
        let spec: SocketSpec = "localhost:0".parse().unwrap();
        let Address::Inet(a) = spec.address else {
            panic!("not inet")
        };
        assert!(a.ip().is_loopback());
    }

    #[test]
    fn rejected_forms_say_why() {
        for (input, needle) in [
            ("", "empty"),
            ("@", "needs a name"),
            ("65536", "out of range"),
            ("127.0.0.1:", "not a number"),
            ("127.0.0.1:http", "not a number"),
            ("::1:80", "brackets"),
            ("x.sock", "must start with / or ./"),
            (":80", "missing host"),
            ("example.com:80", "unknown host"),
        ] {
            let err = input.parse::<SocketSpec>().unwrap_err();
            assert!(err.to_string().contains(needle), "{input}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn kinds() {
        let unix = SocketSpec::new(Address::Unix("/x".into()));
        assert_eq!(unix.kind(), SocketKind::UnixStream);
        assert_eq!(
            unix.clone().transport(Transport::Datagram).kind(),
            SocketKind::UnixDgram
        );
        assert_eq!(
            unix.transport(Transport::SeqPacket).kind(),
            SocketKind::UnixSeqPacket
        );
        assert_eq!(
            SocketSpec::loopback().transport(Transport::Datagram).kind(),
            SocketKind::Udp
        );
    }

    #[test]
    fn a_kind_that_cannot_be_created_on_the_address_is_refused() {
        for input in [
            "tcp:/x.sock",
            "udp:@app",
            "unix-stream:127.0.0.1:0",
            "fd:/x",
        ] {
            let err = input.parse::<SocketSpec>().unwrap_err();
            assert_eq!(err.exit_code(), 2, "{input}: {err}");
        }
    }

    /// Any address `Display` can print: IPv4/IPv6 (with scope ids), Unix paths with any
    /// characters but NUL, abstract names with any characters.
    fn any_address() -> impl proptest::strategy::Strategy<Value = Address> {
        use proptest::prelude::*;
        prop_oneof![
            any::<(std::net::Ipv4Addr, u16)>()
                .prop_map(|(ip, port)| Address::Inet(SocketAddr::from((ip, port)))),
            any::<(std::net::Ipv6Addr, u16, u32)>().prop_map(|(ip, port, scope)| {
                Address::Inet(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip, port, 0, scope,
                )))
            }),
            "(/|\\./|\\.\\./)[^\\x00]{0,40}".prop_map(|p| Address::Unix(p.into())),
            "[^\\x00]{1,40}".prop_map(|n| Address::Abstract(n.into_bytes())),
        ]
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,64}") {
            let _ = s.parse::<SocketSpec>();
        }

        /// Arbitrary Unicode, control characters and address-like noise: an address or an
        /// error with exit code 2 and a one-line message naming the input, never a panic.
        #[test]
        fn arbitrary_input_is_an_address_or_a_one_line_usage_error(
            s in proptest::prop_oneof![
                proptest::arbitrary::any::<String>(),
                "[0-9a-fA-F:.\\[\\]@/%x -]{0,48}",
                "[\\x00-\\x1f\\x7f:0-9]{0,16}",
            ]
        ) {
            match s.parse::<SocketSpec>() {
                Ok(spec) => {
                    // Whatever was accepted prints as something that parses to itself.
                    let again: SocketSpec = spec.address.to_string().parse().unwrap();
                    proptest::prop_assert_eq!(again.address, spec.address);
                }
                Err(e) => {
                    proptest::prop_assert_eq!(e.exit_code(), 2);
                    let msg = e.to_string();
                    proptest::prop_assert!(!msg.contains('\n'), "{}", msg);
                    proptest::prop_assert!(msg.starts_with("invalid listen address"), "{}", msg);
                }
            }
        }

        /// `Display` then `FromStr` is the identity on addresses.
        #[test]
        fn display_parse_round_trip(address in any_address()) {
            let printed = address.to_string();
            let parsed: SocketSpec = printed.parse().map_err(|e| {
                proptest::test_runner::TestCaseError::fail(format!("{printed:?}: {e}"))
            })?;
            proptest::prop_assert_eq!(parsed.address, address);
        }

        /// A spec's `Display` (`kind:address`, as errors and `--format json` show it) parses
        /// back to the same address and transport, so a user can copy it into `-l`.
        #[test]
        fn spec_display_parse_round_trip(
            address in any_address(),
            transport in proptest::prop_oneof![
                proptest::strategy::Just(Transport::Stream),
                proptest::strategy::Just(Transport::Datagram),
                proptest::strategy::Just(Transport::SeqPacket),
            ],
        ) {
            let spec = SocketSpec::new(address).transport(transport);
            proptest::prop_assume!(spec.kind() != SocketKind::Socket); // inet seqpacket
            let printed = spec.to_string();
            let parsed: SocketSpec = printed.parse().map_err(|e| {
                proptest::test_runner::TestCaseError::fail(format!("{printed:?}: {e}"))
            })?;
            proptest::prop_assert_eq!(parsed, spec);
        }

        #[test]
        fn every_port_round_trips(port: u16, v6: bool) {
            let input = if v6 { format!("[::1]:{port}") } else { format!("127.0.0.1:{port}") };
            let spec: SocketSpec = input.parse().unwrap();
            proptest::prop_assert_eq!(spec.to_string(), format!("tcp:{input}"));
        }
    }
}
