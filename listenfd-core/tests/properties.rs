//! Properties of the pure parser: total on arbitrary input, names round-trip, and for
//! well-formed input the result equals a straightforward model.

use listenfd_core::env::{
    self, EnvError, Vars, escape_name, join_names, split_names, validate_name,
};
use proptest::prelude::*;

fn opt_string() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        any::<String>().prop_map(Some),
        "[ \t0-9a-fxobXOB+:\\\\-]{0,24}".prop_map(Some),
    ]
}

/// Format `value` the way a launcher (or a sloppy script) might: decimal, hex, C octal, 0b,
/// 0o, with optional leading systemd whitespace and '+'.
fn formatted(value: i64) -> impl Strategy<Value = String> {
    (0..5u8, "[ \t\n\r]{0,2}", any::<bool>()).prop_map(move |(form, ws, plus)| {
        let (sign, magnitude) = if value < 0 {
            ("-", value.unsigned_abs())
        } else {
            ("", value as u64)
        };
        let sign = if sign.is_empty() && plus && form < 3 {
            "+"
        } else {
            sign
        };
        let body = match form {
            0 => format!("{magnitude}"),
            1 => format!("0x{magnitude:x}"),
            2 => format!("0{magnitude:o}"),
            3 => format!("0b{magnitude:b}"),
            _ => format!("0o{magnitude:o}"),
        };
        // systemd strips 0b/0o before strtol, so their sign goes after the prefix
        match form {
            3 | 4 => format!("{ws}{}{sign}{}", &body[..2], &body[2..]),
            _ => format!("{ws}{sign}{body}"),
        }
    })
}

fn valid_name() -> impl Strategy<Value = String> {
    "[ -9;-~]{1,20}" // printable ASCII except ':'
}

proptest! {
    #[test]
    fn parse_never_panics_and_results_are_consistent(
        pid in opt_string(), pidfdid in opt_string(), fds in opt_string(),
        names in opt_string(), first in opt_string(),
        our_pid in any::<u32>(), our_pidfd in any::<Option<u64>>(), lenient in any::<bool>(),
    ) {
        let vars = Vars {
            listen_pid: pid.as_deref(),
            listen_pidfdid: pidfdid.as_deref(),
            listen_fds: fds.as_deref(),
            listen_fdnames: names.as_deref(),
            listen_fds_first_fd: first.as_deref(),
        };
        match env::parse(&vars, our_pid, our_pidfd, lenient) {
            Ok(p) => {
                prop_assert!(p.first_fd >= 3);
                prop_assert!(p.first_fd as i64 + p.len() as i64 <= i32::MAX as i64);
                if let Some(names) = &p.names {
                    prop_assert_eq!(names.len(), p.len());
                }
                if !lenient {
                    prop_assert_eq!(p.first_fd, 3);
                }
            }
            Err(e) => {
                prop_assert!(e.errno() == libc::EINVAL || e.errno() == libc::ERANGE);
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn names_round_trip(names in prop::collection::vec(any::<String>(), 1..8)) {
        prop_assert_eq!(split_names(&join_names(&names)).unwrap(), names);
    }

    #[test]
    fn one_escaped_name_is_one_name(name in any::<String>()) {
        prop_assert_eq!(split_names(&escape_name(&name)).unwrap(), vec![name]);
    }

    #[test]
    fn split_never_panics_and_counts_unescaped_colons(value in any::<String>()) {
        match split_names(&value) {
            Ok(names) => {
                // Count separators: colons not preceded by an escaping backslash.
                let mut seps = 0;
                let mut chars = value.chars();
                while let Some(c) = chars.next() {
                    match c { '\\' => { chars.next(); } ':' => seps += 1, _ => {} }
                }
                prop_assert_eq!(names.len(), seps + 1);
            }
            Err(EnvError::TrailingBackslash { .. }) => {
                let trailing = value.chars().rev().take_while(|&c| c == '\\').count();
                prop_assert!(trailing % 2 == 1);
            }
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    #[test]
    fn valid_names_survive_join_and_validate(names in prop::collection::vec(valid_name(), 1..6)) {
        for n in &names { prop_assert!(validate_name(n).is_ok()); }
        prop_assert_eq!(split_names(&join_names(&names)).unwrap(), names);
    }

    /// Model for well-formed input: the fds are ours iff LISTEN_PID equals our pid; names are
    /// the given ones.
    #[test]
    fn well_formed_input_equals_the_model(
        (pid_text, pid) in (1..=i32::MAX as i64).prop_flat_map(|p| (formatted(p), Just(p as u32))),
        (n_text, names) in prop::collection::vec(valid_name(), 1..6)
            .prop_flat_map(|names| (formatted(names.len() as i64), Just(names))),
        ours in any::<bool>(),
        lenient in any::<bool>(),
    ) {
        let joined = join_names(&names);
        let vars = Vars {
            listen_pid: Some(&pid_text),
            listen_fds: Some(&n_text),
            listen_fdnames: Some(&joined),
            ..Vars::default()
        };
        let our_pid = if ours { pid } else { pid.wrapping_add(1) };
        let p = env::parse(&vars, our_pid, None, lenient).unwrap();
        if ours {
            prop_assert_eq!(p.fds(), 3..3 + names.len() as i32);
            prop_assert_eq!(p.names, Some(names));
        } else {
            prop_assert!(p.is_empty());
        }
    }

    /// Model for LISTEN_FDS: any integer, in any accepted notation, is accepted iff it is in
    /// 1..=INT_MAX-3; other values in int range are EINVAL, values beyond int are ERANGE.
    #[test]
    fn listen_fds_count_follows_the_model(
        (text, value) in prop_oneof![
            -5i64..40,
            (i32::MAX as i64 - 5)..=(i32::MAX as i64 + 5),
            (i32::MIN as i64 - 5)..=(i32::MIN as i64 + 5),
            any::<i64>(),
        ].prop_flat_map(|x| (formatted(x), Just(x))),
    ) {
        let vars = Vars { listen_pid: Some("1"), listen_fds: Some(&text), ..Vars::default() };
        let result = env::parse(&vars, 1, None, false);
        if (1..=(i32::MAX - 3) as i64).contains(&value) {
            prop_assert_eq!(result.unwrap().len() as i64, value);
        } else if i32::try_from(value).is_ok() {
            prop_assert_eq!(result.unwrap_err().errno(), libc::EINVAL);
        } else {
            prop_assert_eq!(result.unwrap_err().errno(), libc::ERANGE);
        }
    }
}
