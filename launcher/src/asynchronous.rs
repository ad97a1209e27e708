//! Async waits for tokio tests (feature `tokio`): the same launch and the same handle, with
//! the blocking waits moved off the runtime's threads.

use std::io;
use std::process::ExitStatus;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::{Error, Launch, Launched};

impl Launch {
    /// [`spawn`](Launch::spawn) for async tests: the spawn and the readiness wait run on
    /// tokio's blocking pool, so the runtime goes on meanwhile (a current-thread runtime
    /// included).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut daemon = sd_launch::Launch::new("sh").args(["-c", "exit 4"]).spawn_async().await?;
    /// assert_eq!(daemon.wait_async().await?.code(), Some(4));
    /// # Ok(()) }
    /// ```
    pub async fn spawn_async(&self) -> Result<Launched, Error> {
        let launch = self.clone();
        tokio::task::spawn_blocking(move || launch.spawn())
            .await
            .map_err(|e| Error::Os {
                context: "run the spawn on tokio's blocking pool",
                source: io::Error::other(e),
            })?
    }
}

impl Launched {
    /// [`wait`](Launched::wait) for async tests: awaits the daemon's exit on its pidfd
    /// (no thread blocked), then reaps it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut daemon = sd_launch::Launch::new("sleep").arg("30").spawn_async().await?;
    /// daemon.signal(libc::SIGTERM)?;
    /// let status = daemon.wait_async().await?;
    /// assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
    /// # Ok(()) }
    /// ```
    pub async fn wait_async(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let Some(fd) = self.child().pidfd() else {
            return self.wait();
        };
        // SAFETY: the pidfd stays open and the same while `readable` lives: `self` owns it
        // and is borrowed mutably for this whole function, and it is only closed on reap,
        // which comes after `readable` is dropped.
        let readable = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let _ready = readable.readable().await?;
        drop(readable);
        self.wait()
    }
}
