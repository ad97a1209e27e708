//! The rows of `shared/spec/listen-fds-protocol.md` (receiver and names sections), and more,
//! as data: shared by `conformance.rs` (our parser) and `libsystemd.rs` (the real
//! `sd_listen_fds_with_names()`), so both are held to the same table.

#![allow(dead_code, reason = "each test binary uses part of the table helpers")]

use listenfd_core::env::{self, Vars};

pub const PIDFD_ID: u64 = 4242;
pub const EINVAL: i32 = libc::EINVAL;
pub const ERANGE: i32 = libc::ERANGE;

/// What libsystemd returns: n fds starting at `first` with these names, 0 fds, or `-errno`.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Fds { first: i32, names: Vec<String> },
    NotForUs,
    Errno(i32),
}

pub fn fds(names: &[&str]) -> Outcome {
    Outcome::Fds {
        first: 3,
        names: names.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn unknown(n: usize) -> Outcome {
    fds(&vec!["unknown"; n])
}

/// One row. Values are owned so they can be computed from the pid under test.
pub struct Case {
    pub row: &'static str,
    pub pid: Option<String>,
    pub pidfdid: Option<String>,
    pub fds: Option<String>,
    pub names: Option<String>,
    pub first_fd: Option<String>,
    /// Our pidfd inode id as the parser sees it (`None`: cannot be determined).
    pub pidfd_id: Option<u64>,
    pub lenient: bool,
    pub expect: Outcome,
}

impl Case {
    /// Rows systemd 252's libsystemd can be asked about: strict, without LISTEN_PIDFDID
    /// (systemd >= 259 only; older versions ignore the variable).
    pub fn in_systemd_252(&self) -> bool {
        !self.lenient && self.pidfdid.is_none()
    }

    pub fn vars(&self) -> Vars<'_> {
        Vars {
            listen_pid: self.pid.as_deref(),
            listen_pidfdid: self.pidfdid.as_deref(),
            listen_fds: self.fds.as_deref(),
            listen_fdnames: self.names.as_deref(),
            listen_fds_first_fd: self.first_fd.as_deref(),
        }
    }

    /// Our parser's outcome for this row, for the process `pid`.
    pub fn parse(&self, pid: u32) -> Outcome {
        match env::parse(&self.vars(), pid, self.pidfd_id, self.lenient) {
            Ok(p) if p.is_empty() => Outcome::NotForUs,
            Ok(p) => Outcome::Fds {
                first: p.first_fd,
                names: (0..p.len())
                    .map(|i| p.name(i).unwrap().to_owned())
                    .collect(),
            },
            Err(e) => Outcome::Errno(e.errno()),
        }
    }
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

/// The table, for a process whose pid is `pid`.
pub fn cases(pid: u32) -> Vec<Case> {
    use Outcome::{Errno, NotForUs};
    let me = pid.to_string();
    let other = (pid + 1).to_string();
    let row = |row, pid: Option<String>, fds: Option<&str>, names: Option<&str>, expect| Case {
        row,
        pid,
        pidfdid: None,
        fds: fds.map(str::to_owned),
        names: names.map(str::to_owned),
        first_fd: None,
        pidfd_id: Some(PIDFD_ID),
        lenient: false,
        expect,
    };
    // LISTEN_PID in some notation, one fd.
    let pid_as = |name, text: String, expect| row(name, Some(text), Some("1"), None, expect);
    // LISTEN_FDS in some notation, for us.
    let fds_as = |name, text: &str, expect| row(name, s(&me), Some(text), None, expect);
    // LISTEN_FDNAMES with `n` fds, for us.
    let names_as =
        |name, n: &str, text: &str, expect| row(name, s(&me), Some(n), Some(text), expect);
    let pidfdid = |name, text: &str, own: Option<u64>, expect| Case {
        pidfdid: s(text),
        pidfd_id: own,
        ..row(name, s(&me), Some("1"), None, expect)
    };
    let lenient = |name, pid: Option<String>, n: &str, first: Option<&str>, expect| Case {
        first_fd: first.map(str::to_owned),
        lenient: true,
        ..row(name, pid, Some(n), None, expect)
    };
    vec![
        // --- LISTEN_PID
        row(
            "LISTEN_PID unset: not for us",
            None,
            Some("1"),
            None,
            NotForUs,
        ),
        row("LISTEN_PID unset, nothing else", None, None, None, NotForUs),
        pid_as("LISTEN_PID not a number: abc", "abc".into(), Errno(EINVAL)),
        pid_as("LISTEN_PID not a number: empty", "".into(), Errno(EINVAL)),
        pid_as("LISTEN_PID not a number: 12x", "12x".into(), Errno(EINVAL)),
        pid_as(
            "LISTEN_PID not a number: trailing space",
            format!("{pid} "),
            Errno(EINVAL),
        ),
        pid_as(
            "LISTEN_PID not a number: trailing newline",
            format!("{pid}\n"),
            Errno(EINVAL),
        ),
        pid_as(
            "LISTEN_PID not a number: only spaces",
            "  ".into(),
            Errno(EINVAL),
        ),
        pid_as(
            "LISTEN_PID not a number: 0x without digits",
            "0x".into(),
            Errno(EINVAL),
        ),
        pid_as(
            "LISTEN_PID not a number: 8 in C octal",
            "018".into(),
            Errno(EINVAL),
        ),
        pid_as(
            "LISTEN_PID base 0: hex 0x..",
            format!("0x{pid:x}"),
            unknown(1),
        ),
        pid_as(
            "LISTEN_PID base 0: hex 0X..",
            format!("0X{pid:X}"),
            unknown(1),
        ),
        pid_as(
            "LISTEN_PID base 0: C octal 0..",
            format!("0{pid:o}"),
            unknown(1),
        ),
        pid_as("LISTEN_PID base 0: +N", format!("+{pid}"), unknown(1)),
        pid_as(
            "LISTEN_PID leading whitespace",
            format!(" \t\n\r{pid}"),
            unknown(1),
        ),
        pid_as("LISTEN_PID 0b prefix", format!("0b{pid:b}"), unknown(1)),
        pid_as("LISTEN_PID 0o prefix", format!("0o{pid:o}"), unknown(1)),
        pid_as(
            "LISTEN_PID sign before 0b is not a number",
            format!("+0b{pid:b}"),
            Errno(EINVAL),
        ),
        pid_as("LISTEN_PID = 0", "0".into(), Errno(ERANGE)),
        pid_as("LISTEN_PID = -0", "-0".into(), Errno(ERANGE)),
        pid_as("LISTEN_PID negative", "-1".into(), Errno(ERANGE)),
        pid_as(
            "LISTEN_PID negative of our pid",
            format!("-{pid}"),
            Errno(ERANGE),
        ),
        pid_as("LISTEN_PID > INT_MAX", "2147483648".into(), Errno(ERANGE)),
        pid_as(
            "LISTEN_PID overflows u64",
            "18446744073709551616".into(),
            Errno(ERANGE),
        ),
        pid_as(
            "LISTEN_PID overflow wins over garbage",
            "99999999999999999999x".into(),
            Errno(ERANGE),
        ),
        pid_as(
            "LISTEN_PID != getpid(): not for us",
            other.clone(),
            NotForUs,
        ),
        pid_as(
            "LISTEN_PID = INT_MAX, not us",
            "2147483647".into(),
            NotForUs,
        ),
        // --- LISTEN_PIDFDID (systemd >= 259)
        pidfdid("LISTEN_PIDFDID matches", "4242", Some(PIDFD_ID), unknown(1)),
        pidfdid(
            "LISTEN_PIDFDID in hex matches",
            "0x1092",
            Some(PIDFD_ID),
            unknown(1),
        ),
        pidfdid(
            "LISTEN_PIDFDID differs: not for us",
            "4243",
            Some(PIDFD_ID),
            NotForUs,
        ),
        pidfdid(
            "LISTEN_PIDFDID malformed",
            "x",
            Some(PIDFD_ID),
            Errno(EINVAL),
        ),
        pidfdid(
            "LISTEN_PIDFDID negative",
            "-1",
            Some(PIDFD_ID),
            Errno(ERANGE),
        ),
        pidfdid(
            "LISTEN_PIDFDID = u64::MAX parses",
            "18446744073709551615",
            Some(PIDFD_ID),
            NotForUs,
        ),
        pidfdid(
            "LISTEN_PIDFDID not comparable (no pidfs): ignored",
            "4243",
            None,
            unknown(1),
        ),
        pidfdid(
            "LISTEN_PIDFDID still parsed when not comparable",
            "nope",
            None,
            Errno(EINVAL),
        ),
        Case {
            pid: s(&other),
            ..pidfdid(
                "LISTEN_PIDFDID malformed, LISTEN_PID not ours: not for us",
                "x",
                Some(PIDFD_ID),
                NotForUs,
            )
        },
        // --- LISTEN_FDS
        row(
            "LISTEN_FDS unset (PID matched)",
            s(&me),
            None,
            None,
            NotForUs,
        ),
        fds_as("LISTEN_FDS not a number", "abc", Errno(EINVAL)),
        fds_as("LISTEN_FDS empty", "", Errno(EINVAL)),
        fds_as("LISTEN_FDS trailing whitespace", "1 ", Errno(EINVAL)),
        fds_as("LISTEN_FDS trailing newline", "1\n", Errno(EINVAL)),
        fds_as("LISTEN_FDS with a fraction", "1.0", Errno(EINVAL)),
        fds_as("LISTEN_FDS leading whitespace", " \t2", unknown(2)),
        fds_as("LISTEN_FDS +2", "+2", unknown(2)),
        fds_as("LISTEN_FDS 0x2", "0x2", unknown(2)),
        fds_as("LISTEN_FDS 0b10", "0b10", unknown(2)),
        fds_as("LISTEN_FDS 0B10", "0B10", unknown(2)),
        fds_as("LISTEN_FDS 0o3", "0o3", unknown(3)),
        fds_as("LISTEN_FDS C octal 010 = 8", "010", unknown(8)),
        fds_as("LISTEN_FDS 0b then garbage", "0b12", Errno(EINVAL)),
        fds_as("LISTEN_FDS overflows int", "2147483648", Errno(ERANGE)),
        fds_as(
            "LISTEN_FDS overflows long",
            "99999999999999999999",
            Errno(ERANGE),
        ),
        fds_as("LISTEN_FDS underflows int", "-2147483649", Errno(ERANGE)),
        fds_as(
            "LISTEN_FDS=0 is an error (systemd >= 228)",
            "0",
            Errno(EINVAL),
        ),
        fds_as("LISTEN_FDS negative", "-1", Errno(EINVAL)),
        fds_as("LISTEN_FDS negative via 0b", "0b-1", Errno(EINVAL)),
        fds_as("LISTEN_FDS > INT_MAX - 3", "2147483645", Errno(EINVAL)),
        fds_as("LISTEN_FDS = INT_MAX", "2147483647", Errno(EINVAL)),
        row(
            "LISTEN_FDS malformed, PID not ours: not for us",
            s(&other),
            Some("abc"),
            None,
            NotForUs,
        ),
        row(
            "LISTEN_FDS malformed, PID unset: not for us",
            None,
            Some("abc"),
            None,
            NotForUs,
        ),
        // --- LISTEN_FDNAMES
        names_as(
            "names split on ':'",
            "2",
            "http:admin",
            fds(&["http", "admin"]),
        ),
        names_as(
            "names keep empty fields: a::b",
            "3",
            "a::b",
            fds(&["a", "", "b"]),
        ),
        names_as("names keep empty fields: a:", "2", "a:", fds(&["a", ""])),
        names_as("names keep empty fields: ':'", "2", ":", fds(&["", ""])),
        names_as("names: \"\" is one empty name", "1", "", fds(&[""])),
        names_as("names: \\: is a literal colon", "1", r"a\:b", fds(&["a:b"])),
        names_as("names: \\\\ is a backslash", "1", r"a\\b", fds(&[r"a\b"])),
        names_as(
            "names: no C escapes (\\n is n)",
            "1",
            r"a\nb",
            fds(&["anb"]),
        ),
        names_as("names: trailing lone backslash", "1", "a\\", Errno(EINVAL)),
        names_as(
            "names: escaped backslash at the end",
            "1",
            r"a\\",
            fds(&[r"a\"]),
        ),
        names_as("names: more names than fds", "1", "a:b", Errno(EINVAL)),
        names_as("names: fewer names than fds", "3", "a:b", Errno(EINVAL)),
        row(
            "names: absent means unknown",
            s(&me),
            Some("2"),
            None,
            unknown(2),
        ),
        names_as(
            "names: not validated (space, non-ASCII)",
            "2",
            "has space:ünï",
            fds(&["has space", "ünï"]),
        ),
        row(
            "names: malformed is an error even if PID is not ours",
            s(&other),
            Some("1"),
            Some("x\\"),
            Errno(EINVAL),
        ),
        row(
            "names: malformed is an error even if PID is unset",
            None,
            None,
            Some("x\\"),
            Errno(EINVAL),
        ),
        row(
            "names: count mismatch irrelevant when not for us",
            s(&other),
            Some("1"),
            Some("a:b"),
            NotForUs,
        ),
        row(
            "names fine, malformed LISTEN_PID",
            s("x"),
            Some("1"),
            Some("a"),
            Errno(EINVAL),
        ),
        // --- strict ignores the extension
        Case {
            first_fd: s("10"),
            ..row(
                "strict ignores LISTEN_FDS_FIRST_FD",
                s(&me),
                Some("1"),
                None,
                unknown(1),
            )
        },
        Case {
            first_fd: s("x"),
            ..row(
                "strict ignores a malformed LISTEN_FDS_FIRST_FD",
                s(&me),
                Some("1"),
                None,
                unknown(1),
            )
        },
        // --- lenient mode (our extension, opt-in)
        lenient(
            "lenient: missing LISTEN_PID accepted",
            None,
            "2",
            None,
            unknown(2),
        ),
        lenient(
            "lenient: LISTEN_PID of another process: not for us",
            s(&other),
            "1",
            None,
            NotForUs,
        ),
        lenient(
            "lenient: malformed LISTEN_PID still an error",
            s("x"),
            "1",
            None,
            Errno(EINVAL),
        ),
        lenient(
            "lenient: LISTEN_FDS_FIRST_FD honoured",
            None,
            "2",
            Some("10"),
            Outcome::Fds {
                first: 10,
                names: vec!["unknown".into(), "unknown".into()],
            },
        ),
        lenient(
            "lenient: LISTEN_FDS_FIRST_FD below 3",
            None,
            "1",
            Some("2"),
            Errno(EINVAL),
        ),
        lenient(
            "lenient: LISTEN_FDS_FIRST_FD malformed",
            None,
            "1",
            Some("x"),
            Errno(EINVAL),
        ),
        lenient(
            "lenient: LISTEN_FDS_FIRST_FD overflow",
            None,
            "1",
            Some("4294967296"),
            Errno(ERANGE),
        ),
        lenient(
            "lenient: last fd beyond INT_MAX",
            None,
            "2147483000",
            Some("1000"),
            Errno(EINVAL),
        ),
        Case {
            fds: None,
            ..lenient("lenient: LISTEN_FDS unset", None, "1", None, NotForUs)
        },
    ]
}
