//! The supervisor: the launcher's one event loop, and the policies it runs.
//!
//! Its loop (`run`) waits on everything a mode can wait for, in one `poll`: the signals
//! ([`Signals`], a `signalfd`), the daemons' pidfds, the private notify socket, listening
//! sockets, a stop channel, and one deadline (the earliest the policy cares about). It never
//! sleeps for an interval: it wakes when something happens or the deadline comes. The few
//! fds of a turn are named anew each turn (`Policy::watch`); a policy with many fds whose
//! interest rarely changes (the proxy's connections) keeps them in a `Set` instead, an
//! `epoll` set it changes only where an interest changed, which the `poll` waits on as one
//! fd among the others: the wait does not grow with the connections (no array of them is
//! built, copied into the kernel and scanned each turn), and each ready fd of the set is
//! handed to the policy as its own event, saying for what it is ready (`Ready`).
//!
//! Decision: the other fds stay in the `poll` of each turn rather than in one epoll set
//! for everything (which would save the proxy one syscall per busy turn). An epoll set
//! knows an fd by its number: a policy's fd closed and its number reused under the same
//! key (a readiness probe's socket, a restart's notify socket) would silently stop being
//! watched, or be watched twice. Naming the few fds anew each turn cannot get that wrong.
//!
//! What to do with each event is the policy's:
//! * `ready`: wait for `READY=1` from the daemon's process tree (or its exit, a stop
//!   signal, the deadline);
//! * `foreground`: forward signals, end with the daemon's status, `SIGKILL` after the stop
//!   timeout ([`Launched::supervise`](crate::Launched::supervise));
//! * [`restart`](crate::restart): a daemon on sockets that outlive it, replaced without
//!   refusing a connection (its policy is built on the handles, so it sits above them);
//! * [`accept`](crate::accept): one daemon per connection (likewise);
//! * [`proxy`](crate::proxy): connections forwarded to a daemon that listens on its own
//!   (likewise);
//! * [`stack`](crate::stack): several daemons at once, each restarted or ending the stack
//!   (likewise; a proxied daemon's proxy runs the proxy policy in a thread of its own).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    /// An fd of the policy's [`Set`] (a proxied connection's socket): ready as it says.
    Conn(Ready),
    /// The proxy of a stack's daemon `i`: its serving has ended.
    Proxy(usize),
    /// The proxy's private backend directory: a socket file appeared in it.
    Backend,
}

/// What an fd of a [`Set`] is waited for, or is ready for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Interest {
    /// Readable (for readiness: or at its end, or in error: a read will tell).
    pub(crate) read: bool,
    /// Writable (for readiness: or in error: a write will tell).
    pub(crate) write: bool,
}

impl Interest {
    /// Not waited for: not in the set.
    pub(crate) const NONE: Interest = Interest {
        read: false,
        write: false,
    };

    fn epoll(self) -> u32 {
        let mut events = 0;
        if self.read {
            events |= libc::EPOLLIN as u32;
        }
        if self.write {
            events |= libc::EPOLLOUT as u32;
        }
        events
    }

    /// What `epoll` events say an fd is ready for: an end or an error is both (a read or
    /// a write, whichever the policy wanted, will tell).
    fn ready(events: u32) -> Interest {
        let either = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
        Interest {
            read: events & (libc::EPOLLIN as u32 | either) != 0,
            write: events & (libc::EPOLLOUT as u32 | either) != 0,
        }
    }
}

/// An fd of a [`Set`] is ready: the token it was added with, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    pub(crate) token: u64,
    pub(crate) ready: Interest,
}

/// Fds that stay in the loop's wait from turn to turn, each with a token of the policy's:
/// an `epoll` set (level-triggered), changed only where an interest changes. The policy
/// owns it and adds it to its [`Watch`] each turn ([`Watch::add_set`]); every fd of it that
/// is ready is an [`Event::Readable`] of [`Key::Conn`]. An fd leaves the set when it is
/// closed (every copy of it: we never duplicate those sockets, so their close is the
/// removal), or when its interest becomes [`Interest::NONE`]: an fd waited for nothing is
/// not left in the set, where a hang-up would still wake the loop, every turn.
#[derive(Debug)]
pub(crate) struct Set {
    epoll: OwnedFd,
}

impl Set {
    pub(crate) fn new() -> io::Result<Set> {
        // SAFETY: epoll_create1 takes no memory of ours; it returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd is new and ours alone.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Set { epoll })
    }

    /// Wait for `fd` as `new` says, with `token`, where it was waited for as `old` (`NONE`:
    /// it is not in the set): one `epoll_ctl`, or none when nothing changes.
    pub(crate) fn change(
        &self,
        fd: RawFd,
        token: u64,
        old: Interest,
        new: Interest,
    ) -> io::Result<()> {
        let op = match (old == Interest::NONE, new == Interest::NONE) {
            _ if old == new => return Ok(()),
            (true, _) => libc::EPOLL_CTL_ADD,
            (_, true) => libc::EPOLL_CTL_DEL,
            _ => libc::EPOLL_CTL_MOD,
        };
        let mut event = libc::epoll_event {
            events: new.epoll(),
            u64: token,
        };
        // SAFETY: epoll_ctl reads the event we own (ignored by DEL), for fds we hold.
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The ready fds of the set `epoll`, at most `events.len()`, without waiting.
fn ready_in(epoll: RawFd, events: &mut [libc::epoll_event]) -> io::Result<&[libc::epoll_event]> {
    let len = events.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: epoll_wait writes at most `len` events into the array we own.
    let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), len, 0) };
    match usize::try_from(n) {
        Ok(n) => Ok(&events[..n]),
        Err(_) => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(&[]); // the set stays ready: the next turn has it
            }
            Err(e)
        }
    }
}

/// How many ready fds of a [`Set`] one turn takes at most (the others wait for the next).
const SET_EVENTS: usize = 256;

/// One thing that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A blocked signal arrived.
    Signal(i32),
    /// An fd the policy watches is readable (or writable, when it asked for that; an fd of
    /// a [`Set`]: ready as [`Key::Conn`] says).
    Readable(Key),
    /// The policy's deadline has passed.
    Deadline,
}

/// What a pollfd of the loop stands for.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The signalfd.
    Signals,
    Key(Key),
    /// A policy's [`Set`]: its ready fds are the events.
    Set,
}

/// The fds one turn of the loop waits on.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    fds: Vec<libc::pollfd>,
    sources: Vec<Source>,
}

impl Watch {
    /// Wake the loop when `fd` is readable, with `key`.
    pub(crate) fn add(&mut self, key: Key, fd: RawFd) {
        self.push(key, fd);
    }

    /// Wake the loop when `fd` is writable, with `key` (reported as readable).
    pub(crate) fn add_writable(&mut self, key: Key, fd: RawFd) {
        self.push(key, fd);
        self.fds.last_mut().expect("just pushed").events = libc::POLLOUT;
    }

    /// Wake the loop when fds of `set` are ready: each is an event of its own, handed to the
    /// policy before the other events of the turn. (First in the `poll` too: when it is
    /// ready, which is most turns under load, `poll` returns without queueing itself on
    /// every other fd, and then taking itself off again.)
    pub(crate) fn add_set(&mut self, set: &Set) {
        self.fds.insert(
            0,
            libc::pollfd {
                fd: set.epoll.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        );
        self.sources.insert(0, Source::Set);
    }

    fn push(&mut self, source: impl Into<Source>, fd: RawFd) {
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        self.sources.push(source.into());
    }
}

impl From<Key> for Source {
    fn from(key: Key) -> Source {
        Source::Key(key)
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
    let mut events = Vec::new();
    loop {
        watch.fds.clear();
        watch.sources.clear();
        if let Some(signals) = signals {
            watch.push(Source::Signals, signals.raw_fd());
        }
        policy.watch(&mut watch);
        let deadline = policy.deadline();
        crate::process::poll(&mut watch.fds, deadline).map_err(os("wait for events"))?;
        for (pfd, source) in watch.fds.iter().zip(&watch.sources) {
            if pfd.revents == 0 {
                continue;
            }
            let done = match (source, signals) {
                (Source::Key(key), _) => policy.handle(Event::Readable(*key))?,
                (Source::Signals, Some(signals)) => {
                    let mut done = None;
                    while done.is_none()
                        && let Some(sig) = signals.take().map_err(os("read signals"))?
                    {
                        done = policy.handle(Event::Signal(sig))?;
                    }
                    done
                }
                (Source::Signals, None) => None,
                (Source::Set, _) => {
                    // Allocated once, at the first turn a set is ready.
                    events.resize(SET_EVENTS, libc::epoll_event { events: 0, u64: 0 });
                    let mut done = None;
                    for event in ready_in(pfd.fd, &mut events).map_err(os("wait for events"))? {
                        let ready = Ready {
                            token: event.u64,
                            ready: Interest::ready(event.events),
                        };
                        done = policy.handle(Event::Readable(Key::Conn(ready)))?;
                        if done.is_some() {
                            break;
                        }
                    }
                    done
                }
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
