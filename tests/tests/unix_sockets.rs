//! A third-party daemon that checks where its passed Unix socket is bound: lighttpd with
//! `server.bind` set to the socket's path only serves a passed socket whose `getsockname()`
//! is that path, as `systemd-socket-activate` passes it.

use std::path::Path;
use std::time::Duration;

use sd_launch::Launch;
use sd_launch_tests::{get_unix, tool, wait_gone};

fn lighttpd_config(dir: &Path, socket: &Path) -> std::path::PathBuf {
    let root = dir.join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello over a unix socket\n").unwrap();
    let conf = dir.join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{}\"\nserver.bind = \"{}\"\n\
             server.systemd-socket-activation = \"enable\"\n\
             server.errorlog = \"{}\"\nindex-file.names = (\"index.html\")\n",
            root.display(),
            socket.display(),
            dir.join("error.log").display()
        ),
    )
    .unwrap();
    conf
}

#[test]
fn lighttpd_with_server_bind_serves_the_unix_socket_sd_launch_passes() {
    let Some(lighttpd) = tool("lighttpd", "lighttpd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("www.sock");
    let conf = lighttpd_config(dir.path(), &socket);
    let stderr = dir.path().join("stderr");
    let mut launched = Launch::new(lighttpd)
        .args(["-D", "-f"])
        .arg(&conf)
        .listen_on(socket.to_str().unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn lighttpd");
    let answer = get_unix(&socket, "/");
    // A lighttpd that did not recognise the socket as its server.bind exits at once.
    let exited = launched.wait_timeout(Duration::ZERO).unwrap();
    let log = ["stderr", "error.log"]
        .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
        .join("");
    assert_eq!(exited, None, "lighttpd exited; its error log:\n{log}");
    let r = answer.unwrap_or_else(|e| panic!("no answer ({e}); lighttpd's error log:\n{log}"));
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello over a unix socket\n")
    );
    let pid = launched.pid();
    drop(launched);
    assert!(wait_gone(pid));
    assert!(!socket.exists(), "the socket file was left behind");
}
