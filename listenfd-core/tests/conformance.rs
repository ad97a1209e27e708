//! One case per row of `shared/spec/listen-fds-protocol.md` (receiver and names sections), and
//! more: the pure decision of `env::parse` must equal libsystemd's `sd_listen_fds_with_names()`.
//! Rows that need real fds (EBADF, FD_CLOEXEC, unsetting the environment) are in `process.rs`.

mod common;

use common::cases;
use listenfd_core::env::{self, Vars};

const PID: u32 = 100;

#[test]
fn every_spec_row_gives_the_libsystemd_outcome() {
    let mut failures = Vec::new();
    for case in cases(PID) {
        let got = case.parse(PID);
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
    for case in cases(PID) {
        if let Err(e) = env::parse(&case.vars(), PID, case.pidfd_id, case.lenient) {
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
    let vars = Vars {
        listen_pid: Some("100"),
        listen_fds: Some("2147483644"),
        ..Vars::default()
    };
    let p = env::parse(&vars, PID, None, false).unwrap();
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

#[test]
fn an_empty_result_says_why() {
    use listenfd_core::env::NotForUs;
    let why = |vars: Vars<'_>, pidfd_id, lenient| {
        env::parse(&vars, PID, pidfd_id, lenient)
            .unwrap()
            .not_for_us
    };
    let pid = Some("100");
    let one = Some("1");
    assert_eq!(
        why(Vars::default(), None, false),
        Some(NotForUs::NothingPassed)
    );
    assert_eq!(
        why(Vars::default(), None, true),
        Some(NotForUs::NothingPassed)
    );
    assert_eq!(
        why(
            Vars {
                listen_fds: one,
                ..Vars::default()
            },
            None,
            false
        ),
        Some(NotForUs::NoListenPid)
    );
    assert_eq!(
        why(
            Vars {
                listen_pid: Some("7"),
                listen_fds: one,
                ..Vars::default()
            },
            None,
            false
        ),
        Some(NotForUs::OtherProcess {
            listen_pid: 7,
            our_pid: PID
        })
    );
    let pidfdid = Vars {
        listen_pid: pid,
        listen_pidfdid: Some("1"),
        listen_fds: one,
        ..Vars::default()
    };
    assert_eq!(
        why(pidfdid, Some(4242), false),
        Some(NotForUs::OtherPidfd {
            listen_pidfdid: 1,
            ours: 4242
        })
    );
    assert_eq!(
        why(
            Vars {
                listen_pid: pid,
                ..Vars::default()
            },
            None,
            false
        ),
        Some(NotForUs::NoListenFds)
    );
    assert_eq!(
        why(
            Vars {
                listen_pid: pid,
                listen_fds: one,
                ..Vars::default()
            },
            None,
            false
        ),
        None
    );
    let msg = NotForUs::OtherProcess {
        listen_pid: 7,
        our_pid: PID,
    }
    .to_string();
    assert!(msg.contains("cargo run"), "{msg}");
}
