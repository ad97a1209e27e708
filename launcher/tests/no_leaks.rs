//! Nothing is lost over many launches: no zombie children, no fds left open in the launching
//! process, no memory growth. One test in this binary, so no other test's children or fds muddle the counts.

use std::fs;

use sd_launch::Launch;

/// Our child processes, as (pid, state letter), from /proc/<pid>/stat.
fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        let mut fields = stat[stat.rfind(')').unwrap() + 2..].split(' ');
        let state = fields.next().unwrap().chars().next().unwrap();
        let ppid: u32 = fields.next().unwrap().parse().unwrap();
        if ppid == me {
            found.push((pid, state));
        }
    }
    found
}

/// Our resident memory in KiB, from /proc/self/status.
fn rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fd_count() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_thousand_spawn_drop_cycles_leave_no_zombie_and_no_fd() {
    // The first spawn of a process starts its guardian, whose socket (one fd) stays open
    // for the whole process by design: count from there.
    drop(Launch::new("true").spawn().unwrap());
    let fds_before = open_fd_count();
    let mut rss_after_warm_up = 0;
    for i in 0..1000 {
        if i == 100 {
            rss_after_warm_up = rss_kib();
        }
        match i % 3 {
            // Exited and waited for: drop has nothing left to do.
            0 => {
                let mut daemon = Launch::new("true").spawn().unwrap();
                assert!(daemon.wait().unwrap().success());
            }
            // Still running: drop kills and reaps it.
            1 => drop(Launch::new("sleep").arg("30").spawn().unwrap()),
            // Probably exited already but not reaped: drop reaps it.
            _ => drop(Launch::new("true").spawn().unwrap()),
        }
    }
    // A failed exec must not leave anything behind either.
    for _ in 0..50 {
        Launch::new("/nonexistent/program").spawn().unwrap_err();
    }
    assert_eq!(children(), [], "children left behind (pid, state)");
    assert_eq!(open_fd_count(), fds_before, "fds leaked into the launcher");
    // Memory flat: 900 more cycles after the warm-up may not grow it by more than 2 MiB
    // (a leak of even 4 KiB per launch would add 3.5 MiB).
    let growth = rss_kib().saturating_sub(rss_after_warm_up);
    assert!(growth < 2048, "RSS grew by {growth} KiB over 900 launches");
}
