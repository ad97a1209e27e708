//! The supervisor: the launcher's one event loop, and the policies it runs.
//!
//! Its loop (`run`) waits on everything a mode can wait for, in one `poll`: the signals
//! ([`Signals`], a `signalfd`), the daemons' pidfds, the private notify socket, listening
//! sockets, a stop channel, and one deadline (the earliest the policy cares about). It never
//! sleeps for an interval: it wakes when something happens or the deadline comes. What to do
//! with each event is the policy's:
//! * `ready`: wait for `READY=1` from the daemon's process tree (or its exit, a stop
//!   signal, the deadline);
//! * `foreground`: forward signals, end with the daemon's status, `SIGKILL` after the stop
//!   timeout ([`Launched::supervise`](crate::Launched::supervise));
//! * [`restart`](crate::restart): a daemon on sockets that outlive it, replaced without
//!   refusing a connection (its policy is built on the handles, so it sits above them);
//! * [`accept`](crate::accept): one daemon per connection (likewise);
//! * [`proxy`](crate::proxy): connections forwarded to a daemon that listens on its own
//!   (likewise).

use std::os::fd::RawFd;
use std::time::Instant;

use crate::error::Error;

pub(crate) mod foreground;
pub(crate) mod notify;
pub(crate) mod ready;
pub use ready::Wait;
mod signals;

pub(crate) use signals::STOPPING;
pub use signals::{DEFAULT_STOP_TIMEOUT, FORWARDED, Signals, exit_code};

/// The backoff of a daemon restarted after it exited (`--restart=on-exit`, a stack's
/// `restart = "on-exit"`): the first pause, doubled after each restart up to the last.
pub(crate) const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(10);

/// What woke the loop, as a policy named it in its [`Watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// A daemon's pidfd (by pid): it has exited.
    Child(u32),
    /// The notify socket: a message is waiting.
    Notify,
    /// Listening socket `i`: a connection is waiting.
    Listener(usize),
    /// The stop channel of an acceptor.
    Stop,
    /// The readiness check of daemon `i` (of several waited for at once).
    Ready(usize),
    /// Proxied connection `n` (either of its sockets): it can make progress.
    Conn(u64),
    /// The proxy of a stack's daemon `i`: its serving has ended.
    Proxy(usize),
    /// The proxy's private backend directory: a socket file appeared in it.
    Backend,
}

/// One thing that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A blocked signal arrived.
    Signal(i32),
    /// An fd the policy watches is readable.
    Readable(Key),
    /// The policy's deadline has passed.
    Deadline,
}

/// The fds one turn of the loop waits on.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    fds: Vec<libc::pollfd>,
    keys: Vec<Option<Key>>,
}

impl Watch {
    /// Wake the loop when `fd` is readable, with `key`.
    pub(crate) fn add(&mut self, key: Key, fd: RawFd) {
        self.push(Some(key), fd);
    }

    /// Wake the loop when `fd` is writable, with `key` (reported as readable).
    pub(crate) fn add_writable(&mut self, key: Key, fd: RawFd) {
        self.push(Some(key), fd);
        self.fds.last_mut().expect("just pushed").events = libc::POLLOUT;
    }

    /// Wake the loop when `fd` has any of `events` (`POLLIN`, `POLLOUT`), with `key`
    /// (reported as readable).
    pub(crate) fn add_events(&mut self, key: Key, fd: RawFd, events: libc::c_short) {
        self.push(Some(key), fd);
        self.fds.last_mut().expect("just pushed").events = events;
    }

    fn push(&mut self, key: Option<Key>, fd: RawFd) {
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        self.keys.push(key);
    }
}

/// A mode of the supervisor: what it waits on, until when, and what each event means.
pub(crate) trait Policy {
    /// What the policy ends with.
    type Output;
    /// Add the fds to wait on this turn.
    fn watch(&self, watch: &mut Watch);
    /// The earliest time the policy wants to be woken without an event.
    fn deadline(&self) -> Option<Instant>;
    /// Handle one event; `Some` ends the loop.
    fn handle(&mut self, event: Event) -> Result<Option<Self::Output>, Error>;
}

/// The loop: wait for the next events, hand each to `policy`, until it is done.
pub(crate) fn run<P: Policy>(
    signals: Option<&Signals>,
    policy: &mut P,
) -> Result<P::Output, Error> {
    let os = |context| move |source| Error::Os { context, source };
    let mut watch = Watch::default();
    loop {
        watch.fds.clear();
        watch.keys.clear();
        if let Some(signals) = signals {
            watch.push(None, signals.raw_fd());
        }
        policy.watch(&mut watch);
        let deadline = policy.deadline();
        crate::process::poll(&mut watch.fds, deadline).map_err(os("wait for events"))?;
        for (pfd, key) in watch.fds.iter().zip(&watch.keys) {
            if pfd.revents == 0 {
                continue;
            }
            let done = match (key, signals) {
                (Some(key), _) => policy.handle(Event::Readable(*key))?,
                (None, Some(signals)) => {
                    let mut done = None;
                    while done.is_none()
                        && let Some(sig) = signals.take().map_err(os("read signals"))?
                    {
                        done = policy.handle(Event::Signal(sig))?;
                    }
                    done
                }
                (None, None) => None,
            };
            if let Some(out) = done {
                return Ok(out);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d)
            && let Some(out) = policy.handle(Event::Deadline)?
        {
            return Ok(out);
        }
    }
}
