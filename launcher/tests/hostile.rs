//! Hostile input to the real `sd-launch` binary. Every refusal must be: one line on stderr
//! starting with `sd-launch: `, the exit code of its class (2 command line, 3 socket), nothing
//! on stdout (a shell's `export $(sd-launch ...)` must not half-succeed), the daemon never
//! started, no socket file left behind that sd-launch created, and nothing deleted that it
//! did not create.
//!
//! The daemon in these tests is `touch MARKER`: if the marker exists after a refusal, the
//! daemon was started anyway.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SD_LAUNCH: &str = env!("CARGO_BIN_EXE_sd-launch");

/// A scratch directory plus the marker the daemon would create.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn marker(&self) -> PathBuf {
        self.path("daemon-was-started")
    }
    /// Names in the directory, sorted.
    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
    /// `sd-launch ARGS -- touch MARKER`.
    fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(SD_LAUNCH), args)
    }
    /// Like `command`, with another copy of the sd-launch binary.
    fn command_of(&self, binary: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .arg("--")
            .arg("touch")
            .arg(self.marker())
            .stdin(Stdio::null());
        cmd
    }
}

/// Assert the refusal contract on `out`; return stderr's one line.
fn refused(out: &Output, code: i32, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
    assert_eq!(stdout, "", "{what}: partial output on stdout");
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr:?}");
    assert!(stderr.starts_with("sd-launch: "), "{what}: {stderr:?}");
    stderr.trim_end().to_owned()
}

fn assert_not_started(s: &Scratch, what: &str) {
    assert!(!s.marker().exists(), "{what}: the daemon was started");
}

#[test]
fn bad_addresses_are_usage_errors() {
    let s = Scratch::new();
    let long = "9".repeat(10_000);
    for addr in [
        "",
        "@",
        "65536",
        "99999999999999999999",
        "127.0.0.1:",
        "127.0.0.1:-1",
        "127.0.0.1:80x",
        "::1:80",
        "[::1]",
        "[::1]:",
        "1.2.3.4.5:80",
        "example.com:80",
        "x.sock",
        ":80",
        "127.0.0.1:80\n",
        "127.0.0.1:\u{7}",
        "\u{1b}[31m:80",
        long.as_str(),
    ] {
        let out = s.command(&["-l", addr]).output().unwrap();
        let line = refused(&out, 2, addr);
        assert!(line.contains("invalid listen address"), "{addr:?}: {line}");
        assert!(line.len() < 600 || addr.len() > 600, "{addr:?}: {line}");
        assert_not_started(&s, addr);
    }
}

#[test]
fn a_port_in_use_is_refused_and_earlier_sockets_are_cleaned_up() {
    let s = Scratch::new();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let out = s.command(&["-l", &addr]).output().unwrap();
    let line = refused(&out, 3, "port in use");
    assert!(line.contains(&port.to_string()), "{line}");
    assert!(line.contains("in use"), "{line}");
    // The same, after a Unix socket was already created: that file is removed again.
    let sock = s.path("first.sock");
    let out = s
        .command(&["-l", sock.to_str().unwrap(), "-l", &addr])
        .output()
        .unwrap();
    refused(&out, 3, "port in use after a Unix socket");
    assert_not_started(&s, "port in use");
    assert_eq!(s.listing(), Vec::<String>::new(), "left behind");
    // The listener we hold is untouched.
    TcpStream::connect(busy.local_addr().unwrap()).expect("our listener still works");
}

/// A free port below 1024 (bound and released by us, root, just before).
fn free_privileged_port() -> Option<u16> {
    (600..1024).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

#[test]
fn a_privileged_port_without_rights_is_refused_with_a_hint() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("\n*** SKIPPED: needs root to drop privileges with setpriv ***\n");
        return;
    }
    let unprivileged_start = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    let Some(port) = free_privileged_port().filter(|p| *p < unprivileged_start) else {
        eprintln!(
            "\n*** SKIPPED: no free port below net.ipv4.ip_unprivileged_port_start={unprivileged_start} ***\n"
        );
        return;
    };
    let s = Scratch::new();
    // The unprivileged user must be able to create the marker if the daemon ran.
    fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{port}");
    // The built binary may sit below a directory only we can enter (a checkout in a private
    // temporary directory): give nobody a copy it can run.
    let binary = s.path("sd-launch");
    fs::copy(SD_LAUNCH, &binary).unwrap();
    let mut cmd = s.command_of(&binary, &["-l", &addr]);
    // Drop to nobody between fork and exec, as `setpriv --reuid=65534 --regid=65534
    // --clear-groups` would (setgroups before setgid before setuid).
    // SAFETY: setgroups, setgid and setuid are async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let line = refused(&out, 3, "privileged port");
    assert!(line.contains("Permission denied"), "{line}");
    assert!(line.contains("below 1024"), "hint missing: {line}");
    assert_not_started(&s, "privileged port");
}

#[test]
fn existing_paths_that_are_not_stale_sockets_are_never_deleted() {
    let s = Scratch::new();
    let file = s.path("file");
    fs::write(&file, "keep me").unwrap();
    let dir = s.path("dir");
    fs::create_dir(&dir).unwrap();
    let link = s.path("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let dangling = s.path("dangling");
    std::os::unix::fs::symlink(s.path("nowhere"), &dangling).unwrap();
    let live = s.path("live.sock");
    let listener = UnixListener::bind(&live).unwrap();
    let before = s.listing();
    for (path, needle) in [
        (&file, "a regular file"),
        (&dir, "a directory"),
        (&link, "a symbolic link"),
        (&dangling, "a symbolic link"),
        (&live, "another process is listening"),
    ] {
        let out = s.command(&["-l", path.to_str().unwrap()]).output().unwrap();
        let line = refused(&out, 3, needle);
        assert!(line.contains(needle), "{line}");
        assert!(line.contains("refusing to replace it"), "{line}");
        // As the second socket: the first one's file is removed again.
        let first = s.path("first.sock");
        let out = s
            .command(&["-l", first.to_str().unwrap(), "-l", path.to_str().unwrap()])
            .output()
            .unwrap();
        refused(&out, 3, needle);
        assert_not_started(&s, needle);
        assert_eq!(s.listing(), before, "{needle}");
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
    std::os::unix::net::UnixStream::connect(&live).expect("the live socket still answers");
    drop(listener);
}

#[test]
fn too_long_a_unix_path_is_refused_before_anything_is_created() {
    let s = Scratch::new();
    let prefix = s.dir.path().to_str().unwrap().len() + 1;
    for len in [108, 109, 200, 4000] {
        let name = "s".repeat(len - prefix);
        let path = s.path(&name);
        assert_eq!(path.as_os_str().len(), len);
        let out = s.command(&["-l", path.to_str().unwrap()]).output().unwrap();
        let line = refused(&out, 3, "long path");
        assert!(line.contains(&format!("the path is {len} bytes")), "{line}");
        assert!(line.contains("limited to 107"), "{line}");
        assert_not_started(&s, "long path");
        assert_eq!(s.listing(), Vec::<String>::new(), "{len}");
    }
    // 107 bytes is the limit and works.
    let name = "s".repeat(107 - prefix);
    let path = s.path(&name);
    let out = Command::new(SD_LAUNCH)
        .args([
            "--format",
            "json",
            "-l",
            path.to_str().unwrap(),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_fd_names_are_usage_errors() {
    let s = Scratch::new();
    let long = "n".repeat(256);
    for (names, needle) in [
        ("a:b", "2 fd name(s) for 1 socket(s)"),
        ("", "invalid fd name"),
        ("tab\there", "invalid fd name"),
        ("new\nline", "invalid fd name"),
        ("esc\u{1b}[0m", "invalid fd name"),
        ("del\u{7f}", "invalid fd name"),
        ("é", "invalid fd name"),
        (long.as_str(), "invalid fd name"),
    ] {
        let out = s.command(&["--fdname", names]).output().unwrap();
        let line = refused(&out, 2, names);
        assert!(line.contains(needle), "{names:?}: {line}");
        assert_not_started(&s, names);
    }
    // A name with ':' cannot be given (':' separates names); through the library it is refused.
    let err = sd_launch::Launch::new("true")
        .listen(sd_launch::SocketSpec::loopback().name("a:b"))
        .spawn()
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("invalid fd name \"a:b\""), "{err}");
}

/// `sd-launch` with RLIMIT_NOFILE lowered to `limit` for it alone.
fn with_nofile(mut cmd: Command, limit: u64) -> Command {
    // SAFETY: setrlimit is an async-signal-safe system call; the struct is built in the child.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn thousands_of_sockets_beyond_rlimit_nofile_fail_cleanly() {
    let s = Scratch::new();
    let paths: Vec<String> = (0..100)
        .map(|i| s.path(&format!("{i}.sock")).to_str().unwrap().to_owned())
        .collect();
    let mut args: Vec<&str> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        args.extend(["-l", p.as_str()]);
        if i == 0 {
            // Mostly TCP: 2,000 in all.
            for _ in 0..1900 {
                args.extend(["-l", "127.0.0.1:0"]);
            }
        }
    }
    let out = with_nofile(s.command(&args), 256).output().unwrap();
    let line = refused(&out, 3, "EMFILE");
    assert!(line.contains("Too many open files"), "{line}");
    assert_not_started(&s, "EMFILE");
    assert_eq!(
        s.listing(),
        Vec::<String>::new(),
        "socket files left behind"
    );
}

#[test]
fn a_limit_just_too_small_for_the_daemons_fds_is_also_clean() {
    // 60 sockets fit under a limit of 64 while binding, but the child needs 3 + 60 fds plus
    // the launcher's own: whichever step fails must fail cleanly.
    let s = Scratch::new();
    let mut args: Vec<&str> = Vec::new();
    for _ in 0..60 {
        args.extend(["-l", "127.0.0.1:0"]);
    }
    let out = with_nofile(s.command(&args), 64).output().unwrap();
    if out.status.success() {
        // It fit after all: the output must then be complete and the daemon started.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("LAUNCHED_PID="), "{stdout}");
        return;
    }
    let code = out.status.code().unwrap();
    assert!(code == 3 || code == 4, "exit {code}");
    refused(&out, code, "limit 64");
    assert_not_started(&s, "limit 64");
}

#[test]
fn setenv_with_non_utf8_bytes_is_passed_verbatim_or_refused_without_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let s = Scratch::new();
    let out_file = s.path("env");
    let mut cmd = Command::new(SD_LAUNCH);
    cmd.arg("--foreground")
        .arg("--stdout")
        .arg(&out_file)
        .arg("-E")
        .arg(std::ffi::OsStr::from_bytes(b"V\xff=x\xfe"))
        // env(1) itself, not a shell: dash drops variables whose names are not identifiers.
        .args(["--", "env"]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if out.status.success() {
        let env = fs::read(&out_file).unwrap();
        assert!(
            env.windows(5).any(|w| w == b"V\xff=x\xfe"),
            "the variable was mangled"
        );
    } else {
        refused(&out, 2, "non-UTF-8 -E");
    }
}

#[test]
fn nothing_is_deleted_that_sd_launch_did_not_create_when_the_daemon_cannot_start() {
    // Sockets created, then exec fails (127): the launcher's own files go, others stay.
    let s = Scratch::new();
    fs::write(s.path("bystander"), "x").unwrap();
    let sock = s.path("app.sock");
    let out = Command::new(SD_LAUNCH)
        .args(["-l", sock.to_str().unwrap(), "--", "/nonexistent/daemon"])
        .output()
        .unwrap();
    refused(&out, 127, "missing program");
    assert_eq!(s.listing(), vec!["bystander".to_owned()]);
}
