//! "Does it work with my daemon?": real daemons from Debian bookworm and PyPI started through
//! the `sd-launch` CLI on a port-0 socket (a Unix socket for dbus-daemon), each asked
//! something with its own client where it has one, then stopped with its stop signal and
//! checked to have exited cleanly. README.md's table "Daemons known to work" lists the same
//! command lines and quirks. Nothing is installed here: `.ci/run` installs the packages and the
//! Python venv; an absent tool is a loud SKIPPED (a failure with CI=true).

use sd_launch_tests::{Supervised, get_tcp, python_tool, skip, tool_or_skip, wait_gone};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One ASGI and one WSGI application, each answering with the serving process's pid.
const APP_PY: &str = r#"import os

def _body(kind):
    return ("%s says hello from pid %d\n" % (kind, os.getpid())).encode()

async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    body = _body("asgi")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

def wsgi(environ, start_response):
    body = _body("wsgi")
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"#;

/// A tool from a Debian package; SKIPPED (on the terminal, even when the test passes) with the
/// apt-get line when absent.
fn apt_tool(name: &str, package: &str) -> Option<PathBuf> {
    tool_or_skip(name, &format!("apt-get install -y {package}"))
}

fn python_app(dir: &Path) {
    std::fs::write(dir.join("app.py"), APP_PY).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `sd-launch --foreground --outfile <dir>/daemon.log [extra] -- program args...`
fn supervise(dir: &Path, extra: &[&str], program: &Path, args: &[&str]) -> Supervised {
    let log = dir.join("daemon.log");
    let mut argv = vec!["--foreground", "--outfile", s(&log)];
    argv.extend_from_slice(extra);
    argv.push("--");
    argv.push(s(program));
    argv.extend_from_slice(args);
    Supervised::start(Some(&log), argv)
}

/// Run a client and return its stdout; panics with everything it printed when it fails.
fn run_client(cmd: &mut Command, daemon: &Supervised) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run the client");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        status.success(),
        "{cmd:?} failed ({status}):\n{stdout}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&stderr),
        daemon.log()
    );
    stdout
}

/// GET / and check the Python app answered from a process of this daemon.
fn assert_python_app_answers(daemon: &Supervised, kind: &str) -> u32 {
    let r = get_tcp(daemon.addr(0), "/")
        .unwrap_or_else(|e| panic!("GET /: {e}; daemon log:\n{}", daemon.log()));
    assert_eq!(r.status, 200, "{r:?}\n{}", daemon.log());
    let pid = r
        .body
        .strip_prefix(&format!("{kind} says hello from pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected body {:?}", r.body));
    assert!(
        pid == daemon.pid || sd_launch_tests::alive(pid),
        "answered by pid {pid}, not a live process"
    );
    pid
}

#[test]
fn uvicorn_serves_the_fd_named_in_its_arguments() {
    let Some(uvicorn) = python_tool("uvicorn") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    python_app(dir.path());
    let daemon = supervise(
        dir.path(),
        &[],
        &uvicorn,
        &["--fd", "3", "--app-dir", s(dir.path()), "app:asgi"],
    );
    // A single process: the app runs in the pid sd-launch started.
    assert_eq!(assert_python_app_answers(&daemon, "asgi"), daemon.pid);
    let log = dir.path().join("daemon.log");
    let status = daemon.stop(libc::SIGTERM);
    // A graceful shutdown, after which uvicorn re-raises the signal: sd-launch reports 128+15.
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("Finished server process"), "{log}");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{log}");
}

#[test]
fn hypercorn_serves_a_fd_url_bind() {
    let Some(hypercorn) = python_tool("hypercorn") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    python_app(dir.path());
    // hypercorn has no --app-dir: a path before the module name does that.
    let app = format!("{}:asgi", s(&dir.path().join("app")));
    let daemon = supervise(dir.path(), &[], &hypercorn, &["--bind", "fd://3", &app]);
    assert_python_app_answers(&daemon, "asgi");
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "hypercorn exited {status}");
}

#[test]
fn gunicorn_takes_listen_fds_without_a_bind_option() {
    let Some(gunicorn) = python_tool("gunicorn") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    python_app(dir.path());
    let daemon = supervise(
        dir.path(),
        &[],
        &gunicorn,
        &["--no-control-socket", "--chdir", s(dir.path()), "app:wsgi"],
    );
    // The master (LISTEN_PID) hands the socket to a forked worker, which answers.
    let worker = assert_python_app_answers(&daemon, "wsgi");
    assert_ne!(worker, daemon.pid);
    let port = daemon.addr(0).port();
    assert!(
        daemon
            .log()
            .contains(&format!("Listening at: http://127.0.0.1:{port}")),
        "{}",
        daemon.log()
    );
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "gunicorn exited {status}");
    assert!(wait_gone(worker), "gunicorn worker {worker} kept running");
}

/// uWSGI (Debian's, with its python3 plugin) serving the WSGI app; `socket` are the options
/// that make it speak HTTP on the passed socket. Twenty requests, every one answered: a
/// passed fd that uWSGI registered with its own uwsgi protocol would answer none.
fn uwsgi_serves_http(socket: &[&str]) {
    let Some(uwsgi) = tool_or_skip(
        "uwsgi",
        "apt-get install -y uwsgi-core uwsgi-plugin-python3",
    ) else {
        return;
    };
    if !Path::new("/usr/lib/uwsgi/plugins/python3_plugin.so").is_file() {
        skip::<()>(
            "uwsgi's python3 plugin not found",
            "apt-get install -y uwsgi-plugin-python3",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    python_app(dir.path());
    let mut args = vec!["--plugin", "python3", "--master", "--chdir", s(dir.path())];
    args.extend_from_slice(socket);
    args.extend(["--module", "app:wsgi"]);
    let daemon = supervise(dir.path(), &[], &uwsgi, &args);
    for _ in 0..20 {
        assert_python_app_answers(&daemon, "wsgi");
    }
    // uWSGI checks LISTEN_PID, then adopts fds 3.. (and says so).
    assert!(
        daemon.log().contains("socket activation detected"),
        "{}",
        daemon.log()
    );
    // SIGTERM would make uWSGI 2.0 reload; SIGINT stops it.
    let status = daemon.stop(libc::SIGINT);
    assert!(status.success(), "uwsgi exited {status}");
}

#[test]
fn uwsgi_speaks_http_on_the_passed_socket_with_protocol_http() {
    uwsgi_serves_http(&["--protocol", "http"]);
}

#[test]
fn uwsgi_speaks_http_on_an_http_socket_naming_fd_3() {
    uwsgi_serves_http(&["--http-socket", "fd://3"]);
}

/// haproxy in front of a demo-server that sd-launch started too; `bind` is the frontend's
/// bind line. The answer must come from that backend, through haproxy.
fn haproxy_in_front_of_demo_server(bind: &str, extra: &[&str]) {
    let Some(haproxy) = apt_tool("haproxy", "haproxy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backend_dir = dir.path().join("backend");
    std::fs::create_dir(&backend_dir).unwrap();
    let backend = supervise(&backend_dir, &[], &sd_launch_tests::bin("demo-server"), &[]);
    let conf = dir.path().join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n    log stderr format raw local0\n\
             defaults\n    mode http\n    log global\n    timeout connect 5s\n    \
             timeout client 10s\n    timeout server 10s\n\
             frontend web\n    bind {bind}\n    default_backend app\n\
             backend app\n    server demo {}\n",
            backend.addr(0)
        ),
    )
    .unwrap();
    let daemon = supervise(dir.path(), extra, &haproxy, &["-db", "-f", s(&conf)]);
    let r = get_tcp(daemon.addr(0), "/info").unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", daemon.log());
    let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(info["pid"], backend.pid, "not answered by the backend");
    assert!(
        daemon.log().contains("(web/HTTP)"),
        "haproxy did not log the connection:\n{}",
        daemon.log()
    );
    // SIGUSR1: haproxy's soft stop (finish the connections, then exit 0).
    let status = daemon.stop(libc::SIGUSR1);
    assert!(status.success(), "haproxy exited {status}");
    assert!(backend.stop(libc::SIGTERM).success());
}

#[test]
fn haproxy_binds_fd_3_and_proxies_to_a_launched_backend() {
    haproxy_in_front_of_demo_server("fd@3", &[]);
}

#[test]
fn haproxy_binds_the_fd_named_by_an_environment_variable() {
    haproxy_in_front_of_demo_server("\"fd@${FRONT_FD}\"", &["-E", "FRONT_FD=3"]);
}

#[test]
fn nbdkit_takes_listen_fds_and_nbdinfo_reads_the_export_size() {
    let Some(nbdkit) = apt_tool("nbdkit", "nbdkit") else {
        return;
    };
    let Some(nbdinfo) = apt_tool("nbdinfo", "libnbd-bin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let daemon = supervise(
        dir.path(),
        &[],
        &nbdkit,
        &["--foreground", "memory", "size=3M"],
    );
    let uri = format!("nbd://{}", daemon.addr(0));
    let size = run_client(Command::new(nbdinfo).args(["--size", &uri]), &daemon);
    assert_eq!(size.trim(), "3145728");
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "nbdkit exited {status}");
}

#[test]
fn qemu_nbd_takes_listen_fds_and_qemu_img_reads_the_image() {
    let Some(qemu_nbd) = apt_tool("qemu-nbd", "qemu-utils") else {
        return;
    };
    let Some(qemu_img) = apt_tool("qemu-img", "qemu-utils") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    let created = Command::new(&qemu_img)
        .args(["create", "-q", "-f", "qcow2", s(&disk), "5M"])
        .status()
        .unwrap();
    assert!(created.success());
    let daemon = supervise(
        dir.path(),
        &[],
        &qemu_nbd,
        &["--persistent", "--read-only", "--format=qcow2", s(&disk)],
    );
    let uri = format!("nbd://{}", daemon.addr(0));
    // Twice: --persistent keeps serving after the first client.
    for _ in 0..2 {
        let json = run_client(
            Command::new(&qemu_img).args(["info", "--output=json", &uri]),
            &daemon,
        );
        let info: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(info["virtual-size"], 5 * 1024 * 1024, "{json}");
    }
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "qemu-nbd exited {status}");
}

fn ssh_keygen(ssh_keygen: &Path, path: &Path) {
    let ok = Command::new(ssh_keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-f", s(path)])
        .status()
        .unwrap();
    assert!(ok.success(), "ssh-keygen {}", path.display());
}

#[test]
fn sshd_in_inetd_mode_runs_a_command_for_each_connection() {
    let Some(sshd) = apt_tool("sshd", "openssh-server") else {
        return;
    };
    let Some(ssh) = apt_tool("ssh", "openssh-client") else {
        return;
    };
    let Some(keygen) = apt_tool("ssh-keygen", "openssh-client") else {
        return;
    };
    // sshd's privilege separation needs this directory (a booted Debian creates it).
    if !Path::new("/run/sshd").is_dir() {
        skip::<()>(
            "/run/sshd (sshd's privilege separation directory) is missing",
            "mkdir -p /run/sshd",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (host_key, user_key) = (dir.path().join("host_key"), dir.path().join("user_key"));
    ssh_keygen(&keygen, &host_key);
    ssh_keygen(&keygen, &user_key);
    let authorized = dir.path().join("authorized_keys");
    std::fs::copy(user_key.with_extension("pub"), &authorized).unwrap();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let log = dir.path().join("sshd.log");
    let keys = format!("AuthorizedKeysFile={}", s(&authorized));
    // sshd must be started by its absolute path; -f /dev/null: no system config.
    let daemon = Supervised::start(
        Some(&log),
        [
            "--accept",
            "--inetd",
            "--stderr",
            s(&log),
            "--",
            s(&sshd),
            "-i",
            "-e",
            "-f",
            "/dev/null",
            "-h",
            s(&host_key),
            "-o",
            &keys,
            "-o",
            "StrictModes=no",
            "-o",
            "PidFile=none",
        ],
    );
    let port = daemon.addr(0).port().to_string();
    for n in 1..=2 {
        let out = run_client(
            Command::new(&ssh).args([
                "-F",
                "/dev/null",
                "-p",
                &port,
                "-i",
                s(&user_key),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
                &format!("{}@127.0.0.1", user.trim()),
                &format!("echo connection {n} ran as $(id -un)"),
            ]),
            &daemon,
        );
        assert_eq!(out.trim(), format!("connection {n} ran as {}", user.trim()));
    }
    assert_eq!(daemon.log().matches("Accepted publickey").count(), 2);
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "sd-launch --accept exited {status}");
}

const BUS_CONF: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <!-- Required, even though the address option given on the command line overrides it. -->
  <listen>systemd:</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

#[test]
fn dbus_daemon_listens_on_the_passed_unix_socket_with_address_systemd() {
    let Some(dbus_daemon) = apt_tool("dbus-daemon", "dbus") else {
        return;
    };
    let Some(dbus_send) = apt_tool("dbus-send", "dbus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bus.conf");
    std::fs::write(&conf, BUS_CONF).unwrap();
    let bus = dir.path().join("bus");
    let daemon = supervise(
        dir.path(),
        &["-l", s(&bus)],
        &dbus_daemon,
        &[
            "--nofork",
            "--nopidfile",
            &format!("--config-file={}", s(&conf)),
            "--address=systemd:",
            "--print-address",
        ],
    );
    let reply = run_client(
        Command::new(dbus_send).args([
            &format!("--bus=unix:path={}", s(&bus)),
            "--print-reply=literal",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
        ]),
        &daemon,
    );
    // The bus itself and our own connection (a unique name ":1.N") are on it.
    let names: Vec<&str> = reply.split_whitespace().collect();
    assert!(names.contains(&"org.freedesktop.DBus"), "{reply}");
    assert!(names.iter().any(|n| n.starts_with(":1.")), "{reply}");
    // The address it printed is the socket sd-launch passed, at the very path asked for
    // (getsockname of the passed fd): no socket of its own.
    let log = daemon.log();
    let printed = format!("unix:path={},", s(&bus));
    assert!(log.contains(&printed), "{log}");
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "dbus-daemon exited {status}");
}

#[test]
fn pgbouncer_takes_the_socket_and_psql_reaches_its_admin_console() {
    let Some(pgbouncer) = apt_tool("pgbouncer", "pgbouncer") else {
        return;
    };
    let Some(psql) = apt_tool("psql", "postgresql-client") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf: PathBuf = dir.path().join("pgbouncer.ini");
    // listen_port is ignored (pgbouncer logs "cf_listen_addr ignored") but must parse;
    // an empty unix_socket_dir: no socket of its own in /tmp.
    std::fs::write(
        &conf,
        "[databases]\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 1\n\
         unix_socket_dir =\nauth_type = any\nadmin_users = pgbouncer\nlogfile =\npidfile =\n",
    )
    .unwrap();
    // pgbouncer refuses to run as root; -u drops to another user after start.
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut args = vec![];
    if as_root {
        args.extend(["-u", "nobody"]);
    }
    args.push(s(&conf));
    let daemon = supervise(dir.path(), &[], &pgbouncer, &args);
    let port = daemon.addr(0).port().to_string();
    let version = run_client(
        Command::new(psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "pgbouncer",
                "-d",
                "pgbouncer",
            ])
            .args(["-X", "-A", "-t", "-c", "SHOW VERSION"])
            .env("PGCONNECT_TIMEOUT", "20"),
        &daemon,
    );
    assert!(version.starts_with("PgBouncer "), "{version}");
    assert!(
        daemon.log().contains("socket passed from service manager"),
        "{}",
        daemon.log()
    );
    // SIGINT: pgbouncer's safe shutdown (SIGTERM is its immediate one).
    let status = daemon.stop(libc::SIGINT);
    assert!(status.success(), "pgbouncer exited {status}");
}
