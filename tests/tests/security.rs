//! Secure defaults, end to end: what a daemon receives and what it passes on.
//!
//! * Nothing meant for the daemon reaches its own children: `LISTEN_*` and `NOTIFY_SOCKET`
//!   are removed by the receiver, the passed fds are close-on-exec.
//! * The default socket is loopback, from the library and from the CLI.
//! * The daemon's environment is exactly what was asked for: `-E FOO` never matches
//!   `FOOBAR` or `FOO_BAR` (systemd-socket-activate once matched by prefix), look-alikes of
//!   the protocol variables such as `LISTEN_FDS_FOO` pass untouched while the real ones are
//!   replaced, and values given with `-E` never show up in sd-launch's own output or logs.
//!
//! Unix socket modes (0600 by default) are checked in `launcher/tests/cli.rs`.
//!
//! The daemon in the first tests is this test binary, re-executed with [`DAEMON`] set: a
//! custom harness (`harness = false`) keeps it single-threaded like a daemon at the top of
//! `main`, so the receiver may remove the variables.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use listenfd_core::ListenFds;
use listenfd_core::notify::{Notifier, State};
use sd_launch::Launch;
use sd_launch_tests::bin;

const DAEMON: &str = "SD_LAUNCH_SECURITY_DAEMON";

// ---------------------------------------------------------------------------------------------
// The daemon

/// Receive like a daemon, notify, then start a child that prints its environment and which
/// fds above stderr it has.
fn daemon() {
    let mut out = std::io::stdout().lock();
    let mut fds = ListenFds::from_env().expect("receive");
    let notifier = Notifier::from_env().expect("NOTIFY_SOCKET");
    let listener = fds.tcp_listener(0).expect("a TCP listener at fd 3");
    writeln!(out, "local={}", listener.local_addr().unwrap()).unwrap();
    writeln!(out, "notified={}", notifier.is_some()).unwrap();
    Notifier::send_opt(notifier.as_ref(), &[State::Ready]).expect("notify");
    let child = Command::new("sh")
        .arg("-c")
        .arg("env | sed 's/^/env:/'; for f in 3 4 5 6 7 8 9; do [ -e /proc/self/fd/$f ] && echo fd:$f; done; true")
        .output()
        .expect("run sh");
    out.write_all(&child.stdout).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// What the daemon printed, as `key -> values`.
fn report(path: &Path) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let (k, v) = line.split_once([':', '=']).unwrap_or((line, ""));
        map.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    map
}

/// The daemon's child's environment variable names.
fn child_env_names(r: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    r.get("env")
        .into_iter()
        .flatten()
        .map(|kv| kv.split('=').next().unwrap().to_owned())
        .collect()
}

fn env_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

// ---------------------------------------------------------------------------------------------
// The tests

fn the_daemons_children_get_no_listen_variables_no_notify_socket_and_no_fds() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let out = dir.path().join("out");
    let mut server = Launch::new(std::env::current_exe().unwrap())
        .env(DAEMON, "1")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(File::create(&out).unwrap())
        .spawn()
        .expect("launch");
    let mut buf = [0; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(server.wait().unwrap().success());
    let r = report(&out);
    assert_eq!(r["notified"], ["true"], "the daemon saw NOTIFY_SOCKET");
    let names = child_env_names(&r);
    assert!(
        names.iter().any(|n| n == DAEMON),
        "env listing works: {names:?}"
    );
    let leaked: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("LISTEN_") || *n == "NOTIFY_SOCKET")
        .collect();
    assert!(
        leaked.is_empty(),
        "leaked to the daemon's child: {leaked:?}"
    );
    assert_eq!(r.get("fd"), None, "fds leaked to the daemon's child");
}

fn the_default_socket_is_loopback_from_the_library_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lib");
    let mut server = Launch::new(std::env::current_exe().unwrap())
        .env(DAEMON, "1")
        .stdout(File::create(&out).unwrap())
        .spawn()
        .expect("launch");
    assert!(server.wait().unwrap().success());
    let local = &report(&out)["local"][0];
    assert!(local.starts_with("127.0.0.1:"), "library default: {local}");

    for args in [&[][..], &["-l", "0"][..], &["-l", "8"][..]] {
        let out = dir.path().join("cli");
        let status = Command::new(bin("sd-launch"))
            .args(args)
            .arg("--foreground")
            .arg("--stdout")
            .arg(&out)
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .env(DAEMON, "1")
            .output()
            .unwrap();
        if args == ["-l", "8"] {
            // Port 8 may be taken or refused; what matters is that it is never 0.0.0.0:8.
            if !status.status.success() {
                continue;
            }
        }
        assert!(
            status.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let local = &report(&out)["local"][0];
        assert!(local.starts_with("127.0.0.1:"), "CLI {args:?}: {local}");
    }
}

fn setenv_passes_exactly_the_named_variable_never_a_prefix_match() {
    // FOO unset: `-E FOO` passes nothing, not FOOBAR's or FOO_BAR's value under any name.
    let out = Command::new(bin("sd-launch"))
        .args(["--foreground", "-E", "FOO", "--", "/usr/bin/env"])
        .env_clear()
        .env("FOOBAR", "foobar")
        .env("FOO_BAR", "foo_bar")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (ours, daemon): (Vec<&str>, Vec<&str>) =
        stdout.lines().partition(|l| l.starts_with("LAUNCHED_"));
    assert_eq!(ours.len(), 2, "{stdout}");
    assert!(!daemon.iter().any(|l| l.starts_with("FOO=")), "{daemon:?}");
    // Inherited as they were, each under its own name.
    assert!(daemon.contains(&"FOOBAR=foobar"), "{daemon:?}");
    assert!(daemon.contains(&"FOO_BAR=foo_bar"), "{daemon:?}");

    // With a clean environment (library), the daemon gets exactly what was asked for.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env");
    let mut server = Launch::new("/usr/bin/env")
        .env_clear()
        .env("FOO", "1")
        .stdout(File::create(&path).unwrap())
        .spawn()
        .unwrap();
    let pid = server.pid();
    assert!(server.wait().unwrap().success());
    assert_eq!(
        env_lines(&std::fs::read(&path).unwrap()),
        [
            "FOO=1".to_owned(),
            "LISTEN_FDS=1".to_owned(),
            format!("LISTEN_PID={pid}")
        ]
    );
}

fn protocol_look_alikes_pass_untouched_and_the_real_variables_are_replaced() {
    let out = Command::new(bin("sd-launch"))
        .args(["--foreground", "--fdname", "web", "--", "/usr/bin/env"])
        .env("LISTEN_FDS_FOO", "kept")
        .env("LISTEN_FDSX", "kept too")
        .env("XLISTEN_PID", "also kept")
        .env("LISTEN_FDS", "9")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "a:b:c:d:e:f:g:h:i")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let pid = lines
        .iter()
        .find_map(|l| l.strip_prefix("LAUNCHED_PID="))
        .unwrap();
    for expected in [
        "LISTEN_FDS_FOO=kept",
        "LISTEN_FDSX=kept too",
        "XLISTEN_PID=also kept",
        "LISTEN_FDS=1",
        "LISTEN_FDNAMES=web",
        &format!("LISTEN_PID={pid}"),
    ] {
        assert_eq!(
            lines.iter().filter(|l| **l == expected).count(),
            1,
            "{expected} in {lines:?}"
        );
    }
    for var in ["LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES="] {
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(var)).count(),
            1,
            "{var} more than once"
        );
    }
}

fn values_given_to_the_daemon_never_appear_in_sd_launchs_output_or_logs() {
    const SECRET: &str = "s3cr3t-token-value";
    for format in ["env", "json"] {
        let out = Command::new(bin("sd-launch"))
            .args(["--foreground", "--format", format, "-E"])
            .arg(format!("API_TOKEN={SECRET}"))
            .args(["-E", "INHERITED_SECRET", "--", "true"])
            .env("INHERITED_SECRET", SECRET)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        assert!(out.status.success(), "{format}");
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !String::from_utf8_lossy(bytes).contains(SECRET),
                "{format}: the secret is on sd-launch's {stream}"
            );
        }
    }
}

fn main() {
    if std::env::var_os(DAEMON).is_some() {
        daemon();
        return;
    }
    let tests: &[(&str, fn())] = &[
        (
            "the_daemons_children_get_no_listen_variables_no_notify_socket_and_no_fds",
            the_daemons_children_get_no_listen_variables_no_notify_socket_and_no_fds,
        ),
        (
            "the_default_socket_is_loopback_from_the_library_and_the_cli",
            the_default_socket_is_loopback_from_the_library_and_the_cli,
        ),
        (
            "setenv_passes_exactly_the_named_variable_never_a_prefix_match",
            setenv_passes_exactly_the_named_variable_never_a_prefix_match,
        ),
        (
            "protocol_look_alikes_pass_untouched_and_the_real_variables_are_replaced",
            protocol_look_alikes_pass_untouched_and_the_real_variables_are_replaced,
        ),
        (
            "values_given_to_the_daemon_never_appear_in_sd_launchs_output_or_logs",
            values_given_to_the_daemon_never_appear_in_sd_launchs_output_or_logs,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let ok = std::panic::catch_unwind(test).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    println!("\ntest result: {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
