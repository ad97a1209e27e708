//! The foreground policy (`sd-launch --foreground`): forward signals to the daemon and end
//! with its exit status.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::{Event, FORWARDED, Key, Policy, STOPPING, Signals, Watch, run};
use crate::error::Error;
use crate::process::Child;

/// Forward every signal of `signals` to `child` until it exits, and return its exit status;
/// `SIGKILL` to it `stop_timeout` after a forwarded stop signal. At the end every process
/// left in its process group is killed.
pub(crate) fn foreground(
    signals: &Signals,
    child: &mut Child,
    program: &str,
    stop_timeout: Duration,
) -> Result<ExitStatus, Error> {
    let mut policy = Foreground {
        child,
        program,
        stop_timeout,
        kill_at: None,
    };
    let status = run(Some(signals), &mut policy)?;
    let _ = policy.child.kill(); // the rest of its process group
    Ok(status)
}

struct Foreground<'a> {
    child: &'a mut Child,
    program: &'a str,
    stop_timeout: Duration,
    kill_at: Option<Instant>,
}

impl Policy for Foreground<'_> {
    type Output = ExitStatus;

    fn watch(&self, watch: &mut Watch) {
        if let Some(fd) = self.child.pidfd() {
            watch.add(Key::Child(self.child.pid()), fd);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.kill_at
    }

    fn handle(&mut self, event: Event) -> Result<Option<ExitStatus>, Error> {
        let os = |context| move |source| Error::Os { context, source };
        let child = &mut *self.child;
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
                    self.program,
                    child.pid(),
                    self.stop_timeout
                );
                child.kill().map(Some).map_err(os("kill the daemon"))
            }
        }
    }
}
