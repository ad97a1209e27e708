//! Async hand-out into tokio types (cargo feature `tokio`).
//!
//! Each method checks the fd like its std counterpart, checks that it is called inside a tokio
//! runtime (tokio would panic otherwise), sets `O_NONBLOCK` (tokio needs it and passed fds are
//! usually blocking: forgetting it makes accepts hang the runtime), and only then takes the fd.
//! Any failure before the final registration leaves the fd in the [`ListenFds`].

use std::os::fd::{OwnedFd, RawFd};

use crate::error::Error;
use crate::fds::{Expect, ListenFds, Which};

/// Runtime check and `O_NONBLOCK`, run before the fd leaves the `ListenFds`.
fn prepare(fd: RawFd) -> Result<(), Error> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::NoRuntime { fd });
    }
    // SAFETY: F_GETFL/F_SETFL only read and change the file status flags of the fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::NonBlocking {
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn register<T>(fd: RawFd, result: std::io::Result<T>) -> Result<T, Error> {
    result.map_err(|source| Error::Register { fd, source })
}

impl ListenFds {
    fn take_nonblocking(
        &mut self,
        which: Which<'_>,
        expect: Expect,
    ) -> Result<(RawFd, OwnedFd), Error> {
        let fd = self.take_as(which, expect, prepare)?;
        Ok((std::os::fd::AsRawFd::as_raw_fd(&fd), fd))
    }

    /// Take a listening TCP socket as a [`tokio::net::TcpListener`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), listenfd_core::Error> {
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if !fds.is_empty() {
    ///     let listener = fds.tokio_tcp_listener(0)?;
    ///     # drop(listener);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tokio_tcp_listener<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<tokio::net::TcpListener, Error> {
        let (raw, fd) = self.take_nonblocking(which.into(), Expect::TcpListener)?;
        register(raw, tokio::net::TcpListener::from_std(fd.into()))
    }

    /// Take a connected TCP socket as a [`tokio::net::TcpStream`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), listenfd_core::Error> {
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(conn) = fds.tokio_tcp_stream(0) {
    ///     # drop(conn);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tokio_tcp_stream<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<tokio::net::TcpStream, Error> {
        let (raw, fd) = self.take_nonblocking(which.into(), Expect::TcpStream)?;
        register(raw, tokio::net::TcpStream::from_std(fd.into()))
    }

    /// Take a UDP socket as a [`tokio::net::UdpSocket`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), listenfd_core::Error> {
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(sock) = fds.tokio_udp_socket("dns") {
    ///     # drop(sock);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tokio_udp_socket<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<tokio::net::UdpSocket, Error> {
        let (raw, fd) = self.take_nonblocking(which.into(), Expect::UdpSocket)?;
        register(raw, tokio::net::UdpSocket::from_std(fd.into()))
    }

    /// Take a listening Unix stream socket as a [`tokio::net::UnixListener`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), listenfd_core::Error> {
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(listener) = fds.tokio_unix_listener("control") {
    ///     # drop(listener);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tokio_unix_listener<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<tokio::net::UnixListener, Error> {
        let (raw, fd) = self.take_nonblocking(which.into(), Expect::UnixListener)?;
        register(raw, tokio::net::UnixListener::from_std(fd.into()))
    }

    /// Take a connected Unix stream socket as a [`tokio::net::UnixStream`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), listenfd_core::Error> {
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(conn) = fds.tokio_unix_stream(0) {
    ///     # drop(conn);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tokio_unix_stream<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<tokio::net::UnixStream, Error> {
        let (raw, fd) = self.take_nonblocking(which.into(), Expect::UnixStream)?;
        register(raw, tokio::net::UnixStream::from_std(fd.into()))
    }

    /// Take a Unix datagram socket as a [`tokio::net::UnixDatagram`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), listenfd_core::Error> {
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// if let Ok(sock) = fds.tokio_unix_datagram("log") {
    ///     # drop(sock);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tokio_unix_datagram<'a>(
        &mut self,
        which: impl Into<Which<'a>>,
    ) -> Result<tokio::net::UnixDatagram, Error> {
        let (raw, fd) = self.take_nonblocking(which.into(), Expect::UnixDatagram)?;
        register(raw, tokio::net::UnixDatagram::from_std(fd.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn outside_a_runtime_is_an_error_and_keeps_the_fd() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut fds = ListenFds::from_owned(vec![(l.into(), "http")]);
        assert!(matches!(
            fds.tokio_tcp_listener(0),
            Err(Error::NoRuntime { .. })
        ));
        assert!(!fds.is_taken(0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_udp_socket_for_tokio_tcp_listener_is_called_a_datagram_socket() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut fds = ListenFds::from_owned(vec![(udp.into(), "dns")]);
        let err = fds.tokio_tcp_listener("dns").unwrap_err().to_string();
        assert!(err.contains("is a UDP socket (127.0.0.1:"), "{err}");
        assert!(err.contains("drop --datagram"), "{err}");
        assert!(err.contains("`tokio_udp_socket`"), "{err}");
        assert!(!err.contains("accepted connection"), "{err}");
        assert!(!fds.is_taken(0));
        fds.tokio_udp_socket("dns").unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn blocking_passed_listener_becomes_nonblocking_and_serves() {
        // A blocking listener, as launchers pass them.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        let mut fds = ListenFds::from_owned(vec![(std_listener.into(), "http")]);
        let listener = fds.tokio_tcp_listener("http").unwrap();
        // SAFETY: F_GETFL only reads flags of an fd the listener owns.
        let flags =
            unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&listener), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);

        // On a current-thread runtime a blocking accept would hang this test forever.
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(b"hi").await.unwrap();
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hi");
        server.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unix_listener_and_datagram() {
        let dir = std::env::temp_dir().join(format!("listenfd-tokio-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let l = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let mut fds = ListenFds::from_owned(vec![(l.into(), "ctl"), (d.into(), "log")]);
        assert!(fds.tokio_unix_datagram("ctl").is_err());
        let listener = fds.tokio_unix_listener("ctl").unwrap();
        let client = tokio::net::UnixStream::connect(&dir).await.unwrap();
        let (_conn, _) = listener.accept().await.unwrap();
        drop(client);
        fds.tokio_unix_datagram("log").unwrap();
        std::fs::remove_file(&dir).unwrap();
    }
}
