//! The readiness policy: wait until the daemon's process tree sends `READY=1`.

use std::process::ExitStatus;
use std::time::Instant;

use super::notify::{NotifySocket, is_in_tree, is_ready};
use super::{Event, Key, Policy, STOPPING, Signals, Watch, run};
use crate::error::Error;
use crate::process::Child;

/// Why a daemon did not become ready.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// It exited first.
    Exited(ExitStatus),
    /// The deadline passed.
    Timeout,
    /// A stop signal (SIGTERM, SIGINT, SIGQUIT) came while we waited.
    Interrupted(i32),
    /// The wait itself failed.
    Failed(Error),
}

/// Wait until `child` or one of its descendants sends `READY=1` on `notify`, `child` exits,
/// `deadline` passes or (with `signals`) a stop signal arrives; other forwarded signals go to
/// the child meanwhile. Messages from other processes are ignored.
pub(crate) fn wait_ready(
    signals: Option<&Signals>,
    notify: &NotifySocket,
    child: &mut Child,
    deadline: Instant,
) -> Result<(), NotReady> {
    let mut policy = WaitReady {
        notify,
        child,
        deadline,
    };
    match run(signals, &mut policy) {
        Ok(outcome) => outcome,
        Err(e) => Err(NotReady::Failed(e)),
    }
}

struct WaitReady<'a> {
    notify: &'a NotifySocket,
    child: &'a mut Child,
    deadline: Instant,
}

impl Policy for WaitReady<'_> {
    type Output = Result<(), NotReady>;

    fn watch(&self, watch: &mut Watch) {
        watch.add(Key::Notify, self.notify.raw_fd());
        if let Some(fd) = self.child.pidfd() {
            watch.add(Key::Child(self.child.pid()), fd);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }

    fn handle(&mut self, event: Event) -> Result<Option<Self::Output>, Error> {
        let os = |context| move |source| Error::Os { context, source };
        Ok(match event {
            Event::Readable(Key::Notify) => {
                if ready_message(self.notify, self.child.pid()).map_err(os("read notifications"))? {
                    Some(Ok(()))
                } else {
                    None
                }
            }
            Event::Readable(_) => self
                .child
                .try_wait()
                .map_err(os("wait for the daemon"))?
                .map(|status| Err(NotReady::Exited(status))),
            Event::Signal(sig) if STOPPING.contains(&sig) => Some(Err(NotReady::Interrupted(sig))),
            Event::Signal(sig) => {
                if super::FORWARDED.contains(&sig) {
                    self.child.forward(sig).map_err(os("forward a signal"))?;
                }
                None
            }
            Event::Deadline => Some(Err(NotReady::Timeout)),
        })
    }
}

/// Read every pending notification; `true` when one from `root`'s tree says `READY=1`.
pub(crate) fn ready_message(notify: &NotifySocket, root: u32) -> std::io::Result<bool> {
    let mut ready = false;
    while let Some((pid, text)) = notify.receive()? {
        let ours = is_in_tree(pid, root as libc::pid_t);
        tracing::debug!(
            "notification from pid {pid}{}: {text:?}",
            if ours {
                ""
            } else {
                " (not the daemon's: ignored)"
            }
        );
        ready |= ours && is_ready(&text);
    }
    Ok(ready)
}
