//! One case per row of `shared/spec/listen-fds-protocol.md` (receiver and names sections), and
//! more: the pure decision of `env::parse` must equal libsystemd's `sd_listen_fds_with_names()`.
//! Rows that need real fds (EBADF, FD_CLOEXEC, unsetting the environment) are in `process.rs`.

use listenfd_core::env::{self, Vars};

const PID: u32 = 100;
const PIDFD_ID: u64 = 4242;
const EINVAL: i32 = libc::EINVAL;
const ERANGE: i32 = libc::ERANGE;

/// What libsystemd returns: n fds starting at `first` with these names, 0 fds, or `-errno`.
#[derive(Debug, PartialEq)]
enum Outcome {
    Fds { first: i32, names: Vec<String> },
    NotForUs,
    Errno(i32),
}

fn fds(names: &[&str]) -> Outcome {
    Outcome::Fds {
        first: 3,
        names: names.iter().map(|s| s.to_string()).collect(),
    }
}

fn unknown(n: usize) -> Outcome {
    fds(&vec!["unknown"; n])
}

struct Case {
    row: &'static str,
    vars: Vars<'static>,
    pidfd_id: Option<u64>,
    lenient: bool,
    expect: Outcome,
}

fn v(
    pid: Option<&'static str>,
    fds: Option<&'static str>,
    names: Option<&'static str>,
) -> Vars<'static> {
    Vars {
        listen_pid: pid,
        listen_fds: fds,
        listen_fdnames: names,
        ..Vars::default()
    }
}

fn strict(row: &'static str, vars: Vars<'static>, expect: Outcome) -> Case {
    Case {
        row,
        vars,
        pidfd_id: Some(PIDFD_ID),
        lenient: false,
        expect,
    }
}

fn lenient(row: &'static str, vars: Vars<'static>, expect: Outcome) -> Case {
    Case {
        row,
        vars,
        pidfd_id: Some(PIDFD_ID),
        lenient: true,
        expect,
    }
}

fn run(case: &Case) -> Outcome {
    match env::parse(&case.vars, PID, case.pidfd_id, case.lenient) {
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

fn cases() -> Vec<Case> {
    use Outcome::{Errno, NotForUs};
    let with_pidfdid = |id: &'static str| Vars {
        listen_pidfdid: Some(id),
        ..v(Some("100"), Some("1"), None)
    };
    let first_fd = |pid: Option<&'static str>, n: &'static str, first: &'static str| Vars {
        listen_fds_first_fd: Some(first),
        ..v(pid, Some(n), None)
    };
    vec![
        // --- LISTEN_PID
        strict(
            "LISTEN_PID unset: not for us",
            v(None, Some("1"), None),
            NotForUs,
        ),
        strict(
            "LISTEN_PID unset, nothing else",
            v(None, None, None),
            NotForUs,
        ),
        strict(
            "LISTEN_PID not a number: abc",
            v(Some("abc"), Some("1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_PID not a number: empty",
            v(Some(""), Some("1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_PID not a number: 12x",
            v(Some("12x"), Some("1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_PID not a number: trailing space",
            v(Some("100 "), Some("1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_PID not a number: only spaces",
            v(Some("  "), Some("1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_PID not a number: 0x without digits",
            v(Some("0x"), Some("1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_PID not a number: 8 in C octal",
            v(Some("0144 8"), Some("1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_PID base 0: hex 0x64",
            v(Some("0x64"), Some("1"), None),
            unknown(1),
        ),
        strict(
            "LISTEN_PID base 0: hex 0X64",
            v(Some("0X64"), Some("1"), None),
            unknown(1),
        ),
        strict(
            "LISTEN_PID base 0: C octal 0144",
            v(Some("0144"), Some("1"), None),
            unknown(1),
        ),
        strict(
            "LISTEN_PID base 0: +100",
            v(Some("+100"), Some("1"), None),
            unknown(1),
        ),
        strict(
            "LISTEN_PID leading whitespace",
            v(Some(" \t\n\r100"), Some("1"), None),
            unknown(1),
        ),
        strict(
            "LISTEN_PID 0b prefix",
            v(Some("0b1100100"), Some("1"), None),
            unknown(1),
        ),
        strict(
            "LISTEN_PID 0o prefix",
            v(Some("0o144"), Some("1"), None),
            unknown(1),
        ),
        strict(
            "LISTEN_PID sign before 0b is not a number",
            v(Some("+0b1100100"), Some("1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_PID = 0",
            v(Some("0"), Some("1"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_PID = -0",
            v(Some("-0"), Some("1"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_PID negative",
            v(Some("-1"), Some("1"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_PID negative of our pid",
            v(Some("-100"), Some("1"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_PID > INT_MAX",
            v(Some("2147483648"), Some("1"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_PID overflows u64",
            v(Some("18446744073709551616"), Some("1"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_PID overflow wins over trailing garbage",
            v(Some("99999999999999999999x"), Some("1"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_PID != getpid(): not for us",
            v(Some("101"), Some("1"), None),
            NotForUs,
        ),
        strict(
            "LISTEN_PID = INT_MAX, not us",
            v(Some("2147483647"), Some("1"), None),
            NotForUs,
        ),
        // --- LISTEN_PIDFDID
        strict("LISTEN_PIDFDID matches", with_pidfdid("4242"), unknown(1)),
        strict(
            "LISTEN_PIDFDID in hex matches",
            with_pidfdid("0x1092"),
            unknown(1),
        ),
        strict(
            "LISTEN_PIDFDID differs: not for us",
            with_pidfdid("4243"),
            NotForUs,
        ),
        strict("LISTEN_PIDFDID malformed", with_pidfdid("x"), Errno(EINVAL)),
        strict("LISTEN_PIDFDID negative", with_pidfdid("-1"), Errno(ERANGE)),
        strict(
            "LISTEN_PIDFDID = u64::MAX parses",
            with_pidfdid("18446744073709551615"),
            NotForUs,
        ),
        Case {
            row: "LISTEN_PIDFDID not comparable (no pidfs): ignored",
            vars: with_pidfdid("4243"),
            pidfd_id: None,
            lenient: false,
            expect: unknown(1),
        },
        Case {
            row: "LISTEN_PIDFDID still parsed when not comparable",
            vars: with_pidfdid("nope"),
            pidfd_id: None,
            lenient: false,
            expect: Errno(EINVAL),
        },
        strict(
            "LISTEN_PIDFDID malformed but LISTEN_PID not ours: not for us",
            Vars {
                listen_pid: Some("101"),
                ..with_pidfdid("x")
            },
            NotForUs,
        ),
        // --- LISTEN_FDS
        strict(
            "LISTEN_FDS unset (PID matched)",
            v(Some("100"), None, None),
            NotForUs,
        ),
        strict(
            "LISTEN_FDS not a number",
            v(Some("100"), Some("abc"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS empty",
            v(Some("100"), Some(""), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS trailing whitespace",
            v(Some("100"), Some("1 "), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS trailing newline",
            v(Some("100"), Some("1\n"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS decimal with fraction",
            v(Some("100"), Some("1.0"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS leading whitespace",
            v(Some("100"), Some(" \t2"), None),
            unknown(2),
        ),
        strict(
            "LISTEN_FDS +2",
            v(Some("100"), Some("+2"), None),
            unknown(2),
        ),
        strict(
            "LISTEN_FDS 0x2",
            v(Some("100"), Some("0x2"), None),
            unknown(2),
        ),
        strict(
            "LISTEN_FDS 0b10",
            v(Some("100"), Some("0b10"), None),
            unknown(2),
        ),
        strict(
            "LISTEN_FDS 0B10",
            v(Some("100"), Some("0B10"), None),
            unknown(2),
        ),
        strict(
            "LISTEN_FDS 0o3",
            v(Some("100"), Some("0o3"), None),
            unknown(3),
        ),
        strict(
            "LISTEN_FDS C octal 010 = 8",
            v(Some("100"), Some("010"), None),
            unknown(8),
        ),
        strict(
            "LISTEN_FDS 0b then garbage",
            v(Some("100"), Some("0b12"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS overflows int",
            v(Some("100"), Some("2147483648"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_FDS overflows long",
            v(Some("100"), Some("99999999999999999999"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_FDS underflows int",
            v(Some("100"), Some("-2147483649"), None),
            Errno(ERANGE),
        ),
        strict(
            "LISTEN_FDS=0 is an error (systemd >= 228)",
            v(Some("100"), Some("0"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS negative",
            v(Some("100"), Some("-1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS negative via 0b",
            v(Some("100"), Some("0b-1"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS > INT_MAX - 3",
            v(Some("100"), Some("2147483645"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS = INT_MAX",
            v(Some("100"), Some("2147483647"), None),
            Errno(EINVAL),
        ),
        strict(
            "LISTEN_FDS malformed but PID not ours: not for us",
            v(Some("101"), Some("abc"), None),
            NotForUs,
        ),
        strict(
            "LISTEN_FDS malformed and PID unset: not for us",
            v(None, Some("abc"), None),
            NotForUs,
        ),
        // --- LISTEN_FDNAMES
        strict(
            "names split on ':'",
            v(Some("100"), Some("2"), Some("http:admin")),
            fds(&["http", "admin"]),
        ),
        strict(
            "names keep empty fields: a::b",
            v(Some("100"), Some("3"), Some("a::b")),
            fds(&["a", "", "b"]),
        ),
        strict(
            "names keep empty fields: a:",
            v(Some("100"), Some("2"), Some("a:")),
            fds(&["a", ""]),
        ),
        strict(
            "names keep empty fields: ':'",
            v(Some("100"), Some("2"), Some(":")),
            fds(&["", ""]),
        ),
        strict(
            "names: \"\" is one empty name",
            v(Some("100"), Some("1"), Some("")),
            fds(&[""]),
        ),
        strict(
            "names: \\: is a literal colon",
            v(Some("100"), Some("1"), Some(r"a\:b")),
            fds(&["a:b"]),
        ),
        strict(
            "names: \\\\ is a backslash",
            v(Some("100"), Some("1"), Some(r"a\\b")),
            fds(&[r"a\b"]),
        ),
        strict(
            "names: no C escapes (\\n is n)",
            v(Some("100"), Some("1"), Some(r"a\nb")),
            fds(&["anb"]),
        ),
        strict(
            "names: trailing lone backslash",
            v(Some("100"), Some("1"), Some("a\\")),
            Errno(EINVAL),
        ),
        strict(
            "names: escaped backslash at the end is fine",
            v(Some("100"), Some("1"), Some(r"a\\")),
            fds(&[r"a\"]),
        ),
        strict(
            "names: more names than fds",
            v(Some("100"), Some("1"), Some("a:b")),
            Errno(EINVAL),
        ),
        strict(
            "names: fewer names than fds",
            v(Some("100"), Some("3"), Some("a:b")),
            Errno(EINVAL),
        ),
        strict(
            "names: absent means unknown",
            v(Some("100"), Some("2"), None),
            unknown(2),
        ),
        strict(
            "names: not validated (space, non-ASCII)",
            v(Some("100"), Some("2"), Some("has space:ünï")),
            fds(&["has space", "ünï"]),
        ),
        strict(
            "names: malformed is an error even if PID is not ours",
            v(Some("101"), Some("1"), Some("x\\")),
            Errno(EINVAL),
        ),
        strict(
            "names: malformed is an error even if PID is unset",
            v(None, None, Some("x\\")),
            Errno(EINVAL),
        ),
        strict(
            "names: count mismatch does not matter when not for us",
            v(Some("101"), Some("1"), Some("a:b")),
            NotForUs,
        ),
        strict(
            "names: malformed LISTEN_PID reported after names are fine",
            v(Some("x"), Some("1"), Some("a")),
            Errno(EINVAL),
        ),
        // --- strict ignores the extensions
        strict(
            "strict ignores LISTEN_FDS_FIRST_FD",
            first_fd(Some("100"), "1", "10"),
            unknown(1),
        ),
        strict(
            "strict ignores a malformed LISTEN_FDS_FIRST_FD",
            first_fd(Some("100"), "1", "x"),
            unknown(1),
        ),
        // --- lenient mode (our extension, opt-in)
        lenient(
            "lenient: missing LISTEN_PID accepted",
            v(None, Some("2"), None),
            unknown(2),
        ),
        lenient(
            "lenient: LISTEN_PID of another process still not for us",
            v(Some("101"), Some("1"), None),
            NotForUs,
        ),
        lenient(
            "lenient: malformed LISTEN_PID still an error",
            v(Some("x"), Some("1"), None),
            Errno(EINVAL),
        ),
        lenient("lenient: LISTEN_FDS unset", v(None, None, None), NotForUs),
        lenient(
            "lenient: LISTEN_FDS_FIRST_FD honoured",
            first_fd(None, "2", "10"),
            Outcome::Fds {
                first: 10,
                names: vec!["unknown".into(), "unknown".into()],
            },
        ),
        lenient(
            "lenient: LISTEN_FDS_FIRST_FD below 3",
            first_fd(None, "1", "2"),
            Errno(EINVAL),
        ),
        lenient(
            "lenient: LISTEN_FDS_FIRST_FD malformed",
            first_fd(None, "1", "x"),
            Errno(EINVAL),
        ),
        lenient(
            "lenient: LISTEN_FDS_FIRST_FD overflow",
            first_fd(None, "1", "4294967296"),
            Errno(ERANGE),
        ),
        lenient(
            "lenient: last fd beyond INT_MAX",
            first_fd(None, "2147483000", "1000"),
            Errno(EINVAL),
        ),
    ]
}

#[test]
fn every_spec_row_gives_the_libsystemd_outcome() {
    let mut failures = Vec::new();
    for case in cases() {
        let got = run(&case);
        if got != case.expect {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                case.row, case.expect, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} row(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_error_message_names_the_variable_and_value() {
    for case in cases() {
        if let Err(e) = env::parse(&case.vars, PID, case.pidfd_id, case.lenient) {
            let msg = e.to_string();
            assert!(msg.contains("LISTEN_"), "{}: {msg}", case.row);
            assert!(!msg.contains('\n'), "{}: one line please: {msg}", case.row);
        }
    }
}

#[test]
fn a_huge_count_is_not_materialized() {
    // INT_MAX - 3 fds is accepted by the parser (the fd check then fails with EBADF);
    // it must not allocate a name per fd.
    let p = env::parse(&v(Some("100"), Some("2147483644"), None), PID, None, false).unwrap();
    assert_eq!(p.len(), 2_147_483_644);
    assert_eq!(p.fds(), 3..i32::MAX);
    assert_eq!(p.name(2_147_483_643), Some("unknown"));
}

#[test]
fn name_validation_follows_file_descriptor_name() {
    use listenfd_core::env::{InvalidName, validate_name};
    assert_eq!(validate_name("http"), Ok(()));
    assert_eq!(validate_name(" ~"), Ok(()));
    assert_eq!(validate_name(&"x".repeat(255)), Ok(()));
    assert_eq!(
        validate_name(&"x".repeat(256)),
        Err(InvalidName::TooLong(256))
    );
    assert_eq!(validate_name(""), Err(InvalidName::Empty));
    assert_eq!(validate_name("a:b"), Err(InvalidName::BadChar(':')));
    assert_eq!(validate_name("a\x7fb"), Err(InvalidName::BadChar('\x7f')));
    assert_eq!(validate_name("é"), Err(InvalidName::BadChar('é')));
}
