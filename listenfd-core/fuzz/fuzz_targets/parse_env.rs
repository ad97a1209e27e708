//! Fuzz the pure parser. Input: NUL-separated fields
//! `flags \0 LISTEN_PID \0 LISTEN_PIDFDID \0 LISTEN_FDS \0 LISTEN_FDNAMES \0 LISTEN_FDS_FIRST_FD`;
//! a field starting with `=` sets the variable to the rest, anything else leaves it unset.
//! Flags: `L` lenient, `P` our pidfd id is known (4242). Our pid is 100.
#![no_main]

use libfuzzer_sys::fuzz_target;
use listenfd_core::env::{self, Vars, join_names, split_names};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let flags = fields.next().unwrap_or("");
    let mut value = || fields.next().and_then(|f| f.strip_prefix('='));
    let vars = Vars {
        listen_pid: value(),
        listen_pidfdid: value(),
        listen_fds: value(),
        listen_fdnames: value(),
        listen_fds_first_fd: value(),
    };
    let lenient = flags.contains('L');
    let pidfd_id = flags.contains('P').then_some(4242);
    match env::parse(&vars, 100, pidfd_id, lenient) {
        Ok(parsed) => {
            assert!(parsed.first_fd >= 3);
            assert!(i64::from(parsed.first_fd) + parsed.len() as i64 <= i64::from(i32::MAX));
            if let Some(names) = &parsed.names {
                assert_eq!(names.len(), parsed.len());
                assert_eq!(&split_names(&join_names(names)).unwrap(), names);
            }
        }
        Err(e) => {
            // EINVAL (22) or ERANGE (34), as libsystemd; anything else is a bug.
            assert!(matches!(e.errno(), 22 | 34), "unexpected errno in {e:?}");
            assert!(!e.to_string().is_empty());
        }
    }
});
