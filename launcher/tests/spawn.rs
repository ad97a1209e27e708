//! What a daemon started by `Launch::spawn` finds in its process: exactly the sockets at
//! 3..3+n-1, in order, without FD_CLOEXEC, nothing else above 2, and LISTEN_* describing them.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use sd_launch::{Error, Launch, SocketSpec};

/// The fd numbers open in process `pid`, sorted.
fn open_fds(pid: u32) -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    fds
}

/// What fd `fd` of process `pid` points at, e.g. `socket:[1234]`.
fn fd_target(pid: u32, fd: RawFd) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap_or_else(|e| panic!("fd {fd} of {pid}: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// The `flags:` field of /proc/<pid>/fdinfo/<fd> (octal open flags, O_CLOEXEC = 02000000).
fn fd_flags(pid: u32, fd: RawFd) -> u32 {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let line = info.lines().find(|l| l.starts_with("flags:")).unwrap();
    u32::from_str_radix(line["flags:".len()..].trim(), 8).unwrap()
}

/// The `socket:[inode]` link text of a socket we hold.
fn socket_link(fd: &impl AsRawFd) -> String {
    let meta = fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    format!("socket:[{}]", meta.ino())
}

/// Run `script` under `sh -c` with stdout going to a temporary file; wait for it and return
/// (its pid, what it printed).
fn run_sh(launch: impl FnOnce(Launch) -> Launch, script: &str) -> (u32, String) {
    let out = tempfile::tempfile().unwrap();
    let mut copy = out.try_clone().unwrap();
    let mut child = launch(Launch::new("sh").arg("-c").arg(script))
        .stdout(out)
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{script:?} failed: {status}");
    let mut text = String::new();
    copy.seek(SeekFrom::Start(0)).unwrap(); // the copy shares the child's file offset
    copy.read_to_string(&mut text).unwrap();
    (child.pid(), text)
}

/// A daemon that has finished starting up: `sh` that says `ready` and then blocks reading
/// stdin. A freshly exec'd program opens files for a moment while it starts (the dynamic
/// loader, locale data), so its fd table is only looked at once it is settled.
struct Settled {
    daemon: sd_launch::Launched,
    _stdin: fs::File,
}

/// A close-on-exec pipe as (read end, write end).
fn pipe() -> (fs::File, fs::File) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two new fds into the array we own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are new and owned by nobody else.
    unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) }
}

fn settled(configure: impl FnOnce(Launch) -> Launch) -> Settled {
    let (stdin_r, stdin_w) = pipe();
    let (mut stdout_r, stdout_w) = pipe();
    let daemon = configure(Launch::new("sh").args(["-c", "echo ready; read _"]))
        .stdin(stdin_r)
        .stdout(stdout_w)
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    stdout_r.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    Settled {
        daemon,
        _stdin: stdin_w,
    }
}

#[test]
fn child_has_exactly_stdio_and_the_sockets_even_when_the_parent_leaks_fds() {
    // A deliberately leaky fd: opened without O_CLOEXEC, and made sure of with fcntl.
    // SAFETY: open with a NUL-terminated path; the fd is ours and closed below.
    let raw = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    assert!(raw >= 0);
    // SAFETY: raw is an open fd we own.
    let leaky = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: F_SETFD on an fd we own.
    assert_eq!(unsafe { libc::fcntl(raw, libc::F_SETFD, 0) }, 0);
    // SAFETY: F_GETFD on an fd we own.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, 0);

    let settled = settled(|l| {
        l.listen(SocketSpec::loopback())
            .listen(SocketSpec::loopback())
            .listen(SocketSpec::loopback())
    });
    let pid = settled.daemon.pid();
    assert_eq!(open_fds(pid), [0, 1, 2, 3, 4, 5]);
    for fd in 3..=5 {
        assert!(fd_target(pid, fd).starts_with("socket:["), "fd {fd}");
        assert_eq!(
            fd_flags(pid, fd) & libc::O_CLOEXEC as u32,
            0,
            "fd {fd} has O_CLOEXEC"
        );
    }
    drop(leaky);
}

#[test]
fn child_sees_its_fds_via_proc_self_fd() {
    // The same check from inside the child: `ls` lists its own fds (plus the one it opened
    // to read the directory, which is the highest). Seen from the child, not the parent.
    let (_, text) = run_sh(
        |l| {
            l.listen(SocketSpec::loopback())
                .listen(SocketSpec::loopback())
        },
        "exec ls /proc/self/fd",
    );
    let mut fds: Vec<RawFd> = text
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    fds.sort();
    let dir_fd = fds.pop().unwrap();
    assert_eq!(fds, [0, 1, 2, 3, 4]);
    assert!(dir_fd >= 5);
}

#[test]
fn sockets_arrive_at_three_onwards_in_the_order_given() {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let (link_a, link_b) = (socket_link(&a), socket_link(&b));
    let daemon = Launch::new("sleep").arg("30").fd(b).fd(a).spawn().unwrap();
    assert_eq!(fd_target(daemon.pid(), 3), link_b);
    assert_eq!(fd_target(daemon.pid(), 4), link_a);
}

/// Runs inside a fresh copy of this test binary (see the test below), where fds 3 and 4
/// are ours to take.
#[test]
#[ignore = "helper: run by sources_already_on_the_targets_are_swapped_correctly"]
fn helper_sources_on_targets() {
    if std::env::var_os("SD_LAUNCH_TEST_HELPER").is_none() {
        return;
    }
    for fd in [3, 4] {
        // SAFETY: F_GETFD on an fd number only asks whether it is open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags, -1, "fd {fd} is taken");
    }
    // Fds 3 and 4 are the lowest free numbers, so new sockets land there, with
    // FD_CLOEXEC set as std sets it on everything.
    let at3 = OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap());
    let at4 = OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap());
    assert_eq!((at3.as_raw_fd(), at4.as_raw_fd()), (3, 4));
    let (link3, link4) = (socket_link(&at3), socket_link(&at4));
    let settled = settled(|l| l.fd(at4).fd(at3));
    let pid = settled.daemon.pid();
    assert_eq!(open_fds(pid), [0, 1, 2, 3, 4]);
    assert_eq!(
        fd_target(pid, 3),
        link4,
        "fd 3 must be the socket that was at 4"
    );
    assert_eq!(
        fd_target(pid, 4),
        link3,
        "fd 4 must be the socket that was at 3"
    );
    for fd in [3, 4] {
        assert_eq!(fd_flags(pid, fd) & libc::O_CLOEXEC as u32, 0, "fd {fd}");
    }
    println!("HELPER-OK");
}

#[test]
fn sources_already_on_the_targets_are_swapped_correctly() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["helper_sources_on_targets", "--exact", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env("SD_LAUNCH_TEST_HELPER", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("HELPER-OK"),
        "helper failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sixty_four_sockets_arrive_in_order() {
    let listeners: Vec<TcpListener> = (0..64)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let links: Vec<String> = listeners.iter().map(socket_link).collect();
    let settled = settled(|mut launch| {
        for l in listeners {
            launch = launch.fd(l);
        }
        launch
    });
    let pid = settled.daemon.pid();
    assert_eq!(open_fds(pid), (0..67).collect::<Vec<_>>());
    for (i, link) in links.iter().enumerate() {
        assert_eq!(&fd_target(pid, 3 + i as RawFd), link, "socket {i}");
    }
}

#[test]
fn sixty_four_bound_sockets_report_their_ports_in_fd_order() {
    let mut launch = Launch::new("sleep").arg("30");
    for _ in 0..64 {
        launch = launch.listen(SocketSpec::loopback());
    }
    let daemon = launch.spawn().unwrap();
    let sockets = daemon.sockets();
    assert_eq!(sockets.len(), 64);
    for (i, s) in sockets.iter().enumerate() {
        assert_eq!(s.fd, 3 + i as RawFd);
        // The port reported for fd 3+i is the one the child's fd 3+i listens on.
        let inode = fd_target(daemon.pid(), s.fd);
        let port = daemon.local_addr(i).port();
        assert_eq!(
            tcp_inode_for_port(port).as_deref(),
            Some(&inode[..]),
            "socket {i}"
        );
    }
}

/// The `socket:[inode]` of the 127.0.0.1 listener on `port`, from /proc/net/tcp.
fn tcp_inode_for_port(port: u16) -> Option<String> {
    let table = fs::read_to_string("/proc/self/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols[1] == local && cols[3] == "0A").then(|| format!("socket:[{}]", cols[9]))
    })
}

#[test]
fn listen_pid_is_the_childs_own_pid_and_listen_fds_counts_the_sockets() {
    let (pid, text) = run_sh(
        |l| {
            l.listen(SocketSpec::loopback())
                .listen(SocketSpec::loopback())
        },
        r#"printf '%s %s %s\n' "$$" "$LISTEN_PID" "$LISTEN_FDS""#,
    );
    assert_eq!(text, format!("{pid} {pid} 2\n"));
}

#[test]
fn listen_fdnames_is_escaped_and_absent_without_names() {
    let mut named = SocketSpec::loopback();
    named.name = Some(r"back\slash".into());
    let mut plain = SocketSpec::loopback();
    plain.name = Some("http".into());
    let (_, text) = run_sh(
        |l| l.listen(named).listen(plain),
        r#"printf '%s' "$LISTEN_FDNAMES""#,
    );
    assert_eq!(text, r"back\\slash:http");

    let (_, text) = run_sh(
        |l| l.listen(SocketSpec::loopback()),
        r#"printf '%s' "${LISTEN_FDNAMES-unset}""#,
    );
    assert_eq!(text, "unset");
}

#[test]
fn an_unnamed_socket_among_named_ones_is_called_unknown() {
    let mut named = SocketSpec::loopback();
    named.name = Some("web".into());
    let (_, text) = run_sh(
        |l| l.listen(SocketSpec::loopback()).listen(named),
        r#"printf '%s' "$LISTEN_FDNAMES""#,
    );
    assert_eq!(text, "unknown:web");
}

#[test]
fn a_name_with_a_colon_is_refused_before_anything_runs() {
    let mut bad = SocketSpec::loopback();
    bad.name = Some("a:b".into());
    let err = Launch::new("true").listen(bad).spawn().unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}

#[test]
fn listen_variables_set_by_the_caller_are_not_passed_through() {
    let (pid, text) = run_sh(
        |l| {
            l.env("LISTEN_PID", "1")
                .env("LISTEN_FDS", "9")
                .env("LISTEN_FDNAMES", "bogus")
                .env("LISTEN_PIDFDID", "42")
                .env("LISTEN_FDS_FIRST_FD", "7")
        },
        r#"printf '%s|%s|%s|%s|%s' "$LISTEN_PID" "$LISTEN_FDS" "${LISTEN_FDNAMES-unset}" "${LISTEN_PIDFDID-unset}" "${LISTEN_FDS_FIRST_FD-unset}""#,
    );
    assert_eq!(text, format!("{pid}|1|unset|unset|unset"));
}

#[test]
fn no_pid_omits_listen_pid_but_keeps_listen_fds() {
    let (_, text) = run_sh(
        |l| l.no_pid(true),
        r#"printf '%s|%s' "${LISTEN_PID-unset}" "$LISTEN_FDS""#,
    );
    assert_eq!(text, "unset|1");
}

#[test]
fn a_missing_program_is_not_found() {
    let err = Launch::new("/nonexistent/sd-launch-test-program")
        .spawn()
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 127);
    assert!(err.to_string().contains("sd-launch-test-program"), "{err}");

    let err = Launch::new("sd-launch-no-such-program-in-path")
        .spawn()
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[test]
fn a_file_without_execute_permission_or_a_directory_is_not_executable() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    for program in [script.as_path(), dir.path()] {
        let err = Launch::new(program).spawn().unwrap_err();
        assert!(
            matches!(err, Error::NotExecutable { .. }),
            "{program:?}: {err:?}"
        );
        assert_eq!(err.exit_code(), 126);
    }
}

/// Zombie children (state Z) of this process, from /proc/<pid>/stat.
fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    let mut zombies = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let mut fields = after_comm.split(' ');
        let state = fields.next().unwrap();
        let ppid: u32 = fields.next().unwrap().parse().unwrap();
        if ppid == me && state == "Z" {
            zombies.push(pid);
        }
    }
    zombies
}

#[test]
fn a_child_that_dies_at_once_is_reaped_on_drop() {
    let daemon = Launch::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let pid = daemon.pid();
    drop(daemon);
    assert!(!zombie_children().contains(&pid), "{pid} left as a zombie");
}

#[test]
fn a_held_daemon_runs_only_when_released_and_a_dropped_one_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    for release in [false, true] {
        let held = Launch::new("sh")
            .args(["-c", &script])
            .spawn_held()
            .unwrap();
        let pid = held.pid();
        // Held before exec: still our fork, not sh, and it has not run.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!marker.exists(), "ran before release");
        if release {
            let mut daemon = held.release().unwrap();
            assert!(daemon.wait().unwrap().success());
            assert!(marker.exists(), "did not run after release");
        } else {
            drop(held);
            assert!(!marker.exists(), "a dropped held daemon ran");
            assert_eq!(child_state(pid), None, "{pid} not reaped");
        }
    }
}

#[test]
fn a_missing_program_is_reported_before_the_hold() {
    let err = Launch::new("no-such-program-sd-launch-test")
        .spawn_held()
        .unwrap_err();
    assert_eq!(err.exit_code(), 127, "{err}");
}

#[test]
fn a_child_that_dies_at_once_reports_its_status() {
    let mut daemon = Launch::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    assert_eq!(daemon.wait().unwrap().code(), Some(3));
    // A second wait returns the same status instead of failing with ECHILD.
    assert_eq!(daemon.wait().unwrap().code(), Some(3));
}

#[test]
fn the_default_socket_is_a_connectable_loopback_tcp_listener() {
    let daemon = Launch::new("sleep").arg("30").spawn().unwrap();
    let addr = daemon.local_addr(0);
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0);
    // Nobody accepts, but the kernel completes the handshake into the backlog.
    TcpStream::connect(addr).unwrap();
}

#[test]
fn a_panicking_test_does_not_leave_its_daemon_running() {
    let pid = std::sync::Mutex::new(0);
    let result = std::panic::catch_unwind(|| {
        let daemon = Launch::new("sleep").arg("30").spawn().unwrap();
        *pid.lock().unwrap() = daemon.pid();
        panic!("the test fails while the daemon runs");
    });
    assert!(result.is_err());
    let pid = *pid.lock().unwrap();
    assert_ne!(pid, 0);
    // Reaped, not merely killed: it is no child of ours any more, in any state.
    assert_eq!(child_state(pid), None, "daemon {pid} survived the panic");
}

/// The state letter of `pid` if it is a child of this process.
fn child_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 2..].split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid: u32 = fields.next()?.parse().ok()?;
    (ppid == std::process::id()).then_some(state)
}
