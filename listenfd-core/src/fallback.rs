//! For daemons that run both ways: use the passed socket when there is one, otherwise bind
//! (so `cargo run` works without a launcher).

use std::fmt;
use std::net::{TcpListener, ToSocketAddrs};

use crate::error::Error;
use crate::fds::{ListenFds, Which};

/// Receive strictly and take the first passed fd as a listening TCP socket; when nothing was
/// passed, bind `addr` instead. Passed fds other than the first are closed: use
/// [`ListenFds::tcp_listener_or_bind`] to keep them.
///
/// An fd that was passed but is not a listening TCP socket is an error, not a reason to bind.
///
/// ```
/// let listener = listenfd_core::tcp_listener_or_bind("127.0.0.1:0")?;
/// assert!(listener.local_addr()?.ip().is_loopback());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn tcp_listener_or_bind<A: ToSocketAddrs + fmt::Debug>(addr: A) -> Result<TcpListener, Error> {
    ListenFds::from_env()?.tcp_listener_or_bind(0, addr)
}

fn bind<A: ToSocketAddrs + fmt::Debug>(addr: A) -> Result<TcpListener, Error> {
    TcpListener::bind(&addr).map_err(|source| Error::Bind {
        addr: format!("{addr:?}"),
        source,
    })
}

impl ListenFds {
    /// Take `which` as a listening TCP socket if any fd was passed, else bind `addr`.
    ///
    /// ```
    /// let mut fds = listenfd_core::Options::new().lenient(true).from_env()?;
    /// let listener = fds.tcp_listener_or_bind("http", "127.0.0.1:0")?;
    /// println!("listening on {}", listener.local_addr()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tcp_listener_or_bind<'a, A: ToSocketAddrs + fmt::Debug>(
        &mut self,
        which: impl Into<Which<'a>>,
        addr: A,
    ) -> Result<TcpListener, Error> {
        if self.is_empty() {
            bind(addr)
        } else {
            self.tcp_listener(which)
        }
    }

    /// Like [`ListenFds::tcp_listener_or_bind`], as a [`tokio::net::TcpListener`]
    /// (non-blocking, inside a runtime).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), listenfd_core::Error> {
    /// let mut fds = listenfd_core::ListenFds::from_env()?;
    /// let listener = fds.tokio_tcp_listener_or_bind(0, "127.0.0.1:0")?;
    /// println!("listening on {:?}", listener.local_addr());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    pub fn tokio_tcp_listener_or_bind<'a, A: ToSocketAddrs + fmt::Debug>(
        &mut self,
        which: impl Into<Which<'a>>,
        addr: A,
    ) -> Result<tokio::net::TcpListener, Error> {
        if !self.is_empty() {
            return self.tokio_tcp_listener(which);
        }
        let label = format!("{addr:?}");
        let listener = bind(addr)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime { fd });
        }
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|source| Error::Bind {
                addr: label,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_when_nothing_was_passed() {
        let l = ListenFds::default()
            .tcp_listener_or_bind(0, "127.0.0.1:0")
            .unwrap();
        assert!(l.local_addr().unwrap().ip().is_loopback());
    }

    #[test]
    fn uses_the_passed_socket_when_there_is_one() {
        let passed = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = passed.local_addr().unwrap();
        let mut fds = ListenFds::from_owned(vec![(passed.into(), "http")]);
        let l = fds.tcp_listener_or_bind("http", "127.0.0.1:0").unwrap();
        assert_eq!(l.local_addr().unwrap(), addr);
    }

    #[test]
    fn a_passed_socket_of_the_wrong_type_is_an_error_not_a_bind() {
        let passed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut fds = ListenFds::from_owned(vec![(passed.into(), "dns")]);
        assert!(matches!(
            fds.tcp_listener_or_bind(0, "127.0.0.1:0"),
            Err(Error::WrongType { .. })
        ));
    }

    #[test]
    fn bind_failure_names_the_address() {
        let err = ListenFds::default()
            .tcp_listener_or_bind(0, "256.0.0.1:80")
            .unwrap_err();
        assert!(err.to_string().contains("256.0.0.1:80"), "{err}");
    }
}
