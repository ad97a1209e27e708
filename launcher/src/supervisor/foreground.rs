//! The foreground policy (`sd-launch --foreground`): forward signals to the daemon and end
//! with its exit status.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::{Event, FORWARDED, Key, Policy, STOPPING, Signals, Watch, run};
use crate::Launched;
use crate::error::Error;

/// Forward every signal of `signals` to `daemon` until it exits, and return its exit status.
/// A daemon that has not exited `stop_timeout` after a forwarded SIGTERM, SIGINT or SIGQUIT
/// gets SIGKILL (systemd's `TimeoutStopSec=`; `sd-launch --stop-timeout`). At the end every
/// process left in the daemon's process group is killed.
///
/// ```
/// use std::time::Duration;
/// use sd_launch::supervisor::{self, Signals};
/// let signals = Signals::block()?;
/// let mut daemon = sd_launch::Launch::new("sh").args(["-c", "exit 3"]).spawn()?;
/// let status = supervisor::foreground(&signals, &mut daemon, Duration::from_secs(1))?;
/// assert_eq!(supervisor::exit_code(status), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn foreground(
    signals: &Signals,
    daemon: &mut Launched,
    stop_timeout: Duration,
) -> Result<ExitStatus, Error> {
    let mut policy = Foreground {
        daemon,
        stop_timeout,
        kill_at: None,
    };
    let status = run(Some(signals), &mut policy)?;
    let _ = policy.daemon.child_mut().kill(); // the rest of its process group
    Ok(status)
}

struct Foreground<'a> {
    daemon: &'a mut Launched,
    stop_timeout: Duration,
    kill_at: Option<Instant>,
}

impl Policy for Foreground<'_> {
    type Output = ExitStatus;

    fn watch(&self, watch: &mut Watch) {
        let child = self.daemon.child();
        if let Some(fd) = child.pidfd() {
            watch.add(Key::Child(child.pid()), fd);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.kill_at
    }

    fn handle(&mut self, event: Event) -> Result<Option<ExitStatus>, Error> {
        let os = |context| move |source| Error::Os { context, source };
        let child = self.daemon.child_mut();
        match event {
            Event::Signal(sig) if FORWARDED.contains(&sig) => {
                tracing::debug!("forwarding signal {sig} to pid {}", child.pid());
                child.forward(sig).map_err(os("forward a signal"))?;
                if STOPPING.contains(&sig) && self.kill_at.is_none() {
                    self.kill_at = Some(Instant::now() + self.stop_timeout);
                }
                Ok(None)
            }
            Event::Signal(_) => Ok(None),
            Event::Readable(_) => child.try_wait().map_err(os("wait for the daemon")),
            Event::Deadline => {
                tracing::warn!(
                    "{} (pid {}) still running {:?} after the stop signal: sending SIGKILL",
                    self.daemon.program(),
                    self.daemon.pid(),
                    self.stop_timeout
                );
                self.daemon
                    .child_mut()
                    .kill()
                    .map(Some)
                    .map_err(os("kill the daemon"))
            }
        }
    }
}
