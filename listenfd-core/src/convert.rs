//! Typed hand-out into std types. Each method checks what the fd is first (family, type,
//! listening or not) and returns [`Error::WrongType`] naming what it found, leaving the fd in
//! the [`ListenFds`] so it can be taken as another type.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

use crate::error::Error;
use crate::fds::{Expect, ListenFds, Which};

impl ListenFds {
    /// Take a listening TCP socket (IPv4 or IPv6). A connected TCP socket (inetd style) is
    /// refused: see [`ListenFds::tcp_stream`].
    ///
    /// ```
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if !fds.is_empty() {
    ///     let listener: std::net::TcpListener = fds.tcp_listener(0)?;
    ///     # drop(listener);
    /// }
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn tcp_listener<'a>(&mut self, which: impl Into<Which<'a>>) -> Result<TcpListener, Error> {
        Ok(self
            .take_as(which.into(), Expect::TcpListener, |_| Ok(()))?
            .into())
    }

    /// Take a connected TCP socket (an accepted connection, systemd `Accept=yes` style).
    ///
    /// ```
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(conn) = fds.tcp_stream(0) {
    ///     println!("peer {}", conn.peer_addr()?);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tcp_stream<'a>(&mut self, which: impl Into<Which<'a>>) -> Result<TcpStream, Error> {
        Ok(self
            .take_as(which.into(), Expect::TcpStream, |_| Ok(()))?
            .into())
    }

    /// Take a UDP socket (IPv4 or IPv6).
    ///
    /// ```
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(sock) = fds.udp_socket("dns") {
    ///     println!("UDP on {}", sock.local_addr()?);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn udp_socket<'a>(&mut self, which: impl Into<Which<'a>>) -> Result<UdpSocket, Error> {
        Ok(self
            .take_as(which.into(), Expect::UdpSocket, |_| Ok(()))?
            .into())
    }

    /// Take a listening Unix stream socket.
    ///
    /// ```
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(listener) = fds.unix_listener("control") {
    ///     println!("Unix socket {:?}", listener.local_addr()?);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unix_listener<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<UnixListener, Error> {
        Ok(self
            .take_as(which.into(), Expect::UnixListener, |_| Ok(()))?
            .into())
    }

    /// Take a connected Unix stream socket.
    ///
    /// ```
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(conn) = fds.unix_stream(0) {
    ///     # drop(conn);
    /// }
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn unix_stream<'a>(&mut self, which: impl Into<Which<'a>>) -> Result<UnixStream, Error> {
        Ok(self
            .take_as(which.into(), Expect::UnixStream, |_| Ok(()))?
            .into())
    }

    /// Take a Unix datagram socket.
    ///
    /// ```
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(sock) = fds.unix_datagram("log") {
    ///     # drop(sock);
    /// }
    /// # Ok::<(), listenfd_core::Error>(())
    /// ```
    pub fn unix_datagram<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<UnixDatagram, Error> {
        Ok(self
            .take_as(which.into(), Expect::UnixDatagram, |_| Ok(()))?
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn tcp_listener() -> OwnedFd {
        TcpListener::bind("127.0.0.1:0").unwrap().into()
    }

    #[test]
    fn wrong_type_leaves_the_fd_available() {
        let mut fds = ListenFds::from_owned(vec![(tcp_listener(), "http")]);
        let err = fds.udp_socket(0).unwrap_err();
        assert!(
            matches!(
                err,
                Error::WrongType {
                    expected: "a UDP socket",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("is a listening TCP socket (127.0.0.1:"),
            "{err}"
        );
        assert!(!fds.is_taken(0));
        let listener = fds.tcp_listener("http").unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
        assert!(matches!(fds.tcp_listener(0), Err(Error::Taken { .. })));
    }

    #[test]
    fn connected_socket_is_not_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut fds = ListenFds::from_owned(vec![(client.into(), "conn")]);
        let err = fds.tcp_listener(0).unwrap_err();
        assert!(err.to_string().contains("accepted connection"), "{err}");
        assert!(err.to_string().contains("tcp_stream"), "{err}");
        let stream = fds.tcp_stream("conn").unwrap();
        assert_eq!(stream.peer_addr().unwrap(), listener.local_addr().unwrap());
    }

    /// The error of taking `fd` with `take`, and that the fd is still there afterwards.
    fn refusal(fd: OwnedFd, take: impl FnOnce(&mut ListenFds) -> Result<OwnedFd, Error>) -> String {
        let mut fds = ListenFds::from_owned(vec![(fd, "x")]);
        let err = take(&mut fds).expect_err("a mismatch is refused");
        assert!(matches!(err, Error::WrongType { .. }), "{err}");
        assert!(!fds.is_taken(0), "a refused fd stays available");
        err.to_string()
    }

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        let mut ends = [0; 2];
        // SAFETY: `ends` has room for the two fds socketpair writes.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                ends.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        // SAFETY: socketpair just returned these two fds to us; nothing else owns them.
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) }
    }

    #[test]
    fn a_udp_socket_for_a_tcp_taker_is_called_a_datagram_socket_not_a_connection() {
        for want_listener in [true, false] {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap().into();
            let msg = refusal(udp, |fds| {
                if want_listener {
                    fds.tcp_listener(0).map(Into::into)
                } else {
                    fds.tcp_stream(0).map(Into::into)
                }
            });
            assert!(msg.contains("is a UDP socket (127.0.0.1:"), "{msg}");
            assert!(!msg.contains("accepted connection"), "{msg}");
            assert!(
                msg.contains("a datagram socket (UDP) has no connections"),
                "{msg}"
            );
            assert!(msg.contains("drop --datagram"), "{msg}");
            assert!(msg.contains("ListenStream="), "{msg}");
            assert!(
                msg.contains("udp_socket"),
                "says how to take what it is: {msg}"
            );
        }
    }

    #[test]
    fn a_unix_datagram_socket_for_a_stream_taker_is_called_a_datagram_socket() {
        let msg = refusal(UnixDatagram::unbound().unwrap().into(), |fds| {
            fds.unix_listener(0).map(Into::into)
        });
        assert!(msg.contains("is a Unix dgram socket"), "{msg}");
        assert!(!msg.contains("accepted connection"), "{msg}");
        assert!(msg.contains("drop --datagram"), "{msg}");
        assert!(msg.contains("unix_datagram"), "{msg}");
    }

    #[test]
    fn a_seqpacket_socket_for_a_stream_taker_is_called_sequential_packet() {
        let (a, _b) = seqpacket_pair();
        let msg = refusal(a, |fds| fds.unix_listener(0).map(Into::into));
        assert!(
            msg.contains("is a connected Unix seqpacket socket"),
            "{msg}"
        );
        assert!(!msg.contains("accepted connection"), "{msg}");
        assert!(msg.contains("sequential-packet"), "{msg}");
        assert!(msg.contains("drop --seqpacket"), "{msg}");
        assert!(msg.contains("take_fd"), "{msg}");
    }

    #[test]
    fn a_stream_socket_for_a_datagram_taker_says_to_pass_a_datagram_socket() {
        let msg = refusal(tcp_listener(), |fds| fds.udp_socket(0).map(Into::into));
        assert!(msg.contains("is a listening TCP socket"), "{msg}");
        assert!(msg.contains("stream socket"), "{msg}");
        assert!(msg.contains("--datagram"), "{msg}");
        assert!(msg.contains("ListenDatagram="), "{msg}");
        assert!(msg.contains("tcp_listener"), "{msg}");
        assert!(!msg.contains("drop --datagram"), "{msg}");
    }

    #[test]
    fn a_unix_socket_for_a_tcp_taker_says_it_is_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        let msg = refusal(l.into(), |fds| fds.tcp_listener(0).map(Into::into));
        assert!(msg.contains("is a listening Unix stream socket ("), "{msg}");
        assert!(msg.contains("a Unix socket, not an IP one"), "{msg}");
        assert!(msg.contains("127.0.0.1:"), "suggests an IP address: {msg}");
        assert!(msg.contains("unix_listener"), "{msg}");
        assert!(!msg.contains("accepted connection"), "{msg}");
    }

    #[test]
    fn a_tcp_socket_for_a_unix_taker_says_it_is_an_ip_socket() {
        let msg = refusal(tcp_listener(), |fds| fds.unix_listener(0).map(Into::into));
        assert!(msg.contains("is a listening TCP socket"), "{msg}");
        assert!(msg.contains("an IP socket, not a Unix one"), "{msg}");
        assert!(msg.contains("tcp_listener"), "{msg}");
    }

    #[test]
    fn a_listener_for_a_connection_taker_says_to_accept_on_it() {
        let msg = refusal(tcp_listener(), |fds| fds.tcp_stream(0).map(Into::into));
        assert!(msg.contains("is a listening TCP socket"), "{msg}");
        assert!(msg.contains("passed a listening socket"), "{msg}");
        assert!(msg.contains("tcp_listener"), "{msg}");
    }

    #[test]
    fn taking_by_name_takes_same_named_fds_in_order_and_leaves_others() {
        let a = tcp_listener();
        let b = tcp_listener();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a_raw, b_raw) = (a.as_raw_fd(), b.as_raw_fd());
        let mut fds = ListenFds::from_owned(vec![(a, "web"), (u.into(), "dns"), (b, "web")]);
        assert_eq!(fds.tcp_listener("web").unwrap().as_raw_fd(), a_raw);
        assert_eq!(fds.tcp_listener("web").unwrap().as_raw_fd(), b_raw);
        assert!(matches!(fds.tcp_listener("web"), Err(Error::Taken { .. })));
        assert!(matches!(
            fds.tcp_listener("nope"),
            Err(Error::NoSuchFd { .. })
        ));
        assert!(matches!(fds.tcp_listener(7), Err(Error::NoSuchFd { .. })));
        assert!(fds.udp_socket("dns").is_ok());
    }

    #[test]
    fn unix_kinds() {
        let (a, b) = UnixStream::pair().unwrap();
        let d = UnixDatagram::unbound().unwrap();
        let mut fds =
            ListenFds::from_owned(vec![(a.into(), "a"), (b.into(), "b"), (d.into(), "d")]);
        assert!(fds.unix_listener(0).is_err());
        assert!(fds.unix_datagram(0).is_err());
        fds.unix_stream(0).unwrap();
        fds.take_fd(1).unwrap();
        assert!(fds.unix_stream("d").is_err());
        fds.unix_datagram("d").unwrap();
    }
}
