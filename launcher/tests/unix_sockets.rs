//! Unix socket files as the daemon and the user see them: the daemon's socket reports the
//! `-l` path (as under `systemd-socket-activate`), with the mode asked for, and a path whose
//! directory is missing is an error that names that directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sd_launch::Launch;

const SD_LAUNCH: &str = env!("CARGO_BIN_EXE_sd-launch");

/// `python3` from `PATH`, or `None` after a loud `SKIPPED` line (a failure with `CI=true`).
fn python3() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("python3"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = "SKIPPED: python3 not found (apt-get install python3)";
        assert!(std::env::var_os("CI").is_none_or(|v| v != "true"), "{msg}");
        eprintln!("{msg}");
    }
    found
}

/// What a daemon's `getsockname()` on fd 3 returns, printed by a tiny Python daemon.
const PRINT_SOCKNAME: &str = "import socket; print(socket.socket(fileno=3).getsockname())";

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_daemon_sees_the_path_it_was_given_with_the_mode_asked_for() {
    let Some(python) = python3() else { return };
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o660] {
        let path = dir.path().join(format!("daemon-{mode:o}.sock"));
        let out_path = dir.path().join(format!("sockname-{mode:o}"));
        let out = std::fs::File::create(&out_path).unwrap();
        let mut daemon = Launch::new(&python)
            .args(["-c", PRINT_SOCKNAME])
            .listen_on(path.to_str().unwrap())
            .socket_mode(mode)
            .stdout(out)
            .spawn()
            .unwrap();
        // The mode is checked while the daemon holds the socket.
        assert_eq!(mode_of(&path), mode);
        let status = daemon
            .wait_timeout(Duration::from_secs(30))
            .unwrap()
            .expect("the python daemon did not exit within 30 s");
        assert!(status.success(), "{status}");
        let reported = std::fs::read_to_string(&out_path).unwrap();
        assert_eq!(reported.trim_end(), path.to_str().unwrap());
    }
}

#[test]
fn a_relative_path_is_reported_absolute_by_the_daemon() {
    let Some(python) = python3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let result = Command::new(SD_LAUNCH)
        .current_dir(dir.path())
        .args(["--foreground", "--stdout"])
        .arg(&out)
        .args(["-l", "./rel.sock", "--"])
        .arg(&python)
        .args(["-c", PRINT_SOCKNAME])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(result.status.success(), "{result:?}");
    let reported = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        reported.trim_end(),
        dir.path().join("rel.sock").to_str().unwrap()
    );
}

#[test]
fn a_missing_directory_is_named_by_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nodir");
    let err = Launch::new("true")
        .listen_on(missing.join("x.sock").to_str().unwrap())
        .spawn()
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.exit_code(), 3);
    assert!(
        text.contains(&format!("{} does not exist", missing.display())),
        "{text}"
    );
    assert!(text.contains("create it"), "{text}");
    assert!(!text.contains(".sd-launch-"), "{text}");
    assert!(!missing.exists());
}

#[test]
fn a_missing_directory_is_named_by_the_command_as_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    for (arg, says) in [
        ("./nodir/x.sock", "./nodir does not exist"),
        ("./nodir/deeper/x.sock", "./nodir/deeper does not exist"),
        ("./file/x.sock", "./file is not a directory"),
    ] {
        let out = Command::new(SD_LAUNCH)
            .current_dir(dir.path())
            .args(["-l", arg, "--", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(3), "{arg}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{arg}: {stderr}");
        assert!(stderr.contains(says), "{arg}: {stderr}");
        assert!(!stderr.contains(".sd-launch-"), "{arg}: {stderr}");
        assert!(out.stdout.is_empty(), "{arg}");
    }
    // Nothing was created on the way.
    let mut entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    entries.sort();
    assert_eq!(entries, ["file"]);
}
