//! Pure parsing of the `LISTEN_*` variables: plain strings in, a decision out.
//!
//! Nothing here touches the process (no `getenv`, no syscalls), so every row of the protocol
//! can be table-tested, proptested and fuzzed. [`crate::ListenFds::from_env`] feeds this module
//! the real values; [`parse`] is public so tools and tests can ask "what would a receiver make of
//! these values?".
//!
//! The outcome is the one libsystemd's `sd_listen_fds_with_names()` gives (checked against
//! systemd 252 and current `parse-util.c`), modelled for LP64 Linux and a glibc without the C23
//! `0b` handling inside `strtol` (systemd strips `0b`/`0o` itself, so only a *signed* or
//! whitespace-prefixed `0b` form could differ between glibc versions; we reject those).
//!
//! ```
//! use listenfd_core::env::{self, Vars};
//!
//! let vars = Vars { listen_pid: Some("42"), listen_fds: Some("2"), listen_fdnames: Some("http:admin"), ..Vars::default() };
//! let parsed = env::parse(&vars, 42, None, false)?;
//! assert_eq!(parsed.fds(), 3..5);
//! assert_eq!(parsed.name(1), Some("admin"));
//! # Ok::<(), listenfd_core::env::EnvError>(())
//! ```

use std::ops::Range;
use std::os::fd::RawFd;

/// The first fd of the standard protocol (`SD_LISTEN_FDS_START`).
///
/// ```
/// assert_eq!(listenfd_core::env::LISTEN_FDS_START, 3);
/// ```
pub const LISTEN_FDS_START: RawFd = 3;

/// Names of every variable this crate reads (and removes when asked to).
///
/// `LISTEN_FDS_FIRST_FD` is a non-standard extension (systemfd, watchexec) read only in lenient
/// mode; it is removed together with the standard ones so it never leaks to children.
///
/// ```
/// assert!(listenfd_core::env::VARIABLES.contains(&"LISTEN_FDNAMES"));
/// ```
pub const VARIABLES: [&str; 5] = [
    "LISTEN_PID",
    "LISTEN_PIDFDID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
];

/// The raw values of the `LISTEN_*` variables (`None` = unset).
///
/// ```
/// let vars = listenfd_core::env::Vars { listen_pid: Some("1"), ..Default::default() };
/// assert_eq!(vars.listen_fds, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vars<'a> {
    /// `LISTEN_PID`: the pid the fds are meant for.
    pub listen_pid: Option<&'a str>,
    /// `LISTEN_PIDFDID`: the pidfd inode id of that process (systemd >= 259).
    pub listen_pidfdid: Option<&'a str>,
    /// `LISTEN_FDS`: how many fds were passed.
    pub listen_fds: Option<&'a str>,
    /// `LISTEN_FDNAMES`: colon-separated names, backslash-escaped.
    pub listen_fdnames: Option<&'a str>,
    /// `LISTEN_FDS_FIRST_FD`: non-standard first fd (lenient mode only).
    pub listen_fds_first_fd: Option<&'a str>,
}

/// The decision: which fds (possibly none) were passed to us, and their names.
///
/// ```
/// let none = listenfd_core::env::parse(&Default::default(), 1, None, false).unwrap();
/// assert!(none.is_empty());
/// assert_eq!(none.fds(), 3..3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// First passed fd: 3, or `LISTEN_FDS_FIRST_FD` in lenient mode.
    pub first_fd: RawFd,
    /// Number of passed fds; 0 when the variables are not for this process.
    pub count: usize,
    /// One name per passed fd, or `None` when `LISTEN_FDNAMES` is absent (every fd is then
    /// named `"unknown"`; see [`Parsed::name`]). Not materialized, since `LISTEN_FDS` may
    /// announce up to `INT_MAX - 3` fds before any of them is checked.
    pub names: Option<Vec<String>>,
    /// Why nothing was passed to this process (`Some` exactly when `count == 0`).
    pub not_for_us: Option<NotForUs>,
}

/// Why the variables do not pass anything to this process. Not an error (libsystemd returns
/// 0), but worth a log line: `Display` says what was seen and the likely fix.
///
/// ```
/// use listenfd_core::env::{parse, NotForUs, Vars};
/// let v = Vars { listen_pid: Some("41"), listen_fds: Some("1"), ..Vars::default() };
/// let why = parse(&v, 42, None, false).unwrap().not_for_us.unwrap();
/// assert_eq!(why, NotForUs::OtherProcess { listen_pid: 41, our_pid: 42 });
/// assert!(why.to_string().starts_with("LISTEN_PID=41 names another process (this is 42)"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotForUs {
    /// Neither `LISTEN_PID` nor `LISTEN_FDS` is set: not started by a socket-passing launcher.
    NothingPassed,
    /// `LISTEN_FDS` is set but `LISTEN_PID` is not, and strict mode requires it.
    NoListenPid,
    /// `LISTEN_PID` names another process.
    OtherProcess {
        /// The pid in `LISTEN_PID`.
        listen_pid: u32,
        /// This process.
        our_pid: u32,
    },
    /// `LISTEN_PIDFDID` names another process (whose pid was reused by us).
    OtherPidfd {
        /// The id in `LISTEN_PIDFDID`.
        listen_pidfdid: u64,
        /// Our pidfd inode id.
        ours: u64,
    },
    /// `LISTEN_PID` is ours but `LISTEN_FDS` is not set.
    NoListenFds,
}

impl std::fmt::Display for NotForUs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotForUs::NothingPassed => f.write_str(
                "no LISTEN_FDS in the environment: not started by a socket-passing launcher",
            ),
            NotForUs::NoListenPid => f.write_str(
                "LISTEN_FDS is set but LISTEN_PID is not: strict mode ignores such variables; \
                 if the launcher omits LISTEN_PID on purpose (systemfd --no-pid, watchexec \
                 --socket), enable lenient mode",
            ),
            NotForUs::OtherProcess {
                listen_pid,
                our_pid,
            } => write!(
                f,
                "LISTEN_PID={listen_pid} names another process (this is {our_pid}): the variables \
                 were meant for a parent such as `cargo run` or a shell wrapper; start the daemon \
                 directly from the launcher (or exec it from the wrapper), or have the launcher \
                 omit LISTEN_PID and enable lenient mode"
            ),
            NotForUs::OtherPidfd {
                listen_pidfdid,
                ours,
            } => write!(
                f,
                "LISTEN_PIDFDID={listen_pidfdid} is not this process (pidfd id {ours}): the \
                 variables were meant for an earlier process with the same pid"
            ),
            NotForUs::NoListenFds => f.write_str(
                "LISTEN_PID is ours but LISTEN_FDS is not set: the launcher passed no fds",
            ),
        }
    }
}

impl Parsed {
    /// Number of passed fds.
    ///
    /// ```
    /// # use listenfd_core::env::{parse, Vars};
    /// let p = parse(&Vars { listen_pid: Some("7"), listen_fds: Some("3"), ..Vars::default() }, 7, None, false).unwrap();
    /// assert_eq!(p.len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no fds were passed to this process ("not for us").
    ///
    /// ```
    /// # use listenfd_core::env::{parse, Vars};
    /// // LISTEN_PID names another process: not for us, and not an error.
    /// let p = parse(&Vars { listen_pid: Some("8"), listen_fds: Some("1"), ..Vars::default() }, 7, None, false).unwrap();
    /// assert!(p.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Name of the fd at `index` (from 0): from `LISTEN_FDNAMES`, else `"unknown"`.
    ///
    /// ```
    /// # use listenfd_core::env::{parse, Vars};
    /// let v = Vars { listen_pid: Some("7"), listen_fds: Some("2"), ..Vars::default() };
    /// let p = parse(&v, 7, None, false).unwrap();
    /// assert_eq!(p.name(1), Some("unknown"));
    /// assert_eq!(p.name(2), None);
    /// ```
    pub fn name(&self, index: usize) -> Option<&str> {
        match &self.names {
            Some(names) => names.get(index).map(String::as_str),
            None => (index < self.count).then_some("unknown"),
        }
    }

    /// The passed fd numbers, `first_fd .. first_fd + len`.
    ///
    /// ```
    /// # use listenfd_core::env::{parse, Vars};
    /// let v = Vars { listen_fds: Some("2"), listen_fds_first_fd: Some("10"), ..Vars::default() };
    /// let p = parse(&v, 7, None, /* lenient */ true).unwrap();
    /// assert_eq!(p.fds(), 10..12);
    /// ```
    pub fn fds(&self) -> Range<RawFd> {
        // `parse` guarantees first_fd + count <= i32::MAX.
        self.first_fd..self.first_fd + self.count as RawFd
    }
}

/// What was wrong with the variables. [`EnvError::errno`] is the error libsystemd returns for
/// the same input.
///
/// ```
/// use listenfd_core::env::{parse, EnvError, Vars};
/// let err = parse(&Vars { listen_pid: Some("12x"), ..Vars::default() }, 1, None, false).unwrap_err();
/// assert_eq!(err.errno(), libc::EINVAL);
/// assert!(err.to_string().contains("LISTEN_PID"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A numeric variable is not a number (`EINVAL`).
    #[error(
        "{var}={} is not a number: expected a decimal (or 0x/0o/0b-prefixed) integer; \
         fix the launcher that set it",
        shown(value)
    )]
    NotANumber {
        /// Variable name.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A numeric variable is out of range: overflow, or a zero/negative pid (`ERANGE`).
    #[error(
        "{var}={} is out of range: {why}; fix the launcher that set it",
        shown(value)
    )]
    OutOfRange {
        /// Variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// Which range was violated.
        why: &'static str,
    },
    /// `LISTEN_FDS` (or lenient `LISTEN_FDS_FIRST_FD`) parsed but is not a usable count/fd (`EINVAL`).
    #[error(
        "{var}={} is invalid: {why}; fix the launcher that set it",
        shown(value)
    )]
    Invalid {
        /// Variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `LISTEN_FDNAMES` ends in a lone backslash (`EINVAL`).
    #[error(
        "LISTEN_FDNAMES={} ends in a lone backslash: escape it as \\\\ or remove it",
        shown(value)
    )]
    TrailingBackslash {
        /// The value of `LISTEN_FDNAMES`.
        value: String,
    },
    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS` (`EINVAL`).
    #[error(
        "LISTEN_FDNAMES has {names} name(s) but LISTEN_FDS={fds}: the launcher must pass one name per fd \
         (a ':' inside a name must be escaped as \\:)"
    )]
    NameCountMismatch {
        /// How many names `LISTEN_FDNAMES` holds.
        names: usize,
        /// How many fds `LISTEN_FDS` announced.
        fds: usize,
        /// First announced fd (so the caller can still set `FD_CLOEXEC` on them, as libsystemd does).
        first_fd: RawFd,
    },
}

/// Values longer than this are cut in error messages, which stay one readable line.
const SHOWN_MAX: usize = 64;

/// A value for an error message: quoted like `{:?}`, cut after [`SHOWN_MAX`] characters
/// with its full length in bytes, so a hostile 100 KB value gives a short message (the
/// error's field still holds all of it).
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_MAX) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

impl EnvError {
    /// The errno libsystemd's `sd_listen_fds_with_names()` returns (negated) for this input:
    /// `EINVAL` or `ERANGE`.
    ///
    /// ```
    /// use listenfd_core::env::{parse, Vars};
    /// let err = parse(&Vars { listen_pid: Some("0"), ..Vars::default() }, 1, None, false).unwrap_err();
    /// assert_eq!(err.errno(), libc::ERANGE);
    /// ```
    pub fn errno(&self) -> i32 {
        match self {
            EnvError::OutOfRange { .. } => libc::ERANGE,
            _ => libc::EINVAL,
        }
    }
}

/// Decide what the `LISTEN_*` values mean for the process `pid` whose pidfd inode id is
/// `pidfd_id` (`None` when it cannot be determined: then `LISTEN_PIDFDID` is parsed but not
/// compared, exactly as libsystemd does).
///
/// Strict (`lenient == false`) is libsystemd: a missing `LISTEN_PID` means "not for us", fds
/// start at 3 and `LISTEN_FDS_FIRST_FD` is ignored. Lenient additionally accepts a missing
/// `LISTEN_PID` (a present one must still match) and honours `LISTEN_FDS_FIRST_FD` (>= 3).
///
/// Order of checks, as in libsystemd: `LISTEN_FDNAMES` syntax, `LISTEN_PID`, `LISTEN_PIDFDID`,
/// `LISTEN_FDS`, then the name count.
///
/// ```
/// use listenfd_core::env::{parse, Vars};
/// // Without LISTEN_PID: strict says "not for us", lenient accepts.
/// let v = Vars { listen_fds: Some("1"), ..Vars::default() };
/// assert!(parse(&v, 5, None, false)?.is_empty());
/// assert_eq!(parse(&v, 5, None, true)?.name(0), Some("unknown"));
/// # Ok::<(), listenfd_core::env::EnvError>(())
/// ```
pub fn parse(
    vars: &Vars<'_>,
    pid: u32,
    pidfd_id: Option<u64>,
    lenient: bool,
) -> Result<Parsed, EnvError> {
    let names = match vars.listen_fdnames {
        Some(value) => Some(split_names(value)?),
        None => None,
    };
    let not_for_us = |why| {
        Ok(Parsed {
            first_fd: LISTEN_FDS_START,
            count: 0,
            names: None,
            not_for_us: Some(why),
        })
    };

    match vars.listen_pid {
        None if !lenient && vars.listen_fds.is_none() => {
            return not_for_us(NotForUs::NothingPassed);
        }
        None if !lenient => return not_for_us(NotForUs::NoListenPid),
        None => {}
        Some(value) => {
            let wanted = parse_pid(value)?;
            if wanted as u32 != pid {
                return not_for_us(NotForUs::OtherProcess {
                    listen_pid: wanted as u32,
                    our_pid: pid,
                });
            }
        }
    }
    if let Some(value) = vars.listen_pidfdid {
        let wanted = parse_u64(value, "LISTEN_PIDFDID")?;
        if let Some(ours) = pidfd_id.filter(|&own| own != wanted) {
            return not_for_us(NotForUs::OtherPidfd {
                listen_pidfdid: wanted,
                ours,
            });
        }
    }
    let Some(fds_value) = vars.listen_fds else {
        return not_for_us(match vars.listen_pid {
            Some(_) => NotForUs::NoListenFds,
            None => NotForUs::NothingPassed,
        });
    };
    let n = parse_int(fds_value, "LISTEN_FDS")?;

    let first_fd = match vars.listen_fds_first_fd {
        Some(value) if lenient => {
            let first = parse_int(value, "LISTEN_FDS_FIRST_FD")?;
            if first < LISTEN_FDS_START {
                return Err(EnvError::Invalid {
                    var: "LISTEN_FDS_FIRST_FD",
                    value: value.to_owned(),
                    why: "passed fds cannot start below 3 (0, 1, 2 are stdin, stdout, stderr)",
                });
            }
            first
        }
        _ => LISTEN_FDS_START,
    };
    if n <= 0 {
        return Err(EnvError::Invalid {
            var: "LISTEN_FDS",
            value: fds_value.to_owned(),
            why: "the count must be at least 1 (unset the variable to pass no fds)",
        });
    }
    if n > i32::MAX - first_fd {
        return Err(EnvError::Invalid {
            var: "LISTEN_FDS",
            value: fds_value.to_owned(),
            why: "the last fd would exceed INT_MAX",
        });
    }
    let count = n as usize;
    if let Some(names) = &names {
        if names.len() != count {
            return Err(EnvError::NameCountMismatch {
                names: names.len(),
                fds: count,
                first_fd,
            });
        }
    }
    Ok(Parsed {
        first_fd,
        count,
        names,
        not_for_us: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Names

/// Split `LISTEN_FDNAMES` like libsystemd: on `:`, keeping empty fields (`""` is one empty
/// name); a backslash makes the next character literal; a trailing lone backslash is an error.
///
/// ```
/// use listenfd_core::env::split_names;
/// assert_eq!(split_names(r"a\:b::c").unwrap(), ["a:b", "", "c"]);
/// assert!(split_names("oops\\").is_err());
/// ```
pub fn split_names(value: &str) -> Result<Vec<String>, EnvError> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => current.push(next),
                None => {
                    return Err(EnvError::TrailingBackslash {
                        value: value.to_owned(),
                    });
                }
            },
            ':' => names.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    names.push(current);
    Ok(names)
}

/// Escape one name for `LISTEN_FDNAMES`: `\` and `:` get a backslash. Inverse of
/// [`split_names`] for a single name.
///
/// ```
/// assert_eq!(listenfd_core::env::escape_name("a:b\\c"), r"a\:b\\c");
/// ```
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == ':' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Build a `LISTEN_FDNAMES` value from names (escaping each). `split_names(join_names(x)) == x`
/// for any non-empty list.
///
/// ```
/// use listenfd_core::env::{join_names, split_names};
/// let v = join_names(["http", "a:b"]);
/// assert_eq!(v, r"http:a\:b");
/// assert_eq!(split_names(&v).unwrap(), ["http", "a:b"]);
/// ```
pub fn join_names<I, S>(names: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let escaped: Vec<String> = names.into_iter().map(|n| escape_name(n.as_ref())).collect();
    escaped.join(":")
}

/// Why a name is not a valid systemd `FileDescriptorName=`.
///
/// ```
/// use listenfd_core::env::{validate_name, InvalidName};
/// assert_eq!(validate_name(""), Err(InvalidName::Empty));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    /// The name is empty.
    #[error("fd name is empty: use 1 to 255 printable ASCII characters")]
    Empty,
    /// The name is longer than 255 bytes.
    #[error("fd name is {0} bytes long: at most 255 are allowed")]
    TooLong(usize),
    /// The name contains `:` or a byte outside 0x20..=0x7E.
    #[error("fd name contains {0:?}: only printable ASCII (0x20..0x7E) except ':' is allowed")]
    BadChar(char),
}

/// Check systemd's `FileDescriptorName=` rule: 1..=255 bytes of 0x20..=0x7E except `:`.
/// Receivers do not validate names (libsystemd does not); launchers should.
///
/// ```
/// use listenfd_core::env::validate_name;
/// assert!(validate_name("http").is_ok());
/// assert!(validate_name("a:b").is_err());
/// assert!(validate_name("tab\there").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(InvalidName::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(' '..='~').contains(&c) || c == ':')
    {
        return Err(InvalidName::BadChar(c));
    }
    if name.len() > 255 {
        return Err(InvalidName::TooLong(name.len()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Numbers: a model of systemd's parse_pid / safe_atoi / safe_atou64 on top of glibc strto*.

/// Why a number did not parse, in libsystemd's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumError {
    /// -EINVAL: not (entirely) a number.
    Invalid,
    /// -ERANGE: a number, but out of range.
    Range,
}

/// systemd's WHITESPACE set, skipped before the prefix check.
fn is_systemd_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// C `isspace` in the C locale, skipped by `strto*` itself.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Skip systemd's WHITESPACE, then its `mangle_base`: `0b`/`0B` -> base 2, `0o`/`0O` -> base 8
/// (prefix removed), otherwise base 0.
fn mangle(s: &[u8]) -> (&[u8], u32) {
    let start = s
        .iter()
        .position(|&b| !is_systemd_whitespace(b))
        .unwrap_or(s.len());
    let s = &s[start..];
    match s {
        [b'0', b'b' | b'B', rest @ ..] => (rest, 2),
        [b'0', b'o' | b'O', rest @ ..] => (rest, 8),
        _ => (s, 0),
    }
}

/// What glibc `strtoul`/`strtol` see: sign, magnitude (None = beyond u64), and whether the whole
/// string was consumed (systemd's `*x == 0 && x != s`).
struct Strto {
    negative: bool,
    magnitude: Option<u64>,
    complete: bool,
}

/// The common scanner of glibc's `strto*` in the C locale (pre-C23: no `0b` under base 0/2).
fn strto(s: &[u8], base: u32) -> Strto {
    let mut i = s.iter().position(|&b| !is_c_space(b)).unwrap_or(s.len());
    let mut negative = false;
    if let Some(&sign @ (b'+' | b'-')) = s.get(i) {
        negative = sign == b'-';
        i += 1;
    }
    let mut base = base;
    let hex_prefix = s.get(i) == Some(&b'0')
        && matches!(s.get(i + 1), Some(b'x' | b'X'))
        && s.get(i + 2).is_some_and(|b| b.is_ascii_hexdigit());
    if (base == 0 || base == 16) && hex_prefix {
        base = 16;
        i += 2;
    } else if base == 0 {
        base = if s.get(i) == Some(&b'0') { 8 } else { 10 };
    }
    let digits_start = i;
    let mut magnitude: Option<u64> = Some(0);
    while let Some(d) = s.get(i).and_then(|&b| (b as char).to_digit(base)) {
        magnitude = magnitude
            .and_then(|m| m.checked_mul(u64::from(base)))
            .and_then(|m| m.checked_add(u64::from(d)));
        i += 1;
    }
    // No digits: endptr = start of string, which systemd reports as EINVAL.
    let complete = i > digits_start && i == s.len();
    Strto {
        negative,
        magnitude,
        complete,
    }
}

/// systemd's `safe_atollu_full(s, 0, ..)`: unsigned 64-bit; `-N` (N != 0) is ERANGE.
fn safe_atollu(s: &str) -> Result<u64, NumError> {
    let (s, base) = mangle(s.as_bytes());
    let r = strto(s, base);
    // strtoull sets ERANGE on overflow even if garbage follows; systemd checks errno first.
    let magnitude = r.magnitude.ok_or(NumError::Range)?;
    if !r.complete {
        return Err(NumError::Invalid);
    }
    let value = if r.negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    };
    if value != 0 && s.first() == Some(&b'-') {
        return Err(NumError::Range);
    }
    Ok(value)
}

/// systemd's `safe_atoi`: strtol (64-bit long), then an int range check.
fn safe_atoi(s: &str) -> Result<i32, NumError> {
    let (s, base) = mangle(s.as_bytes());
    let r = strto(s, base);
    let limit = if r.negative {
        i64::MAX as u64 + 1
    } else {
        i64::MAX as u64
    };
    let magnitude = r.magnitude.filter(|&m| m <= limit).ok_or(NumError::Range)?;
    if !r.complete {
        return Err(NumError::Invalid);
    }
    let value = if r.negative {
        (magnitude as i64).wrapping_neg()
    } else {
        magnitude as i64
    };
    i32::try_from(value).map_err(|_| NumError::Range)
}

/// systemd's `parse_pid`: `safe_atolu`, then the value must survive a round trip through
/// `pid_t` and be > 0.
fn parse_pid(value: &str) -> Result<i32, EnvError> {
    let n = safe_atollu(value).map_err(|e| number_error(e, "LISTEN_PID", value))?;
    let pid = n as i32; // C's (pid_t) cast: truncation
    if pid as i64 as u64 != n || pid <= 0 {
        return Err(EnvError::OutOfRange {
            var: "LISTEN_PID",
            value: value.to_owned(),
            why: "a pid must be between 1 and 2147483647",
        });
    }
    Ok(pid)
}

fn parse_u64(value: &str, var: &'static str) -> Result<u64, EnvError> {
    safe_atollu(value).map_err(|e| number_error(e, var, value))
}

fn parse_int(value: &str, var: &'static str) -> Result<i32, EnvError> {
    safe_atoi(value).map_err(|e| number_error(e, var, value))
}

fn number_error(e: NumError, var: &'static str, value: &str) -> EnvError {
    match e {
        NumError::Invalid => EnvError::NotANumber {
            var,
            value: value.to_owned(),
        },
        NumError::Range => EnvError::OutOfRange {
            var,
            value: value.to_owned(),
            why: if var == "LISTEN_PID" || var == "LISTEN_PIDFDID" {
                "it overflows or is negative"
            } else {
                "it does not fit in a C int"
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_atollu_matches_systemd_on_edge_forms() {
        assert_eq!(safe_atollu("0x1f"), Ok(31));
        assert_eq!(safe_atollu("017"), Ok(15));
        assert_eq!(safe_atollu("+123"), Ok(123));
        assert_eq!(safe_atollu(" \t\n\r5"), Ok(5));
        assert_eq!(safe_atollu("0b101"), Ok(5));
        assert_eq!(safe_atollu("0O17"), Ok(15));
        assert_eq!(safe_atollu("-0"), Ok(0));
        assert_eq!(safe_atollu("-1"), Err(NumError::Range));
        assert_eq!(safe_atollu("0b-1"), Err(NumError::Range));
        assert_eq!(safe_atollu("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(safe_atollu("18446744073709551616"), Err(NumError::Range));
        // errno is checked before trailing garbage
        assert_eq!(safe_atollu("99999999999999999999x"), Err(NumError::Range));
        assert_eq!(safe_atollu("0x"), Err(NumError::Invalid));
        assert_eq!(safe_atollu("0b"), Err(NumError::Invalid));
        assert_eq!(safe_atollu("08"), Err(NumError::Invalid));
        assert_eq!(safe_atollu("1 "), Err(NumError::Invalid));
        assert_eq!(safe_atollu(""), Err(NumError::Invalid));
        assert_eq!(safe_atollu("+0b1"), Err(NumError::Invalid));
        // \v is not systemd WHITESPACE but strtoull skips it, so the '-' check misses it
        assert_eq!(safe_atollu("\x0b-1"), Ok(u64::MAX));
    }

    #[test]
    fn safe_atoi_matches_systemd_on_edge_forms() {
        assert_eq!(safe_atoi("2147483647"), Ok(i32::MAX));
        assert_eq!(safe_atoi("2147483648"), Err(NumError::Range));
        assert_eq!(safe_atoi("-2147483648"), Ok(i32::MIN));
        assert_eq!(safe_atoi("-1"), Ok(-1));
        assert_eq!(safe_atoi("0b-10"), Ok(-2));
        assert_eq!(safe_atoi("9223372036854775808"), Err(NumError::Range));
        assert_eq!(safe_atoi("-9223372036854775808"), Err(NumError::Range));
        assert_eq!(safe_atoi("010"), Ok(8));
        assert_eq!(safe_atoi("0x"), Err(NumError::Invalid));
    }
}
