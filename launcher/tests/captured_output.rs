//! The daemon's output as a test writer sees it: captured, not mixed into `cargo test`'s
//! output, and shown with a failing test's own output.

use std::process::Command;
use std::time::Duration;

use sd_launch::{Launch, Wait};

fn chatty() -> Launch {
    Launch::new("sh")
        .args([
            "-c",
            "echo 'daemon says hello'; echo 'daemon warns' >&2; exec sleep 30",
        ])
        .wait_until(Wait::log("warns").unwrap(), Duration::from_secs(10))
}

#[test]
#[ignore = "run by the test below, in a process of its own"]
fn helper_panics_while_holding_a_daemon() {
    let _daemon = chatty().spawn().unwrap();
    panic!("the test's own assertion failed");
}

#[test]
#[ignore = "run by the test below, in a process of its own"]
fn helper_passes_while_holding_a_daemon() {
    let _daemon = chatty().spawn().unwrap();
}

fn run_helper(name: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", name, "--test-threads=1"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_failing_test_shows_the_daemons_output_and_a_passing_one_does_not() {
    let failed = run_helper("helper_panics_while_holding_a_daemon");
    assert!(
        failed.contains("the test's own assertion failed"),
        "{failed}"
    );
    assert!(failed.contains("---- sh (pid"), "{failed}");
    assert!(failed.contains("daemon says hello"), "{failed}");
    assert!(failed.contains("daemon warns"), "{failed}");
    let passed = run_helper("helper_passes_while_holding_a_daemon");
    assert!(passed.contains("1 passed"), "{passed}");
    assert!(!passed.contains("daemon says hello"), "{passed}");
    assert!(!passed.contains("daemon warns"), "{passed}");
}

#[test]
fn a_daemon_flooding_its_output_never_blocks() {
    // 8 MiB on stdout: 128 pipe buffers, none of them read by the test.
    let mut daemon = Launch::new("sh")
        .args([
            "-c",
            "head -c 8388608 /dev/zero | tr '\\0' x; echo; echo done >&2",
        ])
        .spawn()
        .unwrap();
    let status = daemon.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon blocked on its output"
    );
    assert_eq!(daemon.stderr().as_deref(), Some("done\n"));
    let out = daemon.stdout().unwrap();
    assert!(
        out.len() <= 256 * 1024 && out.ends_with("xx\n"),
        "{}",
        out.len()
    );
}
