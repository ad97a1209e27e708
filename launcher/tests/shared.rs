//! One daemon for the whole test binary ([`sd_launch::Shared`]): started once, used by every
//! test, gone when the test process ends.

use std::process::Command;
use std::time::{Duration, Instant};

use sd_launch::{Launch, Shared};

static SERVER: Shared =
    Shared::new(|| Launch::new("sh").args(["-c", "sleep 300 & exec sleep 300"]));

#[test]
#[ignore = "run by the test below, in a process of its own"]
fn helper_prints_the_shared_daemons_pid() {
    let first = SERVER.get().pid();
    let again = std::thread::spawn(|| SERVER.get().pid()).join().unwrap();
    assert_eq!(first, again, "every test gets the same daemon");
    println!("SHARED_PID={first}");
}

fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => matches!(
            stat[stat.rfind(')').unwrap() + 2..].chars().next(),
            Some('Z' | 'X')
        ),
    }
}

#[test]
fn the_shared_daemon_is_started_once_and_gone_with_the_test_process() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_prints_the_shared_daemons_pid",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let pid: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("SHARED_PID="))
        .unwrap_or_else(|| panic!("no pid in {text}"))
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dead(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: a last resort for a regression, on the pid the helper reported.
    let leaked = !dead(pid) && unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0;
    assert!(!leaked, "the shared daemon {pid} outlived its test process");
}
